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
	// cancelled: the primary starts again.
	handoverConfirm = time.Second
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
		decide.ActMoveRaftLeader, decide.ActPublishCheckpoint, decide.ActClearSwitchover, decide.ActAckRestart,
		decide.ActAckReinit, decide.ActSetSync, decide.ActPutSync:
		return false
	}
	return true
}

// execute carries out one action. An error stops the rest of the list.
func (a *Agent) execute(ctx context.Context, obs decide.Observation, act decide.Action) error {
	db, st := a.o.DB, a.o.Store
	switch act.Kind {
	case decide.ActClaimInit:
		c, cancel := a.opContext(ctx)
		defer cancel()
		ok, err := st.ClaimInit(c)
		if err != nil {
			return fmt.Errorf("claim bootstrap: %w", err)
		}
		if !ok {
			return fmt.Errorf("claim bootstrap: %w", errCASLost)
		}
		a.log.Info("claimed the cluster bootstrap", "why", act.Reason)
		return nil

	case decide.ActAbortInit:
		c, cancel := a.opContext(ctx)
		defer cancel()
		return st.AbortInit(c)

	case decide.ActInitdb:
		a.log.Info("running initdb")
		if err := a.withLeaseKeeper(ctx, longActionTimeout, db.Initdb); err != nil {
			return err
		}
		return a.confirmBootstrapClaim(ctx)

	case decide.ActFinishInit:
		return a.finishInit(ctx, obs)

	case decide.ActAcquireLeader:
		// Never race for the key while a promise to a primary serving under
		// the failsafe lasts; and give no such promise while racing.
		if err := a.failsafe.beginAcquire(a.settings().TTL); err != nil {
			return fmt.Errorf("acquire leader key: %w", err)
		}
		if err := a.armWatchdog(); err != nil {
			return fmt.Errorf("acquire leader key: %w", err)
		}
		c, cancel := a.opContext(ctx)
		defer cancel()
		ok, err := st.AcquireLeader(c)
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

	case decide.ActReleaseLeader:
		c, cancel := a.opContext(ctx)
		defer cancel()
		a.log.Warn("releasing the leader key", "why", act.Reason)
		a.revokeArchive("releasing the leader key")
		return st.ReleaseLeader(c)

	case decide.ActDeleteStaleLeader:
		if obs.View.Leader == nil {
			return nil
		}
		c, cancel := a.opContext(ctx)
		defer cancel()
		return st.DeleteStaleLeader(c, obs.View.Leader.Revision)

	case decide.ActStartPrimary:
		if err := a.armWatchdog(); err != nil {
			return err
		}
		a.log.Info("starting PostgreSQL as primary", "why", act.Reason)
		a.upstream = ""
		return db.Start(ctx, pg.StartOptions{})

	case decide.ActStartStandby:
		o, err := a.standbyOptions(obs, act.Target)
		if err != nil {
			return err
		}
		a.log.Info("starting PostgreSQL as a standby", "upstream", act.Target)
		if err := db.Start(ctx, o); err != nil {
			return err
		}
		a.upstream = act.Target
		return nil

	case decide.ActFollow:
		o, err := a.standbyOptions(obs, act.Target)
		if err != nil {
			return err
		}
		a.log.Info("following a new upstream", "upstream", act.Target)
		if err := db.Reconfigure(ctx, o); err != nil {
			return err
		}
		a.upstream = act.Target
		return nil

	case decide.ActPromote:
		if err := a.armWatchdog(); err != nil {
			return err
		}
		a.log.Info("promoting PostgreSQL", "why", act.Reason)
		if err := a.withLeaseKeeper(ctx, promoteTimeout, db.Promote); err != nil {
			return err
		}
		a.upstream = ""
		return nil

	case decide.ActRecordPromotion:
		return a.recordPromotion(ctx, act.Reason)

	case decide.ActPublishOptime:
		c, cancel := a.opContext(ctx)
		defer cancel()
		// A primary observed writable in this loop is still on the
		// timeline observed (only a stop and start changes it) and its
		// position then is a lower bound of where it is now; a member
		// just promoted was observed in recovery, and is read again.
		pos := obs.PG.Position
		if !obs.PG.Writable() {
			s, err := db.Status(c)
			if err != nil || !s.Ready || s.InRecovery {
				return nil // nothing to publish; not an error worth stopping for
			}
			pos = s.Position()
		}
		o := cluster.Optime{Position: pos, Leader: a.o.Self.Name}
		if obs.StoreOK && obs.View.Optime != nil && *obs.View.Optime == o {
			return nil // the store holds it already: no write (a raft round and fsyncs) for nothing
		}
		return st.PutOptime(c, o)

	case decide.ActEnsureSlots:
		if len(act.Slots) == 0 {
			return nil
		}
		c, cancel := a.opContext(ctx)
		defer cancel()
		if err := db.EnsureSlots(c, act.Slots); err != nil {
			a.log.Warn("ensure replication slots", "err", err)
		}
		return nil

	case decide.ActMoveRaftLeader:
		now := a.clock()
		if a.o.LocalStoreEndpoint == "" || now-a.lastRaftMov < 5*time.Second {
			return nil
		}
		a.lastRaftMov = now
		c, cancel := a.opContext(ctx)
		defer cancel()
		if err := st.MoveLeaderAway(c, a.o.LocalStoreEndpoint); err != nil {
			a.log.Debug("move etcd raft leadership away from the primary", "err", err)
		}
		return nil

	case decide.ActStop:
		a.upstream = ""
		// Every stop runs under the lease keeper: a primary's fast shutdown
		// writes a checkpoint and drains its walsenders, which can outlast
		// the lease; if the lease lapsed meanwhile a replica could be
		// promoted without the WAL tail. No new write is admitted once the
		// stop has begun, so keeping the lease is safe. A stop is never cut
		// short by the agent's own shutdown signal (that would turn it into
		// an immediate shutdown).
		stopCtx := context.WithoutCancel(ctx)
		if act.Graceful {
			return a.stopForHandover(stopCtx, obs, act)
		}
		a.log.Info("stopping PostgreSQL", "why", act.Reason)
		return a.withLeaseKeeper(stopCtx, stopTimeout, func(c context.Context) error { return db.Stop(c, pg.Fast) })

	case decide.ActFence:
		// Escalate to an immediate shutdown no later than the moment the
		// lease could expire; if the lease is already gone, at once.
		budget := a.lease.Deadline - a.clock() - 100*time.Millisecond
		if !a.lease.Held || budget < 200*time.Millisecond {
			budget = 200 * time.Millisecond
		}
		a.log.Warn("fencing PostgreSQL: stopping writes", "why", act.Reason, "escalate_after", budget)
		a.revokeArchive("fencing")
		a.upstream = ""
		if err := db.Fence(time.Now().Add(budget)); err != nil {
			return err
		}
		a.disarmFences("after fencing")
		return nil

	case decide.ActRewind:
		src, err := a.source(obs, act.Target)
		if err != nil {
			return err
		}
		a.log.Warn("rewinding data directory", "from", act.Target, "why", act.Reason)
		var res pg.RewindResult
		err = a.withLeaseKeeper(ctx, longActionTimeout, func(c context.Context) error {
			var err error
			res, err = db.Rewind(c, src)
			return err
		})
		if err != nil {
			a.setRewindError(err.Error())
			return err
		}
		a.setRewindError("")
		a.log.Info("rewind finished", "from", act.Target, "rewound", res.Rewound)
		a.recordDiscard(ctx, res)
		return nil

	case decide.ActReinit:
		src, err := a.source(obs, act.Target)
		if err != nil {
			return err
		}
		kept, err := db.MoveAside(act.Reason)
		if err != nil {
			return err
		}
		// The operator's request is done once the old data is aside: if the
		// clone fails, the ordinary rules clone into the empty directory;
		// re-running the request would move aside a fresh copy instead.
		a.requests.ack(requestReinit)
		a.log.Warn("re-cloning the data directory", "from", act.Target, "why", act.Reason, "previous_data_kept_at", kept)
		a.setRewindError("")
		return a.withLeaseKeeper(ctx, longActionTimeout, func(c context.Context) error { return db.Clone(c, src) })

	case decide.ActClone:
		src, err := a.source(obs, act.Target)
		if err != nil {
			return err
		}
		a.log.Info("cloning from the primary", "from", act.Target)
		return a.withLeaseKeeper(ctx, longActionTimeout, func(c context.Context) error { return db.Clone(c, src) })

	case decide.ActPublishCheckpoint:
		// The stopped primary's last checkpoint is the last WAL it wrote:
		// the switchover candidate promotes only once it has received it.
		ds, err := db.Inspect()
		if err != nil || ds.Control == nil {
			return fmt.Errorf("read the final checkpoint: %w", err)
		}
		// Only a clean shutdown's checkpoint is the last WAL written; after
		// a crash or an immediate stop it is older than what clients saw
		// committed, and publishing it would let a candidate promote
		// without the tail. Failing here keeps the leader key.
		if ds.Control.State != pg.StateShutDown {
			return fmt.Errorf("publish the final position: PostgreSQL did not shut down cleanly (state %q); keeping the leader key", ds.Control.State)
		}
		c, cancel := a.opContext(ctx)
		defer cancel()
		pos := cluster.Position{Timeline: ds.Control.CheckpointTimeline, LSN: ds.Control.CheckpointLSN}
		a.log.Info("publishing the final position before handing over", "position", pos.LSN, "timeline", pos.Timeline)
		return st.PutOptime(c, cluster.Optime{Position: pos, Leader: a.o.Self.Name})

	case decide.ActNameCandidate:
		// Replace the request by one naming the candidate: delete at its
		// revision, then create. Between the two there is no request, but
		// this primary still serves and holds the key, so nobody races; a
		// request another client puts in between wins, and the next loop
		// acts on it.
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
		if err := st.DeleteSwitchover(c, sw.Revision); err != nil {
			return err
		}
		ok, err := st.PutSwitchover(c, named)
		if err != nil {
			return err
		}
		if !ok {
			a.log.Warn("another switchover request took the place of the one being named", "candidate", act.Target)
		} else {
			a.log.Info("named the switchover candidate", "candidate", act.Target)
		}
		return nil

	case decide.ActClearSwitchover:
		sw := obs.View.Switchover
		if sw == nil {
			return nil
		}
		c, cancel := a.opContext(ctx)
		defer cancel()
		a.log.Info("clearing the switchover request", "why", act.Reason)
		if err := st.DeleteSwitchover(c, sw.Revision); err != nil {
			return err
		}
		a.cleared = &cluster.ClearedRequest{RequestedAt: sw.RequestedAt, Kind: sw.Kind, Reason: act.Reason}
		return nil

	case decide.ActSetSync:
		value, err := pg.RenderSyncStandbys(act.Sync.Members, act.Sync.Quorum)
		if err != nil {
			return err
		}
		c, cancel := a.opContext(ctx)
		defer cancel()
		a.log.Info("synchronous replication", "synchronous_standby_names", value, "why", act.Reason)
		return db.SetSyncStandbys(c, value)

	case decide.ActPutSync:
		rev := int64(0)
		if obs.View.Sync != nil {
			rev = obs.View.Sync.Revision
		}
		c, cancel := a.opContext(ctx)
		defer cancel()
		a.log.Info("recording synchronous standbys", "members", act.Sync.Members, "quorum", act.Sync.Quorum, "why", act.Reason)
		return st.PutSync(c, cluster.SyncState{Members: act.Sync.Members, Quorum: act.Sync.Quorum}, rev)

	case decide.ActAckRestart:
		a.requests.ack(requestRestart)
		return nil

	case decide.ActAckReinit:
		a.requests.ack(requestReinit)
		return nil
	}
	return fmt.Errorf("unknown action %q", act.Kind)
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
		Message: why + ": shutting down, no longer accepting writes; waiting for the standbys to confirm the final WAL", UpdatedAt: time.Now().UTC()}
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
	var err error
	for i := 0; i < 3; i++ {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
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
	entry := cluster.HistoryEntry{Timeline: tli, Leader: a.o.Self.Name, Reason: reason, At: time.Now().UTC()}
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
	d := cluster.Discard{Member: a.o.Self.Name, Timeline: res.Diverged.Timeline, End: res.EndOfWAL, At: time.Now().UTC()}
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
					a.state.heartbeat(time.Now())
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

// shutdown is the clean stop: PostgreSQL first, then the leader key, so no
// other member is promoted while this one still accepts writes.
func (a *Agent) shutdown() error {
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout+10*time.Second)
	defer cancel()
	wasLeader := a.lease.Held && a.view.Leader != nil && a.view.Leader.Name == a.o.Self.Name && a.view.Leader.LeaseID == a.lease.ID
	if a.o.DB != nil {
		// The lease stays alive while PostgreSQL stops: a replica promoted
		// before the shutdown checkpoint reached it would lack the tail.
		err := a.withLeaseKeeper(ctx, stopTimeout, func(c context.Context) error { return a.o.DB.Stop(c, pg.Fast) })
		if err == nil {
			a.disarmFences("on shutdown")
		}
		if err != nil {
			// PostgreSQL may still accept writes: keep the leader key (it
			// expires with the lease) rather than let another member be
			// promoted now. PDEATHSIG stops PostgreSQL when this process
			// exits.
			a.log.Error("stop PostgreSQL on shutdown; keeping the leader key until the lease expires", "err", err)
			a.o.DB.Close()
			return nil
		}
		if wasLeader {
			// Publish the final position only if it is the last WAL written.
			if st, err := a.o.DB.Inspect(); err == nil && st.Control != nil && st.Control.State == pg.StateShutDown {
				c, cc := context.WithTimeout(ctx, 2*time.Second)
				_ = a.o.Store.PutOptime(c, cluster.Optime{Position: cluster.Position{Timeline: st.Control.CheckpointTimeline, LSN: st.Control.CheckpointLSN}, Leader: a.o.Self.Name})
				cc()
			}
		}
		a.o.DB.Close()
	}
	c, cc := context.WithTimeout(ctx, 2*time.Second)
	defer cc()
	if wasLeader {
		a.revokeArchive("releasing the leader key on shutdown")
		if err := a.o.Store.ReleaseLeader(c); err != nil {
			a.log.Warn("release the leader key on shutdown; it will expire with the lease", "err", err)
		} else {
			a.log.Info("released the leader key")
		}
	}
	_ = a.o.Store.DeleteStatus(c)
	_ = a.o.Store.Revoke(c)
	return nil
}

// shutdownAfterFatal stops nothing that Decide did not ask to stop; it only
// withdraws this member from the store.
func (a *Agent) shutdownAfterFatal() {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
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
