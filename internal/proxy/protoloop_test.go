package proxy

import (
	"context"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// The rules that decide whether a session may go to its loop: only the
// steady state, and each fact that is not steady keeps it off on its own.
func TestLoopFactsSteady(t *testing.T) {
	steady := loopFacts{hasLoop: true, plain: true, frames: true, attached: true, routesStay: true}
	if ok, why := steady.steady(); !ok {
		t.Fatalf("steady facts refused: %s", why)
	}
	for _, tc := range []struct {
		name string
		mod  func(*loopFacts)
		why  string
	}{
		{"no loop (pooled, or switched off)", func(f *loopFacts) { f.hasLoop = false }, "no loop"},
		{"TLS on either side", func(f *loopFacts) { f.plain = false }, "TLS"},
		{"decoder still on the login's bytes", func(f *loopFacts) { f.frames = false }, "decoder not on frames"},
		{"no server connection, or one cut", func(f *loopFacts) { f.attached = false }, "no server connection"},
		{"a move due", func(f *loopFacts) { f.routesStay = false }, "routes move the session"},
		{"session over", func(f *loopFacts) { f.over = true }, "over"},
		{"client message held", func(f *loopFacts) { f.pending = true }, "client message pending"},
		{"server message held", func(f *loopFacts) { f.heldAck = true }, "server message held"},
		{"server outbox full", func(f *loopFacts) { f.toFull = true }, "server outbox full"},
		{"discarding a lost batch", func(f *loopFacts) { f.discard = true }, "discarding a lost batch"},
		{"lost block", func(f *loopFacts) { f.lostBlock = true }, "lost block"},
		{"request in flight", func(f *loopFacts) { f.awaiting = 1 }, "requests in flight"},
		{"injected sync in flight", func(f *loopFacts) { f.injected = 1 }, "requests in flight"},
		{"extended batch unsynced", func(f *loopFacts) { f.unsynced = true }, "requests in flight"},
		{"bytes not yet written", func(f *loopFacts) { f.outboxBytes = 1 }, "outbox not empty"},
		{"a timer for run", func(f *loopFacts) { f.timerPending = true }, "timer pending"},
	} {
		f := steady
		tc.mod(&f)
		if ok, why := f.steady(); ok || why != tc.why {
			t.Errorf("%s: steady %v (%q), want refused with %q", tc.name, ok, why, tc.why)
		}
	}
}

// loopState reports, for the proxy's only session, whether its loop
// serves it and how many backend connections it has had.
func loopState(t *testing.T, p *Proxy) (inLoop bool, gens int) {
	t.Helper()
	p.mu.Lock()
	var ps *protoSession
	for s := range p.protos {
		ps = s
	}
	p.mu.Unlock()
	if ps == nil {
		return false, 0
	}
	select {
	case ps.lock <- struct{}{}:
	case <-ps.done:
		return false, 0
	}
	defer ps.unlock()
	return ps.inLoop, ps.gens
}

// proxyDSN is the connection string of user postgres through p's
// read-write listener.
func proxyDSN(p *Proxy, password string) string {
	_, port, _ := net.SplitHostPort(p.RWAddr())
	return fmt.Sprintf("host=127.0.0.1 port=%s user=postgres password=%s dbname=postgres sslmode=disable", port, password)
}

// backendDSN is the connection string of user postgres straight to b.
func backendDSN(b *backend, password string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=disable", b.port, password)
}

// untilInLoop runs a query until the session is in its loop between two
// of them (a session goes there after a ReadyForQuery that leaves it
// steady).
func untilInLoop(ctx context.Context, t *testing.T, p *Proxy, conn *pgx.Conn) {
	t.Helper()
	eventually(t, "the session in its loop", func() bool {
		var one int
		if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("query: %v", err)
		}
		in, _ := loopState(t, p)
		return in
	})
}

// A steady session-mode session is served by its event loop, and what
// the loop cannot serve itself hands the session back to its goroutines
// with nothing lost: queries of both protocols, a result larger than the
// socket takes at once (backpressure), the server ending the connection
// (the session moves), the primary withdrawn and back (the session leaves
// its server at the boundary and moves), and the client's goodbye (the
// server connection ends). Each time, the session goes back to the loop
// once steady again.
func TestSessionLoopHandsOverAndBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, src, b, password := realSessionProxy(ctx, t)
	conn, err := pgx.Connect(ctx, proxyDSN(p, password))
	if err != nil {
		t.Fatalf("connect through the proxy: %v", err)
	}
	defer conn.Close(context.Background())
	admin, err := pgconn.Connect(ctx, backendDSN(b, password))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	serverPID := func() int {
		t.Helper()
		var pid int
		if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatalf("query: %v", err)
		}
		return pid
	}

	untilInLoop(ctx, t, p, conn)
	before := p.sessLoopEntries.Load()

	// Both protocols, and a session setting, through the loop.
	if _, err := conn.Exec(ctx, "SET application_name = 'in-the-loop'"); err != nil {
		t.Fatal(err)
	}
	var name string
	var n int
	if err := conn.QueryRow(ctx, "SELECT current_setting('application_name'), $1::int + 1", 41).Scan(&name, &n); err != nil {
		t.Fatal(err)
	}
	if name != "in-the-loop" || n != 42 {
		t.Errorf("got %q, %d; want in-the-loop, 42", name, n)
	}

	// A result far larger than a socket buffer.
	var total int64
	if err := conn.QueryRow(ctx, "SELECT sum(length(s)) FROM (SELECT repeat('z', 1000) s FROM generate_series(1, 20000)) q").Scan(&total); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, "SELECT repeat('z', 1000) FROM generate_series(1, 20000)")
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for rows.Next() {
		got++
	}
	if err := rows.Err(); err != nil || got != 20000 {
		t.Fatalf("large result: %d rows, err %v; want 20000", got, err)
	}
	untilInLoop(ctx, t, p, conn)

	// The server ends the connection (pg_terminate_backend sends 57P01):
	// the idle session moves to a new connection, with its setting.
	old := serverPID()
	untilInLoop(ctx, t, p, conn)
	_, gensBefore := loopState(t, p)
	if err := admin.Exec(ctx, fmt.Sprintf("SELECT pg_terminate_backend(%d)", old)).Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the session moved off the ended connection", func() bool {
		_, g := loopState(t, p)
		return g > gensBefore
	})
	if pid := serverPID(); pid == old {
		t.Errorf("the session still reports server pid %d after it was terminated", pid)
	}
	if err := conn.QueryRow(ctx, "SELECT current_setting('application_name')").Scan(&name); err != nil || name != "in-the-loop" {
		t.Errorf("after the move: application_name %q, err %v; want in-the-loop", name, err)
	}

	// The primary withdrawn (no leader) and back: the session leaves its
	// server and moves when the primary returns.
	untilInLoop(ctx, t, p, conn)
	_, gensBefore = loopState(t, p)
	src.set(mkView(""), true)
	eventually(t, "the session left pg-0", func() bool { return sessionDetached(p) })
	src.set(mkView("pg-0", primary(b)), true)
	if err := conn.QueryRow(ctx, "SELECT current_setting('application_name')").Scan(&name); err != nil || name != "in-the-loop" {
		t.Errorf("after the primary came back: application_name %q, err %v; want in-the-loop", name, err)
	}
	if _, g := loopState(t, p); g != gensBefore+1 {
		t.Errorf("backend connections: %d before, %d after; want one more", gensBefore, g)
	}
	untilInLoop(ctx, t, p, conn)
	if after := p.sessLoopEntries.Load(); after <= before {
		t.Errorf("hand-overs to the loop: %d before, %d after the hand-backs; want more", before, after)
	}

	// The client's goodbye from the loop ends the server connection.
	last := serverPID()
	untilInLoop(ctx, t, p, conn)
	if err := conn.Close(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the server connection ended", func() bool {
		var count string
		res := admin.ExecParams(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", [][]byte{[]byte(fmt.Sprint(last))}, nil, nil, nil).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		count = string(res.Rows[0][0])
		return count == "0"
	})
	eventually(t, "the session ended", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.protos) == 0
	})
}

// With the loop switched off, sessions are served by their goroutines
// alone (the path every hand-back returns to).
func TestSessionLoopOff(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, _, _, password := realSessionProxy(ctx, t, func(o *Options) { o.SessionLoopOff = true })
	conn, err := pgx.Connect(ctx, proxyDSN(p, password))
	if err != nil {
		t.Fatalf("connect through the proxy: %v", err)
	}
	defer conn.Close(context.Background())
	for i := range 20 {
		var n int
		if err := conn.QueryRow(ctx, "SELECT $1::int", i).Scan(&n); err != nil || n != i {
			t.Fatalf("query %d: %d, %v", i, n, err)
		}
	}
	if in, _ := loopState(t, p); in || p.sessLoopEntries.Load() != 0 {
		t.Errorf("a session went to a loop with the loop switched off")
	}
}

// A client that pipelines megabytes both ways starting from the loop, and
// reads nothing until the session has left the loop, gets every answer:
// the loop hands the session back when an outbox cannot write what it
// was given, the readers and writers carry on (with each direction's
// backpressure), and the session goes back to the loop once steady again.
func TestSessionLoopPipelineBothWays(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, _, _, password := realSessionProxy(ctx, t)
	hc := rawThroughProxy(ctx, t, p, password)
	one := []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT 1"}}
	eventually(t, "the session in its loop", func() bool {
		if rows := pipeline(t, hc, one, 1); rows != 1 {
			t.Fatalf("%d rows, want 1", rows)
		}
		in, _ := loopState(t, p)
		return in
	})
	before := p.sessLoopEntries.Load()
	// More than the socket buffers hold both ways.
	pad := strings.Repeat("x", 16000)
	const n, perQuery = 1500, 20 // 24 MB of requests, 30 MB of answers
	var buf []byte
	for range n {
		var err error
		q := &pgproto3.Query{String: fmt.Sprintf("SELECT repeat('y', 1000) FROM generate_series(1, %d) g -- %s", perQuery, pad)}
		if buf, err = q.Encode(buf); err != nil {
			t.Fatal(err)
		}
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := hc.Conn.Write(buf)
		wrote <- err
	}()
	eventually(t, "the session off its loop while the client reads nothing", func() bool {
		in, _ := loopState(t, p)
		return !in
	})
	rows, rfq := 0, 0
	for rfq < n {
		_ = hc.Conn.SetReadDeadline(time.Now().Add(stallTimeout))
		m, err := hc.Frontend.Receive()
		if err != nil {
			t.Fatalf("stalled after %d of %d answers (%d rows): %v", rfq, n, rows, err)
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			rows++
		case *pgproto3.ReadyForQuery:
			rfq++
		case *pgproto3.ErrorResponse:
			t.Fatalf("error %s: %s", m.Code, m.Message)
		}
	}
	if err := <-wrote; err != nil {
		t.Fatalf("write the pipeline: %v", err)
	}
	_ = hc.Conn.SetDeadline(time.Time{})
	if rows != n*perQuery {
		t.Errorf("%d rows, want %d", rows, n*perQuery)
	}
	eventually(t, "the session back in its loop", func() bool {
		if rows := pipeline(t, hc, one, 1); rows != 1 {
			t.Fatalf("%d rows, want 1", rows)
		}
		in, _ := loopState(t, p)
		return in && p.sessLoopEntries.Load() > before
	})
}

// Rows and row descriptions the loop hands on undecoded (rawServerMsg)
// reach the client exactly as the server sent them: both protocols, text
// and binary results, NULLs and empty values, a Describe of a prepared
// statement, many rows in one read and rows larger than one read.
func TestSessionLoopRowsAsTheServerSentThem(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, _, b, password := realSessionProxy(ctx, t)
	conn, err := pgx.Connect(ctx, proxyDSN(p, password))
	if err != nil {
		t.Fatalf("connect through the proxy: %v", err)
	}
	defer conn.Close(context.Background())
	direct, err := pgconn.Connect(ctx, backendDSN(b, password))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	through := conn.PgConn()

	const rowsSQL = "SELECT i, CASE WHEN i % 3 = 0 THEN NULL ELSE repeat('r', i % 7) END AS s, i::numeric / 7 AS n, '' AS e FROM generate_series(1, 500) i"
	const bigSQL = "SELECT repeat('x', 100000) AS big, 2 AS two"
	results := func(c *pgconn.PgConn) []*pgconn.Result {
		t.Helper()
		var out []*pgconn.Result
		for _, q := range []string{rowsSQL, bigSQL} {
			rs, err := c.Exec(ctx, q).ReadAll()
			if err != nil {
				t.Fatalf("simple query %q: %v", q, err)
			}
			out = append(out, rs...)
			// Extended protocol, binary results for every column.
			r := c.ExecParams(ctx, q, nil, nil, nil, []int16{1}).Read()
			if r.Err != nil {
				t.Fatalf("extended query %q: %v", q, r.Err)
			}
			out = append(out, r)
		}
		sd, err := c.Prepare(ctx, "rows_stmt", rowsSQL, nil)
		if err != nil {
			t.Fatalf("prepare: %v", err)
		}
		out = append(out, &pgconn.Result{FieldDescriptions: sd.Fields})
		r := c.ExecPrepared(ctx, "rows_stmt", nil, nil, nil).Read()
		if r.Err != nil {
			t.Fatalf("execute prepared: %v", r.Err)
		}
		out = append(out, r)
		if err := c.Exec(ctx, "DEALLOCATE rows_stmt").Close(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	untilInLoop(ctx, t, p, conn)
	entries := p.sessLoopEntries.Load()
	got := results(through)
	want := results(direct)
	if len(got) != len(want) {
		t.Fatalf("%d results through the proxy, %d direct", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if !reflect.DeepEqual(g.FieldDescriptions, w.FieldDescriptions) {
			t.Errorf("result %d: fields %+v through the proxy, %+v direct", i, g.FieldDescriptions, w.FieldDescriptions)
		}
		if !reflect.DeepEqual(g.Rows, w.Rows) {
			t.Errorf("result %d: %d rows through the proxy differ from the %d direct", i, len(g.Rows), len(w.Rows))
		}
		if g.CommandTag.String() != w.CommandTag.String() {
			t.Errorf("result %d: tag %q through the proxy, %q direct", i, g.CommandTag, w.CommandTag)
		}
	}
	// The rows went through the loop (the session was on it, and stays
	// there or comes back: nothing here needs run).
	untilInLoop(ctx, t, p, conn)
	if in, _ := loopState(t, p); !in || p.sessLoopEntries.Load() < entries {
		t.Errorf("the session is not on its loop after the queries")
	}
}
