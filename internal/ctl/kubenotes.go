package ctl

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/kubestore"
)

// maintenanceReasons are the events the agents record about drains,
// rollouts and refusals, which `ctl explain` reports.
var maintenanceReasons = []string{"DrainWaiting", "DrainSwitchover", "RolloutStalled", "RolloutReplica", "RolloutSwitchover", "RolloutAwaitingApproval", "DataDirRefused"}

// notesWindow is how far back `ctl explain` reports events.
const notesWindow = 15 * time.Minute

// KubeNotes returns the agents' recent maintenance events on the cluster's
// pods (newest last) as sentences; none without a Kubernetes target.
func (t Target) KubeNotes(ctx context.Context, v cluster.View) ([]string, error) {
	if t.Kube == nil {
		return nil, nil
	}
	cli, err := kubestore.NewClient(t.Kube.Kubeconfig)
	if err != nil {
		return nil, err
	}
	evs, err := cli.CoreV1().Events(t.Kube.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list events in %s: %w", t.Kube.Namespace, err)
	}
	type note struct {
		at   time.Time
		text string
	}
	var ns []note
	for _, e := range evs.Items {
		if !slices.Contains(maintenanceReasons, e.Reason) || e.InvolvedObject.Kind != "Pod" {
			continue
		}
		if _, ok := v.Members[e.InvolvedObject.Name]; !ok {
			continue
		}
		at := e.LastTimestamp.Time
		if at.IsZero() {
			at = e.EventTime.Time
		}
		if time.Since(at) > notesWindow {
			continue
		}
		ns = append(ns, note{at, fmt.Sprintf("%s ago, %s: %s: %s", time.Since(at).Round(time.Second), e.InvolvedObject.Name, e.Reason, strings.TrimSpace(e.Message))})
	}
	slices.SortFunc(ns, func(a, b note) int { return a.at.Compare(b.at) })
	out := make([]string, len(ns))
	for i, n := range ns {
		out[i] = n.text
	}
	return out, nil
}
