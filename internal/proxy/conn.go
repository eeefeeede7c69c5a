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
			switch {
			case p.o.Mode == ModeSession:
				p.serveSession(ctx, c, listener)
			case listener == ListenerRW:
				p.serveRW(ctx, c)
			default:
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
// view names it, and follows the view once it names another. A primary that
// accepts the TCP connection but does not answer the client's first bytes
// within StartupTimeout (a frozen postmaster) counts as one that refused
// it: the client's bytes are replayed to the next attempt. A primary the
// view keeps naming that has not taken the connection for
// UnresponsiveFactor×TTL is not being failed over: the client is refused
// (ReasonUnresponsive). Each connection holds on its own: none waits for
// another.
func (p *Proxy) serveRW(ctx context.Context, c net.Conn) {
	var timeout <-chan time.Time
	var failing Target         // the primary that does not take the connection
	var failingSince time.Time // when the first attempt on failing began
	retry := dialRetryMin      // the pause before the next attempt
	o := &opening{c: c}
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
			attempt := time.Now()
			limit := UnresponsiveFactor * p.o.TTL
			since := attempt
			if *r.RW == failing {
				since = failingSince
			}
			// No wait for the primary outlasts the limit: the client
			// hears by then.
			o.deadline = since.Add(limit)
			outcome, err := p.connect(ctx, o, ListenerRW, []Target{*r.RW}, grantPrimary)
			switch outcome {
			case connDone:
				return
			case connRevoked:
				continue // the primary changed while connecting: decide again
			}
			why = fmt.Sprintf("the primary %s did not take the connection: %v", r.RW.Name, err)
			if *r.RW != failing {
				failing, failingSince, retry = *r.RW, attempt, dialRetryMin
				p.log.Warn("the primary does not take connections; holding the client and trying again while the view names it",
					"backend", r.RW.Name, "addr", r.RW.Addr, "client", c.RemoteAddr().String(), "err", err)
			}
			if time.Since(failingSince) >= limit || o.overflow {
				if o.overflow {
					why += "; the client's first bytes are too many to replay to another attempt"
				} else {
					why += fmt.Sprintf(" for %s while the view names it: no failover is under way", limit)
				}
				p.log.Warn("refusing a read-write connection: the primary does not take connections", "backend", r.RW.Name,
					"client", c.RemoteAddr().String(), "reason", why)
				p.refuse(c, ListenerRW, ReasonUnresponsive, why)
				return
			}
			again = time.After(min(retry, time.Until(failingSince.Add(limit))))
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
	switch outcome, err := p.connect(ctx, &opening{c: c}, ListenerRO, targets, g); outcome {
	case connRevoked:
		p.refuse(c, ListenerRO, ReasonNoReplica, "the primary changed while connecting to it")
	case connDialFailed:
		p.refuse(c, ListenerRO, ReasonDialFailed, fmt.Sprintf("no backend took the connection (last: %v)", err))
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
	// connRevoked: a primary grant was revoked while connecting; c is open.
	connRevoked
	// connDialFailed: no target took the connection (refused it, or
	// accepted it and did not answer within StartupTimeout); c is open,
	// and the client's bytes so far are in the opening, to be replayed.
	connDialFailed
)

// connect dials the targets in order, passes the client's first bytes to
// each until one answers (startup), and pipes the client to it until either
// side closes. See connOutcome for what it leaves to the caller; err is the
// last target's failure with connDialFailed.
//
// Connecting under a primary grant is abandoned as soon as the target stops
// being Primary (a dead host's connect timeout must not delay a held
// client once another member is primary). The grant is re-checked under
// the same lock enforce uses, at the moment the session becomes visible to
// enforce: so a connection made just before a leader change is either
// seen and closed by enforce or refused here — none can slip through to a
// demoted primary.
func (p *Proxy) connect(ctx context.Context, o *opening, listener string, targets []Target, g grant) (connOutcome, error) {
	c := o.c
	var last error
	for _, t := range targets {
		if o.overflow {
			break // the client's first bytes cannot be replayed to another backend
		}
		bc, err := p.open(ctx, o, t, g)
		if err != nil {
			switch {
			case ctx.Err() == nil && errors.Is(err, errGrantRevoked):
				return connRevoked, nil
			case errors.Is(err, errClientGone):
				p.log.Debug("the client left before a backend answered", "listener", listener, "client", c.RemoteAddr().String(), "err", err)
				_ = c.Close()
				return connDone, nil
			}
			lvl := slog.LevelWarn
			if listener == ListenerRW {
				lvl = slog.LevelDebug // serveRW holds the client and says so
			}
			p.log.Log(ctx, lvl, "connect to backend", "listener", listener, "backend", t.Name, "addr", t.Addr, "err", err)
			last = err
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
			return connDone, nil
		case !valid:
			_ = bc.Close()
			p.log.Info("backend lost its primary grant while connecting; deciding again", "listener", listener, "backend", t.Name)
			return connRevoked, nil
		}
		p.m.routed.WithLabelValues(listener, t.Name).Inc()
		li := listenerIndex(listener)
		p.m.bytesByIndex[li][dirToBackend].Add(float64(o.toBackend))
		p.m.bytesByIndex[li][dirToClient].Add(float64(o.toClient))
		p.log.Debug("connection routed", "listener", listener, "client", c.RemoteAddr().String(), "backend", t.Name)
		p.pipe(s)
		p.mu.Lock()
		delete(p.sessions, s)
		if p.perBackend[t.Name]--; p.perBackend[t.Name] <= 0 {
			delete(p.perBackend, t.Name)
		}
		p.mu.Unlock()
		return connDone, nil
	}
	if last == nil {
		last = errors.New("the client's first bytes are too many to replay to another backend")
	}
	return connDialFailed, last
}

// errGrantRevoked ends connecting to a target that stopped being Primary.
var errGrantRevoked = errors.New("the backend stopped being the primary")

// open connects to t (within DialTimeout) and waits for it to answer the
// client (startup). Under a primary grant it is cancelled, with
// errGrantRevoked, once t stops being Primary.
func (p *Proxy) open(ctx context.Context, o *opening, t Target, g grant) (net.Conn, error) {
	dctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if g == grantPrimary {
		go p.watchGrant(dctx, cancel, t)
	}
	dialCtx := dctx
	if !o.deadline.IsZero() {
		var cancelDial context.CancelFunc
		dialCtx, cancelDial = context.WithDeadline(dctx, o.deadline)
		defer cancelDial()
	}
	bc, err := p.dialer.DialContext(dialCtx, "tcp", t.Addr)
	if err == nil {
		if err = p.startup(dctx, o, bc); err != nil {
			_ = bc.Close()
		}
	}
	if err != nil {
		if errors.Is(context.Cause(dctx), errGrantRevoked) {
			return nil, fmt.Errorf("connect to %s: %w", t.Addr, errGrantRevoked)
		}
		return nil, fmt.Errorf("connect to %s: %w", t.Addr, err)
	}
	return bc, nil
}

// watchGrant cancels ctx with errGrantRevoked once t stops being Primary;
// it returns when ctx is done.
func (p *Proxy) watchGrant(ctx context.Context, cancel context.CancelCauseFunc, t Target) {
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
		case <-ctx.Done():
			return
		}
	}
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
