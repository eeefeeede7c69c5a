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

// failsafePeers lists every other registered member (the last view's): the
// members a failsafe round asks.
func (a *Agent) failsafePeers() []cluster.MemberInfo {
	var peers []cluster.MemberInfo
	for name, m := range a.view.Members {
		if name != a.o.Self.Name {
			peers = append(peers, m)
		}
	}
	return peers
}

// failsafeRound asks peers to promise, in parallel, bounded by one loop
// interval. It returns the time taken before asking when all promised, 0
// otherwise. It reads nothing of the agent the loop writes meanwhile
// (failsafeObservation renews the lease beside it).
func (a *Agent) failsafeRound(ctx context.Context, peers []cluster.MemberInfo, timeout time.Duration) time.Duration {
	if len(peers) == 0 {
		return 0
	}
	start := a.clock()
	c, cancel := context.WithTimeout(ctx, timeout)
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
//
// With renew set (this loop could not reach the store), the lease renewal
// is tried again while the round runs, until the fence point at the
// latest. A store whose raft leader froze or was cut off (a replica's
// agent SIGSTOPped with its embedded etcd member) has no leader until the
// others elect one, an election timeout or more later: often after this
// loop's renewal gave up, and while the round still waits for the frozen
// member, which ends at the fence point. The primary then fenced though
// the store was back; a renewal made during the round keeps it serving.
func (a *Agent) failsafeObservation(ctx context.Context, ask, renew bool) decide.Failsafe {
	var f decide.Failsafe
	f.PromisedTo, f.PromisedAt = a.failsafe.promised()
	if !ask {
		return f
	}
	peers, timeout := a.failsafePeers(), a.failsafeRoundTimeout()
	if !renew || !a.lease.Held {
		f.AllConfirmedAt = a.failsafeRound(ctx, peers, timeout)
		return f
	}
	// The renewal may take until the fence point, as the round may.
	left := min(a.untilFencePoint(a.settings()), timeout)
	round := make(chan time.Duration, 1)
	go func() { round <- a.failsafeRound(ctx, peers, timeout) }()
	if left <= 0 {
		f.AllConfirmedAt = <-round
		return f
	}
	c, cancel := context.WithTimeout(ctx, left)
	defer cancel()
	// The loop waits for both; only the renewal touches the agent's lease
	// meanwhile.
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		a.renewLeaseWithin(c)
	}()
	f.AllConfirmedAt = <-round
	if f.AllConfirmedAt > 0 {
		// Every member promised: the primary serves under the failsafe,
		// and a renewal still waiting for the store must not hold the
		// loop (its fence point would be published late).
		cancel()
	}
	<-renewed
	return f
}

// Peers reaches the other members' APIs for the failsafe round. Called
// from the round's goroutines, one per member, at once.
type Peers interface {
	// Failsafe asks member m to promise leader (this member) not to take
	// the leader key for a TTL (POST /failsafe); nil when it promised.
	Failsafe(ctx context.Context, m cluster.MemberInfo, leader string) error
}

// httpPeers is the Peers of a real member: the members' REST APIs. It
// keeps one client per member API across rounds, so a round is one request
// on a kept-alive connection. A new client per round cost a DNS lookup, a
// TCP connect and a TLS handshake (and reading the TLS files) inside the
// round's second, which a loaded machine did not always fit: the primary
// fenced although every member would have promised. A member whose request
// fails loses its idle connections, so the next round dials it afresh (it
// may have moved to another address).
type httpPeers struct {
	o       api.ClientOptions
	mu      sync.Mutex
	clients map[string]*api.Client // by API URL
}

func newHTTPPeers(o api.ClientOptions) *httpPeers {
	return &httpPeers{o: o, clients: map[string]*api.Client{}}
}

func (p *httpPeers) client(url string) (*api.Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cl, ok := p.clients[url]; ok {
		return cl, nil
	}
	cl, err := api.NewClient(url, p.o)
	if err != nil {
		return nil, err
	}
	p.clients[url] = cl
	return cl, nil
}

func (p *httpPeers) Failsafe(ctx context.Context, m cluster.MemberInfo, leader string) error {
	if m.APIURL == "" {
		return fmt.Errorf("failsafe: %s has no API address", m.Name)
	}
	cl, err := p.client(m.APIURL)
	if err != nil {
		return fmt.Errorf("failsafe: ask %s: %w", m.Name, err)
	}
	if err := cl.Failsafe(ctx, leader); err != nil {
		cl.Close()
		return err
	}
	return nil
}
