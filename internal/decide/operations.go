package decide

import (
	"fmt"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// Operator-driven rules: planned switchover, manual failover, restart and
// re-initialisation. They plug into the automatic rules of decide.go at the
// points noted there and keep the same invariants: only the holder of the
// leader key is writable, and a planned switchover loses no committed
// transaction.

// Requests are operator requests addressed to this member (from its API),
// already filtered by role and schedule by the agent.
type Requests struct {
	// Restart asks to restart PostgreSQL in its current role.
	Restart bool
	// Reinit asks to throw away this member's data (kept aside) and clone
	// it again from the primary. Never honoured on the leader.
	Reinit bool
}

// switchoverDue returns the pending switchover or failover request if its
// scheduled time has come.
func switchoverDue(o Observation) *cluster.Switchover {
	sw := o.View.Switchover
	if sw == nil {
		return nil
	}
	if !sw.ScheduledAt.IsZero() && o.WallNow.Before(sw.ScheduledAt) {
		return nil
	}
	return sw
}

// leaderSwitchover is the leader's side of a due switchover or failover
// request: stop PostgreSQL cleanly (its last WAL, up to the shutdown
// checkpoint, reaches the streaming standbys before the postmaster exits),
// publish that checkpoint as the final optime, then release the leader key.
// The candidate promotes only once it holds that position. ok is false when
// the request does not apply; a request that can never be carried out is
// cleared, with the reason.
func leaderSwitchover(o Observation) (Decision, bool) {
	sw := switchoverDue(o)
	if sw == nil {
		return Decision{}, false
	}
	if sw.Leader != "" && sw.Leader != o.Self.Name {
		return clearSwitchover(o, fmt.Sprintf("the request names %s as primary, but %s is", sw.Leader, o.Self.Name)), true
	}
	if o.HandoverAborted != "" && sw.Kind == cluster.KindSwitchover {
		return resumeAfterAbortedHandover(o), true
	}
	if sw.Kind == cluster.KindFailover && o.PG.Writable() {
		// A forced failover is for a cluster without a healthy primary. This
		// primary serves writes: promoting another member now, without
		// comparing positions, could lose what it alone holds.
		return clearSwitchover(o, "the primary "+o.Self.Name+" is healthy; a manual failover only replaces a failed primary (use a switchover)"), true
	}
	target, why, behind := switchoverTarget(o, sw)
	seen := o.Memory.SwitchoverSeenAt
	if seen == 0 || seen > o.Now {
		seen = o.Now
	}
	if target == "" && behind && sw.Kind == cluster.KindSwitchover && o.PG.Writable() && o.Now-seen < o.Settings.SwitchoverCatchUp {
		// Streaming, but beyond the lag (a write burst): keep serving and
		// measure again shortly, for a bounded time.
		return Decision{Role: cluster.RolePrimary, State: cluster.StateRunning, Memory: Memory{SwitchoverSeenAt: seen},
			Message:   fmt.Sprintf("switchover: waiting up to %s for a candidate to catch up: %s", (seen + o.Settings.SwitchoverCatchUp - o.Now).Round(time.Millisecond), why),
			Actions:   []Action{{Kind: ActPublishOptime}},
			RecheckIn: catchUpPoll}, true
	}
	if target == "" {
		if behind {
			why += fmt.Sprintf(" (after waiting %s for it to catch up)", o.Settings.SwitchoverCatchUp)
		}
		return clearSwitchover(o, "no member can take over: "+why), true
	}
	if sw.Kind == cluster.KindSwitchover && o.PG.Writable() {
		// The drain counts from the first sight of the request too: the
		// proxies have held new connections since then.
		if sw.Candidate == "" {
			// Name the target in the store before anything stops: the
			// others then wait for it (raceUnderSwitchover) instead of
			// racing, which could promote a member the operator ranks
			// lower, or a less preferred one whose status lags.
			return Decision{Role: cluster.RolePrimary, State: cluster.StateRunning, Memory: Memory{SwitchoverSeenAt: seen},
				Message:   fmt.Sprintf("switchover: naming %s as the candidate", target),
				Actions:   []Action{{Kind: ActNameCandidate, Target: target, Reason: "switchover without a named candidate"}, {Kind: ActPublishOptime}},
				RecheckIn: o.Settings.LoopInterval / 10}, true
		}
		if left := seen + o.Settings.SwitchoverDrain - o.Now; left > 0 {
			return Decision{Role: cluster.RolePrimary, State: cluster.StateRunning, Memory: Memory{SwitchoverSeenAt: seen},
				Message:   fmt.Sprintf("switchover to %s: draining for %s while proxies start holding new connections", target, left.Round(time.Millisecond)),
				Actions:   []Action{{Kind: ActPublishOptime}},
				RecheckIn: left}, true
		}
	}
	msg := fmt.Sprintf("%s to %s: stopping PostgreSQL cleanly, then releasing the leader key", sw.Kind, target)
	return Decision{Role: cluster.RolePrimary, State: cluster.StateStopped, Message: msg,
		Actions: []Action{
			{Kind: ActStop, Reason: sw.Kind + " to " + target, Graceful: sw.Kind == cluster.KindSwitchover},
			{Kind: ActPublishCheckpoint, Reason: sw.Kind},
			{Kind: ActReleaseLeader, Reason: sw.Kind + " to " + target},
		}}, true
}

// resumeAfterAbortedHandover: the stop for this switchover was escalated
// before the standbys confirmed the final WAL (a candidate that stopped
// acknowledging would otherwise hold the shutdown until
// wal_sender_timeout). This member still holds the key and its directory
// every commit, while the candidate may lack the tail: handing over could
// lose committed transactions, so it cancels the request (first, so that
// the restarted primary does not stop again for it) and starts again as
// the primary, in place, on its own timeline.
func resumeAfterAbortedHandover(o Observation) Decision {
	why := "the switchover stop was cut short: " + o.HandoverAborted + "; " + o.Self.Name + " resumes as the primary"
	d := Decision{Role: cluster.RolePrimary, State: stateOf(o), Message: "cancelling the switchover request: " + why,
		Actions: []Action{{Kind: ActClearSwitchover, Reason: why}}}
	if !o.PG.Running {
		// As the ordinary restart in place: primary_start_timeout counts
		// from here.
		down := o.Memory.PrimaryDownSince
		if down == 0 {
			down = o.Now
		}
		d.Memory = Memory{PrimaryDownSince: down}
		d.Actions = append(d.Actions, Action{Kind: ActStartPrimary, Reason: "resuming after a cancelled switchover"})
	}
	return d
}

// clearSwitchover cancels the request; what this member remembered of it
// goes with it.
func clearSwitchover(o Observation, why string) Decision {
	mem := o.Memory
	mem.SwitchoverSeenAt = 0
	return Decision{Role: roleOf(o), State: stateOf(o), Memory: mem, Message: "cancelling the switchover request: " + why,
		Actions: []Action{{Kind: ActClearSwitchover, Reason: why}}}
}

// switchoverTarget picks who takes over: the named candidate if it can, or
// the streaming replica the operator prefers (cluster.ComparePreference:
// failover_priority, then the primary's zone), the most up-to-date among
// equals. For a planned switchover the target must be streaming from this
// primary right now, with its replies fresh (so it receives the last WAL),
// and have flushed WAL within the maximum lag of this primary's current
// position — both measured by the primary at this decision
// (PG.Replicas, pg_stat_replication), never from the statuses members
// publish once a loop: under a write burst those trail by a loop's worth
// of WAL and would refuse a replica that streams in real time. The old
// primary stops accepting writes before it hands over, so the target only
// has to catch up to that final position. A forced failover only needs a
// registered database member that may be promoted.
//
// behind is true when no target qualifies only because every candidate
// that streams is beyond the maximum lag (or, when named, the candidate
// is): under a write burst it may catch up within moments.
func switchoverTarget(o Observation, sw *cluster.Switchover) (target, why string, behind bool) {
	v := o.View
	lagging := false
	check := func(name string) string {
		info, ok := v.Members[name]
		switch {
		case !ok:
			return name + " is not a member of the cluster"
		case name == o.Self.Name:
			return name + " is already the primary"
		case info.Witness:
			return name + " is a witness and runs no database"
		case info.NoFailover():
			return name + " is tagged nofailover"
		}
		if sw.Kind == cluster.KindFailover {
			return ""
		}
		r, ok := liveReplica(o, name)
		if !ok || !r.Streaming {
			return name + " is not streaming from the primary (no walsender of this primary streams to it, or its replies stopped)"
		}
		if lag := lagBehind(o, cluster.Position{Timeline: o.PG.Position.Timeline, LSN: r.Flush}); lag > o.Settings.MaximumLag {
			lagging = true
			return fmt.Sprintf("%s has flushed WAL %d bytes behind this primary, more than maximum_lag_on_failover %d", name, lag, o.Settings.MaximumLag)
		}
		return ""
	}
	if sw.Candidate != "" {
		if why := check(sw.Candidate); why != "" {
			return "", why, lagging
		}
		return sw.Candidate, "", false
	}
	// Every target receives the old primary's last WAL before it
	// promotes, so the operator's preference ranks first, then WAL.
	best := ""
	for _, name := range sortedKeys(v.Members) {
		if check(name) != "" {
			continue
		}
		if best == "" {
			best = name
			continue
		}
		c := cluster.ComparePreference(v, o.Self.Name, name, best)
		if c < 0 || c == 0 && liveFlush(o, best) < liveFlush(o, name) {
			best = name
		}
	}
	if best == "" {
		if lagging {
			return "", "every streaming replica is beyond maximum_lag_on_failover", true
		}
		return "", "no streaming replica within the maximum lag", false
	}
	return best, "", false
}

// catchUpPoll is how often a primary measures again while it waits for a
// switchover candidate to come within the maximum lag.
const catchUpPoll = 100 * time.Millisecond

// liveReplica is the walsender row of this primary streaming to name, as
// measured at this decision.
func liveReplica(o Observation, name string) (Replica, bool) {
	for _, r := range o.PG.Replicas {
		if r.Name == name {
			return r, true
		}
	}
	return Replica{}, false
}

// liveFlush is the WAL name has flushed, as this primary measured it (0
// when it does not stream from this primary).
func liveFlush(o Observation, name string) cluster.LSN {
	r, _ := liveReplica(o, name)
	return r.Flush
}

// lagBehind is how far p is behind this primary's current position.
func lagBehind(o Observation, p cluster.Position) int64 {
	me := o.PG.Position
	if p.Timeline != me.Timeline {
		return 1 << 62
	}
	if p.LSN >= me.LSN {
		return 0
	}
	return int64(me.LSN - p.LSN)
}

// raceUnderSwitchover adjusts the leader race while a switchover or failover
// request is pending. decided is false when the ordinary rules apply; mem is
// what to remember either way (the wait window), and acts what to do when
// not promoting.
//   - The primary that handed over never races back. If nobody has taken
//     over after two TTLs, it cancels the request: the ordinary rules then
//     run the race (and, holding the most WAL, it may win it back).
//   - Another member than a live named candidate waits for it, for at most
//     two TTLs; then the ordinary rules apply.
//   - The named candidate of a planned switchover waits until it holds the
//     old primary's final position (every committed transaction) and no
//     other candidate reports more WAL, for at most two TTLs; then the
//     ordinary rules (maximum lag) apply again.
//   - The named candidate of a forced failover races without comparing
//     positions: the operator chose it.
func raceUnderSwitchover(o Observation) (ok bool, why string, mem Memory, acts []Action, decided bool) {
	sw := switchoverDue(o)
	if sw == nil {
		return false, "", Memory{}, nil, false
	}
	// The wait window: started the first loop this member waited under this
	// request with no leader, kept while it waits or runs the ordinary race.
	since := o.Memory.SwitchoverWaitSince
	if since == 0 || since > o.Now {
		since = o.Now
	}
	window := Memory{SwitchoverWaitSince: since}
	expired := o.Now-since >= 2*o.Settings.TTL
	if handedOver(o, o.Self.Name) {
		if expired {
			why := fmt.Sprintf("nobody took over within %s of the handover", 2*o.Settings.TTL)
			return false, "this member handed over leadership in a switchover, but " + why + "; cancelling the request", Memory{},
				[]Action{{Kind: ActClearSwitchover, Reason: why}}, true
		}
		return false, "this member handed over leadership in a switchover", window, nil, true
	}
	if sw.Candidate == "" {
		return false, "", Memory{}, nil, false
	}
	if sw.Candidate != o.Self.Name {
		_, alive := o.View.Statuses[sw.Candidate]
		if alive && !expired {
			return false, fmt.Sprintf("%s to %s in progress", sw.Kind, sw.Candidate), window, nil, true
		}
		if alive {
			return false, "", window, nil, false // waited long enough: ordinary rules
		}
		return false, "", Memory{}, nil, false // the candidate is gone: ordinary rules
	}
	if o.Self.NoFailover() {
		return false, "tagged nofailover", Memory{}, nil, true
	}
	if sw.Kind == cluster.KindFailover {
		return true, "manual failover to this member", Memory{}, nil, true
	}
	me := o.PG.Position
	wait := ""
	if op := o.View.Optime; op != nil && me.Less(op.Position) {
		wait = fmt.Sprintf("switchover candidate waiting for the old primary's last WAL (%d/%s, have %d/%s)",
			op.Position.Timeline, op.Position.LSN, me.Timeline, me.LSN)
	} else if t := o.View.Timeline(); t > me.Timeline {
		wait = fmt.Sprintf("switchover candidate on timeline %d but the cluster reached timeline %d", me.Timeline, t)
	} else if name, p, ahead := candidateAhead(o); ahead {
		// The optime is the final checkpoint only if the old primary
		// handed over; if it lost the key otherwise, it may be stale, and
		// a member holding more WAL must not be overtaken.
		wait = fmt.Sprintf("switchover candidate waiting: %s has more recent WAL (%d/%s > %d/%s)", name, p.Timeline, p.LSN, me.Timeline, me.LSN)
	}
	if wait == "" {
		return true, "switchover to this member; it holds every committed transaction", Memory{}, nil, true
	}
	if !expired {
		return false, wait, window, nil, true
	}
	return false, "", window, nil, false
}

// handedOver reports whether name is the primary a due planned switchover
// applies to: it stopped (or will stop) and must not race back.
func handedOver(o Observation, name string) bool {
	sw := switchoverDue(o)
	return sw != nil && sw.Kind == cluster.KindSwitchover && sw.Leader != "" && sw.Leader == name
}

// candidateAhead returns another failover candidate reporting more WAL than
// this member, as eligible counts them, leaving out the primary that handed
// over: its final position is the optime, and its own report may include
// the shutdown checkpoint record past it.
func candidateAhead(o Observation) (string, cluster.Position, bool) {
	v := o.View
	for _, name := range sortedKeys(v.Statuses) {
		st := v.Statuses[name]
		if name == o.Self.Name || handedOver(o, name) {
			continue
		}
		info, registered := v.Members[name]
		if registered && (info.Witness || info.NoFailover()) || st.Role == cluster.RoleWitness {
			continue
		}
		if o.PG.Position.Less(st.Position) {
			return name, st.Position, true
		}
	}
	return "", cluster.Position{}, false
}

// restartOrReinit handles this member's own restart and reinit requests.
// decided is false when there is nothing to do.
func restartOrReinit(o Observation, holdsKey bool) (Decision, bool) {
	switch {
	case o.Requests.Reinit && holdsKey:
		return Decision{Role: roleOf(o), State: stateOf(o), Memory: o.Memory, Message: "refusing to re-initialise the primary",
			Actions: []Action{{Kind: ActAckReinit, Reason: "the primary is never re-initialised"}}}, true
	case o.Requests.Reinit:
		src, ok := readyPrimary(o)
		if !ok {
			// Nothing to clone from yet: keep taking part in the ordinary
			// rules (this member may hold the most WAL for the race) and
			// re-initialise once a primary runs.
			return Decision{}, false
		}
		acts := []Action{}
		if o.PG.Running {
			acts = append(acts, Action{Kind: ActStop, Reason: "re-initialisation requested"})
		}
		acts = append(acts,
			Action{Kind: ActReinit, Target: src, Reason: "re-initialisation requested by an operator"},
			Action{Kind: ActAckReinit},
			Action{Kind: ActStartStandby, Target: src})
		return Decision{Role: cluster.RoleReplica, State: cluster.StateCloning, Message: "re-initialising from " + src, Actions: acts}, true
	case o.Requests.Restart && o.PG.Running:
		return Decision{Role: roleOf(o), State: cluster.StateStopped, Message: "restarting PostgreSQL on request",
			Memory:  Memory{Restarting: true, PrimaryDownSince: o.Memory.PrimaryDownSince},
			Actions: []Action{{Kind: ActStop, Reason: "restart requested"}, {Kind: ActAckRestart}}}, true
	case o.Requests.Restart:
		return Decision{Role: roleOf(o), State: stateOf(o), Memory: o.Memory, Message: "restart requested while PostgreSQL is stopped: nothing to restart",
			Actions: []Action{{Kind: ActAckRestart}}}, true
	}
	return Decision{}, false
}

// restartWhilePaused brings PostgreSQL back after an operator restart in a
// paused cluster, where the automatic rules start nothing.
func restartWhilePaused(o Observation, holdsKey bool) []Action {
	if !o.Memory.Restarting || o.PG.Running || o.LastRewindError != "" {
		return nil
	}
	if holdsKey && o.Data.WasPrimary() {
		return []Action{{Kind: ActStartPrimary, Reason: "restart requested"}}
	}
	target := ""
	if l := o.View.Leader; l != nil && l.Name != o.Self.Name {
		target = l.Name
	}
	return []Action{{Kind: ActStartStandby, Target: target, Reason: "restart requested"}}
}

// cleanlyBehindSwitchPoint reports whether a cleanly shut down former
// primary's directory ends before the point where the cluster's history
// forked from its timeline: then it holds nothing the new primary lacks, and
// it can follow without pg_rewind (a planned switchover ends this way).
func cleanlyBehindSwitchPoint(o Observation) bool {
	if o.Data.ControlState != ControlShutDown || o.Data.Checkpoint.Timeline == 0 {
		return false
	}
	for _, h := range o.View.History {
		if h.Timeline == o.Data.Checkpoint.Timeline+1 {
			return h.SwitchLSN != 0 && o.Data.Checkpoint.LSN < h.SwitchLSN
		}
	}
	return false
}
