package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/pgauth"
	"github.com/holdfast/holdfast/internal/pgsession"
	"github.com/holdfast/holdfast/internal/testutil/pgtest"
)

// TestSessionReadOnlyMovesOffLeavingMember: in session mode the read-only
// listener speaks the protocol. Two real PostgreSQL servers stand for the
// replicas of the view (the primary is a stand-in no read-only session
// reaches). A read-only session logs in read-only
// (default_transaction_read_only=on: a write fails with 25006); when its
// member is tagged noloadbalance (it leaves the pool), the idle session
// moves to the other member with its setting and prepared statement, and
// one holding a WITH HOLD cursor is closed with the read-only FATAL 57P01.
// The counters say ro.
func TestSessionReadOnlyMovesOffLeavingMember(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	reps := twoMembers(ctx, t)
	pg0 := startBackend(t, "pg-0")
	view := func(excluded string) cluster.View {
		v := mkView("pg-0", primary(pg0), replica(reps[0], 0x3000000), replica(reps[1], 0x3000000))
		if excluded != "" {
			m := v.Members[excluded]
			m.Tags = map[string]string{cluster.TagNoLoadBalance: "true"}
			v.Members[excluded] = m
		}
		return v
	}
	src := newFakeSource(view(""))
	p := startProxy(t, src, func(o *Options) {
		sessionMode(o)
		o.Session.AuthPassword = roAuthPassword
		o.HoldTimeout = 30 * time.Second
		o.ROFallbackToPrimary = false
	})
	_, port, err := net.SplitHostPort(p.ROAddr())
	if err != nil {
		t.Fatal(err)
	}
	dsn := fmt.Sprintf("host=127.0.0.1 port=%s user=postgres password=%s dbname=postgres sslmode=disable", port, roSuperPassword)
	type roConn struct {
		conn *pgx.Conn
		port int
	}
	open := func() roConn {
		t.Helper()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatalf("connect to the read-only listener: %v", err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		var port int
		var ro string
		if err := conn.QueryRow(ctx, "SELECT inet_server_port(), current_setting('default_transaction_read_only')").Scan(&port, &ro); err != nil {
			t.Fatal(err)
		}
		if ro != "on" {
			t.Errorf("default_transaction_read_only = %q on a read-only session, want on", ro)
		}
		return roConn{conn, port}
	}
	idle := open()
	var cursor *roConn
	for range 4 {
		if c := open(); c.port == idle.port {
			cursor = &c
			break
		}
	}
	if cursor == nil {
		t.Fatal("no second session on the idle one's member in four")
	}
	var pe *pgconn.PgError
	if _, err := idle.conn.Exec(ctx, "CREATE TABLE ro_write (x int)"); !errors.As(err, &pe) || pe.Code != "25006" {
		t.Errorf("a write on the read-only listener: %v; want SQLSTATE 25006", err)
	}
	if _, err := idle.conn.Exec(ctx, "SET application_name = 'ro-unit'"); err != nil {
		t.Fatal(err)
	}
	if _, err := idle.conn.Prepare(ctx, "plus", "SELECT $1::int + 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := cursor.conn.Exec(ctx, "DECLARE held CURSOR WITH HOLD FOR SELECT 1"); err != nil {
		t.Fatal(err)
	}

	leaving, staying := reps[0], reps[1]
	if idle.port == reps[1].port {
		leaving, staying = reps[1], reps[0]
	}
	src.set(view(leaving.name), true)
	// The session moves at its next boundary after the proxy has read the
	// change: wait for that, or the next statement may outrun the reload.
	eventually(t, leaving.name+" out of the read-only pool", func() bool {
		ro := p.Status().Routes.RO
		return len(ro) == 1 && ro[0].Name == staying.name
	})

	var got, plus int
	var app, ro string
	if err := idle.conn.QueryRow(ctx, "SELECT inet_server_port(), current_setting('application_name'), current_setting('default_transaction_read_only')").Scan(&got, &app, &ro); err != nil {
		t.Fatalf("the idle session after its member left the pool: %v", err)
	}
	if got != staying.port || app != "ro-unit" || ro != "on" {
		t.Errorf("the idle session answers from port %d with application_name %q, default_transaction_read_only %q; want %s (%d), %q, on",
			got, app, ro, staying.name, staying.port, "ro-unit")
	}
	if err := idle.conn.QueryRow(ctx, "plus", 41).Scan(&plus); err != nil || plus != 42 {
		t.Errorf("the prepared statement after the move: %d, %v; want 42", plus, err)
	}
	_, err = cursor.conn.Exec(ctx, "FETCH 1 FROM held")
	want := pgsession.CloseErrorReadOnly(&pgsession.UnmovableError{Reason: pgsession.ReasonHoldCursor}).Message
	if !errors.As(err, &pe) || pe.Code != "57P01" || pe.Message != want {
		t.Errorf("the WITH HOLD cursor session: %v; want FATAL 57P01 %q", err, want)
	}
	if n := counter(t, p.sm.migrated.WithLabelValues(ListenerRO)); n != 1 {
		t.Errorf("sessions_migrated_total{ro} = %v, want 1", n)
	}
	if n := counter(t, p.sm.migrated.WithLabelValues(ListenerRW)); n != 0 {
		t.Errorf("sessions_migrated_total{rw} = %v, want 0", n)
	}
	if n := counter(t, p.sm.unmovable.WithLabelValues(ListenerRO, "hold_cursor")); n != 1 {
		t.Errorf("sessions_unmovable_total{ro,hold_cursor} = %v, want 1", n)
	}
}

const roSuperPassword, roAuthPassword = "ro-super", "ro-auth"

// twoMembers starts two real PostgreSQL servers, pg-1 and pg-2, with the
// auth role set up and the same verifier for the superuser (as a
// cluster's members have: pg_authid is replicated).
func twoMembers(ctx context.Context, t *testing.T) []*backend {
	t.Helper()
	const superPassword, authPassword = roSuperPassword, roAuthPassword
	var reps []*backend
	verifier := "" // the client's, as pg-1 stores it: a replica of a real cluster has the same
	for _, name := range []string{"pg-1", "pg-2"} {
		_, port := pgtest.Start(ctx, t, name, superPassword)
		admin, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=disable", port, superPassword))
		if err != nil {
			t.Fatal(err)
		}
		sqls := []string{pgauth.SetupSQL, "ALTER ROLE " + pgauth.AuthRole + " PASSWORD '" + authPassword + "'"}
		if verifier != "" {
			sqls = append(sqls, "ALTER ROLE postgres PASSWORD '"+verifier+"'")
		}
		for _, sql := range sqls {
			if _, err := admin.Exec(ctx, sql); err != nil {
				t.Fatalf("set up the roles on %s: %v", name, err)
			}
		}
		if verifier == "" {
			if err := admin.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'").Scan(&verifier); err != nil {
				t.Fatal(err)
			}
		}
		admin.Close(context.Background())
		reps = append(reps, &backend{name: name, port: port})
	}
	return reps
}

// TestSessionReadOnlyFallback: with no replica in the pool a read-only
// session runs on the primary by fallback, read-only; once a replica
// qualifies it moves there with its setting; and a fallback session on a
// member that stops being the primary is cut (as a pass-through one is)
// and moves on.
func TestSessionReadOnlyFallback(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	reps := twoMembers(ctx, t)
	prim, rep := reps[0], reps[1]
	view := func(replicaIn bool) cluster.View {
		v := mkView(prim.name, primary(prim), replica(rep, 0x3000000))
		if !replicaIn {
			m := v.Members[rep.name]
			m.Tags = map[string]string{cluster.TagNoLoadBalance: "true"}
			v.Members[rep.name] = m
		}
		return v
	}
	src := newFakeSource(view(false))
	p := startProxy(t, src, func(o *Options) {
		sessionMode(o)
		o.Session.AuthPassword = roAuthPassword
		o.HoldTimeout = 30 * time.Second
		o.ROFallbackToPrimary = true
	})
	_, port, err := net.SplitHostPort(p.ROAddr())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%s user=postgres password=%s dbname=postgres sslmode=disable", port, roSuperPassword))
	if err != nil {
		t.Fatalf("connect to the read-only listener: %v", err)
	}
	defer conn.Close(context.Background())
	where := func(stage string, want *backend) {
		t.Helper()
		var got int
		var app, ro string
		if err := conn.QueryRow(ctx, "SELECT inet_server_port(), current_setting('application_name'), current_setting('default_transaction_read_only')").Scan(&got, &app, &ro); err != nil {
			t.Fatalf("%s: %v", stage, err)
		}
		if got != want.port || app != "ro-fallback" || ro != "on" {
			t.Errorf("%s: port %d, application_name %q, default_transaction_read_only %q; want %s (%d), ro-fallback, on", stage, got, app, ro, want.name, want.port)
		}
	}
	// setView gives the proxy v and waits until it has read it: the
	// replica alone in the read-only pool (replicaIn), else an empty pool
	// (the fallback to the primary is the session's, not in the routes).
	// The session moves at its next boundary after the proxy has read the
	// change, not before: the test's next statement must not outrun the
	// proxy's reload.
	setView := func(v cluster.View, replicaIn bool) {
		t.Helper()
		src.set(v, true)
		eventually(t, fmt.Sprintf("the read-only pool holds the replica: %v", replicaIn), func() bool {
			ro := p.Status().Routes.RO
			if !replicaIn {
				return len(ro) == 0
			}
			return len(ro) == 1 && ro[0].Name == rep.name
		})
	}
	if _, err := conn.Exec(ctx, "SET application_name = 'ro-fallback'"); err != nil {
		t.Fatal(err)
	}
	where("no replica: the primary by fallback", prim)
	var pe *pgconn.PgError
	if _, err := conn.Exec(ctx, "CREATE TABLE ro_fallback_write (x int)"); !errors.As(err, &pe) || pe.Code != "25006" {
		t.Errorf("a write on the primary by fallback: %v; want SQLSTATE 25006", err)
	}
	setView(view(true), true)
	where("a replica qualifies again", rep)

	// Back to the primary by fallback, then the primary is gone from the
	// view (no leader): the connection is cut, and the session waits for
	// a member.
	setView(view(false), false)
	where("no replica again", prim)
	v := view(false)
	v.Leader = nil
	src.set(v, true)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if p.Status().Connections[ListenerRO][prim.name] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fallback session is still on %s 30s after it stopped being the primary", prim.name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	setView(view(true), true)
	where("after the cut, a replica again", rep)
	if n := counter(t, p.sm.migrated.WithLabelValues(ListenerRO)); n < 3 {
		t.Errorf("sessions_migrated_total{ro} = %v, want >= 3", n)
	}
}
