// Package kubepod is what an agent running in a Kubernetes pod does to its
// pod: it labels it with the member's role (so Services, PodDisruptionBudgets
// and people can select the primary) and records events on it.
//
// The role label is level-triggered: it is re-applied after every change
// and every labelResync even when nothing changed, so a label removed or
// overwritten by hand comes back. A member that becomes primary first
// relabels every other pod of its cluster still labelled primary as
// unhealthy (a frozen or partitioned old primary cannot do it itself), and
// labels itself primary only once that succeeded: two pods are never
// labelled primary by holdfast at once.
package kubepod

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/kubestore"
)

// Role label values.
const (
	RolePrimary   = "primary"
	RoleReplica   = "replica"
	RoleUnhealthy = "unhealthy"
)

// Timing of the labeler.
const (
	// labelResync re-applies an unchanged label (level-triggered).
	labelResync = 5 * time.Second
	// labelTimeout bounds one round of API calls.
	labelTimeout = 5 * time.Second
	// finalTimeout bounds the last "unhealthy" label on shutdown.
	finalTimeout = 3 * time.Second
	// labelFailureLogEvery is how often a label that keeps failing is
	// logged again. It is retried at every state (each loop) while the API
	// server is unreachable, and a warning per retry buried the agent's
	// own decisions in its log.
	labelFailureLogEvery = time.Minute
)

// failureLog decides which of a run of failures to log: the first, then
// one per labelFailureLogEvery; recovered ends the run.
type failureLog struct {
	failures int
	loggedAt time.Time
}

// failed counts a failure at now and reports whether to log it.
func (f *failureLog) failed(now time.Time) bool {
	f.failures++
	if f.failures == 1 || now.Sub(f.loggedAt) >= labelFailureLogEvery {
		f.loggedAt = now
		return true
	}
	return false
}

// recovered ends a run of failures and returns how many there were.
func (f *failureLog) recovered() int {
	n := f.failures
	f.failures = 0
	return n
}

// RoleOf is the label a member's state earns at now: primary only while it
// is the writable primary under a live lease, replica only while PostgreSQL
// answers as a standby streaming from the primary, unhealthy otherwise.
func RoleOf(s api.MemberState, now time.Time) string {
	switch {
	case api.IsPrimary(s, now):
		return RolePrimary
	case (s.Role == cluster.RoleReplica || s.Role == cluster.RoleStandbyNoLeader) &&
		!s.HoldsLeaderKey && s.PGRunning && s.PGReady && s.InRecovery && s.Streaming:
		return RoleReplica
	}
	return RoleUnhealthy
}

// LabelerOptions configure a Labeler.
type LabelerOptions struct {
	Client    kubernetes.Interface
	Namespace string
	Pod       string
	Cluster   string
	// Key is the role label's key, e.g. holdfast.io/role.
	Key    string
	Logger *slog.Logger
}

// Labeler keeps the pod's role label in step with the member's state.
type Labeler struct {
	o      LabelerOptions
	log    *slog.Logger
	latest chan api.MemberState
}

// NewLabeler returns a labeler; Run starts it.
func NewLabeler(o LabelerOptions) *Labeler {
	lg := o.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	return &Labeler{o: o, log: lg.With("component", "kubepod"), latest: make(chan api.MemberState, 1)}
}

// Observe hands the labeler the member's newest state. It never blocks: a
// state not yet consumed is replaced.
func (l *Labeler) Observe(s api.MemberState) {
	for {
		select {
		case l.latest <- s:
			return
		default:
		}
		select {
		case <-l.latest:
		default:
		}
	}
}

// Run applies the label until ctx ends, then labels the pod unhealthy (the
// agent is stopping: its PostgreSQL is going or gone).
func (l *Labeler) Run(ctx context.Context) {
	tick := time.NewTicker(labelResync)
	defer tick.Stop()
	var st api.MemberState
	var failing failureLog
	have, applied := false, ""
	for {
		select {
		case <-ctx.Done():
			c, cancel := context.WithTimeout(context.Background(), finalTimeout)
			if err := l.setOwn(c, RoleUnhealthy); err != nil {
				l.log.Warn("label the pod unhealthy on shutdown", "err", err)
			}
			cancel()
			return
		case st = <-l.latest:
			have = true
		case <-tick.C:
			applied = "" // level-triggered: apply again
		}
		if !have {
			continue
		}
		want := RoleOf(st, time.Now())
		if want == applied {
			continue
		}
		c, cancel := context.WithTimeout(ctx, labelTimeout)
		err := l.apply(c, want)
		cancel()
		if err != nil {
			if failing.failed(time.Now()) {
				l.log.Warn("label the pod (retried at each change, logged again once a minute while it fails)", "role", want, "failures", failing.failures, "err", err)
			}
			applied = ""
			continue
		}
		if n := failing.recovered(); n > 0 {
			l.log.Info("labelled the pod again", "role", want, "failures", n)
		}
		l.log.Debug("labelled the pod", "role", want)
		applied = want
	}
}

func (l *Labeler) apply(ctx context.Context, role string) error {
	if role == RolePrimary {
		if err := l.demoteOthers(ctx); err != nil {
			return err
		}
	}
	return l.setOwn(ctx, role)
}

// demoteOthers relabels every other pod of the cluster labelled primary.
func (l *Labeler) demoteOthers(ctx context.Context) error {
	sel := kubestore.LabelCluster + "=" + l.o.Cluster + "," + l.o.Key + "=" + RolePrimary
	pods, err := l.o.Client.CoreV1().Pods(l.o.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return fmt.Errorf("list pods labelled primary: %w", err)
	}
	for _, p := range pods.Items {
		if p.Name == l.o.Pod {
			continue
		}
		if err := l.set(ctx, p.Name, RoleUnhealthy); err != nil {
			return fmt.Errorf("relabel the old primary's pod %s: %w", p.Name, err)
		}
		l.log.Info("relabelled another pod still labelled primary", "pod", p.Name)
	}
	return nil
}

func (l *Labeler) setOwn(ctx context.Context, role string) error { return l.set(ctx, l.o.Pod, role) }

func (l *Labeler) set(ctx context.Context, pod, role string) error {
	return Label(ctx, l.o.Client, l.o.Namespace, pod, l.o.Key, role)
}

// Label sets pod's role label key to role.
func Label(ctx context.Context, cli kubernetes.Interface, ns, pod, key, role string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]string{key: role}}})
	if err != nil {
		return err
	}
	if _, err := cli.CoreV1().Pods(ns).Patch(ctx, pod, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("patch pod %s label %s=%s: %w", pod, key, role, err)
	}
	return nil
}

// Event records a Kubernetes event on the pod, for `kubectl describe pod`
// and `kubectl get events`. warning selects type Warning over Normal.
func Event(ctx context.Context, cli kubernetes.Interface, ns, pod, reason, message string, warning bool) error {
	typ := corev1.EventTypeNormal
	if warning {
		typ = corev1.EventTypeWarning
	}
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: pod + ".", Namespace: ns},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod, APIVersion: "v1"},
		Reason:         reason, Message: message, Type: typ,
		FirstTimestamp: now, LastTimestamp: now, Count: 1,
		Source: corev1.EventSource{Component: "holdfast"},
	}
	if _, err := cli.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("record event %s on pod %s: %w", reason, pod, err)
	}
	return nil
}

// NodeZone returns the topology.kubernetes.io/zone label of the node pod
// runs on ("" when the node has none).
func NodeZone(ctx context.Context, cli kubernetes.Interface, ns, pod string) (string, error) {
	p, err := cli.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read pod %s: %w", pod, err)
	}
	if p.Spec.NodeName == "" {
		return "", fmt.Errorf("read the zone of pod %s: it is not scheduled on a node", pod)
	}
	n, err := cli.CoreV1().Nodes().Get(ctx, p.Spec.NodeName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read node %s of pod %s: %w", p.Spec.NodeName, pod, err)
	}
	return n.Labels[corev1.LabelTopologyZone], nil
}
