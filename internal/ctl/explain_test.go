package ctl

import (
	"strings"
	"testing"

	"github.com/holdfast/holdfast/internal/cluster"
)

func TestExplain(t *testing.T) {
	st := func(role cluster.Role, state cluster.State, lsn cluster.LSN, msg string) cluster.MemberStatus {
		return cluster.MemberStatus{Role: role, State: state, Streaming: role == cluster.RoleReplica,
			Position: cluster.Position{Timeline: 2, LSN: lsn}, Message: msg}
	}
	v := cluster.View{
		Leader:  &cluster.Leader{Name: "pg-0"},
		Config:  &cluster.Config{MaximumLagOnFailover: 1 << 20},
		Members: map[string]cluster.MemberInfo{"pg-0": {Name: "pg-0"}, "pg-1": {Name: "pg-1"}, "pg-2": {Name: "pg-2", Tags: map[string]string{"nofailover": "true"}}, "pg-3": {Name: "pg-3"}},
		Statuses: map[string]cluster.MemberStatus{
			"pg-0": st(cluster.RolePrimary, cluster.StateRunning, 100<<20, "primary"),
			"pg-1": st(cluster.RoleReplica, cluster.StateStreaming, 100<<20, "streaming from pg-0"),
			"pg-2": st(cluster.RoleReplica, cluster.StateStreaming, 100<<20, "streaming from pg-0"),
		},
	}
	got := strings.Join(Explain(v, []string{"1m ago, pg-0: DrainWaiting: node n1 is cordoned but the primary cannot move"}), "\n")
	for _, want := range []string{
		"pg-0 is the primary (timeline 2)",
		"pg-1 can take over (its last decision: streaming from pg-0).",
		"pg-2 cannot take over: it is tagged nofailover",
		"pg-3 cannot take over: it is not running.",
		"DrainWaiting: node n1 is cordoned",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("explain lacks %q:\n%s", want, got)
		}
	}

	v.Leader = nil
	v.Config.Paused = true
	v.Statuses["pg-1"] = st(cluster.RoleReplica, cluster.StateStreaming, 1, "no leader; not promoting: paused")
	delete(v.Statuses, "pg-0")
	got = strings.Join(Explain(v, nil), "\n")
	for _, want := range []string{"The cluster is paused", "No member holds the leader key", "pg-0 cannot take over: it is not running"} {
		if !strings.Contains(got, want) {
			t.Errorf("explain lacks %q:\n%s", want, got)
		}
	}
}

// TestExplainPreference: the members' promotion preference, where a
// switchover without a target would go, and what maintenance waits for.
func TestExplainPreference(t *testing.T) {
	pos := func(lsn cluster.LSN) cluster.Position { return cluster.Position{Timeline: 1, LSN: lsn} }
	v := cluster.View{
		Leader: &cluster.Leader{Name: "pg-0"},
		Config: &cluster.Config{MaximumLagOnFailover: 1 << 20},
		Members: map[string]cluster.MemberInfo{
			"pg-0": {Name: "pg-0", Tags: map[string]string{"zone": "a"}},
			"pg-1": {Name: "pg-1", Tags: map[string]string{"zone": "b"}},
			"pg-2": {Name: "pg-2", Tags: map[string]string{"zone": "b", "failover_priority": "3"}},
		},
		Statuses: map[string]cluster.MemberStatus{
			"pg-0": {Role: cluster.RolePrimary, State: cluster.StateRunning, Position: pos(100), Waiting: "drain of node n1 (cordoned) waits"},
			"pg-1": {Role: cluster.RoleReplica, State: cluster.StateStreaming, Streaming: true, Position: pos(100)},
			"pg-2": {Role: cluster.RoleReplica, State: cluster.StateStreaming, Streaming: true, Position: pos(90)},
		},
	}
	got := strings.Join(Explain(v, nil), "\n")
	for _, want := range []string{
		"pg-1 can take over [zone b].",
		"pg-2 can take over [failover_priority 3, zone b].",
		"A switchover without a named target would go to pg-2",
		"pg-0: drain of node n1 (cordoned) waits.",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("explain lacks %q:\n%s", want, got)
		}
	}
}
