package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/decide"
)

// Failsafe: while the consensus store has no quorum (or the primary cannot
// reach it), a primary that can reach every member keeps serving, because
// every member has promised it not to take the leader key for a TTL. It
// asks again every loop; a member that does not answer ends it (the
// primary fences on its usual deadline).
//
// The promise and the leader race are serialized by failsafeGate: a member
// either promised first (then its own AcquireLeader is refused until the
// promise lapses), or it was already leading or racing (then it refuses the
// promise and the primary fences). There is no interleaving in which both
// the old primary keeps serving and another member takes the key.

// failsafeGate is shared by the API goroutines (Promise) and the agent loop
// (setLeading, beginAcquire, promised).
type failsafeGate struct {
	mu         sync.Mutex
	self       string
	clock      func() time.Duration
	promisedTo string
	promisedAt time.Duration
	leading    bool // holds the leader key, runs a writable PostgreSQL, or is racing for the key
}

// Promise records that leader may keep serving without the store: this
// member will not take the leader key for ttl. It refuses when this member
// is itself leading or racing.
func (g *failsafeGate) Promise(leader string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if leader == g.self {
		return fmt.Errorf("%s cannot promise itself", leader)
	}
	if g.leading {
		return fmt.Errorf("%s is itself the primary or taking the leader key", g.self)
	}
	g.promisedTo, g.promisedAt = leader, g.clock()
	return nil
}

// setLeading records, once per loop, whether this member leads.
func (g *failsafeGate) setLeading(v bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.leading = v
}

// beginAcquire is called right before this member tries to take the leader
// key: it fails while a promise to another member lasts, else marks this
// member as racing so no promise is given meanwhile.
func (g *failsafeGate) beginAcquire(ttl time.Duration) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.promisedTo != "" && g.clock() < g.promisedAt+ttl {
		return fmt.Errorf("promised %s (failsafe) not to take the leader key until %s from now", g.promisedTo, (g.promisedAt + ttl - g.clock()).Round(time.Millisecond))
	}
	g.leading = true
	return nil
}

// promised returns the member this one promised, and when ("" if none).
func (g *failsafeGate) promised() (string, time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.promisedTo, g.promisedAt
}

// failsafeRound asks every other registered member (the last view's) to
// promise, in parallel, bounded by one loop interval. It returns the time
// taken before asking when all promised, 0 otherwise.
func (a *Agent) failsafeRound(ctx context.Context) time.Duration {
	var peers []cluster.MemberInfo
	for name, m := range a.view.Members {
		if name != a.o.Self.Name {
			peers = append(peers, m)
		}
	}
	if len(peers) == 0 {
		return 0
	}
	start := a.clock()
	c, cancel := context.WithTimeout(ctx, a.failsafeRoundTimeout())
	defer cancel()
	errs := make(chan error, len(peers))
	for _, m := range peers {
		go func() { errs <- a.peers.Failsafe(c, m, a.o.Self.Name) }()
	}
	ok := true
	for range peers {
		if err := <-errs; err != nil {
			ok = false
			a.log.Warn("failsafe: a member did not confirm this primary", "err", err)
		}
	}
	if !ok {
		return 0
	}
	return max(start, 1)
}

// maxFailsafeRound bounds one failsafe round (a loop interval if shorter).
const maxFailsafeRound = time.Second

// failsafeRoundTimeout is how long one failsafe round may take: a loop
// interval, at most maxFailsafeRound. The store calls before it end this
// long before the fence point (observeStoreContext), so the round renews
// the promises in time.
func (a *Agent) failsafeRoundTimeout() time.Duration {
	return min(a.settings().LoopInterval, maxFailsafeRound)
}

// failsafeObservation fills the failsafe part of an observation, asking the
// members for their promise when ask is set.
func (a *Agent) failsafeObservation(ctx context.Context, ask bool) decide.Failsafe {
	var f decide.Failsafe
	f.PromisedTo, f.PromisedAt = a.failsafe.promised()
	if ask {
		f.AllConfirmedAt = a.failsafeRound(ctx)
	}
	return f
}

// Peers reaches the other members' APIs for the failsafe round. Called
// from the round's goroutines, one per member, at once.
type Peers interface {
	// Failsafe asks member m to promise leader (this member) not to take
	// the leader key for a TTL (POST /failsafe); nil when it promised.
	Failsafe(ctx context.Context, m cluster.MemberInfo, leader string) error
}

// httpPeers is the Peers of a real member: the members' REST APIs.
type httpPeers struct{ o api.ClientOptions }

func (p httpPeers) Failsafe(ctx context.Context, m cluster.MemberInfo, leader string) error {
	if m.APIURL == "" {
		return fmt.Errorf("failsafe: %s has no API address", m.Name)
	}
	cl, err := api.NewClient(m.APIURL, p.o)
	if err != nil {
		return fmt.Errorf("failsafe: ask %s: %w", m.Name, err)
	}
	defer cl.Close()
	return cl.Failsafe(ctx, leader)
}
