package kubemaint

import (
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

func TestNextRolloutStep(t *testing.T) {
	now := time.Now()
	long := now.Add(-time.Minute)
	v := view(map[string]cluster.LSN{"pg-0": 1000, "pg-1": 1000, "pg-2": 990})
	pods := func(revs ...string) []RolloutPod {
		var ps []RolloutPod
		for i, r := range revs {
			ps = append(ps, RolloutPod{Name: "pg-" + string(rune('0'+i)), Revision: r, Ready: true, ReadySince: long})
		}
		return ps
	}
	paused := view(map[string]cluster.LSN{"pg-0": 1000, "pg-1": 1000, "pg-2": 990})
	paused.Config = &cluster.Config{Paused: true}
	pending := view(map[string]cluster.LSN{"pg-0": 1000, "pg-1": 1000, "pg-2": 990})
	pending.Switchover = &cluster.Switchover{Kind: cluster.KindSwitchover}
	notReady := pods("new", "old", "old")
	notReady[2].Ready = false
	fresh := pods("old", "old", "new")
	fresh[2].ReadySince = now
	for _, tc := range []struct {
		name string
		v    cluster.View
		pods []RolloutPod
		want RolloutStep
	}{
		{"all current", v, pods("new", "new", "new"), RolloutStep{Done: true}},
		{"replicas first, highest ordinal first", v, pods("old", "old", "old"), RolloutStep{Delete: "pg-2"}},
		{"then the next replica", v, pods("old", "old", "new"), RolloutStep{Delete: "pg-1"}},
		{"then one switchover to the most advanced updated replica", v, pods("old", "new", "new"), RolloutStep{SwitchoverTo: "pg-1"}},
		{"the switchover prefers a higher failover_priority to more WAL", withTag(v, "pg-2", cluster.TagFailoverPriority, "2"), pods("old", "new", "new"), RolloutStep{SwitchoverTo: "pg-2"}},
		{"a primary already current: no switchover", v, pods("new", "old", "new"), RolloutStep{Delete: "pg-1"}},
		{"paused", paused, pods("old", "old", "old"), RolloutStep{Wait: "the cluster is paused"}},
		{"a switchover pending", pending, pods("old", "old", "old"), RolloutStep{Wait: "a switchover is pending"}},
		{"a pod not ready stops it", v, notReady, RolloutStep{Wait: "pg-2 is not ready"}},
		{"a pod missing stops it", v, pods("old", "old"), RolloutStep{Wait: "2 of 3 pods exist"}},
		{"a recreated pod settles first", v, fresh, RolloutStep{Wait: "pg-2 just became ready"}},
	} {
		if got := NextRolloutStep(tc.v, "pg-0", 1<<20, "new", 3, tc.pods, now); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
	// A lagging replica holds the rollout.
	lag := view(map[string]cluster.LSN{"pg-0": 1 << 30, "pg-1": 1 << 30, "pg-2": 1})
	if got := NextRolloutStep(lag, "pg-0", 1<<20, "new", 3, pods("old", "old", "old"), now); got.Wait == "" {
		t.Errorf("lagging replica: %+v, want a wait", got)
	}
}
