package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/kubemaint"
	"github.com/holdfast/holdfast/internal/kubestore"
)

// Rollout prints the progress of the cluster's StatefulSet rollout (the
// revision of each member's pod, its role and readiness) and, with
// approve, approves the switchover of a supervised rollout at the
// StatefulSet's update revision. Kubernetes targets only.
func (t Target) Rollout(ctx context.Context, v cluster.View, approve bool, w io.Writer) error {
	if t.Kube == nil {
		return errors.New("ctl rollout: rollouts are Kubernetes StatefulSet rollouts: pass --kube")
	}
	cli, err := kubestore.NewClient(t.Kube.Kubeconfig)
	if err != nil {
		return err
	}
	sel := metav1.ListOptions{LabelSelector: kubestore.LabelCluster + "=" + t.Cluster}
	sets, err := cli.AppsV1().StatefulSets(t.Kube.Namespace).List(ctx, sel)
	if err != nil {
		return fmt.Errorf("ctl rollout: list StatefulSets in %s: %w", t.Kube.Namespace, err)
	}
	if len(sets.Items) != 1 {
		return fmt.Errorf("ctl rollout: %d StatefulSets of cluster %s in %s, want 1", len(sets.Items), t.Cluster, t.Kube.Namespace)
	}
	set := sets.Items[0]
	rev := set.Status.UpdateRevision
	if approve {
		patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{kubemaint.AnnApproved: rev}}})
		if err != nil {
			return err
		}
		if _, err := cli.AppsV1().StatefulSets(t.Kube.Namespace).Patch(ctx, set.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("ctl rollout --approve: annotate StatefulSet %s: %w", set.Name, err)
		}
		fmt.Fprintf(w, "approved the switchover of the rollout to revision %s\n", rev)
		if set.Annotations == nil {
			set.Annotations = map[string]string{}
		}
		set.Annotations[kubemaint.AnnApproved] = rev
	}
	pods, err := cli.CoreV1().Pods(t.Kube.Namespace).List(ctx, sel)
	if err != nil {
		return fmt.Errorf("ctl rollout: list pods: %w", err)
	}
	mode := "automatic"
	if set.Annotations[kubemaint.AnnRollout] == kubemaint.RolloutSupervised {
		mode = "supervised"
		if set.Annotations[kubemaint.AnnApproved] == rev {
			mode += ", approved"
		}
	}
	fmt.Fprintf(w, "StatefulSet %s: update revision %s (%s rollout)\n", set.Name, rev, mode)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tREVISION\tROLE\tREADY")
	current := 0
	var members []corev1.Pod
	for _, p := range pods.Items {
		if _, ok := v.Members[p.Name]; ok {
			members = append(members, p)
		}
	}
	for _, p := range members {
		state := "old"
		if p.Labels["controller-revision-hash"] == rev {
			state, current = "new", current+1
		}
		ready := "no"
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				ready = "yes"
			}
		}
		fmt.Fprintf(tw, "%s\t%s (%s)\t%s\t%s\n", p.Name, p.Labels["controller-revision-hash"], state, p.Labels["holdfast.io/role"], ready)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	switch {
	case current == len(members):
		fmt.Fprintln(w, "every member runs the update revision")
	default:
		fmt.Fprintf(w, "%d of %d members run the update revision; the primary's agent rolls the rest (holdfast ctl explain says what it waits for)\n", current, len(members))
	}
	return nil
}
