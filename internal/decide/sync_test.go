package decide

import (
	"fmt"
	"math/rand"
	"slices"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

func set(q int, members ...string) SyncSet { return NewSyncSet(members, q) }

func TestValidPG(t *testing.T) {
	for _, tc := range []struct {
		p, r SyncSet
		want bool
	}{
		{set(0), set(0), true},
		{set(1, "a"), set(0), true},
		{set(0), set(1, "a"), false},           // async under a record that needs a
		{set(1, "a"), set(1, "a"), true},       // same
		{set(1, "b"), set(1, "a"), false},      // b alone may ack
		{set(2, "a", "b"), set(1, "a"), true},  // bridge: both must ack
		{set(1, "a", "b"), set(1, "a"), false}, // b alone may ack
		{set(1, "*"), set(0), true},            // strict's "any standby" block
		{set(1, "*"), set(1, "a"), false},      // any standby is not a
		{set(2, "a", "b"), set(2, "a", "b"), true},
		{set(1, "a", "b"), set(2, "a", "b"), false},
		{set(3, "a", "b", "c"), set(2, "a", "b"), true},
	} {
		if got := validPG(tc.p, tc.r); got != tc.want {
			t.Errorf("validPG(%s, %s) = %v, want %v", tc.p, tc.r, got, tc.want)
		}
	}
}

func TestSafeStore(t *testing.T) {
	none := map[string]bool{}
	for _, tc := range []struct {
		r, next SyncSet
		proven  map[string]bool
		want    bool
	}{
		{set(0), set(0), none, true},
		{set(1, "a"), set(0), none, true},                                 // forgetting is safe
		{set(2, "a", "b"), set(1, "a"), none, true},                       // b leaves: a still has all
		{set(1, "a", "b"), set(0, "a"), none, true},                       // ANY 1 of a,b minus b: nothing known of a
		{set(1, "a", "b"), set(1, "a"), none, false},                      // a may lack commits only b has
		{set(0), set(1, "a"), none, false},                                // a never proven
		{set(0), set(1, "a"), map[string]bool{"a": true}, true},           // a caught up
		{set(1, "a"), set(2, "a", "b"), map[string]bool{"b": true}, true}, // a had them, b caught up
		{set(1, "a"), set(2, "a", "b"), none, false},
		{set(1, "a"), set(1, "a", "b"), none, true}, // quorum 1 of a,b: a alone suffices
		{set(1, "a"), set(1, "b"), none, false},
		{set(1, "a"), set(1, "b"), map[string]bool{"b": true}, true},
	} {
		if got := safeStore(tc.r, tc.next, tc.proven); got != tc.want {
			t.Errorf("safeStore(%s → %s, proven %v) = %v, want %v", tc.r, tc.next, tc.proven, got, tc.want)
		}
	}
}

func TestBridgeIsValid(t *testing.T) {
	names := []string{"a", "b", "c", "d"}
	r := rand.New(rand.NewSource(1))
	pick := func() SyncSet {
		var m []string
		for _, n := range names {
			if r.Intn(2) == 0 {
				m = append(m, n)
			}
		}
		q := 0
		if len(m) > 0 {
			q = r.Intn(len(m) + 1)
		}
		return set(q, m...)
	}
	for i := 0; i < 5000; i++ {
		cur, d := pick(), pick()
		b := bridge(cur, d)
		if !validPG(b, cur) {
			t.Fatalf("bridge(%s, %s) = %s is not valid for the record", cur, d, b)
		}
		if b.Quorum < d.Quorum && len(b.Members) >= d.Quorum {
			t.Fatalf("bridge(%s, %s) = %s is weaker than the target", cur, d, b)
		}
	}
}

// syncModel is the primary side of synchronous replication alone: a WAL
// position, standbys with flush positions that only move forward,
// PostgreSQL releasing commits by its current synchronous_standby_names,
// and the store's record, driven by syncStep with failing actions,
// standbys coming and going and lagging.
type syncModel struct {
	r        *rand.Rand
	mode     string
	n        int
	now      time.Duration
	lsn      cluster.LSN
	flush    map[string]cluster.LSN
	conn     map[string]bool // connected to the walsender
	pgConf   SyncSet
	rec      *cluster.SyncState
	rev      int64
	mem      Memory
	pending  []cluster.LSN
	acked    []cluster.LSN
	standbys []string
	healed   bool // standbys stay connected
}

func (m *syncModel) obs() Observation {
	o := base()
	o.Self = memberInfo("pg-0")
	o.Now = m.now
	o.Settings.SyncMode, o.Settings.SyncCount, o.Settings.SyncSettle = m.mode, m.n, 250*time.Millisecond
	o.View.Members = map[string]cluster.MemberInfo{"pg-0": memberInfo("pg-0")}
	for _, s := range m.standbys {
		o.View.Members[s] = memberInfo(s)
	}
	if m.rec != nil {
		r := *m.rec
		r.Members = slices.Clone(r.Members)
		o.View.Sync = &r
	}
	o.Memory = m.mem
	o.PG = PG{Running: true, Ready: true, Sync: m.pgConf, FlushLSN: m.lsn}
	for _, s := range m.standbys {
		if m.conn[s] {
			o.PG.Replicas = append(o.PG.Replicas, Replica{Name: s, Streaming: m.flush[s]+4*walBlock >= m.lsn, Flush: m.flush[s]})
		}
	}
	return o
}

// walBlock is how many LSN bytes one commit of the model stands for.
const walBlock = 8192

// release acknowledges the pending commits PostgreSQL would release now.
func (m *syncModel) release() {
	var still []cluster.LSN
	for _, x := range m.pending {
		copies := 0
		for _, s := range m.standbys {
			if m.conn[s] && m.flush[s] >= x && (slices.Contains(m.pgConf.Members, s) || slices.Contains(m.pgConf.Members, anyStandby)) {
				copies++
			}
		}
		if copies >= m.pgConf.Quorum {
			if m.mode == cluster.SyncStrict && copies == 0 && m.rec != nil {
				panic(fmt.Sprintf("strict: commit %s acknowledged without a standby under %s", x, m.pgConf))
			}
			m.acked = append(m.acked, x)
		} else {
			still = append(still, x)
		}
	}
	m.pending = still
}

// check: every acknowledged commit is on Quorum of the record's Members.
func (m *syncModel) check() error {
	if m.rec == nil {
		return nil
	}
	for _, x := range m.acked {
		holders := 0
		for _, s := range m.rec.Members {
			if m.flush[s] >= x {
				holders++
			}
		}
		if holders < m.rec.Quorum {
			return fmt.Errorf("commit %s is on %d of %v, the record promises %d (pg: %s)", x, holders, m.rec.Members, m.rec.Quorum, m.pgConf)
		}
	}
	return nil
}

func (m *syncModel) step() error {
	// The world moves: commits, standbys flushing, connecting, leaving.
	for i := m.r.Intn(3); i > 0; i-- {
		m.lsn += walBlock
		m.pending = append(m.pending, m.lsn)
	}
	for _, s := range m.standbys {
		switch k := m.r.Intn(100); {
		case k < 5 && !m.healed:
			m.conn[s] = !m.conn[s]
		case m.conn[s] && k < 80:
			m.flush[s] += cluster.LSN(m.r.Intn(int(m.lsn-m.flush[s])/walBlock+1)) * walBlock
		}
	}
	m.release()
	if err := m.check(); err != nil {
		return err
	}
	o := m.obs()
	acts, mem, _ := syncStep(o)
	m.mem = mem
	for _, a := range acts {
		if m.r.Intn(10) == 0 {
			break // the action failed; the rest of the list is skipped
		}
		switch a.Kind {
		case ActSetSync:
			m.pgConf = a.Sync
		case ActPutSync:
			m.rev++
			m.rec = &cluster.SyncState{Leader: "pg-0", Members: slices.Clone(a.Sync.Members), Quorum: a.Sync.Quorum, Revision: m.rev}
		default:
			return fmt.Errorf("unexpected action %s", a.Kind)
		}
		m.release()
		if err := m.check(); err != nil {
			return fmt.Errorf("after %s %s: %w", a.Kind, a.Sync, err)
		}
	}
	m.now += time.Duration(100+m.r.Intn(900)) * time.Millisecond
	return nil
}

// TestSyncProtocolKeepsTheRecordTrue drives the primary's synchronous
// replication steps through random commits, lags, disconnects and failed
// actions, in every mode, and checks the record's promise after every
// effect. It is the test that fails if members join the record before
// they are proven, or leave PostgreSQL's setting before the record.
func TestSyncProtocolKeepsTheRecordTrue(t *testing.T) {
	seeds := int64(50)
	if testing.Short() || raceBuild {
		seeds = 10
	}
	for _, mode := range []string{cluster.SyncOn, cluster.SyncStrict, cluster.SyncQuorum, cluster.SyncOff} {
		for _, n := range []int{1, 2, 3} {
			for seed := int64(1); seed <= seeds; seed++ {
				m := &syncModel{r: rand.New(rand.NewSource(seed)), mode: mode, n: n, now: time.Minute,
					flush: map[string]cluster.LSN{}, conn: map[string]bool{}, standbys: []string{"pg-1", "pg-2", "pg-3"}}
				for _, s := range m.standbys {
					m.conn[s] = m.r.Intn(2) == 0
				}
				// Start as a freshly promoted primary with a stale setting.
				if m.r.Intn(2) == 0 {
					m.pgConf = set(1, "pg-3")
				}
				for i := 0; i < 300; i++ {
					if err := m.step(); err != nil {
						t.Fatalf("%s n=%d seed %d step %d: %v", mode, n, seed, i, err)
					}
				}
				// Healed: every standby connected and caught up; the record
				// reaches the mode's target.
				m.healed = true
				for _, s := range m.standbys {
					m.conn[s] = true
				}
				for i := 0; i < 40; i++ {
					for _, s := range m.standbys {
						m.flush[s] = m.lsn
					}
					if err := m.step(); err != nil {
						t.Fatalf("%s n=%d seed %d healing: %v", mode, n, seed, err)
					}
				}
				if mode != cluster.SyncOff {
					want := n // on, strict: N standbys; quorum: all three, ANY N
					if mode == cluster.SyncQuorum {
						want = 3
					}
					if m.rec == nil || len(m.rec.Members) != want || m.rec.Quorum != n || !m.pgConf.Equal(NewSyncSet(m.rec.Members, n)) {
						t.Fatalf("%s n=%d seed %d: healed record %+v, pg %s", mode, n, seed, m.rec, m.pgConf)
					}
				}
				if mode == cluster.SyncOff && m.pgConf.Quorum != 0 {
					t.Fatalf("off seed %d: PostgreSQL still synchronous: %s", seed, m.pgConf)
				}
			}
		}
	}
}

// Entering a synchronous mode, the standby PostgreSQL already waits for
// stays the choice while the replicas overtake each other: a choice by
// WAL position alone changed at every loop under load, and each change
// restarted the proof, so no standby was recorded for seconds.
func TestSyncCandidatesKeepTheConfiguredStandby(t *testing.T) {
	o := Observation{
		Self:     cluster.MemberInfo{Name: "p"},
		Settings: Settings{SyncMode: cluster.SyncStrict, SyncCount: 1},
		View:     cluster.View{Members: map[string]cluster.MemberInfo{"p": {Name: "p"}, "a": {Name: "a"}, "b": {Name: "b"}}},
	}
	o.PG.Sync = set(1, "b")
	for _, flush := range [][2]cluster.LSN{{200, 100}, {100, 200}, {300, 300}} {
		o.PG.Replicas = []Replica{{Name: "a", Streaming: true, Flush: flush[0]}, {Name: "b", Streaming: true, Flush: flush[1]}}
		if got := desiredSync(o, SyncSet{}); !got.Equal(set(1, "b")) {
			t.Errorf("flushed a %d, b %d, PostgreSQL waiting for b, nothing recorded: desired %s, want %s", flush[0], flush[1], got, set(1, "b"))
		}
		// The record still comes first.
		if got := desiredSync(o, set(1, "a")); !got.Equal(set(1, "a")) {
			t.Errorf("flushed a %d, b %d, a recorded: desired %s, want %s", flush[0], flush[1], got, set(1, "a"))
		}
	}
}
