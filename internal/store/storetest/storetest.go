// Package storetest is the conformance suite every consensus store backend
// passes against a real server: the etcd adapter (package store) and the
// Kubernetes adapter (package kubestore). It states, as tests, the contract
// the agent relies on: one leader at a time, leases that die a TTL after
// their last renewal and never earlier, compare-and-swap on every record
// whose revision a caller passes back, and watches that wake on what
// matters and not on renewals.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/store"
)

// Store is the backend surface under test: what the agent, the API
// backend and the proxy call.
type Store interface {
	Load(ctx context.Context) (cluster.View, error)
	Lease(ctx context.Context) (int64, error)
	KeepAlive(ctx context.Context) (time.Duration, error)
	Revoke(ctx context.Context) error
	AcquireLeader(ctx context.Context) (bool, error)
	ReleaseLeader(ctx context.Context) error
	DeleteStaleLeader(ctx context.Context, rev int64) error
	ClaimInit(ctx context.Context) (bool, error)
	FinishInit(ctx context.Context, sysid string) error
	AbortInit(ctx context.Context) error
	Register(ctx context.Context, m cluster.MemberInfo) error
	PutStatus(ctx context.Context, s cluster.MemberStatus) error
	DeleteStatus(ctx context.Context) error
	PutSwitchover(ctx context.Context, sw cluster.Switchover) (bool, error)
	DeleteSwitchover(ctx context.Context, rev int64) error
	PutConfigIfAbsent(ctx context.Context, c cluster.Config) error
	PutConfig(ctx context.Context, c cluster.Config, rev int64) error
	GetConfig(ctx context.Context) (*cluster.Config, int64, error)
	PutOptime(ctx context.Context, o cluster.Optime) error
	PutSync(ctx context.Context, s cluster.SyncState, rev int64) error
	AppendHistory(ctx context.Context, h cluster.HistoryEntry) error
	RecordDiscard(ctx context.Context, divergedAt cluster.LSN, d cluster.Discard) error
	Watch(ctx context.Context) <-chan struct{}
	Close() error
}

// Backend opens handles on one running server.
type Backend struct {
	// Open returns a handle for member of cluster with the given lease
	// TTL; it is closed when the test ends.
	Open func(t *testing.T, cluster, member string, ttl time.Duration) Store
	// Outage makes the server unreachable until the returned function is
	// called; nil skips the outage test.
	Outage func(t *testing.T) (restore func())
}

// TTL is the lease TTL the suite uses: short, so expiry tests are quick,
// long enough for a loaded 2-core machine.
const TTL = 2 * time.Second

// steadyTTL is the TTL of behaviours that are not about expiry: long
// enough that no lease lapses between two steps on a loaded machine (the
// holder's second acquire failed after a 2 s TTL ran out mid-test).
const steadyTTL = time.Minute

// opTimeout bounds one store call.
const opTimeout = 10 * time.Second

// Run runs every conformance test against b.
func Run(t *testing.T, b Backend) {
	var n atomic.Int64
	fresh := func() string { return fmt.Sprintf("conf%d-%d", time.Now().UnixNano()%1_000_000, n.Add(1)) }
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, b Backend, cl string)
	}{
		{"OneLeader", testOneLeader},
		{"RenewedLeaseHoldsLeader", testRenewedLeaseHolds},
		{"LeaseExpiresNeverEarly", testLeaseExpiresNeverEarly},
		{"RevokeFreesAtOnce", testRevoke},
		{"StaleLeaderOfOwnName", testStaleLeader},
		{"Optime", testOptime},
		{"SyncCompareAndSwap", testSync},
		{"ConfigCompareAndSwap", testConfig},
		{"Switchover", testSwitchover},
		{"Bootstrap", testBootstrap},
		{"BootstrapClaimDiesWithLease", testBootstrapClaimDies},
		{"HistoryConcurrent", testHistory},
		{"HistoryDiscard", testHistoryDiscard},
		{"StatusAndRegistration", testStatus},
		{"WatchWakesOnLeaderNotRenewals", testWatch},
		{"Outage", testOutage},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, b, fresh()) })
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), opTimeout)
	t.Cleanup(cancel)
	return c
}

// yes and leaseID check a call's error and return its value:
// yes(t)(h.AcquireLeader(ctx(t))).
func yes(t *testing.T) func(bool, error) bool {
	return func(v bool, err error) bool {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func leaseID(t *testing.T) func(int64, error) int64 {
	return func(v int64, err error) int64 {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func load(t *testing.T, s Store) cluster.View {
	t.Helper()
	v, err := s.Load(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func leaderName(v cluster.View) string {
	if v.Leader == nil {
		return ""
	}
	return v.Leader.Name
}

func testOneLeader(t *testing.T, b Backend, cl string) {
	names := []string{"m-0", "m-1", "m-2"}
	handles := make([]Store, len(names))
	for i, n := range names {
		handles[i] = b.Open(t, cl, n, steadyTTL)
	}
	won := make([]bool, len(names))
	var wg sync.WaitGroup
	for i := range handles {
		wg.Go(func() {
			ok, err := handles[i].AcquireLeader(ctx(t))
			if err != nil {
				t.Errorf("%s acquire: %v", names[i], err)
			}
			won[i] = ok
		})
	}
	wg.Wait()
	winners := 0
	winner := -1
	for i, w := range won {
		if w {
			winners++
			winner = i
		}
	}
	if winners != 1 {
		t.Fatalf("%d members acquired the leader key, want exactly 1", winners)
	}
	id := leaseID(t)(handles[winner].Lease(ctx(t)))
	for _, h := range handles {
		v := load(t, h)
		if leaderName(v) != names[winner] || v.Leader.LeaseID != id {
			t.Fatalf("view shows leader %+v, want %s with lease %d", v.Leader, names[winner], id)
		}
	}
	// Acquiring again is idempotent for the holder and refused to others.
	if ok := yes(t)(handles[winner].AcquireLeader(ctx(t))); !ok {
		t.Fatal("the holder's second acquire returned false")
	}
	for i, h := range handles {
		if i != winner && yes(t)(h.AcquireLeader(ctx(t))) {
			t.Fatalf("%s acquired a held leader key", names[i])
		}
	}
	// Release: another member can take it, and the revision changes.
	rev := load(t, handles[winner]).Leader.Revision
	if err := handles[winner].ReleaseLeader(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if v := load(t, handles[winner]); v.Leader != nil {
		t.Fatalf("leader %+v still there after release", v.Leader)
	}
	other := (winner + 1) % len(handles)
	if !yes(t)(handles[other].AcquireLeader(ctx(t))) {
		t.Fatal("no member could acquire a released leader key")
	}
	if v := load(t, handles[winner]); leaderName(v) != names[other] || v.Leader.Revision == rev {
		t.Fatalf("after re-acquisition leader %+v, old revision %d", v.Leader, rev)
	}
	// Releasing a key that is not ours is a no-op.
	if err := handles[winner].ReleaseLeader(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if v := load(t, handles[winner]); leaderName(v) != names[other] {
		t.Fatalf("a non-holder's release removed the leader key: %+v", v.Leader)
	}
}

func testRenewedLeaseHolds(t *testing.T, b Backend, cl string) {
	a, o := b.Open(t, cl, "a", TTL), b.Open(t, cl, "o", TTL)
	if !yes(t)(a.AcquireLeader(ctx(t))) {
		t.Fatal("acquire failed")
	}
	end := time.Now().Add(3 * TTL)
	for time.Now().Before(end) {
		if _, err := a.KeepAlive(ctx(t)); err != nil {
			t.Fatalf("keepalive: %v", err)
		}
		if v := load(t, o); leaderName(v) != "a" {
			t.Fatalf("renewed leader lost its key: %+v", v.Leader)
		}
		if yes(t)(o.AcquireLeader(ctx(t))) {
			t.Fatal("another member acquired a renewed leader key")
		}
		time.Sleep(TTL / 4)
	}
}

// testLeaseExpiresNeverEarly: the holder stops renewing; another member
// sees the key gone within a bounded time, and never before a TTL after the
// start of the holder's last successful renewal — the holder fences by then.
func testLeaseExpiresNeverEarly(t *testing.T, b Backend, cl string) {
	a, o := b.Open(t, cl, "a", TTL), b.Open(t, cl, "o", TTL)
	if err := a.PutStatus(ctx(t), cluster.MemberStatus{Role: cluster.RolePrimary, State: cluster.StateRunning}); err != nil {
		t.Fatal(err)
	}
	if !yes(t)(a.AcquireLeader(ctx(t))) {
		t.Fatal("acquire failed")
	}
	load(t, o) // the observer has seen the key
	last := time.Now()
	if _, err := a.KeepAlive(ctx(t)); err != nil {
		t.Fatal(err)
	}
	var gone time.Time
	deadline := time.Now().Add(4 * TTL)
	for time.Now().Before(deadline) {
		v := load(t, o)
		if v.Leader == nil {
			gone = time.Now()
			if _, ok := v.Statuses["a"]; ok {
				t.Error("the holder's status outlived its lease")
			}
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if gone.IsZero() {
		t.Fatalf("leader key still there %v after the last renewal (TTL %v)", time.Since(last), TTL)
	}
	if early := gone.Sub(last); early < TTL {
		t.Fatalf("leader key gone %v after the holder's last renewal started, before its TTL %v", early, TTL)
	}
	if !yes(t)(o.AcquireLeader(ctx(t))) {
		t.Fatal("could not acquire an expired leader key")
	}
	if _, err := a.KeepAlive(ctx(t)); !errors.Is(err, store.ErrLeaseLost) {
		t.Fatalf("keepalive of an expired lease: %v, want ErrLeaseLost", err)
	}
	// A new lease is granted and differs from the dead one.
	if id := leaseID(t)(a.Lease(ctx(t))); id == 0 {
		t.Fatal("lease id 0")
	}
	if yes(t)(a.AcquireLeader(ctx(t))) {
		t.Fatal("the old holder took the key back from a live leader")
	}
}

func testRevoke(t *testing.T, b Backend, cl string) {
	a, o := b.Open(t, cl, "a", TTL), b.Open(t, cl, "o", TTL)
	if err := a.PutStatus(ctx(t), cluster.MemberStatus{Role: cluster.RolePrimary}); err != nil {
		t.Fatal(err)
	}
	if !yes(t)(a.AcquireLeader(ctx(t))) {
		t.Fatal("acquire failed")
	}
	if err := a.Revoke(ctx(t)); err != nil {
		t.Fatal(err)
	}
	v := load(t, o)
	if v.Leader != nil {
		t.Fatalf("leader %+v survived revoke", v.Leader)
	}
	if _, ok := v.Statuses["a"]; ok {
		t.Fatal("status survived revoke")
	}
	if !yes(t)(o.AcquireLeader(ctx(t))) {
		t.Fatal("could not acquire after revoke")
	}
	if err := a.Revoke(ctx(t)); err != nil {
		t.Fatalf("second revoke: %v", err)
	}
}

func testStaleLeader(t *testing.T, b Backend, cl string) {
	a := b.Open(t, cl, "a", TTL)
	if !yes(t)(a.AcquireLeader(ctx(t))) {
		t.Fatal("acquire failed")
	}
	// The same member restarts: a new handle, a new lease.
	a2 := b.Open(t, cl, "a", TTL)
	id2 := leaseID(t)(a2.Lease(ctx(t)))
	v := load(t, a2)
	if leaderName(v) != "a" || v.Leader.LeaseID == id2 {
		t.Fatalf("leader %+v, new lease %d", v.Leader, id2)
	}
	if yes(t)(a2.AcquireLeader(ctx(t))) {
		t.Fatal("a new incarnation acquired the key its old lease holds")
	}
	if err := a2.DeleteStaleLeader(ctx(t), v.Leader.Revision+1000); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("delete with a wrong revision: %v, want ErrConflict", err)
	}
	if err := a2.DeleteStaleLeader(ctx(t), v.Leader.Revision); err != nil {
		t.Fatal(err)
	}
	if !yes(t)(a2.AcquireLeader(ctx(t))) {
		t.Fatal("could not acquire after deleting the stale key")
	}
	if err := a2.DeleteStaleLeader(ctx(t), 0); err == nil {
		t.Fatal("revision 0 accepted")
	}
}

func testOptime(t *testing.T, b Backend, cl string) {
	a, o := b.Open(t, cl, "a", TTL), b.Open(t, cl, "o", TTL)
	op := cluster.Optime{Position: cluster.Position{Timeline: 2, LSN: 0x3000060}}
	if err := o.PutOptime(ctx(t), op); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("optime without the leader key: %v, want ErrConflict", err)
	}
	if !yes(t)(a.AcquireLeader(ctx(t))) {
		t.Fatal("acquire failed")
	}
	if err := o.PutOptime(ctx(t), op); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("optime by a non-leader: %v, want ErrConflict", err)
	}
	if err := a.PutOptime(ctx(t), op); err != nil {
		t.Fatal(err)
	}
	if err := a.ReleaseLeader(ctx(t)); err != nil {
		t.Fatal(err)
	}
	v := load(t, o)
	if v.Optime == nil || v.Optime.Position != op.Position || v.Optime.Leader != "a" {
		t.Fatalf("optime %+v after the leader left, want %+v by a", v.Optime, op)
	}
}

func testSync(t *testing.T, b Backend, cl string) {
	a, o := b.Open(t, cl, "a", TTL), b.Open(t, cl, "o", TTL)
	if !yes(t)(a.AcquireLeader(ctx(t))) {
		t.Fatal("acquire failed")
	}
	rec := cluster.SyncState{Members: []string{"o"}, Quorum: 1}
	if err := o.PutSync(ctx(t), rec, 0); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("sync by a non-leader: %v, want ErrConflict", err)
	}
	if err := a.PutSync(ctx(t), rec, 0); err != nil {
		t.Fatal(err)
	}
	if err := a.PutSync(ctx(t), rec, 0); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("second create: %v, want ErrConflict", err)
	}
	v := load(t, o)
	if v.Sync == nil || v.Sync.Leader != "a" || len(v.Sync.Members) != 1 || v.Sync.Revision == 0 {
		t.Fatalf("sync record %+v", v.Sync)
	}
	// A renewal or an optime write does not invalidate the record's revision.
	if _, err := a.KeepAlive(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := a.PutOptime(ctx(t), cluster.Optime{Position: cluster.Position{Timeline: 1, LSN: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := a.PutSync(ctx(t), cluster.SyncState{Members: []string{}, Quorum: 0}, v.Sync.Revision); err != nil {
		t.Fatalf("update at the read revision: %v", err)
	}
	if err := a.PutSync(ctx(t), rec, v.Sync.Revision); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("update at a stale revision: %v, want ErrConflict", err)
	}
	// A deposed leader cannot write it.
	rev := load(t, o).Sync.Revision
	if err := a.ReleaseLeader(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := a.PutSync(ctx(t), rec, rev); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("sync after release: %v, want ErrConflict", err)
	}
}

func testConfig(t *testing.T, b Backend, cl string) {
	a, o := b.Open(t, cl, "a", TTL), b.Open(t, cl, "o", TTL)
	if c, rev, err := a.GetConfig(ctx(t)); err != nil || c != nil || rev != 0 {
		t.Fatalf("empty store config %+v rev %d err %v", c, rev, err)
	}
	first := cluster.Config{TTL: 4 * time.Second, LoopInterval: time.Second, MaximumLagOnFailover: 1 << 20, SynchronousMode: cluster.SyncOn, SynchronousNodeCount: 1}
	if err := a.PutConfigIfAbsent(ctx(t), first); err != nil {
		t.Fatal(err)
	}
	second := first
	second.TTL = 9 * time.Second
	if err := o.PutConfigIfAbsent(ctx(t), second); err != nil {
		t.Fatal(err)
	}
	c, rev, err := o.GetConfig(ctx(t))
	if err != nil || c == nil || *c != first || rev == 0 {
		t.Fatalf("config %+v rev %d err %v, want the first seed", c, rev, err)
	}
	if v := load(t, o); v.Config == nil || *v.Config != first || v.ConfigRevision != rev {
		t.Fatalf("view config %+v rev %d, want %+v rev %d", v.Config, v.ConfigRevision, first, rev)
	}
	// Writes of other records do not move the config's revision.
	if _, err := o.PutSwitchover(ctx(t), cluster.Switchover{Kind: cluster.KindSwitchover}); err != nil {
		t.Fatal(err)
	}
	if err := a.AppendHistory(ctx(t), cluster.HistoryEntry{Timeline: 2}); err != nil {
		t.Fatal(err)
	}
	if err := o.PutConfig(ctx(t), second, rev); err != nil {
		t.Fatalf("put at the read revision: %v", err)
	}
	if err := a.PutConfig(ctx(t), first, rev); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("put at a stale revision: %v, want ErrConflict", err)
	}
	if err := a.PutConfig(ctx(t), first, 0); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("put expecting none: %v, want ErrConflict", err)
	}
	if c, _, _ := a.GetConfig(ctx(t)); c == nil || *c != second {
		t.Fatalf("config %+v, want %+v", c, second)
	}
}

func testSwitchover(t *testing.T, b Backend, cl string) {
	a, o := b.Open(t, cl, "a", TTL), b.Open(t, cl, "o", TTL)
	sw := cluster.Switchover{Kind: cluster.KindSwitchover, Leader: "a", Candidate: "o", RequestedAt: time.Now().UTC().Truncate(time.Second)}
	if !yes(t)(a.PutSwitchover(ctx(t), sw)) {
		t.Fatal("first request refused")
	}
	if yes(t)(o.PutSwitchover(ctx(t), cluster.Switchover{Kind: cluster.KindFailover})) {
		t.Fatal("a second pending request was accepted")
	}
	v := load(t, o)
	if v.Switchover == nil || v.Switchover.Candidate != "o" || v.Switchover.Revision == 0 {
		t.Fatalf("pending request %+v", v.Switchover)
	}
	if err := o.DeleteSwitchover(ctx(t), v.Switchover.Revision+1000); err != nil {
		t.Fatal(err)
	}
	if load(t, o).Switchover == nil {
		t.Fatal("a delete at a wrong revision removed the request")
	}
	if err := o.DeleteSwitchover(ctx(t), v.Switchover.Revision); err != nil {
		t.Fatal(err)
	}
	if load(t, o).Switchover != nil {
		t.Fatal("the request survived its delete")
	}
	if !yes(t)(a.PutSwitchover(ctx(t), sw)) {
		t.Fatal("request refused after the delete")
	}
	if err := o.DeleteSwitchover(ctx(t), 0); err != nil {
		t.Fatal(err)
	}
	if load(t, o).Switchover != nil {
		t.Fatal("delete of whatever is there left the request")
	}
	if err := o.DeleteSwitchover(ctx(t), 0); err != nil {
		t.Fatalf("delete of nothing: %v", err)
	}
}

func testBootstrap(t *testing.T, b Backend, cl string) {
	names := []string{"m-0", "m-1", "m-2"}
	hs := make([]Store, len(names))
	for i, n := range names {
		hs[i] = b.Open(t, cl, n, TTL)
	}
	won := make([]bool, len(hs))
	var wg sync.WaitGroup
	for i := range hs {
		wg.Go(func() {
			ok, err := hs[i].ClaimInit(ctx(t))
			if err != nil {
				t.Errorf("claim: %v", err)
			}
			won[i] = ok
		})
	}
	wg.Wait()
	w := -1
	for i, ok := range won {
		if ok {
			if w >= 0 {
				t.Fatalf("both %s and %s claimed the bootstrap", names[w], names[i])
			}
			w = i
		}
	}
	if w < 0 {
		t.Fatal("nobody claimed the bootstrap")
	}
	if v := load(t, hs[0]); !v.Init.Present || v.Init.Bootstrapper != names[w] {
		t.Fatalf("init state %+v, want bootstrapping by %s", v.Init, names[w])
	}
	loser := hs[(w+1)%len(hs)]
	if err := loser.FinishInit(ctx(t), "7300000000000000001"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("finish by a loser: %v, want ErrConflict", err)
	}
	if err := loser.AbortInit(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if v := load(t, loser); v.Init.Bootstrapper != names[w] {
		t.Fatal("a loser's abort removed the winner's claim")
	}
	if err := hs[w].AbortInit(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if v := load(t, loser); v.Init.Present {
		t.Fatalf("claim %+v survived its abort", v.Init)
	}
	if !yes(t)(loser.ClaimInit(ctx(t))) {
		t.Fatal("could not claim after an abort")
	}
	if err := loser.FinishInit(ctx(t), "bootstrapping by x"); err == nil {
		t.Fatal("a system identifier that looks like a claim was accepted")
	}
	if err := loser.FinishInit(ctx(t), "7300000000000000001"); err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if v := load(t, h); v.Init.SystemID != "7300000000000000001" || v.Init.Bootstrapper != "" {
			t.Fatalf("init %+v after finish", v.Init)
		}
		if yes(t)(h.ClaimInit(ctx(t))) {
			t.Fatal("a finished bootstrap was claimed again")
		}
	}
}

func testBootstrapClaimDies(t *testing.T, b Backend, cl string) {
	a, o := b.Open(t, cl, "a", TTL), b.Open(t, cl, "o", TTL)
	if !yes(t)(a.ClaimInit(ctx(t))) {
		t.Fatal("claim failed")
	}
	if yes(t)(o.ClaimInit(ctx(t))) {
		t.Fatal("a live claim was taken over")
	}
	// a dies: no more renewals. Within a few TTLs o can claim.
	deadline := time.Now().Add(4 * TTL)
	for {
		if _, err := o.KeepAlive(ctx(t)); err != nil && !errors.Is(err, store.ErrLeaseLost) {
			t.Fatal(err)
		}
		if yes(t)(o.ClaimInit(ctx(t))) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a dead member's claim never freed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := a.FinishInit(ctx(t), "7300000000000000002"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("the dead claimant finished: %v, want ErrConflict", err)
	}
}

// testHistoryDiscard: a rewind's discarded WAL lands on the entry that
// branched where it diverged; with no such entry nothing changes.
func testHistoryDiscard(t *testing.T, b Backend, cl string) {
	a := b.Open(t, cl, "a", TTL)
	at := time.Now().UTC().Truncate(time.Second)
	for _, h := range []cluster.HistoryEntry{{Timeline: 2, SwitchLSN: 0x3000000, Leader: "b", At: at}, {Timeline: 3, SwitchLSN: 0x5000000, Leader: "c", At: at}} {
		if err := a.AppendHistory(ctx(t), h); err != nil {
			t.Fatal(err)
		}
	}
	d := cluster.Discard{Member: "b", Timeline: 2, End: 0x5300000, At: at}
	if err := a.RecordDiscard(ctx(t), 0x5000000, d); err != nil {
		t.Fatal(err)
	}
	if err := a.RecordDiscard(ctx(t), 0x4000000, d); !errors.Is(err, cluster.ErrNoBranch) {
		t.Fatalf("discard with no branch: %v, want ErrNoBranch", err)
	}
	v := load(t, a)
	if len(v.History) != 2 || len(v.History[0].Discarded) != 0 || len(v.History[1].Discarded) != 1 || v.History[1].Discarded[0] != d ||
		v.History[1].Bytes(d) != 0x300000 {
		t.Fatalf("history %+v, want the discard on timeline 3's entry only", v.History)
	}
}

// testHistory: concurrent appends either land or fail with ErrConflict;
// none is lost silently.
func testHistory(t *testing.T, b Backend, cl string) {
	const writers, each = 3, 5
	var wg sync.WaitGroup
	var landed atomic.Int64
	for w := range writers {
		h := b.Open(t, cl, fmt.Sprintf("m-%d", w), TTL)
		wg.Go(func() {
			for i := range each {
				err := h.AppendHistory(ctx(t), cluster.HistoryEntry{Timeline: uint32(w*100 + i), Leader: "x"})
				switch {
				case err == nil:
					landed.Add(1)
				case !errors.Is(err, store.ErrConflict):
					t.Errorf("append: %v", err)
				}
			}
		})
	}
	wg.Wait()
	v := load(t, b.Open(t, cl, "reader", TTL))
	if int64(len(v.History)) != landed.Load() || landed.Load() == 0 {
		t.Fatalf("%d history entries, %d appends succeeded", len(v.History), landed.Load())
	}
}

func testStatus(t *testing.T, b Backend, cl string) {
	a, o := b.Open(t, cl, "a", TTL), b.Open(t, cl, "o", TTL)
	info := cluster.MemberInfo{Host: "a.example", Port: 5432, APIURL: "http://a.example:8008", Tags: map[string]string{"nofailover": "true"}}
	if err := a.Register(ctx(t), info); err != nil {
		t.Fatal(err)
	}
	if err := a.Register(ctx(t), cluster.MemberInfo{Name: "o"}); err == nil {
		t.Fatal("a handle registered another member's name")
	}
	if err := a.PutStatus(ctx(t), cluster.MemberStatus{Name: "o"}); err == nil {
		t.Fatal("a handle wrote another member's status")
	}
	st := cluster.MemberStatus{Role: cluster.RoleReplica, State: cluster.StateStreaming, Position: cluster.Position{Timeline: 1, LSN: 42}}
	if err := a.PutStatus(ctx(t), st); err != nil {
		t.Fatal(err)
	}
	v := load(t, o)
	if m := v.Members["a"]; m.Name != "a" || m.APIURL != info.APIURL || m.Tags["nofailover"] != "true" {
		t.Fatalf("registration %+v", m)
	}
	if got := v.Statuses["a"]; got.Name != "a" || got.Role != st.Role || got.Position != st.Position {
		t.Fatalf("status %+v, want %+v", got, st)
	}
	if err := a.DeleteStatus(ctx(t)); err != nil {
		t.Fatal(err)
	}
	v = load(t, o)
	if _, ok := v.Statuses["a"]; ok {
		t.Fatal("status survived its delete")
	}
	if _, ok := v.Members["a"]; !ok {
		t.Fatal("the registration went with the status")
	}
}

func testWatch(t *testing.T, b Backend, cl string) {
	a, o := b.Open(t, cl, "a", TTL), b.Open(t, cl, "o", TTL)
	if !yes(t)(a.AcquireLeader(ctx(t))) {
		t.Fatal("acquire failed")
	}
	wctx, cancel := context.WithCancel(context.Background())
	ch := o.Watch(wctx)
	wait := func(what string, d time.Duration) bool {
		select {
		case <-ch:
			return true
		case <-time.After(d):
			return false
		}
	}
	if !wait("establishment", opTimeout) {
		t.Fatal("no signal when the watch was established")
	}
	// Let the establishment signals settle, then renew: no signals.
	time.Sleep(500 * time.Millisecond)
	for len(ch) > 0 {
		<-ch
	}
	signals := 0
	end := time.Now().Add(TTL)
	for time.Now().Before(end) {
		if _, err := a.KeepAlive(ctx(t)); err != nil {
			t.Fatal(err)
		}
		if err := a.PutStatus(ctx(t), cluster.MemberStatus{Role: cluster.RolePrimary}); err != nil {
			t.Fatal(err)
		}
		if err := a.PutOptime(ctx(t), cluster.Optime{Position: cluster.Position{Timeline: 1, LSN: cluster.LSN(time.Now().UnixNano())}}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ch:
			signals++
		case <-time.After(TTL / 5):
		}
	}
	if signals > 0 {
		t.Fatalf("%d signals for renewals, statuses and optimes; want none", signals)
	}
	if err := a.ReleaseLeader(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if !wait("release", opTimeout) {
		t.Fatal("no signal when the leader released its key")
	}
	if _, err := a.PutSwitchover(ctx(t), cluster.Switchover{Kind: cluster.KindSwitchover}); err != nil {
		t.Fatal(err)
	}
	if !wait("switchover", opTimeout) {
		t.Fatal("no signal for a switchover request")
	}
	cancel()
	deadline := time.After(opTimeout)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("watch channel not closed after its context ended")
		}
	}
}

func testOutage(t *testing.T, b Backend, cl string) {
	if b.Outage == nil {
		t.Skip("this backend cannot be made unreachable here")
	}
	a := b.Open(t, cl, "a", TTL)
	if !yes(t)(a.AcquireLeader(ctx(t))) {
		t.Fatal("acquire failed")
	}
	restore := b.Outage(t)
	c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_, err := a.Load(c)
	cancel()
	if !errors.Is(err, store.ErrUnavailable) {
		restore()
		t.Fatalf("load during an outage: %v, want ErrUnavailable", err)
	}
	c, cancel = context.WithTimeout(context.Background(), 2*time.Second)
	_, err = a.KeepAlive(c)
	cancel()
	if !errors.Is(err, store.ErrUnavailable) && !errors.Is(err, store.ErrLeaseLost) {
		restore()
		t.Fatalf("keepalive during an outage: %v, want ErrUnavailable or ErrLeaseLost", err)
	}
	restore()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := a.Load(c)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("store still unreadable a minute after the outage: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
