package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/decide"
	"github.com/holdfast/holdfast/internal/store"
)

// snapshot is the member state the API serves, replaced (never modified)
// at the end of every loop, under its mutex.
type snapshot struct {
	mu sync.Mutex
	s  api.MemberState
}

func (s *snapshot) get() api.MemberState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.s
}

func (s *snapshot) set(m api.MemberState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.s = m
}

// heartbeat refreshes only the loop heartbeat (a long action renewing the
// lease keeps /liveness green).
func (s *snapshot) heartbeat(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.s.LoopHeartbeat = now
}

// publishState records what the loop just saw and decided, for the API.
func (a *Agent) publishState(obs decide.Observation, d decide.Decision, took time.Duration) {
	set := a.settings()
	now := a.wall()
	m := api.MemberState{
		Cluster: a.o.Cluster, Name: a.o.Self.Name, Role: d.Role, State: d.State,
		PGRunning: obs.PG.Running, PGReady: obs.PG.Ready, InRecovery: obs.PG.InRecovery, Streaming: obs.PG.Streaming,
		Position: obs.PG.Position, ReplayLSN: obs.PG.ReplayLSN, Tags: a.o.Self.Tags, NoLoadBalance: a.o.Self.NoLoadBalance(),
		LoopHeartbeat: now, LoopInterval: set.LoopInterval, TTL: set.TTL, LastLoopDuration: took,
		View: a.view, ViewAt: a.viewAt, Message: d.Message, Waiting: a.Waiting(), MaxLagOnFailover: set.MaximumLag,
		Archive: a.archiveStatus(d),
	}
	if v := a.view; v.Config != nil {
		m.Paused = v.Config.Paused
	}
	if r, l := a.view.Sync, a.view.Leader; r != nil && l != nil && r.Leader == l.Name && r.Quorum > 0 && slices.Contains(r.Members, a.o.Self.Name) {
		m.Sync = true // /sync answers 200 on a synchronous standby holding the acknowledged commits
	}
	l := a.view.Leader
	if obs.StoreOK && l != nil && l.Name == a.o.Self.Name && a.lease.Held && l.LeaseID == a.lease.ID && obs.PG.Writable() {
		m.HoldsLeaderKey = true
	}
	if a.lease.Held {
		m.LeaseValidFor = max(0, a.lease.Deadline-a.clock())
	}
	if d.Role == cluster.RolePrimary && d.State == cluster.StateRunning && obs.PG.Writable() {
		if until, ok := decide.WritableUntil(obs, d.Memory); ok {
			m.WritableFor = max(0, until-a.clock())
		}
	}
	if at, ok := a.requests.scheduled(requestRestart); ok {
		r := api.RestartRequest{}
		if !at.IsZero() {
			r.ScheduledAt = &at
		}
		m.PendingRestart = &r
	}
	if sw := a.view.Switchover; sw != nil && !sw.ScheduledAt.IsZero() {
		m.ScheduledSwitchover = &api.ScheduledSwitchover{At: sw.ScheduledAt, Leader: sw.Leader, Candidate: sw.Candidate}
	}
	a.state.set(m)
	if a.o.OnState != nil {
		a.o.OnState(m)
	}
}

// Backend returns the agent's implementation of the API backend. Its
// methods run on the API's goroutines: they read the loop's snapshot, write
// requests to the store with compare-and-swap (ViewStore.Load and
// RequestStore only), or queue requests for the loop; they never drive
// PostgreSQL themselves.
func (a *Agent) Backend() api.Backend { return backend{a} }

type backend struct{ a *Agent }

func (b backend) State() api.MemberState { return b.a.state.get() }

const operationWait = 30 * time.Second

func (b backend) load(ctx context.Context) (cluster.View, error) {
	c, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	v, err := b.a.o.Store.Load(c)
	if err != nil {
		return v, api.Errorf(http.StatusServiceUnavailable, "cannot read the consensus store: %v", err)
	}
	return v, nil
}

// runningPrimary is the leader if it reports itself as a running primary.
func runningPrimary(v cluster.View) (string, bool) {
	if v.Leader == nil {
		return "", false
	}
	st, ok := v.Statuses[v.Leader.Name]
	return v.Leader.Name, ok && st.Role == cluster.RolePrimary && st.State == cluster.StateRunning
}

func (b backend) Switchover(ctx context.Context, r api.SwitchoverRequest) (api.Result, error) {
	v, err := b.load(ctx)
	if err != nil {
		return api.Result{}, err
	}
	if v.Config != nil && v.Config.Paused {
		return api.Result{}, api.Errorf(http.StatusConflict, "the cluster is paused: resume it before a switchover")
	}
	leader, healthy := runningPrimary(v)
	if !healthy {
		return api.Result{}, api.Errorf(http.StatusServiceUnavailable, "no healthy primary to switch over from; use failover")
	}
	if r.Leader != "" && r.Leader != leader {
		return api.Result{}, api.Errorf(http.StatusPreconditionFailed, "%s is not the primary (%s is)", r.Leader, leader)
	}
	// The lag is not judged here: the statuses trail by up to a loop, by
	// megabytes under a write burst. The primary measures it when it
	// acts, and the answer below reports its verdict.
	if r.Candidate != "" {
		if why := cluster.CandidateProblem(v, r.Candidate, leader, lagJudgedByPrimary, true); why != "" {
			return api.Result{}, api.Errorf(http.StatusPreconditionFailed, "cannot switch over to %s: %s", r.Candidate, why)
		}
	} else if !cluster.AnyCandidate(v, leader, lagJudgedByPrimary) {
		return api.Result{}, api.Errorf(http.StatusPreconditionFailed, "no streaming replica to switch over to")
	}
	sw := cluster.Switchover{Kind: cluster.KindSwitchover, Leader: leader, Candidate: r.Candidate, RequestedAt: time.Now().UTC()}
	if r.ScheduledAt != nil {
		sw.ScheduledAt = r.ScheduledAt.UTC()
	}
	if err := b.put(ctx, sw); err != nil {
		return api.Result{}, err
	}
	if r.ScheduledAt != nil && r.ScheduledAt.After(time.Now()) {
		return api.Result{Scheduled: true, Message: fmt.Sprintf("switchover from %s scheduled at %s", leader, sw.ScheduledAt.Format(time.RFC3339))}, nil
	}
	return b.waitOutcome(ctx, sw, leader, r.Candidate, "switched over")
}

// lagJudgedByPrimary disables cluster.CandidateProblem's lag check for a
// switchover request: the primary judges the lag from its own live
// measurement (decide's switchoverTarget).
const lagJudgedByPrimary = math.MaxInt64

func (b backend) Failover(ctx context.Context, r api.FailoverRequest) (api.Result, error) {
	if r.Candidate == "" {
		return api.Result{}, api.Errorf(http.StatusBadRequest, "failover needs a candidate")
	}
	v, err := b.load(ctx)
	if err != nil {
		return api.Result{}, err
	}
	if v.Config != nil && v.Config.Paused {
		return api.Result{}, api.Errorf(http.StatusConflict, "the cluster is paused: resume it before a failover")
	}
	leader, healthy := runningPrimary(v)
	if healthy {
		return api.Result{}, api.Errorf(http.StatusPreconditionFailed, "%s is a healthy primary: use switchover, which loses nothing", leader)
	}
	if why := cluster.CandidateProblem(v, r.Candidate, leader, 0, false); why != "" {
		return api.Result{}, api.Errorf(http.StatusPreconditionFailed, "cannot fail over to %s: %s", r.Candidate, why)
	}
	// A forced failover promotes without comparing positions: state what
	// it may lose, and refuse unless the operator accepted it. The CLI
	// checks the same before asking; this check stops a request that
	// bypasses it (curl) or that a newer view makes unsafe.
	risk := cluster.AssessFailover(v, r.Candidate)
	if risk.AtRisk() && !r.Force {
		return api.Result{}, api.Errorf(http.StatusPreconditionFailed, "failover to %s may lose acknowledged commits: %s; repeat with force to accept the loss", r.Candidate, risk)
	}
	if risk.AtRisk() {
		b.a.log.Warn("forced failover accepted with data at risk", "candidate", r.Candidate, "risk", risk.String())
	}
	sw := cluster.Switchover{Kind: cluster.KindFailover, Leader: leader, Candidate: r.Candidate, RequestedAt: time.Now().UTC()}
	if err := b.put(ctx, sw); err != nil {
		return api.Result{}, err
	}
	res, err := b.waitOutcome(ctx, sw, "", r.Candidate, "failed over")
	if err == nil && risk.AtRisk() {
		res.Message += " (forced: " + risk.String() + ")"
	}
	return res, err
}

func (b backend) put(ctx context.Context, sw cluster.Switchover) error {
	c, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	ok, err := b.a.o.Store.PutSwitchover(c, sw)
	if err != nil {
		return api.Errorf(http.StatusServiceUnavailable, "record the %s request: %v", sw.Kind, err)
	}
	if !ok {
		return api.Errorf(http.StatusConflict, "another switchover or failover is already pending (cancel it with DELETE /switchover)")
	}
	return nil
}

// waitOutcome watches the fate of the request sw it recorded: done when a
// member other than old (the candidate, if named) runs as primary holding
// the leader key and the request is cleared; cancelled (409, with the
// reason) when a member cleared it without that — the reason is what the
// member that cleared it reports (cluster.MemberStatus.Cleared). A request
// gone with no such report (an operator's DELETE /switchover) is
// reported as withdrawn once clearedReportWait has passed.
func (b backend) waitOutcome(ctx context.Context, sw cluster.Switchover, old, candidate, verb string) (api.Result, error) {
	deadline := time.Now().Add(operationWait)
	var goneAt time.Time
	for time.Now().Before(deadline) {
		if v, err := b.load(ctx); err == nil {
			l, ok := runningPrimary(v)
			done := ok && l != old && (candidate == "" || l == candidate)
			switch {
			case done && v.Switchover == nil:
				return api.Result{Message: fmt.Sprintf("%s to %s", verb, l)}, nil
			case v.Switchover != nil && v.Switchover.RequestedAt.Equal(sw.RequestedAt):
				goneAt = time.Time{} // still pending
			case done:
				// A new request already; ours completed.
				return api.Result{Message: fmt.Sprintf("%s to %s", verb, l)}, nil
			case v.Leader != nil && v.Leader.Name != old && (candidate == "" || v.Leader.Name == candidate):
				// The successor holds the key and clears the request in
				// the loop it promotes: wait for it to run.
			default:
				if who, why, found := clearedBy(v, sw); found {
					return api.Result{}, api.Errorf(http.StatusConflict, "the %s was cancelled by %s: %s", sw.Kind, who, why)
				}
				if goneAt.IsZero() {
					goneAt = time.Now()
				} else if time.Since(goneAt) >= clearedReportWait {
					return api.Result{}, api.Errorf(http.StatusConflict, "the %s request was withdrawn before it completed (no member reports why: cancelled by an operator?); see `holdfast ctl list`", sw.Kind)
				}
			}
		}
		select {
		case <-ctx.Done():
			return api.Result{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return api.Result{}, api.Errorf(http.StatusServiceUnavailable, "the request is recorded but no new primary within %s; see `holdfast ctl list`", operationWait)
}

// clearedReportWait is how long a request may be gone before the member
// that cleared it reports why: it publishes its status in the same loop,
// right after clearing.
const clearedReportWait = 3 * time.Second

// clearedBy finds the member that cleared sw, and why.
func clearedBy(v cluster.View, sw cluster.Switchover) (who, why string, ok bool) {
	for _, name := range slices.Sorted(maps.Keys(v.Statuses)) {
		if c := v.Statuses[name].Cleared; c != nil && c.RequestedAt.Equal(sw.RequestedAt) {
			return name, c.Reason, true
		}
	}
	return "", "", false
}

func (b backend) CancelSwitchover(ctx context.Context) error {
	v, err := b.load(ctx)
	if err != nil {
		return err
	}
	if v.Switchover == nil {
		return api.Errorf(http.StatusNotFound, "no switchover is pending")
	}
	c, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := b.a.o.Store.DeleteSwitchover(c, v.Switchover.Revision); err != nil {
		return api.Errorf(http.StatusServiceUnavailable, "cancel the switchover: %v", err)
	}
	return nil
}

func (b backend) Restart(ctx context.Context, r api.RestartRequest) (api.Result, error) {
	s := b.State()
	if b.a.o.DB == nil {
		return api.Result{}, api.Errorf(http.StatusConflict, "%s is a witness and runs no database", s.Name)
	}
	if r.Role != "" && ((r.Role == api.RestartPrimary) != s.HoldsLeaderKey) {
		return api.Result{}, api.Errorf(http.StatusPreconditionFailed, "%s is not a %s (it is %s)", s.Name, r.Role, s.Role)
	}
	var at time.Time
	if r.ScheduledAt != nil {
		at = *r.ScheduledAt
	}
	done := b.a.requests.add(requestRestart, at)
	if at.After(time.Now()) {
		return api.Result{Scheduled: true, Message: fmt.Sprintf("restart of %s scheduled at %s", s.Name, at.Format(time.RFC3339))}, nil
	}
	if err := b.waitRequest(ctx, done); err != nil {
		return api.Result{}, err
	}
	// The request is acknowledged when PostgreSQL was stopped. The snapshot
	// published in that same loop still shows it ready, so wait to see it
	// down in a later loop, then serving again.
	deadline := time.Now().Add(operationWait)
	sawDown := false
	for time.Now().Before(deadline) {
		st := b.State()
		if !st.PGReady {
			sawDown = true
		} else if sawDown {
			return api.Result{Message: "restarted PostgreSQL on " + s.Name}, nil
		}
		select {
		case <-ctx.Done():
			return api.Result{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return api.Result{}, api.Errorf(http.StatusServiceUnavailable, "PostgreSQL on %s was stopped but is not serving again within %s", s.Name, operationWait)
}

func (b backend) waitRequest(ctx context.Context, done <-chan struct{}) error {
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(operationWait):
		return api.Errorf(http.StatusServiceUnavailable, "the request is queued but was not carried out within %s", operationWait)
	}
}

func (b backend) Reinitialize(ctx context.Context) (api.Result, error) {
	s := b.State()
	if b.a.o.DB == nil {
		return api.Result{}, api.Errorf(http.StatusConflict, "%s is a witness and runs no database", s.Name)
	}
	if s.HoldsLeaderKey || (s.View.Leader != nil && s.View.Leader.Name == s.Name) {
		return api.Result{}, api.Errorf(http.StatusConflict, "%s is the primary: switch over first; the primary is never re-initialised", s.Name)
	}
	if _, ok := runningPrimary(s.View); !ok {
		return api.Result{}, api.Errorf(http.StatusServiceUnavailable, "no running primary to clone from")
	}
	b.a.requests.add(requestReinit, time.Time{})
	return api.Result{Scheduled: true, Message: fmt.Sprintf("re-initialisation of %s started: its data is moved aside and %s", s.Name, b.a.reinitFrom())}, nil
}

// Failsafe promises r.Leader, which cannot reach the consensus store, that
// this member will not take the leader key for a TTL. Refused (409) when
// this member is itself leading or racing, or when its fresh view of the
// store shows another member holding the key (the asker is stale).
func (b backend) Failsafe(_ context.Context, r api.FailsafeRequest) (api.Result, error) {
	s := b.a.state.get()
	if l := s.View.Leader; l != nil && l.Name != r.Leader && b.a.wall().Sub(s.ViewAt) < s.TTL {
		return api.Result{}, api.Errorf(http.StatusConflict, "%s holds the leader key, not %s", l.Name, r.Leader)
	}
	if err := b.a.failsafe.Promise(r.Leader); err != nil {
		return api.Result{}, api.Errorf(http.StatusConflict, "failsafe: %v", err)
	}
	return api.Result{Message: fmt.Sprintf("%s will not take the leader key for %s while %s serves without the store", s.Name, s.TTL, r.Leader)}, nil
}

func (b backend) SetPaused(ctx context.Context, paused bool) (api.Result, error) {
	_, err := b.updateConfig(ctx, func(c *cluster.Config, _ cluster.View) error { c.Paused = paused; return nil })
	if err != nil {
		return api.Result{}, err
	}
	if paused {
		return api.Result{Message: "cluster paused: no automatic failover until resumed"}, nil
	}
	return api.Result{Message: "cluster resumed"}, nil
}

// PatchConfig applies p to the stored dynamic configuration. The result
// must pass the one validator of the configuration (cluster.Config.Problems,
// which the config file passed at start-up): an invalid value is refused as
// invalid, naming its key and rule, before any rule about changing a running
// cluster is considered; then ttl must be unchanged and the synchronous
// settings satisfiable by the replicas. Nothing is written unless all hold.
func (b backend) PatchConfig(ctx context.Context, p api.ConfigPatch) (cluster.Config, error) {
	return b.updateConfig(ctx, func(c *cluster.Config, v cluster.View) error {
		cur := c.Normalized()
		next := p.Apply(cur)
		if ps := next.Problems(b.a.o.FenceMargin); len(ps) > 0 {
			msgs := make([]string, len(ps))
			for i, pr := range ps {
				msgs[i] = pr.Error()
			}
			return api.Errorf(http.StatusBadRequest, "invalid cluster configuration: %s", strings.Join(msgs, "; "))
		}
		if next.TTL != cur.TTL {
			return api.Errorf(http.StatusBadRequest, "ttl cannot be changed on a running cluster yet: every member's lease was granted with %s", cluster.FormatDuration(cur.TTL))
		}
		replicas := -1 // the primary
		for _, m := range v.Members {
			if !m.Witness {
				replicas++
			}
		}
		if err := next.CheckSync(replicas); err != nil {
			return api.Errorf(http.StatusBadRequest, "%v", err)
		}
		*c = next
		return nil
	})
}

// updateConfig applies change to the stored dynamic configuration with a
// compare-and-swap, retrying when another writer got there first.
func (b backend) updateConfig(ctx context.Context, change func(*cluster.Config, cluster.View) error) (cluster.Config, error) {
	for attempt := 0; attempt < 5; attempt++ {
		v, err := b.load(ctx)
		if err != nil {
			return cluster.Config{}, err
		}
		if v.Config == nil {
			return cluster.Config{}, api.Errorf(http.StatusServiceUnavailable, "the cluster has not been bootstrapped yet")
		}
		c := *v.Config
		if err := change(&c, v); err != nil {
			return cluster.Config{}, err
		}
		cc, cancel := context.WithTimeout(ctx, 3*time.Second)
		err = b.a.o.Store.PutConfig(cc, c, v.ConfigRevision)
		cancel()
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return cluster.Config{}, api.Errorf(http.StatusServiceUnavailable, "write the cluster configuration: %v", err)
		}
	}
	return cluster.Config{}, api.Errorf(http.StatusConflict, "the configuration kept changing concurrently; try again")
}

func (b backend) History(ctx context.Context) ([]cluster.HistoryEntry, error) {
	v, err := b.load(ctx)
	if err != nil {
		return nil, err
	}
	return v.History, nil
}
