package proxy

import (
	"context"
	"slices"
	"time"
)

// placement says which members a session-mode session may run on: the
// primary (a session of the read-write listener) or a member of the
// read-only pool (a session of the read-only listener: a qualifying
// replica, or the primary by fallback). The session loop (protosession.go)
// is the same for both; it asks its placement three questions, each of
// them pure on one routing decision:
//
//   - stays: may a server connection to a member go on at all? A
//     connection that may not is cut at once (fail closed), even in the
//     middle of a transaction.
//   - home: is the member where the session belongs now? A session that
//     is not at home leaves its server at its next boundary and moves.
//   - targets: where may a new server connection go now?
//
// The guard: a read-write session must never run on a member that is not
// the primary (stays), and a read-only session must not stay on a member
// that left the read-only pool — stopped, promoted (its sessions would
// otherwise become read-write ones at the next transaction), lagging
// beyond MaxReplicaLag, tagged noloadbalance, gone from the store — once
// it can move without the client noticing (home).
// roSetting is the setting a read-only session logs in with, "on": a
// replica promoted under the session, or the primary it was sent to by
// fallback, does not take its writes (SQLSTATE 25006, as a replica
// answers them).
const roSetting = "default_transaction_read_only"

type placement struct {
	listener string // ListenerRW or ListenerRO
	fallback bool   // read-only: the primary when no replica qualifies (Options.ROFallbackToPrimary)
}

func (pl placement) readOnly() bool { return pl.listener == ListenerRO }

// stays reports whether a server connection to t (onFallback: see home)
// may go on under r. A read-write one, and a read-only one made to the
// primary by fallback, only while t is r.Primary: a member that is no
// longer the primary may be a deposed one, cut off and out of date, as
// for pass-through connections. A read-only one to a replica always: a
// read-only session logs in with default_transaction_read_only=on, so it
// writes nothing even on a member promoted under it, and a cut would
// fail the query it is running for nothing (a lag spike); a member that
// stops ends its connections itself, and the session moves on.
func (pl placement) stays(r Routes, t Target, onFallback bool) bool {
	if pl.readOnly() && !onFallback {
		return true
	}
	return samePrimary(r.Primary, t)
}

// home reports whether t is where the session belongs under r. onFallback:
// the connection was made to the primary by fallback (read-only only). A
// read-only session belongs on a replica of the pool while there is one,
// and on the primary by fallback only while no replica qualifies: a
// session on the primary by fallback moves to a replica once one
// qualifies again, and one on a replica moves off it once it leaves the
// pool — also when it was promoted and is now the fallback target itself.
func (pl placement) home(r Routes, t Target, onFallback bool) bool {
	if !pl.readOnly() {
		return routedTo(r, t)
	}
	ts, fb := roTargets(r, pl.fallback)
	return fb == onFallback && slices.Contains(ts, t)
}

// leaves reports whether a session on t (onFallback: see home) leaves it
// at its next boundary under r. A read-write session leaves a member that
// is not home (a switchover is due: the old primary must be able to
// stop). A read-only one leaves a member that is not home only when it
// has somewhere to go, or when the member was promoted: a session on a
// replica that lagged out of the pool, with no other member to take it
// (or a stale view), is served better by that replica than by holding
// its next request.
func (pl placement) leaves(r Routes, t Target, onFallback bool) bool {
	if pl.home(r, t, onFallback) {
		return false
	}
	if !pl.readOnly() {
		return true
	}
	ts, _ := pl.targets(r)
	return len(ts) > 0 || (!onFallback && samePrimary(r.Primary, t))
}

// targets is where a new server connection of the session may go under r
// (unordered; Proxy.pick orders them), and whether that is the primary by
// fallback.
func (pl placement) targets(r Routes) ([]Target, bool) {
	if !pl.readOnly() {
		if r.RWAction == ActRoute && r.RW != nil {
			return []Target{*r.RW}, false
		}
		return nil, false
	}
	return roTargets(r, pl.fallback)
}

// why is the routes' explanation of why there is no target ("" when there
// is one).
func (pl placement) why(r Routes) string {
	if !pl.readOnly() {
		return r.RWReason + ": " + r.RWDetail
	}
	if ts, _ := pl.targets(r); len(ts) > 0 {
		return ""
	}
	if r.RWAction != ActRoute && pl.fallback {
		return r.ROReason + ": " + r.RODetail + "; no primary to fall back to (" + r.RWDetail + ")"
	}
	return r.ROReason + ": " + r.RODetail
}

// server names, in messages to the client and logs, the kind of member
// the session runs on.
func (pl placement) server() string {
	if pl.readOnly() {
		return "read-only server"
	}
	return "primary"
}

// pick is where the session's next server connection goes under r: the
// first of pl.targets in balancing order (read-only: round-robin or
// least-connections, as for pass-through connections), nil when there is
// none.
func (p *Proxy) pick(pl placement, r Routes) *Target {
	ts, _ := pl.targets(r)
	if len(ts) == 0 {
		return nil
	}
	if len(ts) > 1 {
		p.mu.Lock()
		ts = p.orderLocked(ts)
		p.mu.Unlock()
	}
	return &ts[0]
}

// awaitTarget waits until the routes name a member pl may connect to, or
// until deadline: it returns one (see pick), or nil and why there is
// none. A refusing route (a stale view, no replica) is waited out as
// well: it may pass within the hold.
func (p *Proxy) awaitTarget(ctx context.Context, pl placement, deadline time.Time) (*Target, string) {
	held := false
	defer func() {
		if held {
			p.addHolding(-1)
		}
	}()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		p.mu.Lock()
		r := p.routesLocked(time.Now())
		changed := p.changed
		p.mu.Unlock()
		if t := p.pick(pl, r); t != nil {
			return t, ""
		}
		if !held {
			held = true
			p.addHolding(1)
			if !pl.readOnly() {
				p.m.held.Inc()
			}
		}
		select {
		case <-changed:
		case <-timer.C:
			return nil, "none within the hold timeout " + p.o.HoldTimeout.String() + " (" + pl.why(r) + ")"
		case <-ctx.Done():
			return nil, "the proxy is stopping"
		}
	}
}

// watchPool cancels ctx with errGrantRevoked once t is no longer a member
// a read-only session may connect to (a login under way to a member that
// left the read-only pool is abandoned); it returns when ctx is done.
// Read-write logins use watchGrant.
func (p *Proxy) watchPool(ctx context.Context, cancel context.CancelCauseFunc, pl placement, t Target) {
	for {
		p.mu.Lock()
		ts, _ := pl.targets(p.routesLocked(time.Now()))
		changed := p.changed
		p.mu.Unlock()
		if !slices.Contains(ts, t) {
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
