package proxy

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Transaction-pooled sessions on their loops share fewer server
// connections than there are clients, each connection passing from
// session to session (parked by one, claimed by the next) between
// transactions whose answers are rows the loop hands on undecoded — and
// one client at a time lets a large answer pile up unread, so that its
// session holds the server's acknowledgement, leaves the loop and parks
// its connection only once the client has read everything. Every client
// gets its own rows, complete, and no session waits for an
// acknowledgement that went astray.
func TestTransactionPoolLoopRowsWhileSharing(t *testing.T) {
	// Enough connections for each session to get its own back (the loop
	// takes them: rows on the loop), and fewer (they pass between
	// sessions).
	t.Run("own", func(t *testing.T) { poolLoopRows(t, 5, true) })
	t.Run("shared", func(t *testing.T) { poolLoopRows(t, 2, false) })
}

// poolLoopRows runs the clients on a pool of size connections; loopTakes:
// some transaction must have taken its connection on the loop (with fewer
// connections than clients, none may get its own back).
func poolLoopRows(t *testing.T, size int, loopTakes bool) {
	const clients, rounds, rows = 4, 12, 200
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	p, _ := pooledProxy(ctx, t, size, clients+1)

	conns := connectPooledClients(ctx, t, p, clients)
	slow := rawThroughProxyAs(ctx, t, p, poolTestUser, poolTestPassword)
	// The slow client's schema is s<clients>.
	if n := rawRows(t, slow, fmt.Sprintf("SET search_path = s%d", clients), clients, 0); n != 0 {
		t.Fatalf("SET returned %d rows", n)
	}

	errs := make(chan error, clients+1)
	var wg sync.WaitGroup
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- sharingClient(ctx, conns[i], i, rounds, rows)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		// A result far larger than the sockets hold, read only after a
		// pause: the client's outbox fills on the loop.
		q := fmt.Sprintf("SELECT v, repeat('q', 2000) FROM t, generate_series(1, %d)", 4000)
		for range 3 {
			if n := rawRows(t, slow, q, clients, 300*time.Millisecond); n != 4000 {
				errs <- fmt.Errorf("slow client: %d rows, want 4000", n)
				return
			}
		}
		errs <- nil
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := p.poolLoopTakes.Load(); n == 0 && loopTakes {
		t.Fatalf("no transaction took its connection on the loop")
	}
	t.Logf("%d loop entries, %d transactions took their connection on the loop", p.sessLoopEntries.Load(), p.poolLoopTakes.Load())
	for i, c := range conns {
		var v int
		if err := c.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != i {
			t.Fatalf("client %d after the run: v %d, err %v", i, v, err)
		}
	}
}

// sharingClient runs rounds of transactions on c, client i, each reading
// rows of its own schema (v = i) with both protocols.
func sharingClient(ctx context.Context, c *pgx.Conn, i, rounds, rows int) error {
	q := fmt.Sprintf("SELECT v, g, repeat('r', g %% 50) FROM t, generate_series(1, %d) g", rows)
	check := func(r pgx.Rows, what string) error {
		n := 0
		for r.Next() {
			var v, g int
			var s string
			if err := r.Scan(&v, &g, &s); err != nil {
				return fmt.Errorf("client %d %s: scan: %w", i, what, err)
			}
			n++
			if v != i || g != n || len(s) != g%50 {
				return fmt.Errorf("client %d %s: row %d is (%d, %d, %d bytes)", i, what, n, v, g, len(s))
			}
		}
		if err := r.Err(); err != nil {
			return fmt.Errorf("client %d %s: %w", i, what, err)
		}
		if n != rows {
			return fmt.Errorf("client %d %s: %d rows, want %d", i, what, n, rows)
		}
		return nil
	}
	for r := range rounds {
		tx, err := c.Begin(ctx)
		if err != nil {
			return fmt.Errorf("client %d round %d: begin: %w", i, r, err)
		}
		rs, err := tx.Query(ctx, q)
		if err == nil {
			err = check(rs, "in a transaction (extended)")
		}
		if err != nil {
			_ = tx.Rollback(ctx)
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("client %d round %d: commit: %w", i, r, err)
		}
		// Alone, simple protocol: the rows are the transaction's last
		// answer, after which the connection goes back to the pool.
		rs, err = c.Query(ctx, q, pgx.QueryExecModeSimpleProtocol)
		if err == nil {
			err = check(rs, "alone (simple)")
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// rawRows sends q as a simple query on hc, waits pause before it reads,
// then reads the answer up to ReadyForQuery and returns its rows, each of
// whose first column must be want.
func rawRows(t *testing.T, hc *pgconn.HijackedConn, q string, want int, pause time.Duration) int {
	b, err := (&pgproto3.Query{String: q}).Encode(nil)
	if err != nil {
		t.Error(err)
		return -1
	}
	if _, err := hc.Conn.Write(b); err != nil {
		t.Errorf("send %q: %v", q, err)
		return -1
	}
	time.Sleep(pause)
	n := 0
	for {
		_ = hc.Conn.SetReadDeadline(time.Now().Add(stallTimeout))
		m, err := hc.Frontend.Receive()
		if err != nil {
			t.Errorf("answer to %q stalled after %d rows: %v", q, n, err)
			return -1
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			n++
			if v, err := strconv.Atoi(string(m.Values[0])); err != nil || v != want {
				t.Errorf("answer to %q: row %d has v %q, want %d", q, n, m.Values[0], want)
				return -1
			}
		case *pgproto3.ErrorResponse:
			t.Errorf("answer to %q: %s (SQLSTATE %s)", q, m.Message, m.Code)
			return -1
		case *pgproto3.ReadyForQuery:
			return n
		}
	}
}

// A pooled session on its loop whose transaction's last answer the
// client's socket cannot take at once hands the rest to the outbox's
// writer even though that answer's ReadyForQuery gave the server
// connection back to its pool in the same read. Before, the loop returned
// at the park and the rest of the answer stayed in the outbox for good:
// the client waited for it, the session for the client.
func TestTransactionPoolLoopParkHandsOnTheRest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, _ := pooledProxy(ctx, t, 1, 1)
	hc := rawThroughProxyAs(ctx, t, p, poolTestUser, poolTestPassword)
	if n := rawRows(t, hc, "SET search_path = s0", 0, 0); n != 0 {
		t.Fatalf("SET returned %d rows", n)
	}
	// Small socket buffers both ways between the proxy and the client,
	// so that an answer of a few server reads does not fit in them.
	tc, ok := hc.Conn.(*net.TCPConn)
	if !ok {
		t.Fatalf("client connection is a %T", hc.Conn)
	}
	if err := tc.SetReadBuffer(8192); err != nil {
		t.Fatal(err)
	}
	onLoop := func(set func(ps *protoSession)) {
		t.Helper()
		eventually(t, "the session on its loop", func() bool {
			var ps *protoSession
			p.mu.Lock()
			for s := range p.protos {
				ps = s
			}
			p.mu.Unlock()
			if ps == nil {
				return false
			}
			ps.lock <- struct{}{}
			defer ps.unlock()
			if ps.inLoop && set != nil {
				set(ps)
			}
			return ps.inLoop
		})
	}
	onLoop(func(ps *protoSession) {
		if err := syscall.SetsockoptInt(ps.cfd, syscall.SOL_SOCKET, syscall.SO_SNDBUF, 2048); err != nil {
			t.Fatal(err)
		}
	})
	// Answers of a few server reads, one size after another, so that in
	// some the last read (with the ReadyForQuery) is the first the
	// client's socket cannot take; the client reads after a pause.
	for rows := 2; rows <= 60; rows += 2 {
		if rows > 2 {
			// A small answer brings the session back to its loop.
			if n := rawRows(t, hc, "SELECT v FROM t", 0, 0); n != 1 {
				t.Fatalf("%d rows, want 1", n)
			}
			onLoop(nil)
		}
		if n := rawRows(t, hc, fmt.Sprintf("SELECT v, repeat('x', 1000) FROM t, generate_series(1, %d)", rows), 0, 100*time.Millisecond); n != rows {
			t.Fatalf("%d rows, want %d", n, rows)
		}
	}
}
