package agent

import (
	"context"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/pg"
)

// recordingStore keeps what the member writes, as a store would, and
// counts the writes of the status and the optime.
type recordingStore struct {
	*fakeStore
	statusWrites, optimeWrites int
}

func (r *recordingStore) Load(ctx context.Context) (cluster.View, error) {
	v, err := r.fakeStore.Load(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	v.Statuses = maps.Clone(v.Statuses)
	return v, err
}

func (r *recordingStore) PutStatus(ctx context.Context, s cluster.MemberStatus) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.statusWrites++
	r.view.Statuses[s.Name] = s
	return nil
}

func (r *recordingStore) PutOptime(ctx context.Context, o cluster.Optime) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.optimeWrites++
	r.view.Optime = &o
	return nil
}

func (r *recordingStore) writes() (status, optime int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.statusWrites, r.optimeWrites
}

// movingDB is a writable primary whose WAL position the test moves.
type movingDB struct {
	*fakeDB
	mu  sync.Mutex
	lsn cluster.LSN
}

func (d *movingDB) Status(ctx context.Context) (pg.Status, error) {
	s, err := d.fakeDB.Status(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	s.WriteLSN = d.lsn
	return s, err
}

func (d *movingDB) move(lsn cluster.LSN) { d.mu.Lock(); d.lsn = lsn; d.mu.Unlock() }

// An idle member writes its status and the primary's optime once, not every
// loop; a moved WAL position is published in the same loop; a status the
// store lost (a lapsed lease) is written again at once.
func TestStatusPublishedOnChange(t *testing.T) {
	st := &recordingStore{fakeStore: &fakeStore{leaseID: 7, view: cluster.View{
		Init:     cluster.InitState{Present: true, SystemID: "1"},
		Leader:   &cluster.Leader{Name: "pg-0", LeaseID: 7},
		Members:  map[string]cluster.MemberInfo{"pg-0": {Name: "pg-0"}},
		Statuses: map[string]cluster.MemberStatus{},
	}}}
	db := &movingDB{fakeDB: &fakeDB{running: true}, lsn: 100}
	a := New(Options{Cluster: "c", Self: cluster.MemberInfo{Name: "pg-0"},
		Defaults:    cluster.Config{TTL: 4 * time.Second, LoopInterval: time.Second, MaximumLagOnFailover: 1 << 20, PrimaryStartTimeout: 10 * time.Second},
		FenceMargin: time.Second, DB: db, Store: st})
	ctx := context.Background()
	ticks := func(n int) {
		t.Helper()
		for range n {
			if err := a.tick(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := func(what string, status, optime int) {
		t.Helper()
		if s, o := st.writes(); s != status || o != optime {
			t.Fatalf("%s: %d status and %d optime writes, want %d and %d", what, s, o, status, optime)
		}
	}

	ticks(5)
	want("5 idle loops", 1, 1)
	st.mu.Lock()
	got := st.view.Statuses["pg-0"]
	st.mu.Unlock()
	if got.Role != cluster.RolePrimary || got.State != cluster.StateRunning || got.Position.LSN != 100 {
		t.Fatalf("published status %+v, want a running primary at LSN 100", got)
	}

	db.move(200)
	ticks(1)
	want("the WAL moved", 2, 2)
	st.mu.Lock()
	got, opt := st.view.Statuses["pg-0"], *st.view.Optime
	st.mu.Unlock()
	if got.Position.LSN != 200 || opt.Position.LSN != 200 {
		t.Fatalf("after the WAL moved: status at %s, optime at %s, want both at 200", got.Position.LSN, opt.Position.LSN)
	}
	ticks(3)
	want("3 more idle loops", 2, 2)

	st.mu.Lock()
	delete(st.view.Statuses, "pg-0") // the lease lapsed: its keys are gone
	st.mu.Unlock()
	ticks(1)
	want("the store lost the status", 3, 2)
}

// fakeArchive is an ArchiveReporter whose status the test sets.
type fakeArchive struct {
	mu sync.Mutex
	s  cluster.ArchiveStatus
}

func (f *fakeArchive) ArchiveStatus() cluster.ArchiveStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.s
}

func (f *fakeArchive) set(s cluster.ArchiveStatus) { f.mu.Lock(); f.s = s; f.mu.Unlock() }

// TestArchiveStatusPublished: the primary reports its archive status in
// its member status (for `ctl list`) and in the API's state (/archive): off
// without a repository; with one, the reporter's judgement, written again
// in the loop it changes and not while it stays the same.
func TestArchiveStatusPublished(t *testing.T) {
	for _, withRepo := range []bool{false, true} {
		st := &recordingStore{fakeStore: &fakeStore{leaseID: 7, view: cluster.View{
			Init:     cluster.InitState{Present: true, SystemID: "1"},
			Leader:   &cluster.Leader{Name: "pg-0", LeaseID: 7},
			Members:  map[string]cluster.MemberInfo{"pg-0": {Name: "pg-0"}},
			Statuses: map[string]cluster.MemberStatus{},
		}}}
		rep := &fakeArchive{s: cluster.ArchiveStatus{State: cluster.ArchiveOK, LastArchivedWAL: "000000010000000000000001"}}
		o := Options{Cluster: "c", Self: cluster.MemberInfo{Name: "pg-0"},
			Defaults:    cluster.Config{TTL: 4 * time.Second, LoopInterval: time.Second, MaximumLagOnFailover: 1 << 20, PrimaryStartTimeout: 10 * time.Second},
			FenceMargin: time.Second, DB: &fakeDB{running: true}, Store: st}
		if withRepo {
			o.ArchiveReporter = rep
		}
		a := New(o)
		ctx := context.Background()
		ticks := func(n int) {
			t.Helper()
			for range n {
				if err := a.tick(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
		published := func() (*cluster.ArchiveStatus, *cluster.ArchiveStatus) {
			st.mu.Lock()
			defer st.mu.Unlock()
			return st.view.Statuses["pg-0"].Archive, a.Backend().State().Archive
		}
		ticks(3)
		got, served := published()
		if !withRepo {
			if got == nil || got.State != cluster.ArchiveOff || served == nil || served.State != cluster.ArchiveOff {
				t.Fatalf("a primary without a repository: status %+v, API %+v; want off", got, served)
			}
			continue
		}
		if got == nil || *got != rep.s || served == nil || *served != rep.s {
			t.Fatalf("status %+v, API %+v; want %+v", got, served, rep.s)
		}
		writes, _ := st.writes()
		ticks(3)
		if w, _ := st.writes(); w != writes {
			t.Errorf("an unchanged archive status was written again: %d writes, want %d", w, writes)
		}
		failing := cluster.ArchiveStatus{State: cluster.ArchiveFailing, Reason: "archiving 000000010000000000000002 failed", LastFailedWAL: "000000010000000000000002"}
		rep.set(failing)
		ticks(1)
		if got, served := published(); got == nil || *got != failing || served == nil || *served != failing {
			t.Fatalf("after archiving failed: status %+v, API %+v; want %+v", got, served, failing)
		}
	}
}
