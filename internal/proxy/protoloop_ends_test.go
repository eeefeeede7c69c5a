package proxy

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

func pidAlive(ctx context.Context, t *testing.T, admin *pgconn.PgConn, pid int) bool {
	t.Helper()
	res := admin.ExecParams(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", [][]byte{[]byte(fmt.Sprint(pid))}, nil, nil, nil).Read()
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	return string(res.Rows[0][0]) != "0"
}

// sessionInLoop connects a client through p and waits until its session
// is in its loop; admin is a connection straight to b, pid the session's
// server process. Both connections close when the test ends.
func sessionInLoop(ctx context.Context, t *testing.T, p *Proxy, b *backend, password string) (conn *pgx.Conn, admin *pgconn.PgConn, pid int) {
	t.Helper()
	conn, err := pgx.Connect(ctx, proxyDSN(p, password))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	admin, err = pgconn.Connect(ctx, backendDSN(b, password))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close(context.Background()) })
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	untilInLoop(ctx, t, p, conn)
	return conn, admin, pid
}

// a fence while the session is in its loop ends the server
// connection at once (the primary withdrawn).
func TestSessionLoopFenceEndsServerConn(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, src, b, password := realSessionProxy(ctx, t)
	conn, admin, pid := sessionInLoop(ctx, t, p, b, password)
	src.set(mkView(""), true)
	eventually(t, "old server connection gone", func() bool { return !pidAlive(ctx, t, admin, pid) })
	src.set(mkView("pg-0", primary(b)), true)
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}

// the proxy stopping while a session is in its loop: the client
// is told and sees the end; the server connection ends.
func TestSessionLoopProxyStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, _, b, password := realSessionProxy(ctx, t)
	conn, admin, pid := sessionInLoop(ctx, t, p, b, password)
	hc := conn.PgConn()
	start := time.Now()
	closed := make(chan error, 1)
	go func() { closed <- p.Close() }()
	// The client sees the end (FATAL then EOF).
	_ = hc.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	var got []byte
	for {
		n, err := hc.Conn().Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Logf("client read ended after %v: %v; got %q", time.Since(start), err, got)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("client never saw the end")
			}
			break
		}
	}
	<-closed
	eventually(t, "server connection gone", func() bool { return !pidAlive(ctx, t, admin, pid) })
}

// many sessions in loops while the primary flaps; afterwards all
// work, all end, and no descriptor is left behind.
func TestSessionLoopFlapStress(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p, src, b, password := realSessionProxy(ctx, t)
	before := openFDs(t)
	const clients = 6
	var conns []*pgx.Conn
	for range clients {
		c, err := pgx.Connect(ctx, proxyDSN(p, password))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := map[string]int{}
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				qctx, qc := context.WithTimeout(ctx, 20*time.Second)
				var v int
				var err error
				if n%3 == 0 {
					_, err = c.Exec(qctx, "BEGIN; SELECT 1; COMMIT")
				} else {
					err = c.QueryRow(qctx, "SELECT $1::int", i).Scan(&v)
				}
				qc()
				if err != nil {
					mu.Lock()
					errs[err.Error()]++
					mu.Unlock()
					if c.IsClosed() {
						t.Errorf("client %d closed: %v", i, err)
						return
					}
				}
			}
		}()
	}
	for range 15 {
		time.Sleep(150 * time.Millisecond)
		src.set(mkView(""), true)
		time.Sleep(50 * time.Millisecond)
		src.set(mkView("pg-0", primary(b)), true)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("errors: %v; loop entries %d", errs, p.sessLoopEntries.Load())
	for i, c := range conns {
		var v int
		if err := c.QueryRow(ctx, "SELECT $1::int", i).Scan(&v); err != nil || v != i {
			t.Errorf("client %d after the flaps: %d %v", i, v, err)
		}
		_ = c.Close(ctx)
	}
	eventually(t, "sessions ended", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.protos) == 0
	})
	time.Sleep(200 * time.Millisecond)
	if after := openFDs(t); after > before+2 {
		t.Errorf("descriptors: %d before, %d after every session ended", before, after)
	}
}

// on a single loop, a client that stops reading a large result
// does not stall another session on that loop; the proxy then stops in
// bounded time with that client still not reading.
func TestSessionLoopSlowClientIsolation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, _, _, password := realSessionProxy(ctx, t, func(o *Options) { o.Loops = 1 })
	fast, err := pgx.Connect(ctx, proxyDSN(p, password))
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close(context.Background())
	hc := rawThroughProxy(ctx, t, p, password)
	// Put the slow one in its loop first.
	one := []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT 1"}}
	for range 5 {
		pipeline(t, hc, one, 1)
	}
	q := &pgproto3.Query{String: "SELECT repeat('y', 1000) FROM generate_series(1, 200000)"}
	b, _ := q.Encode(nil)
	if _, err := hc.Conn.Write(b); err != nil {
		t.Fatal(err)
	}
	// The slow client reads nothing. The fast one must go on.
	for i := range 300 {
		qctx, qc := context.WithTimeout(ctx, 5*time.Second)
		var v int
		err := fast.QueryRow(qctx, "SELECT $1::int", i).Scan(&v)
		qc()
		if err != nil || v != i {
			t.Fatalf("fast client stalled at %d: %v", i, err)
		}
	}
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case <-done:
		t.Logf("proxy stopped in %v with a client not reading", time.Since(start))
	case <-time.After(15 * time.Second):
		t.Fatal("proxy did not stop with a client not reading")
	}
}

// clients that reset their connection in the middle of a large
// answer, from the loop: every session ends, every server connection
// ends, and no descriptor is left behind.
func TestSessionLoopClientReset(t *testing.T)   { clientResetEndsSessions(t, false) }
func TestSessionNoLoopClientReset(t *testing.T) { clientResetEndsSessions(t, true) }

func clientResetEndsSessions(t *testing.T, off bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, _, b, password := realSessionProxy(ctx, t, func(o *Options) { o.Loops = 1; o.SessionLoopOff = off })
	admin, err := pgconn.Connect(ctx, backendDSN(b, password))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	before := openFDs(t)
	one := []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT 1"}}
	for i := range 12 {
		hc := rawThroughProxy(ctx, t, p, password)
		for range 3 {
			pipeline(t, hc, one, 1)
		}
		if i%2 == 0 {
			q := &pgproto3.Query{String: "SELECT repeat('y', 1000) FROM generate_series(1, 50000)"}
			bb, _ := q.Encode(nil)
			_, _ = hc.Conn.Write(bb)
			time.Sleep(20 * time.Millisecond)
		}
		if tc, ok := hc.Conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = hc.Conn.Close()
	}
	eventually(t, "sessions ended", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.protos) == 0
	})
	eventually(t, "server connections ended", func() bool {
		res := admin.ExecParams(ctx, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND usename = 'postgres' AND query NOT LIKE '%pg_is_in_recovery%'", nil, nil, nil, nil).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		if string(res.Rows[0][0]) != "0" {
			r2 := admin.ExecParams(ctx, "SELECT pid, state, wait_event, left(query, 60), now()-backend_start FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND usename = 'postgres' AND query NOT LIKE '%pg_is_in_recovery%'", nil, nil, nil, nil).Read()
			for _, r := range r2.Rows {
				t.Logf("left: %s %s %s %q %s", r[0], r[1], r[2], r[3], r[4])
			}
		}
		return string(res.Rows[0][0]) == "0"
	})
	time.Sleep(200 * time.Millisecond)
	if after := openFDs(t); after > before+2 {
		t.Errorf("descriptors: %d before, %d after", before, after)
	}
	t.Logf("descriptors %d before, %d after; loop entries %d", before, openFDs(t), p.sessLoopEntries.Load())
}
