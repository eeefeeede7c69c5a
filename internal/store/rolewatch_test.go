package store

import (
	"context"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// WatchRoles signals when a status appears, changes role or state, or
// disappears, and not when a status is rewritten with the same role and
// state (new WAL positions, messages, times).
func TestWatchRoles(t *testing.T) {
	c := startCluster(t, 1)
	a := openStore(t, c.endpoints(), "roles", "pg-a")
	b := openStore(t, c.endpoints(), "roles", "pg-b")
	wctx, cancel := context.WithCancel(context.Background())
	ch := b.WatchRoles(wctx)
	expectSignal(t, ch, 5*time.Second, "establishment")

	ctx := ctxT(t, 20*time.Second)
	st := cluster.MemberStatus{Role: cluster.RoleReplica, State: cluster.StateStreaming}
	must(t, a.PutStatus(ctx, st))
	expectSignal(t, ch, 2*time.Second, "status created")
	for i := range 3 {
		st.Position = cluster.Position{Timeline: 1, LSN: cluster.LSN(i + 1)}
		st.Message, st.UpdatedAt = "still streaming", time.Now()
		must(t, a.PutStatus(ctx, st))
	}
	ok, err := a.AcquireLeader(ctx)
	mustBool(t, ok, err, true, "A acquires")
	expectQuiet(t, ch, 500*time.Millisecond, "status rewrites with the same role and state, and the leader key")

	st.Role, st.State = cluster.RolePrimary, cluster.StateStarting
	must(t, a.PutStatus(ctx, st))
	expectSignal(t, ch, 2*time.Second, "role changed")
	st.State = cluster.StateRunning
	must(t, a.PutStatus(ctx, st))
	expectSignal(t, ch, 2*time.Second, "state changed")
	must(t, a.Revoke(ctx))
	expectSignal(t, ch, 2*time.Second, "status gone with its lease")

	cancel()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("role watch channel not closed after cancel")
		}
	}
}
