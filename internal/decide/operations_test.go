package decide

import (
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// ---------------------------------------------------------------------------
// Operator requests: planned switchover, manual failover, restart, reinit,
// and the rejoin of a cleanly shut down old primary without pg_rewind.
// ---------------------------------------------------------------------------

var wallNow = time.Date(2026, 11, 21, 3, 0, 0, 0, time.UTC)

// request puts a due switchover/failover request in the view (scheduled
// "now" unless scheduledIn says otherwise) and sets the wall clock.
func request(kind, leader, candidate string) mod {
	return func(o *Observation) {
		if o.WallNow.IsZero() {
			o.WallNow = wallNow
		}
		o.View.Switchover = &cluster.Switchover{Kind: kind, Leader: leader, Candidate: candidate, RequestedAt: wallNow.Add(-time.Minute), Revision: 77}
	}
}

func switchoverTo(candidate string) mod { return request(cluster.KindSwitchover, "pg-0", candidate) }
func failoverTo(candidate string) mod   { return request(cluster.KindFailover, "pg-0", candidate) }

// scheduledIn schedules the pending request d after the wall clock.
func scheduledIn(d time.Duration) mod {
	return func(o *Observation) { o.View.Switchover.ScheduledAt = o.WallNow.Add(d) }
}

func wants(r Requests) mod              { return func(o *Observation) { o.Requests = r } }
func checkpoint(p cluster.Position) mod { return func(o *Observation) { o.Data.Checkpoint = p } }

var (
	handover      = []string{"stop", "publish-checkpoint", "release-leader"}
	promotionDone = append(append([]string{}, promotion...), "clear-switchover")
	healthyLeader = []string{"publish-optime", "ensure-slots", "ensure-roles", "move-raft-leader"}
)

// walsendersFromStatuses gives a writable Self the walsender rows
// (PG.Replicas, what the primary measures live) that match the members'
// published statuses, unless a case set them: a replica streams from this
// primary only on its timeline.
func walsendersFromStatuses(o *Observation) {
	if o.PG.Replicas != nil || !o.PG.Writable() {
		return
	}
	o.PG.Replicas = []Replica{}
	for _, name := range sortedKeys(o.View.Statuses) {
		st := o.View.Statuses[name]
		if name == o.Self.Name || !st.Streaming || st.Position.Timeline != o.PG.Position.Timeline {
			continue
		}
		o.PG.Replicas = append(o.PG.Replicas, Replica{Name: name, Streaming: true, Flush: st.Position.LSN})
	}
}

// runLive runs cases whose walsender rows follow the published statuses
// (walsendersFromStatuses, applied last).
func runLive(t *testing.T, cases []scenario) {
	t.Helper()
	for i := range cases {
		cases[i].mods = append(cases[i].mods, walsendersFromStatuses)
	}
	run(t, cases)
}

func TestSwitchoverLeader(t *testing.T) {
	hands := func(s ...string) want {
		return want{role: cluster.RolePrimary, state: cluster.StateStopped, actions: handover, msg: s}
	}
	// names: a switchover without a candidate first names the target in
	// the store (the others then wait for it rather than race).
	names := func(target string) want {
		return want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"name-candidate:" + target, "publish-optime"},
			msg: []string{"naming " + target + " as the candidate"}, memory: Memory{SwitchoverSeenAt: now}}
	}
	clears := func(s ...string) want {
		return want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"clear-switchover"}, reason: s}
	}
	primaryRuns := want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: healthyLeader}
	runLive(t, []scenario{
		{"due switchover to a streaming candidate: stop, publish the checkpoint, release", []mod{primary, switchoverTo("pg-1")},
			hands("switchover to pg-1")},
		{"scheduled exactly now is due", []mod{primary, switchoverTo("pg-1"), scheduledIn(0)},
			hands("pg-1")},
		{"scheduled in the past is due", []mod{primary, switchoverTo("pg-1"), scheduledIn(-time.Hour)},
			hands("pg-1")},
		{"scheduled one nanosecond ahead is not due: ordinary primary", []mod{primary, switchoverTo("pg-1"), scheduledIn(time.Nanosecond)},
			primaryRuns},
		{"scheduled but the wall clock is unknown: not due", []mod{primary, switchoverTo("pg-1"), scheduledIn(time.Hour), func(o *Observation) { o.WallNow = time.Time{} }},
			primaryRuns},
		{"request for whoever leads applies", []mod{primary, request(cluster.KindSwitchover, "", "pg-2")},
			hands("pg-2")},
		{"stale request naming a different leader is cleared", []mod{primary, request(cluster.KindSwitchover, "pg-2", "pg-1")},
			clears("pg-2", "pg-0")},
		{"candidate not registered: cleared", []mod{primary, switchoverTo("pg-7")},
			clears("pg-7", "not a member")},
		{"candidate is a witness: cleared", []mod{primary, register(cluster.MemberInfo{Name: "w-1", Witness: true}), switchoverTo("w-1")},
			clears("witness")},
		{"candidate tagged nofailover: cleared", []mod{primary, tag("pg-1", "nofailover", "true"), switchoverTo("pg-1")},
			clears("nofailover")},
		{"candidate not streaming: cleared", []mod{primary, switchoverTo("pg-1"), status("pg-1", func(st *cluster.MemberStatus) { st.Streaming = false })},
			clears("not streaming")},
		{"candidate without a status (dead): cleared", []mod{primary, switchoverTo("pg-1"), dropStatus("pg-1")},
			clears("not streaming")},
		{"candidate is the primary itself: cleared", []mod{primary, switchoverTo("pg-0")},
			clears("already the primary")},
		{"candidate exactly maximum_lag behind: hand over", []mod{primary, switchoverTo("pg-1"), statusPos("pg-1", pos(tl, lsn-mib))},
			hands("pg-1")},
		{"candidate one byte beyond maximum_lag: cleared", []mod{primary, switchoverTo("pg-1"), statusPos("pg-1", pos(tl, lsn-mib-1))},
			clears("1048577 bytes behind", "1048576")},
		{"candidate on another timeline: cleared", []mod{primary, switchoverTo("pg-1"), statusPos("pg-1", pos(tl-1, lsn))},
			clears("not streaming")},
		{"no candidate named: the most advanced streaming replica", []mod{primary, switchoverTo(""), statusPos("pg-2", pos(tl, lsn+10))},
			names("pg-2")},
		{"no candidate named: a higher failover_priority ranks before more WAL", []mod{primary, switchoverTo(""), statusPos("pg-2", pos(tl, lsn+10)),
			tag("pg-1", "failover_priority", "3")},
			names("pg-1")},
		{"no candidate named: the primary's zone ranks before more WAL", []mod{primary, switchoverTo(""), statusPos("pg-2", pos(tl, lsn+10)),
			tag("pg-0", "zone", "a"), tag("pg-1", "zone", "a"), tag("pg-2", "zone", "b")},
			names("pg-1")},
		{"no candidate named: a preferred replica beyond maximum_lag is passed over", []mod{primary, switchoverTo(""),
			tag("pg-1", "failover_priority", "3"), statusPos("pg-1", pos(tl, lsn-mib-1))},
			names("pg-2")},
		{"no candidate named: a replica beyond maximum_lag is passed over", []mod{primary, switchoverTo(""),
			statusPos("pg-1", pos(tl, lsn-mib-1)), statusPos("pg-2", pos(tl, lsn-mib))},
			names("pg-2")},
		{"no candidate named: nofailover and non-streaming replicas are passed over", []mod{primary, switchoverTo(""),
			tag("pg-1", "nofailover", "yes"), status("pg-2", func(st *cluster.MemberStatus) { st.Streaming = false })},
			clears("no streaming replica")},
		{"switchover while PostgreSQL is down: ordinary restart in place", []mod{primary, pgStopped, switchoverTo("pg-1")},
			want{role: cluster.RolePrimary, state: cluster.StateCrashed, actions: []string{"start-primary"}, memory: Memory{PrimaryDownSince: now}}},
		{"switchover while promotion is pending: finish it first", []mod{primary, func(o *Observation) { o.PG.InRecovery = true }, switchoverTo("pg-1")},
			want{role: cluster.RolePrimary, state: cluster.StateStarting, actions: promotionDone}},
		{"lease about to expire beats the switchover", []mod{primary, switchoverTo("pg-1"), deadlineIn(time.Second)},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence", "release-leader"}}},
		{"paused cluster: no switchover", []mod{pausedCluster, primary, switchoverTo("pg-1")},
			want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"publish-optime"}}},
		{"store down: no switchover", []mod{primary, switchoverTo("pg-1"), storeUnreachable},
			want{role: cluster.RolePrimary, state: cluster.StateRunning}},
		{"manual failover while the primary is healthy and writable: cleared, never executed", []mod{primary, failoverTo("pg-1"),
			status("pg-1", func(st *cluster.MemberStatus) { st.Streaming = false; st.Position = pos(tl, 0) })},
			clears("healthy", "switchover")},
		{"manual failover with a primary that is starting up: candidate need not stream", []mod{primary, pgStarting, failoverTo("pg-1"),
			status("pg-1", func(st *cluster.MemberStatus) { st.Streaming = false; st.Position = pos(tl, 0) })},
			hands("failover to pg-1")},
		{"manual failover with a crashed primary: stop and release", []mod{primary, pgStopped, failoverTo("pg-1")},
			hands("failover to pg-1")},
		{"manual failover with a primary that does not come up: stop and release", []mod{primary, pgStarting, failoverTo("pg-2")},
			hands("pg-2")},
		{"manual failover to a nofailover member: cleared", []mod{primary, pgStarting, tag("pg-1", "nofailover", "1"), failoverTo("pg-1")},
			want{role: cluster.RoleReplica, state: cluster.StateStarting, actions: []string{"clear-switchover"}, reason: []string{"nofailover"}}},
		{"manual failover to an unregistered member: cleared", []mod{primary, pgStopped, failoverTo("pg-9")},
			want{role: cluster.RoleStopped, state: cluster.StateStopped, actions: []string{"clear-switchover"}, reason: []string{"pg-9"}}},
		{"a replica ignores the leader side of the request", []mod{switchoverTo("pg-2")},
			want{role: cluster.RoleReplica, state: cluster.StateStreaming}},
	})
}

func TestSwitchoverRace(t *testing.T) {
	ttl := testSettings().TTL
	window := 2 * ttl
	wait := func(mem time.Duration, s ...string) want {
		return want{role: cluster.RoleStandbyNoLeader, state: cluster.StateWaiting, memory: Memory{SwitchoverWaitSince: mem}, msg: s}
	}
	wins := func(s ...string) want {
		return want{role: cluster.RolePrimary, state: cluster.StateStarting, actions: promotionDone, msg: s}
	}
	// handedOverPG0: pg-0, which handed over, restarted in recovery at the
	// end of its WAL (the shutdown checkpoint record past the optime).
	oldPrimaryBack := status("pg-0", func(st *cluster.MemberStatus) {
		st.Role, st.State, st.Position = cluster.RoleStandbyNoLeader, cluster.StateWaiting, pos(tl, lsn+0x68)
	})
	asOldPrimary := []mod{race, self("pg-0"), oldPrimaryBack, myPos(pos(tl, lsn+0x68)), switchoverTo("pg-1")}
	runLive(t, []scenario{
		// The named switchover candidate.
		{"candidate at the final checkpoint: promote and clear the request", []mod{race, switchoverTo("pg-1")},
			wins("switchover to this member")},
		{"candidate past the final checkpoint: promote", []mod{race, switchoverTo("pg-1"), myPos(pos(tl, lsn+0x68))},
			wins()},
		{"candidate one byte short of the final checkpoint: wait and start the clock", []mod{race, switchoverTo("pg-1"), myPos(pos(tl, lsn-1))},
			wait(now, "last WAL")},
		{"candidate short of the checkpoint, even ahead of everyone else", []mod{race, switchoverTo("pg-1"), myPos(pos(tl, lsn-1)), statusPos("pg-2", pos(tl, 0))},
			wait(now, "last WAL")},
		{"candidate still waiting just inside the window", []mod{race, switchoverTo("pg-1"), myPos(pos(tl, lsn-1)),
			memory(Memory{SwitchoverWaitSince: now - window + time.Millisecond})},
			wait(now-window+time.Millisecond, "last WAL")},
		{"candidate window over: ordinary rules promote within maximum lag", []mod{race, switchoverTo("pg-1"), myPos(pos(tl, lsn-1)),
			statusPos("pg-2", pos(tl, lsn-2)), memory(Memory{SwitchoverWaitSince: now - window})},
			wins("most recent WAL")},
		{"candidate window over, beyond maximum lag: ordinary rules refuse, window remembered", []mod{race, switchoverTo("pg-1"),
			myPos(pos(tl, lsn-mib-1)), statusPos("pg-2", pos(tl, 0)), memory(Memory{SwitchoverWaitSince: now - window})},
			wait(now-window, "maximum_lag_on_failover")},
		{"candidate at the checkpoint but another candidate reports more WAL: wait", []mod{race, switchoverTo("pg-1"), statusPos("pg-2", pos(tl, lsn+1))},
			wait(now, "pg-2 has more recent WAL")},
		{"candidate at the checkpoint, a nofailover member ahead does not block", []mod{race, switchoverTo("pg-1"),
			tag("pg-2", "nofailover", "true"), statusPos("pg-2", pos(tl, lsn+1))},
			wins()},
		{"candidate at the checkpoint: the old primary's own report past it does not block", []mod{race, switchoverTo("pg-1"), oldPrimaryBack},
			wins()},
		{"candidate on a timeline older than the cluster's: wait", []mod{race, switchoverTo("pg-1"), func(o *Observation) {
			o.View.History = append(o.View.History, cluster.HistoryEntry{Timeline: tl + 1, SwitchLSN: lsn, Leader: "pg-2"})
		}},
			wait(now, "timeline 4")},
		{"candidate tagged nofailover: never", []mod{race, switchoverTo("pg-1"), tag("pg-1", "nofailover", "true")},
			want{role: cluster.RoleStandbyNoLeader, state: cluster.StateWaiting, msg: []string{"nofailover"}}},
		{"candidate not ready yet: wait", []mod{race, switchoverTo("pg-1"), pgStarting},
			want{role: cluster.RoleStandbyNoLeader, state: cluster.StateStarting}},
		{"candidate stopped: start in recovery", []mod{race, switchoverTo("pg-1"), pgStopped},
			want{role: cluster.RoleStandbyNoLeader, state: cluster.StateStarting, actions: []string{"start-standby"}}},
		{"request not due yet: ordinary race, which clears it", []mod{race, switchoverTo("pg-2"), scheduledIn(time.Hour)},
			wins("most recent WAL")},

		// Other members.
		{"non-candidate waits for a live candidate", []mod{race, switchoverTo("pg-2"), myPos(pos(tl, lsn+mib))},
			wait(now, "switchover to pg-2 in progress")},
		{"non-candidate keeps waiting inside the window", []mod{race, switchoverTo("pg-2"), memory(Memory{SwitchoverWaitSince: now - window + time.Millisecond})},
			wait(now-window+time.Millisecond, "pg-2")},
		{"non-candidate after the window: ordinary rules", []mod{race, switchoverTo("pg-2"), memory(Memory{SwitchoverWaitSince: now - window})},
			wins("most recent WAL")},
		{"non-candidate after the window, behind the candidate: waits, window remembered", []mod{race, switchoverTo("pg-2"),
			statusPos("pg-2", pos(tl, lsn+1)), memory(Memory{SwitchoverWaitSince: now - window})},
			wait(now-window, "pg-2 has more recent WAL")},
		{"candidate dead (no status): ordinary race", []mod{race, switchoverTo("pg-2"), dropStatus("pg-2")},
			wins("most recent WAL")},
		{"candidate dead, an unregistered name: ordinary race", []mod{race, switchoverTo("pg-9")},
			wins("most recent WAL")},
		{"no candidate named: ordinary race among the others", []mod{race, switchoverTo("")},
			wins("most recent WAL")},
		{"no candidate named: the old primary's report past the checkpoint still counts", []mod{race, switchoverTo(""), oldPrimaryBack},
			want{role: cluster.RoleStandbyNoLeader, state: cluster.StateWaiting, msg: []string{"pg-0 has more recent WAL"}}},
		{"non-candidate waits for a live failover candidate", []mod{race, failoverTo("pg-2")},
			wait(now, "failover to pg-2 in progress")},
		{"non-candidate waits even for a nofailover failover candidate, within the window", []mod{race, failoverTo("pg-2"), tag("pg-2", "nofailover", "true")},
			wait(now, "pg-2")},
		{"nofailover failover candidate: others race after the window", []mod{race, failoverTo("pg-2"), tag("pg-2", "nofailover", "true"),
			memory(Memory{SwitchoverWaitSince: now - window})},
			wins()},

		// The old primary that handed over.
		{"old primary never races back, even with the most WAL", asOldPrimary,
			wait(now, "handed over")},
		{"old primary waits inside the window", append(asOldPrimary[:len(asOldPrimary):len(asOldPrimary)],
			memory(Memory{SwitchoverWaitSince: now - window + time.Millisecond})),
			wait(now-window+time.Millisecond, "handed over")},
		{"old primary cancels the request when nobody took over in time", append(asOldPrimary[:len(asOldPrimary):len(asOldPrimary)],
			memory(Memory{SwitchoverWaitSince: now - window})),
			want{role: cluster.RoleStandbyNoLeader, state: cluster.StateWaiting, actions: []string{"clear-switchover"}, msg: []string{"cancelling"}}},
		{"old primary stopped: start in recovery without upstream", []mod{race, self("pg-0"), pgStopped, control(ControlShutDown), switchoverTo("pg-1")},
			want{role: cluster.RoleStandbyNoLeader, state: cluster.StateStarting, actions: []string{"start-standby"}}},
		{"old primary writable without the key: fenced", []mod{race, self("pg-0"), writable, switchoverTo("pg-1")},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"old primary of a manual failover is not barred: it waits for the live candidate", []mod{race, self("pg-0"), oldPrimaryBack,
			myPos(pos(tl, lsn+0x68)), failoverTo("pg-1")},
			wait(now, "failover to pg-1 in progress")},
		{"old primary of a not-yet-due switchover: ordinary race", []mod{race, self("pg-0"), oldPrimaryBack, myPos(pos(tl, lsn+0x68)),
			switchoverTo("pg-1"), scheduledIn(time.Minute)},
			want{role: cluster.RolePrimary, state: cluster.StateStarting, actions: promotionDone}},

		// The named candidate of a manual failover.
		{"failover candidate promotes without comparing positions", []mod{race, failoverTo("pg-1"), myPos(pos(tl, lsn-10*mib)), statusPos("pg-2", pos(tl, lsn+mib))},
			wins("manual failover")},
		{"failover candidate tagged nofailover: refuses", []mod{race, failoverTo("pg-1"), tag("pg-1", "nofailover", "true")},
			want{role: cluster.RoleStandbyNoLeader, state: cluster.StateWaiting, msg: []string{"nofailover"}}},
		{"failover candidate while another member leads: follows", []mod{failoverTo("pg-1"), leaderIs("pg-2"), status("pg-2", func(st *cluster.MemberStatus) {
			st.Role, st.State = cluster.RolePrimary, cluster.StateRunning
		})},
			want{role: cluster.RoleReplica, state: cluster.StateRunning, actions: []string{"follow:pg-2"}}},

		// The new primary finishes a pending promotion and clears the request.
		{"new leader finishing its promotion clears the request", []mod{primary, func(o *Observation) { o.PG.InRecovery = true }, self("pg-0"), switchoverTo("pg-0")},
			want{role: cluster.RolePrimary, state: cluster.StateStarting, actions: promotionDone}},
		{"new leader running: clears the stale request", []mod{primary, request(cluster.KindSwitchover, "pg-2", "pg-0")},
			want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"clear-switchover"}}},
	})
}

func TestRejoinWithoutRewind(t *testing.T) {
	// History: timeline 3 began at 0x2_0000_0000 (base()).
	switchAt := cluster.LSN(0x2_0000_0000)
	direct := want{role: cluster.RoleReplica, state: cluster.StateStarting, actions: []string{"start-standby:pg-0"}, msg: []string{"without rewind"}}
	rewind := want{role: cluster.RoleReplica, state: cluster.StateRewinding, actions: []string{"rewind:pg-0", "start-standby:pg-0"}}
	runLive(t, []scenario{
		{"cleanly shut down before the switch point: follow directly", []mod{pgStopped, control(ControlShutDown), checkpoint(pos(tl-1, switchAt-0x68))},
			direct},
		{"checkpoint one byte before the switch point: follow directly", []mod{pgStopped, control(ControlShutDown), checkpoint(pos(tl-1, switchAt-1))},
			direct},
		{"checkpoint exactly at the switch point: rewind", []mod{pgStopped, control(ControlShutDown), checkpoint(pos(tl-1, switchAt))},
			rewind},
		{"checkpoint past the switch point: rewind", []mod{pgStopped, control(ControlShutDown), checkpoint(pos(tl-1, switchAt+1))},
			rewind},
		{"crashed primary data, checkpoint before the switch point: rewind", []mod{pgStopped, control(ControlInProduction), checkpoint(pos(tl-1, 0x10))},
			rewind},
		{"crash-recovery data, checkpoint before the switch point: rewind", []mod{pgStopped, control(ControlInCrashRecovery), checkpoint(pos(tl-1, 0x10))},
			rewind},
		{"no checkpoint reading: rewind", []mod{pgStopped, control(ControlShutDown)},
			rewind},
		{"no history entry for the next timeline: rewind", []mod{pgStopped, control(ControlShutDown), checkpoint(pos(tl, 0x10))},
			rewind},
		{"history entry without a switch point: rewind", []mod{pgStopped, control(ControlShutDown), checkpoint(pos(tl-1, 0x10)),
			func(o *Observation) { o.View.History[1].SwitchLSN = 0 }},
			rewind},
		{"an older timeline's switch point is not used", []mod{pgStopped, control(ControlShutDown), checkpoint(pos(tl-2, 0x2_0000_0000-1)),
			func(o *Observation) { o.View.History[0].SwitchLSN = 0x1_0000_0000 }},
			rewind},
		{"a failed rewind still re-clones", []mod{pgStopped, control(ControlShutDown), checkpoint(pos(tl-1, 0x10)),
			func(o *Observation) { o.LastRewindError = "boom" }},
			want{role: cluster.RoleReplica, state: cluster.StateCloning, actions: []string{"reinit:pg-0", "start-standby:pg-0"}}},
		{"leader not ready yet: a clean standby start needs no source", []mod{pgStopped, control(ControlShutDown), checkpoint(pos(tl-1, 0x10)), dropStatus("pg-0")},
			direct},
	})
}

func TestRestartAndReinit(t *testing.T) {
	restart := wants(Requests{Restart: true})
	reinit := wants(Requests{Reinit: true})
	notReady := status("pg-0", func(st *cluster.MemberStatus) { st.State = cluster.StateStarting })
	runLive(t, []scenario{
		{"restart a replica: stop, acknowledge, remember", []mod{restart},
			want{role: cluster.RoleReplica, state: cluster.StateStopped, actions: []string{"stop", "ack-restart"}, memory: Memory{Restarting: true}}},
		{"restart the primary: stop, acknowledge, keep its down clock", []mod{primary, restart, memory(Memory{PrimaryDownSince: now - time.Second})},
			want{role: cluster.RolePrimary, state: cluster.StateStopped, actions: []string{"stop", "ack-restart"},
				memory: Memory{Restarting: true, PrimaryDownSince: now - time.Second}}},
		{"restart a starting PostgreSQL", []mod{restart, pgStarting},
			want{role: cluster.RoleReplica, state: cluster.StateStopped, actions: []string{"stop", "ack-restart"}, memory: Memory{Restarting: true}}},
		{"restart with PostgreSQL stopped: acknowledge only", []mod{restart, pgStopped, control(ControlShutDownRecovery)},
			want{role: cluster.RoleStopped, state: cluster.StateStopped, actions: []string{"ack-restart"}}},
		{"after the restart's stop the ordinary rules start the replica", []mod{pgStopped, control(ControlShutDownRecovery), memory(Memory{Restarting: true})},
			want{role: cluster.RoleReplica, state: cluster.StateStarting, actions: []string{"start-standby:pg-0"}}},
		{"after the restart's stop the ordinary rules start the primary", []mod{primary, pgStopped, control(ControlShutDown), memory(Memory{Restarting: true})},
			want{role: cluster.RolePrimary, state: cluster.StateCrashed, actions: []string{"start-primary"}, memory: Memory{PrimaryDownSince: now}}},
		{"restart never pre-empts fencing a writable non-leader", []mod{restart, writable},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"restart never pre-empts the lease fence of the primary", []mod{primary, restart, deadlineIn(time.Second)},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence", "release-leader"}}},
		{"restart with an empty data directory: ignored", []mod{restart, emptyData},
			want{role: cluster.RoleUninitialized, state: cluster.StateCloning, actions: []string{"clone:pg-0", "start-standby:pg-0"}}},
		{"restart before bootstrap finished: ignored", []mod{restart, freshStore, initBy("pg-2"), pgStopped},
			want{role: cluster.RoleStopped, state: cluster.StateWaiting}},
		{"restart with the store down: ignored", []mod{restart, storeUnreachable},
			want{role: cluster.RoleReplica, state: cluster.StateWaiting}},
		{"restart while paused: stop and acknowledge", []mod{pausedCluster, restart},
			want{role: cluster.RoleReplica, state: cluster.StateStopped, actions: []string{"stop", "ack-restart"}, memory: Memory{Restarting: true}}},
		{"paused, restarting replica: start it as a standby of the leader", []mod{pausedCluster, pgStopped, control(ControlShutDownRecovery), memory(Memory{Restarting: true})},
			want{role: cluster.RoleStopped, state: cluster.StateStopped, actions: []string{"start-standby:pg-0"}, memory: Memory{Restarting: true}}},
		{"paused, restarting primary: start it as primary", []mod{pausedCluster, primary, pgStopped, control(ControlShutDown), memory(Memory{Restarting: true})},
			want{role: cluster.RoleStopped, state: cluster.StateStopped, actions: []string{"start-primary"}, memory: Memory{Restarting: true}}},
		{"paused, key holder with standby data: start in recovery", []mod{pausedCluster, primary, pgStopped, control(ControlShutDownRecovery), memory(Memory{Restarting: true})},
			want{role: cluster.RoleStopped, state: cluster.StateStopped, actions: []string{"start-standby"}, memory: Memory{Restarting: true}}},
		{"paused, restarting, no leader: start in recovery without upstream", []mod{pausedCluster, race, pgStopped, control(ControlShutDownRecovery), memory(Memory{Restarting: true})},
			want{role: cluster.RoleStopped, state: cluster.StateStopped, actions: []string{"start-standby"}, memory: Memory{Restarting: true}}},
		{"paused, restarted: forget it", []mod{pausedCluster, memory(Memory{Restarting: true})},
			want{role: cluster.RoleReplica, state: cluster.StateStreaming}},
		{"paused, stopped without a restart: not started", []mod{pausedCluster, pgStopped},
			want{role: cluster.RoleStopped, state: cluster.StateStopped}},

		{"reinit a running replica: stop, reinit, acknowledge, start", []mod{reinit},
			want{role: cluster.RoleReplica, state: cluster.StateCloning, actions: []string{"stop", "reinit:pg-0", "ack-reinit", "start-standby:pg-0"}}},
		{"reinit a stopped replica", []mod{reinit, pgStopped, control(ControlShutDownRecovery)},
			want{role: cluster.RoleReplica, state: cluster.StateCloning, actions: []string{"reinit:pg-0", "ack-reinit", "start-standby:pg-0"}}},
		{"reinit wins over restart", []mod{wants(Requests{Restart: true, Reinit: true})},
			want{role: cluster.RoleReplica, state: cluster.StateCloning, actions: []string{"stop", "reinit:pg-0", "ack-reinit", "start-standby:pg-0"}}},
		{"reinit of the leader: refused", []mod{primary, reinit},
			want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"ack-reinit"}, reason: []string{"never"}}},
		{"reinit of the leader with PostgreSQL down: refused", []mod{primary, pgStopped, reinit},
			want{role: cluster.RoleStopped, state: cluster.StateStopped, actions: []string{"ack-reinit"}}},
		{"reinit with the primary not ready: ordinary rules meanwhile", []mod{reinit, notReady},
			want{role: cluster.RoleReplica, state: cluster.StateStreaming}},
		{"reinit with no leader: this member still takes part in the race", []mod{reinit, race},
			want{role: cluster.RolePrimary, state: cluster.StateStarting, actions: promotion}},
		{"reinit with a stale key of ours: it is cleared first", []mod{reinit, primary, func(o *Observation) {
			o.View.Leader.LeaseID = peerLease
			o.PG.InRecovery = true
		}},
			want{role: cluster.RoleReplica, state: cluster.StateWaiting, actions: []string{"delete-stale-leader"}}},
		{"reinit never pre-empts fencing", []mod{reinit, writable},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"reinit with an empty data directory: ignored", []mod{reinit, emptyData},
			want{role: cluster.RoleUninitialized, state: cluster.StateCloning, actions: []string{"clone:pg-0", "start-standby:pg-0"}}},
		{"reinit of data of another cluster: fatal first", []mod{reinit, pgStopped, func(o *Observation) { o.Data.SystemID = otherSysID }},
			want{role: cluster.RoleStopped, state: cluster.StateFailed, fatal: []string{"another PostgreSQL cluster"}}},
		{"reinit while paused: carried out", []mod{pausedCluster, reinit},
			want{role: cluster.RoleReplica, state: cluster.StateCloning, actions: []string{"stop", "reinit:pg-0", "ack-reinit", "start-standby:pg-0"}}},
	})
}

// A planned switchover judges candidates by what the primary measures at
// the decision (its walsenders: pg_stat_replication), never by the
// statuses the members publish once a loop: under a write burst those
// trail a replica that streams in real time by megabytes.
func TestSwitchoverLiveTarget(t *testing.T) {
	live := func(rs ...Replica) mod { return func(o *Observation) { o.PG.Replicas = rs } }
	names := func(target string) want {
		return want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"name-candidate:" + target, "publish-optime"},
			msg: []string{"naming " + target + " as the candidate"}, memory: Memory{SwitchoverSeenAt: now}}
	}
	hands := func(s ...string) want {
		return want{role: cluster.RolePrimary, state: cluster.StateStopped, actions: handover, msg: s}
	}
	clears := func(s ...string) want {
		return want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"clear-switchover"}, reason: s}
	}
	run(t, []scenario{
		{"published status 2 MiB behind (a write burst), live flush caught up: hand over", []mod{primary, switchoverTo("pg-1"),
			statusPos("pg-1", pos(tl, lsn-2*mib)), live(Replica{Name: "pg-1", Streaming: true, Flush: lsn - 4096})},
			hands("switchover to pg-1")},
		{"published status caught up, live flush one byte beyond maximum_lag: cleared", []mod{primary, switchoverTo("pg-1"),
			live(Replica{Name: "pg-1", Streaming: true, Flush: lsn - mib - 1})},
			clears("pg-1", "1048577 bytes behind", "1048576")},
		{"published status says streaming, but no walsender streams to it now: cleared", []mod{primary, switchoverTo("pg-1"),
			live(Replica{Name: "pg-2", Streaming: true, Flush: lsn})},
			clears("pg-1 is not streaming")},
		{"walsender row whose replies stopped (not streaming): cleared", []mod{primary, switchoverTo("pg-1"),
			live(Replica{Name: "pg-1", Streaming: false, Flush: lsn})},
			clears("pg-1 is not streaming")},
		{"no candidate named: ranks by live flush, not the published positions", []mod{primary, switchoverTo(""),
			statusPos("pg-2", pos(tl, lsn+mib)),
			live(Replica{Name: "pg-1", Streaming: true, Flush: lsn}, Replica{Name: "pg-2", Streaming: true, Flush: lsn - 10})},
			names("pg-1")},
		{"no candidate named: every published status trails, live ones do not: hand over", []mod{primary, switchoverTo(""),
			statusPos("pg-1", pos(tl, lsn-3*mib)), statusPos("pg-2", pos(tl, lsn-3*mib)),
			live(Replica{Name: "pg-1", Streaming: true, Flush: lsn}, Replica{Name: "pg-2", Streaming: true, Flush: lsn})},
			names("pg-1")},
	})
}

// A candidate that streams but is beyond the maximum lag (a write burst)
// gets SwitchoverCatchUp from the first sight of the request to come
// within it, measured again every catchUpPoll; the request is cancelled
// with the reason after that. Anything else is cancelled at once.
func TestSwitchoverCatchUp(t *testing.T) {
	catchUp := func(o *Observation) { o.Settings.SwitchoverCatchUp = 4 * time.Second }
	seenAt := func(d time.Duration) mod { return func(o *Observation) { o.Memory.SwitchoverSeenAt = d } }
	behind := func(o *Observation) { o.PG.Replicas = []Replica{{Name: "pg-1", Streaming: true, Flush: lsn - 5*mib}} }
	waits := want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"publish-optime"}, memory: Memory{SwitchoverSeenAt: now},
		msg: []string{"waiting up to 4s", "5242880 bytes behind"}}
	run(t, []scenario{
		{"first sight, the candidate beyond the lag: keep serving, measure again", []mod{primary, switchoverTo("pg-1"), catchUp, behind}, waits},
		{"no candidate named, every streaming one beyond the lag: wait too", []mod{primary, switchoverTo(""), catchUp, func(o *Observation) {
			o.PG.Replicas = []Replica{{Name: "pg-1", Streaming: true, Flush: lsn - 5*mib}, {Name: "pg-2", Streaming: true, Flush: lsn - 6*mib}}
		}}, want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"publish-optime"}, memory: Memory{SwitchoverSeenAt: now}, msg: []string{"beyond maximum_lag"}}},
		{"still behind when the window ends: cancelled with the reason", []mod{primary, switchoverTo("pg-1"), catchUp, behind, seenAt(now - 4*time.Second)},
			want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"clear-switchover"}, reason: []string{"5242880 bytes behind", "after waiting 4s"}}},
		{"caught up inside the window: hand over (the drain counted from the first sight)", []mod{primary, switchoverTo("pg-1"), catchUp, seenAt(now - time.Second), walsendersFromStatuses},
			want{role: cluster.RolePrimary, state: cluster.StateStopped, actions: handover}},
		{"not streaming is never waited for", []mod{primary, switchoverTo("pg-1"), catchUp, func(o *Observation) { o.PG.Replicas = []Replica{} }},
			want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"clear-switchover"}, reason: []string{"not streaming"}}},
	})
	o := build(primary, switchoverTo("pg-1"), catchUp, behind)
	if d := Decide(o); d.RecheckIn != catchUpPoll {
		t.Fatalf("RecheckIn = %s, want %s while waiting for the candidate", d.RecheckIn, catchUpPoll)
	}
}

// A switchover's stop that the standbys did not confirm (escalated: the
// candidate stopped acknowledging WAL) is never followed by a handover:
// the primary, still holding the key, cancels the request with the reason
// and starts again in place.
func TestSwitchoverAbortedHandover(t *testing.T) {
	aborted := func(o *Observation) { o.HandoverAborted = "the standbys did not confirm the final WAL within 1s" }
	run(t, []scenario{
		{"stopped after an unconfirmed handover: cancel, then start again as the primary", []mod{primary, pgStopped, control(ControlShutDown), switchoverTo("pg-1"), aborted},
			want{role: cluster.RolePrimary, state: cluster.StateStopped, actions: []string{"clear-switchover", "start-primary"},
				memory: Memory{PrimaryDownSince: now}, reason: []string{"did not confirm the final WAL", "pg-0 resumes as the primary"}}},
		{"crashed (checkpoint not written) after an unconfirmed handover: the same", []mod{primary, pgStopped, control(ControlInProduction), switchoverTo("pg-1"), aborted},
			want{role: cluster.RolePrimary, state: cluster.StateStopped, actions: []string{"clear-switchover", "start-primary"},
				memory: Memory{PrimaryDownSince: now}}},
		{"already running again (the clear failed last loop): only cancel", []mod{primary, switchoverTo("pg-1"), aborted, walsendersFromStatuses},
			want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"clear-switchover"}, reason: []string{"resumes"}}},
		{"without an aborted stop, a stopped primary never publishes or releases: ordinary restart", []mod{primary, pgStopped, control(ControlShutDown), switchoverTo("pg-1")},
			want{role: cluster.RolePrimary, state: cluster.StateCrashed, actions: []string{"start-primary"}, memory: Memory{PrimaryDownSince: now}}},
		{"the lease deadline still beats it", []mod{primary, switchoverTo("pg-1"), aborted, deadlineIn(time.Second)},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence", "release-leader"}}},
	})
}

// With a drain configured, the primary keeps serving for the drain after it
// first sees a due switchover (proxies start holding new connections), asks
// to be woken when it ends, then stops gracefully; a forced failover never
// drains.
func TestSwitchoverDrain(t *testing.T) {
	drain := func(d time.Duration) mod { return func(o *Observation) { o.Settings.SwitchoverDrain = d } }
	seenAt := func(d time.Duration) mod { return func(o *Observation) { o.Memory.SwitchoverSeenAt = d } }
	runLive(t, []scenario{
		{"first sight of a due switchover: drain, publish, remember, recheck", []mod{primary, switchoverTo("pg-1"), drain(500 * time.Millisecond)},
			want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"publish-optime"},
				memory: Memory{SwitchoverSeenAt: now}, msg: []string{"draining", "pg-1"}}},
		{"still inside the drain: keep serving", []mod{primary, switchoverTo("pg-1"), drain(500 * time.Millisecond), seenAt(now - 499*time.Millisecond)},
			want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"publish-optime"},
				memory: Memory{SwitchoverSeenAt: now - 499*time.Millisecond}}},
		{"drain over: hand over", []mod{primary, switchoverTo("pg-1"), drain(500 * time.Millisecond), seenAt(now - 500*time.Millisecond)},
			want{role: cluster.RolePrimary, state: cluster.StateStopped, actions: handover}},
		{"forced failover of a crashed primary does not drain", []mod{primary, pgStopped, failoverTo("pg-1"), drain(500 * time.Millisecond)},
			want{role: cluster.RolePrimary, state: cluster.StateStopped, actions: handover}},
	})
	o := base()
	for _, m := range []mod{primary, switchoverTo("pg-1"), drain(500 * time.Millisecond), seenAt(now - 200*time.Millisecond), walsendersFromStatuses} {
		m(&o)
	}
	if d := Decide(o); d.RecheckIn != 300*time.Millisecond {
		t.Fatalf("RecheckIn = %s, want the rest of the drain (300ms)", d.RecheckIn)
	}
	for _, m := range []mod{seenAt(now - time.Second)} {
		m(&o)
	}
	d := Decide(o)
	if len(d.Actions) == 0 || d.Actions[0].Kind != ActStop || !d.Actions[0].Graceful {
		t.Fatalf("a planned switchover must stop gracefully: %+v", d.Actions)
	}
}

// A directory left by a failed pg_rewind is never started or promoted while
// no member leads; it waits for a primary to re-clone from.
func TestFailedRewindNeverRacesOrStarts(t *testing.T) {
	failed := func(o *Observation) { o.LastRewindError = "pg_rewind: fatal: could not fetch file" }
	run(t, []scenario{
		{"stopped: does not start", []mod{race, pgStopped, failed},
			want{role: cluster.RoleStopped, state: cluster.StateWaiting, msg: []string{"failed pg_rewind"}}},
		{"running and best placed: stops instead of racing", []mod{race, failed, myPos(pos(tl, lsn+mib))},
			want{role: cluster.RoleStopped, state: cluster.StateWaiting, actions: []string{"stop"}}},
		{"paused restart does not start it either", []mod{pausedCluster, pgStopped, failed, func(o *Observation) { o.Memory.Restarting = true }},
			want{role: cluster.RoleStopped, state: cluster.StateStopped, memory: Memory{Restarting: true}}},
	})
}
