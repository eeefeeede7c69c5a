package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/testutil"
	"github.com/holdfast/holdfast/internal/testutil/pgbouncertest"
)

// Timing of TestSessionProxyPgbench.
const (
	// pgbenchRun is each pgbench run's length (-T, the 30 s): long
	// enough for the event in its middle to complete with time to spare
	// after it, even when a loaded machine makes a kill -9 failover take
	// several times its usual few seconds.
	pgbenchRun = 30 * time.Second
	// pgbenchEventAt is when the switchover or kill comes into a run.
	pgbenchEventAt = 5 * time.Second
	// pgbenchGrace is how long after its -T a pgbench may take to finish
	// (a transaction held for a primary completes first).
	pgbenchGrace = time.Minute
	// pgbouncerStart bounds PgBouncer's start.
	pgbouncerStart = 15 * time.Second
)

// pgbenchClients and pgbenchThreads are the issue's -c 8 -j 2.
const (
	pgbenchClients = 8
	pgbenchThreads = 2
)

// Paths compared in TestSessionProxyPgbench.
const (
	viaSession   = "holdfast session proxy"
	viaHAProxy   = "HAProxy"
	viaPgbouncer = "PgBouncer (session pool) -> HAProxy"
	// viaTxPool is the session proxy with transaction pooling.
	viaTxPool = "holdfast session proxy, transaction pooling"
)

// txPoolSize is the transaction-pooling proxy's --pool-size: one server
// connection per client. With fewer, pgbench -M prepared can deadlock
// against any transaction pool: a pgbench thread prepares each statement
// synchronously (PQprepare) the first time one of its clients runs it,
// so a client that waits for a server connection stops its thread's
// other clients, which hold connections and the row locks the rest wait
// for (see docs/architecture.md). Sharing fewer connections between more
// clients is shown by TestTransactionPoolSharesConnections.
const txPoolSize = pgbenchClients

// sessionReportEnv names the file TestSessionProxyPgbench writes its
// comparison to (markdown), when set.
const sessionReportEnv = "HOLDFAST_SESSION_REPORT"

// inFlightUnknown is the text of the proxy's 40003 error: a request that
// may have committed was in flight when the primary was lost.
const inFlightUnknown = "whether it took effect is unknown"

// TestSessionProxyPgbench is the issue's pgbench demonstration: `pgbench
// -c 8 -j 2` with persistent connections (no -C) through the session-mode
// proxy, side by side with the same pgbench through HAProxy (health checks
// on the agents' /primary) and through PgBouncer in session pool mode
// (pointing at that HAProxy: PgBouncer cannot follow the primary by
// itself), all three in the same events:
//
//   - a `ctl switchover` in the middle of a run, simple protocol, then
//     again with -M prepared: through the session proxy no transaction
//     fails and no client is aborted — with transaction pooling too
//     (a second proxy, --pool-mode=transaction);
//   - a kill -9 of the primary (agent and postmaster) in the middle of a
//     run: through the session proxy only transactions in flight at the
//     kill fail (at most one per client), no client loses its connection
//     (a client pgbench aborts did so on the proxy's 40003 for a COMMIT
//     in flight, whose outcome is unknown: see docs/architecture.md), and
//     every transaction that succeeded after the kill is on the new
//     primary (each inserts a row naming the server's port).
//
// HAProxy's and PgBouncer's results are logged beside ours (they fail
// transactions and lose clients) and written to $HOLDFAST_SESSION_REPORT
// when set.
func TestSessionProxyPgbench(t *testing.T) {
	// holdfast refuses HOLDFAST_* variables it does not know: the report's
	// is kept from the cluster's processes.
	reportPath := os.Getenv(sessionReportEnv)
	if reportPath != "" {
		t.Setenv(sessionReportEnv, "")
		os.Unsetenv(sessionReportEnv)
	}
	c, _ := startProxyCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	primary := c.Primary()
	c.Exec(primary, "CREATE TABLE sp_pgbench_log (tool text, client int, port int, at timestamptz)")
	p := startSessionProxy(t, c)
	ptx := startSessionProxy(t, c, "--pool-mode", "transaction", "--pool-size", strconv.Itoa(txPoolSize))
	hap := startHAProxy(t, c)
	if hap == nil {
		t.Skip("haproxy is not installed")
	}
	pgb := startPgbouncerFor(t, c, hap.port)
	addrs := map[string]string{
		viaSession:   p.rw,
		viaHAProxy:   fmt.Sprintf("127.0.0.1:%d", hap.port),
		viaPgbouncer: fmt.Sprintf("127.0.0.1:%d", pgb),
		viaTxPool:    ptx.rw,
	}
	paths := []string{viaSession, viaHAProxy, viaPgbouncer, viaTxPool}
	const txPoolRun = 3 // viaTxPool's index in paths
	bin := pgbenchPath(t)
	env := pgbenchPasswordEnv(c)
	{
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		init := exec.CommandContext(ctx, bin, "-i", "-s", "2", "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(c.Member(primary).PGPort))
		init.Env = env
		out, err := init.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("pgbench -i: %v\n%s", err, out)
		}
	}
	// The failover run's script: pgbench's TPC-B-like transaction plus a
	// row that names the tool and the server that committed it.
	scripts := map[string]string{}
	dir := testutil.Dir(t)
	for i, via := range paths {
		path := filepath.Join(dir, fmt.Sprintf("tpcb-logged-%d.sql", i))
		if err := os.WriteFile(path, []byte(loggedTPCB(via)), 0o644); err != nil {
			t.Fatal(err)
		}
		scripts[via] = path
	}

	var report []pgbenchRow
	event := func(t *testing.T, name string, extra []string, script bool, do func(t *testing.T, c *Cluster) string) []pgbenchResult {
		c := c.pxBind(t)
		c.WaitFor("healthy", 90*time.Second, Healthy(3))
		runs := make([]*pgbenchProc, len(paths))
		logDir := testutil.Dir(t)
		for i, via := range paths {
			args := append([]string{"-n", "-c", strconv.Itoa(pgbenchClients), "-j", strconv.Itoa(pgbenchThreads),
				"-T", strconv.Itoa(int(pgbenchRun / time.Second))}, extra...)
			if script {
				args = append(args, "-f", scripts[via], "-l", "--log-prefix", filepath.Join(logDir, fmt.Sprintf("tx-%d", i)))
			}
			runs[i] = startPgbench(t, bin, env, addrs[via], args)
		}
		time.Sleep(time.Until(runs[0].start.Add(pgbenchEventAt)))
		detail := do(t, c)
		var res []pgbenchResult
		for i, via := range paths {
			r := runs[i].wait(t)
			r.via, r.logDir, r.logPrefix = via, logDir, fmt.Sprintf("tx-%d", i)
			t.Logf("%s, %s: exit %v, %d processed, %d failed, %d clients aborted (%d on the proxy's 40003)\n%s",
				name, via, r.err, r.processed, r.failed, len(r.aborted), r.abortedUnknown(), r.out)
			res = append(res, r)
			report = append(report, pgbenchRow{event: name, detail: detail, r: r})
		}
		return res
	}
	switchover := func(t *testing.T, c *Cluster) string {
		from := c.Primary()
		if o, err := c.ctlRun(time.Minute, "switchover"); err != nil {
			t.Fatalf("ctl switchover: %v\n%s", err, o)
		}
		to := c.WaitFor("a new primary after the switchover", 60*time.Second, leaderRunning(from)).Leader
		return from + " -> " + to
	}
	// Through a switchover the session proxy shows no error at all.
	wantClean := func(t *testing.T, r pgbenchResult) {
		t.Helper()
		if r.err != nil || r.failed != 0 || len(r.aborted) != 0 || r.processed == 0 {
			t.Errorf("through %s: exit %v, %d failed transactions, aborted clients %q, %d processed; want exit 0, 0 failed, none aborted, some processed",
				r.via, r.err, r.failed, r.aborted, r.processed)
		}
	}

	for _, mode := range []struct{ name, flag string }{{"simple", ""}, {"prepared", "-M prepared"}} {
		name := "switchover, -M " + mode.name
		ok := t.Run(name, func(t *testing.T) {
			var extra []string
			if mode.flag != "" {
				extra = strings.Fields(mode.flag)
			}
			res := event(t, name, extra, false, switchover)
			wantClean(t, res[0])
			wantClean(t, res[txPoolRun])
		})
		if !ok {
			return
		}
	}

	t.Run("kill -9 of the primary", func(t *testing.T) {
		var killed, gone time.Time
		var newPrimary string
		res := event(t, "kill -9 of the primary, -M simple", nil, true, func(t *testing.T, c *Cluster) string {
			old := c.Primary()
			killed = time.Now()
			c.KillHard(old)
			gone = time.Now() // the old primary's agent and postmaster are gone
			newPrimary = c.WaitFor("a new primary after kill -9", 90*time.Second, leaderRunning(old)).Leader
			return old + " -> " + newPrimary + fmt.Sprintf(" (new primary running %s after the kill)", time.Since(killed).Round(100*time.Millisecond))
		})
		// The same of the session proxy with and without transaction
		// pooling.
		c := c.pxBind(t)
		for _, r := range []pgbenchResult{res[0], res[txPoolRun]} {
			// No client lost its connection; pgbench gives up only on the
			// proxy's 40003 (a COMMIT in flight: outcome unknown).
			if other := len(r.aborted) - r.abortedUnknown(); other > 0 {
				t.Errorf("through %s %d clients were aborted by something else than the 40003 of a COMMIT in flight: %q", r.via, other, r.aborted)
			}
			if r.processed == 0 || r.failed+len(r.aborted) > pgbenchClients {
				t.Errorf("through %s: %d processed, %d failed, %d aborted; want some processed and at most one failure per client (the transaction in flight at the kill)",
					r.via, r.processed, r.failed, len(r.aborted))
			}
			if r.err != nil && len(r.aborted) == 0 {
				t.Errorf("pgbench through %s exited with %v", r.via, r.err)
			}
			// Every transaction pgbench saw succeed after the old primary was
			// gone committed on the new primary: at least as many rows there
			// written after that as transactions that began after it and
			// succeeded, at most as many as those that ended after it (one
			// held across the failover began before), and none written by
			// another server. (A transaction acknowledged by the old primary
			// between the kill's start and its death may be lost with it:
			// asynchronous replication.)
			began, ended, err := r.succeededAfter(gone)
			if err != nil {
				t.Fatal(err)
			}
			var rows, elsewhere int64
			if rows, err = c.queryInt(newPrimary, "SELECT count(*) FROM sp_pgbench_log WHERE tool = $1 AND at > $2", r.via, gone); err != nil {
				t.Fatal(err)
			}
			if elsewhere, err = c.queryInt(newPrimary, "SELECT count(*) FROM sp_pgbench_log WHERE tool = $1 AND at > $2 AND port <> $3", r.via, gone, c.Member(newPrimary).PGPort); err != nil {
				t.Fatal(err)
			}
			t.Logf("through %s, %d transactions began and succeeded after the old primary was gone (%d ended after it); the new primary %s holds %d rows written after it (%d by another server)",
				r.via, began, ended, newPrimary, rows, elsewhere)
			if began == 0 || rows < int64(began) || rows > int64(ended) || elsewhere != 0 {
				t.Errorf("after the old primary was gone: %d transactions began and succeeded, %d ended, by pgbench's log; %d rows on the new primary %s (%d written by another server); want between the two, non-zero, and all by %s (through %s)",
					began, ended, rows, newPrimary, elsewhere, newPrimary, r.via)
			}
		}
		if n, err := p.metric("holdfast_proxy_session_requests_failed_total"); err == nil {
			t.Logf("holdfast_proxy_session_requests_failed_total = %v", n)
		}
	})

	text := sessionPgbenchReport(report)
	t.Log("\n" + text)
	if reportPath != "" {
		if err := os.WriteFile(reportPath, []byte(text), 0o644); err != nil {
			t.Errorf("write the report: %v", err)
		}
	}
}

// loggedTPCB is pgbench's built-in TPC-B-like script (scale 2) with one
// more INSERT in its transaction: the tool and the server that ran it.
func loggedTPCB(tool string) string {
	return `\set aid random(1, 100000 * 2)
\set bid random(1, 2)
\set tid random(1, 10 * 2)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
INSERT INTO sp_pgbench_log (tool, client, port, at) VALUES ('` + tool + `', :client_id, inet_server_port(), clock_timestamp());
END;
`
}

// pgbenchPasswordEnv is the environment for pgbench as the cluster's
// superuser, with the password in PGPASSWORD (the test's own listeners are
// not in the cluster's pgpass).
func pgbenchPasswordEnv(c *Cluster) []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "PG") {
			env = append(env, e)
		}
	}
	return append(env, "PGPASSWORD="+c.Layout.Superuser.Password, "PGUSER="+c.Layout.Superuser.Username,
		"PGDATABASE=postgres", "PGSSLMODE=disable")
}

// pgbenchProc is a pgbench run in progress.
type pgbenchProc struct {
	cmd   *exec.Cmd
	out   *lockedBuffer
	start time.Time
	done  chan error
}

func startPgbench(t *testing.T, bin string, env []string, addr string, args []string) *pgbenchProc {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, append([]string{"-h", host, "-p", port}, args...)...)
	cmd.Env = env
	pr := &pgbenchProc{cmd: cmd, out: &lockedBuffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = pr.out, pr.out
	pr.start = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pgbench: %v", err)
	}
	go func() { pr.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
		}
	})
	return pr
}

// pgbenchResult is what one pgbench run reported.
type pgbenchResult struct {
	via               string
	out               string
	err               error
	processed, failed int
	aborted           []string // pgbench's "client N ... aborted ..." lines
	logDir, logPrefix string
}

var pgbenchAbortedRe = regexp.MustCompile(`(?m)^.*client \d+ .*aborted.*$`)

func (pr *pgbenchProc) wait(t *testing.T) pgbenchResult {
	t.Helper()
	var r pgbenchResult
	select {
	case r.err = <-pr.done:
	case <-time.After(time.Until(pr.start.Add(pgbenchRun + pgbenchGrace))):
		pr.cmd.Process.Kill()
		<-pr.done
		t.Fatalf("pgbench did not finish %s after its %s run:\n%s", pgbenchGrace, pgbenchRun, pr.out.String())
	}
	r.out = pr.out.String()
	r.aborted = pgbenchAbortedRe.FindAllString(r.out, -1)
	// A run with aborted clients still prints its summary.
	r.processed, r.failed, _ = pgbenchCounts(r.out)
	return r
}

// abortedUnknown counts the clients pgbench aborted on the proxy's 40003.
func (r pgbenchResult) abortedUnknown() int {
	n := 0
	for _, l := range r.aborted {
		if strings.Contains(l, inFlightUnknown) {
			n++
		}
	}
	return n
}

// succeededAfter counts the transactions pgbench's per-transaction logs
// (-l) record as successful that began after at, and those that ended
// after it. A line is "client_id transaction_no time script_no time_epoch
// time_us": time is the latency in microseconds ("failed" for a failed
// transaction), time_epoch and time_us when it ended.
func (r pgbenchResult) succeededAfter(at time.Time) (began, ended int, err error) {
	files, err := filepath.Glob(filepath.Join(r.logDir, r.logPrefix+".*"))
	if err != nil || len(files) == 0 {
		return 0, 0, fmt.Errorf("pgbench's transaction logs %s.*: none (%v)", r.logPrefix, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return 0, 0, fmt.Errorf("read pgbench's transaction log: %w", err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 6 || fs[2] == "failed" || fs[2] == "skipped" {
				continue
			}
			lat, err0 := strconv.ParseInt(fs[2], 10, 64)
			sec, err1 := strconv.ParseInt(fs[4], 10, 64)
			us, err2 := strconv.ParseInt(fs[5], 10, 64)
			if err0 != nil || err1 != nil || err2 != nil {
				return 0, 0, fmt.Errorf("pgbench transaction log line %q: not a time", sc.Text())
			}
			end := time.Unix(sec, us*1000)
			if end.After(at) {
				ended++
			}
			if end.Add(-time.Duration(lat) * time.Microsecond).After(at) {
				began++
			}
		}
	}
	return began, ended, nil
}

// pgbenchRow is one line of the comparison.
type pgbenchRow struct {
	event, detail string
	r             pgbenchResult
}

// sessionPgbenchReport renders the comparison as markdown.
func sessionPgbenchReport(rows []pgbenchRow) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# pgbench through a switchover and a failover: session proxy, HAProxy, PgBouncer\n\n")
	fmt.Fprintf(&b, "Written by `HOLDFAST_SESSION_REPORT=$PWD/docs/session-proxy-report.md go test -count=1 -run TestSessionProxyPgbench ./test/e2e/` on %s.\n\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, "A 3-member `holdfast up` cluster; `pgbench -n -c %d -j %d -T %d` with persistent connections (no -C), one run per path, the three paths side by side in the same events, %s into the runs. "+
		"HAProxy: TCP mode, the primary found by `OPTIONS /primary` on each agent's API every second, `on-marked-down shutdown-sessions`. "+
		"PgBouncer: pool_mode=session, pointing at that HAProxy (PgBouncer cannot follow the primary by itself). "+
		"The failover run's transaction is pgbench's TPC-B-like one plus an INSERT naming the server.\n\n",
		pgbenchClients, pgbenchThreads, int(pgbenchRun/time.Second), pgbenchEventAt)
	b.WriteString("| event | path | transactions | failed transactions | clients aborted | of which on a COMMIT in flight (40003) |\n|---|---|---|---|---|---|\n")
	for _, row := range rows {
		fmt.Fprintf(&b, "| %s (%s) | %s | %d | %d | %d of %d | %d |\n", row.event, row.detail, row.r.via, row.r.processed, row.r.failed,
			len(row.r.aborted), pgbenchClients, row.r.abortedUnknown())
	}
	b.WriteString("\nA client pgbench aborts stops for the rest of the run: its connection was lost, or it got an error pgbench does not retry. " +
		"pgbench counts as a failed transaction, and goes on, only a serialization failure or a deadlock (40001, 40P01). " +
		"The session proxy answers a request in flight at a lost primary with 40001 when it is known not to have committed (inside a transaction block, before COMMIT) " +
		"and with 40003 when it may have (a COMMIT in flight): pgbench aborts the client on 40003, as it must not retry blindly. See docs/architecture.md, \"Session mode\".\n")
	return b.String()
}

// startPgbouncerFor starts PgBouncer in session pool mode in front of
// port (HAProxy's), with SCRAM and the superuser in a userlist file of the
// test's own; it runs as the postgres account when the test runs as root
// (PgBouncer refuses root). It returns PgBouncer's port; it is stopped
// when t ends.
func startPgbouncerFor(t *testing.T, c *Cluster, port int) int {
	t.Helper()
	if _, err := pgbouncertest.Binary(); err != nil {
		t.Skip(err)
	}
	dir := testutil.Dir(t)
	listen := testutil.FreePort(t)
	cmd, err := pgbouncertest.Command(pgbouncertest.Config{
		Dir: dir, ServerPort: port, ListenPort: listen, MaxClientConn: 100,
		User: c.Layout.Superuser.Username, Password: c.Layout.Superuser.Password,
	})
	if err != nil {
		t.Fatal(err)
	}
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pgbouncer: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("==== pgbouncer log (tail)\n%s\n%s", fileTail(filepath.Join(dir, pgbouncertest.LogFile), 60), out.String())
		}
	})
	deadline := time.Now().Add(pgbouncerStart)
	for {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", listen), time.Second)
		if err == nil {
			conn.Close()
			return listen
		}
		select {
		case <-exited:
			t.Fatalf("pgbouncer exited at once:\n%s\n%s", out.String(), fileTail(filepath.Join(dir, pgbouncertest.LogFile), 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgbouncer does not listen on %d within %s: %v\n%s", listen, pgbouncerStart, err, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
