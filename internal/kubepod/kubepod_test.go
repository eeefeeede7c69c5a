package kubepod

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
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

// TestLabelFailuresLoggedOnce: a label that fails at every retry (the API
// server unreachable) is logged once, not at every retry, and its end is
// logged with the number of failures.
func TestLabelFailuresLoggedOnce(t *testing.T) {
	key := "holdfast.io/role"
	cli := fake.NewClientset(pod("pg-1", map[string]string{"holdfast.io/cluster": "pg", key: "replica"}))
	var mu sync.Mutex
	fail, patches := true, 0
	cli.PrependReactor("patch", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		patches++
		if fail {
			return true, nil, errors.New("connection refused (injected)")
		}
		return false, nil, nil
	})
	var logs lockedLog
	l := NewLabeler(LabelerOptions{Client: cli, Namespace: "db", Pod: "pg-1", Cluster: "pg", Key: key,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 30s; log:\n%s", what, logs.String())
			}
		}
	}
	unhealthy := api.MemberState{Role: cluster.RoleReplica}
	for i := 1; i <= 5; i++ {
		l.Observe(unhealthy)
		waitFor("a retry", func() bool { mu.Lock(); defer mu.Unlock(); return patches >= i })
	}
	if n := strings.Count(logs.String(), "label the pod"); n != 1 {
		t.Errorf("%d warnings for 5 failures, want 1:\n%s", n, logs.String())
	}
	mu.Lock()
	fail = false
	mu.Unlock()
	l.Observe(unhealthy)
	waitFor("the recovery logged", func() bool { return strings.Contains(logs.String(), "labelled the pod again") })
	if !strings.Contains(logs.String(), "failures=5") && !strings.Contains(logs.String(), "failures=6") {
		t.Errorf("the recovery does not count the failures:\n%s", logs.String())
	}
}

// lockedLog is a log buffer written by the labeler's goroutine.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestFailureLog(t *testing.T) {
	var f failureLog
	t0 := time.Now()
	for i, c := range []struct {
		at  time.Duration
		log bool
	}{{0, true}, {time.Second, false}, {59 * time.Second, false}, {61 * time.Second, true}, {62 * time.Second, false}} {
		if got := f.failed(t0.Add(c.at)); got != c.log {
			t.Errorf("failure %d at %v: log=%v, want %v", i+1, c.at, got, c.log)
		}
	}
	if n := f.recovered(); n != 5 {
		t.Errorf("recovered after %d failures, want 5", n)
	}
	if !f.failed(t0.Add(63 * time.Second)) {
		t.Error("the first failure of a new run is not logged")
	}
}
