package ctl

import (
	"fmt"
	"slices"
	"strings"

	"github.com/holdfast/holdfast/internal/cluster"
)

// Explain says, one sentence a line, why the cluster is as it is: who
// leads or why nobody does, whether a switchover or failover could
// happen and to whom, and why each other member is or is not a candidate
// — computed from the same view the agents decide on, with each member's
// own account of its last decision. notes are further sentences the
// caller found (e.g. Kubernetes events of drains and rollouts that wait).
func Explain(v cluster.View, notes []string) []string {
	var out []string
	say := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	var maxLag int64
	if v.Config != nil {
		maxLag = v.Config.MaximumLagOnFailover
		if v.Config.Paused {
			say("The cluster is paused: no member fails over, switches over or restarts by itself (holdfast ctl resume).")
		}
	}
	s := cluster.Summarize(v)
	leader := ""
	if v.Leader != nil {
		leader = v.Leader.Name
		st, ok := v.Statuses[leader]
		switch {
		case !ok:
			say("%s holds the leader key but reports no status.", leader)
		case st.Role == cluster.RolePrimary && st.State == cluster.StateRunning:
			say("%s is the primary (timeline %d): it holds the leader key and runs PostgreSQL as a primary, so there is no failover.", leader, s.Timeline)
		default:
			say("%s holds the leader key but is %s/%s (%s): while it holds the key nobody else is promoted.", leader, st.Role, st.State, st.Message)
		}
	} else {
		say("No member holds the leader key: the members race for it, and the most up-to-date eligible one is promoted.")
	}
	if mode := s.SyncMode; mode != "" && mode != cluster.SyncOff {
		say("synchronous_mode is %s: only a member the store's sync record names can be promoted without losing acknowledged commits.", mode)
	}
	if sw := v.Switchover; sw != nil {
		when := "now"
		if !sw.ScheduledAt.IsZero() {
			when = "at " + sw.ScheduledAt.Format("2006-01-02T15:04:05Z07:00")
		}
		to := sw.Candidate
		if to == "" {
			to = "the most up-to-date replica"
		}
		say("A %s to %s is pending (%s).", sw.Kind, to, when)
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range v.Members {
			if !yield(n) {
				return
			}
		}
	})
	candidates := 0
	var able []string
	for _, n := range names {
		if n == leader {
			continue
		}
		planned, anyway := "", ""
		if leader != "" {
			planned = cluster.CandidateProblem(v, n, leader, maxLag, true)
		}
		anyway = cluster.CandidateProblem(v, n, leader, maxLag, false)
		last := ""
		if st, ok := v.Statuses[n]; ok && st.Message != "" {
			last = fmt.Sprintf(" (its last decision: %s)", st.Message)
		}
		switch {
		case anyway != "":
			say("%s cannot take over: %s%s.", n, anyway, last)
		case leader != "" && planned != "":
			say("%s could take over in a failover but not in a switchover: %s%s.", n, planned, last)
		default:
			candidates++
			if planned == "" && leader != "" {
				able = append(able, n)
			}
			say("%s can take over%s%s.", n, preference(v.Members[n]), last)
		}
	}
	if t := cluster.PreferredTarget(v, leader, able); t != "" {
		say("A switchover without a named target would go to %s (failover_priority first, then the primary's zone, then the most WAL).", t)
	}
	for _, n := range names {
		if st, ok := v.Statuses[n]; ok && st.Waiting != "" {
			say("%s: %s.", n, strings.TrimSuffix(st.Waiting, "."))
		}
	}
	if candidates == 0 && len(names) > 1 {
		say("No member can take over now: a switchover would be refused, and a failover would wait for one.")
	}
	for _, n := range notes {
		say("%s", strings.TrimSpace(n))
	}
	return out
}

// preference describes a member's promotion preference, "" when it has
// neither a priority other than the default nor a zone.
func preference(m cluster.MemberInfo) string {
	var parts []string
	if p := m.FailoverPriority(); p != cluster.DefaultFailoverPriority {
		parts = append(parts, fmt.Sprintf("failover_priority %d", p))
	}
	if z := m.Zone(); z != "" {
		parts = append(parts, "zone "+z)
	}
	if len(parts) == 0 {
		return ""
	}
	return " [" + strings.Join(parts, ", ") + "]"
}
