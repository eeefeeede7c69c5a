package agenttest

import (
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// StoreCluster is one in-memory consensus store shared by the members'
// Store handles: keys under one revision counter, leases that expire on
// the manual clock and delete the keys bound to them, compare-and-swap as
// the etcd adapter does it (internal/store.Etcd).
type StoreCluster struct {
	mu    sync.Mutex
	clock *Clock
	ttl   time.Duration

	rev       int64
	nextLease int64
	leases    map[int64]time.Duration // id -> expiry (clock time)
	down      bool
	upAt      time.Duration // while down: when it comes back by itself (0: never)
	cut       map[string]bool
	// hang: the members whose calls that fail for want of the store last
	// until their context's deadline (see SetHang).
	hang map[string]bool

	init        cluster.InitState
	initLease   int64
	leader      *cluster.Leader
	members     map[string]cluster.MemberInfo
	statuses    map[string]cluster.MemberStatus
	statusLease map[string]int64
	optime      *cluster.Optime
	history     []cluster.HistoryEntry
	config      *cluster.Config
	configRev   int64
	switchover  *cluster.Switchover
	sync        *cluster.SyncState
	watchers    map[chan struct{}]bool

	// OnRelease, when set before use, is called (store unlocked) after
	// member name released the leader key: tests check there that its
	// PostgreSQL no longer runs.
	OnRelease func(name string)
}

// NewStoreCluster returns an empty store whose leases live ttl.
func NewStoreCluster(clock *Clock, ttl time.Duration) *StoreCluster {
	return &StoreCluster{clock: clock, ttl: ttl, nextLease: 100, leases: map[int64]time.Duration{}, cut: map[string]bool{},
		members: map[string]cluster.MemberInfo{}, statuses: map[string]cluster.MemberStatus{}, statusLease: map[string]int64{},
		watchers: map[chan struct{}]bool{}}
}

// Member returns the handle member name uses (its own lease).
func (c *StoreCluster) Member(name string) *Store { return &Store{c: c, name: name} }

// SetDown makes the whole store lose its quorum (true): every call fails
// with store.ErrUnavailable and no lease expires meanwhile. When it comes
// back, every lease gets a full TTL from then on, as etcd's new raft
// leader grants.
func (c *StoreCluster) SetDown(down bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setDownLocked(down)
}

func (c *StoreCluster) setDownLocked(down bool) {
	if c.down && !down {
		now := c.clock.Now()
		for id := range c.leases {
			c.leases[id] = now + c.ttl
		}
	}
	c.down, c.upAt = down, 0
}

// SetDownUntil takes the store down now and brings it back by itself at
// clock time at, as etcd is after its raft leader froze: without a leader
// until the others elect one. A hanging call (SetHang) made meanwhile
// waits for the election if its context lasts that long, and then
// succeeds, as an etcd request waits for the new leader.
func (c *StoreCluster) SetDownUntil(at time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setDownLocked(true)
	c.upAt = at
}

// comeBackLocked ends a SetDownUntil outage whose time has come.
func (c *StoreCluster) comeBackLocked() {
	if c.down && c.upAt > 0 && c.clock.Now() >= c.upAt {
		c.setDownLocked(false)
	}
}

// SetHang makes member name's calls that fail for want of the store
// (SetDown, Cut) last until their context's deadline, as an etcd client's
// calls do without a quorum: the manual clock advances by the context's
// remaining time before the call fails. Off, they fail at once. The
// agents share the manual clock and step one at a time, so only the member
// under test should hang: the others' hangs would pass its time too.
func (c *StoreCluster) SetHang(name string, hang bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hang == nil {
		c.hang = map[string]bool{}
	}
	c.hang[name] = hang
}

// Cut makes member name's handle unable to reach the store (true) or
// reconnects it. Leases keep expiring meanwhile.
func (c *StoreCluster) Cut(name string, cut bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut[name] = cut
}

// View is what a Load would return now, for the test's own checks (no
// fault applies).
func (c *StoreCluster) View() cluster.View {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked()
	return c.viewLocked()
}

// LeaseExpiry returns when lease id expires (clock time), false when it
// is gone.
func (c *StoreCluster) LeaseExpiry(id int64) (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked()
	e, ok := c.leases[id]
	return e, ok
}

// LeaderHolds reports whether member name holds the leader key under a
// live lease now.
func (c *StoreCluster) LeaderHolds(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked()
	l := c.leader
	if l == nil || l.Name != name {
		return false
	}
	_, live := c.leases[l.LeaseID]
	return live
}

// Request writes a switchover or failover request as the API does
// (creation only), returning false when one is pending.
func (c *StoreCluster) Request(sw cluster.Switchover) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.switchover != nil {
		return false
	}
	c.rev++
	sw.Revision = c.rev
	c.switchover = &sw
	c.notifyLocked()
	return true
}

// Expire drops the leases whose time has come (every call does it too).
func (c *StoreCluster) Expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked()
}

func (c *StoreCluster) expireLocked() {
	if c.down {
		return
	}
	now := c.clock.Now()
	for _, id := range slices.Sorted(maps.Keys(c.leases)) {
		if now >= c.leases[id] {
			c.dropLeaseLocked(id)
		}
	}
}

func (c *StoreCluster) dropLeaseLocked(id int64) {
	delete(c.leases, id)
	changed := false
	if c.leader != nil && c.leader.LeaseID == id {
		c.leader, changed = nil, true
	}
	if c.init.Bootstrapper != "" && c.initLease == id {
		c.init, changed = cluster.InitState{}, true
	}
	for n, l := range c.statusLease {
		if l == id {
			delete(c.statuses, n)
			delete(c.statusLease, n)
		}
	}
	c.rev++
	if changed {
		c.notifyLocked()
	}
}

func (c *StoreCluster) notifyLocked() {
	for ch := range c.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (c *StoreCluster) viewLocked() cluster.View {
	v := cluster.View{Revision: c.rev, Init: c.init, Members: maps.Clone(c.members), Statuses: map[string]cluster.MemberStatus{},
		History: slices.Clone(c.history), ConfigRevision: c.configRev}
	if v.Members == nil {
		v.Members = map[string]cluster.MemberInfo{}
	}
	for k, s := range c.statuses {
		v.Statuses[k] = s
	}
	if c.leader != nil {
		l := *c.leader
		v.Leader = &l
	}
	if c.optime != nil {
		o := *c.optime
		v.Optime = &o
	}
	if c.config != nil {
		cf := *c.config
		v.Config = &cf
	}
	if c.switchover != nil {
		sw := *c.switchover
		v.Switchover = &sw
	}
	if c.sync != nil {
		sy := *c.sync
		sy.Members = slices.Clone(sy.Members)
		v.Sync = &sy
	}
	return v
}

// Wipe loses everything the store held (a new etcd, a wiped prefix):
// keys and leases. The members' handles then find their leases lost.
func (c *StoreCluster) Wipe() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.leases = map[int64]time.Duration{}
	c.init, c.initLease, c.leader, c.optime, c.history, c.config, c.configRev, c.switchover, c.sync =
		cluster.InitState{}, 0, nil, nil, nil, nil, 0, nil, nil
	c.members, c.statuses, c.statusLease = map[string]cluster.MemberInfo{}, map[string]cluster.MemberStatus{}, map[string]int64{}
	c.rev++
	c.notifyLocked()
}
