package e2e

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/local"
)

// stopWALSender freezes the primary's WAL sender to replica: the replica
// receives no WAL the primary writes after this returns. Freezing the
// replica's WAL receiver instead bounds nothing: the kernel keeps filling
// its socket buffer, up to net.ipv4.tcp_rmem's maximum (32 MB on the test
// machines), and a thawed receiver read a whole 30 MB batch from it. The
// frozen sender dies with the primary's other children (SIGKILL ends a
// stopped process); the returned function thaws it if it is still there.
func (c *Cluster) stopWALSender(primary, replica string) func() {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.Connect(ctx, primary)
	if err != nil {
		c.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pid FROM pg_stat_replication WHERE application_name = $1", replica).Scan(&pid); err != nil {
		c.t.Fatalf("WAL sender of %s to %s: %v", primary, replica, err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		c.t.Fatalf("SIGSTOP the WAL sender %d: %v", pid, err)
	}
	thaw := func() { syscall.Kill(pid, syscall.SIGCONT) }
	c.t.Cleanup(thaw)
	return thaw
}

// childPIDs lists the processes whose parent is pid (from /proc).
func childPIDs(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces; cut after ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

// currentLSN reads the member's current WAL position.
func (c *Cluster) currentLSN(member string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.Connect(ctx, member)
	if err != nil {
		c.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var lsn string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
		c.t.Fatal(err)
	}
	return lsn
}

func lsnValue(s string) uint64 {
	hi, lo, _ := strings.Cut(s, "/")
	h, _ := strconv.ParseUint(hi, 16, 32)
	l, _ := strconv.ParseUint(lo, 16, 32)
	return h<<32 | l
}

// Issue 11, item 4: with every replica far behind, a forced failover to
// the less advanced one states what it may lose and needs --force (and the
// API refuses an unforced request the same way); the old primary's rewind
// then records how much WAL it discarded, shown by `ctl history`.
func TestForcedFailoverStatesTheLoss(t *testing.T) {
	c := StartCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	p := c.Primary()
	reps := others(c.DBMembers(), p)
	behind, ahead := reps[0], reps[1]
	// Each batch writes about 10 MB of WAL, ten times
	// maximum_lag_on_failover.
	const rows, rowBytes = 10000, 960
	c.Exec(p, "CREATE TABLE acked (id int, pad text)")
	for _, r := range reps {
		c.WaitCount(r, "acked", 0, 30*time.Second)
	}

	// behind receives nothing more; ahead receives the first batch and
	// nothing of the second.
	c.stopWALSender(p, behind)
	execLong(t, c, p, "INSERT INTO acked SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, $1::int) g", rows)
	c.WaitCount(ahead, "acked", rows, 60*time.Second)
	c.stopWALSender(p, ahead)
	execLong(t, c, p, "INSERT INTO acked SELECT g, repeat(md5(g::text), 30) FROM generate_series($1::int, $2::int) g", rows+1, 2*rows)
	end := lsnValue(c.currentLSN(p))
	c.WaitFor("the primary's position published", 30*time.Second, func(l ctl.ClusterList) bool {
		return lsnValue(member(l, p).LSN) >= end
	})
	// The primary's backends outlive a SIGKILLed postmaster for a moment
	// (longer on a loaded machine), the frozen WAL senders among them:
	// kill them too, so none is thawed later to stream the rest.
	children := childPIDs(c.PostmasterPID(p))
	c.KillHard(p)
	for _, pid := range children {
		syscall.Kill(pid, syscall.SIGKILL)
		waitGone(t, pid)
	}

	// Both replicas lack more than maximum_lag_on_failover: nobody is
	// promoted automatically.
	c.WaitFor("no leader, both replicas reporting", 60*time.Second, func(l ctl.ClusterList) bool {
		return l.Leader == "" && member(l, behind).LSN != "" && member(l, ahead).LSN != "" &&
			lsnValue(member(l, behind).LSN) < lsnValue(member(l, ahead).LSN)
	})

	out, err := c.ctlRun(time.Minute, "failover", "--to", behind)
	if err == nil {
		t.Fatalf("ctl failover to the less advanced member succeeded without --force:\n%s", out)
	}
	for _, want := range []string{"may lose acknowledged commits", "behind the last known primary position", "published by " + p,
		"the most advanced member is " + ahead, "--force"} {
		if !strings.Contains(out, want) {
			t.Errorf("ctl failover output lacks %q:\n%s", want, out)
		}
	}
	// The API refuses the same request (as curl would send it).
	code, body, err := c.apiDo(ahead, http.MethodPost, "/failover", `{"candidate":"`+behind+`"}`, nil)
	if err != nil || code != http.StatusPreconditionFailed || !strings.Contains(body, "the most advanced member is "+ahead) {
		t.Fatalf("POST /failover without force: %d %s %v, want 412 with the facts", code, body, err)
	}
	if l, _ := c.List(); l.Leader != "" {
		t.Fatalf("%s leads after refused failovers", l.Leader)
	}

	out, err = c.ctlRun(2*time.Minute, "failover", "--to", behind, "--force")
	if err != nil {
		t.Fatalf("ctl failover --force: %v\n%s", err, out)
	}
	if !strings.Contains(out, "warning: failover to "+behind+" may lose acknowledged commits") {
		t.Errorf("forced failover did not state the loss:\n%s", out)
	}
	c.WaitFor(behind+" leads", 60*time.Second, func(l ctl.ClusterList) bool { return l.Leader == behind })

	// The old primary comes back, is rewound, and the discarded WAL is on
	// record.
	c.Up()
	c.WaitFor("healthy", 120*time.Second, Healthy(3))
	var hist string
	re := regexp.MustCompile(regexp.QuoteMeta(p) + `'s rewind at \S+ threw away (\d+) bytes`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		hist, err = c.ctlRun(20*time.Second, "history")
		if m := re.FindStringSubmatch(hist); err == nil && m != nil {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			if n < rows*rowBytes { // at least a batch's payload
				t.Errorf("history records %d discarded bytes, want at least %d:\n%s", n, rows*rowBytes, hist)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ctl history shows no discarded WAL of %s: %v\n%s", p, err, hist)
		}
		time.Sleep(500 * time.Millisecond)
	}
	logb, _ := os.ReadFile(local.LogFile(c.Dir, p))
	if !strings.Contains(string(logb), "rewind discarded WAL") {
		t.Errorf("%s's log does not report the discarded WAL", p)
	}
}

// logFrom returns what member's agent log gained since offset.
func (c *Cluster) logFrom(member string, offset int64) string {
	b, _ := os.ReadFile(local.LogFile(c.Dir, member))
	if int64(len(b)) < offset {
		return string(b)
	}
	return string(b[offset:])
}

func (c *Cluster) logSize(member string) int64 {
	st, err := os.Stat(local.LogFile(c.Dir, member))
	if err != nil {
		return 0
	}
	return st.Size()
}

// Issue 11, item 7: `holdfast down` stops the primary first, while the
// store has its quorum: the primary releases its key, its synchronous
// setting is never dropped, no replica is promoted, and the next up
// resumes the cluster with every row.
func TestDownStopsThePrimaryFirst(t *testing.T) {
	c := StartCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	if out, err := c.ctlRun(20*time.Second, "edit-config", "--set", "synchronous_mode=on"); err != nil {
		t.Fatalf("edit-config: %v\n%s", err, out)
	}
	l := c.WaitFor("a synchronous standby", 30*time.Second, func(l ctl.ClusterList) bool { return len(syncStandbys(l)) == 1 })
	p := l.Leader
	c.WaitFor("the primary waits for it", 20*time.Second, func(ctl.ClusterList) bool {
		return strings.HasPrefix(c.setting(p, "synchronous_standby_names"), "ANY 1 (")
	})
	c.Exec(p, "CREATE TABLE kept (id int)")
	c.Exec(p, "INSERT INTO kept SELECT generate_series(1, 100)")
	offsets := map[string]int64{}
	for _, m := range c.DBMembers() {
		offsets[m] = c.logSize(m)
	}

	c.Down()

	pl := c.logFrom(p, offsets[p])
	if !strings.Contains(pl, `msg="released the leader key"`) {
		t.Errorf("the primary %s did not release its key on the way down:\n%s", p, pl)
	}
	if strings.Contains(pl, `synchronous_standby_names=""`) {
		t.Errorf("the primary %s fell back to asynchronous commits on the way down:\n%s", p, pl)
	}
	auto, err := os.ReadFile(filepath.Join(local.MemberDir(c.Dir, p), "pgdata", "postgresql.auto.conf"))
	if err != nil || !strings.Contains(string(auto), "synchronous_standby_names = 'ANY 1 (") {
		t.Errorf("the stopped primary's synchronous setting: %v\n%s", err, auto)
	}
	for _, r := range others(c.DBMembers(), p) {
		if rl := c.logFrom(r, offsets[r]); strings.Contains(rl, `msg="acquired the leader key"`) {
			t.Errorf("%s was promoted while the cluster stopped:\n%s", r, rl)
		}
	}

	c.Up()
	c.WaitFor("healthy again, not paused", 120*time.Second, func(l ctl.ClusterList) bool { return !l.Paused && Healthy(3)(l) })
	c.WaitCount(c.Primary(), "kept", 100, 30*time.Second)
}
