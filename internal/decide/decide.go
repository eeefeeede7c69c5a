// Package decide is holdfast's role state machine: a pure function from what
// a member observes to what it should be and do next.
//
// Decide performs no I/O, reads no clock and starts no goroutines. Time comes
// in as a value (Observation.Now, on the agent's monotonic clock), and effects
// go out as data (Decision.Actions). The agent executes the actions in order
// and stops at the first that fails; the next loop observes again and decides
// afresh. Every rule below is therefore written so that a partially executed
// action list is safe and the next decision repairs it.
//
// The rules guard these invariants (docs/architecture.md explains each):
//
//   - Only the member holding the leader key, bound to its own live lease,
//     runs PostgreSQL writable. A writable PostgreSQL without the key is
//     fenced at once.
//   - A primary that cannot renew its lease fences itself FenceMargin before
//     the earliest moment the store could expire the lease, so no other
//     member can be promoted while it still accepts writes.
//   - A failover candidate must be at least as far along (timeline first,
//     then LSN) as every other candidate that reports, and within the
//     maximum lag of the last position the primary published.
//   - Data is never destroyed silently: a data directory of another cluster
//     stops the member; a re-clone only follows a failed pg_rewind, keeps the
//     old directory aside and says why.
package decide

import (
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// DataKind classifies the member's data directory.
type DataKind int

const (
	DataEmpty   DataKind = iota // missing or empty: may bootstrap or clone
	DataValid                   // a PostgreSQL data directory
	DataInvalid                 // something else: never touched
)

// Control states as pg_controldata prints them.
const (
	ControlInProduction      = "in production"
	ControlShutDown          = "shut down"
	ControlShutDownRecovery  = "shut down in recovery"
	ControlInCrashRecovery   = "in crash recovery"
	ControlInArchiveRecovery = "in archive recovery"
)

// Data is what the agent found in the data directory while PostgreSQL was
// not running (or the last such reading).
type Data struct {
	Kind         DataKind
	SystemID     string
	ControlState string // pg_controldata "Database cluster state"
	// Checkpoint is the latest checkpoint's timeline and location; after a
	// clean shutdown it is the last record in the directory.
	Checkpoint cluster.Position
	Problem    string // for DataInvalid: what is there
}

// WasPrimary reports whether the directory was last used by a writable
// primary (running, crashed or cleanly shut down). Such a directory may hold
// WAL the new primary never received, so it must be rewound before it
// follows anyone.
func (d Data) WasPrimary() bool {
	switch d.ControlState {
	case ControlInProduction, ControlShutDown, ControlInCrashRecovery:
		return true
	}
	return false
}

// PG is the state of the member's PostgreSQL process.
type PG struct {
	Running bool // the postmaster process exists
	Ready   bool // it accepts connections and answered the status query
	// RefusesConnections: it answered on the agent's open connection but
	// a new connection could not be opened (a frozen or hung postmaster;
	// its running sessions go on).
	RefusesConnections bool
	InRecovery         bool
	SystemID           string
	Position           cluster.Position
	// ReplayLSN is a standby's replayed WAL (0 on a primary), for the API's
	// health checks and lag only: no decision reads it. Failover compares
	// Position, the WAL a promotion would keep, however far replay trails.
	ReplayLSN cluster.LSN
	Streaming bool
	Upstream  string // member name PostgreSQL is configured to follow ("" = none)
	// RunsAsPrimary: the postmaster was started as a primary or promoted
	// (known to the agent even when PostgreSQL does not answer).
	RunsAsPrimary bool
	// Sync is synchronous_standby_names as PostgreSQL currently applies it;
	// SyncUnreadable is set when it is not in holdfast's format (then
	// holdfast cannot tell what it guarantees, and replaces it).
	Sync           SyncSet
	SyncUnreadable bool
	// FlushLSN and Replicas are read on a primary only: its flushed WAL
	// and its walsenders.
	FlushLSN cluster.LSN
	Replicas []Replica
}

// Writable reports whether PostgreSQL accepts writes right now.
func (p PG) Writable() bool { return p.Running && p.Ready && !p.InRecovery }

// MayBeWritable reports whether PostgreSQL may accept writes: it is
// writable, or it runs as a primary (started as one, or promoted) but does
// not answer this agent (overloaded, out of connection slots, the agent's
// connection cut) — its clients may still be committing.
func (p PG) MayBeWritable() bool {
	return p.Writable() || (p.Running && !p.Ready && p.RunsAsPrimary)
}

// Lease is this member's view of its own store lease.
type Lease struct {
	Held bool
	ID   int64
	// Deadline is the earliest moment, on the agent's monotonic clock, at
	// which the store may expire the lease: the start of the last successful
	// renewal plus the TTL the store granted.
	Deadline time.Duration
}

// Settings are the numbers the rules use. They come from the cluster's
// dynamic configuration in the store, falling back to the member's file.
type Settings struct {
	TTL                 time.Duration
	LoopInterval        time.Duration
	FenceMargin         time.Duration
	MaximumLag          int64
	PrimaryStartTimeout time.Duration
	// StartupGrace is how long after the agent starts a candidate waits for
	// every registered member to report a WAL position before it races for
	// leadership. It guards the full-cluster restart: the old primary, which
	// may hold commits no replica received and the store never saw, gets
	// the chance to win. It ends early once this agent has streamed from a
	// leader (Memory.Streamed).
	StartupGrace time.Duration
	// RewindAfter is how long a replica may fail to stream while on an older
	// timeline than the primary before it is rewound.
	RewindAfter time.Duration
	// SwitchoverDrain is how long a primary keeps serving after it first
	// sees a due switchover before it stops: proxies watching the store see
	// the request too and start holding new connections, so no new session
	// reaches a primary that is about to stop.
	SwitchoverDrain time.Duration
	// SwitchoverCatchUp is how long, from its first sight of a due
	// switchover, a primary keeps serving while the candidates that
	// stream are beyond the maximum lag (a write burst), measuring again
	// every catchUpPoll, before it cancels the request.
	SwitchoverCatchUp time.Duration
	// SyncMode and SyncCount are the cluster's synchronous replication mode
	// (cluster.Sync*) and N.
	SyncMode  string
	SyncCount int
	// SyncSettle is how long after PostgreSQL is seen running a new
	// synchronous_standby_names the primary assumes every walsender has
	// applied it (they reload within milliseconds of the postmaster).
	SyncSettle time.Duration
}

// Memory is what the agent remembers between loops. Decide receives the
// previous Memory and returns the next one; the agent stores it verbatim.
type Memory struct {
	// PrimaryDownSince is when the leader's own PostgreSQL was first seen
	// not serving, or accepting no new connection (0 = serving).
	PrimaryDownSince time.Duration
	// BehindSince is when a replica was first seen not streaming while on an
	// older timeline than the primary (0 = not in that state).
	BehindSince time.Duration
	// Restarting is set while an operator-requested restart has stopped
	// PostgreSQL and not yet started it again.
	Restarting bool
	// SwitchoverWaitSince is when this member, with no leader, started
	// waiting under a due switchover or failover request: the candidate for
	// the old primary's last WAL, the others for the candidate, the old
	// primary for a successor (0 = not waiting).
	SwitchoverWaitSince time.Duration
	// SwitchoverSeenAt is when the primary first saw a due switchover
	// request (0 = none): it waits for a candidate within the maximum lag
	// for at most Settings.SwitchoverCatchUp, and drains for
	// Settings.SwitchoverDrain, from then.
	SwitchoverSeenAt time.Duration
	// FailsafeUntil is when the promises of the last failsafe round end
	// (read before asking + TTL): a primary serving under the failsafe
	// stops FenceMargin before, unless confirmed again (0 = not in
	// failsafe).
	FailsafeUntil time.Duration
	// SyncSeen is the primary's synchronous_standby_names (SyncSet.Key)
	// first observed at SyncSeenSince. Once it has settled, SyncMark is the
	// primary's flushed WAL (SyncMarked): a standby that has flushed that
	// far holds every commit acknowledged before the setting applied.
	SyncSeen      string
	SyncSeenSince time.Duration
	SyncMarked    bool
	SyncMark      cluster.LSN
	// PreferWaitSince is when this member, eligible to take over, first
	// stood back for a preferred candidate holding the same WAL (0 = not
	// standing back): it does so for at most preferWait.
	PreferWaitSince time.Duration
	// Streamed is set once this agent has seen its PostgreSQL stream WAL
	// while another member held the leader key, and stays set for the
	// agent's life (Decide keeps it whatever the decision). The cluster is
	// then running, not starting again: the startup grace, which waits
	// for every member's report in case the last primary holds commits
	// the store never saw, no longer applies, and a primary that fails in
	// the first 3 × TTL after a replica's restart is replaced as fast as
	// any other (the grace made the replicas wait for the dead primary's
	// pod to come back and report).
	Streamed bool
}

// preferWait bounds how long an eligible candidate stands back for a
// preferred one holding the same WAL, in loop intervals: long enough for
// the preferred candidate's own loop to take the key, short enough that a
// preferred candidate which cannot (it is itself waiting for something)
// costs the failover little.
const preferWait = 2

// Observation is everything Decide needs. It must not be mutated by Decide.
type Observation struct {
	Now      time.Duration // agent monotonic clock
	Self     cluster.MemberInfo
	Settings Settings
	// StoreOK is false when the last read of the store failed; View is then
	// the last successful read (possibly empty) and must not be trusted for
	// anything but logging.
	StoreOK bool
	View    cluster.View
	Lease   Lease
	Data    Data
	PG      PG
	Memory  Memory
	// LastRewindError is the error of the last failed pg_rewind ("" when the
	// last rewind succeeded or none was tried).
	LastRewindError string
	// WallNow is this host's wall clock, used only to compare with the
	// scheduled time of a switchover an operator asked for.
	WallNow time.Time
	// Requests are operator requests addressed to this member.
	Requests Requests
	// Failsafe is this member's part in the consensus-loss failsafe.
	Failsafe Failsafe
	// HandoverAborted, on the leader, says why its stop for the pending
	// switchover request (View.Switchover) was escalated to an immediate
	// shutdown before every standby confirmed the final WAL ("" = no such
	// stop for this request). Its directory holds every commit, but the
	// candidate may lack the tail: it must not hand over.
	HandoverAborted string
}

// Failsafe: while the consensus store is out of reach, a primary that can
// reach every other member keeps serving, because each has promised not to
// take the leader key for a TTL (the agent asks every loop that
// NeedsFailsafeRound says so, and refuses its own leader race while it has
// promised another member).
type Failsafe struct {
	// AllConfirmedAt is when (agent clock, read before asking) every other
	// registered member last promised this primary; 0 = not this loop.
	AllConfirmedAt time.Duration
	// PromisedTo is the primary this member last promised, at PromisedAt
	// (agent clock); "" = none.
	PromisedTo string
	PromisedAt time.Duration
}

// Kind names an action.
type Kind string

const (
	ActClaimInit         Kind = "claim-init"          // create the bootstrap key (CAS)
	ActAbortInit         Kind = "abort-init"          // delete our own unfinished bootstrap key
	ActInitdb            Kind = "initdb"              // run initdb into the empty data directory
	ActFinishInit        Kind = "finish-init"         // record the system identifier; create roles; publish config
	ActAcquireLeader     Kind = "acquire-leader"      // CAS-create the leader key with our lease; fails if taken
	ActDeleteStaleLeader Kind = "delete-stale-leader" // delete our own leader key left by a previous run
	ActReleaseLeader     Kind = "release-leader"      // delete the leader key if it is ours
	ActStartPrimary      Kind = "start-primary"       // start PostgreSQL writable (we hold the key)
	ActStartStandby      Kind = "start-standby"       // start PostgreSQL in recovery, following Target ("" = none)
	ActFollow            Kind = "follow"              // point a running standby at Target (reload)
	ActPromote           Kind = "promote"             // promote the running standby
	ActRecordPromotion   Kind = "record-promotion"    // append the new timeline to the history
	ActPublishOptime     Kind = "publish-optime"      // publish the primary's WAL position
	ActEnsureSlots       Kind = "ensure-slots"        // replication slots for Slots
	ActEnsureRoles       Kind = "ensure-roles"        // the roles the primary keeps (the session proxy's auth role)
	ActMoveRaftLeader    Kind = "move-raft-leader"    // move etcd raft leadership off this member
	ActStop              Kind = "stop"                // stop PostgreSQL (fast shutdown)
	ActFence             Kind = "fence"               // stop accepting writes now (fast shutdown, escalating)
	ActRewind            Kind = "rewind"              // pg_rewind from Target
	ActReinit            Kind = "reinit"              // move data aside and clone from Target
	ActClone             Kind = "clone"               // pg_basebackup from Target into the empty data directory
	ActPublishCheckpoint Kind = "publish-checkpoint"  // publish the stopped primary's last checkpoint as the optime
	ActClearSwitchover   Kind = "clear-switchover"    // delete the pending switchover/failover request
	ActNameCandidate     Kind = "name-candidate"      // replace the pending request by one naming Target as the candidate
	ActAckRestart        Kind = "ack-restart"         // the restart request has been carried out
	ActAckReinit         Kind = "ack-reinit"          // the reinit request has been carried out (or refused)
	ActSetSync           Kind = "set-sync"            // set PostgreSQL's synchronous_standby_names to Sync
	ActPutSync           Kind = "put-sync"            // record Sync (with this member as leader) in the store (CAS)
)

// Action is one effect for the agent to execute.
type Action struct {
	Kind   Kind
	Target string   // member to clone/rewind/follow from
	Slots  []string // for ActEnsureSlots
	Reason string   // why, for logs and history
	// Graceful, for ActStop: let open sessions finish their transactions
	// (smart shutdown, bounded) before terminating them (fast shutdown).
	Graceful bool
	// Sync, for ActSetSync and ActPutSync.
	Sync SyncSet
}

// Decision is the output of Decide.
type Decision struct {
	Role    cluster.Role
	State   cluster.State
	Message string // a human-readable reason for the current state
	Actions []Action
	Memory  Memory
	// Fatal, when set, means the member must stop and touch nothing: its data
	// directory does not belong here. The agent exits with this message.
	Fatal string
	// RecheckIn, when positive, asks the agent to decide again after this
	// long instead of a full loop interval (a timed step is due).
	RecheckIn time.Duration
}

// Decide returns the next role and actions for obs. It is pure.
//
// Memory not set in the returned Decision is forgotten: each rule states
// explicitly what it still needs to remember. The exception is
// Memory.Streamed, a fact for the agent's life, which Decide itself
// carries over.
func Decide(o Observation) Decision {
	d := decideRole(o)
	d.Memory.Streamed = o.Memory.Streamed || o.PG.Streaming && o.View.Leader != nil && o.View.Leader.Name != o.Self.Name
	return d
}

// decideRole is Decide but for the facts Memory keeps for the agent's
// life, which Decide carries over whatever the decision.
func decideRole(o Observation) Decision {
	if o.Self.Witness {
		return Decision{Role: cluster.RoleWitness, State: cluster.StateRunning, Message: "witness: votes in the store, runs no database"}
	}
	if o.Data.Kind == DataInvalid {
		return Decision{Role: cluster.RoleUninitialized, State: cluster.StateFailed,
			Fatal: fmt.Sprintf("data directory is not a PostgreSQL data directory and is not empty (%s); holdfast will not touch it: move it away or point data_dir elsewhere", o.Data.Problem)}
	}
	if c := o.Failsafe.AllConfirmedAt; c > 0 {
		// Every other member promised until c + TTL: whatever the store
		// shows, the promises last that long.
		o.Memory.FailsafeUntil = max(o.Memory.FailsafeUntil, c+o.Settings.TTL)
	}
	if !o.StoreOK {
		return storeDown(o)
	}
	v := o.View
	if o.Data.Kind == DataValid && v.Init.SystemID != "" && o.Data.SystemID != "" && o.Data.SystemID != v.Init.SystemID {
		return Decision{Role: cluster.RoleStopped, State: cluster.StateFailed,
			Fatal: fmt.Sprintf("data directory belongs to another PostgreSQL cluster (system identifier %s, but this cluster was bootstrapped with %s); holdfast will not touch it: move it away to let this member clone a fresh copy, or point data_dir elsewhere", o.Data.SystemID, v.Init.SystemID)}
	}
	if o.PG.Running && o.PG.Ready && o.PG.SystemID != "" && v.Init.SystemID != "" && o.PG.SystemID != v.Init.SystemID {
		return Decision{Role: cluster.RoleStopped, State: cluster.StateFailed,
			Actions: []Action{{Kind: ActStop, Reason: "running PostgreSQL belongs to another cluster"}},
			Fatal:   fmt.Sprintf("running PostgreSQL has system identifier %s but the cluster was bootstrapped with %s", o.PG.SystemID, v.Init.SystemID)}
	}
	holdsKey := v.Leader != nil && v.Leader.Name == o.Self.Name && o.Lease.Held && v.Leader.LeaseID == o.Lease.ID
	// Operator requests never pre-empt fencing: neither of a writable
	// PostgreSQL without the key nor of a primary whose lease may expire.
	fenceDue := o.PG.Writable() && (!holdsKey || o.Now+o.Settings.FenceMargin >= o.Lease.Deadline)
	// A primary that does not answer may still be committing for its
	// clients: without the key it is fenced like a writable one (a paused
	// cluster never fences).
	if !holdsKey && o.PG.Running && !o.PG.Ready && o.PG.RunsAsPrimary && (v.Config == nil || !v.Config.Paused) {
		return fence(o, "PostgreSQL runs as a primary but does not answer, and this member does not hold the leader key")
	}
	if o.Data.Kind == DataValid && v.Init.SystemID != "" && !fenceDue {
		if d, ok := restartOrReinit(o, holdsKey); ok {
			return d
		}
	}
	if v.Config != nil && v.Config.Paused {
		return paused(o, holdsKey)
	}
	if o.Data.Kind == DataEmpty && !o.PG.Running {
		return noData(o)
	}
	if !v.Init.Present || v.Init.Bootstrapper != "" {
		return initPending(o)
	}

	leader := v.Leader
	switch {
	case leader != nil && leader.Name == o.Self.Name && o.Lease.Held && leader.LeaseID == o.Lease.ID:
		return asLeader(o)
	case leader != nil && leader.Name == o.Self.Name:
		// Our name, but bound to a lease we do not hold: left by a previous
		// run of this agent, or by this run before its lease expired while
		// it served under the failsafe (then it takes the key back: every
		// member promised not to take it). Otherwise stop writes first if
		// PostgreSQL is somehow writable, then clear the key so the race can
		// run.
		if o.PG.Writable() && inFailsafe(o) {
			return retakeAfterFailsafe(o, []Action{{Kind: ActDeleteStaleLeader, Reason: "the store is back: the key of the lease that expired during the failsafe"}})
		}
		if o.PG.Writable() {
			return fence(o, "the leader key is bound to a lease this agent does not hold")
		}
		return Decision{Role: roleOf(o), State: cluster.StateWaiting, Message: "clearing the leader key left by a previous run of this member",
			Actions: []Action{{Kind: ActDeleteStaleLeader, Reason: "leader key from a previous run"}}}
	case leader != nil:
		return asFollower(o, leader.Name)
	default:
		return noLeader(o)
	}
}

// storeDown: without the store nothing may change role. A primary keeps
// serving only while its lease is provably valid, or while every other
// member has promised it not to take the leader key (the failsafe), and
// fences in time otherwise.
func storeDown(o Observation) Decision {
	if o.PG.MayBeWritable() {
		// The lease alone does not make us primary: every member holds one.
		// Keep serving only if the last successful read showed the leader
		// key bound to the lease we still hold (or we already serve under
		// the failsafe); otherwise a fence that failed while the store was
		// reachable would never be retried.
		l := o.View.Leader
		byKey := o.Lease.Held && l != nil && l.Name == o.Self.Name && l.LeaseID == o.Lease.ID
		if !byKey && !inFailsafe(o) {
			return fence(o, "cannot reach the consensus store and the last read of it does not show this member holding the leader key")
		}
		mem := o.Memory
		if byKey && o.Now+o.Settings.FenceMargin < o.Lease.Deadline {
			return Decision{Role: cluster.RolePrimary, State: cluster.StateRunning, Memory: mem,
				Message: fmt.Sprintf("consensus store unreachable; lease valid for %s more", (o.Lease.Deadline - o.Now).Round(time.Millisecond))}
		}
		if left := mem.FailsafeUntil - o.Settings.FenceMargin - o.Now; left > 0 {
			return Decision{Role: cluster.RolePrimary, State: cluster.StateRunning, Memory: mem, RecheckIn: left,
				Message: fmt.Sprintf("consensus store unreachable; failsafe: every member confirmed this primary, serving for %s more", left.Round(time.Millisecond))}
		}
		return fence(o, "cannot reach the consensus store, the leader lease may expire, and not every member confirmed this primary (failsafe)")
	}
	return Decision{Role: roleOf(o), State: cluster.StateWaiting, Memory: o.Memory, Message: "waiting for the consensus store"}
}

func paused(o Observation, holdsKey bool) Decision {
	mem := o.Memory
	if o.PG.Running {
		mem.Restarting = false
	}
	d := Decision{Role: roleOf(o), State: stateOf(o), Memory: mem, Message: "cluster paused: no automatic promotion, demotion, start or stop",
		Actions: restartWhilePaused(o, holdsKey)}
	if o.PG.Writable() && holdsKey {
		// Synchronous replication stays managed: a pause must not leave a
		// dead synchronous standby blocking commits, nor skip the record.
		acts, sm, recheck := syncStep(o)
		d.Memory.SyncSeen, d.Memory.SyncSeenSince, d.Memory.SyncMarked, d.Memory.SyncMark = sm.SyncSeen, sm.SyncSeenSince, sm.SyncMarked, sm.SyncMark
		d.RecheckIn = recheck
		d.Actions = append(d.Actions, Action{Kind: ActPublishOptime})
		d.Actions = append(d.Actions, acts...)
	}
	return d
}

// noData handles an empty data directory: bootstrap or clone.
func noData(o Observation) Decision {
	v := o.View
	switch {
	case !v.Init.Present:
		return Decision{Role: cluster.RoleUninitialized, State: cluster.StateBootstrapping,
			Message: "no cluster yet: bootstrapping it",
			Actions: []Action{
				{Kind: ActClaimInit, Reason: "empty data directory and no cluster in the store"},
				{Kind: ActInitdb},
				{Kind: ActAcquireLeader, Reason: "bootstrap"},
				{Kind: ActStartPrimary, Reason: "bootstrap"},
			}}
	case v.Init.Bootstrapper == o.Self.Name:
		// We claimed the bootstrap but have no data: initdb failed or we
		// crashed during it. Give the claim back; the next loop retries.
		return Decision{Role: cluster.RoleUninitialized, State: cluster.StateFailed,
			Message: "bootstrap did not complete; releasing the bootstrap claim to retry",
			Actions: []Action{{Kind: ActAbortInit}}}
	case v.Init.Bootstrapper != "":
		return Decision{Role: cluster.RoleUninitialized, State: cluster.StateWaiting,
			Message: fmt.Sprintf("waiting for %s to bootstrap the cluster", v.Init.Bootstrapper)}
	}
	if v.Leader != nil && v.Leader.Name == o.Self.Name {
		return Decision{Role: cluster.RoleUninitialized, State: cluster.StateWaiting, Message: "clearing a leader key this member cannot serve: it has no data",
			Actions: []Action{{Kind: ActDeleteStaleLeader, Reason: "leader without data"}}}
	}
	if src, ok := readyPrimary(o); ok {
		return Decision{Role: cluster.RoleUninitialized, State: cluster.StateCloning,
			Message: fmt.Sprintf("cloning from the primary %s", src),
			Actions: []Action{
				{Kind: ActClone, Target: src, Reason: "new member with an empty data directory"},
				{Kind: ActStartStandby, Target: src},
			}}
	}
	return Decision{Role: cluster.RoleUninitialized, State: cluster.StateWaiting, Message: "waiting for a running primary to clone from"}
}

// initPending handles a data directory while the store has no finished
// bootstrap record.
func initPending(o Observation) Decision {
	v := o.View
	iAmLeader := v.Leader != nil && v.Leader.Name == o.Self.Name && o.Lease.Held && v.Leader.LeaseID == o.Lease.ID
	if o.PG.Writable() && !iAmLeader {
		// Adopting, waiting for another member's bootstrap, or bootstrapping
		// before holding the key: nothing entitles this PostgreSQL to writes.
		return fence(o, "PostgreSQL is writable but this member does not hold the leader key")
	}
	switch {
	case !v.Init.Present:
		// Data but no cluster record: the store was lost or this is an
		// adopted data directory. Claim the cluster identity for it; the
		// leader race then picks the best member as usual.
		return Decision{Role: roleOf(o), State: cluster.StateWaiting,
			Message: "existing data but no cluster record in the store: registering its system identifier",
			Actions: []Action{{Kind: ActClaimInit, Reason: "adopt existing data"}, {Kind: ActFinishInit, Reason: "adopt existing data"}}}
	case v.Init.Bootstrapper != o.Self.Name:
		return Decision{Role: roleOf(o), State: cluster.StateWaiting, Message: fmt.Sprintf("waiting for %s to bootstrap the cluster", v.Init.Bootstrapper)}
	}
	// We are bootstrapping and initdb has run.
	switch {
	case v.Leader != nil && !iAmLeader:
		if o.PG.Writable() {
			return fence(o, "bootstrapping without the leader key")
		}
		return Decision{Role: cluster.RoleUninitialized, State: cluster.StateFailed,
			Message: "another member holds the leader key during our bootstrap; releasing the bootstrap claim",
			Actions: []Action{{Kind: ActAbortInit}}}
	case !iAmLeader:
		return Decision{Role: cluster.RoleUninitialized, State: cluster.StateBootstrapping, Message: "bootstrap: taking the leader key",
			Actions: []Action{{Kind: ActAcquireLeader, Reason: "bootstrap"}}}
	case !o.PG.Running:
		return Decision{Role: cluster.RolePrimary, State: cluster.StateBootstrapping, Message: "bootstrap: starting PostgreSQL",
			Actions: []Action{{Kind: ActStartPrimary, Reason: "bootstrap"}}}
	case !o.PG.Ready:
		return Decision{Role: cluster.RolePrimary, State: cluster.StateStarting, Message: "bootstrap: waiting for PostgreSQL to accept connections"}
	}
	return Decision{Role: cluster.RolePrimary, State: cluster.StateBootstrapping, Message: "bootstrap: recording the cluster",
		Actions: []Action{{Kind: ActFinishInit, Reason: "bootstrap"}, {Kind: ActPublishOptime}}}
}

// asLeader: we hold the leader key with our live lease.
func asLeader(o Observation) Decision {
	s := o.Settings
	// The failsafe's promises count as the lease does: a primary that got
	// its key back after serving under the failsafe, but whose lease
	// renewal has not gone through yet, keeps serving until they end
	// (fencing there made it win the next race and promote itself again,
	// on a new timeline).
	if until, _ := WritableUntil(o, o.Memory); o.Now >= until {
		d := fence(o, "the leader lease could not be renewed in time")
		d.Actions = append(d.Actions, Action{Kind: ActReleaseLeader, Reason: "lease not renewed"})
		return d
	}
	if sw := switchoverDue(o); sw != nil && (o.PG.Writable() || sw.Kind == cluster.KindFailover || o.HandoverAborted != "") {
		if d, ok := leaderSwitchover(o); ok {
			return d
		}
	}
	switch {
	case o.PG.Writable():
		syncActs, mem, recheck := syncStep(o)
		if inFailsafe(o) {
			mem.FailsafeUntil = o.Memory.FailsafeUntil // still counted until they end
		}
		msg := "primary"
		if o.PG.RefusesConnections {
			// Its open sessions go on, so it stays the primary (the proxy
			// keeps them) — for primary_start_timeout, as a primary that
			// does not come back; then it gives the key up.
			down := o.Memory.PrimaryDownSince
			if down == 0 {
				down = o.Now
			}
			if o.Now-down > s.PrimaryStartTimeout {
				return Decision{Role: cluster.RolePrimary, State: cluster.StateFailed,
					Message: fmt.Sprintf("PostgreSQL accepted no new connection for primary_start_timeout (%s); giving up leadership", s.PrimaryStartTimeout),
					Actions: []Action{
						{Kind: ActFence, Reason: "primary accepts no new connection"},
						{Kind: ActReleaseLeader, Reason: "primary accepts no new connection"},
					}}
			}
			mem.PrimaryDownSince = down
			msg = fmt.Sprintf("primary; PostgreSQL accepts no new connection (for %s; the key is given up after primary_start_timeout, %s)", (o.Now - down).Round(time.Second), s.PrimaryStartTimeout)
		}
		return Decision{Role: cluster.RolePrimary, State: cluster.StateRunning, Message: msg,
			Memory: mem, RecheckIn: recheck,
			Actions: append([]Action{
				{Kind: ActPublishOptime},
				{Kind: ActEnsureSlots, Slots: slotsFor(o)},
				{Kind: ActEnsureRoles},
				{Kind: ActMoveRaftLeader},
			}, syncActs...)}
	case o.PG.Running && o.PG.Ready && o.PG.InRecovery:
		// We won the race (or hold the key from the previous loop): finish
		// the promotion.
		return promote(o, "holding the leader key")
	}
	// PostgreSQL is not serving: crashed, or restarting.
	down := o.Memory.PrimaryDownSince
	if down == 0 {
		down = o.Now
	}
	mem := Memory{PrimaryDownSince: down}
	if o.Now-down > s.PrimaryStartTimeout {
		d := Decision{Role: cluster.RolePrimary, State: cluster.StateFailed,
			Message: fmt.Sprintf("PostgreSQL did not come back within primary_start_timeout (%s); giving up leadership", s.PrimaryStartTimeout)}
		if o.PG.Running {
			d.Actions = append(d.Actions, Action{Kind: ActFence, Reason: "primary did not recover in time"})
		}
		d.Actions = append(d.Actions, Action{Kind: ActReleaseLeader, Reason: "primary did not recover in time"})
		return d
	}
	if o.PG.Running {
		return Decision{Role: cluster.RolePrimary, State: cluster.StateStarting, Memory: mem,
			Message: "waiting for PostgreSQL to accept connections"}
	}
	a := Action{Kind: ActStartPrimary, Reason: "PostgreSQL stopped while this member is primary: restarting it in place"}
	if !o.Data.WasPrimary() {
		// A standby's directory: start it in recovery; the next loop promotes.
		a = Action{Kind: ActStartStandby, Reason: "holding the leader key with a standby's data: start, then promote"}
	}
	return Decision{Role: cluster.RolePrimary, State: cluster.StateCrashed, Memory: mem,
		Message: "PostgreSQL is down on the primary: restarting it in place", Actions: []Action{a}}
}

// asFollower: another member holds the leader key.
func asFollower(o Observation, leader string) Decision {
	if o.PG.Writable() {
		return fence(o, fmt.Sprintf("%s holds the leader key", leader))
	}
	if !o.PG.Running {
		// A failed pg_rewind may have left the directory half rewritten (and
		// rewinding again fails the same way), whatever its control state
		// says: it must be re-cloned, never started as it is.
		if o.Data.WasPrimary() && o.LastRewindError == "" && cleanlyBehindSwitchPoint(o) {
			return Decision{Role: cluster.RoleReplica, State: cluster.StateStarting,
				Message: "rejoining as a replica of " + leader + " without rewind: this directory was shut down cleanly before the timeline switch",
				Actions: []Action{{Kind: ActStartStandby, Target: leader}}}
		}
		if o.Data.WasPrimary() || o.LastRewindError != "" {
			if _, ok := readyPrimary(o); !ok {
				return Decision{Role: cluster.RoleStopped, State: cluster.StateWaiting, Message: fmt.Sprintf("was primary or failed to rewind; waiting for %s to be ready before rewinding", leader)}
			}
			if o.LastRewindError != "" {
				return Decision{Role: cluster.RoleReplica, State: cluster.StateCloning,
					Message: "pg_rewind failed; re-cloning from the primary",
					Actions: []Action{
						{Kind: ActReinit, Target: leader, Reason: "pg_rewind from " + leader + " failed: " + o.LastRewindError},
						{Kind: ActStartStandby, Target: leader},
					}}
			}
			return Decision{Role: cluster.RoleReplica, State: cluster.StateRewinding,
				Message: fmt.Sprintf("rejoining as a replica of %s: rewinding first (this directory was last a primary)", leader),
				Actions: []Action{
					{Kind: ActRewind, Target: leader, Reason: "data directory was last used by a primary"},
					{Kind: ActStartStandby, Target: leader},
				}}
		}
		return Decision{Role: cluster.RoleReplica, State: cluster.StateStarting, Message: "starting as a replica of " + leader,
			Actions: []Action{{Kind: ActStartStandby, Target: leader}}}
	}
	if !o.PG.Ready {
		return Decision{Role: cluster.RoleReplica, State: cluster.StateStarting, Memory: o.Memory, Message: "waiting for PostgreSQL to accept connections"}
	}
	if o.PG.Upstream != leader {
		return Decision{Role: cluster.RoleReplica, State: cluster.StateRunning, Message: "following the new primary " + leader,
			Actions: []Action{{Kind: ActFollow, Target: leader}}}
	}
	if o.PG.Streaming {
		return Decision{Role: cluster.RoleReplica, State: cluster.StateStreaming, Message: "streaming from " + leader}
	}
	// Not streaming. If the primary is on a newer timeline, our WAL may have
	// run past its fork point; if that lasts, rewind.
	lt := leaderTimeline(o, leader)
	if lt > o.PG.Position.Timeline {
		since := o.Memory.BehindSince
		if since == 0 {
			since = o.Now
		}
		if o.Now-since >= o.Settings.RewindAfter {
			if _, ok := readyPrimary(o); ok {
				return Decision{Role: cluster.RoleReplica, State: cluster.StateRewinding,
					Message: fmt.Sprintf("cannot stream timeline %d from %s from timeline %d: rewinding", lt, leader, o.PG.Position.Timeline),
					Actions: []Action{
						{Kind: ActStop, Reason: "replica diverged from the new primary's timeline"},
						{Kind: ActRewind, Target: leader, Reason: "replica diverged from the new primary's timeline"},
						{Kind: ActStartStandby, Target: leader},
					}}
			}
		}
		return Decision{Role: cluster.RoleReplica, State: cluster.StateRunning, Memory: Memory{BehindSince: since},
			Message: fmt.Sprintf("not streaming from %s yet (timeline %d, primary on %d)", leader, o.PG.Position.Timeline, lt)}
	}
	return Decision{Role: cluster.RoleReplica, State: cluster.StateRunning, Message: "replica of " + leader + ", not streaming yet"}
}

// noLeader: nobody holds the leader key. Run as a standby without upstream so
// we can report our position, and race when we are the best candidate.
func noLeader(o Observation) Decision {
	if o.PG.Writable() && inFailsafe(o) {
		return retakeAfterFailsafe(o, nil)
	}
	if o.PG.Writable() {
		return fence(o, "no member holds the leader key")
	}
	if f := o.Failsafe; f.PromisedTo != "" && f.PromisedTo != o.Self.Name && o.Now < f.PromisedAt+o.Settings.TTL {
		return Decision{Role: roleOf(o), State: cluster.StateWaiting, Memory: o.Memory,
			Message: fmt.Sprintf("no leader key, but %s kept serving under the failsafe and this member promised not to take the key (for %s more)", f.PromisedTo, (f.PromisedAt + o.Settings.TTL - o.Now).Round(time.Millisecond))}
	}
	if o.LastRewindError != "" {
		// A failed pg_rewind may have left the directory half rewritten:
		// never start it, let alone promote it. Wait for a primary to
		// re-clone from (asFollower).
		d := Decision{Role: cluster.RoleStopped, State: cluster.StateWaiting,
			Message: "no leader; this directory is unusable after a failed pg_rewind and waits for a primary to re-clone from"}
		if o.PG.Running {
			d.Actions = []Action{{Kind: ActStop, Reason: "data directory left by a failed pg_rewind"}}
		}
		return d
	}
	if !o.PG.Running {
		return Decision{Role: cluster.RoleStandbyNoLeader, State: cluster.StateStarting,
			Message: "no leader: starting PostgreSQL in recovery to report our WAL position",
			Actions: []Action{{Kind: ActStartStandby, Reason: "no leader"}}}
	}
	if !o.PG.Ready {
		return Decision{Role: cluster.RoleStandbyNoLeader, State: cluster.StateStarting, Message: "no leader; waiting for PostgreSQL to accept connections"}
	}
	ok, why, mem, swActs, decided := raceUnderSwitchover(o)
	if decided {
		if !ok {
			return Decision{Role: cluster.RoleStandbyNoLeader, State: cluster.StateWaiting, Memory: mem, Message: "no leader; not promoting: " + why, Actions: swActs}
		}
		return promote(o, why)
	}
	ok, why = eligible(o)
	if !ok {
		return Decision{Role: cluster.RoleStandbyNoLeader, State: cluster.StateWaiting, Memory: mem, Message: "no leader; not promoting: " + why}
	}
	if peer := preferredPeer(o); peer != "" {
		// A start older than twice the bound is from an earlier
		// leaderless spell (a path that kept its memory): start again.
		bound := preferWait * o.Settings.LoopInterval
		since := o.Memory.PreferWaitSince
		if since == 0 || since > o.Now || o.Now-since > 2*bound {
			since = max(o.Now, 1)
		}
		if o.Now-since < bound {
			mem.PreferWaitSince = since
			return Decision{Role: cluster.RoleStandbyNoLeader, State: cluster.StateWaiting, Memory: mem,
				Message: fmt.Sprintf("no leader; standing back for %s: it holds the same WAL and is preferred (%s)", peer, preferenceWhy(o, peer))}
		}
		why += fmt.Sprintf("; preferred %s did not take over", peer)
	}
	return promote(o, "no leader; "+why)
}

// preferredPeer returns a live candidate that ranks before this member
// (ranksBefore) and holds exactly the same WAL, so that letting it win
// loses nothing; "" when there is none. In a synchronous mode only a member
// of the synchronous record counts: another could never prove it holds
// every acknowledged commit.
func preferredPeer(o Observation) string {
	v := o.View
	last := lastPrimary(v)
	best := ""
	for _, name := range sortedKeys(v.Statuses) {
		st := v.Statuses[name]
		info, registered := v.Members[name]
		if name == o.Self.Name || !registered || info.Witness || info.NoFailover() || !standingBy(st.State) || st.Position != o.PG.Position {
			continue
		}
		if m := o.Settings.SyncMode; m != "" && m != cluster.SyncOff && (v.Sync == nil || !slices.Contains(v.Sync.Members, name)) {
			continue
		}
		if !ranksBefore(v, last, name, o.Self.Name) {
			continue
		}
		if best == "" || ranksBefore(v, last, name, best) {
			best = name
		}
	}
	return best
}

// lastPrimary names the member that last held the leader key, as the
// optime records it ("" when unknown).
func lastPrimary(v cluster.View) string {
	if v.Optime == nil {
		return ""
	}
	return v.Optime.Leader
}

// ranksBefore reports whether candidate a should win a leaderless race
// against b when both hold the same WAL: any member before the last
// primary itself; then the operator's failover_priority, then a member in
// the last primary's zone (cluster.ComparePreference).
//
// The last primary ranks last, whatever its priority, because it has just
// died, been deleted or handed over: its record outlives it for a lease
// TTL (still "running", still naming its zone and priority), and a pod
// re-created at once under its name can report the same WAL a second
// later. Standing back for it would add the wait to a failover, or give
// the key back to a pod that was just removed (a force deletion, a node
// drain) instead of to a standby that has been streaming all along. A
// switchover can move the primary back.
func ranksBefore(v cluster.View, last, a, b string) bool {
	if last != "" && (a == last) != (b == last) {
		return b == last
	}
	return cluster.ComparePreference(v, last, a, b) < 0
}

// standingBy reports whether a member in state s could take the leader
// key in its next loop: it runs PostgreSQL and is not failing.
func standingBy(s cluster.State) bool {
	return s == cluster.StateWaiting || s == cluster.StateRunning || s == cluster.StateStreaming
}

// preferenceWhy says why peer ranks before this member (ranksBefore).
func preferenceWhy(o Observation, peer string) string {
	if lastPrimary(o.View) == o.Self.Name {
		return "this member was the last primary"
	}
	p, me := o.View.Members[peer].FailoverPriority(), o.Self.FailoverPriority()
	if p != me {
		return fmt.Sprintf("failover_priority %d > %d", p, me)
	}
	return "in the last primary's zone " + o.View.Members[peer].Zone()
}

// promote takes the leader key and promotes. Before PostgreSQL accepts its
// first write, the store's synchronous record names this member as the only
// holder of every acknowledged commit (true: it was eligible, and nothing
// new is acknowledged yet), and synchronous_standby_names is reset to the
// mode's starting point: a standby's value may be stale, copied by a clone
// or left from when it last was primary.
func promote(o Observation, why string) Decision {
	acts := []Action{{Kind: ActAcquireLeader, Reason: why}}
	if m := o.Settings.SyncMode; m != "" && m != cluster.SyncOff {
		acts = append(acts, Action{Kind: ActPutSync, Sync: SyncSet{}, Reason: "promoting: this member holds every acknowledged commit"})
	}
	if t := pgTarget(o.Settings.SyncMode, SyncSet{}); o.PG.SyncUnreadable || !o.PG.Sync.Equal(t) {
		acts = append(acts, Action{Kind: ActSetSync, Sync: t, Reason: "promoting: synchronous standbys join once they stream from this member"})
	}
	// The replicas' slots are created before the promotion (a standby can
	// hold physical slots; a failure is only logged): the replicas stream
	// from the new primary, and join its synchronous set, the moment it is
	// promoted instead of a loop later.
	d := Decision{Role: cluster.RolePrimary, State: cluster.StateStarting, Message: "promoting: " + why,
		Actions: append(acts,
			Action{Kind: ActEnsureSlots, Slots: slotsFor(o)},
			Action{Kind: ActPromote, Reason: why},
			Action{Kind: ActRecordPromotion, Reason: why},
			Action{Kind: ActPublishOptime},
		)}
	if o.View.Switchover != nil {
		d.Actions = append(d.Actions, Action{Kind: ActClearSwitchover, Reason: "completed: " + o.Self.Name + " is the new primary"})
	}
	return d
}

// eligible decides whether this member may race for leadership, and says why.
func eligible(o Observation) (bool, string) {
	if o.Self.NoFailover() {
		return false, "tagged nofailover"
	}
	me := o.PG.Position
	v := o.View
	if t := v.Timeline(); t > me.Timeline {
		return false, fmt.Sprintf("on timeline %d but the cluster reached timeline %d", me.Timeline, t)
	}
	syncProof := ""
	if m := o.Settings.SyncMode; m != "" && m != cluster.SyncOff {
		ok, why := syncEligible(o)
		if !ok {
			return false, why
		}
		syncProof = "; " + why
	}
	if v.Optime != nil && syncProof == "" {
		op := v.Optime.Position
		if op.Timeline == me.Timeline && op.LSN > me.LSN {
			if lag := int64(op.LSN - me.LSN); lag > o.Settings.MaximumLag {
				return false, fmt.Sprintf("%d bytes behind the last primary position %s, more than maximum_lag_on_failover %d", lag, op.LSN, o.Settings.MaximumLag)
			}
		}
	}
	// Compare with every other candidate that reports a position. A status
	// still saying "primary" (a primary that just died or fenced) counts
	// too: its position is a lower bound of what it holds.
	reported := map[string]bool{}
	for _, name := range sortedKeys(v.Statuses) {
		st := v.Statuses[name]
		if name == o.Self.Name {
			continue
		}
		info, registered := v.Members[name]
		if registered && (info.Witness || info.NoFailover()) || st.Role == cluster.RoleWitness {
			continue
		}
		if st.Position.LSN != 0 {
			reported[name] = true
		}
		if me.Less(st.Position) {
			return false, fmt.Sprintf("%s has more recent WAL (%d/%s > %d/%s)", name, st.Position.Timeline, st.Position.LSN, me.Timeline, me.LSN)
		}
		// Equal positions race: the compare-and-swap on the leader key picks
		// one. (Deferring to a peer by name would stall the race whenever
		// that peer is itself not eligible, e.g. inside its startup grace.)
	}
	// Startup grace: right after this agent started (typically a whole
	// cluster starting again), wait for every registered candidate to
	// report a position. The last primary may hold commits that never
	// reached the store's optime (it loses quorum once the replicas stop),
	// so only its own report can show them.
	if o.Now < o.Settings.StartupGrace && !o.Memory.Streamed {
		for _, name := range sortedKeys(v.Members) {
			info := v.Members[name]
			if name == o.Self.Name || info.Witness || info.NoFailover() {
				continue
			}
			if !reported[name] {
				return false, fmt.Sprintf("just started; waiting up to %s for %s to report its WAL position", o.Settings.StartupGrace, name)
			}
		}
	}
	return true, fmt.Sprintf("most recent WAL among reporting members (%d/%s)%s", me.Timeline, me.LSN, syncProof)
}

// WritableUntil is the moment, on the agent's clock, up to which a member
// observed as o, remembering mem once it decided, may keep its PostgreSQL
// writable without another lease renewal or failsafe round: FenceMargin
// before the later of its lease's deadline (while the last read of the store
// shows the leader key bound to that lease) and the end of the members'
// failsafe promises (mem.FailsafeUntil). It is the fence point Decide
// enforces (fenceDue, storeDown). ok is false when the member has neither
// ground.
func WritableUntil(o Observation, mem Memory) (until time.Duration, ok bool) {
	if l := o.View.Leader; o.Lease.Held && l != nil && l.Name == o.Self.Name && l.LeaseID == o.Lease.ID {
		until = o.Lease.Deadline
	}
	until = max(until, mem.FailsafeUntil)
	if until <= 0 {
		return 0, false
	}
	return until - o.Settings.FenceMargin, true
}

// RefusesPromise reports whether a member observed as o must refuse to
// promise another primary that it will not take the leader key (the
// failsafe): its PostgreSQL may be writable, or it holds the leader key
// bound to a lease that is provably still alive. A member whose last
// successful read of the store (made before it was cut off) still names
// it leader, but whose lease ran out, does not lead: refusing there made
// a fenced old primary, blind for a minute after an API server restart,
// fence the new primary too when that one lost the store in turn.
func RefusesPromise(o Observation) bool {
	if o.PG.MayBeWritable() {
		return true
	}
	l := o.View.Leader
	return l != nil && l.Name == o.Self.Name && o.Lease.Held && l.LeaseID == o.Lease.ID && o.Now < o.Lease.Deadline
}

// NeedsFailsafeRound reports whether a member observed as o (all but its
// Failsafe part) asks the other members to promise not to take the leader
// key this loop: its PostgreSQL may be writable (MayBeWritable) and either the store is out
// of reach (and the last read showed this member holding the key, or it
// already serves under the failsafe), or the store is back but this member,
// serving under the failsafe, has not got a key bound to a live lease back
// yet. The second case keeps the promises running while a slow store (an
// API server just restarted) lets the primary take its key back: without
// it the promises ran out first, the primary fenced, won the next race
// and promoted itself on a new timeline.
func NeedsFailsafeRound(o Observation) bool {
	// MayBeWritable, not Writable: a status query that timed out on a
	// loaded machine must not end the rounds of a primary that keeps
	// committing (it fenced on the next loop).
	if !o.PG.MayBeWritable() {
		return false
	}
	l := o.View.Leader
	if !o.StoreOK {
		return (l != nil && l.Name == o.Self.Name) || o.Now < o.Memory.FailsafeUntil
	}
	if l != nil && l.Name != o.Self.Name {
		return false // another member holds the key: nothing to keep
	}
	keyed := l != nil && o.Lease.Held && l.LeaseID == o.Lease.ID && o.Now+o.Settings.FenceMargin < o.Lease.Deadline
	return !keyed && o.Now < o.Memory.FailsafeUntil
}

// inFailsafe reports whether this primary is serving under the failsafe:
// the members' promises last until Memory.FailsafeUntil, and it stops
// FenceMargin before (as before a lease deadline).
func inFailsafe(o Observation) bool { return o.Now+o.Settings.FenceMargin < o.Memory.FailsafeUntil }

// retakeAfterFailsafe: the store is back but the leader key lapsed while
// this primary served under the failsafe. Every other member promised not
// to take it, so take it back (compare-and-swap); if that fails, someone
// else holds it and the next loop fences.
func retakeAfterFailsafe(o Observation, first []Action) Decision {
	return Decision{Role: cluster.RolePrimary, State: cluster.StateRunning, Memory: Memory{FailsafeUntil: o.Memory.FailsafeUntil},
		Message: "the consensus store is back: taking the leader key again after serving under the failsafe",
		Actions: append(first, Action{Kind: ActAcquireLeader, Reason: "failsafe: keep the primary that served while the store had no quorum"})}
}

// fence stops a writable PostgreSQL that must not be writable.
func fence(o Observation, why string) Decision {
	return Decision{Role: cluster.RoleStopped, State: cluster.StateFenced, Message: "fencing: " + why,
		Actions: []Action{{Kind: ActFence, Reason: why}}}
}

// readyPrimary returns the leader if it reports itself as a running primary,
// so it can serve pg_basebackup and pg_rewind.
func readyPrimary(o Observation) (string, bool) {
	l := o.View.Leader
	if l == nil || l.Name == o.Self.Name {
		return "", false
	}
	st, ok := o.View.Statuses[l.Name]
	if !ok || st.Role != cluster.RolePrimary || st.State != cluster.StateRunning {
		return "", false
	}
	if _, ok := o.View.Members[l.Name]; !ok {
		return "", false
	}
	return l.Name, true
}

func leaderTimeline(o Observation, leader string) uint32 {
	if st, ok := o.View.Statuses[leader]; ok && st.Position.Timeline > 0 {
		return st.Position.Timeline
	}
	return o.View.Timeline()
}

// slotsFor lists the replication slots the primary keeps: one per registered
// database member other than itself.
func slotsFor(o Observation) []string {
	var out []string
	for _, name := range sortedKeys(o.View.Members) {
		if name == o.Self.Name || o.View.Members[name].Witness {
			continue
		}
		out = append(out, cluster.SlotName(name))
	}
	return out
}

func roleOf(o Observation) cluster.Role {
	switch {
	case o.PG.Writable():
		return cluster.RolePrimary
	case o.PG.Running:
		return cluster.RoleReplica
	case o.Data.Kind == DataEmpty:
		return cluster.RoleUninitialized
	}
	return cluster.RoleStopped
}

func stateOf(o Observation) cluster.State {
	switch {
	case o.PG.Running && o.PG.Streaming:
		return cluster.StateStreaming
	case o.PG.Running && o.PG.Ready:
		return cluster.StateRunning
	case o.PG.Running:
		return cluster.StateStarting
	}
	return cluster.StateStopped
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
