package api

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/config"
	"github.com/holdfast/holdfast/internal/quote"
)

// HealthPaths returns the health-check paths, each answered 200 or 503 by
// Check, for GET, HEAD and OPTIONS. They are Patroni's, including its
// aliases, so load balancer and probe configurations written for Patroni
// work unchanged, and holdfast's /archive (see ClusterArchive).
func HealthPaths() []string {
	return []string{
		"/", "/primary", "/read-write", "/master", "/leader",
		"/standby-leader", "/standby_leader",
		"/replica", "/read-only",
		"/sync", "/synchronous", "/read-only-sync", "/read-only-synchronous",
		"/quorum", "/read-only-quorum",
		"/async", "/asynchronous",
		"/health", "/liveness", "/readiness",
		"/archive",
	}
}

// fallbackLiveness is the liveness threshold when the snapshot carries
// neither TTL nor loop interval: twice the default TTL, so a backend that
// forgot them does not get its agent killed every probe.
const fallbackLiveness = 8 * time.Second

// Check decides a health check: whether this member answers 200 (ok) or 503
// to path with query q, given its snapshot s, at time now. It is pure: no
// I/O, no clock (now comes in), so every edge case is a table test.
//
// err is an *Error: 404 for a path that is not a health check, 400 for a
// malformed query (?lag=abc, ?mode=fast); the server answers its status.
// Query parameters, as Patroni reads them:
//
//   - lag=<max>: bytes, or a size with a unit (16kB, 64MB, 1GB; binary
//     units, as PostgreSQL reads them). For /replica, /read-only (as a
//     replica), /async, /sync and /readiness: the member's replayed WAL
//     must be at most this far behind the primary (ReplicationLag with
//     LagApply): a replica whose replay is paused or stuck answers 503
//     however much WAL it keeps receiving, since its reads are that stale.
//     A lag that cannot be computed (no known primary position, another
//     timeline, a store read older than the TTL) counts as too far: a
//     replica that cannot show it is current gets no reads that asked for
//     a bound. (Patroni counts it as no lag.)
//   - replication_state=streaming|in archive recovery: for the replica
//     checks, the member's replication state must match.
//   - tag_<key>=<value>: every one must equal the member's tag <key>
//     (a missing tag never matches). Ignored by the leader and primary
//     checks and by /readiness, as in Patroni.
//   - mode=apply|write: /readiness only, as in Patroni: the lag is measured
//     from the replayed (apply, the default) or the received (write) WAL.
//
// Other parameters are ignored, and /liveness ignores the query entirely:
// a probe must not fail because of a typo in its URL. /archive takes no
// parameters (tag filters are ignored, as by the leader checks): it
// answers 200 only while the cluster's WAL archiving is ok
// (ClusterArchive), on every member alike, so a monitoring probe may ask
// any of them.
func Check(path string, q url.Values, s MemberState, now time.Time) (ok bool, err error) {
	if path == "/liveness" {
		return Alive(s, now), nil
	}
	p, err := parseQuery(q)
	if err != nil {
		return false, err
	}
	primary := IsPrimary(s, now)
	replica := func() bool {
		return isReplica(s) && p.lagOK(s, now) && p.stateOK(s)
	}
	switch path {
	case "/", "/primary", "/read-write", "/master":
		return primary, nil
	case "/leader":
		return holdsLease(s, now), nil
	case "/standby-leader", "/standby_leader":
		return false, nil // holdfast has no standby clusters
	case "/replica":
		ok = replica()
	case "/read-only":
		ok = primary || replica()
	case "/sync", "/synchronous":
		ok = s.Sync && replica()
	case "/read-only-sync", "/read-only-synchronous":
		ok = primary || s.Sync && replica()
	case "/quorum":
		ok = false // no quorum commit yet
	case "/read-only-quorum":
		ok = primary
	case "/async", "/asynchronous":
		ok = !s.Sync && replica()
	case "/health":
		ok = s.PGRunning && s.PGReady
	case "/readiness":
		return Ready(s, now, p.lag, p.mode), nil
	case "/archive":
		return ClusterArchive(s, now).State == cluster.ArchiveOK, nil
	default:
		return false, Errorf(http.StatusNotFound, "%s is not a health check (try /primary, /replica, /read-only, /health, /liveness, /readiness or /archive)", path)
	}
	return ok && p.tagsOK(s), nil
}

// ArchiveHealth is the cluster's WAL archiving as one member knows it:
// the primary's archive status and the member that reported it.
type ArchiveHealth struct {
	cluster.ArchiveStatus
	// Primary is the member whose archiving this is ("" when no primary
	// is known).
	Primary string `json:"primary,omitempty"`
}

// ClusterArchive is the cluster's WAL archiving as this member knows it,
// at now: its own status while it is the primary (s.Archive), else what
// the leader reported in the store read s.View — only the primary
// archives, and this way any member answers for the cluster. Without a
// fresh answer it is cluster.ArchiveUnknown with the reason: no member
// leads, the leader reports no archive status (an agent older than the
// field, or one that has not reported since it took the key), or this
// member's store read is older than the TTL (it cannot tell what the
// primary reports now; a probe that trusted it would miss a failure).
func ClusterArchive(s MemberState, now time.Time) ArchiveHealth {
	if s.Archive != nil {
		return ArchiveHealth{ArchiveStatus: *s.Archive, Primary: s.Name}
	}
	unknown := func(format string, args ...any) ArchiveHealth {
		return ArchiveHealth{ArchiveStatus: cluster.ArchiveStatus{State: cluster.ArchiveUnknown, Reason: fmt.Sprintf(format, args...)}}
	}
	switch {
	case s.ViewAt.IsZero():
		return unknown("%s has not read the store yet; ask another member", s.Name)
	case s.TTL > 0 && now.Sub(s.ViewAt) > s.TTL:
		return unknown("%s last read the store at %s, longer than the TTL %s ago: it cannot tell how the primary archives; ask another member",
			s.Name, s.ViewAt.UTC().Format(time.RFC3339), cluster.FormatDuration(s.TTL))
	case s.View.Leader == nil:
		return unknown("no member leads the cluster: no WAL is archived")
	}
	leader := s.View.Leader.Name
	st, ok := s.View.Statuses[leader]
	if !ok || st.Archive == nil {
		out := unknown("the primary %s reports no archive status (it has not reported since it took the leader key, or its agent predates archive statuses)", leader)
		out.Primary = leader
		return out
	}
	return ArchiveHealth{ArchiveStatus: *st.Archive, Primary: leader}
}

// IsPrimary reports whether this member is the writable primary: it holds
// the leader key under a lease that has not run out, or serves under the
// failsafe (every member promised it not to take the key; see
// WritableRemaining), its role is primary, and PostgreSQL runs, answers and
// is out of recovery. A load balancer may send writes only where this
// holds.
func IsPrimary(s MemberState, now time.Time) bool {
	return (holdsLease(s, now) || WritableRemaining(s, now) > 0) &&
		s.Role == cluster.RolePrimary && s.PGRunning && s.PGReady && !s.InRecovery
}

// WritableRemaining is how long this member may still accept writes at now
// before it must fence: WritableFor counted down from LoopHeartbeat, never
// negative. Anyone routing writes here on this answer must stop by the time
// it runs out, measured from before the question was asked.
func WritableRemaining(s MemberState, now time.Time) time.Duration {
	if s.WritableFor <= 0 || s.LoopHeartbeat.IsZero() {
		return 0
	}
	return max(0, s.LoopHeartbeat.Add(s.WritableFor).Sub(now))
}

// holdsLease: the leader key is ours and the lease behind it, counted down
// from the last loop, has not expired.
func holdsLease(s MemberState, now time.Time) bool {
	return s.HoldsLeaderKey && LeaseRemaining(s, now) > 0
}

// LeaseRemaining is how long this member's lease is still valid at now:
// LeaseValidFor counted down from LoopHeartbeat, never negative.
func LeaseRemaining(s MemberState, now time.Time) time.Duration {
	if s.LeaseValidFor <= 0 || s.LoopHeartbeat.IsZero() {
		return 0
	}
	return max(0, s.LoopHeartbeat.Add(s.LeaseValidFor).Sub(now))
}

// isReplica: PostgreSQL runs as an answering standby, the member is a
// replica (following the primary, or a standby while no member holds the
// leader key) and takes read traffic.
func isReplica(s MemberState) bool {
	return (s.Role == cluster.RoleReplica || s.Role == cluster.RoleStandbyNoLeader) &&
		!s.HoldsLeaderKey && s.PGRunning && s.PGReady && s.InRecovery && !s.NoLoadBalance
}

// LivenessThreshold is how long the loop may go without completing before
// /liveness fails: max(2 × loop interval, TTL). One TTL is what the agent's
// own lease tolerates; twice the interval absorbs one slow loop.
func LivenessThreshold(s MemberState) time.Duration {
	t := max(2*s.LoopInterval, s.TTL)
	if t <= 0 {
		return fallbackLiveness
	}
	return t
}

// Alive is /liveness: the agent's loop completed within LivenessThreshold,
// or the cluster is paused.
//
// It never depends on PostgreSQL, the store or quorum. An orchestrator
// restarts a container whose liveness probe fails; if liveness followed the
// store, every agent would be restarted during a store outage, turning an
// outage the agents ride out (a primary fences itself, replicas keep
// serving reads) into a crash loop, and since PostgreSQL dies with its
// agent, into a database outage too. Only a stuck loop is a reason to
// restart. In maintenance mode (paused) a stuck loop is tolerated too, as
// Patroni does: the operator asked that nothing be touched, and restarting
// the agent would restart PostgreSQL.
//
// A zero LoopHeartbeat (no loop completed yet) is not alive.
func Alive(s MemberState, now time.Time) bool {
	if s.Paused {
		return true
	}
	if s.LoopHeartbeat.IsZero() {
		return false
	}
	return now.Sub(s.LoopHeartbeat) <= LivenessThreshold(s)
}

// Ready is /readiness: the member can serve its role. The primary is ready
// when it holds the leader key (its PostgreSQL may be restarting in place:
// marking it unready would not move the role and could let an orchestrator
// evict it). A replica is ready when PostgreSQL answers, streams from the
// primary and is at most maxLag bytes behind (nil: MaxLagOnFailover),
// measured as mode says (LagApply: replayed WAL, so a freshly started
// replica takes reads only once it has caught up, and one whose replay is
// paused or stuck stops taking them; LagWrite: received WAL).
//
// It needs nothing that requires the cluster to be complete: a member that
// bootstrapped holds the key and is ready on its own. (With the embedded
// store no member can hold the key before a quorum of members runs, so a
// Kubernetes StatefulSet must start its pods in parallel, not one ready pod
// after another.)
func Ready(s MemberState, now time.Time, maxLag *int64, mode LagMode) bool {
	if holdsLease(s, now) && s.Role == cluster.RolePrimary {
		return true
	}
	if !s.PGRunning || !s.PGReady || !s.InRecovery || !s.Streaming || s.HoldsLeaderKey {
		return false
	}
	limit := s.MaxLagOnFailover
	if maxLag != nil {
		limit = *maxLag
	}
	lag, known := ReplicationLag(s, now, mode)
	return known && lag <= limit
}

// LagMode says which of a standby's WAL positions a lag is measured from;
// the values are Patroni's /readiness?mode= words.
type LagMode string

const (
	// LagApply measures from the WAL the member has replayed: how stale
	// its reads are. What every read-serving check uses.
	LagApply LagMode = "apply"
	// LagWrite measures from the WAL the member has received: what a
	// failover to it could lose (/readiness?mode=write, and the lag shown
	// as "lag" and holdfast_replication_lag_bytes).
	LagWrite LagMode = "write"
)

// ReplicationLag is how many bytes of WAL this member is behind the
// primary: the primary's position as it last published it in the store
// (cluster.View.PrimaryPosition), minus this member's received (LagWrite)
// or replayed (LagApply) position, never negative. The primary itself has
// lag 0.
//
// known is false when the lag cannot be measured: this member has no
// position, the primary's position is unknown or on another timeline (a
// replica that has not crossed the last promotion is behind by an unknown
// amount), or the store read is older than the TTL (the primary's position
// in it could be far behind the truth, so a replica would look current when
// it is not).
func ReplicationLag(s MemberState, now time.Time, mode LagMode) (lag int64, known bool) {
	if holdsLease(s, now) && s.Role == cluster.RolePrimary {
		return 0, true
	}
	if s.ViewAt.IsZero() || s.TTL <= 0 || now.Sub(s.ViewAt) > s.TTL {
		return 0, false
	}
	ref, ok := s.View.PrimaryPosition()
	if !ok {
		return 0, false
	}
	pos := s.Position
	if mode != LagWrite {
		pos = cluster.ReplayedPosition(s.Position, s.ReplayLSN)
	}
	return cluster.LagBytes(ref, pos)
}

// ReplicationState is the member's replication state as Patroni names it:
// "streaming" while a WAL receiver streams, "in archive recovery" while
// PostgreSQL runs in recovery without streaming, "" otherwise.
func ReplicationState(s MemberState) string {
	switch {
	case !s.PGRunning || !s.InRecovery:
		return ""
	case s.Streaming:
		return "streaming"
	}
	return "in archive recovery"
}

// checkParams are the parsed query parameters of a health check.
type checkParams struct {
	lag       *int64            // ?lag, nil when absent
	mode      LagMode           // ?mode, LagApply when absent
	replState string            // ?replication_state, "" when absent
	tags      map[string]string // ?tag_<key>=<value>
}

// parseQuery reads and validates a health check's query parameters.
func parseQuery(q url.Values) (checkParams, error) {
	p := checkParams{mode: LagApply}
	for key, vals := range q {
		if len(vals) > 1 {
			return p, Errorf(http.StatusBadRequest, "query parameter %s is given %d times (give it once)", quote.Value(key), len(vals))
		}
		v := vals[0]
		switch {
		case key == "lag":
			n, err := ParseSize(v)
			if err != nil {
				return p, Errorf(http.StatusBadRequest, "query parameter lag: %v", err)
			}
			p.lag = &n
		case key == "replication_state":
			p.replState = v
		case key == "mode":
			if m := LagMode(v); m != LagApply && m != LagWrite {
				return p, Errorf(http.StatusBadRequest, "query parameter mode: %s is not a mode (write %s or %s)", quote.Value(v), LagApply, LagWrite)
			}
			p.mode = LagMode(v)
		case strings.HasPrefix(key, "tag_"):
			if p.tags == nil {
				p.tags = map[string]string{}
			}
			p.tags[strings.TrimPrefix(key, "tag_")] = v
		}
	}
	return p, nil
}

func (p checkParams) lagOK(s MemberState, now time.Time) bool {
	if p.lag == nil {
		return true
	}
	lag, known := ReplicationLag(s, now, LagApply)
	return known && lag <= *p.lag
}

func (p checkParams) stateOK(s MemberState) bool {
	return p.replState == "" || p.replState == ReplicationState(s)
}

func (p checkParams) tagsOK(s MemberState) bool {
	for k, want := range p.tags {
		if got, ok := s.Tags[k]; !ok || got != want {
			return false
		}
	}
	return true
}

// ParseSize reads a number of bytes, optionally with a unit: B, kB, MB, GB,
// TB (binary, as PostgreSQL reads them: 1kB = 1024 bytes) or KiB..TiB.
// Negative sizes are refused.
func ParseSize(s string) (int64, error) {
	if t := strings.TrimSpace(s); strings.HasPrefix(t, "+") || strings.HasPrefix(t, "-") {
		return 0, fmt.Errorf("%s: write a size without a sign", quote.Value(s))
	}
	n, err := config.ParseByteSize(s)
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, fmt.Errorf("%s: a size must not be negative", quote.Value(s))
	}
	return n.Bytes(), nil
}
