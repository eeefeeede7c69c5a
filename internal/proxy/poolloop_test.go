package proxy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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

	conns := connectPooledClients(ctx, t, p, clients)
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

// idleOnLoop returns p's one idle pooled connection once a loop watches
// it.
func idleOnLoop(t *testing.T, p *Proxy) *backendConn {
	t.Helper()
	var bc *backendConn
	eventually(t, "an idle pooled connection on a loop", func() bool {
		p.pool.mu.Lock()
		defer p.pool.mu.Unlock()
		for _, pl := range p.pool.pools {
			for _, c := range pl.idle {
				c.lmu.Lock()
				on := c.lfd >= 0
				c.lmu.Unlock()
				if on {
					bc = c
					return true
				}
			}
		}
		return false
	})
	return bc
}

// A connection idle on a loop that another goroutine lets go (enforce at
// a switchover, acquire dropping a stale one, the proxy stopping) is
// written to by that release (its Terminate, through the outbox, which
// writes to the loop's descriptor) after its stop channel is closed. The
// loop may meet the connection meanwhile (the server ending it at a
// switchover makes it readable): it must not close the descriptor before
// the release is done with it, or the Terminate goes to whatever socket
// took the descriptor's number since.
func TestTransactionPoolIdleReleaseKeepsDescriptor(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, c, bc := oneIdleOnLoop(ctx, t)
	if !p.pool.takeIdleConn(bc) { // as closeIdleLocked does before it closes
		t.Fatal("the idle connection left its pool")
	}
	bc.lmu.Lock()
	l, tok, fd := bc.lp, bc.ltok, bc.lfd
	bc.lmu.Unlock()

	// The loop meets the socket during the release (as for the server's
	// FATAL).
	if closedDuringRelease(t, bc, func() { l.serveIdle(bc, tok) }) {
		t.Fatalf("the loop closed descriptor %d while a release still had to write its Terminate to it", fd)
	}
	// Once the release is done, the loop sees the end and closes it, and
	// the pool's slot is free.
	eventually(t, "the loop closed the released connection's descriptor", func() bool {
		bc.lmu.Lock()
		defer bc.lmu.Unlock()
		return bc.lfd < 0
	})
	for _, s := range p.pool.stats() {
		if s.idle+s.inUse > 0 {
			t.Errorf("pool %s/%s: %d idle, %d in use after the release", s.user, s.database, s.idle, s.inUse)
		}
	}
	// The session takes a new connection for its next transaction.
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

// The proxy stopping stops its loops while a release of a connection idle
// on one may still be under way (enforce closes stale idle connections on
// a goroutine of its own): the loop's stop must not close the descriptor
// that release still writes its Terminate to; the release closes it.
func TestTransactionPoolLoopStopLeavesReleaseItsDescriptor(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, _, bc := oneIdleOnLoop(ctx, t)
	if !p.pool.takeIdleConn(bc) {
		t.Fatal("the idle connection left its pool")
	}
	// Move it to a loop of the test's own, which the test stops.
	if err := bc.fromLoop(); err != nil {
		t.Fatal(err)
	}
	l, err := newSessLoop()
	if err != nil {
		t.Fatal(err)
	}
	l.start()
	if err := bc.toLoop(l, nil); err != nil {
		t.Fatal(err)
	}
	bc.lmu.Lock()
	fd := bc.lfd
	bc.lmu.Unlock()

	if closedDuringRelease(t, bc, l.stop) {
		t.Fatalf("the loop's stop closed descriptor %d while a release still had to write its Terminate to it", fd)
	}
	bc.lmu.Lock()
	left := bc.lfd
	bc.lmu.Unlock()
	if left >= 0 {
		t.Fatalf("descriptor %d left open after the release, its loop stopped", left)
	}
}

// A pooled session whose server connections are TLS (the default server
// sslmode, prefer, against a server with ssl = on) cannot have them on a
// loop: it stays on goroutines between transactions, as a session-mode
// session with a TLS server connection does, rather than entering its
// loop after every transaction only to leave it at the next.
func TestTransactionPoolTLSServerStaysOffLoop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, admin := pooledProxy(ctx, t, 1, 1)
	serverSSLOn(ctx, t, admin)
	c := connectPooled(ctx, t, p)
	onTLS(ctx, t, c)
	const rounds = 20
	entries := p.sessLoopEntries.Load()
	for r := range rounds {
		var v int
		if err := c.QueryRow(ctx, "SELECT v FROM s0.t").Scan(&v); err != nil || v != 0 {
			t.Fatalf("round %d: v %d, err %v", r, v, err)
		}
	}
	if n := p.sessLoopEntries.Load() - entries; n > 1 {
		t.Errorf("%d transactions on a TLS server connection handed the session to its loop %d times", rounds, n)
	}
}

// serverSSLOn turns ssl on at admin's server, with a test certificate.
func serverSSLOn(ctx context.Context, t *testing.T, admin *pgconn.PgConn) {
	t.Helper()
	certFile, keyFile := serverPKIFiles(ctx, t, admin)
	for _, s := range []string{
		fmt.Sprintf("ALTER SYSTEM SET ssl_cert_file = '%s'", certFile),
		fmt.Sprintf("ALTER SYSTEM SET ssl_key_file = '%s'", keyFile),
		"ALTER SYSTEM SET ssl = on",
		"SELECT pg_reload_conf()",
	} {
		if err := admin.Exec(ctx, s).Close(); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	eventually(t, "ssl = on", func() bool {
		r, err := admin.Exec(ctx, "SHOW ssl").ReadAll()
		return err == nil && len(r) == 1 && len(r[0].Rows) == 1 && string(r[0].Rows[0][0]) == "on"
	})
}

// onTLS checks that c's pooled server connection is on TLS.
func onTLS(ctx context.Context, t *testing.T, c *pgx.Conn) {
	t.Helper()
	var on bool
	if err := c.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&on); err != nil || !on {
		t.Fatalf("the pooled server connection on TLS: %v, err %v", on, err)
	}
}

// serverPKIFiles writes a test server certificate and key into the data
// directory of admin's server, owned as that directory is (the server may
// run as another account than the test), and returns their paths.
func serverPKIFiles(ctx context.Context, t *testing.T, admin *pgconn.PgConn) (certFile, keyFile string) {
	t.Helper()
	r, err := admin.Exec(ctx, "SHOW data_directory").ReadAll()
	if err != nil || len(r) != 1 || len(r[0].Rows) != 1 {
		t.Fatalf("data directory: %v", err)
	}
	dir := string(r[0].Rows[0][0])
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		t.Skip("cannot tell the data directory's owner")
	}
	k := newTestPKI(t)
	certFile, keyFile = filepath.Join(dir, "test-server.crt"), filepath.Join(dir, "test-server.key")
	for src, dst := range map[string]string{k.certFile: certFile, k.keyF: keyFile} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dst, int(st.Uid), int(st.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// oneIdleOnLoop starts a pool of one connection, and a client whose one
// transaction leaves that connection idle on a loop.
func oneIdleOnLoop(ctx context.Context, t *testing.T) (*Proxy, *pgx.Conn, *backendConn) {
	t.Helper()
	p, _ := pooledProxy(ctx, t, 1, 1)
	c := connectPooled(ctx, t, p)
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	return p, c, idleOnLoop(t, p)
}

// closedDuringRelease lets bc go (gracefully) while holding the release
// at its Terminate (the outbox's lock is what its write takes), runs
// during meanwhile, and says whether bc's loop descriptor was closed
// before the release could write to it.
func closedDuringRelease(t *testing.T, bc *backendConn, during func()) bool {
	t.Helper()
	bc.out.mu.Lock()
	released := make(chan struct{})
	go func() {
		defer close(released)
		bc.release(true)
	}()
	eventually(t, "the release began", bc.cut)
	during()
	bc.lmu.Lock()
	closed := bc.lfd < 0
	bc.lmu.Unlock()
	bc.out.mu.Unlock()
	<-released
	return closed
}

// A connection the loop serves may be cut from another goroutine (enforce
// fencing a demoted primary's connections) just as its session takes it
// back from the loop (run, woken by the same change of the routes). The
// cut has begun (its stop channel closed, its net.Conn read) but not yet
// marked the connection released when fromLoop makes a new net.Conn of
// the loop's socket: that new net.Conn must not outlive the cut, or the
// server keeps its backend — the fence's point is that it does not —
// and the session's reader waits on a socket nobody closes.
func TestTransactionPoolCutWhileLeavingLoopClosesConnection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, admin := pooledProxy(ctx, t, 1, 1)
	c := connectPooled(ctx, t, p)
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	bc := idleOnLoop(t, p)
	if !p.pool.takeIdleConn(bc) { // its owner now, as a session is
		t.Fatal("the idle connection left its pool")
	}

	// Hold the cut after it read the net.Conn: its outbox's close takes
	// the outbox's lock.
	bc.out.mu.Lock()
	cutDone := make(chan struct{})
	go func() {
		defer close(cutDone)
		bc.release(false)
	}()
	eventually(t, "the cut began", bc.cut)
	back := make(chan error, 1)
	go func() { back <- bc.fromLoop() }()
	eventually(t, "the connection left its loop", func() bool {
		bc.lmu.Lock()
		defer bc.lmu.Unlock()
		return bc.lfd < 0
	})
	bc.out.mu.Unlock()
	<-cutDone
	if err := <-back; err != nil {
		t.Fatal(err)
	}
	if err := bc.netConn().SetReadDeadline(time.Time{}); err == nil {
		t.Error("the connection cut while it left its loop has an open net.Conn")
	}
	eventually(t, "the server's backend ended", func() bool {
		n, err := backendsOf(ctx, admin, poolTestUser)
		return err == nil && n == 0
	})
	// The session takes a new connection for its next transaction.
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}

// Every loop hands out its own epoll tokens, counting from one, so a
// connection idle on one loop may have the very token it had on another
// loop it left. An event that loop took before the connection left it
// (and serves after) must not be taken for the connection's: the loop
// would let go a healthy idle connection it no longer watches, and close
// a descriptor another loop has registered.
func TestTransactionPoolStaleEventOfAnotherLoop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, c, bc := oneIdleOnLoop(ctx, t)
	bc.lmu.Lock()
	first, tok := bc.lp, bc.ltok
	bc.lmu.Unlock()
	if !p.pool.takeIdleConn(bc) {
		t.Fatal("the idle connection left its pool")
	}
	if err := bc.fromLoop(); err != nil {
		t.Fatal(err)
	}
	// Another loop, whose next token is the one the connection had.
	other, err := newSessLoop()
	if err != nil {
		t.Fatal(err)
	}
	other.token = tok - 1
	other.start()
	defer other.stop()
	if err := bc.toLoop(other, nil); err != nil {
		t.Fatal(err)
	}
	if bc.ltok != tok {
		t.Fatalf("token %d on the other loop, want %d", bc.ltok, tok)
	}
	p.pool.put(bc, Routes{}, nil)

	// The first loop serves the event it took before the connection left.
	first.serveServer(bc, tok)
	if bc.cut() {
		t.Fatal("a loop let go an idle connection another loop watches, for a stale event")
	}
	bc.lmu.Lock()
	lfd, lp := bc.lfd, bc.lp
	bc.lmu.Unlock()
	if lfd < 0 || lp != other {
		t.Fatalf("descriptor %d, loop %p after a stale event; want it open on loop %p", lfd, lp, other)
	}
	// The session's next transaction takes it.
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
}
