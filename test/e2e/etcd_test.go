package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/testutil"
)

// startEtcd runs Debian's etcd-server as a one-member external etcd cluster
// and returns its client URL.
func startEtcd(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("etcd is not installed: CI must run scripts/install-deps.sh first")
		}
		t.Skip("etcd is not installed: run scripts/install-deps.sh")
	}
	dir := testutil.Dir(t)
	client := fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t))
	peer := fmt.Sprintf("http://127.0.0.1:%d", testutil.FreePort(t))
	log, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--name", "e0", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "e0="+peer, "--initial-cluster-state", "new")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		log.Close()
	})
	return client
}

// A cluster on an external etcd (Debian's etcd-server) bootstraps and fails
// over exactly like one on the embedded store.
func TestExternalEtcdBootstrapAndFailover(t *testing.T) {
	endpoint := startEtcd(t)
	c := StartCluster(t, 3, "--endpoints", endpoint)
	if len(c.Layout.External) != 1 {
		t.Fatalf("layout does not use the external etcd: %+v", c.Layout)
	}
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	old := c.Primary()
	c.Exec(old, "CREATE TABLE t (id int primary key)")
	c.Exec(old, "INSERT INTO t SELECT generate_series(1, 10)")
	for _, r := range others(c.DBMembers(), old) {
		c.WaitCount(r, "t", 10, 20*time.Second)
	}
	c.KillHard(old)
	l := c.WaitFor("a new primary", 60*time.Second, func(l ctl.ClusterList) bool {
		return l.Leader != "" && l.Leader != old && member(l, l.Leader).State == "running"
	})
	c.Exec(l.Leader, "INSERT INTO t SELECT generate_series(11, 20)")
	c.Up()
	c.WaitFor("healthy after rejoin", 90*time.Second, Healthy(3))
	for _, m := range c.DBMembers() {
		c.WaitCount(m, "t", 20, 30*time.Second)
	}
}
