package proxy

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// Target is a backend a connection can be routed to: a member's PostgreSQL.
type Target struct {
	Name string `json:"name"`
	Addr string `json:"addr"` // host:port from the member's registration
}

// Action is what the proxy does with a new read-write connection.
type Action string

const (
	// ActRoute dials Routes.RW and pipes the connection to it.
	ActRoute Action = "route"
	// ActHold accepts the connection and waits, without dialing anything,
	// for a primary to appear (a planned switchover or a leader race is in
	// progress). The client sees a slow connect instead of an error.
	ActHold Action = "hold"
	// ActRefuse closes the connection at once.
	ActRefuse Action = "refuse"
)

// Reasons why a read-write connection is not routed. They double as the
// reason label of holdfast_proxy_refused_total where a refusal follows.
const (
	ReasonStaleView    = "stale_view"    // the view is TTL old or older, or none was ever loaded
	ReasonSwitchover   = "switchover"    // a planned switchover is due: hold
	ReasonNoLeader     = "no_leader"     // nobody holds the leader key: hold
	ReasonLeaderNotUp  = "leader_not_up" // the leader's status is not primary/running (yet): hold
	ReasonNoAddress    = "no_address"    // the leader registered no host/port: refuse
	ReasonNoReplica    = "no_replica"    // no replica qualifies for read-only traffic
	ReasonHoldTimeout  = "hold_timeout"  // a held connection waited HoldTimeout for a primary
	ReasonDialFailed   = "dial_failed"   // no chosen backend accepted the TCP connection (read-only; read-write ones are held)
	ReasonShuttingDown = "shutting_down" // the proxy is stopping
	// ReasonUnresponsive: the primary the view names did not accept or did
	// not answer a held connection for 2×TTL (UnresponsiveLimit): no
	// failover is coming, so the client is refused rather than left waiting.
	ReasonUnresponsive = "primary_unresponsive"
	// ReasonAuthFailed: session mode, the client did not prove its
	// password (or the user has no usable verifier).
	ReasonAuthFailed = "auth_failed"
	// ReasonAuthQuery: session mode, the auth query on the primary failed.
	ReasonAuthQuery = "auth_query_failed"
	// ReasonTLSRequired: session mode with SessionOptions.RequireTLS, the
	// client sent its startup packet in clear.
	ReasonTLSRequired = "tls_required"
)

// Grant is the primary's own confirmation, asked over its API, that it may
// accept writes: member Name for Left more, measured from the moment Route
// is evaluated back to before the question was sent. Its ground is the
// primary's lease or its failsafe (every member promised it not to take
// the leader key), and Left ends at the primary's own fence point: no
// member can be promoted before it runs out. The zero Grant confirms
// nothing.
type Grant struct {
	Name string
	Left time.Duration
}

// Routes is one routing decision, computed from one view of the store.
//
// It separates two questions a proxy must answer differently during a
// switchover: where a NEW read-write connection goes (RWAction, RW) and
// which backend EXISTING read-write connections may stay on (Primary).
// While a planned switchover is pending the old primary still takes
// writes, so its connections live on (Primary is set) but new connections
// are held (RWAction is ActHold) so that none of them is opened against a
// server about to shut down.
type Routes struct {
	// RWAction is what to do with a new read-write connection.
	RWAction Action `json:"rw_action"`
	// RW is where a new read-write connection goes; set only with ActRoute.
	RW *Target `json:"rw,omitempty"`
	// RWReason says why RWAction is not ActRoute (one of the Reason*
	// constants), "" when it is.
	RWReason string `json:"rw_reason,omitempty"`
	// RWDetail is the human explanation of RWReason.
	RWDetail string `json:"rw_detail,omitempty"`
	// Primary is the one member read-write connections may be connected to
	// at all: the leader-key holder whose own status says primary/running,
	// in a view younger than the TTL. Every read-write connection to any
	// other backend — or to any backend when Primary is nil — must be
	// closed: it leads to a demoted (or possibly demoted) node.
	Primary *Target `json:"primary,omitempty"`
	// RO lists the replicas that qualify for new read-only connections,
	// sorted by name. Empty when none qualifies.
	RO []Target `json:"ro"`
	// Confirmed reports that Primary rests on the primary's own Grant, not
	// on the view: the view is TTL old (the store is out of reach) and the
	// member it names as primary confirmed over its API that it may still
	// accept writes.
	Confirmed bool `json:"confirmed,omitempty"`
	// ROReason says why RO is empty ("" when it is not).
	ROReason string `json:"ro_reason,omitempty"`
	// RODetail is the human explanation of ROReason.
	RODetail string `json:"ro_detail,omitempty"`
}

// Route is the proxy's whole routing decision, pure: the same inputs give
// the same answer and nothing is read besides its arguments. v is the
// latest view, viewAge how long ago the read that produced it began (on a
// monotonic clock), ttl the cluster's leader lease TTL, maxLag the most
// bytes of WAL a replica may be behind the primary and still take
// read-only traffic, now the wall clock (only for a switchover's scheduled
// time, which is a wall-clock time by nature), g the primary's latest
// confirmation (see Grant).
//
// Read-write, in order:
//  1. viewAge >= ttl: refuse, and Primary is nil — unless the member the
//     view names as primary (leader key, status primary/running, an
//     address, no switchover due) confirmed it may still accept writes
//     (g.Name is that member, g.Left > 0): then route to it, Confirmed.
//     A view that old may predate a failover: the leader's lease could have
//     expired and another member been promoted without the proxy seeing
//     it. Failing closed here is what keeps clients from writing to a
//     demoted node while the store is unreachable. The grant does not
//     weaken it: it lasts only while the primary itself may write (its
//     lease, or its failsafe: every member promised not to take the key),
//     and ends before the primary's own fence point, so no other member
//     can have been promoted while it lasts.
//  2. A planned switchover is due for the current leader (or there is no
//     leader): hold. The old primary, if still primary/running, stays
//     Primary so its existing connections are not cut before it stops
//     accepting writes itself.
//  3. No leader: hold (a leader race is under way; the winner appears
//     within a few loops).
//  4. The leader's status is missing or not role primary with state
//     running (it is promoting, restarting in place, or stopping): hold,
//     Primary nil. A status saying primary/running is the member's own
//     positive statement that it is writable; nothing less is routed.
//  5. The leader registered no address: refuse.
//  6. Otherwise route to the leader.
//
// Read-only: replicas not tagged noloadbalance, with role replica, state
// streaming, whose replayed
// WAL (cluster.MemberStatus.Replayed) is on the same timeline as the
// reference position and at most maxLag bytes behind it. The reference is
// cluster.View.PrimaryPosition (as `ctl list` measures lag). Replayed, not
// received: a replica whose replay is paused or stuck keeps streaming and
// receiving, but its queries see data from long ago. A replica whose lag
// cannot be measured does not qualify. A stale view routes nothing
// read-only either: the proxy has no fresh evidence that any replica is
// still streaming.
func Route(v cluster.View, viewAge, ttl time.Duration, maxLag int64, now time.Time, g Grant) Routes {
	r := Routes{RO: []Target{}}
	if viewAge >= ttl {
		detail := fmt.Sprintf("the last successful read of the store began %s ago, not less than the TTL %s", viewAge.Round(time.Millisecond), ttl)
		r.ROReason, r.RODetail = ReasonStaleView, detail
		if p := primaryOf(v); p != nil && g.Left > 0 && g.Name == p.Name && !switchoverDue(v, now) {
			r.RWAction, r.RW, r.Primary, r.Confirmed = ActRoute, p, p, true
			return r
		}
		r.RWAction, r.RWReason, r.RWDetail = ActRefuse, ReasonStaleView, detail
		return r
	}
	r.Primary = primaryOf(v)
	switch {
	case switchoverDue(v, now):
		r.RWAction, r.RWReason = ActHold, ReasonSwitchover
		r.RWDetail = "a planned switchover is due"
		if v.Switchover.Candidate != "" {
			r.RWDetail += " to " + v.Switchover.Candidate
		}
	case v.Leader == nil:
		r.RWAction, r.RWReason, r.RWDetail = ActHold, ReasonNoLeader, "no member holds the leader key"
	case r.Primary == nil:
		st, ok := v.Statuses[v.Leader.Name]
		info := v.Members[v.Leader.Name]
		switch {
		case !ok:
			r.RWAction, r.RWReason = ActHold, ReasonLeaderNotUp
			r.RWDetail = fmt.Sprintf("leader %s has not reported a status", v.Leader.Name)
		case st.Role != cluster.RolePrimary || st.State != cluster.StateRunning:
			r.RWAction, r.RWReason = ActHold, ReasonLeaderNotUp
			r.RWDetail = fmt.Sprintf("leader %s reports role %s, state %s", v.Leader.Name, st.Role, st.State)
		default: // primary/running but no usable address
			r.RWAction, r.RWReason = ActRefuse, ReasonNoAddress
			r.RWDetail = fmt.Sprintf("leader %s registered no address (host %q, port %d)", v.Leader.Name, info.Host, info.Port)
		}
	default:
		r.RWAction, r.RW = ActRoute, r.Primary
	}
	r.RO, r.ROReason, r.RODetail = replicas(v, maxLag)
	return r
}

// primaryOf returns the leader when its status says primary/running and it
// has an address, else nil.
func primaryOf(v cluster.View) *Target {
	if v.Leader == nil {
		return nil
	}
	st, ok := v.Statuses[v.Leader.Name]
	if !ok || st.Role != cluster.RolePrimary || st.State != cluster.StateRunning {
		return nil
	}
	t, ok := targetOf(v, v.Leader.Name)
	if !ok {
		return nil
	}
	return &t
}

// switchoverDue reports whether a planned switchover applies to the
// current leader and its scheduled time has come (on the proxy's wall
// clock, as the members judge it on theirs). A request naming another
// member as primary is cleared by the real primary without a switchover,
// so it does not hold connections; nor does one whose candidate already
// holds the leader key (the switchover is complete; the new primary
// clears the request in the loop that promotes it). Manual failovers (kind failover) need
// no rule of their own: they only happen without a healthy primary, and
// then there is nothing to route to anyway.
func switchoverDue(v cluster.View, now time.Time) bool {
	sw := v.Switchover
	if sw == nil || sw.Kind != cluster.KindSwitchover {
		return false
	}
	if !sw.ScheduledAt.IsZero() && now.Before(sw.ScheduledAt) {
		return false
	}
	if v.Leader == nil {
		return true
	}
	if sw.Candidate != "" && sw.Candidate == v.Leader.Name {
		return false
	}
	return sw.Leader == "" || sw.Leader == v.Leader.Name
}

// targetOf is a member's PostgreSQL address, ok false when it registered
// none (or is a witness, which runs no database).
func targetOf(v cluster.View, name string) (Target, bool) {
	info, ok := v.Members[name]
	if !ok || info.Witness || info.Host == "" || info.Port <= 0 || info.Port > 65535 {
		return Target{}, false
	}
	return Target{Name: name, Addr: net.JoinHostPort(info.Host, strconv.Itoa(info.Port))}, true
}

// replicas picks the replicas fit for read-only traffic (see Route).
func replicas(v cluster.View, maxLag int64) (out []Target, reason, detail string) {
	out = []Target{}
	ref, ok := v.PrimaryPosition()
	if !ok {
		return out, ReasonNoReplica, "no primary position to measure replica lag against"
	}
	names := make([]string, 0, len(v.Statuses))
	for n := range v.Statuses {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		st := v.Statuses[n]
		if v.Leader != nil && n == v.Leader.Name {
			continue
		}
		if st.Role != cluster.RoleReplica || st.State != cluster.StateStreaming {
			continue
		}
		if v.Members[n].NoLoadBalance() {
			continue // tagged to take no read-only traffic
		}
		if lag, known := cluster.LagBytes(ref, st.Replayed()); !known || lag > maxLag {
			continue
		}
		t, ok := targetOf(v, n)
		if !ok {
			continue
		}
		out = append(out, t)
	}
	if len(out) == 0 {
		return out, ReasonNoReplica, fmt.Sprintf("no streaming replica on timeline %d has replayed to within %d bytes of %s", ref.Timeline, maxLag, ref.LSN)
	}
	return out, "", ""
}
