package kubemaint

import (
	"maps"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/holdfast/holdfast/internal/cluster"
)

func view(lsn map[string]cluster.LSN) cluster.View {
	v := cluster.View{Members: map[string]cluster.MemberInfo{}, Statuses: map[string]cluster.MemberStatus{}}
	for name, l := range lsn {
		v.Members[name] = cluster.MemberInfo{Name: name}
		st := cluster.MemberStatus{Name: name, Role: cluster.RoleReplica, State: cluster.StateStreaming, Streaming: true,
			Position: cluster.Position{Timeline: 1, LSN: l}}
		if name == "pg-0" {
			st.Role, st.State, st.Streaming = cluster.RolePrimary, cluster.StateRunning, false
		}
		v.Statuses[name] = st
	}
	return v
}

func TestDrainTarget(t *testing.T) {
	podNode := map[string]string{"pg-0": "n1", "pg-1": "n2", "pg-2": "n3"}
	nodes := func(n2, n3 Node) map[string]Node {
		return map[string]Node{"n1": {Draining: true, Why: "cordoned", KubeletVersion: "v1.36.0", Zone: "a"}, "n2": n2, "n3": n3}
	}
	v := view(map[string]cluster.LSN{"pg-0": 1000, "pg-1": 900, "pg-2": 1000})
	for _, tc := range []struct {
		name   string
		v      cluster.View
		nodes  map[string]Node
		want   string
		reason string
	}{
		{"least lag", v, nodes(Node{KubeletVersion: "v1.36.0"}, Node{KubeletVersion: "v1.36.0"}), "pg-2", ""},
		{"an upgraded node first", v, nodes(Node{KubeletVersion: "v1.37.0"}, Node{KubeletVersion: "v1.36.0"}), "pg-1", ""},
		{"numeric versions", v, nodes(Node{KubeletVersion: "v1.10.0"}, Node{KubeletVersion: "v1.9.9"}), "pg-1", ""},
		{"the primary's zone next", v, nodes(Node{KubeletVersion: "v1.36.0", Zone: "a"}, Node{KubeletVersion: "v1.36.0", Zone: "b"}), "pg-1", ""},
		{"never onto a draining node", v, nodes(Node{KubeletVersion: "v1.37.0", Draining: true, Why: "cordoned"}, Node{KubeletVersion: "v1.36.0"}), "pg-2", ""},
		{"none: both draining", v, nodes(Node{Draining: true, Why: "cordoned"}, Node{Draining: true, Why: "tainted ToBeDeletedByClusterAutoscaler"}), "", "pg-2: its node n3 is tainted ToBeDeletedByClusterAutoscaler"},
		{"a maintained node first", v, nodes(Node{KubeletVersion: "v1.36.0", Maintained: true}, Node{KubeletVersion: "v1.36.0", Zone: "a"}), "pg-1", ""},
		{"a newer kubelet before a maintained node", v, nodes(Node{KubeletVersion: "v1.36.0", Maintained: true}, Node{KubeletVersion: "v1.37.0"}), "pg-2", ""},
		{"failover_priority before an upgraded node", withTag(v, "pg-2", cluster.TagFailoverPriority, "2"), nodes(Node{KubeletVersion: "v1.37.0"}, Node{KubeletVersion: "v1.36.0"}), "pg-2", ""},
		{"failover_priority 0 never", withTag(v, "pg-2", cluster.TagFailoverPriority, "0"), nodes(Node{}, Node{}), "pg-1", ""},
		{"none: lagging", view(map[string]cluster.LSN{"pg-0": 1 << 30, "pg-1": 1, "pg-2": 2}), nodes(Node{}, Node{}), "", "bytes behind"},
	} {
		got, why := DrainTarget(tc.v, "pg-0", 1<<20, podNode, tc.nodes)
		if got != tc.want || !strings.Contains(why, tc.reason) {
			t.Errorf("%s: %q (%s), want %q (%s)", tc.name, got, why, tc.want, tc.reason)
		}
	}
}

func TestNodeOf(t *testing.T) {
	taints := DefaultDrainTaints()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"topology.kubernetes.io/zone": "z"}}}
	if got := NodeOf(n, taints); got.Draining || got.Zone != "z" {
		t.Fatalf("plain node: %+v", got)
	}
	n.Spec.Unschedulable = true
	if got := NodeOf(n, taints); !got.Draining || got.Why != "cordoned" {
		t.Fatalf("cordoned node: %+v", got)
	}
	n.Spec.Unschedulable = false
	n.Spec.Taints = []corev1.Taint{{Key: "karpenter.sh/disrupted", Effect: corev1.TaintEffectNoSchedule}}
	if got := NodeOf(n, taints); !got.Draining || !strings.Contains(got.Why, "karpenter") {
		t.Fatalf("tainted node: %+v", got)
	}
	n.Spec.Taints = []corev1.Taint{{Key: "dedicated", Effect: corev1.TaintEffectNoSchedule}}
	if got := NodeOf(n, taints); got.Draining {
		t.Fatalf("an unrelated taint drains: %+v", got)
	}
}

// withTag returns a copy of v with member name's tag k set to val.
func withTag(v cluster.View, name, k, val string) cluster.View {
	v.Members = maps.Clone(v.Members)
	m := v.Members[name]
	m.Tags = map[string]string{k: val}
	v.Members[name] = m
	return v
}

func TestDrainedNodes(t *testing.T) {
	now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	ann := `{"n1":"2026-12-06T09:00:00Z","n2":"2026-12-05T09:00:00Z","n3":"yesterday"}`
	got := DrainedNodes(ann, now.Add(-drainedMemory))
	if len(got) != 1 || !got["n1"].Equal(now.Add(-time.Hour)) {
		t.Fatalf("DrainedNodes = %v, want n1 only (n2 too old, n3 unreadable)", got)
	}
	for _, bad := range []string{"", "[]", "{not json"} {
		if got := DrainedNodes(bad, now); len(got) != 0 {
			t.Errorf("DrainedNodes(%q) = %v", bad, got)
		}
	}
}
