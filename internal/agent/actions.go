package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/decide"
	"github.com/holdfast/holdfast/internal/pg"
	"github.com/holdfast/holdfast/internal/store"
)

// Bounds for actions that may legitimately take long. They run with the
// lease keeper, so they never let a lease lapse by themselves.
const (
	longActionTimeout = 30 * time.Minute // initdb, clone, rewind on big data
	promoteTimeout    = 60 * time.Second
	stopTimeout       = 60 * time.Second
	// gracefulStop bounds how long a switchover lets open sessions finish.
	gracefulStop = 2 * time.Second
	// handoverConfirm bounds how long a switchover's shutdown waits, once
	// the shutdown checkpoint is written, for the standbys to confirm the
	// final WAL (they do within milliseconds; one whose WAL receiver
	// stopped acknowledging would hold it until wal_sender_timeout, with
	// every write refused). Then the stop is escalated and the switchover
	// cancelled: the primary starts again. 1 s was too short on a machine
	// loaded twentyfold (2 cores, load 21): switchovers were cancelled and
	// the primary restarted — far costlier than 2 more seconds spent only
	// when a standby is stuck.
	handoverConfirm = 3 * time.Second
	// syncSettle: see decide.Settings.SyncSettle.
	syncSettle = 250 * time.Millisecond
)

var errCASLost = errors.New("compare-and-swap lost to another member")

// changesPG reports whether an action of kind k may change what the loop
// observed of PostgreSQL (running, recovery, WAL position, upstream), so
// that the status must be read again before it is published. Only kinds
// known to touch the store alone, or nothing a status reports, are listed
// as not changing it: a kind added later is read again, which is safe.
func changesPG(k decide.Kind) bool {
	switch k {
	case decide.ActClaimInit, decide.ActAbortInit, decide.ActAcquireLeader, decide.ActDeleteStaleLeader,
		decide.ActReleaseLeader, decide.ActRecordPromotion, decide.ActPublishOptime, decide.ActEnsureSlots,
		decide.ActEnsureRoles, decide.ActMoveRaftLeader, decide.ActPublishCheckpoint, decide.ActClearSwitchover, decide.ActAckRestart,
		decide.ActAckReinit, decide.ActSetSync, decide.ActPutSync:
		return false
	}
	return true
}

// execute carries out one action. An error stops the rest of the list.
//
// It only dispatches: each action kind has one function below that does
// exactly what decide asked, in the order the list gives. What little
// policy the executor keeps is named and documented where it lives:
//
//   - fenceBudget: how long a fence may take before it escalates (bounded
//     by the lease deadline on the agent's clock);
//   - raftMoves: how often the etcd raft leadership may be moved;
//   - the timeouts of long actions (longActionTimeout, promoteTimeout,
//     stopTimeout) and of a switchover's stop (gracefulStop,
//     handoverConfirm), all run under the lease keeper;
//   - the shutdown order comes from decide.Shutdown (see shutdown).
func (a *Agent) execute(ctx context.Context, obs decide.Observation, act decide.Action) error {
	switch act.Kind {
	case decide.ActClaimInit:
		return a.claimInit(ctx, act)
	case decide.ActAbortInit:
		return a.abortInit(ctx)
	case decide.ActInitdb:
		return a.initdb(ctx)
	case decide.ActFinishInit:
		return a.finishInit(ctx, obs)
	case decide.ActAcquireLeader:
		return a.acquireLeader(ctx, obs, act)
	case decide.ActReleaseLeader:
		return a.releaseLeader(ctx, act)
	case decide.ActDeleteStaleLeader:
		return a.deleteStaleLeader(ctx, obs)
	case decide.ActStartPrimary:
		return a.startPrimary(ctx, act)
	case decide.ActStartStandby:
		return a.startStandby(ctx, obs, act)
	case decide.ActFollow:
		return a.follow(ctx, obs, act)
	case decide.ActPromote:
		return a.promote(ctx, act)
	case decide.ActRecordPromotion:
		return a.recordPromotion(ctx, act.Reason)
	case decide.ActPublishOptime:
		return a.publishOptime(ctx, obs)
	case decide.ActEnsureSlots:
		return a.ensureSlots(ctx, act)
	case decide.ActEnsureRoles:
		return a.ensureRoles(ctx)
	case decide.ActMoveRaftLeader:
		return a.moveRaftLeader(ctx)
	case decide.ActStop:
		return a.stop(ctx, obs, act)
	case decide.ActFence:
		return a.fence(act)
	case decide.ActRewind:
		return a.rewind(ctx, obs, act)
	case decide.ActReinit:
		return a.reinit(ctx, obs, act)
	case decide.ActClone:
		return a.clone(ctx, obs, act)
	case decide.ActPublishCheckpoint:
		return a.publishCheckpoint(ctx)
	case decide.ActNameCandidate:
		return a.nameCandidate(ctx, obs, act)
	case decide.ActClearSwitchover:
		return a.clearSwitchover(ctx, obs, act)
	case decide.ActSetSync:
		return a.setSync(ctx, act)
	case decide.ActPutSync:
		return a.putSync(ctx, obs, act)
	case decide.ActAckRestart:
		a.requests.ack(requestRestart)
		return nil
	case decide.ActAckReinit:
		a.requests.ack(requestReinit)
		return nil
	}
	return fmt.Errorf("execute %q: unknown action", act.Kind)
}

func (a *Agent) claimInit(ctx context.Context, act decide.Action) error {
	c, cancel := a.opContext(ctx)
	defer cancel()
	ok, err := a.o.Store.ClaimInit(c)
	if err != nil {
		return fmt.Errorf("claim bootstrap: %w", err)
	}
	if !ok {
		return fmt.Errorf("claim bootstrap: %w", errCASLost)
	}
	a.log.Info("claimed the cluster bootstrap", "why", act.Reason)
	return nil
}

func (a *Agent) abortInit(ctx context.Context) error {
	c, cancel := a.opContext(ctx)
	defer cancel()
	if err := a.o.Store.AbortInit(c); err != nil {
		return fmt.Errorf("abort bootstrap: %w", err)
	}
	return nil
}

// initdb builds the new cluster's data directory: initdb, or the
// Bootstrapper (a restore from a backup). A failure leaves the directory
// empty; the next loop gives the bootstrap claim back and retries.
func (a *Agent) initdb(ctx context.Context) error {
	b, how := a.bootstrapper()
	a.log.Info("building the new cluster's data directory", "by", how)
	if err := a.withLeaseKeeper(ctx, longActionTimeout, b.Initdb); err != nil {
		return fmt.Errorf("bootstrap by %s: %w", how, err)
	}
	return a.confirmBootstrapClaim(ctx)
}

// acquireLeader races for the leader key (a compare-and-swap create bound
// to this member's lease).
func (a *Agent) acquireLeader(ctx context.Context, obs decide.Observation, act decide.Action) error {
	// Never race for the key while a promise to a primary serving under the
	// failsafe lasts; and give no such promise while racing.
	if err := a.failsafe.beginAcquire(a.settings().TTL); err != nil {
		return fmt.Errorf("acquire leader key: %w", err)
	}
	if err := a.armWatchdog(); err != nil {
		return fmt.Errorf("acquire leader key: %w", err)
	}
	c, cancel := a.opContext(ctx)
	defer cancel()
	ok, err := a.o.Store.AcquireLeader(c)
	if err == nil && !ok {
		err = errCASLost
	}
	if err != nil {
		if !obs.PG.Writable() {
			_ = a.o.Watchdog.Disarm()
		}
		return fmt.Errorf("acquire leader key: %w", err)
	}
	a.log.Info("acquired the leader key", "why", act.Reason)
	a.grantArchive(a.lease.Deadline)
	return nil
}

func (a *Agent) releaseLeader(ctx context.Context, act decide.Action) error {
	c, cancel := a.opContext(ctx)
	defer cancel()
	a.log.Warn("releasing the leader key", "why", act.Reason)
	a.revokeArchive("releasing the leader key")
	if err := a.o.Store.ReleaseLeader(c); err != nil {
		return fmt.Errorf("release leader key: %w", err)
	}
	return nil
}

func (a *Agent) deleteStaleLeader(ctx context.Context, obs decide.Observation) error {
	if obs.View.Leader == nil {
		return nil
	}
	c, cancel := a.opContext(ctx)
	defer cancel()
	if err := a.o.Store.DeleteStaleLeader(c, obs.View.Leader.Revision); err != nil {
		return fmt.Errorf("delete stale leader key: %w", err)
	}
	return nil
}

func (a *Agent) startPrimary(ctx context.Context, act decide.Action) error {
	if err := a.armWatchdog(); err != nil {
		return err
	}
	a.log.Info("starting PostgreSQL as primary", "why", act.Reason)
	a.upstream = ""
	if err := a.o.DB.Start(ctx, pg.StartOptions{}); err != nil {
		return fmt.Errorf("start PostgreSQL as primary: %w", err)
	}
	return nil
}

func (a *Agent) startStandby(ctx context.Context, obs decide.Observation, act decide.Action) error {
	o, err := a.standbyOptions(obs, act.Target)
	if err != nil {
		return fmt.Errorf("start PostgreSQL as a standby: %w", err)
	}
	a.log.Info("starting PostgreSQL as a standby", "upstream", act.Target)
	if err := a.o.DB.Start(ctx, o); err != nil {
		return fmt.Errorf("start PostgreSQL as a standby of %q: %w", act.Target, err)
	}
	a.upstream = act.Target
	return nil
}

func (a *Agent) follow(ctx context.Context, obs decide.Observation, act decide.Action) error {
	o, err := a.standbyOptions(obs, act.Target)
	if err != nil {
		return fmt.Errorf("follow %q: %w", act.Target, err)
	}
	a.log.Info("following a new upstream", "upstream", act.Target)
	if err := a.o.DB.Reconfigure(ctx, o); err != nil {
		return fmt.Errorf("follow %q: %w", act.Target, err)
	}
	a.upstream = act.Target
	return nil
}

func (a *Agent) promote(ctx context.Context, act decide.Action) error {
	if err := a.armWatchdog(); err != nil {
		return err
	}
	a.log.Info("promoting PostgreSQL", "why", act.Reason)
	if err := a.withLeaseKeeper(ctx, promoteTimeout, a.o.DB.Promote); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	a.upstream = ""
	return nil
}

// publishOptime publishes the primary's WAL position, unless the store
// holds it already.
func (a *Agent) publishOptime(ctx context.Context, obs decide.Observation) error {
	c, cancel := a.opContext(ctx)
	defer cancel()
	// A primary observed writable in this loop is still on the timeline
	// observed (only a stop and start changes it) and its position then is
	// a lower bound of where it is now; a member just promoted was
	// observed in recovery, and is read again.
	pos := obs.PG.Position
	if !obs.PG.Writable() {
		s, err := a.o.DB.Status(c)
		if err != nil || !s.Ready || s.InRecovery {
			return nil // nothing to publish; not an error worth stopping for
		}
		pos = s.Position()
	}
	o := cluster.Optime{Position: pos, Leader: a.o.Self.Name}
	if obs.StoreOK && obs.View.Optime != nil && *obs.View.Optime == o {
		return nil // the store holds it already: no write (a raft round and fsyncs) for nothing
	}
	if err := a.o.Store.PutOptime(c, o); err != nil {
		return fmt.Errorf("publish optime: %w", err)
	}
	return nil
}

// ensureSlots creates the replicas' slots; a failure is logged, never
// fatal to the list (a replica without its slot still streams).
func (a *Agent) ensureSlots(ctx context.Context, act decide.Action) error {
	if len(act.Slots) == 0 {
		return nil
	}
	c, cancel := a.opContext(ctx)
	defer cancel()
	if err := a.o.DB.EnsureSlots(c, act.Slots); err != nil {
		a.log.Warn("ensure replication slots", "err", err)
	}
	return nil
}

// ensureRoles keeps the roles the primary owns (the session proxy's auth
// role, when configured); a failure is logged, never fatal to the list
// (the database serves without it; only the session proxy's logins wait).
func (a *Agent) ensureRoles(ctx context.Context) error {
	c, cancel := a.opContext(ctx)
	defer cancel()
	if err := a.o.DB.EnsureProxyAuth(c); err != nil {
		a.log.Warn("ensure the session proxy's auth role", "err", err)
	}
	return nil
}

// moveRaftLeader moves the embedded etcd's raft leadership off this host,
// at most once per raftMoveInterval (raftMoves), and only when the store
// has the capability (RaftLeaderMover) and this member runs an embedded
// etcd member. A failure is logged only: it costs failover time, never
// safety.
func (a *Agent) moveRaftLeader(ctx context.Context) error {
	mover, ok := a.o.Store.(RaftLeaderMover)
	if !ok || a.o.LocalStoreEndpoint == "" || !a.raftMoves.allow(a.clock()) {
		return nil
	}
	c, cancel := a.opContext(ctx)
	defer cancel()
	if err := mover.MoveLeaderAway(c, a.o.LocalStoreEndpoint); err != nil {
		a.log.Debug("move etcd raft leadership away from the primary", "err", err)
	}
	return nil
}

// stop stops PostgreSQL: a fast shutdown, or a switchover's graceful stop.
func (a *Agent) stop(ctx context.Context, obs decide.Observation, act decide.Action) error {
	a.upstream = ""
	// Every stop runs under the lease keeper: a primary's fast shutdown
	// writes a checkpoint and drains its walsenders, which can outlast the
	// lease; if the lease lapsed meanwhile a replica could be promoted
	// without the WAL tail. No new write is admitted once the stop has
	// begun, so keeping the lease is safe. A stop is never cut short by the
	// agent's own shutdown signal (that would turn it into an immediate
	// shutdown).
	stopCtx := context.WithoutCancel(ctx)
	if act.Graceful {
		return a.stopForHandover(stopCtx, obs, act)
	}
	a.log.Info("stopping PostgreSQL", "why", act.Reason)
	if err := a.withLeaseKeeper(stopCtx, stopTimeout, func(c context.Context) error { return a.o.DB.Stop(c, pg.Fast) }); err != nil {
		return fmt.Errorf("stop PostgreSQL: %w", err)
	}
	return nil
}

// fence stops a PostgreSQL that must not accept writes, escalating within
// fenceBudget (computed on the agent's clock).
func (a *Agent) fence(act decide.Action) error {
	budget := fenceBudget(a.lease, a.clock())
	a.log.Warn("fencing PostgreSQL: stopping writes", "why", act.Reason, "escalate_after", budget)
	a.revokeArchive("fencing")
	a.upstream = ""
	if err := a.o.DB.Fence(budget); err != nil {
		return fmt.Errorf("fence PostgreSQL: %w", err)
	}
	a.disarmFences("after fencing")
	return nil
}

// Fence budget: how long a fence may take before it has escalated to
// killing PostgreSQL (pg.Engine.Fence: fast, then immediate shutdown, then
// SIGKILL of the process group).
const (
	// fenceLead is how long before the lease deadline a fence must have
	// stopped every write: the store may expire the lease at the deadline
	// and another member be promoted right after.
	fenceLead = 100 * time.Millisecond
	// minFenceBudget is the least a fence gets: with no lease, or one
	// already (nearly) past its deadline, no other member can be promoted
	// any sooner, so PostgreSQL still gets a chance to shut down without
	// crash recovery.
	minFenceBudget = 200 * time.Millisecond
)

// fenceBudget is how long a fence may take from now (agent clock): until
// fenceLead before the lease deadline, and at least minFenceBudget (also
// when no lease is held). A fence ordered by decide normally comes at the
// fence point, FenceMargin before the deadline, so the budget is about
// FenceMargin - fenceLead.
func fenceBudget(l decide.Lease, now time.Duration) time.Duration {
	budget := l.Deadline - now - fenceLead
	if !l.Held || budget < minFenceBudget {
		return minFenceBudget
	}
	return budget
}

func (a *Agent) rewind(ctx context.Context, obs decide.Observation, act decide.Action) error {
	src, err := a.source(obs, act.Target)
	if err != nil {
		return fmt.Errorf("pg_rewind: %w", err)
	}
	a.log.Warn("rewinding data directory", "from", act.Target, "why", act.Reason)
	var res pg.RewindResult
	err = a.withLeaseKeeper(ctx, longActionTimeout, func(c context.Context) error {
		var err error
		res, err = a.o.DB.Rewind(c, src)
		return err
	})
	if err != nil {
		a.setRewindError(err.Error())
		return fmt.Errorf("pg_rewind from %s: %w", act.Target, err)
	}
	a.setRewindError("")
	a.log.Info("rewind finished", "from", act.Target, "rewound", res.Rewound)
	a.recordDiscard(ctx, res)
	return nil
}

func (a *Agent) reinit(ctx context.Context, obs decide.Observation, act decide.Action) error {
	src, err := a.source(obs, act.Target)
	if err != nil {
		return fmt.Errorf("re-clone: %w", err)
	}
	kept, err := a.o.DB.MoveAside(act.Reason)
	if err != nil {
		return fmt.Errorf("re-clone: move the data directory aside: %w", err)
	}
	// The operator's request is done once the old data is aside: if the
	// clone fails, the ordinary rules clone into the empty directory;
	// re-running the request would move aside a fresh copy instead.
	a.requests.ack(requestReinit)
	a.log.Warn("re-cloning the data directory", "from", act.Target, "why", act.Reason, "previous_data_kept_at", kept)
	a.setRewindError("")
	if err := a.withLeaseKeeper(ctx, longActionTimeout, func(c context.Context) error { return a.cloner().Clone(c, src) }); err != nil {
		return fmt.Errorf("re-clone from %s: %w", act.Target, err)
	}
	return nil
}

func (a *Agent) clone(ctx context.Context, obs decide.Observation, act decide.Action) error {
	src, err := a.source(obs, act.Target)
	if err != nil {
		return fmt.Errorf("clone: %w", err)
	}
	a.log.Info("cloning from the primary", "from", act.Target)
	if err := a.withLeaseKeeper(ctx, longActionTimeout, func(c context.Context) error { return a.cloner().Clone(c, src) }); err != nil {
		return fmt.Errorf("clone from %s: %w", act.Target, err)
	}
	return nil
}

// publishCheckpoint publishes the stopped primary's last checkpoint, the
// last WAL it wrote, as the optime: the switchover candidate promotes only
// once it has received it.
func (a *Agent) publishCheckpoint(ctx context.Context) error {
	ds, err := a.o.DB.Inspect()
	if err != nil || ds.Control == nil {
		return fmt.Errorf("read the final checkpoint: %w", err)
	}
	// Only a clean shutdown's checkpoint is the last WAL written; after a
	// crash or an immediate stop it is older than what clients saw
	// committed, and publishing it would let a candidate promote without
	// the tail. Failing here keeps the leader key.
	if ds.Control.State != pg.StateShutDown {
		return fmt.Errorf("publish the final position: PostgreSQL did not shut down cleanly (state %q); keeping the leader key", ds.Control.State)
	}
	c, cancel := a.opContext(ctx)
	defer cancel()
	pos := cluster.Position{Timeline: ds.Control.CheckpointTimeline, LSN: ds.Control.CheckpointLSN}
	a.log.Info("publishing the final position before handing over", "position", pos.LSN, "timeline", pos.Timeline)
	if err := a.o.Store.PutOptime(c, cluster.Optime{Position: pos, Leader: a.o.Self.Name}); err != nil {
		return fmt.Errorf("publish the final position: %w", err)
	}
	return nil
}

// nameCandidate replaces the pending request by one naming the candidate:
// delete at its revision, then create. Between the two there is no
// request, but this primary still serves and holds the key, so nobody
// races; a request another client puts in between wins, and the next loop
// acts on it.
func (a *Agent) nameCandidate(ctx context.Context, obs decide.Observation, act decide.Action) error {
	sw := obs.View.Switchover
	if sw == nil {
		return nil
	}
	named := *sw
	named.Candidate = act.Target
	if named.Leader == "" {
		named.Leader = a.o.Self.Name
	}
	c, cancel := a.opContext(ctx)
	defer cancel()
	if err := a.o.Store.DeleteSwitchover(c, sw.Revision); err != nil {
		return fmt.Errorf("name the switchover candidate: delete the request: %w", err)
	}
	ok, err := a.o.Store.PutSwitchover(c, named)
	if err != nil {
		return fmt.Errorf("name the switchover candidate: %w", err)
	}
	if !ok {
		a.log.Warn("another switchover request took the place of the one being named", "candidate", act.Target)
	} else {
		a.log.Info("named the switchover candidate", "candidate", act.Target)
	}
	return nil
}

func (a *Agent) clearSwitchover(ctx context.Context, obs decide.Observation, act decide.Action) error {
	sw := obs.View.Switchover
	if sw == nil {
		return nil
	}
	c, cancel := a.opContext(ctx)
	defer cancel()
	a.log.Info("clearing the switchover request", "why", act.Reason)
	if err := a.o.Store.DeleteSwitchover(c, sw.Revision); err != nil {
		return fmt.Errorf("clear the %s request: %w", sw.Kind, err)
	}
	a.cleared = &cluster.ClearedRequest{RequestedAt: sw.RequestedAt, Kind: sw.Kind, Reason: act.Reason}
	return nil
}

func (a *Agent) setSync(ctx context.Context, act decide.Action) error {
	value, err := pg.RenderSyncStandbys(act.Sync.Members, act.Sync.Quorum)
	if err != nil {
		return fmt.Errorf("set synchronous_standby_names: %w", err)
	}
	c, cancel := a.opContext(ctx)
	defer cancel()
	a.log.Info("synchronous replication", "synchronous_standby_names", value, "why", act.Reason)
	if err := a.o.DB.SetSyncStandbys(c, value); err != nil {
		return fmt.Errorf("set synchronous_standby_names to %q: %w", value, err)
	}
	return nil
}

func (a *Agent) putSync(ctx context.Context, obs decide.Observation, act decide.Action) error {
	rev := int64(0)
	if obs.View.Sync != nil {
		rev = obs.View.Sync.Revision
	}
	c, cancel := a.opContext(ctx)
	defer cancel()
	a.log.Info("recording synchronous standbys", "members", act.Sync.Members, "quorum", act.Sync.Quorum, "why", act.Reason)
	if err := a.o.Store.PutSync(c, cluster.SyncState{Members: act.Sync.Members, Quorum: act.Sync.Quorum}, rev); err != nil {
		return fmt.Errorf("record synchronous standbys: %w", err)
	}
	return nil
}

// raftMoveInterval is the least time between two moves of the etcd raft
// leadership off the primary's host (decide asks every loop while it
// leads): a transfer takes an election round, and asking again before the
// last one settled only churns the raft group.
const raftMoveInterval = 5 * time.Second

// raftMoveLimiter rate-limits raft leadership moves on the agent's clock.
// Its zero value allows the first move raftMoveInterval after the agent's
// clock started (New): a member just started has no raft leadership worth
// moving yet. Used by the loop goroutine only.
type raftMoveLimiter struct {
	last time.Duration // agent clock of the last move
}

// allow reports whether a move may be made at now, and if so records it.
func (l *raftMoveLimiter) allow(now time.Duration) bool {
	if now-l.last < raftMoveInterval {
		return false
	}
	l.last = now
	return true
}

// errHandoverUnconfirmed stops the rest of a switchover's action list
// (publishing the final position, releasing the key) after a stop the
// standbys did not confirm.
var errHandoverUnconfirmed = errors.New("the standbys did not confirm the final WAL: not handing over")

// stopForHandover is a switchover's stop: sessions finish their
// transactions (a smart shutdown admits no new ones) for gracefulStop,
// then a fast shutdown; the standbys then have handoverConfirm after the
// shutdown checkpoint to confirm the final WAL. Once the fast shutdown
// begins no session can commit, and the status says so at once (`ctl
// list`, the proxies) instead of after the stop.
//
// If the standbys did not confirm, PostgreSQL was stopped immediately:
// this member keeps the key (the lease keeper runs throughout), records
// why for decide (Observation.HandoverAborted: cancel the request, start
// again as the primary) and returns errHandoverUnconfirmed so that
// nothing is handed over.
func (a *Agent) stopForHandover(ctx context.Context, obs decide.Observation, act decide.Action) error {
	a.log.Info("stopping PostgreSQL gracefully", "why", act.Reason, "drain", gracefulStop, "confirm_within", handoverConfirm)
	var confirmed bool
	err := a.withLeaseKeeper(ctx, stopTimeout, func(c context.Context) error {
		var err error
		confirmed, err = a.o.DB.StopForHandover(c, pg.HandoverStop{Smart: gracefulStop, Confirm: handoverConfirm,
			OnFast: func() { a.publishStopping(c, obs, act.Reason) }})
		return err
	})
	if err != nil || confirmed {
		return err
	}
	why := fmt.Sprintf("the standbys did not confirm the final WAL within %s of the shutdown checkpoint (the candidate stopped acknowledging WAL?) and the shutdown was escalated", handoverConfirm)
	if sw := obs.View.Switchover; sw != nil {
		a.aborted = abortedHandover{rev: sw.Revision, why: why}
	}
	return errHandoverUnconfirmed
}

// publishStopping reports, while a primary's fast shutdown runs, that it
// accepts no writes any more. Best effort: the status of the loop that
// follows the stop says the same.
func (a *Agent) publishStopping(ctx context.Context, obs decide.Observation, why string) {
	st := cluster.MemberStatus{Name: a.o.Self.Name, Role: cluster.RolePrimary, State: cluster.StateStopped,
		Position: obs.PG.Position, SystemID: obs.PG.SystemID, Waiting: a.Waiting(), Cleared: a.cleared,
		Message: why + ": shutting down, no longer accepting writes; waiting for the standbys to confirm the final WAL", UpdatedAt: a.wall().UTC()}
	c, cancel := context.WithTimeout(ctx, a.settings().LoopInterval)
	defer cancel()
	if err := a.o.Store.PutStatus(c, st); err != nil {
		a.log.Debug("publish status", "err", err)
	}
}

// confirmBootstrapClaim checks, after initdb, that the bootstrap claim is
// still ours. initdb can take longer than the lease TTL on a slow disk; if
// the claim lapsed meanwhile, another member may have bootstrapped a
// different system, and our new directory would never match the cluster.
// The directory was created moments ago and never started, so it holds
// nothing: it is moved aside and the next loop starts over.
func (a *Agent) confirmBootstrapClaim(ctx context.Context) error {
	const attempts, confirmClaimTimeout = 3, 2 * time.Second
	var err error
	for range attempts {
		c, cancel := context.WithTimeout(ctx, confirmClaimTimeout)
		var v cluster.View
		v, err = a.o.Store.Load(c)
		cancel()
		if err == nil {
			if v.Init.Bootstrapper == a.o.Self.Name {
				return nil
			}
			err = fmt.Errorf("the bootstrap claim lapsed during initdb (initialize key: %+v)", v.Init)
			break
		}
	}
	kept, merr := a.o.DB.MoveAside("initdb finished after the bootstrap claim lapsed")
	a.log.Warn("discarding the directory initdb just created", "why", err, "moved_to", kept)
	return errors.Join(fmt.Errorf("confirm bootstrap claim: %w", err), merr)
}

func (a *Agent) finishInit(ctx context.Context, obs decide.Observation) error {
	sysid := obs.PG.SystemID
	if sysid == "" {
		sysid = obs.Data.SystemID
	}
	if sysid == "" {
		return errors.New("finish bootstrap: system identifier unknown yet")
	}
	if obs.PG.Writable() {
		c, cancel := a.opContext(ctx)
		err := a.o.DB.EnsureReplicationUser(c)
		cancel()
		if err != nil {
			return fmt.Errorf("finish bootstrap: %w", err)
		}
	}
	c, cancel := a.opContext(ctx)
	defer cancel()
	if err := a.o.Store.FinishInit(c, sysid); err != nil {
		return fmt.Errorf("finish bootstrap: %w", err)
	}
	if err := a.o.Store.PutConfigIfAbsent(c, a.o.Defaults); err != nil {
		a.log.Warn("publish cluster configuration", "err", err)
	}
	if err := a.o.DB.WriteMarker(a.o.Cluster, sysid); err != nil {
		a.log.Warn("write data directory marker", "err", err)
	}
	a.log.Info("cluster bootstrapped", "system_id", sysid)
	return nil
}

func (a *Agent) recordPromotion(ctx context.Context, reason string) error {
	c, cancel := a.opContext(ctx)
	defer cancel()
	s, err := a.o.DB.Status(c)
	if err != nil {
		return fmt.Errorf("record promotion: %w", err)
	}
	tli := s.Position().Timeline
	entry := cluster.HistoryEntry{Timeline: tli, Leader: a.o.Self.Name, Reason: reason, At: a.wall().UTC()}
	if hist, err := a.o.DB.TimelineHistory(c, tli); err == nil && len(hist) > 0 {
		entry.SwitchLSN = hist[len(hist)-1].SwitchPoint
	}
	a.log.Info("promoted", "timeline", tli, "switch_lsn", entry.SwitchLSN)
	if err := a.o.Store.AppendHistory(c, entry); err != nil {
		a.log.Warn("record timeline history", "err", err)
	}
	return nil
}

// recordDiscard logs the WAL a rewind threw away and records it in the
// store's history, on the entry of the timeline that branched where this
// directory diverged: those bytes may hold acknowledged commits no other
// member has, and the operator must be able to find out afterwards (a
// forced failover to a member that was behind loses exactly this). A
// failure to record is logged, never fatal: the data directory is already
// rewound.
func (a *Agent) recordDiscard(ctx context.Context, res pg.RewindResult) {
	n := res.Discarded()
	if n == 0 {
		if res.Rewound && res.EndOfWAL == 0 {
			a.log.Warn("rewind discarded WAL of unknown size: the end of the local WAL could not be read", "diverged_at", res.Diverged.LSN, "timeline", res.Diverged.Timeline)
		}
		return
	}
	a.log.Warn("rewind discarded WAL that no other member has; commits acknowledged in it are lost",
		"bytes", n, "timeline", res.Diverged.Timeline, "from", res.Diverged.LSN, "to", res.EndOfWAL)
	d := cluster.Discard{Member: a.o.Self.Name, Timeline: res.Diverged.Timeline, End: res.EndOfWAL, At: a.wall().UTC()}
	c, cancel := a.opContext(ctx)
	defer cancel()
	if err := a.o.Store.RecordDiscard(c, res.Diverged.LSN, d); err != nil {
		a.log.Warn("record the discarded WAL in the history", "err", err)
	}
}

// source resolves a member name to the address PostgreSQL listens on.
func (a *Agent) source(obs decide.Observation, member string) (pg.Source, error) {
	m, ok := obs.View.Members[member]
	if !ok || m.Host == "" || m.Port == 0 {
		return pg.Source{}, fmt.Errorf("member %q has not registered an address", member)
	}
	return pg.Source{Host: m.Host, Port: m.Port}, nil
}

func (a *Agent) standbyOptions(obs decide.Observation, target string) (pg.StartOptions, error) {
	o := pg.StartOptions{Standby: true}
	if target == "" {
		return o, nil
	}
	src, err := a.source(obs, target)
	if err != nil {
		return o, err
	}
	o.Primary = &src
	o.SlotName = cluster.SlotName(a.o.Self.Name)
	return o, nil
}

// withLeaseKeeper runs fn (bounded by timeout) while a goroutine renews
// this member's lease every TTL/3, so a long initdb, clone, rewind,
// promotion or stop does not let the lease lapse: the bootstrap claim, the
// status, and — for a primary that is stopping or being promoted — the
// leader key stay valid.
//
// The keeper tracks the lease deadline exactly as the loop does (start of
// the last successful renewal + granted TTL) and cancels fn's context once
// the fence point (deadline - fence margin) is reached without a renewal:
// a promotion whose PostgreSQL is already writable must not outlive its
// lease. The loop then fences on its next tick, which comes at once. The
// final deadline is handed back to the loop when fn returns.
func (a *Agent) withLeaseKeeper(ctx context.Context, timeout time.Duration, fn func(context.Context) error) error {
	c, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	set := a.settings()
	held, deadline := a.lease.Held, a.lease.Deadline
	done := make(chan struct{})
	finished := make(chan time.Duration, 1)
	go func() {
		interval := set.TTL / 3
		t := time.NewTicker(interval)
		defer t.Stop()
		d := deadline
		defer func() { finished <- d }()
		for {
			var fencePoint <-chan time.Time
			if held {
				fencePoint = time.After(d - set.FenceMargin - a.clock())
			}
			select {
			case <-done:
				return
			case <-fencePoint:
				a.log.Warn("lease could not be renewed during a long action; abandoning it so the member can fence")
				cancel()
				return
			case <-t.C:
				start := a.clock()
				kc, kcancel := context.WithTimeout(c, interval)
				if ttl, err := a.o.Store.KeepAlive(kc); err == nil {
					d = start + ttl
					a.state.heartbeat(a.wall())
					a.kickFences(d)
				}
				kcancel()
			}
		}
	}()
	err := fn(c)
	close(done)
	if d := <-finished; held && d > a.lease.Deadline {
		a.lease.Deadline = d
	}
	return err
}

func isLeaseLost(err error) bool { return errors.Is(err, store.ErrLeaseLost) }

// disarmFences disarms the watchdog and the fence guard once PostgreSQL no
// longer accepts writes (never before).
func (a *Agent) disarmFences(when string) {
	if err := a.o.Watchdog.Disarm(); err != nil {
		a.log.Error("disarm the watchdog "+when+"; the machine may still be reset", "err", err)
	}
	a.guardPID.Store(0)
	if err := a.o.FenceGuard.Disarm(); err != nil {
		a.log.Error("disarm the fence guard "+when, "err", err)
	}
}

// Bounds of the clean stop (shutdown).
const (
	// shutdownTimeout bounds the whole clean stop: PostgreSQL's stop, then
	// the store writes.
	shutdownTimeout = stopTimeout + 10*time.Second
	// shutdownStoreTimeout bounds each store call on the way out (at least;
	// see opContext): the final position, the key's release, the status
	// and the lease. A release that times out costs a failover of a TTL.
	shutdownStoreTimeout = 2 * time.Second
)

// shutdown is the clean stop, in the order decide.Shutdown gives:
// PostgreSQL first (under the lease keeper), then — for the leader — the
// final position and the key's release, so no other member is promoted
// while this one still accepts writes, and a replica takes over at once.
// A failed stop ends it: PostgreSQL may still accept writes, so the key is
// kept (it expires with the lease; PDEATHSIG stops PostgreSQL when this
// process exits). After the stop, every step is best effort. Then the
// member withdraws its status and lease.
func (a *Agent) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	a.shuttingDown = true
	obs := decide.Observation{Self: a.o.Self, Settings: a.settings(), StoreOK: true, View: a.view, Lease: a.lease}
	if a.o.DB == nil {
		obs.Self.Witness = true // nothing to stop
	}
	for _, act := range decide.Shutdown(obs) {
		err := a.execute(ctx, obs, act)
		switch {
		case act.Kind == decide.ActStop && err != nil:
			a.log.Error("stop PostgreSQL on shutdown; keeping the leader key until the lease expires", "err", err)
			a.o.DB.Close()
			return nil
		case act.Kind == decide.ActStop:
			a.disarmFences("on shutdown")
		case err != nil && act.Kind == decide.ActReleaseLeader:
			a.log.Warn("release the leader key on shutdown; it will expire with the lease", "err", err)
		case err != nil:
			a.log.Warn("on shutdown", "action", act.Kind, "err", err)
		case act.Kind == decide.ActReleaseLeader:
			a.log.Info("released the leader key")
		}
	}
	if a.o.DB != nil {
		a.o.DB.Close()
	}
	c, cc := context.WithTimeout(ctx, shutdownStoreTimeout)
	defer cc()
	_ = a.o.Store.DeleteStatus(c)
	_ = a.o.Store.Revoke(c)
	return nil
}

// shutdownAfterFatal stops nothing that Decide did not ask to stop; it only
// withdraws this member from the store.
func (a *Agent) shutdownAfterFatal() {
	c, cancel := context.WithTimeout(context.Background(), shutdownStoreTimeout)
	defer cancel()
	_ = a.o.Store.DeleteStatus(c)
	_ = a.o.Store.Revoke(c)
	if a.o.DB != nil {
		a.o.DB.Close()
	}
}

func dataFromState(st pg.DataDirState) decide.Data {
	switch st.Kind {
	case pg.DataDirMissing, pg.DataDirEmpty:
		return decide.Data{Kind: decide.DataEmpty}
	case pg.DataDirInvalid:
		return decide.Data{Kind: decide.DataInvalid, Problem: st.Reason}
	}
	d := decide.Data{Kind: decide.DataValid}
	if st.Control != nil {
		d.SystemID = st.Control.SystemID
		d.ControlState = string(st.Control.State)
		d.Checkpoint = cluster.Position{Timeline: st.Control.CheckpointTimeline, LSN: st.Control.CheckpointLSN}
	}
	return d
}
