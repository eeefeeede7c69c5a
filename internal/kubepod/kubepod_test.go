package kubepod

import (
	"context"
	"errors"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
)

func TestRoleOf(t *testing.T) {
	now := time.Now()
	primary := api.MemberState{Role: cluster.RolePrimary, State: cluster.StateRunning, PGRunning: true, PGReady: true,
		HoldsLeaderKey: true, LeaseValidFor: 4 * time.Second, LoopHeartbeat: now}
	replica := api.MemberState{Role: cluster.RoleReplica, State: cluster.StateStreaming, PGRunning: true, PGReady: true,
		InRecovery: true, Streaming: true}
	for _, tc := range []struct {
		name string
		s    api.MemberState
		want string
	}{
		{"primary", primary, RolePrimary},
		{"primary whose lease ran out", with(primary, func(s *api.MemberState) { s.LoopHeartbeat = now.Add(-5 * time.Second) }), RoleUnhealthy},
		{"primary without the key", with(primary, func(s *api.MemberState) { s.HoldsLeaderKey = false }), RoleUnhealthy},
		{"primary in recovery", with(primary, func(s *api.MemberState) { s.InRecovery = true }), RoleUnhealthy},
		{"primary whose PostgreSQL is down", with(primary, func(s *api.MemberState) { s.PGRunning = false }), RoleUnhealthy},
		{"streaming replica", replica, RoleReplica},
		{"standby while no leader", with(replica, func(s *api.MemberState) { s.Role = cluster.RoleStandbyNoLeader }), RoleReplica},
		{"replica not streaming", with(replica, func(s *api.MemberState) { s.Streaming = false }), RoleUnhealthy},
		{"replica not answering", with(replica, func(s *api.MemberState) { s.PGReady = false }), RoleUnhealthy},
		{"replica holding the key", with(replica, func(s *api.MemberState) { s.HoldsLeaderKey = true }), RoleUnhealthy},
		{"uninitialized", api.MemberState{Role: cluster.RoleUninitialized}, RoleUnhealthy},
		{"nothing known", api.MemberState{}, RoleUnhealthy},
	} {
		if got := RoleOf(tc.s, now); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func with(s api.MemberState, f func(*api.MemberState)) api.MemberState {
	f(&s)
	return s
}

// TestObserveNeverBlocks: the loop hands states over without waiting for
// the labeler, which keeps only the newest.
func TestObserveNeverBlocks(t *testing.T) {
	l := NewLabeler(LabelerOptions{})
	for i := range 100 {
		l.Observe(api.MemberState{Name: string(rune('a' + i%26))})
	}
	if got := (<-l.latest).Name; got != string(rune('a'+99%26)) {
		t.Fatalf("kept %q, want the newest", got)
	}
}

func pod(name string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "db", Labels: labels}}
}

// TestPrimaryDemotesOthersFirst: a member labelling itself primary first
// relabels another pod still labelled primary, and does not label itself
// when it cannot.
func TestPrimaryDemotesOthersFirst(t *testing.T) {
	key := "holdfast.io/role"
	cli := fake.NewClientset(
		pod("pg-0", map[string]string{"holdfast.io/cluster": "pg", key: "primary"}),
		pod("pg-1", map[string]string{"holdfast.io/cluster": "pg", key: "replica"}),
		pod("other-0", map[string]string{"holdfast.io/cluster": "other", key: "primary"}),
	)
	l := NewLabeler(LabelerOptions{Client: cli, Namespace: "db", Pod: "pg-1", Cluster: "pg", Key: key})
	get := func(name string) string {
		p, err := cli.CoreV1().Pods("db").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Labels[key]
	}

	fail := true
	cli.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if fail && a.(k8stesting.PatchAction).GetName() == "pg-0" {
			return true, nil, errors.New("injected")
		}
		return false, nil, nil
	})
	if err := l.apply(context.Background(), RolePrimary); err == nil {
		t.Fatal("labelled primary although the old primary's pod could not be relabelled")
	}
	if got := get("pg-1"); got != "replica" {
		t.Fatalf("pg-1 labelled %q after a failed demotion, want it unchanged", got)
	}
	fail = false
	if err := l.apply(context.Background(), RolePrimary); err != nil {
		t.Fatal(err)
	}
	if a, b, c := get("pg-0"), get("pg-1"), get("other-0"); a != "unhealthy" || b != "primary" || c != "primary" {
		t.Fatalf("labels pg-0=%s pg-1=%s other-0=%s, want unhealthy, primary and another cluster's untouched", a, b, c)
	}
}
