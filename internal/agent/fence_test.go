package agent

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/pg"
	"github.com/holdfast/holdfast/internal/store"
)

// fakeStore is an in-memory store for one member that can be made to hang:
// every call then blocks until its context ends, like an etcd without
// quorum.
type fakeStore struct {
	mu       sync.Mutex
	hang     bool
	view     cluster.View
	leaseID  int64
	granted  time.Duration    // the TTL a renewal grants; zero: 2s
	renewals []time.Time      // start of each successful renewal
	configs  []cluster.Config // every configuration written with PutConfig
}

func (f *fakeStore) block(ctx context.Context) error {
	f.mu.Lock()
	h := f.hang
	f.mu.Unlock()
	if h {
		<-ctx.Done()
		return store.ErrUnavailable
	}
	return nil
}

func (f *fakeStore) Load(ctx context.Context) (cluster.View, error) {
	if err := f.block(ctx); err != nil {
		return cluster.View{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.view, nil
}
func (f *fakeStore) Lease(ctx context.Context) (int64, error) {
	if err := f.block(ctx); err != nil {
		return 0, err
	}
	return f.leaseID, nil
}
func (f *fakeStore) KeepAlive(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	if err := f.block(ctx); err != nil {
		return 0, err
	}
	f.mu.Lock()
	f.renewals = append(f.renewals, start)
	granted := f.granted
	f.mu.Unlock()
	if granted == 0 {
		granted = 2 * time.Second
	}
	return granted, nil
}
func (f *fakeStore) AcquireLeader(ctx context.Context) (bool, error)      { return false, f.block(ctx) }
func (f *fakeStore) ReleaseLeader(ctx context.Context) error              { return f.block(ctx) }
func (f *fakeStore) DeleteStaleLeader(ctx context.Context, _ int64) error { return f.block(ctx) }
func (f *fakeStore) ClaimInit(ctx context.Context) (bool, error)          { return false, f.block(ctx) }
func (f *fakeStore) FinishInit(ctx context.Context, _ string) error       { return f.block(ctx) }
func (f *fakeStore) AbortInit(ctx context.Context) error                  { return f.block(ctx) }
func (f *fakeStore) Register(ctx context.Context, _ cluster.MemberInfo) error {
	return f.block(ctx)
}
func (f *fakeStore) PutStatus(ctx context.Context, _ cluster.MemberStatus) error { return f.block(ctx) }
func (f *fakeStore) DeleteStatus(ctx context.Context) error                      { return f.block(ctx) }
func (f *fakeStore) PutSwitchover(ctx context.Context, _ cluster.Switchover) (bool, error) {
	return false, f.block(ctx)
}
func (f *fakeStore) DeleteSwitchover(ctx context.Context, _ int64) error { return f.block(ctx) }
func (f *fakeStore) PutConfig(ctx context.Context, c cluster.Config, _ int64) error {
	if err := f.block(ctx); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.configs = append(f.configs, c)
	return nil
}
func (f *fakeStore) PutOptime(ctx context.Context, _ cluster.Optime) error { return f.block(ctx) }
func (f *fakeStore) PutSync(ctx context.Context, _ cluster.SyncState, _ int64) error {
	return f.block(ctx)
}
func (f *fakeStore) AppendHistory(ctx context.Context, _ cluster.HistoryEntry) error {
	return f.block(ctx)
}
func (f *fakeStore) RecordDiscard(ctx context.Context, _ cluster.LSN, _ cluster.Discard) error {
	return f.block(ctx)
}
func (f *fakeStore) PutConfigIfAbsent(ctx context.Context, _ cluster.Config) error {
	return f.block(ctx)
}
func (f *fakeStore) Watch(ctx context.Context) <-chan struct{}          { return make(chan struct{}) }
func (f *fakeStore) MoveLeaderAway(ctx context.Context, _ string) error { return nil }
func (f *fakeStore) Revoke(ctx context.Context) error                   { return nil }

// fakeDB is a writable primary until fenced.
type fakeDB struct {
	mu      sync.Mutex
	running bool
	fenced  time.Time
}

func (d *fakeDB) Inspect() (pg.DataDirState, error) {
	return pg.DataDirState{Kind: pg.DataDirValid, Control: &pg.ControlData{SystemID: "1", State: pg.StateInProduction}}, nil
}
func (d *fakeDB) WriteMarker(string, string) error       { return nil }
func (d *fakeDB) Initdb(context.Context) error           { return errors.New("not here") }
func (d *fakeDB) Clone(context.Context, pg.Source) error { return errors.New("not here") }
func (d *fakeDB) Rewind(context.Context, pg.Source) (pg.RewindResult, error) {
	return pg.RewindResult{}, errors.New("not here")
}
func (d *fakeDB) MoveAside(string) (string, error)                   { return "", errors.New("not here") }
func (d *fakeDB) Start(context.Context, pg.StartOptions) error       { return errors.New("not here") }
func (d *fakeDB) Reconfigure(context.Context, pg.StartOptions) error { return nil }
func (d *fakeDB) Promote(context.Context) error                      { return nil }
func (d *fakeDB) SetSyncStandbys(context.Context, string) error      { return nil }
func (d *fakeDB) PID() int                                           { return 0 }
func (d *fakeDB) LastExit() (int, error)                             { return 0, nil }
func (d *fakeDB) RunsAsPrimary() bool                                { return false }
func (d *fakeDB) EnsureReplicationUser(context.Context) error        { return nil }
func (d *fakeDB) EnsureProxyAuth(context.Context) error              { return nil }
func (d *fakeDB) EnsureSlots(context.Context, []string) error        { return nil }
func (d *fakeDB) AdoptOrStopStray(context.Context) error             { return nil }
func (d *fakeDB) Close()                                             {}
func (d *fakeDB) TimelineHistory(context.Context, uint32) ([]pg.TimelineSwitch, error) {
	return nil, nil
}
func (d *fakeDB) Running() bool { d.mu.Lock(); defer d.mu.Unlock(); return d.running }
func (d *fakeDB) Stop(context.Context, pg.StopMode) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.running = false
	return nil
}
func (d *fakeDB) StopForHandover(ctx context.Context, _ pg.HandoverStop) (bool, error) {
	return true, d.Stop(ctx, pg.Fast)
}
func (d *fakeDB) Fence(time.Duration) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.running {
		d.fenced = time.Now()
	}
	d.running = false
	return nil
}
func (d *fakeDB) Status(ctx context.Context) (pg.Status, error) {
	if !d.Running() {
		return pg.Status{}, errors.New("not running")
	}
	return pg.Status{Ready: true, SystemID: "1", Timeline: 1, WriteLSN: 100}, nil
}

// The loop fences a primary whose store hangs before its lease can expire:
// every store call is bounded by the fence point, and the loop wakes up at
// that point rather than a loop interval later.
//
// Real time: the fence margin leaves a loaded machine 2 s between the fence
// point and the lease's expiry for the loop to wake and fence, and the loop
// interval is as long as the margin, so a loop that woke an interval late
// would fence at the expiry, not before it.
func TestPrimaryFencesBeforeLeaseExpiresWhenStoreHangs(t *testing.T) {
	const ttl, loop, margin = 6 * time.Second, 2 * time.Second, 2 * time.Second
	const renewalsWait = 30 * time.Second
	st := &fakeStore{leaseID: 7, granted: ttl, view: cluster.View{
		Init:     cluster.InitState{Present: true, SystemID: "1"},
		Leader:   &cluster.Leader{Name: "pg-0", LeaseID: 7},
		Members:  map[string]cluster.MemberInfo{"pg-0": {Name: "pg-0"}},
		Statuses: map[string]cluster.MemberStatus{},
	}}
	db := &fakeDB{running: true}
	a := New(Options{Cluster: "c", Self: cluster.MemberInfo{Name: "pg-0"},
		Defaults:    cluster.Config{TTL: ttl, LoopInterval: loop, MaximumLagOnFailover: 1 << 20, PrimaryStartTimeout: 10 * time.Second},
		FenceMargin: margin, DB: db, Store: st})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	// Let it run as a healthy primary for a few renewals, then cut the
	// store.
	for deadline := time.Now().Add(renewalsWait); ; time.Sleep(loop / 4) {
		st.mu.Lock()
		n := len(st.renewals)
		st.mu.Unlock()
		if n >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d lease renewals in %s", n, renewalsWait)
		}
	}
	if !db.Running() {
		t.Fatal("the healthy primary was fenced")
	}
	st.mu.Lock()
	st.hang = true
	last := st.renewals[len(st.renewals)-1]
	st.mu.Unlock()

	deadline := time.Now().Add(2 * ttl)
	for db.Running() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	db.mu.Lock()
	fenced := db.fenced
	db.mu.Unlock()
	if fenced.IsZero() {
		t.Fatal("the primary was never fenced after losing the store")
	}
	// The store may expire the lease at the earliest at last+ttl.
	if expiry := last.Add(ttl); !fenced.Before(expiry) {
		t.Fatalf("fenced at +%s after the last renewal, lease could expire at +%s", fenced.Sub(last), ttl)
	}
	t.Logf("fenced %s after the last successful renewal (lease ttl %s, fence margin %s)", fenced.Sub(last).Round(time.Millisecond), ttl, margin)
	cancel()
	<-done
}
