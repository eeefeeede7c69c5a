package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/testutil"
)

// Two database members and a witness: the witness keeps the store's
// majority, so losing the primary still fails over.
func TestWitnessKeepsMajority(t *testing.T) {
	c := StartCluster(t, 2, "--witnesses", "1")
	l := c.WaitFor("healthy", 60*time.Second, Healthy(2))
	if w := member(l, "pg-2"); w.Role != "witness" || w.DSN != "" {
		t.Fatalf("witness row: %+v", w)
	}
	old := c.Primary()
	c.Exec(old, "CREATE TABLE t (id int primary key)")
	c.Exec(old, "INSERT INTO t VALUES (1)")
	c.WaitCount(others(c.DBMembers(), old)[0], "t", 1, 20*time.Second)
	c.KillHard(old)
	l = c.WaitFor("the other database member promoted", 60*time.Second, func(l ctl.ClusterList) bool {
		return l.Leader != "" && l.Leader != old && member(l, l.Leader).Role == "primary" && member(l, l.Leader).State == "running"
	})
	c.Exec(l.Leader, "INSERT INTO t VALUES (2)")
}

// A clean stop of the primary's agent stops PostgreSQL, then releases the
// leader key, so a replica takes over without waiting for the lease to
// expire, and no committed row is lost.
func TestCleanShutdownHandsOver(t *testing.T) {
	c := StartCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	old := c.Primary()
	c.Exec(old, "CREATE TABLE t (id int primary key)")
	c.Exec(old, "INSERT INTO t SELECT generate_series(1, 300)")
	if _, err := local.Stop(c.Dir, old, time.Minute); err != nil {
		t.Fatal(err)
	}
	log, _ := os.ReadFile(local.LogFile(c.Dir, old))
	if !bytes.Contains(log, []byte("released the leader key")) {
		t.Fatalf("the primary's agent did not release the leader key on shutdown; log:\n%s", log)
	}
	l := c.WaitFor("a new primary", 30*time.Second, func(l ctl.ClusterList) bool {
		return l.Leader != "" && l.Leader != old && member(l, l.Leader).Role == "primary" && member(l, l.Leader).State == "running"
	})
	c.WaitCount(l.Leader, "t", 300, 10*time.Second)
	c.Up()
	c.WaitFor("healthy after the old primary returns", 90*time.Second, Healthy(3))
	c.WaitCount(old, "t", 300, 30*time.Second)
}

// Ctrl-C on a foreground `holdfast up` stops every member, primary first.
func TestForegroundUpStopsOnInterrupt(t *testing.T) {
	testutil.PGBinDir(t)
	dir := filepath.Join(testutil.Dir(t), "cluster")
	var out lockedBuffer
	cmd := exec.Command(binary, "up", "--dir", dir, "--members", "2", "--wait", "90s")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { run(t, time.Minute, "down", "--dir", dir) })
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(out.String(), "press Ctrl-C") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("up did not report a healthy cluster:\n%s", out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("up exited with %v:\n%s", err, out.String())
		}
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		t.Fatalf("up did not stop after Ctrl-C:\n%s", out.String())
	}
	l, err := local.ReadLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range l.Members {
		if pid, ok := local.RunningPID(dir, m.Name); ok {
			t.Errorf("%s still running (pid %d) after Ctrl-C", m.Name, pid)
		}
	}
	if !strings.Contains(out.String(), "primary first") {
		t.Errorf("up did not announce the ordered stop:\n%s", out.String())
	}
}

// lockedBuffer is an io.Writer a child process writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
