package decide

import (
	"fmt"
	"math/rand"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// Properties that must hold for ANY observation, checked on thousands of
// generated observations (fixed seeds) and by FuzzDecide.

// ---------------------------------------------------------------------------
// Randomness sources: math/rand for the seeded tests, fuzzer bytes for
// FuzzDecide. Both drive the same generators.
// ---------------------------------------------------------------------------

type source interface{ Intn(n int) int }

// byteSource reads choices from fuzzer bytes; once they run out every
// choice is 0, so short inputs still make complete observations.
type byteSource struct {
	b []byte
	i int
}

func (s *byteSource) Intn(n int) int {
	if n <= 1 {
		return 0
	}
	var v uint
	for k := 0; k < 2 && (k == 0 || n > 256); k++ {
		v <<= 8
		if s.i < len(s.b) {
			v |= uint(s.b[s.i])
			s.i++
		}
	}
	return int(v % uint(n))
}

type gen struct{ r source }

func (g gen) chance(pct int) bool { return g.r.Intn(100) < pct }

func pick[T any](g gen, xs ...T) T { return xs[g.r.Intn(len(xs))] }

var (
	genNames  = []string{"pg-0", "pg-1", "pg-2", "pg-3", "w-0"}
	genRoles  = []cluster.Role{cluster.RoleReplica, cluster.RolePrimary, cluster.RoleStandbyNoLeader, cluster.RoleWitness, cluster.RoleUninitialized, cluster.RoleStopped, ""}
	genStates = []cluster.State{cluster.StateRunning, cluster.StateStreaming, cluster.StateStarting, cluster.StateStopped, cluster.StateBootstrapping,
		cluster.StateCloning, cluster.StateRewinding, cluster.StateFenced, cluster.StateCrashed, cluster.StateWaiting, cluster.StateFailed, ""}
	genControl = []string{ControlInArchiveRecovery, ControlInProduction, ControlShutDown, ControlShutDownRecovery, ControlInCrashRecovery, "", "in crash recovery?"}
	genSysIDs  = []string{sysID, sysID, "", otherSysID}
)

func (g gen) duration(max time.Duration) time.Duration {
	return time.Duration(g.r.Intn(int(max/time.Millisecond)+1)) * time.Millisecond
}

func (g gen) lsn() cluster.LSN {
	switch g.r.Intn(9) {
	case 0:
		return lsn
	case 1:
		return lsn - 1
	case 2:
		return lsn + 1
	case 3:
		return lsn - mib
	case 4:
		return lsn - mib - 1
	case 5:
		return lsn + mib
	case 6:
		return 0
	case 7:
		return cluster.LSN(g.r.Intn(1 << 20))
	}
	return lsn + cluster.LSN(g.r.Intn(1<<30))
}

func (g gen) position() cluster.Position {
	return cluster.Position{Timeline: pick(g, tl, tl, tl-1, tl+1, 1, 0), LSN: g.lsn()}
}

func (g gen) tags() map[string]string {
	switch g.r.Intn(8) {
	case 0:
		return map[string]string{"nofailover": pick(g, "true", "yes", "on", "1", "TRUE")}
	case 1:
		return map[string]string{"nofailover": pick(g, "false", "no", "")}
	case 2:
		return map[string]string{}
	}
	return nil
}

// observation generates an observation over every field Decide reads, with
// values clustered around the interesting boundaries.
func (g gen) observation() Observation {
	var o Observation
	o.Now = pick(g, 0, time.Millisecond, 5*time.Second, 12*time.Second-time.Millisecond, 12*time.Second, 13*time.Second, now, time.Hour)
	if g.chance(30) {
		o.Now = g.duration(200 * time.Second)
	}
	selfName := pick(g, genNames[:4]...)
	o.Self = cluster.MemberInfo{Name: selfName, Host: "10.0.0.1", Port: 5432, Tags: g.tags(), Witness: g.chance(5)}
	o.Settings = testSettings()
	if g.chance(10) {
		o.Settings.MaximumLag = pick(g, int64(0), int64(1), int64(1<<40))
		o.Settings.PrimaryStartTimeout = pick(g, time.Duration(0), time.Second, time.Minute)
		o.Settings.StartupGrace = pick(g, time.Duration(0), time.Second, time.Minute)
		o.Settings.RewindAfter = pick(g, time.Duration(0), time.Second, time.Minute)
		o.Settings.FenceMargin = pick(g, time.Duration(0), 500*time.Millisecond, 2*time.Second)
	}
	o.StoreOK = g.chance(85)

	v := &o.View
	v.Revision = int64(g.r.Intn(1000))
	switch g.r.Intn(6) {
	case 0:
		// absent
	case 1:
		v.Init = cluster.InitState{Present: true, Bootstrapper: pick(g, genNames...), Revision: 1}
	case 2:
		v.Init = cluster.InitState{Present: true, Bootstrapper: selfName, Revision: 1}
	case 3:
		v.Init = cluster.InitState{Present: true, SystemID: otherSysID, Revision: 1}
	case 4:
		v.Init = cluster.InitState{Present: true, Revision: 1} // malformed
	default:
		v.Init = cluster.InitState{Present: true, SystemID: sysID, Revision: 1}
	}
	if g.chance(95) {
		v.Members = map[string]cluster.MemberInfo{}
		for _, n := range genNames {
			if !g.chance(80) {
				continue
			}
			m := cluster.MemberInfo{Name: n, Host: "10.0.0.2", Port: 5432, Tags: g.tags(), Witness: n == "w-0" || g.chance(5)}
			if n == selfName && g.chance(80) {
				m = o.Self
				m.Tags = cloneTags(o.Self.Tags)
			}
			v.Members[n] = m
		}
	}
	if g.chance(95) {
		v.Statuses = map[string]cluster.MemberStatus{}
		for _, n := range genNames {
			if !g.chance(70) {
				continue
			}
			v.Statuses[n] = cluster.MemberStatus{
				Name: n, Role: pick(g, genRoles...), State: pick(g, genStates...), Position: g.position(),
				Following: pick(g, "", "pg-0", "pg-1"), Streaming: g.chance(50), SystemID: pick(g, genSysIDs...),
			}
		}
	}
	if !g.chance(35) {
		name := pick(g, genNames...)
		if g.chance(35) {
			name = selfName
		}
		v.Leader = &cluster.Leader{Name: name, LeaseID: pick(g, myLease, myLease, peerLease, 0), Revision: int64(g.r.Intn(100))}
	}
	if g.chance(70) {
		v.Optime = &cluster.Optime{Position: g.position(), Leader: pick(g, genNames...)}
	}
	for i, n := 0, g.r.Intn(4); i < n; i++ {
		v.History = append(v.History, cluster.HistoryEntry{Timeline: uint32(g.r.Intn(6)), SwitchLSN: g.lsn(), Leader: pick(g, genNames...)})
	}
	if g.chance(90) {
		v.Config = &cluster.Config{TTL: 4 * time.Second, LoopInterval: time.Second, Paused: g.chance(15)}
	}
	o.WallNow = g.wallNow()
	if g.chance(35) {
		v.Switchover = g.switchover(selfName)
	}
	o.Requests = g.requests()

	o.Lease = Lease{Held: g.chance(85), ID: pick(g, myLease, myLease, peerLease), Deadline: o.Now - 2*time.Second + g.duration(8*time.Second)}
	if g.chance(5) {
		o.Lease.Deadline = 0
	}
	switch g.r.Intn(10) {
	case 0, 1:
		o.Data = Data{Kind: DataEmpty}
	case 2:
		o.Data = Data{Kind: DataInvalid, Problem: "junk"}
	default:
		o.Data = Data{Kind: DataValid, SystemID: pick(g, genSysIDs...), ControlState: pick(g, genControl...)}
		if g.chance(60) {
			o.Data.Checkpoint = g.position()
		}
	}
	o.PG = PG{
		Running:    g.chance(70),
		Ready:      g.chance(80),
		InRecovery: g.chance(50),
		SystemID:   pick(g, genSysIDs...),
		Position:   g.position(),
		Streaming:  g.chance(40),
		Upstream:   pick(g, "", "pg-0", "pg-1", "pg-2", selfName),
	}
	if g.chance(20) {
		o.Memory.PrimaryDownSince = g.duration(o.Now)
	}
	if g.chance(20) {
		o.Memory.BehindSince = g.duration(o.Now)
	}
	if g.chance(20) {
		o.LastRewindError = "pg_rewind failed"
	}
	if g.chance(15) {
		o.Memory.Restarting = true
	}
	if g.chance(25) {
		o.Memory.SwitchoverWaitSince = g.waitSince(o.Now)
	}
	return o
}

// Operator requests.

var genWall = time.Date(2026, 11, 21, 3, 0, 0, 0, time.UTC)

func (g gen) wallNow() time.Time {
	if g.chance(5) {
		return time.Time{}
	}
	return genWall
}

// switchover generates a request around the boundaries: due now, exactly
// due, just not due; for the leader, another member, nobody; naming each
// member, an unknown one or none.
func (g gen) switchover(selfName string) *cluster.Switchover {
	sw := &cluster.Switchover{
		Kind:        pick(g, cluster.KindSwitchover, cluster.KindSwitchover, cluster.KindFailover),
		Leader:      pick(g, "", "pg-0", "pg-1", "pg-2", selfName, selfName),
		Candidate:   pick(g, "", "pg-0", "pg-1", "pg-2", "pg-3", "w-0", "pg-9", selfName),
		RequestedAt: genWall.Add(-time.Minute),
		Revision:    int64(g.r.Intn(100)),
	}
	switch g.r.Intn(6) {
	case 0:
		sw.ScheduledAt = genWall
	case 1:
		sw.ScheduledAt = genWall.Add(time.Nanosecond)
	case 2:
		sw.ScheduledAt = genWall.Add(-time.Hour)
	case 3:
		sw.ScheduledAt = genWall.Add(time.Hour)
	}
	return sw
}

func (g gen) requests() Requests {
	return Requests{Restart: g.chance(12), Reinit: g.chance(12)}
}

// waitSince is a wait-window start around the 2×TTL boundary.
func (g gen) waitSince(now time.Duration) time.Duration {
	w := 2 * testSettings().TTL
	d := pick(g, now, now-w, now-w+time.Millisecond, now-w-time.Millisecond, now-time.Second, g.duration(now), now+time.Second)
	if d < 0 {
		d = 0
	}
	return d
}

// perturbed starts from the healthy base and applies a random stack of the
// scenario mods, so deep paths (the race, crashes, rewinds) are hit often.
func (g gen) perturbed() Observation {
	o := base()
	if g.chance(40) {
		primary(&o)
	}
	if g.chance(40) {
		race(&o)
	}
	mods := []func() mod{
		func() mod { return self(pick(g, "pg-0", "pg-1", "pg-2")) },
		func() mod { return leaderIs(pick(g, "pg-0", "pg-1", "pg-2")) },
		func() mod { return noLeaderKey },
		func() mod { return writable },
		func() mod { return pgStopped },
		func() mod { return pgStarting },
		func() mod { return control(pick(g, genControl...)) },
		func() mod { return emptyData },
		func() mod { return freshStore },
		func() mod { return initBy(pick(g, "pg-0", "pg-1", "pg-2")) },
		func() mod { return storeUnreachable },
		func() mod { return pausedCluster },
		func() mod { return deadlineIn(g.duration(5*time.Second) - time.Second) },
		func() mod { return at(g.duration(30 * time.Second)) },
		func() mod { return myPos(g.position()) },
		func() mod { return statusPos(pick(g, genNames...), g.position()) },
		func() mod { return dropStatus(pick(g, genNames...)) },
		func() mod { return optimeAt(g.position()) },
		func() mod { return tag(pick(g, "pg-0", "pg-1", "pg-2"), "nofailover", pick(g, "true", "false")) },
		func() mod { return unregister(pick(g, "pg-0", "pg-1", "pg-2")) },
		func() mod {
			return status(pick(g, genNames...), func(st *cluster.MemberStatus) {
				st.Role, st.State = pick(g, genRoles...), pick(g, genStates...)
			})
		},
		func() mod { return memory(Memory{PrimaryDownSince: g.duration(now), BehindSince: g.duration(now)}) },
		func() mod { return func(o *Observation) { o.LastRewindError = "boom" } },
		func() mod { return func(o *Observation) { o.Lease.Held = false } },
		func() mod {
			return func(o *Observation) {
				if o.View.Leader != nil {
					o.View.Leader.LeaseID = pick(g, peerLease, 0)
				}
			}
		},
		func() mod { return func(o *Observation) { o.PG.InRecovery = !o.PG.InRecovery } },
		func() mod { return func(o *Observation) { o.PG.Streaming = !o.PG.Streaming } },
		func() mod { return func(o *Observation) { o.PG.Upstream = pick(g, "", "pg-0", "pg-2") } },
		func() mod { return func(o *Observation) { o.PG.SystemID = pick(g, genSysIDs...) } },
		func() mod { return func(o *Observation) { o.Data.SystemID = pick(g, genSysIDs...) } },
		func() mod {
			return func(o *Observation) { o.WallNow = g.wallNow(); o.View.Switchover = g.switchover(o.Self.Name) }
		},
		func() mod {
			// A handover in progress: the leader released the key after
			// publishing its checkpoint; its successor is named.
			return func(o *Observation) {
				o.WallNow = genWall
				o.View.Leader = nil
				o.View.Switchover = &cluster.Switchover{Kind: pick(g, cluster.KindSwitchover, cluster.KindFailover), Leader: "pg-0",
					Candidate: pick(g, "", "pg-1", "pg-2"), RequestedAt: genWall}
			}
		},
		func() mod { return func(o *Observation) { o.Requests = g.requests() } },
		func() mod { return func(o *Observation) { o.Data.Checkpoint = g.position() } },
		func() mod {
			return func(o *Observation) {
				o.View.History = append(slices.Clone(o.View.History), cluster.HistoryEntry{Timeline: pick(g, tl, tl+1, tl-1), SwitchLSN: g.lsn(), Leader: "pg-2"})
			}
		},
		func() mod {
			return func(o *Observation) {
				o.Memory.Restarting = g.chance(50)
				o.Memory.SwitchoverWaitSince = g.waitSince(o.Now)
			}
		},
	}
	for i, n := 0, 1+g.r.Intn(6); i < n; i++ {
		pick(g, mods...)()(&o)
	}
	return o
}

// ---------------------------------------------------------------------------
// Deep copy, for the no-mutation property.
// ---------------------------------------------------------------------------

func cloneTags(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func cloneObs(o Observation) Observation {
	c := o
	c.Self.Tags = cloneTags(o.Self.Tags)
	v := &c.View
	if o.View.Leader != nil {
		l := *o.View.Leader
		v.Leader = &l
	}
	if o.View.Members != nil {
		v.Members = make(map[string]cluster.MemberInfo, len(o.View.Members))
		for k, m := range o.View.Members {
			m.Tags = cloneTags(m.Tags)
			v.Members[k] = m
		}
	}
	if o.View.Statuses != nil {
		v.Statuses = make(map[string]cluster.MemberStatus, len(o.View.Statuses))
		for k, s := range o.View.Statuses {
			v.Statuses[k] = s
		}
	}
	if o.View.Optime != nil {
		op := *o.View.Optime
		v.Optime = &op
	}
	if o.View.History != nil {
		v.History = slices.Clone(o.View.History)
	}
	if o.View.Config != nil {
		cfg := *o.View.Config
		v.Config = &cfg
	}
	if o.View.Switchover != nil {
		sw := *o.View.Switchover
		v.Switchover = &sw
	}
	return c
}

// ---------------------------------------------------------------------------
// The properties.
// ---------------------------------------------------------------------------

func holdsKey(o Observation) bool {
	l := o.View.Leader
	return l != nil && l.Name == o.Self.Name && o.Lease.Held && l.LeaseID == o.Lease.ID
}

// dueRequest is the switchover/failover request if its time has come
// (restated here, not taken from the code under test).
func dueRequest(o Observation) *cluster.Switchover {
	sw := o.View.Switchover
	if sw == nil || (!sw.ScheduledAt.IsZero() && o.WallNow.Before(sw.ScheduledAt)) {
		return nil
	}
	return sw
}

// requestsHonoured: whether restart/reinit requests may act (valid,
// bootstrapped data; store reachable; nothing to fence).
func requestsHonoured(o Observation) bool {
	return o.StoreOK && o.Data.Kind == DataValid && o.View.Init.SystemID != "" && !o.Self.Witness
}

func isPaused(o Observation) bool {
	return o.StoreOK && o.View.Config != nil && o.View.Config.Paused
}

func kinds(d Decision) []Kind {
	out := make([]Kind, len(d.Actions))
	for i, a := range d.Actions {
		out[i] = a.Kind
	}
	return out
}

func indexOf(ks []Kind, k Kind) int { return slices.Index(ks, k) }

// decideChecked runs Decide and reports a panic as an error (property a),
// input mutation (b) and non-determinism.
func decideChecked(o Observation) (d Decision, errs []string) {
	before := cloneObs(o)
	func() {
		defer func() {
			if r := recover(); r != nil {
				errs = append(errs, fmt.Sprintf("(a) Decide panicked: %v", r))
			}
		}()
		d = Decide(o)
	}()
	if len(errs) > 0 {
		return d, errs
	}
	if !reflect.DeepEqual(o, before) {
		errs = append(errs, fmt.Sprintf("(b) Decide mutated its input:\nbefore %+v\nafter  %+v", before, o))
	}
	if d2 := Decide(cloneObs(before)); !reflect.DeepEqual(d, d2) {
		errs = append(errs, fmt.Sprintf("Decide is not deterministic:\n%+v\n%+v", d, d2))
	}
	return d, errs
}

// invariants returns every property d violates for o.
func invariants(o Observation, d Decision) []string {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	ks := kinds(d)
	has := func(k Kind) bool { return slices.Contains(ks, k) }
	acquireAt := indexOf(ks, ActAcquireLeader)
	held := holdsKey(o)
	pausedNow := isPaused(o)

	// (s) Memory.Streamed, once set, is kept; it is set by streaming while
	// another member holds the key, and by nothing else.
	streamedNow := o.PG.Streaming && o.View.Leader != nil && o.View.Leader.Name != o.Self.Name
	if d.Memory.Streamed != (o.Memory.Streamed || streamedNow) {
		bad("(s) Memory.Streamed = %v after %v, streaming from a leader %v", d.Memory.Streamed, o.Memory.Streamed, streamedNow)
	}

	// (c) writable starts only with the key, taken first in the same list
	// or already held with our lease.
	for i, k := range ks {
		if (k == ActPromote || k == ActStartPrimary) && !held && (acquireAt < 0 || acquireAt > i) {
			bad("(c) %s without acquiring or holding the leader key", k)
		}
	}

	// (d) a writable PostgreSQL without the key is fenced, first thing.
	// Exempt: a witness runs no database; a Fatal decision exits (and
	// stops a foreign PostgreSQL); a paused cluster never fences; a primary
	// every member promised (the failsafe) may serve until FenceMargin
	// before the promises end, unless the store shows another member
	// holding the key.
	promisedUntil := o.Memory.FailsafeUntil
	if c := o.Failsafe.AllConfirmedAt; c > 0 {
		promisedUntil = max(promisedUntil, c+o.Settings.TTL)
	}
	underFailsafe := o.Now+o.Settings.FenceMargin < promisedUntil &&
		(!o.StoreOK || o.View.Leader == nil || o.View.Leader.Name == o.Self.Name)
	if underFailsafe && (has(ActPromote) || has(ActStartPrimary)) {
		bad("(d) a primary serving under the failsafe starts or promotes")
	}
	if o.PG.Writable() && !held && !o.Self.Witness && d.Fatal == "" && !pausedNow && !underFailsafe {
		if len(ks) == 0 || ks[0] != ActFence {
			bad("(d) writable PostgreSQL without the leader key not fenced first")
		}
	}

	// (e) Fatal: touch nothing but stopping PostgreSQL.
	if d.Fatal != "" {
		for _, k := range ks {
			if k != ActStop {
				bad("(e) Fatal decision with action %s", k)
			}
		}
	}

	// (f) nofailover never races for the key. Bootstrapping needs it, and
	// re-acquiring a key already bound to our lease is a no-op (asLeader
	// finishing a promotion): both are allowed.
	if o.Self.NoFailover() && has(ActAcquireLeader) {
		bootstrapping := !o.View.Init.Present || o.View.Init.Bootstrapper == o.Self.Name
		if !bootstrapping && !held {
			bad("(f) nofailover member acquires the leader key")
		}
	}

	// (g) a paused cluster only reports. A Fatal decision may still stop a
	// PostgreSQL of another cluster (see TestForeignAndInvalidData).
	if pausedNow && d.Fatal == "" {
		for _, k := range ks {
			switch k {
			case ActPublishOptime, ActEnsureSlots, ActEnsureRoles, ActMoveRaftLeader:
			case ActStop, ActAckRestart, ActReinit, ActAckReinit, ActStartStandby:
				// An operator's restart or reinit is carried out even
				// while paused, and a restarted PostgreSQL started again.
				if !(requestsHonoured(o) && (o.Requests.Restart || o.Requests.Reinit)) &&
					!(k == ActStartStandby && o.Memory.Restarting && !o.PG.Running) {
					bad("(g) paused cluster got action %s", k)
				}
			case ActStartPrimary:
				if !(o.Memory.Restarting && !o.PG.Running && held) {
					bad("(g) paused cluster got action %s", k)
				}
			default:
				bad("(g) paused cluster got action %s", k)
			}
		}
	}

	// Without the store nothing changes role: at most a fence.
	if !o.StoreOK {
		for _, k := range ks {
			if k != ActFence && k != ActStop {
				bad("store unreachable but got action %s", k)
			}
		}
	}

	// A witness runs nothing.
	if o.Self.Witness && (len(ks) > 0 || d.Role != cluster.RoleWitness) {
		bad("witness got role %s, actions %v", d.Role, ks)
	}

	// Data is never destroyed silently.
	for i, k := range ks {
		stoppedFirst := !o.PG.Running || slices.Contains(ks[:i], ActStop) || slices.Contains(ks[:i], ActFence)
		switch k {
		case ActClone:
			if o.Data.Kind != DataEmpty || o.PG.Running {
				bad("clone into a non-empty data directory or with PostgreSQL running")
			}
		case ActInitdb:
			if o.Data.Kind != DataEmpty || o.PG.Running || o.View.Init.Present {
				bad("initdb with data, a running PostgreSQL or an existing cluster record")
			}
		case ActReinit:
			if (o.LastRewindError == "" && !o.Requests.Reinit) || !stoppedFirst || o.Data.Kind != DataValid {
				bad("reinit without a failed rewind, on running PostgreSQL, or of non-PostgreSQL data")
			}
		case ActRewind:
			if !stoppedFirst || o.Data.Kind != DataValid {
				bad("rewind of a running PostgreSQL or of non-PostgreSQL data")
			}
		}
		if o.Data.Kind == DataInvalid && k != ActStop {
			bad("invalid data directory but got action %s", k)
		}
	}

	// Sources are the current leader, never ourselves.
	for _, a := range d.Actions {
		switch a.Kind {
		case ActClone, ActRewind, ActReinit, ActFollow, ActStartStandby:
			if a.Target == "" {
				if a.Kind != ActStartStandby {
					bad("%s without a target", a.Kind)
				}
				continue
			}
			if a.Target == o.Self.Name || o.View.Leader == nil || a.Target != o.View.Leader.Name {
				bad("%s from %q, which is not the current leader or is ourselves", a.Kind, a.Target)
			}
		case ActNameCandidate:
			sw := o.View.Switchover
			if sw == nil || sw.Candidate != "" || a.Target == o.Self.Name || a.Target == "" {
				bad("%s %q for request %+v", a.Kind, a.Target, sw)
			}
		default:
			if a.Target != "" {
				bad("%s has a target %q", a.Kind, a.Target)
			}
		}
		if a.Kind == ActEnsureSlots {
			if !sort.StringsAreSorted(a.Slots) || len(slices.Compact(slices.Clone(a.Slots))) != len(a.Slots) {
				bad("slots not sorted/unique: %q", a.Slots)
			}
			for _, s := range a.Slots {
				if s == cluster.SlotName(o.Self.Name) || strings.Contains(s, "-") {
					bad("slot %q is ours or not sanitised", s)
				}
				for name, m := range o.View.Members {
					if m.Witness && cluster.SlotName(name) == s {
						bad("slot %q for a witness", s)
					}
				}
			}
		} else if a.Slots != nil {
			bad("%s carries slots", a.Kind)
		}
	}

	// Promotion order: key, promote, record, in that order.
	if p, r := indexOf(ks, ActPromote), indexOf(ks, ActRecordPromotion); r >= 0 && (p < 0 || p > r) {
		bad("record-promotion without a promotion before it")
	}
	// Never fence and start in the same breath.
	if has(ActFence) && (has(ActStartPrimary) || has(ActStartStandby) || has(ActPromote) || has(ActAcquireLeader)) {
		bad("fence together with start/promote/acquire: %v", ks)
	}

	// A promotion from the race is by the best eligible candidate, except
	// the named candidate of a manual failover (the operator's choice).
	// The primary that handed over in a switchover does not count: its
	// final position is the optime.
	sw := dueRequest(o)
	failoverToMe := sw != nil && sw.Kind == cluster.KindFailover && sw.Candidate == o.Self.Name
	if has(ActPromote) && !held && !failoverToMe {
		me := o.PG.Position
		if o.Self.NoFailover() {
			bad("nofailover member promotes")
		}
		if t := o.View.Timeline(); me.Timeline < t {
			bad("promotes on timeline %d behind the cluster's %d", me.Timeline, t)
		}
		if op := o.View.Optime; op != nil && op.Position.Timeline == me.Timeline && op.Position.LSN > me.LSN &&
			int64(op.Position.LSN-me.LSN) > o.Settings.MaximumLag {
			bad("promotes %d bytes behind the optime", op.Position.LSN-me.LSN)
		}
		for name, st := range o.View.Statuses {
			info, registered := o.View.Members[name]
			if name == o.Self.Name || (registered && (info.Witness || info.NoFailover())) ||
				st.Role == cluster.RolePrimary || st.Role == cluster.RoleWitness ||
				(sw != nil && sw.Kind == cluster.KindSwitchover && sw.Leader == name) {
				continue
			}
			if me.Less(st.Position) {
				bad("promotes at %v while candidate %s reports %v", me, name, st.Position)
			}
		}
		if !o.PG.Running || !o.PG.Ready || !o.PG.InRecovery {
			bad("promotes a PostgreSQL that is not a ready standby")
		}
	}
	if has(ActPromote) && !held && failoverToMe && o.Self.NoFailover() {
		bad("nofailover member promotes on a manual failover")
	}

	// (h) a leader handing over stops PostgreSQL, then publishes its final
	// checkpoint, then releases the key; it never releases the key of a
	// writable PostgreSQL without stopping it and publishing first.
	if p := indexOf(ks, ActPublishCheckpoint); p >= 0 {
		st, r := indexOf(ks, ActStop), indexOf(ks, ActReleaseLeader)
		if st < 0 || st > p || r < p {
			bad("(h) publish-checkpoint not between stop and release-leader: %v", ks)
		}
		if !held {
			bad("(h) publish-checkpoint without holding the leader key")
		}
	}
	if r := indexOf(ks, ActReleaseLeader); r >= 0 && o.PG.Writable() && !has(ActFence) {
		st, p := indexOf(ks, ActStop), indexOf(ks, ActPublishCheckpoint)
		if st < 0 || p < 0 || st > p || p > r {
			bad("(h) releases the key of a writable PostgreSQL without stop, publish-checkpoint first: %v", ks)
		}
	}

	bootstrapping := !o.View.Init.Present || o.View.Init.Bootstrapper == o.Self.Name
	// (i) while a due request names a live candidate, nobody else takes
	// the key, unless it waited out the window (then the ordinary rules).
	if sw != nil && sw.Candidate != "" && sw.Candidate != o.Self.Name && has(ActAcquireLeader) && !held && !bootstrapping {
		_, alive := o.View.Statuses[sw.Candidate]
		since := o.Memory.SwitchoverWaitSince
		waited := since != 0 && since <= o.Now && o.Now-since >= 2*o.Settings.TTL
		if alive && !waited {
			bad("(i) acquires the key while the %s names the live candidate %s", sw.Kind, sw.Candidate)
		}
	}
	// (j) the primary that handed over never takes the key back while the
	// request is pending.
	if sw != nil && sw.Kind == cluster.KindSwitchover && sw.Leader == o.Self.Name && !held && !bootstrapping &&
		(has(ActAcquireLeader) || has(ActPromote)) {
		bad("(j) the primary that handed over takes the key back")
	}
	// (k) the key holder is never re-initialised, and a refusal is not
	// mistaken for a reinit.
	if held && has(ActReinit) {
		bad("(k) reinit on the member holding the leader key")
	}
	if has(ActAckReinit) && has(ActReinit) && held {
		bad("(k) ack-reinit with a reinit on the key holder")
	}
	// Acknowledgements only answer a request.
	if has(ActAckRestart) && !o.Requests.Restart {
		bad("ack-restart without a restart request")
	}
	if has(ActAckReinit) && !o.Requests.Reinit {
		bad("ack-reinit without a reinit request")
	}
	if has(ActClearSwitchover) && o.View.Switchover == nil {
		bad("clear-switchover without a request")
	}

	// Role primary only for the key holder, a member about to take the
	// key, a writable PostgreSQL left alone in a paused cluster, or one
	// serving under the failsafe.
	if d.Role == cluster.RolePrimary && !held && !has(ActAcquireLeader) && !(pausedNow && o.PG.Writable()) && !(underFailsafe && o.PG.Writable()) {
		bad("role primary without the leader key")
	}

	// Memory does not come from the future.
	if o.Memory.PrimaryDownSince <= o.Now && o.Memory.BehindSince <= o.Now && o.Memory.SwitchoverWaitSince <= o.Now &&
		(d.Memory.PrimaryDownSince > o.Now || d.Memory.BehindSince > o.Now || d.Memory.SwitchoverWaitSince > o.Now) {
		bad("memory in the future: %+v at %s", d.Memory, o.Now)
	}

	if d.Role == "" || d.State == "" {
		bad("empty role or state")
	}
	if d.Message == "" && d.Fatal == "" {
		bad("no message")
	}
	return errs
}

// checkInvariants is used by the scenario tables too.
func checkInvariants(t testing.TB, o Observation, d Decision) {
	t.Helper()
	for _, e := range invariants(o, d) {
		t.Errorf("invariant: %s", e)
	}
}

func checkAll(t testing.TB, o Observation) Decision {
	t.Helper()
	d, errs := decideChecked(o)
	errs = append(errs, invariants(o, d)...)
	if len(errs) > 0 {
		t.Fatalf("%s\nobservation: %s\ndecision: role=%s state=%s actions=%q fatal=%q msg=%q",
			strings.Join(errs, "\n"), describe(o), d.Role, d.State, acts(d.Actions), d.Fatal, d.Message)
	}
	return d
}

func describe(o Observation) string {
	var b strings.Builder
	fmt.Fprintf(&b, "now=%s self=%s witness=%v tags=%v storeOK=%v\n", o.Now, o.Self.Name, o.Self.Witness, o.Self.Tags, o.StoreOK)
	fmt.Fprintf(&b, "  init=%+v leader=%+v optime=%+v history=%d config=%+v\n", o.View.Init, o.View.Leader, o.View.Optime, len(o.View.History), o.View.Config)
	fmt.Fprintf(&b, "  members=%v\n  statuses=%v\n", o.View.Members, o.View.Statuses)
	fmt.Fprintf(&b, "  lease=%+v data=%+v pg=%+v memory=%+v rewindErr=%q\n", o.Lease, o.Data, o.PG, o.Memory, o.LastRewindError)
	fmt.Fprintf(&b, "  wall=%s switchover=%+v requests=%+v history=%+v", o.WallNow.Format(time.RFC3339Nano), o.View.Switchover, o.Requests, o.View.History)
	return b.String()
}

// TestProperties checks the properties on 6,000 generated observations
// (fixed seeds) and that the generators reach every action kind, so a
// silently degenerate generator cannot pass.
func TestProperties(t *testing.T) {
	const perSeed = 1000
	seen := map[Kind]int{}
	roles := map[cluster.Role]int{}
	for seed := int64(1); seed <= 3; seed++ {
		r := rand.New(rand.NewSource(seed))
		g := gen{r}
		for i := 0; i < perSeed; i++ {
			for _, o := range []Observation{g.observation(), g.perturbed()} {
				d := checkAll(t, o)
				for _, k := range kinds(d) {
					seen[k]++
				}
				roles[d.Role]++
			}
		}
	}
	all := []Kind{ActClaimInit, ActAbortInit, ActInitdb, ActFinishInit, ActAcquireLeader, ActDeleteStaleLeader,
		ActReleaseLeader, ActStartPrimary, ActStartStandby, ActFollow, ActPromote, ActRecordPromotion,
		ActPublishOptime, ActEnsureSlots, ActEnsureRoles, ActMoveRaftLeader, ActStop, ActFence, ActRewind, ActReinit, ActClone,
		ActPublishCheckpoint, ActClearSwitchover, ActAckRestart, ActAckReinit}
	for _, k := range all {
		if seen[k] == 0 {
			t.Errorf("generators never produced a decision with %s", k)
		}
	}
	for _, r := range []cluster.Role{cluster.RolePrimary, cluster.RoleReplica, cluster.RoleStandbyNoLeader, cluster.RoleWitness, cluster.RoleUninitialized, cluster.RoleStopped} {
		if roles[r] == 0 {
			t.Errorf("generators never produced role %s", r)
		}
	}
	t.Logf("action kinds seen: %v", seen)
}

// TestPropertiesOnMutatedScenarios is a second, denser pass over single-field
// changes of the healthy base, seen from each member.
func TestPropertiesOnMutatedScenarios(t *testing.T) {
	r := rand.New(rand.NewSource(42))
	g := gen{r}
	for i := 0; i < 3000; i++ {
		checkAll(t, g.perturbed())
	}
}

// FuzzDecide drives the same properties from fuzzer bytes: the first byte
// chooses the generator, the rest are its choices.
func FuzzDecide(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0})
	f.Add([]byte{1})
	f.Add([]byte{1, 3, 3, 3, 3, 3, 3, 3, 3})
	f.Add([]byte("\x00holdfast primary race fence"))
	f.Add([]byte("\x01\x02\x07\x09\x0b\x0c\x10\x11\x13\x15\x16\x17\x18\x19"))
	r := rand.New(rand.NewSource(7))
	for i := 0; i < 16; i++ {
		b := make([]byte, 64+r.Intn(128))
		r.Read(b)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 4096 {
			return
		}
		s := &byteSource{b: data}
		g := gen{s}
		var o Observation
		if s.Intn(2) == 0 {
			o = g.observation()
		} else {
			o = g.perturbed()
		}
		checkAll(t, o)
	})
}
