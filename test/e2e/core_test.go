package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/local"
)

func others(all []string, not string) []string {
	var out []string
	for _, n := range all {
		if n != not {
			out = append(out, n)
		}
	}
	return out
}

func member(l ctl.ClusterList, name string) ctl.MemberRow {
	for _, m := range l.Members {
		if m.Name == name {
			return m
		}
	}
	return ctl.MemberRow{}
}

// Three members bootstrap; a row written on the primary is read on both
// replicas; ctl list shows what the issue promises.
func TestBootstrapReplicates(t *testing.T) {
	c := StartCluster(t, 3)
	l := c.WaitFor("healthy", 60*time.Second, Healthy(3))
	if len(l.Members) != 3 {
		t.Fatalf("ctl list shows %d members, want 3", len(l.Members))
	}
	for _, m := range l.Members {
		if m.DSN == "" || m.Host == "" || m.Port == 0 || m.Timeline != 1 || m.LagBytes == nil {
			t.Errorf("incomplete ctl list row: %+v", m)
		}
	}
	p := c.Primary()
	c.Exec(p, "CREATE TABLE t (id int primary key, v text)")
	c.Exec(p, "INSERT INTO t VALUES (1, 'written on the primary')")
	for _, r := range others(c.DBMembers(), p) {
		c.WaitCount(r, "t", 1, 20*time.Second)
		if err := c.TryExec(r, "INSERT INTO t VALUES (2, 'x')"); err == nil {
			t.Errorf("replica %s accepted a write", r)
		}
	}
}

// kill -9 of the primary's agent and postmaster together: a replica is
// promoted and accepts writes; the old member, started again, rejoins as a
// replica on the new timeline and holds the same rows.
func TestFailoverAfterKillingPrimary(t *testing.T) {
	c := StartCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	old := c.Primary()
	c.Exec(old, "CREATE TABLE t (id int primary key)")
	c.Exec(old, "INSERT INTO t SELECT generate_series(1, 100)")
	for _, r := range others(c.DBMembers(), old) {
		c.WaitCount(r, "t", 100, 20*time.Second)
	}

	stop := make(chan struct{})
	split := c.AtMostOneWritable(stop)
	c.KillHard(old)
	l := c.WaitFor("a new primary", 60*time.Second, func(l ctl.ClusterList) bool {
		return l.Leader != "" && l.Leader != old && member(l, l.Leader).Role == "primary" && member(l, l.Leader).State == "running"
	})
	np := l.Leader
	if l.Timeline < 2 {
		t.Errorf("timeline after failover = %d, want >= 2", l.Timeline)
	}
	c.Exec(np, "INSERT INTO t SELECT generate_series(101, 150)")

	c.Up() // starts the killed member again
	l = c.WaitFor("healthy after rejoin", 90*time.Second, Healthy(3))
	close(stop)
	if err := <-split; err != nil {
		t.Fatal(err)
	}
	if r := member(l, old); r.Role != "replica" || r.Timeline != member(l, np).Timeline {
		t.Fatalf("old primary after rejoin: %+v, new primary on timeline %d", r, member(l, np).Timeline)
	}
	for _, m := range c.DBMembers() {
		c.WaitCount(m, "t", 150, 30*time.Second)
	}
}

// kill -9 of the primary's postmaster only: the agent recovers it (in place
// or by failover) and there are never two writable primaries.
func TestPostmasterCrashRecovers(t *testing.T) {
	c := StartCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	p := c.Primary()
	c.Exec(p, "CREATE TABLE t (id int primary key)")
	c.Exec(p, "INSERT INTO t SELECT generate_series(1, 10)")

	stop := make(chan struct{})
	split := c.AtMostOneWritable(stop)
	pm := c.PostmasterPID(p)
	if err := killPID(pm); err != nil {
		t.Fatal(err)
	}
	// Recovery is proven by a write acknowledged by whoever leads, then by
	// the whole cluster being healthy again.
	c.WriteEventually(60*time.Second, "INSERT INTO t SELECT generate_series(11, 20)")
	c.WaitFor("healthy after postmaster crash", 90*time.Second, Healthy(3))
	close(stop)
	if err := <-split; err != nil {
		t.Fatal(err)
	}
	for _, m := range c.DBMembers() {
		c.WaitCount(m, "t", 20, 30*time.Second)
	}
}

// All members stopped, then all started at the same time: the cluster comes
// back by itself with every committed row, including rows committed on the
// primary after the replicas had stopped.
func TestFullClusterRestart(t *testing.T) {
	c := StartCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	p := c.Primary()
	c.Exec(p, "CREATE TABLE t (id int primary key)")
	c.Exec(p, "INSERT INTO t SELECT generate_series(1, 1000)")
	// Stop the replicas, then commit more on the primary alone, then stop it.
	for _, r := range others(c.DBMembers(), p) {
		if _, err := local.Stop(c.Dir, r, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	c.Exec(p, "INSERT INTO t SELECT generate_series(1001, 1100)")
	c.Down()

	c.Up() // starts all three at once
	l := c.WaitFor("healthy after full restart", 90*time.Second, Healthy(3))
	for _, m := range c.DBMembers() {
		c.WaitCount(m, "t", 1100, 30*time.Second)
	}
	c.Exec(l.Leader, "INSERT INTO t VALUES (1101)")
}

// A replica restarted with its old data directory catches up by streaming,
// without a fresh clone.
func TestReplicaRestartCatchesUp(t *testing.T) {
	c := StartCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	p := c.Primary()
	r := others(c.DBMembers(), p)[0]
	c.Exec(p, "CREATE TABLE t (id int primary key)")
	c.WaitCount(r, "t", 0, 20*time.Second)

	// A file only this copy of the data directory has: a re-clone would lose it.
	witness := filepath.Join(local.MemberDir(c.Dir, r), "pgdata", "holdfast-test-witness")
	if err := os.WriteFile(witness, []byte("same directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := local.Stop(c.Dir, r, time.Minute); err != nil {
		t.Fatal(err)
	}
	c.Exec(p, "INSERT INTO t SELECT generate_series(1, 500)")
	c.Up()
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	c.WaitCount(r, "t", 500, 30*time.Second)
	if _, err := os.Stat(witness); err != nil {
		t.Fatalf("replica's data directory was replaced (re-cloned) instead of reused: %v", err)
	}
	if old, _ := filepath.Glob(filepath.Join(local.MemberDir(c.Dir, r), "pgdata.old-*")); len(old) > 0 {
		t.Fatalf("replica's data was moved aside: %v", old)
	}
}
