package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/holdfast/holdfast/internal/cluster"
)

func TestPoolKeyOf(t *testing.T) {
	for _, tc := range []struct {
		name     string
		a, b     map[string]string
		samePool bool
	}{
		{"same user and database", map[string]string{"user": "u", "database": "d"}, map[string]string{"database": "d", "user": "u"}, true},
		{"other user", map[string]string{"user": "u", "database": "d"}, map[string]string{"user": "v", "database": "d"}, false},
		{"other database", map[string]string{"user": "u", "database": "d"}, map[string]string{"user": "u", "database": "e"}, false},
		{"same startup parameters in another order", map[string]string{"user": "u", "database": "d", "application_name": "a", "options": "-c x=1"},
			map[string]string{"options": "-c x=1", "application_name": "a", "database": "d", "user": "u"}, true},
		// A server takes startup parameters as the session's defaults, which
		// DISCARD ALL returns to: clients with other defaults must not share.
		{"other startup parameter", map[string]string{"user": "u", "database": "d", "options": "-c work_mem=1MB"},
			map[string]string{"user": "u", "database": "d"}, false},
	} {
		if got := poolKeyOf(tc.a) == poolKeyOf(tc.b); got != tc.samePool {
			t.Errorf("%s: same pool %v, want %v (%+v, %+v)", tc.name, got, tc.samePool, poolKeyOf(tc.a), poolKeyOf(tc.b))
		}
	}
}

func TestPickIdle(t *testing.T) {
	a, b := &protoSession{pool: sessionPool{uses: 3}}, &protoSession{pool: sessionPool{uses: 1}}
	conn := func(last *protoSession, use int) *backendConn {
		return &backendConn{pl: &poolLink{last: last, lastUse: use}}
	}
	for _, tc := range []struct {
		name  string
		idle  []*backendConn
		owner *protoSession
		want  int
	}{
		{"none idle", nil, a, -1},
		{"the one it used last", []*backendConn{conn(a, 3), conn(b, 1), conn(nil, 0)}, a, 0},
		{"else the most recently returned", []*backendConn{conn(b, 1), conn(nil, 0)}, a, 1},
		{"its own even when older", []*backendConn{conn(b, 1), conn(a, 3), conn(b, 1)}, a, 1},
		// a used another connection since it left this one: its settings
		// may have changed there, so this one needs a replay like any.
		{"its own from before another", []*backendConn{conn(a, 2), conn(b, 1)}, a, 1},
	} {
		if got := pickIdle(tc.idle, tc.owner); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestPoolOptions(t *testing.T) {
	src := newFakeSource(cluster.View{})
	for _, tc := range []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"transaction pooling in passthrough mode", func(o *Options) { o.Session.PoolMode = PoolTransaction }, `pool mode "transaction" needs session mode`},
		{"unknown pool mode", func(o *Options) { sessionMode(o); o.Session.PoolMode = "statement" }, `pool mode "statement": want "session" or "transaction"`},
		{"negative pool size", func(o *Options) {
			sessionMode(o)
			o.Session.PoolMode, o.Session.PoolSize = PoolTransaction, -1
		}, "must not be negative"},
		{"negative pool idle timeout", func(o *Options) {
			sessionMode(o)
			o.Session.PoolMode, o.Session.PoolIdleTimeout = PoolTransaction, -time.Second
		}, "pool idle timeout -1s"},
	} {
		o := Options{RWListen: "127.0.0.1:0", Source: src}
		tc.mod(&o)
		if _, err := New(o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	o := Options{RWListen: "127.0.0.1:0", Source: src}
	sessionMode(&o)
	o.Session.PoolMode = PoolTransaction
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if s := p.o.Session; s.PoolSize != DefaultPoolSize || s.PoolTimeout != DefaultPoolTimeout || p.pool == nil ||
		s.PoolIdleTimeout != DefaultPoolIdleTimeout || s.PoolLifetime != DefaultPoolLifetime {
		t.Errorf("defaults: size %d, timeout %s, idle timeout %s, lifetime %s, pool %v",
			s.PoolSize, s.PoolTimeout, s.PoolIdleTimeout, s.PoolLifetime, p.pool != nil)
	}
}

// poolTestUser is the role the transaction pooling tests log in as.
const poolTestUser, poolTestPassword = "pooled", "pooled-secret"

// pooledProxy starts a real PostgreSQL and a transaction-pooling proxy
// (pool size size) in front of it, with the role poolTestUser and, for
// each of clients, a schema s<i> whose table t holds i. It returns the
// proxy and a superuser connection to the server.
func pooledProxy(ctx context.Context, t *testing.T, size, clients int, opts ...func(*Options)) (*Proxy, *pgconn.PgConn) {
	t.Helper()
	p, _, b, password := realSessionProxy(ctx, t, func(o *Options) {
		o.Session.PoolMode, o.Session.PoolSize = PoolTransaction, size
		o.Session.PoolTimeout = 2 * time.Minute // generous: the machine is loaded
		for _, f := range opts {
			f(o)
		}
	})
	admin, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=disable", b.port, password))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close(context.Background()) })
	sql := []string{"CREATE ROLE " + poolTestUser + " LOGIN PASSWORD '" + poolTestPassword + "'"}
	for i := range clients {
		sql = append(sql, fmt.Sprintf("CREATE SCHEMA s%d AUTHORIZATION %s", i, poolTestUser),
			fmt.Sprintf("CREATE TABLE s%d.t (v int)", i), fmt.Sprintf("INSERT INTO s%d.t VALUES (%d)", i, i),
			fmt.Sprintf("GRANT SELECT ON s%d.t TO %s", i, poolTestUser))
	}
	for _, s := range sql {
		if err := admin.Exec(ctx, s).Close(); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	return p, admin
}

// connectPooled connects through p as poolTestUser with pgx (its default
// statement cache: every query is a named prepared statement).
func connectPooled(ctx context.Context, t *testing.T, p *Proxy) *pgx.Conn {
	t.Helper()
	_, port, err := net.SplitHostPort(p.RWAddr())
	if err != nil {
		t.Fatal(err)
	}
	c, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%s user=%s password=%s dbname=postgres sslmode=disable", port, poolTestUser, poolTestPassword))
	if err != nil {
		t.Fatalf("connect through the proxy: %v", err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// connectPooledClients connects n clients through p (connectPooled),
// client i with search_path s<i>.
func connectPooledClients(ctx context.Context, t *testing.T, p *Proxy, n int) []*pgx.Conn {
	t.Helper()
	conns := make([]*pgx.Conn, n)
	for i := range conns {
		c := connectPooled(ctx, t, p)
		if _, err := c.Exec(ctx, fmt.Sprintf("SET search_path = s%d", i)); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns
}

// backendsOf counts the server's client backends of user.
func backendsOf(ctx context.Context, admin *pgconn.PgConn, user string) (int, error) {
	r := admin.ExecParams(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND backend_type = 'client backend'", [][]byte{[]byte(user)}, nil, nil, nil).Read()
	if r.Err != nil {
		return 0, r.Err
	}
	var n int
	_, err := fmt.Sscan(string(r.Rows[0][0]), &n)
	return n, err
}

// More clients than server connections, each with its own settings and
// named prepared statement, share the pool: every transaction sees its
// own client's application_name and search_path, and its own prepared
// statement (prepared, where the connection is new to the client, before
// first use), while the server never has more than the pool size of
// backends for the user.
func TestTransactionPoolSharesConnections(t *testing.T) {
	const clients, size, rounds = 16, 2, 15
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	p, _ := pooledProxy(ctx, t, size, clients)

	conns := make([]*pgx.Conn, clients)
	for i := range clients {
		c := connectPooled(ctx, t, p)
		for _, s := range []string{fmt.Sprintf("SET application_name = 'client-%d'", i), fmt.Sprintf("SET search_path = s%d", i)} {
			if _, err := c.Exec(ctx, s); err != nil {
				t.Fatalf("client %d: %s: %v", i, s, err)
			}
		}
		if _, err := c.Prepare(ctx, "mine", "SELECT current_setting('application_name'), (SELECT v FROM t), $1::int"); err != nil {
			t.Fatalf("client %d: prepare: %v", i, err)
		}
		conns[i] = c
	}

	var wg sync.WaitGroup
	errs := make(chan error, clients)
	maxBackends := make(chan int, clients*rounds)
	for i, c := range conns {
		wg.Go(func() {
			app := fmt.Sprintf("client-%d", i)
			for r := range rounds {
				err := func() error {
					if r == rounds/2 {
						// A setting changed half-way must hold from then
						// on, on whichever connection comes next (also on
						// one this client used before the change).
						app = fmt.Sprintf("client-%d-later", i)
						if _, err := c.Exec(ctx, "SET application_name = '"+app+"'"); err != nil {
							return fmt.Errorf("set application_name: %w", err)
						}
					}
					tx, err := c.Begin(ctx)
					if err != nil {
						return fmt.Errorf("begin: %w", err)
					}
					defer tx.Rollback(ctx)
					var got string
					var v, echo int
					if err := tx.QueryRow(ctx, "mine", r).Scan(&got, &v, &echo); err != nil {
						return fmt.Errorf("execute mine: %w", err)
					}
					if got != app || v != i || echo != r {
						return fmt.Errorf("round %d saw application_name %q, t.v %d, echo %d; want %q, %d, %d", r, got, v, echo, app, i, r)
					}
					var sp string
					if err := tx.QueryRow(ctx, "SHOW search_path").Scan(&sp); err != nil {
						return fmt.Errorf("show search_path: %w", err)
					}
					if want := fmt.Sprintf("s%d", i); sp != want {
						return fmt.Errorf("round %d: search_path %q, want %q", r, sp, want)
					}
					// The server's own count of the user's backends, seen
					// from inside the transaction.
					var n int
					if err := tx.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user AND backend_type = 'client backend'").Scan(&n); err != nil {
						return fmt.Errorf("count backends: %w", err)
					}
					maxBackends <- n
					if err := tx.Commit(ctx); err != nil {
						return fmt.Errorf("commit: %w", err)
					}
					// A statement outside a transaction block: its own
					// implicit transaction.
					if err := c.QueryRow(ctx, "mine", r).Scan(&got, &v, &echo); err != nil {
						return fmt.Errorf("execute mine outside a transaction: %w", err)
					}
					if got != app || v != i {
						return fmt.Errorf("round %d outside a transaction saw %q, %d; want %q, %d", r, got, v, app, i)
					}
					return nil
				}()
				if err != nil {
					errs <- fmt.Errorf("client %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	close(maxBackends)
	for err := range errs {
		t.Error(err)
	}
	most := 0
	for n := range maxBackends {
		most = max(most, n)
	}
	if most > size || most == 0 {
		t.Errorf("the server had up to %d backends of %s, want 1..%d (the pool size)", most, poolTestUser, size)
	}
	t.Logf("%d clients, %d transactions each, on at most %d server connections", clients, 2*rounds, most)
}

// A client that creates a temporary table is pinned to its server
// connection (counted in holdfast_proxy_pool_sessions_pinned_total) and
// keeps using its table across transactions while other clients share
// the rest of the pool.
func TestTransactionPoolTempTablePinned(t *testing.T) {
	const size, others, rounds = 2, 4, 10
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	p, admin := pooledProxy(ctx, t, size, others)

	pinned := connectPooled(ctx, t, p)
	if _, err := pinned.Exec(ctx, "CREATE TEMP TABLE mine (v int)"); err != nil {
		t.Fatalf("create temp table: %v", err)
	}
	var pid int
	if err := pinned.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, others+1)
	for i, c := range connectPooledClients(ctx, t, p, others) {
		wg.Go(func() {
			for range rounds {
				var v int
				if err := c.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != i {
					errs <- fmt.Errorf("client %d: %d, %v; want %d", i, v, err, i)
					return
				}
			}
		})
	}
	for r := range rounds {
		tx, err := pinned.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO mine VALUES ($1)", r); err != nil {
			t.Fatalf("round %d: insert into the temporary table: %v", r, err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		var n, now int
		if err := pinned.QueryRow(ctx, "SELECT count(*), pg_backend_pid() FROM mine").Scan(&n, &now); err != nil {
			t.Fatalf("round %d: read the temporary table: %v", r, err)
		}
		if n != r+1 || now != pid {
			t.Fatalf("round %d: %d rows on backend %d; want %d on %d (pinned)", r, n, now, r+1, pid)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n, err := backendsOf(ctx, admin, poolTestUser); err != nil || n > size {
		t.Errorf("%d backends of %s (%v), want at most %d", n, poolTestUser, err, size)
	}
	if got := counterValue(t, p, "holdfast_proxy_pool_sessions_pinned_total", "temp_table"); got != 1 {
		t.Errorf("pinned sessions counted %v, want 1", got)
	}
}

// counterValue reads one labeled counter (or gauge) of p's metrics.
func counterValue(t *testing.T, p *Proxy, name, label string) float64 {
	t.Helper()
	mfs, err := p.gatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					if c := m.GetCounter(); c != nil {
						return c.GetValue()
					}
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return 0
}

// A transaction that finds its pool full waits (counted in
// holdfast_proxy_pool_clients_waiting) and, when no connection frees
// within the pool timeout, its session is closed with FATAL 53300 saying
// so; the client holding the connection is unaffected.
func TestTransactionPoolTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, _ := pooledProxy(ctx, t, 1, 1)
	p.pool.timeout = 3 * time.Second // the holder never lets go: any bound shows it

	holder := connectPooled(ctx, t, p)
	waiter := connectPooled(ctx, t, p) // logged in on the idle connection before the holder's transaction
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if got := counterValue(t, p, "holdfast_proxy_pool_server_connections", "in_use"); got != 1 {
		t.Errorf("connections in use: %v, want 1", got)
	}
	done := make(chan error, 1)
	go func() {
		_, err := waiter.Exec(ctx, "SELECT 1")
		done <- err
	}()
	for waiting := false; !waiting; {
		select {
		case err := <-done:
			t.Fatalf("the second client's statement ended (%v) before it was seen waiting", err)
		case <-time.After(10 * time.Millisecond):
		}
		waiting = counterValue(t, p, "holdfast_proxy_pool_clients_waiting", poolTestUser) == 1
	}
	err = <-done
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "53300" || !strings.Contains(pe.Message, "no server connection of the pool") {
		t.Fatalf("the waiting client got %v; want FATAL 53300 about the pool", err)
	}
	if _, err := tx.Exec(ctx, "SELECT 2"); err != nil {
		t.Fatalf("the holder's transaction: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// A pooled connection the server ended while it sat idle off the loops
// (no loop watches it: the loops switched off, or TLS to the server) is
// not used for the next transaction: the session takes another, and the
// client sees nothing — not an "in flight, outcome unknown" error for a
// statement the dead connection never ran.
func TestTransactionPoolIdleEndedOffLoopNotReused(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []func(*Options)
		tls  bool
	}{
		{name: "loops off", opts: []func(*Options){func(o *Options) { o.SessionLoopOff = true }}},
		{name: "TLS to the server", tls: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			p, admin := pooledProxy(ctx, t, 2, 1, tc.opts...)
			if tc.tls {
				serverSSLOn(ctx, t, admin)
			}
			c := connectPooled(ctx, t, p)
			if tc.tls {
				onTLS(ctx, t, c)
			}
			read := func(what string) {
				t.Helper()
				var v int
				if err := c.QueryRow(ctx, "SELECT v FROM s0.t", pgx.QueryExecModeSimpleProtocol).Scan(&v); err != nil || v != 0 {
					t.Fatalf("%s: v %d, err %v; want 0", what, v, err)
				}
			}
			for i := range 3 {
				read(fmt.Sprintf("query %d", i))
			}
			for round := range 3 {
				if err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '"+poolTestUser+"'").Close(); err != nil {
					t.Fatal(err)
				}
				eventually(t, "the pooled backends ended", func() bool {
					n, err := backendsOf(ctx, admin, poolTestUser)
					return err == nil && n == 0
				})
				read(fmt.Sprintf("round %d, after the idle connection was ended", round))
				tx, err := c.Begin(ctx)
				if err != nil {
					t.Fatalf("round %d: begin: %v", round, err)
				}
				if err := tx.Commit(ctx); err != nil {
					t.Fatalf("round %d: commit: %v", round, err)
				}
			}
		})
	}
}

// A server connection idle in its pool for the idle timeout is closed —
// on a loop or off the loops alike — and the client whose state it held
// goes on with a new one, its settings replayed there.
func TestTransactionPoolIdleTimeout(t *testing.T) {
	for _, off := range []bool{false, true} {
		t.Run(fmt.Sprintf("loops off %v", off), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			p, admin := pooledProxy(ctx, t, 2, 1, func(o *Options) {
				o.Session.PoolIdleTimeout, o.SessionLoopOff = 300*time.Millisecond, off
			})
			c := connectPooled(ctx, t, p)
			if _, err := c.Exec(ctx, "SET search_path = s0"); err != nil {
				t.Fatal(err)
			}
			for round := range 2 {
				var v, pid int
				if err := c.QueryRow(ctx, "SELECT v, pg_backend_pid() FROM t").Scan(&v, &pid); err != nil || v != 0 {
					t.Fatalf("round %d: v %d, err %v; want 0", round, v, err)
				}
				// The server may see the Terminate before the pool counts
				// the connection out (release closes, then counts).
				eventually(t, "the idle server connection closed, and counted out of the pool", func() bool {
					n, err := backendsOf(ctx, admin, poolTestUser)
					s := p.pool.stats()
					return err == nil && n == 0 && len(s) == 1 && s[0].idle+s[0].inUse == 0
				})
			}
			if n := counterValue(t, p, "holdfast_proxy_pool_server_connections_closed_total", closedIdleTimeout); n < 2 {
				t.Errorf("closed for the idle timeout: %v, want at least 2", n)
			}
			var v int
			if err := c.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != 0 {
				t.Fatalf("after the idle timeouts: v %d, err %v; want 0 (search_path s0 replayed)", v, err)
			}
		})
	}
}

// A server connection older than the pool lifetime is closed once it is
// idle — when its transaction ends, not only when the sweep finds it idle
// (a client that keeps its connection busy would seldom be caught so):
// a client running one transaction after another moves to new
// connections over time and sees no error.
func TestTransactionPoolLifetime(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, _ := pooledProxy(ctx, t, 2, 1, func(o *Options) { o.Session.PoolLifetime = 300 * time.Millisecond })
	c := connectPooled(ctx, t, p)
	if _, err := c.Exec(ctx, "SET search_path = s0"); err != nil {
		t.Fatal(err)
	}
	pids := map[int]bool{}
	deadline := time.Now().Add(20 * time.Second)
	for len(pids) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("after 20 s of back-to-back transactions, %d server connections seen; want 3 (a 300 ms lifetime)", len(pids))
		}
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var v, pid int
		if err := tx.QueryRow(ctx, "SELECT v, pg_backend_pid() FROM t, pg_sleep(0.05)").Scan(&v, &pid); err != nil || v != 0 {
			t.Fatalf("v %d, err %v; want 0", v, err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		pids[pid] = true
	}
	if n := counterValue(t, p, "holdfast_proxy_pool_server_connections_closed_total", closedLifetime); n < 2 {
		t.Errorf("closed for their lifetime: %v, want at least 2", n)
	}
}

// A server connection that outlived the pool lifetime inside a client's
// transaction is closed when the transaction ends, not parked for the
// client's next one: a connection in steady use is hardly ever idle when
// the sweep looks, and without this check it would live for ever — a
// busy pool is the one the lifetime is for.
func TestTransactionPoolLifetimeAtPark(t *testing.T) {
	const lifetime = time.Second
	for _, off := range []bool{false, true} {
		t.Run(fmt.Sprintf("loops off %v", off), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			p, _ := pooledProxy(ctx, t, 2, 1, func(o *Options) {
				o.Session.PoolLifetime, o.SessionLoopOff = lifetime, off
			})
			c := connectPooled(ctx, t, p)
			pid := func(what string) int {
				t.Helper()
				var n int
				if err := c.QueryRow(ctx, "SELECT pg_backend_pid()", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				return n
			}
			for round := range 2 {
				tx, err := c.Begin(ctx)
				if err != nil {
					t.Fatalf("round %d: begin: %v", round, err)
				}
				var in int
				if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()", pgx.QueryExecModeSimpleProtocol).Scan(&in); err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				// The connection outlives the lifetime in the transaction.
				if _, err := tx.Exec(ctx, fmt.Sprintf("SELECT pg_sleep(%g)", (lifetime+lifetime/4).Seconds()), pgx.QueryExecModeSimpleProtocol); err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				if err := tx.Commit(ctx); err != nil {
					t.Fatalf("round %d: commit: %v", round, err)
				}
				if after := pid(fmt.Sprintf("round %d, after the transaction", round)); after == in {
					t.Fatalf("round %d: the next transaction ran on backend %d, older than the pool lifetime %s", round, in, lifetime)
				}
			}
			if n := counterValue(t, p, "holdfast_proxy_pool_server_connections_closed_total", closedLifetime); n < 2 {
				t.Errorf("closed for their lifetime: %v, want at least 2", n)
			}
		})
	}
}

// resetAfterSCRAM is a client socket that resets the connection (RST, not
// FIN) as soon as it has read the proxy's AuthenticationSASLFinal: the
// proxy's next write to it — its answer to the startup, after it reset a
// pooled connection for it — fails.
type resetAfterSCRAM struct {
	net.Conn
	reset bool
}

func (c *resetAfterSCRAM) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	for i := 0; !c.reset && i+9 <= n; i++ {
		if b[i] == 'R' && b[i+5] == 0 && b[i+6] == 0 && b[i+7] == 0 && b[i+8] == 12 {
			c.reset = true
			_ = c.Conn.(*net.TCPConn).SetLinger(0)
			_ = c.Conn.Close()
		}
	}
	return n, err
}

// A client that leaves while its startup is answered from an idle pooled
// connection, after that connection's DISCARD ALL, leaves the connection
// holding nobody's state: the session that used it last, whose settings
// and prepared statements DISCARD ALL dropped, has them replayed there
// rather than running on it as if they were still in place.
func TestTransactionPoolStartupResetThenLeftHoldsNoState(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, _ := pooledProxy(ctx, t, 1, 1)
	a := connectPooled(ctx, t, p)
	if _, err := a.Exec(ctx, "SET search_path = s0"); err != nil {
		t.Fatal(err)
	}
	read := func(what string) {
		t.Helper()
		var v int
		// pgx's statement cache: a named prepared statement, prepared
		// on the connection the first time.
		if err := a.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != 0 {
			t.Fatalf("%s: v %d, err %v; want 0", what, v, err)
		}
	}
	read("first")
	_, port, err := net.SplitHostPort(p.RWAddr())
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%s user=%s password=%s dbname=postgres sslmode=disable", port, poolTestUser, poolTestPassword))
	if err != nil {
		t.Fatal(err)
	}
	var d net.Dialer
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &resetAfterSCRAM{Conn: c}, nil
	}
	for i := range 5 {
		if b, err := pgx.ConnectConfig(ctx, cfg); err == nil {
			// Its whole startup came in one read, before the reset: a
			// client that simply logged in and left.
			_ = b.Close(ctx)
		}
		read(fmt.Sprintf("after the client that left, attempt %d", i))
	}
}
