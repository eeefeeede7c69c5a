package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"syscall"
	"time"
)

// grant is the permission a connection was routed under; it decides when
// the connection must be cut.
type grant int

const (
	// grantPrimary: routed because the backend was the writable primary
	// (every read-write connection, and read-only ones sent to the primary
	// by fallback). Closed as soon as the backend is no longer Primary —
	// including when the view turns stale.
	grantPrimary grant = iota
	// grantReplica: routed to a qualifying replica. Kept when the replica
	// later drops out of the read-only set (lag, not streaming, gone from
	// the view): a lag spike should not turn into client errors, a replica
	// that stops or is promoted closes or keeps its sessions itself, and a
	// dead host's connections are reaped by TCP keepalive. Only new
	// connections avoid it.
	grantReplica
)

// session is one proxied client connection and its backend connection.
//
// It lives in three phases: phaseConns while the proxy holds the two
// net.Conns (from routing until the data path takes them), phaseLoop once
// an event loop owns the sockets (loop.add), phaseClosed at the end.
type session struct {
	listener string
	target   Target
	grant    grant
	client   net.Conn
	backend  net.Conn
	fenced   bool          // guarded by Proxy.mu: close already ordered by enforce
	ended    chan struct{} // closed once the session is over and its sockets closed

	mu    sync.Mutex
	phase int // phaseConns, phaseLoop, phaseClosed
	loop  *loop

	// The data path's state, set by loop.add and then used by the loop
	// goroutine only.
	ends                [2]*end // client, backend
	toBackend, toClient flow
}

// Session phases.
const (
	phaseConns = iota
	phaseLoop
	phaseClosed
)

func newSession(listener string, t Target, g grant, client, backend net.Conn) *session {
	return &session{listener: listener, target: t, grant: g, client: client, backend: backend, ended: make(chan struct{})}
}

// close ends the session; safe to call more than once and from any
// goroutine. Once the data path owns the sockets, both are shut down at
// once (each peer sees the connection end, and no further byte passes in
// either direction), and their loop closes them.
func (s *session) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.phase {
	case phaseConns:
		s.closeConnsLocked()
	case phaseLoop:
		for _, e := range s.ends {
			_ = syscall.Shutdown(e.fd, syscall.SHUT_RDWR)
		}
		s.loop.requestClose(s)
	}
}

// closeConnsLocked ends a session not handed to a loop: closes its
// net.Conns and signals its end. s.mu must be held.
func (s *session) closeConnsLocked() {
	_ = s.client.Close()
	_ = s.backend.Close()
	s.phase = phaseClosed
	close(s.ended)
}

// accept takes connections from l until it is closed.
func (p *Proxy) accept(ctx context.Context, l net.Listener, listener string) {
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			// Out of file descriptors and the like: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			p.log.Warn("accept connection", "listener", listener, "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return
			}
			continue
		}
		delay = 0
		p.mu.Lock()
		if p.state != stateRunning {
			p.mu.Unlock()
			p.refuse(c, listener, ReasonShuttingDown, "the proxy is stopping")
			continue
		}
		p.conns.Add(1)
		p.mu.Unlock()
		go func() {
			defer p.conns.Done()
			if listener == ListenerRW {
				p.serveRW(ctx, c)
			} else {
				p.serveRO(ctx, c)
			}
		}()
	}
}

// serveRW routes one read-write connection: to the primary, or held until
// there is one it can reach (at most HoldTimeout), or refused.
//
// A held connection is accepted at the TCP level but nothing is dialed:
// whatever the client sends (startup packet, SSLRequest) waits in the
// socket buffer and is passed to the new primary once it is known, so the
// client sees a slow connect rather than an error. A connection is held
// while Route says so (a switchover is due, no leader, the leader not yet
// writable) and also while the primary the view names does not accept
// connections (its PostgreSQL or host died and its lease has not expired
// yet): then it dials that primary again, with backoff, for as long as the
// view names it, and follows the view once it names another. Each
// connection holds on its own: none waits for another.
func (p *Proxy) serveRW(ctx context.Context, c net.Conn) {
	var timeout <-chan time.Time
	var failing Target // the primary whose dials fail, and the pause before the next
	retry := dialRetryMin
	held := false // counted in p.holding
	setHeld := func(h bool) {
		if h == held {
			return
		}
		held = h
		p.mu.Lock()
		if h {
			p.holding++
		} else {
			p.holding--
		}
		p.mu.Unlock()
		if h {
			select {
			case p.heldStart <- struct{}{}:
			default:
			}
		}
	}
	defer setHeld(false)
	for {
		p.mu.Lock()
		r := p.routesLocked(time.Now())
		changed := p.changed
		p.mu.Unlock()
		why := r.RWDetail
		var again <-chan time.Time
		switch r.RWAction {
		case ActRoute:
			setHeld(false)
			switch p.connect(ctx, c, ListenerRW, []Target{*r.RW}, grantPrimary) {
			case connDone:
				return
			case connRevoked:
				continue // the primary changed while dialing: decide again
			}
			why = "the primary " + r.RW.Name + " did not accept the connection"
			if *r.RW != failing {
				failing, retry = *r.RW, dialRetryMin
				p.log.Warn("the primary does not accept connections; holding the client and dialing again while the view names it",
					"backend", r.RW.Name, "addr", r.RW.Addr, "client", c.RemoteAddr().String())
			}
			again = time.After(retry)
			retry = min(2*retry, dialRetryMax)
		case ActRefuse:
			p.refuse(c, ListenerRW, r.RWReason, r.RWDetail)
			return
		}
		if timeout == nil {
			p.m.held.Inc()
			t := time.NewTimer(p.o.HoldTimeout)
			defer t.Stop()
			timeout = t.C
			p.log.Debug("holding read-write connection", "client", c.RemoteAddr().String(), "reason", why)
		}
		setHeld(true)
		select {
		case <-changed:
		case <-again:
		case <-timeout:
			p.refuse(c, ListenerRW, ReasonHoldTimeout, "no primary within the hold timeout: "+why)
			return
		case <-ctx.Done():
			p.refuse(c, ListenerRW, ReasonShuttingDown, "the proxy is stopping")
			return
		}
	}
}

// serveRO routes one read-only connection to a qualifying replica (trying
// the others in balancing order if the first does not answer), or to the
// primary by fallback, or refuses it.
func (p *Proxy) serveRO(ctx context.Context, c net.Conn) {
	p.mu.Lock()
	r := p.routesLocked(time.Now())
	targets, fallback := roTargets(r, p.o.ROFallbackToPrimary)
	targets = p.orderLocked(targets)
	p.mu.Unlock()
	if len(targets) == 0 {
		p.refuse(c, ListenerRO, r.ROReason, r.RODetail)
		return
	}
	g := grantReplica
	if fallback {
		g = grantPrimary
	}
	switch p.connect(ctx, c, ListenerRO, targets, g) {
	case connRevoked:
		p.refuse(c, ListenerRO, ReasonNoReplica, "the primary changed while connecting to it")
	case connDialFailed:
		p.refuse(c, ListenerRO, ReasonDialFailed, "no backend accepted the connection")
	}
}

// orderLocked orders targets for balancing: rotated by the round-robin
// counter (so equal choices alternate) and, for least-connections, then
// sorted by current connection count. p.mu must be held.
func (p *Proxy) orderLocked(targets []Target) []Target {
	n := len(targets)
	if n == 0 {
		return nil
	}
	start := int(p.rr % uint64(n))
	p.rr++
	out := make([]Target, 0, n)
	out = append(out, targets[start:]...)
	out = append(out, targets[:start]...)
	if p.o.Balance == BalanceLeastConnections {
		sort.SliceStable(out, func(i, j int) bool { return p.perBackend[out[i].Name] < p.perBackend[out[j].Name] })
	}
	return out
}

// What connect did with a client connection.
type connOutcome int

const (
	// connDone: c was consumed (piped until the session ended, or refused
	// because the proxy is stopping).
	connDone connOutcome = iota
	// connRevoked: a primary grant was revoked while dialing; c is open.
	connRevoked
	// connDialFailed: no target accepted a connection; c is open.
	connDialFailed
)

// connect dials the targets in order and pipes c to the first that
// answers, until either side closes. See connOutcome for what it leaves
// to the caller.
//
// A dial under a primary grant is abandoned as soon as the target stops
// being Primary (a dead host's connect timeout must not delay a held
// client once another member is primary). The grant is re-checked under
// the same lock enforce uses, at the moment the session becomes visible to
// enforce: so a connection dialed just before a leader change is either
// seen and closed by enforce or refused here — none can slip through to a
// demoted primary.
func (p *Proxy) connect(ctx context.Context, c net.Conn, listener string, targets []Target, g grant) connOutcome {
	for _, t := range targets {
		bc, err := p.dial(ctx, t, g)
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, errGrantRevoked) {
				return connRevoked
			}
			lvl := slog.LevelWarn
			if listener == ListenerRW {
				lvl = slog.LevelDebug // serveRW holds the client and says so
			}
			p.log.Log(ctx, lvl, "connect to backend", "listener", listener, "backend", t.Name, "addr", t.Addr, "err", err)
			continue
		}
		s := newSession(listener, t, g, c, bc)
		p.mu.Lock()
		running := p.state == stateRunning
		valid := g != grantPrimary || samePrimary(p.routesLocked(time.Now()).Primary, t)
		if running && valid {
			p.sessions[s] = struct{}{}
			p.perBackend[t.Name]++
		}
		p.mu.Unlock()
		switch {
		case !running:
			_ = bc.Close()
			p.refuse(c, listener, ReasonShuttingDown, "the proxy is stopping")
			return connDone
		case !valid:
			_ = bc.Close()
			p.log.Info("backend lost its primary grant while connecting; deciding again", "listener", listener, "backend", t.Name)
			return connRevoked
		}
		p.m.routed.WithLabelValues(listener, t.Name).Inc()
		p.log.Debug("connection routed", "listener", listener, "client", c.RemoteAddr().String(), "backend", t.Name)
		p.pipe(s)
		p.mu.Lock()
		delete(p.sessions, s)
		if p.perBackend[t.Name]--; p.perBackend[t.Name] <= 0 {
			delete(p.perBackend, t.Name)
		}
		p.mu.Unlock()
		return connDone
	}
	return connDialFailed
}

// errGrantRevoked ends a dial whose target stopped being Primary.
var errGrantRevoked = errors.New("the backend stopped being the primary")

// dial connects to t (within DialTimeout). Under a primary grant the dial
// is cancelled, with errGrantRevoked, once t stops being Primary.
func (p *Proxy) dial(ctx context.Context, t Target, g grant) (net.Conn, error) {
	if g != grantPrimary {
		return p.dialer.DialContext(ctx, "tcp", t.Addr)
	}
	dctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		for {
			p.mu.Lock()
			still := samePrimary(p.routesLocked(time.Now()).Primary, t)
			changed := p.changed
			p.mu.Unlock()
			if !still {
				cancel(errGrantRevoked)
				return
			}
			select {
			case <-changed:
			case <-dctx.Done():
				return
			}
		}
	}()
	bc, err := p.dialer.DialContext(dctx, "tcp", t.Addr)
	if err != nil && errors.Is(context.Cause(dctx), errGrantRevoked) {
		return nil, fmt.Errorf("dial %s: %w", t.Addr, errGrantRevoked)
	}
	return bc, err
}

// refuse closes a client connection without routing it.
func (p *Proxy) refuse(c net.Conn, listener, reason, detail string) {
	p.m.refused.WithLabelValues(listener, reason).Inc()
	p.log.Debug("connection refused", "listener", listener, "client", c.RemoteAddr().String(), "reason", reason, "detail", detail)
	_ = c.Close()
}

// closeSessions closes every session pred selects.
func (p *Proxy) closeSessions(pred func(*session) bool, why string) {
	p.mu.Lock()
	var victims []*session
	for s := range p.sessions {
		if pred(s) {
			s.fenced = true
			victims = append(victims, s)
		}
	}
	p.mu.Unlock()
	if len(victims) > 0 {
		p.log.Info("closing connections", "count", len(victims), "reason", why)
	}
	for _, s := range victims {
		s.close()
	}
}

// pipe passes bytes both ways until both directions have ended or either
// failed, or the session is closed: it hands the session to one of the
// proxy's event loops (round-robin) and waits for its end. An orderly end
// of one direction (EOF) is passed on as a half-close, as a plain TCP
// connection would behave; an error ends both. See loop.go.
func (p *Proxy) pipe(s *session) {
	l := p.loops[p.nextLoop.Add(1)%uint64(len(p.loops))]
	if err := l.add(s); err != nil {
		if !errors.Is(err, errSessionClosed) {
			p.log.Warn("hand connection to the data path", "listener", s.listener, "backend", s.target.Name, "err", err)
		}
	}
	<-s.ended
}
