// Package kubemaint is node maintenance done by the agents themselves: the
// member holding the leader key watches the Node its pod runs on, and when
// that node is cordoned or tainted for removal it hands the primary over
// (a planned switchover, nothing lost) to a streaming, caught-up replica on
// a node that is not being drained — before the eviction reaches it. The
// primary's PodDisruptionBudget keeps evicting the primary's pod blocked
// until its role label says replica; the drain then proceeds by itself.
//
// The choice of target (DrainTarget) is a pure function of the cluster view
// and the nodes; Watcher does the reading and the asking.
package kubemaint

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/kubepod"
	"github.com/holdfast/holdfast/internal/kubestore"
)

// DefaultDrainTaints are the taints that mean "this node is going away":
// a cordon's, the cluster autoscaler's and Karpenter's (old and new).
func DefaultDrainTaints() []string {
	return []string{"node.kubernetes.io/unschedulable", "ToBeDeletedByClusterAutoscaler", "karpenter.sh/disruption", "karpenter.sh/disrupted"}
}

// Timing of the watcher.
const (
	// checkInterval is how often the leader looks at its node.
	checkInterval = 2 * time.Second
	// callTimeout bounds one round of API calls.
	callTimeout = 5 * time.Second
	// placementEvery is how often the primary reads the nodes of every
	// member (to record the draining ones, AnnDrainedNodes) while its own
	// node is not draining; every round while it is.
	placementEvery = 10 * time.Second
	// waitingEventEvery rate-limits the event saying a drain waits.
	waitingEventEvery = time.Minute
	// askAgainAfter: a switchover asked for that has not happened by then
	// (the candidate failed, the request was cancelled) is asked again.
	askAgainAfter = 30 * time.Second
	// drainedMemory is how long a node seen draining counts as
	// maintained (AnnDrainedNodes): longer than a node pool's
	// upgrade, shorter than the time between two upgrades.
	drainedMemory = 12 * time.Hour
)

// AnnDrainedNodes is the StatefulSet annotation recording, as JSON
// {"node": "RFC 3339 time"}, the nodes of the cluster's pods the primary's
// agent saw cordoned or tainted for removal. Such a node, schedulable
// again, has been through its maintenance (an upgrade, a reboot), so a
// later drain prefers it as the target: a rolling upgrade of a node pool
// then never moves the primary onto a node still waiting for its turn
// when an upgraded one can take it, even when the kubelet version did not
// change.
const AnnDrainedNodes = "holdfast.io/drained-nodes"

// nodeGone is Node.Why for a node the API server no longer knows.
const nodeGone = "gone"

// Node is what the target choice needs of a Node.
type Node struct {
	// Draining: cordoned, or tainted with one of the drain taints.
	Draining bool
	Why      string
	// KubeletVersion ranks nodes: a node already upgraded is preferred,
	// so a rolling upgrade moves the primary at most once per node.
	KubeletVersion string
	Zone           string
	// Maintained: this node was seen draining within drainedMemory, and
	// it is schedulable again (AnnDrainedNodes).
	Maintained bool
}

// NodeOf reads a Node.
func NodeOf(n *corev1.Node, drainTaints []string) Node {
	out := Node{KubeletVersion: n.Status.NodeInfo.KubeletVersion, Zone: n.Labels[corev1.LabelTopologyZone]}
	if n.Spec.Unschedulable {
		out.Draining, out.Why = true, "cordoned"
	}
	for _, t := range n.Spec.Taints {
		if slices.Contains(drainTaints, t.Key) {
			out.Draining = true
			if out.Why == "" {
				out.Why = "tainted " + t.Key
			}
		}
	}
	return out
}

// DrainTarget chooses the member to hand the primary over to when leader's
// node drains: a member that could take over in a planned switchover
// (cluster.CandidateProblem) whose pod runs on a node that is not being
// drained; among those, the highest failover_priority (the operator's
// word), then the newest kubelet and a node that has been maintained
// (already upgraded: a rolling upgrade then moves the primary at most once
// per node that hosted it), then the leader's zone, then the least lag,
// then the name. "" and the reason when
// there is none.
func DrainTarget(v cluster.View, leader string, maxLag int64, podNode map[string]string, nodes map[string]Node) (string, string) {
	type cand struct {
		name    string
		prio    int
		version string
		maint   bool
		sameZ   bool
		lsn     cluster.LSN
	}
	var cs []cand
	var why []string
	zone := nodes[podNode[leader]].Zone
	for _, name := range slices.Sorted(maps.Keys(v.Members)) {
		if name == leader {
			continue
		}
		if p := cluster.CandidateProblem(v, name, leader, maxLag, true); p != "" {
			why = append(why, name+": "+p)
			continue
		}
		node, ok := podNode[name]
		if !ok {
			why = append(why, name+": its pod is not scheduled")
			continue
		}
		if n := nodes[node]; n.Draining {
			why = append(why, fmt.Sprintf("%s: its node %s is %s", name, node, n.Why))
			continue
		}
		cs = append(cs, cand{name, v.Members[name].FailoverPriority(), nodes[node].KubeletVersion, nodes[node].Maintained, zone != "" && nodes[node].Zone == zone, v.Statuses[name].Position.LSN})
	}
	if len(cs) == 0 {
		if len(why) == 0 {
			return "", "there is no other member"
		}
		return "", "no replica can take over: " + strings.Join(why, "; ")
	}
	slices.SortFunc(cs, func(a, b cand) int {
		if c := cmp.Compare(b.prio, a.prio); c != 0 {
			return c
		}
		if c := compareVersions(b.version, a.version); c != 0 {
			return c
		}
		if a.maint != b.maint {
			if a.maint {
				return -1
			}
			return 1
		}
		if a.sameZ != b.sameZ {
			if a.sameZ {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(b.lsn, a.lsn); c != 0 {
			return c
		}
		return cmp.Compare(a.name, b.name)
	})
	return cs[0].name, ""
}

// compareVersions orders kubelet versions like "v1.37.2" numerically; an
// unparsable part compares as text.
func compareVersions(a, b string) int {
	pa := strings.FieldsFunc(strings.TrimPrefix(a, "v"), func(r rune) bool { return r == '.' || r == '-' || r == '+' })
	pb := strings.FieldsFunc(strings.TrimPrefix(b, "v"), func(r rune) bool { return r == '.' || r == '-' || r == '+' })
	for i := 0; i < len(pa) && i < len(pb); i++ {
		var x, y int
		_, ex := fmt.Sscanf(pa[i], "%d", &x)
		_, ey := fmt.Sscanf(pb[i], "%d", &y)
		if ex == nil && ey == nil {
			if c := cmp.Compare(x, y); c != 0 {
				return c
			}
			continue
		}
		if c := cmp.Compare(pa[i], pb[i]); c != 0 {
			return c
		}
	}
	return cmp.Compare(len(pa), len(pb))
}

// Member is what the watcher needs of its agent: its state and the
// planned switchover the API offers.
type Member interface {
	State() api.MemberState
	Switchover(ctx context.Context, r api.SwitchoverRequest) (api.Result, error)
}

// WatcherOptions configure a Watcher.
type WatcherOptions struct {
	Client    kubernetes.Interface
	Namespace string
	Pod       string
	Cluster   string
	Member    Member
	Load      func(ctx context.Context) (cluster.View, error)
	// DrainTaints are the taint keys that mean "this node is going away"
	// (config: kubernetes.drain_taints); nil: DefaultDrainTaints.
	DrainTaints []string
	// OnWait is told what a drain of this primary's node waits for (a
	// sentence), and "" once nothing waits; nil: not told.
	OnWait func(why string)
	Logger *slog.Logger
}

// Watcher hands the primary over when its node drains, and rolls the
// StatefulSet's pods to a new revision in a role-aware order (Roller).
type Watcher struct {
	o          WatcherOptions
	roller     *Roller
	log        *slog.Logger
	node       string    // the node this pod runs on (own)
	sts        string    // the StatefulSet owning this pod (own)
	waiting    string    // what OnWait was last told
	placedAt   time.Time // when placement last ran
	lastWait   time.Time
	lastTarget string
	askedAt    time.Time
}

// NewWatcher returns a watcher; Run starts it.
func NewWatcher(o WatcherOptions) *Watcher {
	lg := o.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	if o.DrainTaints == nil {
		o.DrainTaints = DefaultDrainTaints()
	}
	return &Watcher{o: o, roller: newRoller(o), log: lg.With("component", "kubemaint")}
}

// Run checks every checkInterval until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	t := time.NewTicker(checkInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c, cancel := context.WithTimeout(ctx, callTimeout)
		if err := w.check(c); err != nil {
			w.log.Warn("node maintenance check", "err", err)
		}
		cancel()
		c, cancel = context.WithTimeout(ctx, callTimeout)
		if err := w.roller.Check(c, w); err != nil {
			w.log.Warn("rollout check", "err", err)
		}
		cancel()
	}
}

func (w *Watcher) check(ctx context.Context) (err error) {
	st := w.o.Member.State()
	waiting := ""
	defer func() {
		if err == nil { // a failed round leaves the last word standing
			w.setWaiting(waiting)
		}
	}()
	if !api.IsPrimary(st, time.Now()) || st.Paused || st.ScheduledSwitchover != nil {
		w.lastTarget = ""
		return nil
	}
	if err := w.own(ctx); err != nil {
		return err
	}
	n, err := w.o.Client.CoreV1().Nodes().Get(ctx, w.node, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read node %s: %w", w.node, err)
	}
	self := NodeOf(n, w.o.DrainTaints)
	if !self.Draining && time.Since(w.placedAt) < placementEvery {
		w.lastTarget = ""
		return nil
	}
	podNode, nodes, recorded, err := w.placement(ctx)
	if err != nil {
		return err
	}
	w.placedAt = time.Now()
	w.recordDrained(ctx, nodes, recorded)
	if !self.Draining {
		w.lastTarget = ""
		return nil
	}
	v, err := w.o.Load(ctx)
	if err != nil {
		return err
	}
	if v.Switchover != nil {
		return nil // one request at a time
	}
	target, why := DrainTarget(v, st.Name, st.MaxLagOnFailover, podNode, nodes)
	if target == "" {
		waiting = fmt.Sprintf("drain of node %s (%s) waits: the primary cannot move: %s (to move it anyway: holdfast ctl switchover --to <member>)", w.node, self.Why, why)
		if time.Since(w.lastWait) >= waitingEventEvery {
			w.lastWait = time.Now()
			msg := fmt.Sprintf("node %s is %s but the primary cannot move: %s", w.node, self.Why, why)
			w.log.Warn("drain waits", "reason", msg)
			w.event(ctx, "DrainWaiting", msg, true)
		}
		return nil
	}
	if target == w.lastTarget && time.Since(w.askedAt) < askAgainAfter {
		return nil // asked already; the switchover is under way
	}
	msg := fmt.Sprintf("node %s is %s: switching over to %s on node %s", w.node, self.Why, target, podNode[target])
	w.log.Info("drain: handing the primary over", "node", w.node, "why", self.Why, "to", target)
	if _, err := w.o.Member.Switchover(ctx, api.SwitchoverRequest{Leader: st.Name, Candidate: target}); err != nil {
		return fmt.Errorf("switch over to %s for the drain of %s: %w", target, w.node, err)
	}
	w.lastTarget, w.askedAt = target, time.Now()
	w.event(ctx, "DrainSwitchover", msg, false)
	return nil
}

// DrainedNodes reads AnnDrainedNodes: the nodes recorded at or after
// since. A value it cannot read is an empty record (the preference is
// lost, nothing else).
func DrainedNodes(ann string, since time.Time) map[string]time.Time {
	var raw map[string]string
	out := map[string]time.Time{}
	if json.Unmarshal([]byte(ann), &raw) != nil {
		return out
	}
	for n, s := range raw {
		if t, err := time.Parse(time.RFC3339, s); err == nil && !t.Before(since) {
			out[n] = t
		}
	}
	return out
}

// recordDrained adds to the StatefulSet's AnnDrainedNodes every node of
// the cluster's pods that drains now and is not recorded yet (recorded:
// the current record, already without entries older than drainedMemory,
// which the patch drops). A failure is only logged: it costs the
// preference for upgraded nodes, nothing else.
func (w *Watcher) recordDrained(ctx context.Context, nodes map[string]Node, recorded map[string]time.Time) {
	if w.sts == "" {
		return
	}
	now := time.Now()
	rec := map[string]string{}
	for n, t := range recorded {
		rec[n] = t.UTC().Format(time.RFC3339)
	}
	added := false
	for name, n := range nodes {
		if _, ok := recorded[name]; !ok && n.Draining && n.Why != nodeGone {
			rec[name] = now.UTC().Format(time.RFC3339)
			added = true
		}
	}
	if !added {
		return
	}
	val, err := json.Marshal(rec)
	if err == nil {
		var patch []byte
		patch, err = json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{AnnDrainedNodes: string(val)}}})
		if err == nil {
			_, err = w.o.Client.AppsV1().StatefulSets(w.o.Namespace).Patch(ctx, w.sts, types.MergePatchType, patch, metav1.PatchOptions{})
		}
	}
	if err != nil {
		w.log.Warn("could not record the draining nodes on the StatefulSet", "statefulset", w.sts, "err", err)
	}
}

// setWaiting tells OnWait, on changes only.
func (w *Watcher) setWaiting(why string) {
	if w.o.OnWait != nil && why != w.waiting {
		w.o.OnWait(why)
	}
	w.waiting = why
}

// own reads, once, what never changes in the pod's life: its node and
// the StatefulSet owning it ("" when none).
func (w *Watcher) own(ctx context.Context) error {
	if w.node != "" {
		return nil
	}
	p, err := w.o.Client.CoreV1().Pods(w.o.Namespace).Get(ctx, w.o.Pod, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read own pod: %w", err)
	}
	if p.Spec.NodeName == "" {
		return fmt.Errorf("own pod %s is not scheduled on a node", w.o.Pod)
	}
	for _, ref := range p.OwnerReferences {
		if ref.Kind == "StatefulSet" {
			w.sts = ref.Name
		}
	}
	w.node = p.Spec.NodeName
	return nil
}

// placement maps the cluster's pods to their nodes, reads those nodes,
// and returns the StatefulSet's record of drained nodes (AnnDrainedNodes,
// entries within drainedMemory), marking those schedulable again as
// maintained.
func (w *Watcher) placement(ctx context.Context) (map[string]string, map[string]Node, map[string]time.Time, error) {
	pods, err := w.o.Client.CoreV1().Pods(w.o.Namespace).List(ctx, metav1.ListOptions{LabelSelector: kubestore.LabelCluster + "=" + w.o.Cluster})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("list the cluster's pods: %w", err)
	}
	podNode := map[string]string{}
	nodes := map[string]Node{}
	for _, p := range pods.Items {
		if p.Spec.NodeName == "" || p.DeletionTimestamp != nil {
			continue
		}
		podNode[p.Name] = p.Spec.NodeName
		if _, ok := nodes[p.Spec.NodeName]; ok {
			continue
		}
		n, err := w.o.Client.CoreV1().Nodes().Get(ctx, p.Spec.NodeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			nodes[p.Spec.NodeName] = Node{Draining: true, Why: nodeGone}
			continue
		}
		if err != nil {
			return nil, nil, nil, fmt.Errorf("read node %s: %w", p.Spec.NodeName, err)
		}
		nodes[p.Spec.NodeName] = NodeOf(n, w.o.DrainTaints)
	}
	recorded := map[string]time.Time{}
	if w.sts != "" {
		set, err := w.o.Client.AppsV1().StatefulSets(w.o.Namespace).Get(ctx, w.sts, metav1.GetOptions{})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("read StatefulSet %s: %w", w.sts, err)
		}
		recorded = DrainedNodes(set.Annotations[AnnDrainedNodes], time.Now().Add(-drainedMemory))
		for name := range recorded {
			if n, ok := nodes[name]; ok && !n.Draining {
				n.Maintained = true
				nodes[name] = n
			}
		}
	}
	return podNode, nodes, recorded, nil
}

func (w *Watcher) event(ctx context.Context, reason, msg string, warning bool) {
	if err := kubepod.Event(ctx, w.o.Client, w.o.Namespace, w.o.Pod, reason, msg, warning); err != nil {
		w.log.Warn("record event", "reason", reason, "err", err)
	}
}
