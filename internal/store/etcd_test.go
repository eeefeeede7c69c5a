package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/holdfast/holdfast/internal/cluster"
)

// TestThreeMembers runs the store contract against one 3-member embedded
// cluster; each subtest uses its own cluster name (key prefix).
func TestThreeMembers(t *testing.T) {
	c := startCluster(t, 3)
	t.Run("LeaderKey", func(t *testing.T) { testLeaderKey(t, c) })
	t.Run("StaleLeader", func(t *testing.T) { testStaleLeader(t, c) })
	t.Run("InitRace", func(t *testing.T) { testInitRace(t, c) })
	t.Run("LoadRoundTrip", func(t *testing.T) { testLoadRoundTrip(t, c) })
	t.Run("Watch", func(t *testing.T) { testWatch(t, c) })
	t.Run("MoveLeaderAway", func(t *testing.T) { testMoveLeaderAway(t, c) })
	t.Run("Switchover", func(t *testing.T) { testSwitchover(t, c) })
}

// One switchover request at a time; it round-trips, wakes watchers, and is
// cleared by revision.
func testSwitchover(t *testing.T, c *testCluster) {
	a := openStore(t, c.endpoints(), "switch", "pg-a")
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w := a.Watch(wctx)
	<-w // the signal for the established watch
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	ok, err := a.PutSwitchover(ctxT(t, 5*time.Second), cluster.Switchover{Kind: cluster.KindSwitchover, Leader: "pg-a", Candidate: "pg-b", ScheduledAt: at})
	mustBool(t, ok, err, true, "first request")
	ok, err = a.PutSwitchover(ctxT(t, 5*time.Second), cluster.Switchover{Kind: cluster.KindFailover, Candidate: "pg-c"})
	mustBool(t, ok, err, false, "second request while one is pending")
	select {
	case <-w:
	case <-time.After(5 * time.Second):
		t.Fatal("no watch signal for a switchover request")
	}
	v := load(t, a)
	sw := v.Switchover
	if sw == nil || sw.Kind != cluster.KindSwitchover || sw.Candidate != "pg-b" || !sw.ScheduledAt.Equal(at) || sw.Revision == 0 {
		t.Fatalf("switchover in view = %+v", sw)
	}
	must(t, a.DeleteSwitchover(ctxT(t, 5*time.Second), sw.Revision+1000))
	if load(t, a).Switchover == nil {
		t.Fatal("delete with a stale revision removed the request")
	}
	must(t, a.DeleteSwitchover(ctxT(t, 5*time.Second), sw.Revision))
	if load(t, a).Switchover != nil {
		t.Fatal("request not cleared")
	}
}

func testLeaderKey(t *testing.T, c *testCluster) {
	a := openStore(t, c.endpoints(), "leader", "pg-a")
	b := openStore(t, c.endpoints(), "leader", "pg-b")

	ok, err := a.AcquireLeader(ctxT(t, 5*time.Second))
	mustBool(t, ok, err, true, "A acquires")
	ok, err = b.AcquireLeader(ctxT(t, 5*time.Second))
	mustBool(t, ok, err, false, "B acquires while A holds")
	ok, err = a.AcquireLeader(ctxT(t, 5*time.Second))
	mustBool(t, ok, err, true, "A acquires again (already holds)")

	aLease, err := a.Lease(ctxT(t, 5*time.Second))
	must(t, err)
	v := load(t, b)
	if v.Leader == nil || v.Leader.Name != "pg-a" || v.Leader.LeaseID != aLease || v.Leader.Revision == 0 {
		t.Fatalf("leader in view = %+v, want pg-a with lease %x", v.Leader, aLease)
	}

	// B cannot release A's key.
	must(t, b.ReleaseLeader(ctxT(t, 5*time.Second)))
	if v := load(t, b); v.Leader == nil {
		t.Fatal("B's release deleted A's leader key")
	}
	must(t, a.ReleaseLeader(ctxT(t, 5*time.Second)))
	ok, err = b.AcquireLeader(ctxT(t, 5*time.Second))
	mustBool(t, ok, err, true, "B acquires after A released")
	must(t, b.ReleaseLeader(ctxT(t, 5*time.Second)))

	// A acquires again and then stops renewing its lease: the key must
	// vanish within TTL plus slack while B keeps its own lease alive.
	if _, err := a.KeepAlive(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	ok, err = a.AcquireLeader(ctxT(t, 5*time.Second))
	mustBool(t, ok, err, true, "A acquires before going silent")
	if _, err := a.KeepAlive(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	silent := time.Now()
	deadline := silent.Add(testTTL + expiryLate)
	var gone time.Duration
	for time.Now().Before(deadline) {
		ttl, err := b.KeepAlive(ctxT(t, 2*time.Second))
		if err != nil && !errors.Is(err, ErrLeaseLost) {
			t.Fatalf("B keepalive: %v", err)
		}
		if errors.Is(err, ErrLeaseLost) {
			_, err = b.Lease(ctxT(t, 2*time.Second))
			must(t, err)
		} else if ttl <= 0 {
			t.Fatalf("B keepalive TTL = %v", ttl)
		}
		if v := load(t, b); v.Leader == nil {
			gone = time.Since(silent)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if gone == 0 {
		t.Fatalf("leader key still present %v after A stopped renewing", testTTL+expiryLate)
	}
	if gone < testTTL/2 {
		t.Fatalf("leader key vanished after %v, before the TTL could have run out", gone)
	}
	t.Logf("leader key expired %v after the last keepalive (TTL %v)", gone, testTTL)
	ok, err = b.AcquireLeader(ctxT(t, 5*time.Second))
	mustBool(t, ok, err, true, "B acquires after A's lease expired")

	_, err = a.KeepAlive(ctxT(t, 5*time.Second))
	if !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("A keepalive after expiry: %v, want ErrLeaseLost", err)
	}
	if !strings.Contains(err.Error(), "keep lease alive") {
		t.Fatalf("error %q does not name the operation", err)
	}
	// The lease was forgotten: a new one is granted, and A still loses.
	newLease, err := a.Lease(ctxT(t, 5*time.Second))
	must(t, err)
	if newLease == aLease {
		t.Fatal("Lease returned the expired lease")
	}
	ok, err = a.AcquireLeader(ctxT(t, 5*time.Second))
	mustBool(t, ok, err, false, "A acquires while B holds")
	must(t, b.Revoke(ctxT(t, 5*time.Second)))
	if v := load(t, a); v.Leader != nil {
		t.Fatalf("leader key survived B's revoke: %+v", v.Leader)
	}
	// Revoke forgets the lease; the next lease-bound call grants a new one.
	ok, err = b.AcquireLeader(ctxT(t, 5*time.Second))
	mustBool(t, ok, err, true, "B acquires with a fresh lease")
	must(t, b.Revoke(ctxT(t, 5*time.Second)))
	must(t, a.Revoke(ctxT(t, 5*time.Second)))
}

func testStaleLeader(t *testing.T, c *testCluster) {
	old := openStore(t, c.endpoints(), "stale", "pg-a")
	ok, err := old.AcquireLeader(ctxT(t, 5*time.Second))
	mustBool(t, ok, err, true, "old incarnation acquires")

	// The agent restarts: a new handle, a new lease, the same name.
	cur := openStore(t, c.endpoints(), "stale", "pg-a")
	ok, err = cur.AcquireLeader(ctxT(t, 5*time.Second))
	mustBool(t, ok, err, false, "new incarnation acquires over its old key")
	v := load(t, cur)
	lease, err := cur.Lease(ctxT(t, 5*time.Second))
	must(t, err)
	if v.Leader == nil || v.Leader.Name != "pg-a" || v.Leader.LeaseID == lease {
		t.Fatalf("leader = %+v, want pg-a under the old lease", v.Leader)
	}
	// ReleaseLeader compares the lease too, so it leaves the stale key.
	must(t, cur.ReleaseLeader(ctxT(t, 5*time.Second)))
	if v := load(t, cur); v.Leader == nil {
		t.Fatal("ReleaseLeader deleted a key bound to another lease")
	}
	err = cur.DeleteStaleLeader(ctxT(t, 5*time.Second), v.Leader.Revision-1)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("delete with a wrong revision: %v, want ErrConflict", err)
	}
	must(t, cur.DeleteStaleLeader(ctxT(t, 5*time.Second), v.Leader.Revision))
	if v := load(t, cur); v.Leader != nil {
		t.Fatalf("stale leader key survived: %+v", v.Leader)
	}
	// Already gone: not an error.
	must(t, cur.DeleteStaleLeader(ctxT(t, 5*time.Second), v.Leader.Revision))
	ok, err = cur.AcquireLeader(ctxT(t, 5*time.Second))
	mustBool(t, ok, err, true, "new incarnation acquires")
	must(t, old.Revoke(ctxT(t, 5*time.Second)))
	must(t, cur.Revoke(ctxT(t, 5*time.Second)))
}

func testInitRace(t *testing.T, c *testCluster) {
	const n = 4
	stores := make([]*Etcd, n)
	for i := range stores {
		// Spread the racers over different etcd members.
		stores[i] = openStore(t, []string{c.url(i % len(c.opts))}, "init", fmt.Sprintf("pg-%d", i))
	}
	wins := make([]bool, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			wins[i], errs[i] = s.ClaimInit(ctxT(t, 5*time.Second))
		}()
	}
	close(start)
	wg.Wait()
	winner := -1
	for i := range stores {
		must(t, errs[i])
		if wins[i] {
			if winner >= 0 {
				t.Fatalf("both %d and %d won the bootstrap claim", winner, i)
			}
			winner = i
		}
	}
	if winner < 0 {
		t.Fatal("nobody won the bootstrap claim")
	}
	w, l := stores[winner], stores[(winner+1)%n]
	wName := fmt.Sprintf("pg-%d", winner)
	if v := load(t, l); !v.Init.Present || v.Init.Bootstrapper != wName || v.Init.SystemID != "" || v.Init.Revision == 0 {
		t.Fatalf("init state = %+v, want bootstrapping by %s", v.Init, wName)
	}
	// A loser can neither finish nor abort the winner's bootstrap.
	if err := l.FinishInit(ctxT(t, 5*time.Second), "7000000000000000001"); !errors.Is(err, ErrConflict) {
		t.Fatalf("loser FinishInit: %v, want ErrConflict", err)
	}
	must(t, l.AbortInit(ctxT(t, 5*time.Second)))
	if v := load(t, l); v.Init.Bootstrapper != wName {
		t.Fatalf("loser's abort changed the claim: %+v", v.Init)
	}
	// The winner aborts: the key is free again and the loser claims it.
	must(t, w.AbortInit(ctxT(t, 5*time.Second)))
	if v := load(t, l); v.Init.Present {
		t.Fatalf("init key survived the abort: %+v", v.Init)
	}
	ok, err := l.ClaimInit(ctxT(t, 5*time.Second))
	mustBool(t, ok, err, true, "loser claims after abort")

	// The new bootstrapper dies (lease revoked): the claim vanishes.
	must(t, l.Revoke(ctxT(t, 5*time.Second)))
	if v := load(t, w); v.Init.Present {
		t.Fatalf("claim survived its bootstrapper's lease: %+v", v.Init)
	}
	if err := l.FinishInit(ctxT(t, 5*time.Second), "7000000000000000001"); !errors.Is(err, ErrConflict) {
		t.Fatalf("FinishInit after losing the lease: %v, want ErrConflict", err)
	}

	// A complete bootstrap: claim, finish; the system id stays without a
	// lease and cannot be aborted or claimed over.
	ok, err = w.ClaimInit(ctxT(t, 5*time.Second))
	mustBool(t, ok, err, true, "winner claims again")
	must(t, w.FinishInit(ctxT(t, 5*time.Second), "7000000000000000001"))
	must(t, w.Revoke(ctxT(t, 5*time.Second)))
	must(t, w.AbortInit(ctxT(t, 5*time.Second)))
	v := load(t, l)
	if !v.Init.Present || v.Init.SystemID != "7000000000000000001" || v.Init.Bootstrapper != "" {
		t.Fatalf("init state = %+v, want the system id", v.Init)
	}
	ok, err = l.ClaimInit(ctxT(t, 5*time.Second))
	mustBool(t, ok, err, false, "claim after bootstrap finished")
	for _, s := range stores {
		must(t, s.Revoke(ctxT(t, 5*time.Second)))
	}
}

func testLoadRoundTrip(t *testing.T, c *testCluster) {
	a := openStore(t, c.endpoints(), "load", "pg-a")
	b := openStore(t, c.endpoints(), "load", "pg-b")
	ctx := ctxT(t, 20*time.Second)

	infoA := cluster.MemberInfo{Name: "pg-a", Host: "10.0.0.1", Port: 5432, APIURL: "http://10.0.0.1:8008", Tags: map[string]string{"nofailover": "true"}}
	infoB := cluster.MemberInfo{Host: "10.0.0.2", Port: 5433, Witness: true} // empty name: filled in
	must(t, a.Register(ctx, infoA))
	must(t, b.Register(ctx, infoB))
	if err := a.Register(ctx, cluster.MemberInfo{Name: "pg-b"}); err == nil {
		t.Fatal("A registered under B's name")
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	stA := cluster.MemberStatus{Name: "pg-a", Role: cluster.RolePrimary, State: cluster.StateRunning,
		Position: cluster.Position{Timeline: 3, LSN: 0x16B374D848}, SystemID: "7000000000000000001", UpdatedAt: now}
	stB := cluster.MemberStatus{Name: "pg-b", Role: cluster.RoleReplica, State: cluster.StateStreaming,
		Position: cluster.Position{Timeline: 3, LSN: 0x16B3000000}, Following: "pg-a", Streaming: true, Message: "following pg-a", UpdatedAt: now}

	opt := cluster.Optime{Position: cluster.Position{Timeline: 3, LSN: 0x16B374D848}, Leader: "pg-a"}
	if err := a.PutOptime(ctx, opt); !errors.Is(err, ErrConflict) {
		t.Fatalf("PutOptime without the leader key: %v, want ErrConflict", err)
	}
	ok, err := a.AcquireLeader(ctx)
	mustBool(t, ok, err, true, "A acquires")
	must(t, a.PutOptime(ctx, opt))
	if err := b.PutOptime(ctx, opt); !errors.Is(err, ErrConflict) {
		t.Fatalf("PutOptime by a non-leader: %v, want ErrConflict", err)
	}

	// History keeps the last 100 entries: seed 99, append 4.
	var seed []cluster.HistoryEntry
	for i := range 103 {
		h := cluster.HistoryEntry{Timeline: uint32(i + 2), SwitchLSN: cluster.LSN(i * 1000),
			Leader: "pg-a", Reason: fmt.Sprintf("promotion %d", i), At: now}
		if i < 99 {
			seed = append(seed, h)
			continue
		}
		if i == 99 {
			b, err := json.Marshal(seed)
			must(t, err)
			_, err = c.raw().Put(ctx, "/holdfast/load/history", string(b))
			must(t, err)
		}
		must(t, a.AppendHistory(ctx, h))
	}

	cfg := cluster.Config{TTL: 4 * time.Second, LoopInterval: 1500 * time.Millisecond, MaximumLagOnFailover: 1 << 20, PrimaryStartTimeout: 5 * time.Minute}
	must(t, a.PutConfigIfAbsent(ctx, cfg))
	must(t, b.PutConfigIfAbsent(ctx, cluster.Config{TTL: time.Hour})) // no-op: present

	// Statuses are bound to leases: renew A's (it holds the leader key).
	_, err = a.KeepAlive(ctx)
	must(t, err)
	must(t, a.PutStatus(ctx, stA))
	must(t, b.PutStatus(ctx, stB))

	// Garbage in one key must not fail the load.
	raw := c.raw()
	if _, err := raw.Put(ctx, "/holdfast/load/status/pg-c", "{not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Put(ctx, "/holdfast/load/unknown-key", "x"); err != nil {
		t.Fatal(err)
	}
	// Another cluster's keys stay out of the view.
	if _, err := raw.Put(ctx, "/holdfast/load2/members/pg-z", "{}"); err != nil {
		t.Fatal(err)
	}

	v := load(t, b)
	if v.Revision == 0 {
		t.Error("view revision is 0")
	}
	infoB.Name = "pg-b"
	if want := map[string]cluster.MemberInfo{"pg-a": infoA, "pg-b": infoB}; !reflect.DeepEqual(v.Members, want) {
		t.Errorf("members = %+v, want %+v", v.Members, want)
	}
	if want := map[string]cluster.MemberStatus{"pg-a": stA, "pg-b": stB}; !reflect.DeepEqual(v.Statuses, want) {
		t.Errorf("statuses = %+v, want %+v", v.Statuses, want)
	}
	if v.Optime == nil || *v.Optime != opt {
		t.Errorf("optime = %+v, want %+v", v.Optime, opt)
	}
	if len(v.History) != 100 || v.History[0].Timeline != 5 || v.History[99].Timeline != 104 || !v.History[99].At.Equal(now) {
		t.Errorf("history: %d entries, first timeline %d, want 100 entries of timelines 5..104", len(v.History), v.History[0].Timeline)
	}
	if v.Timeline() != 104 {
		t.Errorf("view timeline = %d, want 104", v.Timeline())
	}
	if v.Config == nil || *v.Config != cfg {
		t.Errorf("config = %+v, want %+v", v.Config, cfg)
	}
	// Durations are stored as strings.
	gr, err := raw.Get(ctx, "/holdfast/load/config")
	must(t, err)
	if s := string(gr.Kvs[0].Value); !strings.Contains(s, `"ttl":"4s"`) || !strings.Contains(s, `"loop_interval":"1.5s"`) || !strings.Contains(s, `"primary_start_timeout":"5m0s"`) {
		t.Errorf("stored config = %s, want durations as strings", s)
	}

	// Config compare-and-swap.
	got, rev, err := a.GetConfig(ctx)
	must(t, err)
	if got == nil || *got != cfg || rev == 0 {
		t.Fatalf("GetConfig = %+v rev %d", got, rev)
	}
	cfg2 := cfg
	cfg2.Paused = true
	if err := a.PutConfig(ctx, cfg2, 0); !errors.Is(err, ErrConflict) {
		t.Fatalf("PutConfig rev 0 over an existing config: %v, want ErrConflict", err)
	}
	must(t, a.PutConfig(ctx, cfg2, rev))
	if err := b.PutConfig(ctx, cfg, rev); !errors.Is(err, ErrConflict) {
		t.Fatalf("PutConfig with a stale revision: %v, want ErrConflict", err)
	}
	if v := load(t, b); v.Config == nil || !v.Config.Paused {
		t.Fatalf("config after PutConfig = %+v", v.Config)
	}

	// Statuses vanish with the lease; registrations, optime and history stay.
	must(t, b.DeleteStatus(ctx))
	must(t, a.Revoke(ctx))
	v = load(t, b)
	if len(v.Statuses) != 0 || v.Leader != nil {
		t.Errorf("after revoke: statuses %v, leader %+v; want none", v.Statuses, v.Leader)
	}
	if len(v.Members) != 2 || v.Optime == nil || len(v.History) != 100 {
		t.Errorf("after revoke: %d members, optime %v, %d history entries", len(v.Members), v.Optime, len(v.History))
	}
	// PutStatus after losing the lease grants a new one.
	must(t, a.PutStatus(ctx, stA))
	if v := load(t, b); len(v.Statuses) != 1 {
		t.Errorf("statuses after re-put: %v", v.Statuses)
	}
	must(t, a.Revoke(ctx))
	must(t, b.Revoke(ctx))
}

func testWatch(t *testing.T, c *testCluster) {
	a := openStore(t, c.endpoints(), "watch", "pg-a")
	b := openStore(t, c.endpoints(), "watch", "pg-b")
	wctx, cancel := context.WithCancel(context.Background())
	ch := b.Watch(wctx)
	expectSignal(t, ch, 5*time.Second, "establishment")

	// Frequent writes do not signal.
	ctx := ctxT(t, 20*time.Second)
	for range 3 {
		must(t, a.PutStatus(ctx, cluster.MemberStatus{Role: cluster.RoleReplica, UpdatedAt: time.Now()}))
		must(t, a.Register(ctx, cluster.MemberInfo{Host: "h", Port: 5432}))
	}
	expectQuiet(t, ch, 500*time.Millisecond, "status/members writes")

	ok, err := a.AcquireLeader(ctx)
	mustBool(t, ok, err, true, "A acquires")
	expectSignal(t, ch, 2*time.Second, "leader acquired")
	must(t, a.PutOptime(ctx, cluster.Optime{Position: cluster.Position{Timeline: 1, LSN: 1}}))
	expectQuiet(t, ch, 300*time.Millisecond, "optime write")
	must(t, a.ReleaseLeader(ctx))
	expectSignal(t, ch, 2*time.Second, "leader released")
	must(t, a.PutConfigIfAbsent(ctx, cluster.Config{TTL: time.Second}))
	expectSignal(t, ch, 2*time.Second, "config written")
	must(t, a.AppendHistory(ctx, cluster.HistoryEntry{Timeline: 2}))
	expectSignal(t, ch, 2*time.Second, "history appended")
	ok, err = a.ClaimInit(ctx)
	mustBool(t, ok, err, true, "A claims init")
	expectSignal(t, ch, 2*time.Second, "init claimed")
	// Lease expiry deletes keys too; a revoke of the leader's lease signals.
	ok, err = a.AcquireLeader(ctx)
	mustBool(t, ok, err, true, "A acquires again")
	expectSignal(t, ch, 2*time.Second, "leader acquired again")
	must(t, a.Revoke(ctx))
	expectSignal(t, ch, 2*time.Second, "leader's lease revoked")

	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			// one pending signal may still be buffered
			if _, ok := <-ch; ok {
				t.Fatal("watch channel still open after cancel")
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch channel not closed after cancel")
	}
	must(t, b.Revoke(ctxT(t, 5*time.Second)))
}

func testMoveLeaderAway(t *testing.T, c *testCluster) {
	s := openStore(t, c.endpoints(), "move", "pg-a")
	raw := c.raw()
	raftLeader := func() (int, uint64) {
		t.Helper()
		for i := range c.opts {
			st, err := raw.Status(ctxT(t, 5*time.Second), c.url(i))
			must(t, err)
			if st.Leader == st.Header.MemberId {
				return i, st.Header.MemberId
			}
		}
		t.Fatal("no raft leader")
		return -1, 0
	}
	li, lid := raftLeader()
	other := (li + 1) % len(c.opts)
	// Not the leader: no-op.
	must(t, s.MoveLeaderAway(ctxT(t, 5*time.Second), c.url(other)))
	if i, _ := raftLeader(); i != li {
		t.Fatalf("raft leader moved from %d to %d on a no-op call", li, i)
	}
	start := time.Now()
	must(t, s.MoveLeaderAway(ctxT(t, 5*time.Second), c.url(li)))
	st, err := raw.Status(ctxT(t, 5*time.Second), c.url(li))
	must(t, err)
	if st.Leader == lid || st.Leader == 0 {
		t.Fatalf("member %d still leads (leader %x) after MoveLeaderAway", li, st.Leader)
	}
	t.Logf("raft leadership moved from %x to %x in %v", lid, st.Leader, time.Since(start))
	// The store keeps working across the transfer.
	_, err = s.Load(ctxT(t, 5*time.Second))
	must(t, err)
}

// TestOutages stops members under running clients: a watch must recover
// after the member it talks to restarts, and with 2 of 3 members down every
// call must fail with ErrUnavailable within its deadline.
func TestOutages(t *testing.T) {
	c := startCluster(t, 3)

	// The watcher talks only to member 0.
	w := openStore(t, []string{c.url(0)}, "outage", "pg-w")
	a := openStore(t, []string{c.url(1), c.url(2)}, "outage", "pg-a")
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := w.Watch(wctx)
	expectSignal(t, ch, 5*time.Second, "establishment")

	took := c.stop(0)
	t.Logf("stopping a member with an open watch took %v", took)
	if took > embedCloseGrace {
		t.Errorf("Close took %v, want under %v", took, embedCloseGrace)
	}
	drain(ch)
	ok, err := a.AcquireLeader(ctxT(t, 5*time.Second))
	mustBool(t, ok, err, true, "A acquires while member 0 is down")
	c.start(0)
	c.waitReady(0)
	// The change made during the outage reaches the watcher (replayed by
	// the resumed watch, or as the re-establishment signal).
	expectSignal(t, ch, 10*time.Second, "after member restart")
	drain(ch)
	must(t, a.ReleaseLeader(ctxT(t, 5*time.Second)))
	expectSignal(t, ch, 5*time.Second, "change after member restart")

	// Now take the majority away.
	all := openStore(t, c.endpoints(), "outage", "pg-b")
	_, err = all.Lease(ctxT(t, 5*time.Second))
	must(t, err)
	c.stop(1)
	c.stop(2)
	const deadline = time.Second
	check := func(what string, f func(ctx context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		start := time.Now()
		err := f(ctx)
		el := time.Since(start)
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s without quorum: %v, want ErrUnavailable", what, err)
		}
		if el > deadline+returnLate {
			t.Errorf("%s without quorum took %v, deadline %v", what, el, deadline)
		}
	}
	check("Load", func(ctx context.Context) error { _, err := all.Load(ctx); return err })
	check("AcquireLeader", func(ctx context.Context) error { _, err := all.AcquireLeader(ctx); return err })
	check("KeepAlive", func(ctx context.Context) error { _, err := all.KeepAlive(ctx); return err })
	check("PutStatus", func(ctx context.Context) error { return all.PutStatus(ctx, cluster.MemberStatus{}) })
	check("PutOptime", func(ctx context.Context) error { return all.PutOptime(ctx, cluster.Optime{}) })
	check("AppendHistory", func(ctx context.Context) error { return all.AppendHistory(ctx, cluster.HistoryEntry{}) })
	check("ClaimInit", func(ctx context.Context) error { _, err := all.ClaimInit(ctx); return err })
	// The lone member is no raft leader, so there is nothing to move.
	must(t, all.MoveLeaderAway(ctxT(t, 2*time.Second), c.url(0)))
	// A store handle with no lease yet cannot get one either.
	fresh := openStore(t, c.endpoints(), "outage", "pg-c")
	check("Lease", func(ctx context.Context) error { _, err := fresh.Lease(ctx); return err })
}

// TestUnreachable: Open does not block on a dead store, and calls fail with
// ErrUnavailable (connection refused) within their deadline.
func TestUnreachable(t *testing.T) {
	ports := uniquePorts(t, 1)
	start := time.Now()
	s, err := Open(context.Background(), Options{
		Endpoints: []string{fmt.Sprintf("http://127.0.0.1:%d", ports[0])},
		Prefix:    "/holdfast", Cluster: "c", Member: "m", TTL: testTTL,
	})
	must(t, err)
	defer s.Close()
	if d := time.Since(start); d > returnLate {
		t.Fatalf("Open took %v against a dead endpoint", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err = s.Load(ctx)
	if !errors.Is(err, ErrUnavailable) || !strings.HasPrefix(err.Error(), "load cluster view: ") {
		t.Fatalf("Load against a dead endpoint: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > returnLate {
		t.Fatalf("Open and Load took %v with a 500ms deadline", d)
	}
	// Close ends a watch: its channel closes.
	wch := s.Watch(context.Background())
	must(t, s.Close())
	timeout := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-wch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatal("watch channel not closed after Close")
		}
	}
}

func TestOpenValidates(t *testing.T) {
	for _, o := range []Options{
		{Prefix: "/p", Cluster: "c", Member: "m"},
		{Endpoints: []string{"x:1"}, Prefix: "/p", Cluster: "C!", Member: "m"},
		{Endpoints: []string{"x:1"}, Prefix: "/p", Cluster: "c", Member: ""},
		{Endpoints: []string{"x:1"}, Prefix: "p", Cluster: "c", Member: "m"},
	} {
		if s, err := Open(context.Background(), o); err == nil {
			s.Close()
			t.Errorf("Open(%+v) succeeded", o)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want error
	}{
		{context.DeadlineExceeded, ErrUnavailable},
		{context.Canceled, nil},
		{errors.New("boom"), nil},
		{rpctypes.ErrLeaseNotFound, ErrLeaseLost},
		{rpctypes.ErrNoLeader, ErrUnavailable},
		{rpctypes.ErrTimeout, ErrUnavailable},
		{rpctypes.ErrGRPCNoLeader, ErrUnavailable},
		{status.Error(codes.Unavailable, "connection refused"), ErrUnavailable},
		{fmt.Errorf("x: %w", rpctypes.ErrLeaseNotFound), ErrLeaseLost},
		{rpctypes.ErrCompacted, nil},
	} {
		if got := classify(tc.err); got != tc.want {
			t.Errorf("classify(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	err := wrap("op", context.DeadlineExceeded)
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) || err.Error() != "op: consensus store unavailable: context deadline exceeded" {
		t.Errorf("wrap = %q", err)
	}
}

func TestConfigJSON(t *testing.T) {
	cfg := cluster.Config{TTL: 30 * time.Second, LoopInterval: 10 * time.Second, MaximumLagOnFailover: 1048576, PrimaryStartTimeout: 90 * time.Second, Paused: true}
	b, err := EncodeConfig(cfg)
	must(t, err)
	if want := `{"ttl":"30s","loop_interval":"10s","maximum_lag_on_failover":1048576,"primary_start_timeout":"1m30s","paused":true}`; string(b) != want {
		t.Errorf("encoded %s, want %s", b, want)
	}
	got, err := DecodeConfig(b)
	must(t, err)
	if got != cfg {
		t.Errorf("round trip %+v, want %+v", got, cfg)
	}
	got, err = DecodeConfig([]byte(`{"ttl": 4, "loop_interval": "250ms", "primary_start_timeout": 1.5}`))
	must(t, err)
	if got.TTL != 4*time.Second || got.LoopInterval != 250*time.Millisecond || got.PrimaryStartTimeout != 1500*time.Millisecond {
		t.Errorf("lenient decode = %+v", got)
	}
	for _, bad := range []string{`{"ttl":"4 parsecs"}`, `{"ttl":true}`, `not json`} {
		if _, err := DecodeConfig([]byte(bad)); err == nil {
			t.Errorf("DecodeConfig(%s) succeeded", bad)
		}
	}
	var raw map[string]any
	must(t, json.Unmarshal(b, &raw))
}
