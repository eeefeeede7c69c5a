package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/internal/ctl"
)

// syncStandbys returns the members the list marks as synchronous.
func syncStandbys(l ctl.ClusterList) []string {
	var out []string
	for _, m := range l.Members {
		if m.Sync {
			out = append(out, m.Name)
		}
	}
	return out
}

// ackWriter inserts unique ids, one connection per insert, into the current
// primary until stopped, and records every id PostgreSQL acknowledged.
type ackWriter struct {
	c     *Cluster
	mu    sync.Mutex
	acked []int64
	next  atomic.Int64
	stop  chan struct{}
	done  chan struct{}
}

func startAckWriter(c *Cluster, table string) *ackWriter {
	w := &ackWriter{c: c, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			l, err := c.List()
			if err != nil || l.Leader == "" {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			id := w.next.Add(1)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			conn, err := c.Connect(ctx, l.Leader)
			if err == nil {
				_, err = conn.Exec(ctx, "INSERT INTO "+table+" VALUES ($1)", id)
				conn.Close(context.Background())
			}
			cancel()
			if err == nil {
				w.mu.Lock()
				w.acked = append(w.acked, id)
				w.mu.Unlock()
			} else {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}()
	return w
}

// ackWaitTimeout bounds how long waitAcked waits for the writer's inserts:
// each is a store read, a connection and a synchronous commit, which a
// loaded machine slows a great deal.
const ackWaitTimeout = 2 * time.Minute

// waitAcked waits until the writer has n acknowledged inserts in all (the
// state the test needs, rather than a time that is enough on an idle
// machine) and returns how many it has.
func (w *ackWriter) waitAcked(n int) int {
	w.c.t.Helper()
	deadline := time.Now().Add(ackWaitTimeout)
	for {
		w.mu.Lock()
		got := len(w.acked)
		w.mu.Unlock()
		if got >= n {
			return got
		}
		if time.Now().After(deadline) {
			w.c.t.Fatalf("the writer has %d acknowledged inserts after %s, want %d", got, ackWaitTimeout, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *ackWriter) Stop() []int64 {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]int64(nil), w.acked...)
}

// missing returns the acknowledged ids absent from table on member.
func (c *Cluster) missing(member, table string, acked []int64) []int64 {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := c.Connect(ctx, member)
	if err != nil {
		c.t.Fatalf("connect to %s: %v", member, err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, "SELECT id FROM "+table)
	if err != nil {
		c.t.Fatalf("read %s on %s: %v", table, member, err)
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		c.t.Fatal(err)
	}
	present := map[int64]bool{}
	for _, id := range have {
		present[id] = true
	}
	var lost []int64
	for _, id := range acked {
		if !present[id] {
			lost = append(lost, id)
		}
	}
	return lost
}

// Strict synchronous replication, end to end with real PostgreSQL:
// bad settings are refused and change nothing; a synchronous standby is
// recorded; kill -9 of the primary under a stream of acknowledged inserts
// loses none of them and promotes the synchronous standby; the new primary
// has a synchronous standby again; with no standby left, a commit is not
// acknowledged.
func TestSyncStrictFailoverLosesNothing(t *testing.T) {
	c := StartCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))

	// Refused settings change nothing.
	for _, bad := range []struct{ set, want string }{
		{"synchronous_mode=sometimes", `synchronous_mode: "sometimes" is not a mode`},
		{"synchronous_node_count=3", "larger than the number of replicas (2)"},
		{"synchronous_node_count=0", "must be at least 1"},
		{"synchronous_node_count=two", "not a whole number"},
	} {
		out, err := c.ctlRun(20*time.Second, "edit-config", "--set", bad.set)
		if err == nil || !strings.Contains(out, bad.want) {
			t.Errorf("edit-config --set %s: err=%v, output %q; want an error containing %q", bad.set, err, out, bad.want)
		}
	}
	if out, err := c.ctlRun(20*time.Second, "show-config"); err != nil || !strings.Contains(out, `"synchronous_mode": "off"`) {
		t.Fatalf("show-config after refused changes: %v\n%s", err, out)
	}

	if out, err := c.ctlRun(20*time.Second, "edit-config", "--set", "synchronous_mode=strict"); err != nil {
		t.Fatalf("edit-config synchronous_mode=strict: %v\n%s", err, out)
	}
	l := c.WaitFor("a synchronous standby", 30*time.Second, func(l ctl.ClusterList) bool {
		return l.SynchronousMode == "strict" && l.SyncQuorum == 1 && len(syncStandbys(l)) == 1
	})
	old, standby := l.Leader, syncStandbys(l)[0]
	// The health checks agree (once each member's loop has read the
	// record): /sync on the synchronous standby, /async on the other.
	c.WaitFor("/sync on the synchronous standby, /async on the other", 60*time.Second, func(ctl.ClusterList) bool {
		for _, r := range others(c.DBMembers(), old) {
			path := "/async"
			if r == standby {
				path = "/sync"
			}
			if code, _, err := c.apiDo(r, "GET", path, "", nil); err != nil || code != 200 {
				return false
			}
		}
		return true
	})

	c.Exec(old, "CREATE TABLE acks (id bigint primary key)")
	w := startAckWriter(c, "acks")
	w.waitAcked(10) // acknowledged by the old primary
	stop := make(chan struct{})
	split := c.AtMostOneWritable(stop)
	c.KillHard(old)
	l = c.WaitFor("a new primary", 60*time.Second, func(l ctl.ClusterList) bool {
		return l.Leader != "" && l.Leader != old && member(l, l.Leader).Role == "primary" && member(l, l.Leader).State == "running"
	})
	if l.Leader != standby {
		t.Errorf("%s was promoted, but the synchronous standby was %s", l.Leader, standby)
	}
	// The new primary gets its synchronous standby back (the third member).
	l = c.WaitFor("a synchronous standby of the new primary", 60*time.Second, func(l ctl.ClusterList) bool {
		s := syncStandbys(l)
		return len(s) == 1 && s[0] != l.Leader && s[0] != old
	})
	w.waitAcked(w.waitAcked(0) + 5) // and some by the new one
	acked := w.Stop()
	close(stop)
	if err := <-split; err != nil {
		t.Error(err)
	}
	if lost := c.missing(l.Leader, "acks", acked); len(lost) > 0 {
		t.Fatalf("strict mode lost %d of %d acknowledged inserts: %v", len(lost), len(acked), lost)
	}
	t.Logf("%d acknowledged inserts, none lost; %s took over from %s", len(acked), l.Leader, old)

	// No standby: a commit waits instead of being acknowledged.
	np := l.Leader
	c.KillHard(others(others(c.DBMembers(), old), np)[0])
	// The connection has a budget of its own: only the commit's wait is
	// the claim (a commit not acknowledged within 4 s).
	cctx, ccancel := context.WithTimeout(context.Background(), statementTimeout)
	defer ccancel()
	conn, err := c.Connect(cctx, np)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, "INSERT INTO acks VALUES (-1)"); err == nil {
		t.Fatalf("strict mode acknowledged a commit with no standby running")
	}
	c.Up() // both stopped members come back
	c.WaitFor("a synchronous standby again", 90*time.Second, func(l ctl.ClusterList) bool {
		return len(syncStandbys(l)) == 1 && Healthy(3)(l)
	})
	c.Exec(np, "INSERT INTO acks VALUES (-2)")
}

// Quorum mode: ANY 1 of both replicas; both are recorded; mode on with
// every replica down falls back to asynchronous commits instead of
// blocking, and gets its synchronous standby back once they return;
// turning the mode off makes PostgreSQL asynchronous again. Two witnesses
// keep the store's quorum while both replicas are down.
func TestSyncQuorumAndOn(t *testing.T) {
	c := StartCluster(t, 3, "--witnesses", "2")
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	if out, err := c.ctlRun(20*time.Second, "edit-config", "--set", "synchronous_mode=quorum", "--set", "synchronous_node_count=1"); err != nil {
		t.Fatalf("edit-config: %v\n%s", err, out)
	}
	l := c.WaitFor("both replicas in the quorum", 30*time.Second, func(l ctl.ClusterList) bool {
		return l.SynchronousMode == "quorum" && l.SyncQuorum == 1 && len(syncStandbys(l)) == 2
	})
	p := l.Leader
	c.WaitFor("ANY 1 of both on the primary", 20*time.Second, func(ctl.ClusterList) bool {
		got := c.setting(p, "synchronous_standby_names")
		return strings.HasPrefix(got, "ANY 1 (") && strings.Count(got, ",") == 1
	})
	c.Exec(p, "CREATE TABLE fallback (id int)")

	if out, err := c.ctlRun(20*time.Second, "edit-config", "--set", "synchronous_mode=on"); err != nil {
		t.Fatalf("edit-config: %v\n%s", err, out)
	}
	c.WaitFor("one synchronous standby", 30*time.Second, func(l ctl.ClusterList) bool {
		return l.SynchronousMode == "on" && len(syncStandbys(l)) == 1
	})
	for _, r := range others(c.DBMembers(), p) {
		c.KillHard(r)
	}
	// "on" falls back to asynchronous commits once no standby is healthy.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := c.Connect(ctx, p)
		if err == nil {
			_, err = conn.Exec(ctx, "INSERT INTO fallback VALUES (1)")
			conn.Close(context.Background())
		}
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mode on did not fall back to asynchronous commits with every standby down: %v", err)
		}
	}
	c.WaitFor("asynchronous with no standby", 20*time.Second, func(ctl.ClusterList) bool {
		return c.setting(p, "synchronous_standby_names") == ""
	})
	c.Up()
	c.WaitFor("healthy with a synchronous standby", 90*time.Second, func(l ctl.ClusterList) bool {
		return Healthy(3)(l) && len(syncStandbys(l)) == 1
	})
	if out, err := c.ctlRun(20*time.Second, "edit-config", "--set", "synchronous_mode=off"); err != nil {
		t.Fatalf("edit-config: %v\n%s", err, out)
	}
	c.WaitFor("asynchronous", 30*time.Second, func(l ctl.ClusterList) bool {
		return len(syncStandbys(l)) == 0 && c.setting(p, "synchronous_standby_names") == ""
	})
}

// setting reads a server setting on member.
func (c *Cluster) setting(member, name string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := c.Connect(ctx, member)
	if err != nil {
		return fmt.Sprintf("<connect: %v>", err)
	}
	defer conn.Close(context.Background())
	var v string
	if err := conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
		return fmt.Sprintf("<%v>", err)
	}
	return v
}
