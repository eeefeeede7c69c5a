package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/ctl"
)

// clusterTTL is the lease TTL of a cluster `holdfast up` starts (the
// default): the bounds below are multiples of it, far below PostgreSQL's
// wal_sender_timeout (60 s), which bounded a switchover's stop before.
const clusterTTL = 4 * time.Second

// Switchovers that meet a candidate that stops acknowledging WAL, and a
// burst of writes: the switchover completes or is cancelled at once with
// the real reason, writes never stop for long, and `ctl list` never shows
// a stopped primary as running for long.
func TestSwitchoverUnderTrouble(t *testing.T) {
	c := StartCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))

	// The candidate's WAL receiver is frozen (SIGSTOP) just before the
	// request: its walsender on the primary waits for acknowledgements
	// that never come, which held the primary's shutdown — and every
	// write — until wal_sender_timeout.
	t.Run("frozen candidate WAL receiver", func(t *testing.T) {
		c := c.in(t)
		c.WaitFor("healthy", 60*time.Second, Healthy(3))
		old := c.Primary()
		cand := others(c.DBMembers(), old)[0]
		c.Exec(old, "CREATE TABLE sw_frozen (id bigint PRIMARY KEY)")

		w := newPrimaryWriter(c, "sw_frozen")
		stop := make(chan struct{})
		done := w.start(2, 20*time.Millisecond, stop)
		defer func() { close(stop); <-done }()
		waitAcked(t, w, 20, 30*time.Second)

		pid := walReceiverPID(t, c, cand)
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatalf("freeze the WAL receiver %d of %s: %v", pid, cand, err)
		}
		thawed := false
		thaw := func() {
			if !thawed {
				thawed = true
				if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
					t.Errorf("thaw the WAL receiver %d: %v", pid, err)
				}
			}
		}
		defer thaw()

		watch := watchPrimaryTruth(c, old)
		start := time.Now()
		out, err := c.ctlRun(time.Minute, "switchover", "--to", cand)
		answered := time.Since(start)
		t.Logf("ctl switchover --to %s (WAL receiver frozen) after %s: err %v: %s", cand, answered.Round(time.Millisecond), err, strings.TrimSpace(out))
		if err == nil || !strings.Contains(out, "cancelled") || strings.Contains(out, "no new primary within") {
			t.Errorf("ctl switchover to a candidate that stopped acknowledging: err %v, output %q; want it cancelled, with the reason", err, out)
		}
		acked := len(ackedIDs(w))
		waitAcked(t, w, acked+20, 60*time.Second)
		gap := w.longestGap(start, time.Now())
		t.Logf("longest stretch without an acknowledged write: %s", gap.Round(time.Millisecond))
		if gap > 4*clusterTTL {
			t.Errorf("writes stopped for %s during the refused switchover; want at most %s (4 × TTL), not wal_sender_timeout", gap, 4*clusterTTL)
		}
		if lie := watch(); lie > 2*clusterTTL {
			t.Errorf("ctl list showed %s as a running primary for %s while it refused connections; want at most %s", old, lie, 2*clusterTTL)
		}
		if p := c.Primary(); p == cand {
			t.Errorf("the candidate with the frozen WAL receiver became the primary")
		}
		thaw()
		c.WaitFor("healthy after the thaw", 90*time.Second, Healthy(3))
	})

	// Right after a checkpoint, big UPDATEs write full-page images: the
	// published positions trail streaming replicas by megabytes, which
	// made the primary refuse the request. It is judged on positions the
	// primary measures when it acts.
	t.Run("write burst", func(t *testing.T) {
		c := c.in(t)
		c.WaitFor("healthy", 60*time.Second, Healthy(3))
		old := c.Primary()
		cand := others(c.DBMembers(), old)[0]
		execLong(t, c, old, "CREATE TABLE sw_burst AS SELECT g AS id, 0 AS v FROM generate_series(1, 200000) AS g")
		c.WaitFor("healthy after the load", 60*time.Second, Healthy(3))

		// The burst: a checkpoint, then an UPDATE of every row, again
		// and again until the old primary stops taking them. Each may
		// take long on a loaded machine (bulkStatementTimeout); the first
		// checkpoint's failure fails the test instead of leaving it
		// waiting for a burst that never began.
		stop := make(chan struct{})
		started := make(chan struct{})
		ended := make(chan struct{})
		var burstErr error
		go func() {
			defer close(ended)
			once := sync.Once{}
			for {
				select {
				case <-stop:
					return
				default:
				}
				if burstErr = c.TryExecWithin(old, bulkStatementTimeout, "CHECKPOINT"); burstErr != nil {
					return // the old primary stopped
				}
				once.Do(func() { close(started) })
				if burstErr = c.TryExecWithin(old, bulkStatementTimeout, "UPDATE sw_burst SET v = v + 1"); burstErr != nil {
					return
				}
			}
		}()
		defer func() { close(stop); <-ended }()
		select {
		case <-started:
		case <-ended:
			select {
			case <-started: // begun, then ended at once: the switchover below says why
			default:
				t.Fatalf("the write burst on %s did not begin: %v", old, burstErr)
			}
		}

		start := time.Now()
		out, err := c.ctlRun(time.Minute, "switchover", "--to", cand)
		t.Logf("ctl switchover --to %s during a write burst after %s: err %v: %s", cand, time.Since(start).Round(time.Millisecond), err, strings.TrimSpace(out))
		switch {
		case err == nil && strings.Contains(out, "switched over to "+cand):
			c.WaitFor(cand+" primary", 60*time.Second, func(l ctl.ClusterList) bool { return l.Leader == cand && member(l, cand).State == "running" })
		case err != nil && strings.Contains(out, "cancelled") && !strings.Contains(out, "no new primary within"):
			// The real reason, at once.
		default:
			t.Errorf("ctl switchover during a write burst: err %v, output %q; want it done, or cancelled with the reason (never left pending)", err, out)
		}
		c.WaitFor("healthy after the burst", 90*time.Second, Healthy(3))
	})
}

// walReceiverPID is the pid of member's WAL receiver, from its own
// pg_stat_wal_receiver, checked to be a child of its postmaster.
func walReceiverPID(t *testing.T, c *Cluster, member string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.Connect(ctx, member)
	if err != nil {
		t.Fatalf("connect to %s: %v", member, err)
	}
	defer conn.Close(context.Background())
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pid FROM pg_stat_wal_receiver").Scan(&pid); err != nil {
		t.Fatalf("WAL receiver of %s: %v", member, err)
	}
	if pp := parentPID(t, pid); pp != c.PostmasterPID(member) {
		t.Fatalf("WAL receiver %d of %s: parent %d is not its postmaster %d", pid, member, pp, c.PostmasterPID(member))
	}
	return pid
}

// parentPID reads a process's parent from /proc.
func parentPID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no PPid in /proc/%d/status", pid)
	return 0
}

func ackedIDs(w *primaryWriter) []int64 {
	acked, _ := w.results()
	return acked
}

// waitAcked waits until the writer has n acknowledged writes.
func waitAcked(t *testing.T, w *primaryWriter, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for len(ackedIDs(w)) < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d writes acknowledged within %s", len(ackedIDs(w)), n, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// watchPrimaryTruth samples `ctl list` until the returned function is
// called, which returns the longest stretch during which the list showed
// name as the running primary while name refused connections.
func watchPrimaryTruth(c *Cluster, name string) func() time.Duration {
	stop := make(chan struct{})
	res := make(chan time.Duration, 1)
	go func() {
		var since time.Time
		var longest time.Duration
		for {
			select {
			case <-stop:
				res <- longest
				return
			default:
			}
			l, err := c.List()
			if err != nil {
				continue
			}
			m := member(l, name)
			claims := l.Leader == name && m.Role == "primary" && m.State == "running"
			sampled := time.Now()
			if claims && !c.Writable(name) {
				if since.IsZero() {
					since = sampled
				}
				longest = max(longest, time.Since(since))
			} else {
				since = time.Time{}
			}
		}
	}()
	return func() time.Duration { close(stop); return <-res }
}
