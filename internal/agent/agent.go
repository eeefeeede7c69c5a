// Package agent runs one holdfast member: it observes its PostgreSQL and the
// consensus store, asks decide.Decide what to be, and carries out the
// resulting actions — in that order, in one goroutine, every loop.
//
// Concurrency contract: Run owns the database engine and the store client.
// Nothing else calls them while Run is running, except the lease keeper,
// which only renews the lease during long actions that cannot hold
// leadership (initdb, clone, rewind, promote) and stops when they end.
package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/decide"
	"github.com/holdfast/holdfast/internal/fenceguard"
	"github.com/holdfast/holdfast/internal/pg"
	"github.com/holdfast/holdfast/internal/watchdog"
)

// Options configure an Agent.
type Options struct {
	Cluster string
	Self    cluster.MemberInfo
	// Defaults are the member's own settings, used until the cluster's
	// dynamic configuration is in the store.
	Defaults cluster.Config
	// FenceMargin: see config.Config.FenceMargin.
	FenceMargin time.Duration
	DB          Database // nil for a witness
	Store       Store
	// LocalStoreEndpoint is this member's embedded etcd client URL; empty
	// for an external store (then raft leadership is not ours to move).
	LocalStoreEndpoint string
	Logger             *slog.Logger
	// RewindFailedFile, when set, persists the last pg_rewind failure across
	// agent restarts: a directory left by a failed rewind is unusable and
	// must be re-cloned, even by the next incarnation of the agent.
	RewindFailedFile string
	// Clock returns the agent's monotonic time; nil means time since New.
	// Every lease deadline, fence point and timed step is on this clock.
	Clock func() time.Duration
	// Wall returns this host's wall-clock time; nil means time.Now. It is
	// read only for what the wall clock means to people and other hosts:
	// the due time of an operator's scheduled request, and the timestamps
	// written to the store (status, history) and served by the API. Never
	// for a lease or a fence. Tests pass a manual one.
	Wall func() time.Time
	// PeerClient configures calls to the other members' APIs (the
	// failsafe): their auth token and TLS settings.
	PeerClient api.ClientOptions
	// Peers, when set, replaces those API calls (tests: the other agents'
	// backends in the same process).
	Peers Peers
	// Watchdog resets this machine if the agent freezes while it may run
	// a writable primary; nil = none (a nil *watchdog.Guard is mode off).
	Watchdog *watchdog.Guard
	// FenceGuard kills PostgreSQL's process group if the agent freezes
	// while it may run a writable primary; nil = none.
	FenceGuard *fenceguard.Client
	// Archive, when set, is the archive gate (see ArchiveGate).
	Archive ArchiveGate
	// ArchiveReporter, when set, judges the archiving this member does
	// as the primary; nil: no repository, archiving is off.
	ArchiveReporter ArchiveReporter
	// Cloner, when set, builds new standbys' data directories instead of
	// DB.Clone (see Cloner).
	Cloner Cloner
	// Bootstrapper, when set, builds the new cluster's first data
	// directory instead of DB.Initdb (see Bootstrapper).
	Bootstrapper Bootstrapper
	// OnState, when set, receives the state the API serves at the end of
	// every loop (e.g. to label a Kubernetes pod with the role). It runs on
	// the loop's goroutine and must not block.
	OnState func(api.MemberState)
}

// Agent is one member's control loop.
type Agent struct {
	o     Options
	log   *slog.Logger
	clock func() time.Duration
	wall  func() time.Time

	lease    decide.Lease
	memory   decide.Memory
	upstream string // member PostgreSQL was last told to follow
	// exitReported is the pid of the last postmaster whose exit was
	// logged (reportExit).
	exitReported int
	data         decide.Data
	rewindErr    string
	view         cluster.View
	lastMsg      string
	raftMoves    raftMoveLimiter
	// shuttingDown is set by shutdown: store calls then get at least
	// shutdownStoreTimeout (opContext).
	shuttingDown bool
	// statusAt is when (agent clock) the status was last written; 0: never.
	statusAt time.Duration
	// marker is the system identifier last written to the data
	// directory's marker while PostgreSQL ran; "" when it must be written
	// again (see maybeWriteMarker).
	marker   string
	requests requestQueue
	state    snapshot
	// waiting is what node maintenance waits for (SetWaiting); set from
	// the maintenance goroutine, read by the loop.
	waiting   atomic.Pointer[string]
	viewAt    time.Time
	recheckIn time.Duration
	mustFence bool // see guarding
	// mayBeWritable: PostgreSQL may have accepted writes at the last
	// observation (decide.PG.MayBeWritable), or an action since may have
	// made it so (a start or promotion): see untilFencePoint.
	mayBeWritable bool
	failsafe      failsafeGate
	peers         Peers
	// guardPID is the postmaster the fence guard watches (0 = disarmed);
	// read by the lease keeper goroutine too.
	guardPID atomic.Int64
	// archiving: the archive gate stands granted (see tendArchive); read
	// by the lease keeper goroutine too.
	archiving atomic.Bool
	// replies: each standby's last reply_time value and when (agent clock)
	// it was first seen.
	replies map[string]replyMark
	// aborted is the switchover request (by revision) whose stop was
	// escalated before the standbys confirmed the final WAL, and why
	// (decide.Observation.HandoverAborted).
	aborted abortedHandover
	// cleared is the last request this member cleared
	// (cluster.MemberStatus.Cleared).
	cleared *cluster.ClearedRequest
}

type abortedHandover struct {
	rev int64
	why string
}

// SetWaiting records what node maintenance run beside the loop (package
// kubemaint) is waiting for — "" when nothing — for the member's status
// (`ctl list`), the API and the metrics. Safe for concurrent use.
func (a *Agent) SetWaiting(why string) { a.waiting.Store(&why) }

// Waiting is the last SetWaiting value.
func (a *Agent) Waiting() string {
	if p := a.waiting.Load(); p != nil {
		return *p
	}
	return ""
}

type replyMark struct {
	value int64
	at    time.Duration
}

// replyFresh records a standby's reply_time and reports whether it changed
// within the last TTL (on this agent's clock: the standby's own clock is
// never compared with ours).
func (a *Agent) replyFresh(name string, reply int64) bool {
	if a.replies == nil {
		a.replies = map[string]replyMark{}
	}
	now := a.clock()
	m, ok := a.replies[name]
	if !ok || m.value != reply {
		a.replies[name] = replyMark{value: reply, at: now}
		return true
	}
	return now-m.at < a.settings().TTL
}

// switchoverDrain: see decide.Settings.SwitchoverDrain. Proxies see the
// request through their watch within milliseconds; half a second also lets
// short transactions that were already running finish.
const switchoverDrain = 500 * time.Millisecond

// New builds an agent; it starts nothing.
func New(o Options) *Agent {
	a := &Agent{o: o, log: o.Logger, clock: o.Clock, wall: o.Wall}
	if a.wall == nil {
		a.wall = time.Now
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.clock == nil {
		start := time.Now()
		a.clock = func() time.Duration { return time.Since(start) }
	}
	a.failsafe = failsafeGate{self: o.Self.Name, clock: a.clock}
	a.peers = o.Peers
	if a.peers == nil {
		a.peers = newHTTPPeers(o.PeerClient)
	}
	a.state.set(api.MemberState{Cluster: o.Cluster, Name: o.Self.Name, LoopHeartbeat: a.wall(),
		LoopInterval: o.Defaults.LoopInterval, TTL: o.Defaults.TTL, Tags: o.Self.Tags})
	if o.RewindFailedFile != "" {
		if b, err := os.ReadFile(o.RewindFailedFile); err == nil {
			a.rewindErr = strings.TrimSpace(string(b))
		}
	}
	return a
}

// setRewindError records (or clears, with "") the last pg_rewind failure,
// in memory and in RewindFailedFile.
func (a *Agent) setRewindError(msg string) {
	a.rewindErr = msg
	if a.o.RewindFailedFile == "" {
		return
	}
	if msg == "" {
		_ = os.Remove(a.o.RewindFailedFile)
		return
	}
	if err := os.WriteFile(a.o.RewindFailedFile, []byte(msg+"\n"), 0o600); err != nil {
		a.log.Warn("persist rewind failure", "err", err)
	}
}

func sameInfo(a, b cluster.MemberInfo) bool {
	return a.Name == b.Name && a.Host == b.Host && a.Port == b.Port && a.APIURL == b.APIURL &&
		a.Witness == b.Witness && maps.Equal(a.Tags, b.Tags) && a.BackupTLSPort == b.BackupTLSPort
}

// ErrFatal wraps the reason an agent stopped itself to protect data.
var ErrFatal = errors.New("member stopped to protect its data")

// Run loops until ctx is cancelled, then shuts down cleanly: a primary stops
// PostgreSQL, publishes its final position and releases the leader key so a
// replica takes over at once instead of waiting for the lease to expire.
// It returns an error wrapping ErrFatal when the member must not continue
// (e.g. its data directory belongs to another cluster); nothing was changed
// on disk in that case.
func (a *Agent) Run(ctx context.Context) error {
	if a.o.DB != nil {
		if err := a.o.DB.AdoptOrStopStray(ctx); err != nil {
			return fmt.Errorf("stop a PostgreSQL left running by a previous agent: %w", err)
		}
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	wake := a.o.Store.Watch(watchCtx)

	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return a.shutdown()
		case <-wake:
		case <-timer.C:
		}
		if err := a.Step(ctx); err != nil {
			a.shutdownAfterFatal()
			return err
		}
		timer.Reset(a.nextWake())
	}
}

func (a *Agent) settings() decide.Settings {
	c := a.o.Defaults
	if a.view.Config != nil {
		c = *a.view.Config
	}
	return decide.Settings{
		TTL:                 c.TTL,
		LoopInterval:        c.LoopInterval,
		FenceMargin:         a.o.FenceMargin,
		MaximumLag:          c.MaximumLagOnFailover,
		PrimaryStartTimeout: c.PrimaryStartTimeout,
		StartupGrace:        3 * c.TTL,
		RewindAfter:         max(5*time.Second, 3*c.LoopInterval),
		SwitchoverDrain:     switchoverDrain,
		// A candidate that streams may catch up with a write burst for
		// one lease TTL: the time a failover takes to notice a lost
		// primary, an operator's yardstick for "at once".
		SwitchoverCatchUp: c.TTL,
		SyncMode:          c.SyncMode(),
		SyncCount:         c.SyncCount(),
		SyncSettle:        syncSettle,
	}
}

// Floors of the clamps to the fence point: a member at or past its fence
// point still gets this long to wake up, and to make one call.
const (
	minWake   = 10 * time.Millisecond
	minOpTime = 50 * time.Millisecond
)

// nextWake is the loop interval, shortened so that a primary checks its
// lease no later than the moment it must fence.
func (a *Agent) nextWake() time.Duration {
	s := a.settings()
	next := s.LoopInterval
	if a.recheckIn > 0 && a.recheckIn < next {
		next = a.recheckIn
	}
	if a.guarding() {
		if untilFence := a.untilFencePoint(s); untilFence < next && (untilFence > 0 || a.mayBeWritable) {
			next = max(untilFence, minWake)
		}
	}
	return next
}

// untilFencePoint is how long until this member must have fenced unless it
// renews its lease or its failsafe promises: FenceMargin before the later
// of its lease deadline and the end of the members' failsafe promises
// (decide.WritableUntil's bound, from what the agent holds now).
//
// Bugs fixed (issue 11 item 10, found by the simulation over the real
// agent): it was computed from the lease deadline alone, so a primary
// serving under the failsafe — past its lease deadline by design — woke
// every minWake, running a failsafe round (a call to every member) and a
// store round each time, instead of once a loop. And past the fence
// point, the clamps (nextWake, opContext) apply only while PostgreSQL may
// still be writable (mayBeWritable): a member that fenced while cut off
// from the store, whose last view still names it leader, has nothing
// left to fence, and woke every minWake until the store came back.
func (a *Agent) untilFencePoint(s decide.Settings) time.Duration {
	return max(a.lease.Deadline, a.memory.FailsafeUntil) - s.FenceMargin - a.clock()
}

// guarding reports whether this member must fence on its lease deadline:
// it held the leader key or ran a writable PostgreSQL at the last
// observation. Only then are the loop's calls clamped to the fence point;
// a replica's lease running out costs nothing but its status.
func (a *Agent) guarding() bool { return a.lease.Held && a.mustFence }

// opContext bounds one store or database call: never past the moment the
// primary must fence, never longer than a loop interval (on the way out,
// shutdownStoreTimeout).
func (a *Agent) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	s := a.settings()
	d := s.LoopInterval
	if a.shuttingDown {
		d = max(d, shutdownStoreTimeout)
	}
	if a.guarding() {
		if untilFence := a.untilFencePoint(s); untilFence < d && (untilFence > 0 || a.mayBeWritable) {
			d = max(untilFence, minOpTime)
		}
	}
	return context.WithTimeout(ctx, d)
}

// observeStoreContext bounds the store calls of observe (lease renewal,
// read, registration): as opContext, and, for a primary that other members
// could promise (the failsafe), ending a failsafe round's time before its
// fence point. With the store out of reach these calls last their whole
// timeout; clamped to the fence point only, they left the round — which
// comes after them — to start at the fence point itself, so every promise
// was renewed only once the last one had run out (late under load) and the
// writable time the API publishes lapsed at every round.
func (a *Agent) observeStoreContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if !a.guarding() || len(a.view.Members) < 2 {
		return a.opContext(ctx)
	}
	s := a.settings()
	untilRound := a.untilFencePoint(s) - a.failsafeRoundTimeout()
	if untilRound >= s.LoopInterval || a.shuttingDown || (untilRound <= 0 && !a.mayBeWritable) {
		return a.opContext(ctx)
	}
	return context.WithTimeout(ctx, max(untilRound, minOpTime))
}

// fatalStopTimeout bounds the stop of a PostgreSQL that belongs to
// another cluster, the only action carried out with a fatal decision.
const fatalStopTimeout = 30 * time.Second

// Step is one observe → decide → act → report round, the body of Run's
// loop. It returns an error wrapping ErrFatal when the member must stop
// (Run then withdraws it from the store). Call it from one goroutine only,
// and never while Run runs; scenario tests and simulations drive agents
// with it, a round at a time, on a manual clock (Options.Clock, Wall).
//
// The wake-up Run would wait for before the next Step is NextWake.
func (a *Agent) Step(ctx context.Context) error { return a.tick(ctx) }

// NextWake is how long Run waits after a Step before the next one, unless
// a watch event wakes it first: see nextWake.
func (a *Agent) NextWake() time.Duration { return a.nextWake() }

// tick is one observe → decide → act round.
func (a *Agent) tick(ctx context.Context) error {
	started := a.clock()
	obs := a.observe(ctx)
	l := obs.View.Leader
	a.mustFence = obs.PG.Writable() || (l != nil && l.Name == a.o.Self.Name)
	a.mayBeWritable = obs.PG.MayBeWritable()
	a.failsafe.setLeading(decide.RefusesPromise(obs))
	a.tendWatchdog()
	a.tendArchive()
	d := decide.Decide(obs)
	if d.Message != a.lastMsg {
		a.log.Info("decision", "role", d.Role, "state", d.State, "why", d.Message)
		a.lastMsg = d.Message
	}
	if d.Fatal != "" {
		for _, act := range d.Actions {
			if act.Kind == decide.ActStop && a.o.DB != nil {
				stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), fatalStopTimeout)
				_ = a.o.DB.Stop(stopCtx, pg.Fast)
				cancel()
			}
		}
		return fmt.Errorf("%w: %s", ErrFatal, d.Fatal)
	}
	a.memory = d.Memory
	a.recheckIn = d.RecheckIn
	pgChanged := false
	for _, act := range d.Actions {
		pgChanged = pgChanged || changesPG(act.Kind)
		if act.Kind == decide.ActStartPrimary || act.Kind == decide.ActPromote {
			a.mayBeWritable = true // even if it fails halfway
		}
		if err := a.execute(ctx, obs, act); err != nil {
			a.log.Warn("action failed; deciding again next loop", "action", act.Kind, "target", act.Target, "err", err)
			break
		}
	}
	// The API's state first: it carries the fence point this decision
	// renewed (WritableFor), and the status write below is a store call
	// that, with the store out of reach, lasts its whole timeout. Published
	// after it, the renewed fence point reached the proxy a loop interval
	// late, past the old one: the proxy saw no writable primary for that
	// long at every failsafe round.
	a.publishState(obs, d, a.clock()-started)
	a.publishStatus(ctx, obs, d, pgChanged)
	return nil
}

// observe gathers one Observation: renew the lease, read the store, read
// PostgreSQL. The lease is renewed first so that the deadline Decide sees
// is as fresh as possible.
func (a *Agent) observe(ctx context.Context) decide.Observation {
	a.renewLease(ctx)

	storeOK := false
	{
		c, cancel := a.observeStoreContext(ctx)
		v, err := a.o.Store.Load(c)
		cancel()
		if err != nil {
			a.log.Debug("read store", "err", err)
		} else {
			a.view, storeOK, a.viewAt = v, true, a.wall()
		}
	}
	// Register whenever the store lacks our registration (first start, or
	// a store that lost its data): without it the primary keeps no slot for
	// us and others cannot resolve our address.
	if storeOK {
		if m, ok := a.view.Members[a.o.Self.Name]; !ok || !sameInfo(m, a.o.Self) {
			c, cancel := a.observeStoreContext(ctx)
			if err := a.o.Store.Register(c, a.o.Self); err != nil {
				a.log.Debug("register member", "err", err)
			}
			cancel()
		}
	}

	obs := decide.Observation{
		WallNow:         a.wall(),
		Requests:        a.dueRequests(),
		Now:             a.clock(),
		Self:            a.o.Self,
		Settings:        a.settings(),
		StoreOK:         storeOK,
		View:            a.view,
		Lease:           a.lease,
		Memory:          a.memory,
		LastRewindError: a.rewindErr,
	}
	if sw := a.view.Switchover; sw != nil && sw.Revision == a.aborted.rev {
		obs.HandoverAborted = a.aborted.why
	} else if storeOK {
		a.aborted = abortedHandover{}
	}
	if a.o.DB == nil {
		obs.Data = decide.Data{Kind: decide.DataEmpty}
		return obs
	}
	obs.PG = a.observePG(ctx)
	switch {
	case !obs.PG.Running:
		a.data = a.inspect()
	default:
		// A running postmaster proves the directory holds PostgreSQL data,
		// even if the last inspection (before an initdb or a clone during
		// this agent's life) found it empty; pg_controldata is not read
		// while PostgreSQL runs, its state would be stale at once.
		a.data.Kind = decide.DataValid
		if obs.PG.SystemID != "" {
			a.data.SystemID = obs.PG.SystemID
		}
	}
	obs.Data = a.data
	a.maybeWriteMarker(obs)
	// A primary cut off from the store asks the members to let it serve,
	// and keeps asking until it has its key back.
	obs.Now = a.clock()
	obs.Failsafe = a.failsafeObservation(ctx, decide.NeedsFailsafeRound(obs), !storeOK)
	obs.Lease = a.lease // renewed during the round, perhaps
	if c := obs.Failsafe.AllConfirmedAt; c > 0 {
		// Every member promised until c + TTL: the fences may wait as long
		// as a lease renewed at c would let them.
		a.kickFences(c + a.settings().TTL)
	}
	// The clock is read again: store and database calls took time, and a
	// stale Now would let the fence check run late.
	obs.Now = a.clock()
	return obs
}

// renewLease keeps this member's lease alive and tracks the earliest moment
// the store could expire it. On any failure the deadline stays where it was,
// so Decide fences a primary in time.
func (a *Agent) renewLease(ctx context.Context) {
	c, cancel := a.observeStoreContext(ctx)
	defer cancel()
	a.renewLeaseWithin(c)
}

// renewLeaseWithin is renewLease bounded by c alone.
func (a *Agent) renewLeaseWithin(c context.Context) {
	start := a.clock()
	// Lease returns the store's current lease, granting one if the previous
	// was lost; any call may have re-granted it, so follow its id.
	id, err := a.o.Store.Lease(c)
	if err != nil {
		a.log.Debug("grant lease", "err", err)
		return
	}
	if !a.lease.Held || id != a.lease.ID {
		if a.lease.Held {
			a.log.Warn("lease replaced", "old", a.lease.ID, "new", id)
		}
		// The lease may have been granted earlier, inside another call of
		// the last loop: only a renewal made now tells its true deadline.
		a.lease = decide.Lease{Held: true, ID: id, Deadline: start}
	}
	ttl, err := a.o.Store.KeepAlive(c)
	if err != nil {
		if isLeaseLost(err) {
			a.log.Warn("lease lost", "lease", a.lease.ID)
			a.lease = decide.Lease{}
		} else {
			a.log.Debug("renew lease", "err", err)
		}
		return
	}
	a.lease.Deadline = start + ttl
	a.kickFences(a.lease.Deadline)
}

// kickFences pushes the watchdog's reset point after a successful lease
// renewal (deadline: the new lease deadline) — and only then: a frozen
// agent stops kicking and the machine resets before the lease can expire
// for the other members.
//
// The fence guard is re-armed at the same moments, while this member may
// run a writable primary: it kills PostgreSQL's process group fenceGuardLead
// before deadline unless confirmed again — so a frozen agent's PostgreSQL
// stops accepting writes before any other member can be promoted.
func (a *Agent) kickFences(deadline time.Duration) {
	a.extendArchive(deadline)
	if err := a.o.Watchdog.Kick(deadline - a.clock()); err != nil {
		a.log.Error("watchdog keepalive", "err", err)
	}
	if a.guardPID.Load() > 1 {
		if err := a.o.FenceGuard.Arm(int(a.guardPID.Load()), deadline-fenceGuardLead-a.clock()); err != nil {
			a.log.Error("fence guard", "err", err)
		}
	}
}

// fenceGuardLead is how long before the lease deadline the fence guard
// kills a PostgreSQL whose agent stopped confirming it: the agent itself
// fences a full FenceMargin before; the guard acts only when it could not.
const fenceGuardLead = 100 * time.Millisecond

// tendWatchdog keeps the watchdog armed while this member holds the leader
// key or runs a writable PostgreSQL (following TTL changes), and disarms
// it once it does neither. Called once per loop, after observing.
//
// A paused cluster never fences (maintenance mode), so neither watchdog nor
// guard is armed in it.
func (a *Agent) tendWatchdog() {
	paused := a.view.Config != nil && a.view.Config.Paused
	pid := 0
	if a.mustFence && !paused && a.o.DB != nil && a.o.DB.Running() {
		pid = a.o.DB.PID()
	}
	if old := a.guardPID.Swap(int64(pid)); old != int64(pid) {
		if pid == 0 {
			if err := a.o.FenceGuard.Disarm(); err != nil {
				a.log.Error("disarm the fence guard", "err", err)
			}
		} else {
			a.kickFences(max(a.lease.Deadline, a.memory.FailsafeUntil))
		}
	}
	if !a.mustFence || paused {
		if err := a.o.Watchdog.Disarm(); err != nil {
			a.log.Error("disarm the watchdog; the machine may still be reset", "err", err)
		}
		return
	}
	s := a.settings()
	if err := a.o.Watchdog.Arm(s.TTL, s.LoopInterval); err != nil {
		a.log.Error("watchdog", "err", err)
	}
}

// armWatchdog arms the watchdog before this member may become a writable
// primary; in mode required a failure stops the action (no key, no
// writable start, no promotion without it).
func (a *Agent) armWatchdog() error {
	s := a.settings()
	if err := a.o.Watchdog.Arm(s.TTL, s.LoopInterval); err != nil {
		return fmt.Errorf("arm the watchdog: %w", err)
	}
	return nil
}

func (a *Agent) observePG(ctx context.Context) decide.PG {
	if !a.o.DB.Running() {
		a.upstream = ""
		a.reportExit()
		return decide.PG{}
	}
	p := decide.PG{Running: true, Upstream: a.upstream, RunsAsPrimary: a.o.DB.RunsAsPrimary()}
	c, cancel := a.opContext(ctx)
	st, err := a.o.DB.Status(c)
	cancel()
	if err != nil || !st.Ready {
		return p
	}
	p.Ready = true
	p.RefusesConnections = st.RefusesConnections
	p.InRecovery = st.InRecovery
	p.SystemID = st.SystemID
	p.Position = st.Position()
	p.ReplayLSN = st.ReplayedLSN()
	p.Streaming = st.Streaming
	if members, quorum, ok := pg.ParseSyncStandbys(st.SyncStandbyNames); ok {
		p.Sync = decide.NewSyncSet(members, quorum)
	} else {
		p.SyncUnreadable = true
	}
	p.FlushLSN = st.FlushLSN
	for _, r := range st.Replicas {
		// Streaming and answering: a standby whose reply_time has not
		// changed for a TTL on this agent's clock (standbys reply every
		// second) is not healthy, whatever its walsender row still says.
		live := r.Reply != 0 && a.replyFresh(r.Name, r.Reply)
		p.Replicas = append(p.Replicas, decide.Replica{Name: r.Name, Streaming: r.State == "streaming" && live, Flush: r.Flush})
	}
	return p
}

// reportExit logs, once per postmaster, why the PostgreSQL this agent
// started exited with a failure: without it a server that dies at each
// start (a lock file, a bad setting, a full disk) shows only as a start
// every loop, and its reason stays in a log file inside the volume.
func (a *Agent) reportExit() {
	pid, err := a.o.DB.LastExit()
	if pid == 0 || pid == a.exitReported {
		return
	}
	a.exitReported = pid
	if err != nil {
		a.log.Warn("PostgreSQL exited", "pid", pid, "err", err)
	}
}

func (a *Agent) inspect() decide.Data {
	st, err := a.o.DB.Inspect()
	if err != nil {
		return decide.Data{Kind: decide.DataInvalid, Problem: err.Error()}
	}
	return dataFromState(st)
}

// maybeWriteMarker records the cluster and system identifier in the data
// directory once it is known to hold this cluster's data. While PostgreSQL
// runs the directory cannot be replaced (initdb, clone and re-clone all
// need it stopped), so a marker written then is not written again each
// loop (each write is two fsyncs); while it is stopped, it is written every
// loop as before.
func (a *Agent) maybeWriteMarker(obs decide.Observation) {
	if !obs.PG.Running {
		a.marker = ""
	}
	if !obs.StoreOK || obs.View.Init.SystemID == "" || obs.Data.Kind != decide.DataValid || obs.Data.SystemID != obs.View.Init.SystemID {
		return
	}
	if a.marker == obs.View.Init.SystemID {
		return
	}
	if err := a.o.DB.WriteMarker(a.o.Cluster, obs.View.Init.SystemID); err != nil {
		a.log.Warn("write data directory marker", "err", err)
		return
	}
	if obs.PG.Running {
		a.marker = obs.View.Init.SystemID
	}
}

// statusHeartbeat is how often an unchanged status is written again. A
// status is published at once whenever anything in it but UpdatedAt
// changes (role, state, WAL positions, upstream, message, ...), so every
// member's decisions — failover candidacy, lag — always see the position a
// member last observed; the status lives as long as the member's lease, so
// rewriting it proves nothing. The heartbeat only keeps UpdatedAt (display)
// from ageing without bound. Writing every loop cost every etcd member a
// raft round and an fsync per member per loop (issue 11: idle cost).
const statusHeartbeat = 30 * time.Second

// publishStatus reports what this member is and where its WAL stands: from
// the loop's observation, or, when an action may have changed PostgreSQL
// after it (pgChanged: a promotion, a start, a stop...), from a fresh
// query — so a promoted member reports itself a running primary in the
// same loop and the proxies route to it at once.
//
// It writes only when the status differs from the store's copy in the
// loop's view (a changed status; or one the store lost: a lapsed lease,
// a failed write) or statusHeartbeat has passed since the last write.
func (a *Agent) publishStatus(ctx context.Context, obs decide.Observation, d decide.Decision, pgChanged bool) {
	st := cluster.MemberStatus{
		Name:      a.o.Self.Name,
		Role:      d.Role,
		State:     d.State,
		Following: a.upstream,
		Message:   d.Message,
		Waiting:   a.Waiting(),
		Cleared:   a.cleared,
		Archive:   a.archiveStatus(d),
	}
	if a.o.DB != nil && a.o.DB.Running() {
		p := obs.PG
		if pgChanged || !p.Running {
			p = decide.PG{}
			c, cancel := a.opContext(ctx)
			if s, err := a.o.DB.Status(c); err == nil && s.Ready {
				p = decide.PG{Running: true, Ready: true, InRecovery: s.InRecovery, Position: s.Position(),
					ReplayLSN: s.ReplayedLSN(), Streaming: s.Streaming, SystemID: s.SystemID}
			}
			cancel()
		}
		if p.Ready {
			st.Position = p.Position
			st.ReplayLSN = p.ReplayLSN
			st.Streaming = p.Streaming
			st.SystemID = p.SystemID
			switch {
			case !p.InRecovery && d.Role == cluster.RolePrimary:
				st.State = cluster.StateRunning
			case p.Streaming:
				st.State = cluster.StateStreaming
			}
		}
	}
	now := a.clock()
	if old, ok := a.view.Statuses[a.o.Self.Name]; ok && sameStatus(old, st) && a.statusAt > 0 && now-a.statusAt < statusHeartbeat {
		return
	}
	st.UpdatedAt = a.wall().UTC()
	c, cancel := a.opContext(ctx)
	defer cancel()
	if err := a.o.Store.PutStatus(c, st); err != nil {
		a.log.Debug("publish status", "err", err)
		return
	}
	a.statusAt = now
}

// sameStatus reports whether two statuses say the same, UpdatedAt aside:
// whether their encodings (what the store holds) are equal. The store's
// copy went through that encoding, so comparing the structs would see
// differences it cannot hold (a time's location, a pointer).
func sameStatus(x, y cluster.MemberStatus) bool {
	x.UpdatedAt, y.UpdatedAt = time.Time{}, time.Time{}
	bx, errx := json.Marshal(x)
	by, erry := json.Marshal(y)
	return errx == nil && erry == nil && bytes.Equal(bx, by)
}
