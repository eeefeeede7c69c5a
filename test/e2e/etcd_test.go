package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/testutil"
	"github.com/jackc/pgx/v5/pgconn"
)

// startEtcd runs Debian's etcd-server as a one-member external etcd cluster
// and returns its client URL.
func startEtcd(t *testing.T) string {
	t.Helper()
	url, _ := startEtcdProcess(t)
	return url
}

// startEtcdProcess is startEtcd, also returning the etcd process (to
// freeze it).
func startEtcdProcess(t *testing.T) (string, *os.Process) {
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
	return client, cmd.Process
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
		return l.Leader != "" && l.Leader != old && member(l, l.Leader).Role == "primary" && member(l, l.Leader).State == "running"
	})
	c.Exec(l.Leader, "INSERT INTO t SELECT generate_series(11, 20)")
	c.Up()
	c.WaitFor("healthy after rejoin", 90*time.Second, Healthy(3))
	for _, m := range c.DBMembers() {
		c.WaitCount(m, "t", 20, 30*time.Second)
	}
}

// Consensus loss: with the store frozen (SIGSTOP of the only etcd), no
// member can be promoted; the primary, which still reaches every member,
// keeps accepting writes well past its lease TTL (the failsafe). Once one
// member stops answering (its agent frozen too) the primary stops
// accepting writes. When everything resumes, the cluster heals by itself
// and every acknowledged row is there.
func TestFailsafeWhileTheStoreIsDown(t *testing.T) {
	endpoint, etcd := startEtcdProcess(t)
	c := StartCluster(t, 3, "--endpoints", endpoint)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	p := c.Primary()
	c.Exec(p, "CREATE TABLE fs (id int primary key)")
	stop := make(chan struct{})
	split := c.AtMostOneWritable(stop)
	resumed := false
	resume := func() {
		if !resumed {
			etcd.Signal(syscall.SIGCONT)
			resumed = true
		}
	}
	defer resume()
	if err := etcd.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	ttl := 4 * time.Second
	pm := c.PostmasterPID(p)
	acked, slow := 0, 0
	for start := time.Now(); time.Since(start) < 3*ttl; time.Sleep(250 * time.Millisecond) {
		// A write that only timed out (a loaded machine) is tried again;
		// a refusal is the failure. The postmaster check below catches a
		// fence that a slow write would hide.
		if err := c.TryExec(p, "INSERT INTO fs VALUES ($1)", acked+1); err != nil {
			if pgconn.Timeout(err) {
				slow++
				continue
			}
			t.Fatalf("the primary refused a write %s after the store froze, though every member is reachable: %v", time.Since(start).Round(time.Millisecond), err)
		}
		acked++
	}
	t.Logf("%d writes acknowledged over %s without a store (%d timed out)", acked, 3*ttl, slow)
	if !c.StillServedBy(p, pm) || acked == 0 {
		t.Fatalf("the primary's postmaster %d is gone or replaced (%d writes acknowledged): it fenced without a store though every member is reachable", pm, acked)
	}

	r := others(c.DBMembers(), p)[0]
	agent := c.AgentPID(r)
	if err := syscall.Kill(agent, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(agent, syscall.SIGCONT)
	deadline := time.Now().Add(2 * ttl)
	for c.Writable(p) {
		if time.Now().After(deadline) {
			t.Fatalf("the primary still accepts writes %s after %s stopped answering, with the store down", 2*ttl, r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	syscall.Kill(agent, syscall.SIGCONT)
	resume()
	l := c.WaitFor("healthy after the store returns", 90*time.Second, Healthy(3))
	close(stop)
	if err := <-split; err != nil {
		t.Error(err)
	}
	c.WaitCount(l.Leader, "fs", int64(acked), 30*time.Second)
}

// A frozen agent (SIGSTOP) stops renewing its lease while its PostgreSQL
// keeps accepting writes. On an external etcd nothing else freezes with
// it, so a replica is promoted after the TTL: the agent's fence guard (a
// child process) must have killed the frozen primary's PostgreSQL before,
// so at no moment do two members accept writes.
func TestFrozenAgentNeverLeavesTwoPrimaries(t *testing.T) {
	endpoint := startEtcd(t)
	c := StartCluster(t, 3, "--endpoints", endpoint)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	old := c.Primary()
	stop := make(chan struct{})
	split := c.AtMostOneWritable(stop)
	agent := c.AgentPID(old)
	if err := syscall.Kill(agent, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(agent, syscall.SIGCONT)
	c.WaitFor("a new primary while the old agent is frozen", 60*time.Second, func(l ctl.ClusterList) bool {
		return l.Leader != "" && l.Leader != old && member(l, l.Leader).Role == "primary" && member(l, l.Leader).State == "running"
	})
	if c.Writable(old) {
		t.Errorf("the frozen agent's PostgreSQL still accepts writes after another member was promoted")
	}
	syscall.Kill(agent, syscall.SIGCONT)
	c.WaitFor("healthy after the agent thaws", 90*time.Second, Healthy(3))
	close(stop)
	if err := <-split; err != nil {
		t.Fatal(err)
	}
}
