package e2e

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/holdfast/holdfast/internal/ctl"
)

// roSessionWait bounds how long the proxy may take to act on a replica
// leaving the read-only pool (the store's watch, then the session's move).
const roSessionWait = 40 * time.Second

// TestSessionProxyReadOnly runs `holdfast proxy --mode=session` in front
// of a three-member cluster and shows its read-only listener moving
// sessions off a replica that leaves the read-only pool:
//
//   - sessions log in to replicas (in recovery) read-only
//     (default_transaction_read_only=on), balanced across them;
//   - `ctl switchover --to` the replica an idle session runs on: the
//     session, with SET application_name and a protocol-level prepared
//     statement, runs its next statement on another replica (still in
//     recovery), with the same setting and statement; a session on that
//     replica holding a WITH HOLD cursor is closed with FATAL 57P01 and
//     the reason;
//   - kill -9 of the replica (agent and postmaster) the idle session then
//     runs on: its next statement runs on the remaining replica with the
//     same setting and statement; a statement in flight there fails with
//     40003 and its session goes on, on the remaining replica; a session
//     on that replica keeps its server connection (same backend pid);
//   - the session metrics count the ro moves apart from rw ones.
func TestSessionProxyReadOnly(t *testing.T) {
	c, _ := startProxyCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	primary := c.Primary()
	c.Exec(primary, "CREATE TABLE IF NOT EXISTS ro_items (x int); INSERT INTO ro_items VALUES (41)")
	// --max-lag generous: the replicas replay the setup above within it
	// even on a loaded machine; the pool changes here are stops and
	// promotions. No --ro-fallback: during the switchover no replica
	// qualifies for a moment (each must follow the new timeline), and a
	// session sent to the new primary by fallback meanwhile (read-only,
	// and back to a replica once one qualifies) would make where the
	// next statement runs a matter of timing.
	p := startSessionProxy(t, c, "--max-lag", "64MB", "--ro-fallback=false")
	t.Cleanup(func() {
		if b, err := os.ReadFile(p.log); err == nil && strings.Contains(string(b), "WARNING: DATA RACE") {
			t.Errorf("the session-mode proxy reported a data race:\n%s", fileTail(p.log, 200))
		}
	})
	c.WaitFor("the setup replayed on every replica", 60*time.Second, Healthy(3))
	dsn := c.proxyDSN(p.ro, 10*time.Second)
	ctx := context.Background()
	type roSession struct {
		conn   *pgx.Conn
		member string
		pid    int
	}
	open := func(t *testing.T) roSession {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(cctx, dsn)
		if err != nil {
			t.Fatalf("connect to the read-only port %s: %v", p.ro, err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		var port, pid int
		var inRecovery bool
		var ro string
		if err := conn.QueryRow(cctx, "SELECT inet_server_port(), pg_is_in_recovery(), current_setting('default_transaction_read_only'), pg_backend_pid()").
			Scan(&port, &inRecovery, &ro, &pid); err != nil {
			t.Fatal(err)
		}
		if !inRecovery || ro != "on" {
			t.Errorf("a read-only session on %s: in recovery %v, default_transaction_read_only %q; want a replica, on", c.memberByPort(port), inRecovery, ro)
		}
		return roSession{conn: conn, member: c.memberByPort(port), pid: pid}
	}

	// Sessions on both replicas: the idle and the cursor one on the same.
	var idle, cursor *roSession
	members := map[string]bool{}
	for i := 0; i < 12 && (idle == nil || cursor == nil || len(members) < 2); i++ {
		s := open(t)
		members[s.member] = true
		switch {
		case idle == nil:
			idle = &s
		case s.member == idle.member && cursor == nil:
			cursor = &s
		}
	}
	if idle == nil || cursor == nil || len(members) < 2 {
		t.Fatalf("twelve read-only sessions did not land on both replicas (%v): no balancing", members)
	}
	t.Logf("idle and cursor sessions on %s", idle.member)
	for _, sql := range []string{
		"SET application_name = 'ro-e2e'",
	} {
		if _, err := idle.conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if _, err := idle.conn.Prepare(ctx, "plus", "SELECT x + $1::int FROM ro_items"); err != nil {
		t.Fatal(err)
	}
	if _, err := cursor.conn.Exec(ctx, "DECLARE held CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 10) g"); err != nil {
		t.Fatalf("a WITH HOLD cursor on a replica: %v", err)
	}

	check := func(stage, notOn string) string {
		t.Helper()
		qctx, cancel := context.WithTimeout(ctx, sessionQueryTimeout)
		defer cancel()
		var port, pid, plus int
		var inRecovery bool
		var app, ro string
		if err := idle.conn.QueryRow(qctx, "SELECT inet_server_port(), pg_is_in_recovery(), current_setting('application_name'), current_setting('default_transaction_read_only'), pg_backend_pid()").
			Scan(&port, &inRecovery, &app, &ro, &pid); err != nil {
			t.Fatalf("%s: the idle session's next statement: %v", stage, err)
		}
		m := c.memberByPort(port)
		if m == notOn || !inRecovery || pid == idle.pid {
			t.Errorf("%s: the idle session answers from %s (in recovery %v, pid %d, before %d); want another replica than %s", stage, m, inRecovery, pid, idle.pid, notOn)
		}
		if app != "ro-e2e" || ro != "on" {
			t.Errorf("%s: application_name %q, default_transaction_read_only %q; want %q, on", stage, app, ro, "ro-e2e")
		}
		if err := idle.conn.QueryRow(qctx, "plus", 1).Scan(&plus); err != nil || plus != 42 {
			t.Errorf("%s: the prepared statement: %d, %v; want 42", stage, plus, err)
		}
		idle.pid = pid
		return m
	}
	waitMetric := func(what string, want float64, name string, labels ...string) {
		t.Helper()
		deadline := time.Now().Add(roSessionWait)
		for {
			n, _ := p.metric(name, labels...)
			if n >= want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s%v = %v after %s, want >= %v", what, name, labels, n, roSessionWait, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// 1. The idle session's replica is promoted.
	promoted := idle.member
	if o, err := c.ctlRun(2*time.Minute, "switchover", "--to", promoted); err != nil {
		t.Fatalf("ctl switchover --to %s: %v\n%s", promoted, err, o)
	}
	c.WaitFor(promoted+" promoted", 60*time.Second, func(l ctl.ClusterList) bool { return leaderRunning(primary)(l) && l.Leader == promoted })
	// The proxy moves idle sessions as soon as it sees the change, before
	// their next statement (that one is held until a replica qualifies).
	waitMetric("the cursor session closed", 1, "holdfast_proxy_sessions_unmovable_total", `listener="ro"`, `reason="hold_cursor"`)
	now := check("after the switchover to "+promoted, promoted)

	qctx, cancel := context.WithTimeout(ctx, sessionQueryTimeout)
	defer cancel()
	_, err := cursor.conn.Exec(qctx, "FETCH 1 FROM held")
	var pe *pgconn.PgError
	want := "holdfast proxy: the session's read-only server left the pool while this session had an open WITH HOLD cursor; the session cannot be moved — reconnect"
	if !errors.As(err, &pe) || pe.Code != "57P01" || pe.Message != want {
		t.Errorf("the WITH HOLD cursor session after its replica was promoted: %v; want FATAL 57P01 %q", err, want)
	}

	// 2. The replica it now runs on dies; a session on the other one is
	// not touched.
	c.WaitFor("healthy after the switchover", 90*time.Second, Healthy(3))
	var other, busy *roSession
	for i := 0; i < 12 && (other == nil || busy == nil); i++ {
		switch s := open(t); {
		case s.member != now && other == nil:
			other = &s
		case s.member == now && busy == nil:
			busy = &s
		}
	}
	if other == nil || busy == nil {
		t.Fatalf("twelve read-only sessions did not land on both replicas: no balancing")
	}
	busyErr := make(chan error, 1)
	go func() {
		_, err := busy.conn.Exec(ctx, "SELECT pg_sleep(60)")
		busyErr <- err
	}()
	// The statement reaches the server before its postmaster dies.
	waitBusy := time.Now().Add(roSessionWait)
	for {
		var n int64
		n, err := c.queryInt(now, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'")
		if err == nil && n >= 1 {
			break
		}
		if time.Now().After(waitBusy) {
			t.Fatalf("the busy statement never showed up on %s: %d, %v", now, n, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.KillHard(now)
	// The killed postmaster's backends outlive it for a moment (longer on a
	// loaded machine): a statement sent while the idle session's backend
	// still lived reached it and was lost in flight (40003), rightly. Wait
	// until the proxy has seen every connection to the killed replica end.
	waitGoneFromProxy := time.Now().Add(roSessionWait)
	for {
		n, err := p.metric("holdfast_proxy_connections", `listener="ro"`, `backend="`+now+`"`)
		if err == nil && n == 0 {
			break
		}
		if time.Now().After(waitGoneFromProxy) {
			t.Fatalf("the proxy still counts %v read-only connections to the killed %s (%v)", n, now, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	after := check("after kill -9 of "+now, now)
	select {
	case err := <-busyErr:
		if !errors.As(err, &pe) || pe.Code != "40003" || !strings.Contains(pe.Message, "the connection to the read-only server ("+now+") was lost while this request was in flight") {
			t.Errorf("the statement in flight on the killed replica: %v; want ERROR 40003 from the proxy", err)
		}
	case <-time.After(sessionQueryTimeout):
		t.Fatal("the statement in flight on the killed replica never ended")
	}
	qctx3, cancel3 := context.WithTimeout(ctx, sessionQueryTimeout)
	defer cancel3()
	var busyPort int
	if err := busy.conn.QueryRow(qctx3, "SELECT inet_server_port()").Scan(&busyPort); err != nil || c.memberByPort(busyPort) != other.member {
		t.Errorf("the session whose statement failed: next statement on %s, %v; want the remaining replica %s", c.memberByPort(busyPort), err, other.member)
	}
	if after != other.member {
		t.Errorf("after kill -9 of %s the idle session runs on %s; want the remaining replica %s", now, after, other.member)
	}
	qctx2, cancel2 := context.WithTimeout(ctx, sessionQueryTimeout)
	defer cancel2()
	var pid int
	var inRecovery bool
	if err := other.conn.QueryRow(qctx2, "SELECT pg_backend_pid(), pg_is_in_recovery()").Scan(&pid, &inRecovery); err != nil || pid != other.pid || !inRecovery {
		t.Errorf("the session on the remaining replica %s: pid %d (before %d), in recovery %v, %v; want it untouched", other.member, pid, other.pid, inRecovery, err)
	}
	waitMetric("two ro moves", 2, "holdfast_proxy_sessions_migrated_total", `listener="ro"`)

	if n, err := p.metric("holdfast_proxy_sessions_migrated_total", `listener="rw"`); err != nil || n != 0 {
		t.Errorf(`holdfast_proxy_sessions_migrated_total{listener="rw"} = %v (%v); want 0: no read-write session was opened`, n, err)
	}
	if body, err := p.scrape(); err == nil {
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "holdfast_proxy_session") {
				t.Log(l)
			}
		}
	}
}
