package proxy

// Transaction pooling (SessionOptions.PoolMode = PoolTransaction): in
// session mode, many client sessions share few server connections. A
// session holds a server connection only from the start of a transaction
// (its first message after ReadyForQuery 'I') until the next
// ReadyForQuery 'I' with nothing in flight; then the connection goes back
// to a pool keyed by the user, the database and the other startup
// parameters, at most PoolSize connections each (in use, idle and being
// logged in). Before a session's transaction runs on a connection another
// session used last, the connection's state is made the session's: DISCARD
// ALL, then the session's replay plan (pgsession.Plan — the same replay a
// session gets when it moves to a new primary: settings, SQL PREPAREs, and
// its protocol prepared statements prepared before first use). A session
// that gets back the connection it used last (the pool prefers it) runs
// with no replay at all. A session whose state cannot be replayed
// (pgsession.Session.Movable: temporary tables, session advisory locks,
// LISTEN, WITH HOLD cursors, …) keeps its connection for the rest of its
// life: it is pinned.
//
// Idle pooled connections have no reader: a session that takes one reads
// its answers itself until it publishes it (then a reader of its own runs
// until the session parks the connection again). Connections to a member
// new connections are not routed to (a switchover is due, a failover
// happened) are closed when the routes change (fenceProtosLocked) and
// when they would be pooled or taken.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/holdfast/holdfast/internal/pgsession"
)

// Pool modes (SessionOptions.PoolMode).
const (
	// PoolSession gives each client session its own server connection for
	// its whole life (the default).
	PoolSession = "session"
	// PoolTransaction shares server connections between client sessions,
	// one transaction at a time (see pool.go).
	PoolTransaction = "transaction"
)

// Defaults of transaction pooling.
const (
	// DefaultPoolSize is the most server connections per pool (user,
	// database, startup parameters).
	DefaultPoolSize = 20
	// DefaultPoolTimeout bounds how long a client's transaction waits for
	// a server connection of its pool; then the session is closed with
	// FATAL 53300.
	DefaultPoolTimeout = 30 * time.Second
	// DefaultPoolIdleTimeout is SessionOptions.PoolIdleTimeout's default
	// (PgBouncer's server_idle_timeout's).
	DefaultPoolIdleTimeout = 10 * time.Minute
	// DefaultPoolLifetime is SessionOptions.PoolLifetime's default
	// (PgBouncer's server_lifetime's).
	DefaultPoolLifetime = time.Hour
	// poolSweepMax bounds the interval between two looks for idle
	// connections past their idle timeout or lifetime (a quarter of the
	// shorter of the two, when that is less).
	poolSweepMax = 30 * time.Second
	// poolSweepMin bounds it from below, for very short settings.
	poolSweepMin = 10 * time.Millisecond
	// lifetimeJitter: a connection's lifetime is shortened by up to
	// 1/lifetimeJitter of the setting, at random.
	lifetimeJitter = 10
	// poolResetTimeout bounds the reset (DISCARD ALL) and replay on a
	// pooled connection: a server that does not answer in time loses the
	// connection, and the session tries another.
	poolResetTimeout = 10 * time.Second
	// parkTimeout bounds the wait for a connection's reader to stop when
	// the session gives the connection back (it stops at once: its read
	// is interrupted by a deadline in the past).
	parkTimeout = 5 * time.Second
)

// codeTooManyConnections (53300) closes a session whose transaction found
// no server connection of its pool within PoolTimeout.
const codeTooManyConnections = "53300"

// poolDefaults validates the pooling options of o and fills in their
// defaults; session says the proxy is in session mode.
func (o *SessionOptions) poolDefaults(session bool) error {
	switch o.PoolMode {
	case "", PoolSession:
		o.PoolMode = PoolSession
	case PoolTransaction:
		if !session {
			return fmt.Errorf("pool mode %q needs session mode (Mode %q): in passthrough mode the proxy does not see transactions", PoolTransaction, ModeSession)
		}
	default:
		return fmt.Errorf("pool mode %q: want %q or %q", o.PoolMode, PoolSession, PoolTransaction)
	}
	if o.PoolSize < 0 || o.PoolTimeout < 0 || o.PoolIdleTimeout < 0 || o.PoolLifetime < 0 {
		return fmt.Errorf("pool size %d, pool timeout %s, pool idle timeout %s and pool lifetime %s must not be negative",
			o.PoolSize, o.PoolTimeout, o.PoolIdleTimeout, o.PoolLifetime)
	}
	if o.PoolSize == 0 {
		o.PoolSize = DefaultPoolSize
	}
	if o.PoolTimeout == 0 {
		o.PoolTimeout = DefaultPoolTimeout
	}
	if o.PoolIdleTimeout == 0 {
		o.PoolIdleTimeout = DefaultPoolIdleTimeout
	}
	if o.PoolLifetime == 0 {
		o.PoolLifetime = DefaultPoolLifetime
	}
	return nil
}

// poolKey names a pool: connections logged in with the same user,
// database and other startup parameters. The startup parameters are part
// of the key because a server takes them as the session's defaults, which
// DISCARD ALL returns to: a connection is only shared between clients
// whose defaults are the same.
type poolKey struct {
	user, database string
	params         string // the other startup parameters, sorted, "k=v" joined by NUL
}

// poolKeyOf is the pool of a client with these startup parameters.
func poolKeyOf(startup map[string]string) poolKey {
	k := poolKey{user: startup["user"], database: startup["database"]}
	var rest []string
	for _, n := range slices.Sorted(maps.Keys(startup)) {
		if n != "user" && n != "database" {
			rest = append(rest, n+"="+startup[n])
		}
	}
	k.params = strings.Join(rest, "\x00")
	return k
}

// pickIdle is the index in idle (oldest first) of the connection to hand
// to owner: one that still holds its state (stillHolds), else the most
// recently returned; -1 when idle is empty.
func pickIdle(idle []*backendConn, owner *protoSession) int {
	for i := len(idle) - 1; i >= 0; i-- {
		if idle[i].pl.stillHolds(owner) {
			return i
		}
	}
	return len(idle) - 1
}

// stillHolds says whether the connection holds owner's session state as
// it is now: owner used it last and has used no other connection since
// (its state may have changed there). Then owner runs on it with no
// reset and no replay.
func (l *poolLink) stillHolds(owner *protoSession) bool {
	return l.last == owner && l.lastUse == owner.pool.uses
}

// poolLink is what a pooled server connection carries: its pool, the
// session that used it last and what the server reported on it. The
// fields are the owning session's (or, while idle, the pool's under
// connPool.mu).
type poolLink struct {
	cp      *connPool
	pool    *pool     // its pool (see connPool.pools)
	expires time.Time // when it has lived its lifetime (see link)
	// idleSince is when it last went idle in its pool (under
	// connPool.mu; meaningful while it is there).
	idleSince time.Time
	last      *protoSession     // the session that used it last
	lastUse   int               // last's pool.uses when it used it
	params    map[string]string // the parameters the server reported, as of its last park
	// params is a copy of paramsOf's reported parameters at their version
	// paramsVer (nil: made otherwise): a park with the same need not copy
	// them again.
	paramsOf  *protoSession
	paramsVer int
	lease     *lease // the current reader's, while published
}

// lease stops the reader of a published pooled connection without
// closing the connection.
type lease struct {
	stop    chan struct{} // closed to stop the reader
	exited  chan struct{} // closed by the reader when it returns
	parking atomic.Bool
	err     error // the reader's last read error (after exited)
}

// pool is one key's connections.
type pool struct {
	open    int            // connections counted: idle, in use, being logged in
	idle    []*backendConn // oldest first
	waiting int            // sessions waiting for a connection
	freed   chan struct{}  // closed (and replaced) when a connection or slot frees
}

// connPool holds the pools. Safe for concurrent use.
type connPool struct {
	p        *Proxy
	size     int
	timeout  time.Duration
	idleMax  time.Duration // SessionOptions.PoolIdleTimeout
	lifetime time.Duration // SessionOptions.PoolLifetime
	m        *poolMetrics

	mu sync.Mutex
	// pools are never removed: a *pool, once made, is its key's for the
	// proxy's life, so that a connection and a session keep theirs
	// (poolLink.pool, sessionPool.pl) instead of hashing the key at every
	// transaction.
	pools map[poolKey]*pool
}

// poolOf is k's pool, made if need be.
func (cp *connPool) poolOf(k poolKey) *pool {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.poolLocked(k)
}

// errPoolTimeout: no connection of the pool freed within the timeout.
var errPoolTimeout = errors.New("no server connection of the pool became free")

// errPoolChanged: the routes changed while the session waited: it decides
// again.
var errPoolChanged = errors.New("the routes changed while waiting for a pooled connection")

func newConnPool(p *Proxy, o SessionOptions, m *poolMetrics) *connPool {
	return &connPool{p: p, size: o.PoolSize, timeout: o.PoolTimeout, idleMax: o.PoolIdleTimeout, lifetime: o.PoolLifetime,
		m: m, pools: map[poolKey]*pool{}}
}

func (cp *connPool) poolLocked(k poolKey) *pool {
	pl := cp.pools[k]
	if pl == nil {
		pl = &pool{freed: make(chan struct{})}
		cp.pools[k] = pl
	}
	return pl
}

// signalLocked wakes the sessions waiting on pl.
func (pl *pool) signalLocked() {
	if pl.waiting > 0 {
		close(pl.freed)
		pl.freed = make(chan struct{})
	}
}

// acquire returns an idle connection of k's pool on t (the one owner used
// last when there is one), or nil with a slot reserved for a new
// connection (the caller logs in and links it, or frees the slot). A
// caller that must wait has *since set to when its wait began, unless
// already set by an earlier call: the wait ends at most the pool timeout
// after *since (errPoolTimeout), and earlier with errPoolChanged when
// changed is closed (the caller decides again and calls again, its
// *since kept). The caller observes and clears *since.
func (cp *connPool) acquire(ctx context.Context, k poolKey, t Target, owner *protoSession, changed <-chan struct{}, since *time.Time) (*backendConn, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	cp.mu.Lock()
	pl := cp.poolLocked(k)
	for {
		var stale []*backendConn
		keep := pl.idle[:0]
		for _, bc := range pl.idle {
			if bc.t != t {
				stale = append(stale, bc)
			} else {
				keep = append(keep, bc)
			}
		}
		pl.idle = keep
		var bc *backendConn
		slot := false
		if i := pickIdle(pl.idle, owner); i >= 0 {
			bc = pl.idle[i]
			pl.idle = slices.Delete(pl.idle, i, i+1)
		} else if pl.open < cp.size {
			pl.open++
			slot = true
		}
		if bc == nil && !slot {
			pl.waiting++
		}
		freed := pl.freed
		cp.mu.Unlock()
		closeConns(stale)
		if bc != nil || slot {
			return bc, nil
		}
		if since.IsZero() {
			*since = time.Now()
		}
		if timer == nil {
			timer = time.NewTimer(time.Until(since.Add(cp.timeout)))
		}
		var err error
		select {
		case <-freed:
		case <-changed:
			err = errPoolChanged
		case <-timer.C:
			err = errPoolTimeout
		case <-ctx.Done():
			err = ctx.Err()
		}
		cp.mu.Lock()
		pl.waiting--
		if err != nil {
			cp.mu.Unlock()
			return nil, err
		}
	}
}

// acquireTimed is connPool.acquire for the session, its wait measured
// across calls (holdfast_proxy_pool_wait_seconds). A connection that was
// idle on a loop is taken back from it: the session serves it on
// goroutines.
func (ps *protoSession) acquireTimed(ctx context.Context, t Target, changed <-chan struct{}) (*backendConn, error) {
	cp := ps.p.pool
	for {
		bc, err := cp.acquire(ctx, ps.pool.key, t, ps, changed, &ps.pool.waitSince)
		if errors.Is(err, errPoolChanged) {
			return nil, err
		}
		if !ps.pool.waitSince.IsZero() {
			cp.m.wait.Observe(time.Since(ps.pool.waitSince).Seconds())
			ps.pool.waitSince = time.Time{}
		}
		if bc != nil {
			if ferr := bc.fromLoop(); ferr != nil {
				// Not usable off the loop: let it go (its slot frees)
				// and take another, or a new login.
				ps.log.Debug("take a pooled server connection from its loop; trying another", "backend", t.Name, "err", ferr)
				bc.release(false)
				continue
			}
			if ierr := bc.idleSilent(); ierr != nil {
				ps.log.Debug("a pooled server connection changed while idle; trying another", "backend", t.Name, "err", ierr)
				bc.release(false)
				continue
			}
		}
		return bc, err
	}
}

// idleSilent checks a connection taken from its pool's idle list: the
// server has neither closed it nor said anything since it was parked (an
// idle server connection does not speak first: a message there is a
// FATAL before the end, or a notice nobody would read). No loop watches a
// connection idle off the loops (TLS to the server, or the loops switched
// off), so the server may have ended it meanwhile — pg_terminate_backend,
// idle_session_timeout, a restart — and a transaction sent on it would
// fail as lost in flight (40003), its outcome "unknown", though the server
// never saw it. One non-blocking peek at the socket; the error says what
// was found.
func (bc *backendConn) idleSilent() error {
	if bc.src.buffered() > 0 || bc.fe.ReadBufferLen() > 0 {
		return errors.New("the server sent something while the connection was idle")
	}
	conn := bc.netConn()
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil // not a socket: nothing to peek at
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return fmt.Errorf("peek at an idle connection: %w", err)
	}
	var n int
	var perr error
	if err := rc.Control(func(fd uintptr) {
		var b [1]byte
		for {
			n, _, perr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if perr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return fmt.Errorf("peek at an idle connection: %w", err)
	}
	switch {
	case perr == syscall.EAGAIN:
		return nil
	case perr != nil:
		return fmt.Errorf("peek at an idle connection: %w", perr)
	case n == 0:
		return errors.New("the server closed the connection while it was idle")
	}
	return errors.New("the server sent something while the connection was idle")
}

// takeHeld takes from k's pool, without waiting, the idle connection on t
// that still holds owner's state (stillHolds), or returns nil.
func (cp *connPool) takeHeld(pl *pool, t Target, owner *protoSession) *backendConn {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for i := len(pl.idle) - 1; i >= 0; i-- {
		if bc := pl.idle[i]; bc.t == t && bc.pl.stillHolds(owner) {
			pl.idle = slices.Delete(pl.idle, i, i+1)
			return bc
		}
	}
	return nil
}

// takeIdleConn takes bc out of its pool if it is idle there; false: it is
// not (a session took it, or it was let go).
func (cp *connPool) takeIdleConn(bc *backendConn) bool {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return bc.pl.pool.dropIdleLocked(bc)
}

// dropIdleLocked takes bc out of pl's idle connections (cp.mu held);
// false: it was not there.
func (pl *pool) dropIdleLocked(bc *backendConn) bool {
	i := slices.Index(pl.idle, bc)
	if i < 0 {
		return false
	}
	pl.idle = slices.Delete(pl.idle, i, i+1)
	return true
}

// freeSlot gives back a slot acquire reserved that no connection took.
func (cp *connPool) freeSlot(k poolKey) {
	cp.mu.Lock()
	pl := cp.poolLocked(k)
	pl.open--
	pl.signalLocked()
	cp.mu.Unlock()
}

// discarded records that DISCARD ALL reset the connection, which now
// reports params. It holds nobody's state: should it go back to the pool
// unpublished (its client left meanwhile), the session that used it
// before must not take it as still holding its state (stillHolds) and
// run on it with no replay.
func (l *poolLink) discarded(params map[string]string) {
	l.params, l.paramsOf, l.last = params, nil, nil
}

// link makes bc, logged in on a slot of k's pool, a pooled connection.
func (cp *connPool) link(bc *backendConn, k poolKey) {
	// Up to a tenth less than the lifetime, at random: connections a
	// burst opened together do not all end, and log in again, together.
	life := cp.lifetime - time.Duration(rand.Int64N(int64(cp.lifetime/lifetimeJitter)+1))
	bc.pl = &poolLink{cp: cp, pool: cp.poolOf(k), expires: time.Now().Add(life)}
}

// closed counts bc, a pooled connection, out of its pool (release calls
// it once).
func (cp *connPool) closed(bc *backendConn) {
	cp.mu.Lock()
	pl := bc.pl.pool
	pl.open--
	pl.dropIdleLocked(bc)
	pl.signalLocked()
	cp.mu.Unlock()
}

// put makes bc idle in its pool — unless new connections are no longer
// routed to its member: then it is closed, so that a switching-over
// primary does not wait for it; or unless it has lived for the pool's
// lifetime: then it is closed too (a connection in steady use is idle
// only between transactions, which the sweep would seldom catch). r are
// the routes as the session last saw them; changed is closed when they
// may be out of date.
func (cp *connPool) put(bc *backendConn, r Routes, changed <-chan struct{}) {
	p := cp.p
	p.mu.Lock()
	r = p.routesAsOfLocked(r, changed)
	if !routedTo(r, bc.t) {
		p.mu.Unlock()
		bc.release(true)
		return
	}
	now := time.Now()
	if !now.Before(bc.pl.expires) {
		p.mu.Unlock()
		cp.m.closed.WithLabelValues(closedLifetime).Inc()
		bc.release(true)
		return
	}
	cp.mu.Lock()
	pl := bc.pl.pool
	bc.pl.idleSince = now
	pl.idle = append(pl.idle, bc)
	pl.signalLocked()
	cp.mu.Unlock()
	p.mu.Unlock()
}

// closeIdleLocked closes the idle connections to members r does not route
// new read-write connections to (p.mu is held: enforce). They are closed
// gracefully on a goroutine of their own.
func (cp *connPool) closeIdleLocked(r Routes) int {
	if cp == nil {
		return 0
	}
	stale := cp.takeIdle(func(bc *backendConn) bool { return !routedTo(r, bc.t) })
	if len(stale) > 0 {
		go closeConns(stale)
	}
	return len(stale)
}

// closeAll closes every idle connection (the proxy stops).
func (cp *connPool) closeAll() {
	if cp == nil {
		return
	}
	var all []*backendConn
	cp.mu.Lock()
	for _, pl := range cp.pools {
		all = append(all, pl.idle...)
		pl.idle = nil
	}
	cp.mu.Unlock()
	closeConns(all)
}

func closeConns(cs []*backendConn) {
	for _, bc := range cs {
		bc.release(true)
	}
}

// poolStat is one pool's numbers for the metrics.
type poolStat struct {
	user, database       string
	inUse, idle, waiting int
}

func (cp *connPool) stats() []poolStat {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	sum := map[[2]string]*poolStat{}
	for k, pl := range cp.pools {
		s := sum[[2]string{k.user, k.database}]
		if s == nil {
			s = &poolStat{user: k.user, database: k.database}
			sum[[2]string{k.user, k.database}] = s
		}
		s.idle += len(pl.idle)
		s.inUse += pl.open - len(pl.idle)
		s.waiting += pl.waiting
	}
	out := make([]poolStat, 0, len(sum))
	for _, s := range sum {
		out = append(out, *s)
	}
	return out
}

// poolMetrics are transaction pooling's instruments.
// Reasons of holdfast_proxy_pool_server_connections_closed_total.
const (
	closedIdleTimeout = "idle_timeout"
	closedLifetime    = "lifetime"
)

type poolMetrics struct {
	wait   prometheus.Histogram
	pinned *prometheus.CounterVec
	closed *prometheus.CounterVec // connections at rest closed by the sweep or at park (lifetime), by reason
}

// poolCollector reports the pools' connections and waiting clients at
// scrape time, per user and database.
type poolCollector struct {
	cp             *connPool
	conns, waiting *prometheus.Desc
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.conns
	ch <- c.waiting
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.cp.stats() {
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(s.inUse), s.user, s.database, "in_use")
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(s.idle), s.user, s.database, "idle")
		ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(s.waiting), s.user, s.database)
	}
}

// newConnPoolWithMetrics makes the connection pool and registers its
// metrics with reg.
func newConnPoolWithMetrics(p *Proxy, o SessionOptions, reg prometheus.Registerer) (*connPool, error) {
	m := &poolMetrics{
		wait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "holdfast_proxy_pool_wait_seconds",
			Help:    "How long a client's transaction (transaction pooling) waited for a server connection of its pool, counted for the waits only.",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		pinned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_proxy_pool_sessions_pinned_total",
			Help: "Client sessions (transaction pooling) pinned to their server connection for the rest of their life because their state cannot be shared, by reason (temp_table, advisory_lock, listen, hold_cursor, settings, opaque, statement_context).",
		}, []string{"reason"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_proxy_pool_server_connections_closed_total",
			Help: "Server connections (transaction pooling) the proxy closed at rest, by reason: idle_timeout (idle in its pool for the pool idle timeout) or lifetime (older than the pool lifetime, idle or at the end of a transaction).",
		}, []string{"reason"}),
	}
	cp := newConnPool(p, o, m)
	pc := &poolCollector{cp: cp,
		conns: prometheus.NewDesc("holdfast_proxy_pool_server_connections",
			"Server connections of the transaction pools by user, database and state (in_use: bound to a client's transaction, a pinned session or being logged in; idle).",
			[]string{"user", "database", "state"}, nil),
		waiting: prometheus.NewDesc("holdfast_proxy_pool_clients_waiting",
			"Client transactions waiting for a server connection of their pool, by user and database.",
			[]string{"user", "database"}, nil),
	}
	for _, c := range []prometheus.Collector{m.wait, m.pinned, m.closed, pc} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register pool metrics: %w", err)
		}
	}
	return cp, nil
}

// sessionPool is a session's transaction pooling state (owned by its
// goroutine).
type sessionPool struct {
	key        poolKey
	pl         *pool     // key's (see connPool.pools), once key is known
	slot       bool      // a slot of the pool is reserved for a login not linked yet
	pinned     bool      // the session keeps its connection (counted once)
	lastMember string    // the member of the connection it used last
	changed    bool      // acquirePooled stopped waiting: the routes changed (or the proxy stops)
	waitSince  time.Time // when the wait for a connection began (zero: not waiting)
	uses       int       // pooled connections published so far (see poolLink.stillHolds)
	parked     bool      // the connection used last went back to the pool holding the session's state (park)
	// onLoop: the connection used last went back to the pool on a loop
	// (plain TCP, whole messages): the loop can serve the session's next
	// transaction. A session whose connections cannot be on a loop (TLS
	// to the members) stays off it, rather than entering and leaving it
	// at every transaction.
	onLoop bool
}

// pooled says whether the session is transaction-pooled: only sessions of
// the read-write listener are. The pool follows the primary; a read-only
// session stays on its replica in session mode (its own connection, moved
// when the replica leaves the read-only pool), as a pool per replica is
// not built.
func (ps *protoSession) pooled() bool { return ps.p.pool != nil && ps.place.listener == ListenerRW }

// wantsServer says whether the session should take a server connection
// now: always in session mode; transaction-pooled, only for a client
// message to pass on (not for its Terminate).
func (ps *protoSession) wantsServer() bool {
	if !ps.pooled() {
		return true
	}
	if ps.pending == nil {
		return false
	}
	_, bye := ps.pending.msg.(*pgproto3.Terminate)
	return !bye
}

// adoptLogin links bc, just logged in for the session, to the pool slot
// the session reserved (transaction pooling; nothing otherwise).
func (ps *protoSession) adoptLogin(bc *backendConn) {
	if ps.pooled() && ps.pool.slot {
		ps.p.pool.link(bc, ps.pool.key)
		ps.pool.slot = false
	}
}

// dropSlot frees a reserved slot no connection took.
func (ps *protoSession) dropSlot() {
	if ps.pooled() && ps.pool.slot {
		ps.pool.slot = false
		ps.p.pool.freeSlot(ps.pool.key)
	}
}

// maybePark gives the session's server connection back to its pool when
// the session is between transactions with nothing in flight and nothing
// more from the client to pass on; a session whose state cannot be
// shared is pinned instead (and counted once).
func (ps *protoSession) maybePark() {
	if !ps.pooled() || ps.bc == nil || ps.bc.pl == nil || ps.pending != nil || ps.heldAck != nil || ps.injected > 0 ||
		ps.awaiting > 0 || ps.unsynced || ps.discard || !ps.st.AtBoundary() || ps.pool.pinned {
		return
	}
	if err := ps.st.Movable(); err != nil {
		ps.pool.pinned = true
		reason := "unknown"
		var ue *pgsession.UnmovableError
		if errors.As(err, &ue) {
			reason = ue.Reason.Label()
		}
		ps.p.pool.m.pinned.WithLabelValues(reason).Inc()
		ps.log.Debug("session pinned to its server connection", "reason", reason)
		return
	}
	ps.park(ps.unpublish())
}

// park stops the reader of bc, the session's server connection (let go
// by the session already: unpublish), and gives the connection back to
// the pool. One its loop serves stays on the loop, idle: its events go to
// the loop's serveIdle until a session takes it.
func (ps *protoSession) park(bc *backendConn) {
	ps.toFull = false
	ps.releaseAck()
	if ps.inLoop && ps.loopBC == bc {
		bc.lmu.Lock()
		bc.lowner = nil
		bc.lmu.Unlock()
		ps.loopBC = nil
	}
	l := bc.pl.lease
	bc.pl.lease = nil
	if l != nil && l == ps.parker {
		// The park comes from this lease's reader, handling its own
		// message: it is not reading, and it stops without reading again
		// once the handling is done (inlinePooled).
		l.parking.Store(true)
		close(l.stop)
	} else if l != nil {
		l.parking.Store(true)
		close(l.stop)
		_ = bc.conn.SetReadDeadline(longAgo)
		select {
		case <-l.exited:
		case <-time.After(parkTimeout):
			bc.release(false)
			return
		}
		_ = bc.conn.SetReadDeadline(time.Time{})
		if l.err != nil && !errors.Is(l.err, os.ErrDeadlineExceeded) {
			bc.release(false) // it broke meanwhile
			return
		}
	}
	bc.pl.last, bc.pl.lastUse = ps, ps.pool.uses
	ps.pool.parked = true
	if v := ps.st.ReportedVersion(); bc.pl.paramsOf != ps || bc.pl.paramsVer != v {
		bc.pl.params, bc.pl.paramsOf, bc.pl.paramsVer = ps.st.Reported(), ps, v
	}
	ps.pool.lastMember = bc.t.Name
	bc.lmu.Lock()
	onLoop := bc.lfd >= 0
	bc.lmu.Unlock()
	if _, plain := bc.netConn().(*net.TCPConn); ps.sl != nil && !onLoop && plain && bc.src.frames && bc.fe.ReadBufferLen() == 0 {
		// Idle on a loop, the connection is watched (a server that ends
		// it is seen at once, see sessLoop.serveIdle) and ready for the
		// session's next transaction there. Off it (TLS, or an error), it
		// waits unwatched, as without a loop.
		if err := bc.toLoop(ps.sl, nil); err != nil {
			ps.log.Debug("hand an idle pooled server connection to the loop", "err", err)
		} else {
			onLoop = true
		}
	}
	ps.pool.onLoop = onLoop
	ps.p.pool.put(bc, ps.rt, ps.rtChanged)
}

// startReader starts the reader of bc, just published: the session's
// usual reader, or for a pooled connection one that a park can stop
// without closing the connection.
func (ps *protoSession) startReader(bc *backendConn) {
	if bc.pl != nil {
		ps.pool.parked = false
		if !bc.pl.stillHolds(ps) {
			ps.pool.uses++ // another connection than the one it left last
		}
	}
	ps.restartReader(bc, false)
}

// restartReader starts bc's reader (bc published already): at publish
// (startReader), or again after the loop served it; wait: first wait for
// the acknowledgement of a message the loop left held.
func (ps *protoSession) restartReader(bc *backendConn, wait bool) {
	if bc.pl == nil {
		go ps.readBackend(bc, wait)
		return
	}
	l := &lease{stop: make(chan struct{}), exited: make(chan struct{})}
	bc.pl.lease = l
	go ps.readPooled(bc, l, wait)
}

// readPooled is readBackend for a pooled connection: it also stops when
// the session parks the connection (l.stop, and a read interrupted by a
// deadline in the past), leaving the connection usable. A park that the
// reader's own message brings about (its ReadyForQuery) is done by the
// reader itself (ps.parker): park does not wait for it to exit, and it
// stops before it reads again.
func (ps *protoSession) readPooled(bc *backendConn, l *lease, wait bool) {
	defer close(l.exited)
	ack := bc.ack
	if wait && !ps.awaitAck(bc, l.stop) {
		return
	}
	for {
		if !bc.src.frames && bc.fe.ReadBufferLen() == 0 {
			// Between messages with nothing read ahead: from here on the
			// decoder reads whole messages (see readBackend), which the
			// loop needs to take the connection.
			bc.src.toFrames()
		}
		m, err := bc.fe.Receive()
		if err != nil && l.parking.Load() {
			l.err = err
			return
		}
		more := err == nil && bc.fe.ReadBufferLen() > 0
		if !ps.inlinePooled(event{gen: bc.gen, msg: m, more: more, err: err, ack: ack}, bc.stop, l) {
			return
		}
		if err != nil {
			l.err = err
			return
		}
		if !ps.awaitAck(bc, l.stop) {
			return
		}
	}
}

// inlinePooled is inline for a pooled connection's reader: it gives up
// waiting for the lock when the session parks the connection, and marks
// the session's lock as held by this lease's reader (ps.parker) while it
// handles ev. False when the reader stops (its connection was parked or
// let go, or the session is over).
func (ps *protoSession) inlinePooled(ev event, stop <-chan struct{}, l *lease) bool {
	select {
	case ps.lock <- struct{}{}:
	case <-stop:
		return false
	case <-ps.done:
		return false
	case <-l.stop:
		return false
	}
	select {
	case <-l.stop:
		// Parked while it waited for the lock: its message is not the
		// session's any more (park waits for this reader to exit).
		ps.unlock()
		return false
	default:
	}
	ps.parker = l // cleared by inlineLocked before it releases the lock
	ok := ps.inlineLocked(ev)
	select {
	case <-l.stop:
		return false // parked by its own message: it reads no more
	default:
	}
	return ok
}

// releaseEnd lets the server connection go at the session's end: a pooled
// connection at rest goes back to its pool, any other is closed
// (gracefully when graceful).
func (ps *protoSession) releaseEnd(bc *backendConn, graceful bool) {
	if graceful && bc.pl != nil && !ps.pool.pinned && ps.awaiting == 0 && !ps.unsynced && ps.injected == 0 &&
		ps.st.AtBoundary() && ps.st.Movable() == nil {
		ps.park(bc)
		return
	}
	if !graceful && bc.pl != nil {
		// The connection broke (the server died, or ended it): its idle
		// siblings to the same member most likely did too. Closing them
		// now spares each a client's transaction failing on it; a wrong
		// guess costs a new login.
		ps.p.pool.closeIdleTo(bc.t)
	}
	bc.release(graceful)
}

// takeIdle removes the idle connections that match from every pool and
// returns them, for the caller to close outside the pool's lock.
func (cp *connPool) takeIdle(match func(*backendConn) bool) []*backendConn {
	var taken []*backendConn
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for _, pl := range cp.pools {
		keep := pl.idle[:0]
		for _, bc := range pl.idle {
			if match(bc) {
				taken = append(taken, bc)
			} else {
				keep = append(keep, bc)
			}
		}
		clear(pl.idle[len(keep):])
		pl.idle = keep
	}
	return taken
}

// sweep closes, until ctx ends, the idle connections that have been idle
// for the idle timeout or have lived for the lifetime, looking every
// quarter of the shorter of the two (within poolSweepMin and
// poolSweepMax). A connection in use is left alone: its lifetime is
// checked once it is idle again.
func (cp *connPool) sweep(ctx context.Context) {
	every := min(max(min(cp.idleMax, cp.lifetime)/4, poolSweepMin), poolSweepMax)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			cp.sweepOnce(now)
		}
	}
}

// sweepOnce closes the idle connections past their idle timeout or
// lifetime at now, gracefully (a Terminate first).
func (cp *connPool) sweepOnce(now time.Time) {
	var idle, old int
	stale := cp.takeIdle(func(bc *backendConn) bool {
		switch {
		case !now.Before(bc.pl.expires):
			old++
		case now.Sub(bc.pl.idleSince) >= cp.idleMax:
			idle++
		default:
			return false
		}
		return true
	})
	if len(stale) == 0 {
		return
	}
	cp.m.closed.WithLabelValues(closedIdleTimeout).Add(float64(idle))
	cp.m.closed.WithLabelValues(closedLifetime).Add(float64(old))
	closeConns(stale)
}

// closeIdleTo closes the idle connections to t.
func (cp *connPool) closeIdleTo(t Target) {
	for _, bc := range cp.takeIdle(func(bc *backendConn) bool { return bc.t == t }) {
		bc.release(false)
	}
}

// acquirePooled takes a server connection of the session's pool on t: an
// idle one (reset and replayed for the session unless it used it last),
// or a new login. It returns the connection, not published, and whether
// the session's state must be replayed there (replay: the answers to
// the plan's Messages(true) are what check must read next; the
// connection's startup was already fed to it). nil with over=false: try
// again later (the caller keeps the backoff); over: the session is closed.
// planned gives the session's replay plan; it is asked only when the
// session does not get back the connection it used last (most
// transactions do, and working the plan out costs about as much as
// forwarding the transaction).
func (ps *protoSession) acquirePooled(ctx context.Context, t Target, planned func() (*pgsession.Plan, error), changed <-chan struct{}) (bc *backendConn, check *pgsession.ReplayResponses, fresh, over bool) {
	cp := ps.p.pool
	for {
		bc, err := ps.acquireTimed(ctx, t, changed)
		switch {
		case errors.Is(err, errPoolTimeout):
			ps.log.Warn("closing a session whose transaction waited the pool timeout for a server connection", "pool_size", cp.size, "pool_timeout", cp.timeout)
			ps.fatal(codeTooManyConnections, fmt.Sprintf("no server connection of the pool for user %q, database %q became free within %s (pool size %d): too many clients in transactions at once — retry later, or raise --pool-size (the server's max_connections permitting)",
				ps.pool.key.user, ps.pool.key.database, cp.timeout, cp.size))
			return nil, nil, false, true
		case err != nil:
			ps.pool.changed = true
			return nil, nil, false, false
		}
		if bc == nil {
			ps.pool.slot = true
			plan, err := planned()
			if err != nil {
				ps.dropSlot()
				ps.closeUnmovable(err)
				return nil, nil, false, true
			}
			bc, err := ps.loginWatched(ctx, t, plan.Startup)
			if err != nil {
				ps.dropSlot()
				if errors.Is(err, errLoginRetry) {
					ps.log.Debug("log in to the primary for the pool; trying again", "backend", t.Name, "err", err)
					return nil, nil, false, false
				}
				ps.closeUnmovable(err)
				return nil, nil, false, true
			}
			for _, m := range plan.Messages(true) {
				bc.fe.Send(m)
			}
			return bc, plan.Responses(true), true, false
		}
		if bc.pl.stillHolds(ps) && !ps.st.InLostBlock() {
			return bc, nil, false, false // its own state is there already
		}
		plan, err := planned()
		if err != nil {
			cp.put(bc, ps.rt, ps.rtChanged)
			ps.closeUnmovable(err)
			return nil, nil, false, true
		}
		check, err := resetPooled(bc, plan)
		if err != nil {
			ps.log.Debug("reset a pooled server connection; trying another", "backend", t.Name, "err", err)
			bc.release(false)
			continue
		}
		return bc, check, false, false
	}
}

// resetPooled sends DISCARD ALL and plan's Messages(true) on bc, an idle
// pooled connection, reads DISCARD ALL's answers, and returns the checker
// for the rest, already fed bc's startup as its last user left it (its
// reported parameters, its cancel key).
func resetPooled(bc *backendConn, plan *pgsession.Plan) (*pgsession.ReplayResponses, error) {
	_ = bc.conn.SetDeadline(time.Now().Add(poolResetTimeout))
	bc.fe.Send(&pgproto3.Query{String: "DISCARD ALL"})
	for _, m := range plan.Messages(true) {
		bc.fe.Send(m)
	}
	if err := bc.fe.Flush(); err != nil {
		return nil, fmt.Errorf("reset a pooled connection: %w", err)
	}
	params := maps.Clone(bc.pl.params)
	done := false
	for !done {
		m, err := bc.fe.Receive()
		if err != nil {
			return nil, fmt.Errorf("reset a pooled connection: %w", err)
		}
		switch m := m.(type) {
		case *pgproto3.ParameterStatus:
			params[m.Name] = m.Value
		case *pgproto3.CommandComplete, *pgproto3.NoticeResponse:
		case *pgproto3.ReadyForQuery:
			if m.TxStatus != pgsession.TxIdle {
				return nil, fmt.Errorf("reset a pooled connection: ReadyForQuery %q after DISCARD ALL", m.TxStatus)
			}
			done = true
		case *pgproto3.ErrorResponse:
			return nil, fmt.Errorf("reset a pooled connection: DISCARD ALL: %s (SQLSTATE %s)", m.Message, m.Code)
		default:
			return nil, fmt.Errorf("reset a pooled connection: unexpected %T after DISCARD ALL", m)
		}
	}
	bc.pl.discarded(params)
	check := plan.Responses(true)
	for _, n := range slices.Sorted(maps.Keys(params)) {
		if _, err := check.Receive(&pgproto3.ParameterStatus{Name: n, Value: params[n]}); err != nil {
			return nil, err
		}
	}
	if bc.key != nil {
		if _, err := check.Receive(bc.key); err != nil {
			return nil, err
		}
	}
	if _, err := check.Receive(&pgproto3.ReadyForQuery{TxStatus: pgsession.TxIdle}); err != nil {
		return nil, err
	}
	return check, nil
}

// attachPooled is attach under transaction pooling: the session takes a
// connection of its pool on t for the transaction its client began.
func (ps *protoSession) attachPooled(ctx context.Context, t Target) bool {
	var plan *pgsession.Plan
	planned := func() (*pgsession.Plan, error) {
		if plan == nil {
			p, err := ps.st.Plan()
			if err != nil {
				return nil, err
			}
			plan = p
		}
		return plan, nil
	}
	if !ps.pool.parked {
		// No idle connection can hold the session's state: it is replayed
		// wherever it runs, and a state that cannot be closes the session
		// before it waits for the pool.
		if _, err := planned(); err != nil {
			ps.closeUnmovable(err)
			return true
		}
	}
	again := ps.backOff("take a pooled server connection", t)
	ps.pool.changed = false
	bc, check, fresh, over := ps.acquirePooled(ctx, t, planned, ps.rtChanged)
	if over {
		return true
	}
	if bc == nil && ps.pool.changed {
		// The routes were re-evaluated while the session waited (enforce
		// does so every view refresh): step decides again at once, with
		// no backoff. Waiting for the pool is not waiting for a primary:
		// the hold timeout does not run meanwhile (the pool timeout
		// does, across the attempts).
		ps.heldSince = time.Time{}
		return false
	}
	if bc == nil {
		return again(errors.New("no connection now"))
	}
	if check == nil {
		// Back to the connection it used last: its state is there.
		if !ps.publish(bc) {
			ps.p.pool.put(bc, ps.rt, ps.rtChanged)
		}
		return false
	}
	if fresh {
		if err := bc.fe.Flush(); err != nil {
			bc.release(false)
			return again(fmt.Errorf("replay the session on %s: %w", t.Name, err))
		}
	}
	over, attached := ps.finishReplay(bc, t, check, again)
	if attached {
		if ps.pool.lastMember != "" && ps.pool.lastMember != t.Name {
			ps.p.sm.migrated.WithLabelValues(ps.place.listener).Inc()
			ps.log.Info("session moved to the primary", "backend", t.Name, "setup_statements", len(plan.Setup), "prepared_statements", len(plan.Statements))
		}
		ps.pool.lastMember = t.Name
	}
	return over
}

// firstLoginPooled is firstLogin under transaction pooling: the client's
// startup is answered from an idle connection of its pool (reset with
// DISCARD ALL: its defaults are the client's, its pool being keyed by
// them), or from a new login on a slot of the pool, waiting for one at
// most the pool timeout. False when the session is over.
func (ps *protoSession) firstLoginPooled(ctx context.Context, t Target, startup map[string]string, holdUntil time.Time) bool {
	ps.pool.key = poolKeyOf(startup)
	cp := ps.p.pool
	ps.pool.pl = cp.poolOf(ps.pool.key)
	for {
		_, changed := ps.routes()
		bc, err := ps.acquireTimed(ctx, t, changed)
		switch {
		case errors.Is(err, errPoolTimeout):
			ps.fatal(codeTooManyConnections, fmt.Sprintf("no server connection of the pool for user %q, database %q became free within %s (pool size %d) — retry later, or raise --pool-size",
				ps.pool.key.user, ps.pool.key.database, cp.timeout, cp.size))
			return false
		case errors.Is(err, errPoolChanged):
			next, why := ps.p.awaitPrimary(ctx, holdUntil)
			if next == nil {
				ps.fatal(codeCannotConnectNow, "no primary took the connection: "+why)
				return false
			}
			t = *next
			continue
		case err != nil:
			return false
		}
		if bc == nil {
			ps.pool.slot = true
			ok := ps.firstLogin(ctx, t, startup, holdUntil)
			ps.dropSlot() // when no connection took it
			if ok && ps.bc != nil {
				ps.pool.lastMember = ps.bc.t.Name
			}
			return ok
		}
		if err := ps.startFromPooled(bc); err != nil {
			ps.log.Debug("reset a pooled server connection; trying another", "backend", t.Name, "err", err)
			bc.release(false)
			continue
		}
		return true
	}
}

// startFromPooled answers the client's startup from bc, an idle pooled
// connection: DISCARD ALL, then AuthenticationOk, the parameters the
// server reports there, the proxy's cancel key and ReadyForQuery, as a
// login would.
func (ps *protoSession) startFromPooled(bc *backendConn) error {
	_ = bc.conn.SetDeadline(time.Now().Add(poolResetTimeout))
	bc.fe.Send(&pgproto3.Query{String: "DISCARD ALL"})
	if err := bc.fe.Flush(); err != nil {
		return fmt.Errorf("reset a pooled connection: %w", err)
	}
	params := maps.Clone(bc.pl.params)
	for {
		m, err := bc.fe.Receive()
		if err != nil {
			return fmt.Errorf("reset a pooled connection: %w", err)
		}
		if ps, ok := m.(*pgproto3.ParameterStatus); ok {
			params[ps.Name] = ps.Value
			continue
		}
		if r, ok := m.(*pgproto3.ReadyForQuery); ok {
			if r.TxStatus != pgsession.TxIdle {
				return fmt.Errorf("reset a pooled connection: ReadyForQuery %q after DISCARD ALL", r.TxStatus)
			}
			break
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			return fmt.Errorf("reset a pooled connection: DISCARD ALL: %s (SQLSTATE %s)", e.Message, e.Code)
		}
	}
	_ = bc.conn.SetDeadline(time.Time{})
	bc.pl.discarded(params)
	ps.be.Send(&pgproto3.AuthenticationOk{})
	for _, n := range slices.Sorted(maps.Keys(params)) {
		m := &pgproto3.ParameterStatus{Name: n, Value: params[n]}
		_, _ = ps.st.Backend(m)
		ps.be.Send(m)
	}
	if bc.key != nil {
		_, _ = ps.st.Backend(bc.key)
	}
	ps.be.Send(&ps.key)
	rfq := &pgproto3.ReadyForQuery{TxStatus: pgsession.TxIdle}
	_, _ = ps.st.Backend(rfq)
	ps.be.Send(rfq)
	if err := ps.flushClient(); err != nil {
		ps.p.pool.put(bc, ps.rt, ps.rtChanged)
		return nil // the client left; the session ends on its next read
	}
	ps.pool.lastMember = bc.t.Name
	if !ps.publish(bc) {
		ps.p.pool.put(bc, ps.rt, ps.rtChanged)
	}
	ps.p.m.routed.WithLabelValues(ListenerRW, bc.t.Name).Inc()
	return nil
}
