package e2e

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/ctl"
)

const (
	// replayLagWait bounds every wait for a state the agents (one loop a
	// second) and the proxy (a refresh every TTL/4) reach within a few
	// seconds on an idle machine; generous for a loaded one.
	replayLagWait = 60 * time.Second
	// replayLagSQLTimeout bounds one statement, the ~10 MB write included.
	replayLagSQLTimeout = time.Minute
	// replayLagLimit is the bound the health checks are asked for and the
	// proxy is started with (--max-lag 1MB).
	replayLagLimit = 1 << 20
	// replayLagAtLeast is the replay lag the paused replica must show after
	// the write of about 10 MB of WAL.
	replayLagAtLeast = 8 << 20
)

// Issue 11, item 3: a replica whose replay is paused keeps receiving WAL, so
// measured by received WAL it looks current while its queries see old data.
// With pg_wal_replay_pause() on one replica and about 10 MB written on the
// primary:
//
//   - `ctl list` shows that replica's replay lag (and its received lag
//     still under 1 MB), in -o json and in the table;
//   - its /replica?lag=1MB and /readiness answer 503, while /replica
//     without a bound and /readiness?mode=write still answer 200;
//   - a proxy started with --max-lag 1MB sends it no read-only connection;
//
// and once replay resumes it catches up and returns on all three.
func TestReplayLag(t *testing.T) {
	c := StartCluster(t, 3)
	c.WaitFor("healthy", replayLagWait, Healthy(3))
	primary := c.Primary()
	reps := others(c.DBMembers(), primary)
	paused, good := reps[0], reps[1]
	p := startProxyProc(t, c, "--max-lag", "1MB", "--ro-fallback=false")
	dsn := c.proxyDSN(p.ro, 5*time.Second)
	t.Cleanup(func() { _ = c.TryExec(paused, "SELECT pg_wal_replay_resume()") })

	// spread makes n read-only connections through the proxy and counts
	// them per member; one reaching the primary fails the test.
	spread := func(n int) (map[string]int, error) {
		counts := map[string]int{}
		for range n {
			b, err := whoAnswers(dsn, 10*time.Second)
			if err != nil {
				return counts, err
			}
			name := c.memberByPort(b.port)
			if name == primary || !b.inRecovery {
				t.Errorf("a read-only connection reached %s (in recovery %v), the primary, with --ro-fallback=false", name, b.inRecovery)
			}
			counts[name]++
		}
		return counts, nil
	}
	bothReplicas := func(what string) {
		t.Helper()
		waitUntil(t, what+": read-only connections reach both replicas", replayLagWait, func() (bool, string) {
			counts, err := spread(10)
			return err == nil && counts[paused] > 0 && counts[good] > 0, fmt.Sprintf("%v (err %v)", counts, err)
		})
	}
	// health waits until member answers path with want.
	health := func(member, path string, want int) {
		t.Helper()
		waitUntil(t, fmt.Sprintf("%s answers %d to GET %s", member, want, path), replayLagWait, func() (bool, string) {
			code, body, err := c.apiDo(member, http.MethodGet, path, "", nil)
			return err == nil && code == want, fmt.Sprintf("%d %s (err %v)", code, strings.TrimSpace(body), err)
		})
	}

	bothReplicas("before the pause")
	health(paused, "/replica?lag=1MB", http.StatusOK)

	// Pause replay on one replica; its WAL receiver keeps streaming.
	c.Exec(paused, "SELECT pg_wal_replay_pause()")
	waitUntil(t, paused+" replay paused", replayLagWait, func() (bool, string) {
		n, err := c.queryInt(paused, "SELECT (pg_get_wal_replay_pause_state() = 'paused')::int")
		return err == nil && n == 1, fmt.Sprintf("paused=%d (err %v)", n, err)
	})
	if err := c.TryExecWithin(primary, replayLagSQLTimeout,
		"CREATE TABLE replay_lag AS SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 10000) g"); err != nil {
		t.Fatalf("write about 10 MB on the primary %s: %v", primary, err)
	}

	// ctl list: received lag back under the limit, replay lag about 10 MB.
	l := c.WaitFor(paused+" received everything but replayed none of it", replayLagWait, func(l ctl.ClusterList) bool {
		m := member(l, paused)
		return m.State == "streaming" && m.LagBytes != nil && *m.LagBytes <= replayLagLimit &&
			m.ReplayLagBytes != nil && *m.ReplayLagBytes >= replayLagAtLeast
	})
	m := member(l, paused)
	t.Logf("%s with replay paused: received lag %d bytes, replay lag %d bytes (replayed to %s, received to %s)",
		paused, *m.LagBytes, *m.ReplayLagBytes, m.ReplayLSN, m.LSN)
	if m.ReplayLSN == "" {
		t.Errorf("ctl list -o json shows no replay_lsn for %s, whose replay trails: %+v", paused, m)
	}
	out, err := c.ctlRun(20*time.Second, "list")
	if err != nil {
		t.Fatalf("ctl list: %v\n%s", err, out)
	}
	if mb, err := tableColumn(out, paused, "REPLAY LAG (MB)"); err != nil || mb < float64(replayLagAtLeast)/(1<<20) {
		t.Errorf("ctl list: %s's REPLAY LAG (MB) = %v (err %v), want at least %d:\n%s", paused, mb, err, replayLagAtLeast>>20, out)
	}
	if mb, err := tableColumn(out, paused, "RECEIVE LAG (MB)"); err != nil || mb > 1 {
		t.Errorf("ctl list: %s's RECEIVE LAG (MB) = %v (err %v), want at most 1:\n%s", paused, mb, err, out)
	}

	// Health checks: a read bound fails, what reads nothing of the data
	// does not.
	health(paused, "/replica?lag=1MB", http.StatusServiceUnavailable)
	health(paused, "/readiness", http.StatusServiceUnavailable)
	health(paused, "/replica", http.StatusOK)
	health(paused, "/readiness?mode=write", http.StatusOK)
	health(good, "/replica?lag=1MB", http.StatusOK)

	// The proxy: ten in a row on the other replica (round-robin alternates
	// between qualifying replicas), then it must stay that way.
	waitUntil(t, "the proxy drops "+paused+" from the read-only pool", replayLagWait, func() (bool, string) {
		counts, err := spread(10)
		return err == nil && counts[good] == 10, fmt.Sprintf("%v (err %v)", counts, err)
	})
	if counts, err := spread(20); err != nil || counts[good] != 20 {
		t.Errorf("while %s's replay trails by more than --max-lag, 20 read-only connections went %v (err %v); want all on %s", paused, counts, err, good)
	}

	// Resume: it replays what it holds and returns everywhere.
	c.Exec(paused, "SELECT pg_wal_replay_resume()")
	c.WaitFor(paused+" replayed what it received", replayLagWait, func(l ctl.ClusterList) bool {
		m := member(l, paused)
		return m.State == "streaming" && m.ReplayLagBytes != nil && *m.ReplayLagBytes <= replayLagLimit
	})
	health(paused, "/replica?lag=1MB", http.StatusOK)
	health(paused, "/readiness", http.StatusOK)
	bothReplicas("after replay resumed")
	if l, err := c.List(); err != nil || l.Leader != primary {
		t.Errorf("the primary changed while a replica's replay was paused: leader %q (err %v), want %s", l.Leader, err, primary)
	}
}

// waitUntil polls cond every 200 ms until it holds, and fails the test with
// cond's last description after timeout.
func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() (ok bool, last string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s; last: %s", timeout, what, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// tableColumn reads a number from `ctl list`'s table: the cell of column
// header in member's row. The table is aligned, so the cell starts where
// its header does.
func tableColumn(table, member, header string) (float64, error) {
	lines := strings.Split(table, "\n")
	col := -1
	for i, line := range lines {
		if strings.HasPrefix(line, "MEMBER ") {
			col = strings.Index(line, header)
			lines = lines[i+1:]
			break
		}
	}
	if col < 0 {
		return 0, fmt.Errorf("no column %q", header)
	}
	for _, line := range lines {
		if f := strings.Fields(line); len(f) == 0 || f[0] != member {
			continue
		}
		if len(line) <= col {
			return 0, fmt.Errorf("row of %s has no %q cell", member, header)
		}
		cell := strings.Fields(line[col:])
		if len(cell) == 0 {
			return 0, fmt.Errorf("row of %s has an empty %q cell", member, header)
		}
		return strconv.ParseFloat(cell[0], 64)
	}
	return 0, fmt.Errorf("no row for %s", member)
}
