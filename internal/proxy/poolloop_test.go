package proxy

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Transaction pooling on the event loop: a pooled session between
// transactions is served by its loop, which takes the connection it used
// last from the pool for its next transaction and gives it back after.
// The connections stay on the loop while idle; one the server ends there
// is let go by the loop; one another session needs is taken off the loop
// for it (reset and replayed); and when the proxy stops, no descriptor is
// left behind.
func TestTransactionPoolOnLoop(t *testing.T) {
	const clients, rounds = 3, 20
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, admin := pooledProxy(ctx, t, clients, clients)
	before := openFDs(t) // the proxy's own (listeners, loops) included

	conns := make([]*pgx.Conn, clients)
	for i := range conns {
		c := connectPooled(ctx, t, p)
		if _, err := c.Exec(ctx, fmt.Sprintf("SET search_path = s%d", i)); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	// check runs a transaction and a statement of its own on client i,
	// which must see its own schema.
	check := func(i, r int) {
		t.Helper()
		c := conns[i]
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatalf("client %d round %d: begin: %v", i, r, err)
		}
		var v int
		if err := tx.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != i {
			t.Fatalf("client %d round %d: in a transaction: v %d, err %v; want %d", i, r, v, err, i)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatalf("client %d round %d: commit: %v", i, r, err)
		}
		if err := c.QueryRow(ctx, "SELECT v FROM t", pgx.QueryExecModeSimpleProtocol).Scan(&v); err != nil || v != i {
			t.Fatalf("client %d round %d: alone: v %d, err %v; want %d", i, r, v, err, i)
		}
	}
	for r := range rounds {
		for i := range clients {
			check(i, r)
		}
	}
	if n := p.poolLoopTakes.Load(); n == 0 {
		t.Fatalf("no transaction took its connection on the loop")
	}
	eventually(t, "every session on its loop", func() bool { return sessionsInLoop(p) == clients })

	// The server ends every idle pooled connection: the loop lets each
	// go, and the next transactions log in again.
	if err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '"+poolTestUser+"'").Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the pool let its ended connections go", func() bool {
		for _, s := range p.pool.stats() {
			if s.idle+s.inUse > 0 {
				return false
			}
		}
		return true
	})
	for i := range clients {
		check(i, rounds)
	}

	// Each client in turn takes a connection another used last: off the
	// loop, reset and replayed there.
	for r := range 4 {
		for i := range clients {
			if _, err := conns[i].Exec(ctx, fmt.Sprintf("SET application_name = 'c%d-%d'", i, r)); err != nil {
				t.Fatal(err)
			}
		}
		takes := p.poolLoopTakes.Load()
		// Shift every client's connection: client i's last one is taken
		// by a new session's transaction first.
		extra := connectPooled(ctx, t, p)
		etx, err := extra.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i := range clients {
			var app string
			if err := conns[i].QueryRow(ctx, "SELECT current_setting('application_name')").Scan(&app); err != nil {
				t.Fatalf("round %d client %d: %v", r, i, err)
			}
			if want := fmt.Sprintf("c%d-%d", i, r); app != want {
				t.Fatalf("round %d client %d: application_name %q, want %q", r, i, app, want)
			}
		}
		if err := etx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		_ = extra.Close(ctx)
		t.Logf("round %d: %d transactions taken on the loop", r, p.poolLoopTakes.Load()-takes)
	}

	for _, c := range conns {
		_ = c.Close(ctx)
	}
	p.Close()
	eventually(t, "the proxy stopped", func() bool { return openFDs(t) <= before+2 })
}

// sessionsInLoop counts p's sessions its loops serve now.
func sessionsInLoop(p *Proxy) int {
	p.mu.Lock()
	var all []*protoSession
	for s := range p.protos {
		all = append(all, s)
	}
	p.mu.Unlock()
	n := 0
	for _, ps := range all {
		select {
		case ps.lock <- struct{}{}:
		case <-ps.done:
			continue
		}
		if ps.inLoop {
			n++
		}
		ps.unlock()
	}
	return n
}
