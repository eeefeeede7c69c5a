// Package proxy is the holdfast smart proxy: a layer-4 TCP pass-through
// that sends read-write connections to the current primary and read-only
// connections to healthy replicas, following the cluster's state in the
// consensus store.
//
// By default (ModePassThrough) it never parses the PostgreSQL protocol:
// bytes are copied unchanged in both directions, so every client, driver,
// authentication method and TLS setting works (TLS is end to end between
// client and PostgreSQL). ModeSession instead speaks the protocol on both
// listeners, authenticates clients, terminates their TLS and moves
// sessions to a new primary, or off a replica that leaves the read-only
// pool (protosession.go, protoplace.go, prototls.go); with
// SessionOptions.PoolMode = PoolTransaction the read-write listener's
// sessions share server connections one transaction at a time (pool.go).
//
// The failures it guards against:
//
//   - Clients writing to a demoted node. Read-write connections go only to
//     the member named by the leader key whose own status says
//     primary/running; when that changes, every read-write connection to
//     any other backend is closed at once (the store's watch wakes the
//     proxy on a leader change, its role watch on a member's role or state
//     change; see RoleWatcher).
//   - A stale view. Every routing decision carries the age of the view it
//     was made from; a view as old as the TTL may predate a failover, so
//     the proxy then refuses new read-write connections and closes the
//     existing ones: it fails closed while the store is unreachable —
//     except towards the primary the view names while that member itself
//     confirms, over its API, that it may still accept writes (its lease,
//     or the failsafe); see Grant and Confirmer.
//   - A primary that accepts TCP connections but does not answer them (a
//     frozen postmaster). A backend must answer within StartupTimeout of
//     the client's first bytes; a read-write client is then held and the
//     primary tried again (the client's bytes are replayed), and refused
//     once the primary has not answered for UnresponsiveLimit.
//   - Errors during a switchover or failover. New read-write connections
//     are held (accepted, not dialed) while the switchover is due and while
//     no primary exists, and held too while the primary the view names
//     does not accept connections (it died; its lease has not expired
//     yet), then handed to the new primary; a client that opens a
//     connection per transaction sees a slow connect, not an error.
//
// Read-only connections go to streaming replicas that have replayed WAL to
// within MaxReplicaLag of the primary (round-robin or least-connections),
// or to the primary by
// fallback if allowed. A replica that drops out of that set gets no new
// connections, but its existing pass-through ones are kept (a lag spike
// should not become client errors; a replica that stops closes them
// itself) — in ModeSession they move to another member at their next
// boundary. A fallback pass-through connection to the primary is cut like
// a read-write one when that member stops being the primary.
//
// Routing is decided by the pure function Route; the Proxy feeds it views
// (watch-driven, plus a reload every TTL/4 for replica lag) and enforces
// its answer on connections.
//
// Routed connections are served by event loops (Options.Loops; see
// loop.go): each waits on its own epoll instance and copies bytes with one
// read and one write per chunk, without goroutines per connection.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/holdfast/holdfast/internal/cluster"
)

// ViewSource is what the proxy needs from the store; *store.Etcd satisfies
// it.
//
// Load returns one consistent read of the cluster; the proxy never
// modifies the returned view, and the source must not modify it after
// returning it. Watch returns a channel that signals (coalesced) whenever
// the leader, initialize, config, failover or history keys change and
// once each time the watch is (re-)established; it is closed when ctx is
// done. Status writes do not signal there; a source that is also a
// RoleWatcher reports role changes separately.
type ViewSource interface {
	Load(ctx context.Context) (cluster.View, error)
	Watch(ctx context.Context) <-chan struct{}
}

// RoleWatcher is a ViewSource that can also report role changes:
// WatchRoles signals (coalesced) whenever a member's status appears,
// disappears or reports another role or state, and once each time its
// watch is (re-)established; it is closed when ctx is done. *store.Etcd
// satisfies it. With it the proxy routes to a new primary as soon as that
// member reports itself writable; without it, the proxy re-reads the
// store every HeldPoll while a read-write connection is held.
type RoleWatcher interface {
	WatchRoles(ctx context.Context) <-chan struct{}
}

// Confirmer asks a member whether it may accept writes now.
//
// ConfirmWritable returns for how long, from the moment the question is
// answered, member m may still accept writes before it must fence, or an
// error (also when m is not the writable primary, or another member
// answered). The proxy counts the answer from before it asked. APIConfirmer
// asks the member's API.
type Confirmer interface {
	ConfirmWritable(ctx context.Context, m cluster.MemberInfo) (time.Duration, error)
}

// Balancing strategies for the read-only listener.
const (
	BalanceRoundRobin       = "round-robin"
	BalanceLeastConnections = "least-connections"
)

// Defaults for zero Options fields.
const (
	DefaultTTL         = 4 * time.Second // the cluster's default ttl
	DefaultHoldTimeout = 30 * time.Second
	DefaultDialTimeout = 3 * time.Second
	// DefaultStartupTimeout bounds how long a backend may take to answer a
	// client's first bytes: PostgreSQL answers an SSLRequest or a startup
	// packet within milliseconds; a postmaster that is frozen (SIGSTOP, a
	// hung system call) accepts TCP connections into its queue and never
	// answers them.
	DefaultStartupTimeout = 2 * time.Second
	DefaultMaxReplicaLag  = 1 << 20 // as maximum_lag_on_failover
)

// Timing of held read-write connections.
const (
	// HeldPoll is how often the proxy re-reads the store while a
	// read-write connection is held and the source is no RoleWatcher (or
	// its role watch ended): the status change that makes a new primary
	// routable signals nothing else.
	HeldPoll = 100 * time.Millisecond
	// dialRetryMin and dialRetryMax bound the pause before a held
	// connection dials again a primary that did not accept a connection
	// while the view still names it; the pause doubles from one to the
	// other.
	dialRetryMin = 20 * time.Millisecond
	dialRetryMax = 500 * time.Millisecond
)

// Asking the primary for a Grant while the view ages.
const (
	// ConfirmInterval is how often the proxy asks the primary the view
	// names whether it may still accept writes, while the view is at least
	// half a TTL old or the last read of the store failed.
	ConfirmInterval = 250 * time.Millisecond
	// confirmTimeout bounds one question; an answer that comes later is
	// worth less anyway, since the grant is counted from the question.
	confirmTimeout = time.Second
)

// UnresponsiveFactor times the TTL is UnresponsiveLimit: how long a held
// read-write connection keeps trying a primary the view keeps naming but
// that does not accept or answer connections. A primary that died or was
// cut off loses its lease within a TTL and its successor follows within a
// few loops, so the view stops naming it well within 2×TTL; one that the
// view still names after that is not being failed over (its agent still
// renews the lease: a frozen postmaster, a network cut between the proxy
// and it only), and the client is refused rather than left waiting.
const UnresponsiveFactor = 2

// DefaultLoops is the default number of event loops: one per two cores
// the Go runtime may use (GOMAXPROCS), at least one. A loop waiting in
// epoll_wait keeps its P (the runtime's right to run Go code) until the
// runtime takes it back; with a loop per P there is no P to spare, and a
// loop returning with data to copy then waits for one. One loop serves
// tens of thousands of queries a second; on a 2-core machine shared with
// pgbench and PostgreSQL, one loop gave more throughput than two, at less
// CPU per query.
func DefaultLoops() int { return max(1, runtime.GOMAXPROCS(0)/2) }

// Options configure a Proxy.
type Options struct {
	// RWListen and ROListen are the TCP addresses of the read-write and
	// read-only listeners ("127.0.0.1:5000"; port 0 picks a free port).
	// An empty address disables that listener; at least one is required.
	RWListen, ROListen string
	// Source provides the cluster views. Required.
	Source ViewSource
	// TTL is the cluster's leader lease TTL (default DefaultTTL). It must
	// not exceed the cluster's: a view this old is stale, because a leader
	// could have lost its lease and been replaced since it was read. The
	// view is refreshed every TTL/4.
	TTL time.Duration
	// MaxReplicaLag is the most bytes of WAL a replica's replay may be
	// behind the primary and still get read-only connections
	// (0 = DefaultMaxReplicaLag; negative is invalid).
	MaxReplicaLag int64
	// ROFallbackToPrimary sends read-only connections to the primary when
	// no replica qualifies; otherwise they are refused.
	ROFallbackToPrimary bool
	// Balance is BalanceRoundRobin (default) or BalanceLeastConnections.
	Balance string
	// HoldTimeout bounds how long a new read-write connection is held
	// waiting for a primary (default DefaultHoldTimeout).
	HoldTimeout time.Duration
	// DialTimeout bounds connecting to a backend (default DefaultDialTimeout).
	DialTimeout time.Duration
	// StartupTimeout bounds how long a backend may take to answer the
	// client's first bytes (default DefaultStartupTimeout). A backend that
	// does not answer in time is treated like one that refused the
	// connection; a client that sends nothing waits as long as the backend
	// lets it.
	StartupTimeout time.Duration
	// Confirm asks the primary whether it may still accept writes while the
	// view ages (nil: APIConfirmer with default client options).
	Confirm Confirmer
	// Loops is the number of event loops that copy the bytes of routed
	// connections (0 = DefaultLoops()). Each is one goroutine waiting on
	// its own epoll instance, so it uses at most one core; connections are
	// spread across them round-robin. Negative is invalid. Session mode
	// has as many event loops of its own for its steady sessions
	// (protoloop.go).
	Loops int

	// SessionLoopOff keeps session mode's sessions on their goroutines
	// (holdfast proxy --session-loop=false) instead of handing steady ones
	// to event loops (protoloop.go): the path every hand-back returns to,
	// alone. About twice the CPU per transaction; it exists to take the
	// loops out of the path without a new build should they misbehave.
	SessionLoopOff bool
	// Logger receives the proxy's logs (default: discarded).
	Logger *slog.Logger
	// Mode is how read-write connections are served: ModePassThrough
	// ("" means it) passes bytes unparsed; ModeSession terminates the
	// PostgreSQL protocol, authenticates clients and moves their sessions
	// to a new primary (see protosession.go); read-only sessions then
	// run on a member of the read-only pool and move off it when it
	// leaves the pool (protoplace.go).
	Mode string
	// Session configures ModeSession (ignored otherwise).
	Session SessionOptions
	// Registry receives the proxy's metrics. Nil: the proxy's own registry,
	// served by Handler. If it is also a prometheus.Gatherer (such as
	// *prometheus.Registry) Handler serves it; otherwise the caller
	// exposes it.
	Registry prometheus.Registerer
}

// Proxy routes client connections; see the package documentation. Create
// it with New, start it with Run.
type Proxy struct {
	o        Options
	log      *slog.Logger
	rw, ro   net.Listener
	m        *metrics
	gatherer prometheus.Gatherer
	dialer   net.Dialer
	loops    []*loop       // the data path, from Run until every session ended
	nextLoop atomic.Uint64 // round-robin over loops

	// Session mode's event loops (protoloop.go), from Run until every
	// session ended; none with Options.SessionLoopOff.
	sloops          []*sessLoop
	nextSLoop       atomic.Uint64
	sessLoopEntries atomic.Int64 // hand-overs of a session to a loop (tests)
	poolLoopTakes   atomic.Int64 // pooled connections a loop took for a session's transaction (tests)

	mu         sync.Mutex
	view       cluster.View
	viewAt     time.Time // start of the last successful Load (monotonic)
	loaded     bool
	sessions   map[*session]struct{}
	perBackend map[string]int // sessions per backend name, for least-connections
	changed    chan struct{}  // closed (and replaced) whenever the routes are re-evaluated
	rr         uint64         // round-robin counter
	lastRW     string         // last logged read-write decision
	state      int            // stateNew, stateRunning, stateDone
	cancel     context.CancelFunc
	conns      sync.WaitGroup // connection goroutines
	loadFailed bool
	warnedTTL  time.Duration // the cluster TTL last warned about
	confirmed  confirmation  // the primary's latest Grant
	holding    int           // read-write connections held now (not while dialing)

	heldStart chan struct{} // a connection began holding (capacity 1; wakes control)

	// Session mode (ModeSession) only; see protosession.go.
	sm        *sessionMetrics
	tls       sessionTLS
	auth      *authPool                  // the auth query on the primary (read-write sessions)
	authRO    *authPool                  // the auth query on the read-only member a session starts on
	protos    map[*protoSession]struct{} // guarded by mu
	cancelKey map[uint32]*protoSession   // the client's cancel key's process ID; guarded by mu
	pool      *connPool                  // transaction pooling (nil otherwise); see pool.go
}

const (
	stateNew = iota
	stateRunning
	stateDone
)

// New validates o, applies defaults, registers the metrics and binds the
// listeners, so a port conflict is reported here, before Run. Close (or
// Run's return) releases the listeners.
func New(o Options) (*Proxy, error) {
	if o.Source == nil {
		return nil, errors.New("new proxy: a view source is required")
	}
	if o.RWListen == "" && o.ROListen == "" {
		return nil, errors.New("new proxy: at least one of the read-write and read-only listen addresses is required")
	}
	if o.TTL < 0 || o.HoldTimeout < 0 || o.DialTimeout < 0 || o.StartupTimeout < 0 || o.MaxReplicaLag < 0 || o.Loops < 0 {
		return nil, errors.New("new proxy: TTL, HoldTimeout, DialTimeout, StartupTimeout, MaxReplicaLag and Loops must not be negative")
	}
	if o.StartupTimeout == 0 {
		o.StartupTimeout = DefaultStartupTimeout
	}
	if o.Confirm == nil {
		o.Confirm = &APIConfirmer{}
	}
	if o.Loops == 0 {
		o.Loops = DefaultLoops()
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.HoldTimeout == 0 {
		o.HoldTimeout = DefaultHoldTimeout
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.MaxReplicaLag == 0 {
		o.MaxReplicaLag = DefaultMaxReplicaLag
	}
	switch o.Balance {
	case "":
		o.Balance = BalanceRoundRobin
	case BalanceRoundRobin, BalanceLeastConnections:
	default:
		return nil, fmt.Errorf("new proxy: balance %q: want %q or %q", o.Balance, BalanceRoundRobin, BalanceLeastConnections)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if err := o.Session.poolDefaults(o.Mode == ModeSession); err != nil {
		return nil, fmt.Errorf("new proxy: %w", err)
	}
	var stls sessionTLS
	switch o.Mode {
	case "", ModePassThrough:
		o.Mode = ModePassThrough
	case ModeSession:
		if err := o.Session.setDefaults(o.Logger); err != nil {
			return nil, fmt.Errorf("new proxy: %w", err)
		}
		var err error
		if stls, err = o.Session.loadTLS(o.Logger); err != nil {
			return nil, fmt.Errorf("new proxy: %w", err)
		}
	default:
		return nil, fmt.Errorf("new proxy: mode %q: want %q or %q", o.Mode, ModePassThrough, ModeSession)
	}
	p := &Proxy{
		o:          o,
		log:        o.Logger,
		dialer:     net.Dialer{Timeout: o.DialTimeout},
		sessions:   map[*session]struct{}{},
		perBackend: map[string]int{},
		changed:    make(chan struct{}),
		heldStart:  make(chan struct{}, 1),
	}
	reg, own := o.Registry, false
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, own, p.gatherer = r, true, r
	} else if g, ok := reg.(prometheus.Gatherer); ok {
		p.gatherer = g
	}
	m, err := newMetrics(p, reg, own)
	if err != nil {
		return nil, fmt.Errorf("new proxy: %w", err)
	}
	p.m = m
	if o.Mode == ModeSession {
		if p.sm, err = newSessionMetrics(reg); err != nil {
			return nil, fmt.Errorf("new proxy: %w", err)
		}
		p.tls = stls
		p.auth = newAuthPool(o.Session, stls.server)
		p.authRO = newAuthPool(o.Session, stls.server)
		p.protos = map[*protoSession]struct{}{}
		p.cancelKey = map[uint32]*protoSession{}
		if o.Session.PoolMode == PoolTransaction {
			if p.pool, err = newConnPoolWithMetrics(p, o.Session, reg); err != nil {
				return nil, fmt.Errorf("new proxy: %w", err)
			}
		}
	}
	if o.RWListen != "" {
		if p.rw, err = net.Listen("tcp", o.RWListen); err != nil {
			return nil, fmt.Errorf("new proxy: listen for read-write connections: %w", err)
		}
	}
	if o.ROListen != "" {
		if p.ro, err = net.Listen("tcp", o.ROListen); err != nil {
			p.closeListeners()
			return nil, fmt.Errorf("new proxy: listen for read-only connections: %w", err)
		}
	}
	return p, nil
}

// RWAddr is the read-write listener's address ("" when disabled).
func (p *Proxy) RWAddr() string { return addrOf(p.rw) }

// ROAddr is the read-only listener's address ("" when disabled).
func (p *Proxy) ROAddr() string { return addrOf(p.ro) }

func addrOf(l net.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}

// Handler serves the proxy's metrics in the Prometheus text format (404 if
// Options.Registry is not a Gatherer).
func (p *Proxy) Handler() http.Handler {
	if p.gatherer == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(p.gatherer, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Run serves until ctx is cancelled or Close is called, then closes the
// listeners and every proxied connection and returns nil once all of them
// are gone. It may be called once.
//
// Until the first successful Load the view counts as stale: nothing is
// routed.
func (p *Proxy) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p.mu.Lock()
	if p.state != stateNew {
		p.mu.Unlock()
		return errors.New("run proxy: already run or closed")
	}
	// failed undoes what Run made before a loop could not be created.
	failed := func(err error) error {
		p.state = stateDone
		p.mu.Unlock()
		p.closeListeners()
		for _, l := range p.loops {
			l.release()
		}
		for _, l := range p.sloops {
			l.release()
		}
		return fmt.Errorf("run proxy: %w", err)
	}
	for range p.o.Loops {
		l, err := newLoop(p.m.bytesByIndex)
		if err != nil {
			return failed(err)
		}
		p.loops = append(p.loops, l)
	}
	if p.o.Mode == ModeSession && !p.o.SessionLoopOff {
		for range p.o.Loops {
			l, err := newSessLoop()
			if err != nil {
				return failed(err)
			}
			p.sloops = append(p.sloops, l)
		}
	}
	for _, l := range p.loops {
		l.start()
	}
	for _, l := range p.sloops {
		l.start()
	}
	p.state, p.cancel = stateRunning, cancel
	p.mu.Unlock()

	var accepters sync.WaitGroup
	for _, l := range []struct {
		l    net.Listener
		name string
	}{{p.rw, ListenerRW}, {p.ro, ListenerRO}} {
		if l.l != nil {
			accepters.Go(func() { p.accept(ctx, l.l, l.name) })
		}
	}
	var sweeper sync.WaitGroup
	if p.pool != nil {
		sweeper.Go(func() { p.pool.sweep(ctx) })
	}
	p.log.Info("proxy running", "rw", p.RWAddr(), "ro", p.ROAddr(), "ttl", p.o.TTL, "balance", p.o.Balance, "loops", p.o.Loops)
	if p.o.Mode == ModeSession {
		p.log.Info("session mode TLS", "clients", p.tls.policy.String(), "server_sslmode", p.tls.server.mode, "server_ca_file", p.tls.server.caFile)
	}
	p.control(ctx)

	p.mu.Lock()
	p.state = stateDone
	p.mu.Unlock()
	p.closeListeners()
	accepters.Wait()
	p.closeSessions(func(*session) bool { return true }, "proxy stopping")
	p.conns.Wait()
	sweeper.Wait()
	p.pool.closeAll()
	for _, l := range p.loops {
		l.stop()
	}
	for _, l := range p.sloops {
		l.stop()
	}
	if p.auth != nil {
		p.auth.close()
		p.authRO.close()
	}
	p.log.Info("proxy stopped")
	return nil
}

// sessLoop is the event loop a new session-mode session goes to when
// steady (round-robin), or nil when there is none.
func (p *Proxy) sessLoop() *sessLoop {
	if len(p.sloops) == 0 {
		return nil
	}
	return p.sloops[p.nextSLoop.Add(1)%uint64(len(p.sloops))]
}

// Close stops a running proxy (as cancelling Run's context does) or
// releases the listeners of one never run.
func (p *Proxy) Close() error {
	p.mu.Lock()
	cancel := p.cancel
	if p.state == stateNew {
		p.state = stateDone
	}
	p.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	p.closeListeners()
	return nil
}

func (p *Proxy) closeListeners() {
	for _, l := range []net.Listener{p.rw, p.ro} {
		if l != nil {
			_ = l.Close()
		}
	}
}

// loadResult is one finished Load.
type loadResult struct {
	view    cluster.View
	err     error
	started time.Time
}

// control keeps the view fresh and enforces the routes until ctx is done.
//
// It re-reads the store on every signal of the source's watch and role
// watch (see RoleWatcher), every TTL/4 (for replica lag, which signals
// nothing), and — while a read-write connection is held and no role watch
// runs — every HeldPoll.
//
// A Load runs in its own goroutine (one at a time) so a hanging store
// cannot delay enforcement: the timer that turns the view stale fires on
// time regardless. Triggers while a Load is in flight are merged into one
// more Load after it.
func (p *Proxy) control(ctx context.Context) {
	watch := p.o.Source.Watch(ctx)
	var roles <-chan struct{}
	if rw, ok := p.o.Source.(RoleWatcher); ok {
		roles = rw.WatchRoles(ctx)
	}
	interval := max(p.o.TTL/4, time.Millisecond)
	refresh := time.NewTicker(interval)
	defer refresh.Stop()
	stale := time.NewTimer(time.Hour)
	stale.Stop()
	defer stale.Stop()
	// poll runs only while connections are held without a role watch.
	poll := time.NewTimer(time.Hour)
	poll.Stop()
	defer poll.Stop()
	polling := false
	startPoll := func() {
		if roles == nil && !polling && p.heldNow() > 0 {
			polling = true
			poll.Reset(HeldPoll)
		}
	}

	confirm := time.NewTicker(ConfirmInterval)
	defer confirm.Stop()
	grants := make(chan grantResult, 1) // never more than one question in flight
	asking := false

	results := make(chan loadResult, 1) // never more than one Load in flight
	loading, again := false, false
	load := func() {
		if loading {
			again = true
			return
		}
		loading = true
		go func() {
			started := time.Now()
			lctx, cancel := context.WithTimeout(ctx, max(p.o.TTL/2, time.Millisecond))
			v, err := p.o.Source.Load(lctx)
			cancel()
			results <- loadResult{view: v, err: err, started: started}
		}()
	}
	load()
	for {
		select {
		case <-ctx.Done():
			if loading {
				<-results // the Load sees ctx done too
			}
			if asking {
				<-grants
			}
			return
		case <-confirm.C:
			if !asking {
				asking = p.ask(ctx, grants)
			}
			continue
		case g := <-grants:
			asking = false
			if !p.applyGrant(g) {
				continue
			}
		case _, ok := <-watch:
			if !ok {
				watch = nil
				p.log.Warn("store watch closed; following role changes by periodic reloads only", "interval", interval)
				continue
			}
			load()
			continue
		case _, ok := <-roles:
			if !ok {
				roles = nil
				p.log.Warn("store role watch closed; re-reading the store while connections are held", "interval", HeldPoll)
				startPoll()
				continue
			}
			load()
			continue
		case <-p.heldStart:
			startPoll()
			continue
		case <-poll.C:
			polling = false
			if roles == nil && p.heldNow() > 0 {
				load()
				startPoll()
			}
			continue
		case <-refresh.C:
			load()
			continue
		case r := <-results:
			loading = false
			p.apply(r)
			if again {
				again = false
				load()
			}
		case <-stale.C:
		}
		if until := p.enforce(); until > 0 {
			stale.Reset(until)
		}
	}
}

// heldNow is the number of read-write connections held now.
func (p *Proxy) heldNow() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.holding
}

// apply records a finished Load.
func (p *Proxy) apply(r loadResult) {
	if r.err != nil {
		p.mu.Lock()
		first := !p.loadFailed
		p.loadFailed = true
		age := time.Since(p.viewAt)
		loaded := p.loaded
		p.mu.Unlock()
		if first {
			if loaded {
				p.log.Warn("cannot read the store; keeping the last view until it is TTL old", "err", r.err, "view_age", age, "ttl", p.o.TTL)
			} else {
				p.log.Warn("cannot read the store; routing nothing until a first view is read", "err", r.err)
			}
		} else {
			p.log.Debug("cannot read the store", "err", r.err)
		}
		return
	}
	p.mu.Lock()
	recovered := p.loadFailed
	p.loadFailed = false
	p.view, p.viewAt, p.loaded = r.view, r.started, true
	var clusterTTL time.Duration
	if c := r.view.Config; c != nil && c.TTL > 0 && c.TTL < p.o.TTL && c.TTL != p.warnedTTL {
		clusterTTL, p.warnedTTL = c.TTL, c.TTL
	}
	p.mu.Unlock()
	if recovered {
		p.log.Info("store readable again", "revision", r.view.Revision)
	}
	if clusterTTL > 0 {
		// A view the proxy still trusts could then predate a failover by
		// more than the cluster allows.
		p.log.Warn("the proxy's TTL is longer than the cluster's: it would trust a view longer than a leader's lease lasts; configure the proxy with the cluster's ttl",
			"proxy_ttl", p.o.TTL, "cluster_ttl", clusterTTL)
	}
}

// routesLocked is the current routing decision. p.mu must be held.
func (p *Proxy) routesLocked(now time.Time) Routes {
	age := p.o.TTL // never loaded: stale
	if p.loaded {
		age = now.Sub(p.viewAt)
	}
	return Route(p.view, age, p.o.TTL, p.o.MaxReplicaLag, now, p.confirmed.at(now))
}

// routesAsOfLocked is the current routing decision, given r, the routes
// as a caller last saw them, and changed, the channel closed when they may
// be out of date (nil: r was never computed): r itself while changed is
// open, which spares a pooled transaction working the routes out again.
// p.mu must be held: enforce closes changed under it before it acts on new
// routes, so a connection registered under the same lock is either judged
// on the routes enforce acts on, or cut by it.
func (p *Proxy) routesAsOfLocked(r Routes, changed <-chan struct{}) Routes {
	if changed == nil {
		return p.routesLocked(time.Now())
	}
	select {
	case <-changed:
		return p.routesLocked(time.Now())
	default:
		return r
	}
}

// enforce re-evaluates the routes: closes every connection that lost its
// permission (a read-write — or fallback read-only — connection to a
// member that is no longer the writable primary), wakes held connections
// to look again, and returns how long until the view turns stale (0 if it
// is stale already, or was never loaded).
func (p *Proxy) enforce() time.Duration {
	now := time.Now()
	p.mu.Lock()
	r := p.routesLocked(now)
	var victims []*session
	for s := range p.sessions {
		if s.grant == grantPrimary && !s.fenced && !samePrimary(r.Primary, s.target) {
			s.fenced = true
			victims = append(victims, s)
		}
	}
	fencedProtos := p.fenceProtosLocked(r)
	close(p.changed)
	p.changed = make(chan struct{})
	var until time.Duration
	if p.loaded {
		until = p.viewAt.Add(p.o.TTL).Sub(now)
		if until <= 0 && r.Confirmed {
			until = p.confirmed.until.Sub(now) // the routes change when the grant ends
		}
	}
	decision := describeRW(r)
	changedRW := decision != p.lastRW
	p.lastRW = decision
	p.mu.Unlock()

	if changedRW {
		p.log.Info("read-write routing", "decision", decision)
	}
	if fencedProtos > 0 {
		p.log.Warn("cut protocol sessions' connections to a backend that is no longer the primary; the sessions move to the next one", "count", fencedProtos)
	}
	if len(victims) > 0 {
		why := "no writable primary: " + r.RWDetail
		if r.Primary != nil {
			why = "the primary is now " + r.Primary.Name
		}
		p.log.Warn("closing connections to a backend that is no longer the primary", "count", len(victims), "reason", why)
		for _, s := range victims {
			s.close()
		}
	}
	return max(until, 0)
}

func describeRW(r Routes) string {
	if r.RWAction == ActRoute && r.Confirmed {
		return "route to " + r.RW.Name + " at " + r.RW.Addr + " on its own word: the store is out of reach, and it confirms it may still accept writes"
	}
	if r.RWAction == ActRoute {
		return "route to " + r.RW.Name + " at " + r.RW.Addr
	}
	d := string(r.RWAction) + ": " + r.RWDetail
	if r.Primary != nil {
		d += "; existing connections stay on " + r.Primary.Name
	}
	return d
}

func samePrimary(p *Target, t Target) bool { return p != nil && *p == t }

// Status is the proxy's routing decision at this moment, for the CLI and
// tests.
type Status struct {
	Routes
	// Loaded reports whether a view was ever read.
	Loaded bool `json:"loaded"`
	// ViewAge is how long ago the last successful read began.
	ViewAge time.Duration `json:"view_age"`
	// Revision is the store revision of the view.
	Revision int64 `json:"revision"`
	// ROTargets is where new read-only connections go now: Routes.RO, or
	// the primary when no replica qualifies and ROFallbackToPrimary is set.
	ROTargets []Target `json:"ro_targets"`
	// ROFallback reports that ROTargets is the primary by fallback.
	ROFallback bool `json:"ro_fallback,omitempty"`
	// Connections counts the proxied connections per listener and backend.
	Connections map[string]map[string]int `json:"connections"`
}

// Status computes the current routing decision.
func (p *Proxy) Status() Status {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.routesLocked(now)
	st := Status{Routes: r, Loaded: p.loaded, Revision: p.view.Revision, Connections: map[string]map[string]int{}}
	if p.loaded {
		st.ViewAge = now.Sub(p.viewAt)
	}
	st.ROTargets, st.ROFallback = roTargets(r, p.o.ROFallbackToPrimary)
	for s := range p.sessions {
		if st.Connections[s.listener] == nil {
			st.Connections[s.listener] = map[string]int{}
		}
		st.Connections[s.listener][s.target.Name]++
	}
	for ps := range p.protos {
		if ps.bc != nil {
			l := ps.place.listener
			if st.Connections[l] == nil {
				st.Connections[l] = map[string]int{}
			}
			st.Connections[l][ps.bc.t.Name]++
		}
	}
	return st
}

// roTargets is where read-only connections go under r: the qualifying
// replicas, else the primary when fallback is allowed and a primary is
// routable now (never one that is being switched over).
func roTargets(r Routes, fallback bool) ([]Target, bool) {
	if len(r.RO) > 0 {
		return r.RO, false
	}
	if fallback && r.RWAction == ActRoute {
		return []Target{*r.RW}, true
	}
	return nil, false
}

type metricKey struct{ listener, backend string }

// snapshotForMetrics is the scrape-time state: connections per listener
// and backend, and the view's age.
func (p *Proxy) snapshotForMetrics() (map[metricKey]int, time.Duration, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	counts := map[metricKey]int{}
	for s := range p.sessions {
		counts[metricKey{s.listener, s.target.Name}]++
	}
	for ps := range p.protos {
		if ps.bc != nil {
			counts[metricKey{ps.place.listener, ps.bc.t.Name}]++
		}
	}
	return counts, time.Since(p.viewAt), p.loaded
}
