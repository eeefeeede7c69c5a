package kubemaint

import (
	"context"
	"fmt"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/kubestore"
)

// The StatefulSet controller's label of a pod's revision.
const revisionLabel = "controller-revision-hash"

// StatefulSet annotations of a supervised rollout: AnnRollout
// "supervised" (the chart's rollout.supervised) makes the primary's agent
// wait before the switchover until AnnApproved names the update revision
// (holdfast ctl rollout --approve).
const (
	AnnRollout        = "holdfast.io/rollout"
	AnnApproved       = "holdfast.io/rollout-approved"
	RolloutSupervised = "supervised"
)

// AwaitingApproval is the wait reason of a supervised rollout before its
// switchover.
const AwaitingApproval = "waiting for approval of the switchover: holdfast ctl rollout --approve"

// Timing of rollouts.
const (
	// rolloutStall: a pod of the new revision not ready after this long
	// stops the rollout (it stays stopped until the pod is ready), with an
	// event; the remaining pods are left untouched.
	rolloutStall = 5 * time.Minute
	// settleAfterReady: a recreated member must stay ready and streaming
	// this long before the next pod is rolled.
	settleAfterReady = 5 * time.Second
)

// RolloutPod is what the rollout step needs of one member's pod.
type RolloutPod struct {
	Name     string
	Revision string
	Ready    bool
	Deleting bool
	// ReadySince is when the pod became ready (zero when not ready).
	ReadySince time.Time
}

// RolloutStep is what the leader does next in a role-aware rollout.
type RolloutStep struct {
	// Delete is the pod to delete (the StatefulSet, with the OnDelete
	// strategy, recreates it at the update revision); "" for none.
	Delete string
	// SwitchoverTo is the member to hand the primary over to; "" for none.
	SwitchoverTo string
	// Wait says why nothing happens now ("" when done or acting).
	Wait string
	// Done: every pod runs the update revision.
	Done bool
}

// NextRolloutStep decides the next step of a rollout to revision, run by
// the primary (leader): replicas one at a time, each back, ready and
// streaming within the lag limit before the next; then one switchover to
// an updated replica; then (by the new primary) the old primary. Nothing
// moves while any member is not ready or a switchover is pending, so a new
// revision whose pods never become ready stops the rollout with the rest
// untouched. It is a pure function of the view, the pods and now.
func NextRolloutStep(v cluster.View, leader string, maxLag int64, revision string, replicas int, pods []RolloutPod, now time.Time) RolloutStep {
	var outdated []RolloutPod
	for _, p := range pods {
		if p.Revision != revision {
			outdated = append(outdated, p)
		}
	}
	if len(outdated) == 0 {
		return RolloutStep{Done: true}
	}
	if v.Config != nil && v.Config.Paused {
		return RolloutStep{Wait: "the cluster is paused"}
	}
	if v.Switchover != nil {
		return RolloutStep{Wait: "a switchover is pending"}
	}
	if len(pods) < replicas {
		return RolloutStep{Wait: fmt.Sprintf("%d of %d pods exist", len(pods), replicas)}
	}
	for _, p := range pods {
		switch {
		case p.Deleting:
			return RolloutStep{Wait: p.Name + " is being deleted"}
		case !p.Ready:
			return RolloutStep{Wait: p.Name + " is not ready"}
		case now.Sub(p.ReadySince) < settleAfterReady:
			return RolloutStep{Wait: p.Name + " just became ready"}
		}
		if p.Name == leader {
			continue
		}
		if why := cluster.CandidateProblem(v, p.Name, leader, maxLag, true); why != "" {
			return RolloutStep{Wait: p.Name + ": " + why}
		}
	}
	// Replicas first, highest ordinal first (as the StatefulSet would).
	slices.SortFunc(outdated, func(a, b RolloutPod) int {
		x, _ := cluster.Ordinal(a.Name)
		y, _ := cluster.Ordinal(b.Name)
		return y - x
	})
	for _, p := range outdated {
		if p.Name != leader {
			return RolloutStep{Delete: p.Name}
		}
	}
	// Only the primary is left: hand over to an updated replica.
	// The operator's preference first (priority, then the primary's
	// zone), then the most WAL: the target receives the last WAL anyway.
	var updated []string
	for _, p := range pods {
		if p.Name != leader && p.Revision == revision {
			updated = append(updated, p.Name)
		}
	}
	best := cluster.PreferredTarget(v, leader, updated)
	if best == "" {
		return RolloutStep{Wait: "no replica runs the new revision to switch over to"}
	}
	return RolloutStep{SwitchoverTo: best}
}

// Roller runs role-aware rollouts of the StatefulSet (OnDelete strategy)
// from the primary.
type Roller struct {
	o           WatcherOptions
	sts         string
	waitingFrom time.Time
	lastWait    string
	stalledSent bool
}

// newRoller returns a roller for the StatefulSet owning the pod; the
// watcher calls Check on its schedule.
func newRoller(o WatcherOptions) *Roller { return &Roller{o: o} }

// Check does at most one rollout step.
func (r *Roller) Check(ctx context.Context, w *Watcher) error {
	st := r.o.Member.State()
	if !api.IsPrimary(st, time.Now()) {
		r.waitingFrom, r.lastWait = time.Time{}, ""
		return nil
	}
	if err := w.own(ctx); err != nil {
		return err
	}
	r.sts = w.sts
	if r.sts == "" {
		return nil // not in a StatefulSet: nothing to roll
	}
	set, err := r.o.Client.AppsV1().StatefulSets(r.o.Namespace).Get(ctx, r.sts, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read StatefulSet %s: %w", r.sts, err)
	}
	if set.Spec.UpdateStrategy.Type != appsv1.OnDeleteStatefulSetStrategyType || set.Status.UpdateRevision == "" {
		return nil // the StatefulSet controller rolls the pods itself
	}
	pods, err := r.pods(ctx)
	if err != nil {
		return err
	}
	v, err := r.o.Load(ctx)
	if err != nil {
		return err
	}
	replicas := 1
	if set.Spec.Replicas != nil {
		replicas = int(*set.Spec.Replicas)
	}
	step := NextRolloutStep(v, st.Name, st.MaxLagOnFailover, set.Status.UpdateRevision, replicas, pods, time.Now())
	if step.SwitchoverTo != "" && set.Annotations[AnnRollout] == RolloutSupervised && set.Annotations[AnnApproved] != set.Status.UpdateRevision {
		step = RolloutStep{Wait: AwaitingApproval}
	}
	switch {
	case step.Done:
		r.waitingFrom, r.lastWait, r.stalledSent = time.Time{}, "", false
	case step.Wait != "":
		if step.Wait != r.lastWait {
			r.waitingFrom, r.lastWait, r.stalledSent = time.Now(), step.Wait, false
			w.log.Info("rollout waits", "revision", set.Status.UpdateRevision, "why", step.Wait)
			if step.Wait == AwaitingApproval {
				w.event(ctx, "RolloutAwaitingApproval", fmt.Sprintf("replicas run revision %s; %s", set.Status.UpdateRevision, AwaitingApproval), false)
			}
		} else if !r.stalledSent && step.Wait != AwaitingApproval && time.Since(r.waitingFrom) > rolloutStall {
			r.stalledSent = true
			w.event(ctx, "RolloutStalled", fmt.Sprintf("rollout to revision %s stopped: %s for %v", set.Status.UpdateRevision, step.Wait, rolloutStall), true)
		}
	case step.Delete != "":
		w.log.Info("rollout: recreating a replica at the new revision", "pod", step.Delete, "revision", set.Status.UpdateRevision)
		if err := r.o.Client.CoreV1().Pods(r.o.Namespace).Delete(ctx, step.Delete, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("delete pod %s for the rollout: %w", step.Delete, err)
		}
		w.event(ctx, "RolloutReplica", fmt.Sprintf("recreating %s at revision %s", step.Delete, set.Status.UpdateRevision), false)
	case step.SwitchoverTo != "":
		w.log.Info("rollout: switching over to an updated replica", "to", step.SwitchoverTo, "revision", set.Status.UpdateRevision)
		if _, err := r.o.Member.Switchover(ctx, api.SwitchoverRequest{Leader: st.Name, Candidate: step.SwitchoverTo}); err != nil {
			return fmt.Errorf("switch over to %s for the rollout: %w", step.SwitchoverTo, err)
		}
		w.event(ctx, "RolloutSwitchover", fmt.Sprintf("switching over to %s (revision %s) before recreating the primary", step.SwitchoverTo, set.Status.UpdateRevision), false)
	}
	return nil
}

// pods reads the cluster's member pods for the rollout.
func (r *Roller) pods(ctx context.Context) ([]RolloutPod, error) {
	list, err := r.o.Client.CoreV1().Pods(r.o.Namespace).List(ctx, metav1.ListOptions{LabelSelector: kubestore.LabelCluster + "=" + r.o.Cluster})
	if err != nil {
		return nil, fmt.Errorf("list the cluster's pods: %w", err)
	}
	var out []RolloutPod
	for _, p := range list.Items {
		owned := false
		for _, ref := range p.OwnerReferences {
			owned = owned || (ref.Kind == "StatefulSet" && ref.Name == r.sts)
		}
		if !owned {
			continue
		}
		rp := RolloutPod{Name: p.Name, Revision: p.Labels[revisionLabel], Deleting: p.DeletionTimestamp != nil}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				rp.Ready, rp.ReadySince = true, c.LastTransitionTime.Time
			}
		}
		out = append(out, rp)
	}
	return out, nil
}
