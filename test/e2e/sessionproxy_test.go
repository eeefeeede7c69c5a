package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// sessionQueryTimeout bounds one statement through the session-mode proxy
// across a switchover or failover: it may be held until the new primary is
// routable (a failover takes about a TTL plus a few loops).
const sessionQueryTimeout = 40 * time.Second

// TestSessionProxy runs `holdfast proxy --mode=session` in front of a
// three-member cluster and shows what session mode adds to the proxy:
//
//   - clients authenticate to the proxy with SCRAM against the verifiers
//     it reads as holdfast_auth: a wrong password and a user that does not
//     exist are both refused with 28P01;
//   - at a switchover, a session holding a temporary table and one left
//     inside a transaction are closed with the clear FATAL 57P01 message,
//     a statement in flight through the drain window fails with 40003 and
//     its session moves, and an idle session on the same proxy moves to
//     the new primary and keeps working;
//   - a pgx connection with SET search_path, SET application_name, a
//     protocol-level prepared statement (and pgx's own statement cache) and
//     an SQL PREPARE, idle across a `ctl switchover` and then across a
//     failover (kill -9 of the primary's agent and postmaster), runs its
//     next statements on the new primary with the same settings and
//     statements, on the same client connection.
func TestSessionProxy(t *testing.T) {
	c, _ := startProxyCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	p := startSessionProxy(t, c)
	t.Cleanup(func() {
		// With GOFLAGS=-race the binary is built with the race detector:
		// its reports land in the proxy's log.
		if b, err := os.ReadFile(p.log); err == nil && strings.Contains(string(b), "WARNING: DATA RACE") {
			t.Errorf("the session-mode proxy reported a data race:\n%s", fileTail(p.log, 200))
		}
	})
	dsn := c.proxyDSN(p.rw, 10*time.Second)
	connect := func(t *testing.T) *pgx.Conn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatalf("connect through the session-mode proxy %s: %v", p.rw, err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}

	t.Run("wrong password and unknown user are refused with 28P01", func(t *testing.T) {
		_, port, _ := net.SplitHostPort(p.rw)
		for _, tc := range []struct{ user, password string }{
			{c.Layout.Superuser.Username, "wrong-password"},
			{"nobody_here", "whatever"},
		} {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%s user=%s password=%s dbname=postgres sslmode=disable", port, tc.user, tc.password))
			cancel()
			var pe *pgconn.PgError
			want := `password authentication failed for user "` + tc.user + `"`
			if !errors.As(err, &pe) || pe.Code != "28P01" || pe.Message != want {
				t.Errorf("user %s with a wrong password: %v; want 28P01 %q", tc.user, err, want)
			}
		}
		if n, err := p.metric("holdfast_proxy_refused_total", `reason="auth_failed"`); err != nil || n < 2 {
			t.Errorf(`holdfast_proxy_refused_total{reason="auth_failed"} = %v (%v), want >= 2`, n, err)
		}
		// And the right password gets in, to the primary.
		conn := connect(t)
		var port2 int
		var inRecovery bool
		if err := conn.QueryRow(context.Background(), "SELECT inet_server_port(), pg_is_in_recovery()").Scan(&port2, &inRecovery); err != nil {
			t.Fatal(err)
		}
		if want := c.Member(c.Primary()).PGPort; port2 != want || inRecovery {
			t.Errorf("the session reached port %d (in recovery %v), want the primary on %d", port2, inRecovery, want)
		}
	})

	t.Run("at a switchover temp-table and open-transaction sessions are closed, an idle one moves, a request in flight fails and its session moves", func(t *testing.T) {
		c := c.pxBind(t)
		c.WaitFor("healthy", 90*time.Second, Healthy(3))
		old := c.Primary()
		ctx := context.Background()
		temp, idle, busy, inTx := connect(t), connect(t), connect(t), connect(t)
		tx, err := inTx.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "CREATE TABLE sp_tx (x int)"); err != nil {
			t.Fatal(err)
		}
		// busy's statement outlasts the old primary's drain window (its
		// graceful stop, then a fast shutdown that ends it).
		busyErr := make(chan error, 1)
		go func() {
			_, err := busy.Exec(ctx, "SELECT pg_sleep(20)")
			busyErr <- err
		}()
		if _, err := temp.Exec(ctx, "CREATE TEMP TABLE scratch (x int)"); err != nil {
			t.Fatal(err)
		}
		if _, err := idle.Exec(ctx, "SET application_name = 'idle-survivor'"); err != nil {
			t.Fatal(err)
		}
		if o, err := c.ctlRun(time.Minute, "switchover"); err != nil {
			t.Fatalf("ctl switchover: %v\n%s", err, o)
		}
		np := c.WaitFor("a new primary after the switchover", 40*time.Second, leaderRunning(old)).Leader

		// The idle session runs on the new primary with its setting.
		qctx, cancel := context.WithTimeout(ctx, sessionQueryTimeout)
		defer cancel()
		var port int
		var app string
		if err := idle.QueryRow(qctx, "SELECT inet_server_port(), current_setting('application_name')").Scan(&port, &app); err != nil {
			t.Fatalf("the idle session after the switchover: %v", err)
		}
		if want := c.Member(np).PGPort; port != want || app != "idle-survivor" {
			t.Errorf("the idle session answers from port %d with application_name %q; want the new primary %s on %d, %q", port, app, np, want, "idle-survivor")
		}

		// The proxy closes the temp-table session once its server goes
		// away; wait for that, then the client reads the reason.
		deadline := time.Now().Add(20 * time.Second)
		for {
			if n, _ := p.metric("holdfast_proxy_sessions_unmovable_total", `reason="temp_table"`); n >= 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal(`holdfast_proxy_sessions_unmovable_total{reason="temp_table"} still 0 20s after the switchover`)
			}
			time.Sleep(100 * time.Millisecond)
		}
		_, err = temp.Exec(qctx, "SELECT count(*) FROM scratch")
		var pe *pgconn.PgError
		want := "holdfast proxy: the primary changed while this session held a temporary table; the session cannot be moved — reconnect"
		if !errors.As(err, &pe) || pe.Code != "57P01" || pe.Message != want {
			t.Errorf("the temp-table session after the switchover: %v; want FATAL 57P01 %q", err, want)
		}
		if n, err := p.metric("holdfast_proxy_sessions_migrated_total"); err != nil || n < 1 {
			t.Errorf("holdfast_proxy_sessions_migrated_total = %v (%v), want >= 1", n, err)
		}

		// The transaction left open through the drain window is the one
		// thing lost: its session is closed with the reason.
		for {
			if n, _ := p.metric("holdfast_proxy_sessions_unmovable_total", `reason="transaction"`); n >= 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal(`holdfast_proxy_sessions_unmovable_total{reason="transaction"} still 0 20s after the switchover`)
			}
			time.Sleep(100 * time.Millisecond)
		}
		_, err = tx.Exec(qctx, "INSERT INTO sp_tx VALUES (1)")
		want = "holdfast proxy: the primary changed while this session was inside a transaction; the session cannot be moved — reconnect"
		if !errors.As(err, &pe) || pe.Code != "57P01" || pe.Message != want {
			t.Errorf("the session left in a transaction across the switchover: %v; want FATAL 57P01 %q", err, want)
		}

		// The request in flight failed with 40003; its session goes on, on
		// the new primary.
		select {
		case err := <-busyErr:
			if !errors.As(err, &pe) || pe.Code != "40003" || !strings.Contains(pe.Message, "was lost while this request was in flight") {
				t.Errorf("the statement in flight at the switchover: %v; want ERROR 40003 from the proxy", err)
			}
		case <-time.After(sessionQueryTimeout):
			t.Fatal("the statement in flight at the switchover never ended")
		}
		if err := busy.QueryRow(qctx, "SELECT inet_server_port()").Scan(&port); err != nil || port != c.Member(np).PGPort {
			t.Errorf("the session whose request failed: next statement on port %d, %v; want the new primary %s on %d", port, err, np, c.Member(np).PGPort)
		}
		if n, err := p.metric("holdfast_proxy_session_requests_failed_total"); err != nil || n < 1 {
			t.Errorf("holdfast_proxy_session_requests_failed_total = %v (%v), want >= 1", n, err)
		}
	})

	t.Run("an idle session keeps its settings and statements across a switchover and a failover", func(t *testing.T) {
		c := c.pxBind(t)
		c.WaitFor("healthy", 90*time.Second, Healthy(3))
		first := c.Primary()
		c.Exec(first, "CREATE SCHEMA IF NOT EXISTS sp; CREATE TABLE IF NOT EXISTS sp.items (x int); INSERT INTO sp.items VALUES (41)")
		ctx := context.Background()
		conn := connect(t)
		// Settings first (pgx sends argument-less Exec as a simple query),
		// then the statements, all prepared under that search_path.
		for _, sql := range []string{
			"SET search_path TO sp, public",
			"SET application_name = 'session-e2e'",
			"PREPARE twice(int) AS SELECT $1::int * 2",
		} {
			if _, err := conn.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		if _, err := conn.Prepare(ctx, "plus", "SELECT x + $1::int FROM items"); err != nil {
			t.Fatal(err)
		}
		var pids []int
		check := func(stage, wantMember string) {
			t.Helper()
			qctx, cancel := context.WithTimeout(ctx, sessionQueryTimeout)
			defer cancel()
			var port, pid int
			var inRecovery bool
			var sp, app string
			start := time.Now()
			if err := conn.QueryRow(qctx, "SELECT inet_server_port(), pg_is_in_recovery(), current_setting('search_path'), current_setting('application_name'), pg_backend_pid()").
				Scan(&port, &inRecovery, &sp, &app, &pid); err != nil {
				t.Fatalf("%s: the session's next statement: %v", stage, err)
			}
			t.Logf("%s: first statement answered after %s, by backend pid %d", stage, time.Since(start).Round(time.Millisecond), pid)
			if want := c.Member(wantMember).PGPort; port != want || inRecovery {
				t.Errorf("%s: answered from port %d (in recovery %v), want the primary %s on %d", stage, port, inRecovery, wantMember, want)
			}
			if sp != "sp, public" || app != "session-e2e" {
				t.Errorf("%s: search_path %q, application_name %q; want %q, %q", stage, sp, app, "sp, public", "session-e2e")
			}
			var plus, twice int
			if err := conn.QueryRow(qctx, "plus", 1).Scan(&plus); err != nil || plus != 42 {
				t.Errorf("%s: the protocol-level prepared statement: %d, %v; want 42", stage, plus, err)
			}
			if err := conn.QueryRow(qctx, "EXECUTE twice(21)").Scan(&twice); err != nil || twice != 42 {
				t.Errorf("%s: the SQL prepared statement: %d, %v; want 42", stage, twice, err)
			}
			for _, seen := range pids {
				if seen == pid {
					t.Errorf("%s: the same server backend (pid %d) as before: the session did not move", stage, pid)
				}
			}
			pids = append(pids, pid)
		}
		check("before", first)

		if o, err := c.ctlRun(time.Minute, "switchover"); err != nil {
			t.Fatalf("ctl switchover: %v\n%s", err, o)
		}
		second := c.WaitFor("a new primary after the switchover", 40*time.Second, leaderRunning(first)).Leader
		check("after the switchover", second)

		c.WaitFor("healthy after the switchover", 60*time.Second, Healthy(3))
		// Idle across the failover, too.
		c.KillHard(second)
		third := c.WaitFor("a new primary after kill -9", 60*time.Second, leaderRunning(second)).Leader
		check("after the failover", third)

		if n, err := p.metric("holdfast_proxy_sessions_migrated_total"); err != nil || n < 2 {
			t.Errorf("holdfast_proxy_sessions_migrated_total = %v (%v), want >= 2", n, err)
		}
		if b, err := os.ReadFile(p.log); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				if strings.Contains(l, "session moved") || strings.Contains(l, "lost the connection") || strings.Contains(l, "cannot move") {
					t.Log(l)
				}
			}
		}
		if body, err := p.scrape(); err == nil {
			for _, l := range strings.Split(body, "\n") {
				if strings.HasPrefix(l, "holdfast_proxy_session") {
					t.Log(l)
				}
			}
		}
	})
}
