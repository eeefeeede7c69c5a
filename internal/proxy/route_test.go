package proxy

import (
	"slices"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

var (
	t0  = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ttl = 4 * time.Second
)

const lag1M = 1 << 20

func pos(tl uint32, lsn cluster.LSN) cluster.Position {
	return cluster.Position{Timeline: tl, LSN: lsn}
}

// healthy is a three-member cluster: pg-0 primary, pg-1 and pg-2 streaming
// replicas (pg-2 4 KiB behind), a witness, and a member that is down.
func healthy() cluster.View {
	return cluster.View{
		Revision: 42,
		Leader:   &cluster.Leader{Name: "pg-0", LeaseID: 7, Revision: 40},
		Members: map[string]cluster.MemberInfo{
			"pg-0": {Name: "pg-0", Host: "10.0.0.10", Port: 5432},
			"pg-1": {Name: "pg-1", Host: "10.0.0.11", Port: 5432},
			"pg-2": {Name: "pg-2", Host: "10.0.0.12", Port: 5433},
			"pg-3": {Name: "pg-3", Host: "10.0.0.13", Port: 5432},
			"w-0":  {Name: "w-0", Witness: true},
		},
		Statuses: map[string]cluster.MemberStatus{
			"pg-0": {Name: "pg-0", Role: cluster.RolePrimary, State: cluster.StateRunning, Position: pos(2, 0x5000000)},
			"pg-1": {Name: "pg-1", Role: cluster.RoleReplica, State: cluster.StateStreaming, Streaming: true, Position: pos(2, 0x5000000)},
			"pg-2": {Name: "pg-2", Role: cluster.RoleReplica, State: cluster.StateStreaming, Streaming: true, Position: pos(2, 0x5000000-4096)},
			"w-0":  {Name: "w-0", Role: cluster.RoleWitness, State: cluster.StateRunning},
		},
		Optime: &cluster.Optime{Position: pos(2, 0x4F00000), Leader: "pg-0"},
	}
}

func status(name string, role cluster.Role, state cluster.State, p cluster.Position) cluster.MemberStatus {
	return cluster.MemberStatus{Name: name, Role: role, State: state, Position: p, Streaming: state == cluster.StateStreaming}
}

func TestRoute(t *testing.T) {
	pg0 := &Target{Name: "pg-0", Addr: "10.0.0.10:5432"}
	pg1 := &Target{Name: "pg-1", Addr: "10.0.0.11:5432"}
	both := []string{"pg-1", "pg-2"}
	type want struct {
		action  Action
		rw      *Target
		reason  string
		primary *Target
		ro      []string
		roWhy   string
	}
	routeTo0 := want{action: ActRoute, rw: pg0, primary: pg0, ro: both}
	cases := []struct {
		name   string
		mod    func(v *cluster.View)
		age    time.Duration
		maxLag int64
		now    time.Time
		want   want
	}{
		// --- read-write: the happy path and freshness ---
		{name: "healthy routes to the leader", want: routeTo0},
		{name: "fresh view just under the TTL", age: ttl - time.Nanosecond, want: routeTo0},
		{name: "view exactly TTL old is stale", age: ttl,
			want: want{action: ActRefuse, reason: ReasonStaleView, roWhy: ReasonStaleView}},
		{name: "view older than the TTL is stale", age: time.Hour,
			want: want{action: ActRefuse, reason: ReasonStaleView, roWhy: ReasonStaleView}},
		{name: "stale wins over a pending switchover", age: ttl,
			mod: func(v *cluster.View) {
				v.Switchover = &cluster.Switchover{Kind: cluster.KindSwitchover, Leader: "pg-0"}
			},
			want: want{action: ActRefuse, reason: ReasonStaleView, roWhy: ReasonStaleView}},
		{name: "stale wins over no leader", age: ttl + time.Second,
			mod:  func(v *cluster.View) { v.Leader = nil },
			want: want{action: ActRefuse, reason: ReasonStaleView, roWhy: ReasonStaleView}},
		{name: "empty view, fresh: hold for a leader", mod: func(v *cluster.View) { *v = cluster.View{} },
			want: want{action: ActHold, reason: ReasonNoLeader, roWhy: ReasonNoReplica}},

		// --- read-write: no leader or leader not (yet) writable ---
		{name: "no leader: hold, replicas still measured against the optime",
			mod:  func(v *cluster.View) { v.Leader = nil },
			want: want{action: ActHold, reason: ReasonNoLeader, ro: both}},
		{name: "no leader and no optime: hold, no replica",
			mod:  func(v *cluster.View) { v.Leader, v.Optime = nil, nil },
			want: want{action: ActHold, reason: ReasonNoLeader, roWhy: ReasonNoReplica}},
		{name: "leader without status: hold",
			mod:  func(v *cluster.View) { delete(v.Statuses, "pg-0") },
			want: want{action: ActHold, reason: ReasonLeaderNotUp, ro: both}},
		{name: "leader still reports replica (promoting): hold",
			mod: func(v *cluster.View) {
				v.Statuses["pg-0"] = status("pg-0", cluster.RoleReplica, cluster.StateStreaming, pos(2, 0x5000000))
			},
			// no leader position: the optime (0x4F00000) is the reference, both replicas are ahead of it
			want: want{action: ActHold, reason: ReasonLeaderNotUp, ro: both}},
		{name: "leader primary but starting: hold",
			mod: func(v *cluster.View) {
				v.Statuses["pg-0"] = status("pg-0", cluster.RolePrimary, cluster.StateStarting, pos(2, 0x5000000))
			},
			want: want{action: ActHold, reason: ReasonLeaderNotUp, ro: both}},
		{name: "leader primary but stopped: hold",
			mod: func(v *cluster.View) {
				v.Statuses["pg-0"] = status("pg-0", cluster.RolePrimary, cluster.StateStopped, pos(2, 0x5000000))
			},
			want: want{action: ActHold, reason: ReasonLeaderNotUp, ro: both}},
		{name: "leader primary but fenced: hold",
			mod: func(v *cluster.View) {
				v.Statuses["pg-0"] = status("pg-0", cluster.RolePrimary, cluster.StateFenced, pos(2, 0x5000000))
			},
			want: want{action: ActHold, reason: ReasonLeaderNotUp, ro: both}},
		{name: "leader primary but crashed: hold",
			mod: func(v *cluster.View) {
				v.Statuses["pg-0"] = status("pg-0", cluster.RolePrimary, cluster.StateCrashed, pos(2, 0x5000000))
			},
			want: want{action: ActHold, reason: ReasonLeaderNotUp, ro: both}},
		{name: "leader status standby: hold",
			mod: func(v *cluster.View) {
				v.Statuses["pg-0"] = status("pg-0", cluster.RoleStandbyNoLeader, cluster.StateRunning, pos(2, 0x5000000))
			},
			want: want{action: ActHold, reason: ReasonLeaderNotUp, ro: both}},
		{name: "leader not registered: refuse",
			mod:  func(v *cluster.View) { delete(v.Members, "pg-0") },
			want: want{action: ActRefuse, reason: ReasonNoAddress, ro: both}},
		{name: "leader without host: refuse",
			mod:  func(v *cluster.View) { v.Members["pg-0"] = cluster.MemberInfo{Name: "pg-0", Port: 5432} },
			want: want{action: ActRefuse, reason: ReasonNoAddress, ro: both}},
		{name: "leader without port: refuse",
			mod:  func(v *cluster.View) { v.Members["pg-0"] = cluster.MemberInfo{Name: "pg-0", Host: "h"} },
			want: want{action: ActRefuse, reason: ReasonNoAddress, ro: both}},
		{name: "leader with an impossible port: refuse",
			mod:  func(v *cluster.View) { v.Members["pg-0"] = cluster.MemberInfo{Name: "pg-0", Host: "h", Port: 70000} },
			want: want{action: ActRefuse, reason: ReasonNoAddress, ro: both}},
		{name: "leader registered as a witness: refuse",
			mod: func(v *cluster.View) {
				v.Members["pg-0"] = cluster.MemberInfo{Name: "pg-0", Host: "h", Port: 5432, Witness: true}
			},
			want: want{action: ActRefuse, reason: ReasonNoAddress, ro: both}},
		{name: "leader moved to pg-1, old primary still reports primary: only pg-1",
			mod: func(v *cluster.View) {
				v.Leader = &cluster.Leader{Name: "pg-1"}
				v.Statuses["pg-1"] = status("pg-1", cluster.RolePrimary, cluster.StateRunning, pos(3, 0x5001000))
			},
			// pg-0 is role primary (not a replica), pg-2 is on timeline 2, the leader on 3
			want: want{action: ActRoute, rw: pg1, primary: pg1, roWhy: ReasonNoReplica}},
		{name: "leader moved to pg-1, pg-2 follows on the new timeline",
			mod: func(v *cluster.View) {
				v.Leader = &cluster.Leader{Name: "pg-1"}
				v.Statuses["pg-1"] = status("pg-1", cluster.RolePrimary, cluster.StateRunning, pos(3, 0x5001000))
				v.Statuses["pg-2"] = status("pg-2", cluster.RoleReplica, cluster.StateStreaming, pos(3, 0x5001000))
				delete(v.Statuses, "pg-0")
			},
			want: want{action: ActRoute, rw: pg1, primary: pg1, ro: []string{"pg-2"}}},
		{name: "IPv6 host is bracketed",
			mod:  func(v *cluster.View) { v.Members["pg-0"] = cluster.MemberInfo{Name: "pg-0", Host: "::1", Port: 6432} },
			want: want{action: ActRoute, rw: &Target{Name: "pg-0", Addr: "[::1]:6432"}, primary: &Target{Name: "pg-0", Addr: "[::1]:6432"}, ro: both}},

		// --- switchover ---
		{name: "switchover due now: hold, old primary keeps its connections",
			mod: func(v *cluster.View) {
				v.Switchover = &cluster.Switchover{Kind: cluster.KindSwitchover, Leader: "pg-0", Candidate: "pg-1"}
			},
			want: want{action: ActHold, reason: ReasonSwitchover, primary: pg0, ro: both}},
		{name: "switchover for whoever leads: hold",
			mod:  func(v *cluster.View) { v.Switchover = &cluster.Switchover{Kind: cluster.KindSwitchover} },
			want: want{action: ActHold, reason: ReasonSwitchover, primary: pg0, ro: both}},
		{name: "switchover scheduled in the future: route",
			mod: func(v *cluster.View) {
				v.Switchover = &cluster.Switchover{Kind: cluster.KindSwitchover, Leader: "pg-0", ScheduledAt: t0.Add(time.Minute)}
			},
			want: routeTo0},
		{name: "switchover scheduled exactly now: hold",
			mod: func(v *cluster.View) {
				v.Switchover = &cluster.Switchover{Kind: cluster.KindSwitchover, Leader: "pg-0", ScheduledAt: t0}
			},
			want: want{action: ActHold, reason: ReasonSwitchover, primary: pg0, ro: both}},
		{name: "switchover scheduled in the past: hold",
			mod: func(v *cluster.View) {
				v.Switchover = &cluster.Switchover{Kind: cluster.KindSwitchover, Leader: "pg-0", ScheduledAt: t0.Add(-time.Second)}
			},
			want: want{action: ActHold, reason: ReasonSwitchover, primary: pg0, ro: both}},
		{name: "switchover naming another primary does not apply: route",
			mod: func(v *cluster.View) {
				v.Switchover = &cluster.Switchover{Kind: cluster.KindSwitchover, Leader: "pg-2", Candidate: "pg-1"}
			},
			want: routeTo0},
		{name: "switchover whose candidate already leads is complete: route",
			mod: func(v *cluster.View) {
				v.Leader = &cluster.Leader{Name: "pg-1"}
				v.Statuses["pg-1"] = status("pg-1", cluster.RolePrimary, cluster.StateRunning, pos(3, 0x6000000))
				v.Statuses["pg-0"] = status("pg-0", cluster.RoleStopped, cluster.StateStopped, pos(2, 0x5000000))
				v.Switchover = &cluster.Switchover{Kind: cluster.KindSwitchover, Candidate: "pg-1"}
			},
			want: want{action: ActRoute, rw: pg1, primary: pg1, roWhy: ReasonNoReplica}},
		{name: "switchover, old primary stopping: hold, no primary",
			mod: func(v *cluster.View) {
				v.Statuses["pg-0"] = status("pg-0", cluster.RolePrimary, cluster.StateStopped, pos(2, 0x5000000))
				v.Switchover = &cluster.Switchover{Kind: cluster.KindSwitchover, Leader: "pg-0", Candidate: "pg-1"}
			},
			want: want{action: ActHold, reason: ReasonSwitchover, ro: both}},
		{name: "switchover, leader key released: hold, no primary",
			mod: func(v *cluster.View) {
				v.Leader = nil
				delete(v.Statuses, "pg-0")
				v.Switchover = &cluster.Switchover{Kind: cluster.KindSwitchover, Leader: "pg-0", Candidate: "pg-1"}
			},
			want: want{action: ActHold, reason: ReasonSwitchover, ro: both}},
		{name: "switchover, new leader still promoting: hold",
			mod: func(v *cluster.View) {
				v.Leader = &cluster.Leader{Name: "pg-2"}
				v.Statuses["pg-2"] = status("pg-2", cluster.RolePrimary, cluster.StateStarting, pos(2, 0x5000000))
				delete(v.Statuses, "pg-0")
				v.Switchover = &cluster.Switchover{Kind: cluster.KindSwitchover, Leader: "pg-0"}
			},
			want: want{action: ActHold, reason: ReasonLeaderNotUp, ro: []string{"pg-1"}}},
		{name: "manual failover request with a healthy leader: route",
			mod: func(v *cluster.View) {
				v.Switchover = &cluster.Switchover{Kind: cluster.KindFailover, Candidate: "pg-1"}
			},
			want: routeTo0},
		{name: "manual failover request without a leader: hold for the leader race",
			mod: func(v *cluster.View) {
				v.Leader = nil
				v.Switchover = &cluster.Switchover{Kind: cluster.KindFailover, Candidate: "pg-1"}
			},
			want: want{action: ActHold, reason: ReasonNoLeader, ro: both}},

		// --- read-only ---
		{name: "a replica tagged noloadbalance takes no read-only traffic",
			mod: func(v *cluster.View) {
				m := v.Members["pg-2"]
				m.Tags = map[string]string{cluster.TagNoLoadBalance: "true"}
				v.Members["pg-2"] = m
			},
			want: want{action: ActRoute, rw: pg0, primary: pg0, ro: []string{"pg-1"}}},
		{name: "an unreadable noloadbalance tag keeps the replica out",
			mod: func(v *cluster.View) {
				m := v.Members["pg-1"]
				m.Tags = map[string]string{cluster.TagNoLoadBalance: "maybe"}
				v.Members["pg-1"] = m
			},
			want: want{action: ActRoute, rw: pg0, primary: pg0, ro: []string{"pg-2"}}},
		{name: "noloadbalance false keeps the replica in",
			mod: func(v *cluster.View) {
				m := v.Members["pg-1"]
				m.Tags = map[string]string{cluster.TagNoLoadBalance: "false"}
				v.Members["pg-1"] = m
			},
			want: routeTo0},
		{name: "replica exactly at the maximum lag qualifies", maxLag: 4096, want: routeTo0},
		{name: "replica one byte beyond the maximum lag is excluded", maxLag: 4095,
			want: want{action: ActRoute, rw: pg0, primary: pg0, ro: []string{"pg-1"}}},
		{name: "a one-byte maximum lag: only the caught-up replica", maxLag: 1,
			want: want{action: ActRoute, rw: pg0, primary: pg0, ro: []string{"pg-1"}}},
		{name: "replica ahead of the leader's report counts as no lag",
			mod: func(v *cluster.View) {
				v.Statuses["pg-2"] = status("pg-2", cluster.RoleReplica, cluster.StateStreaming, pos(2, 0x6000000))
			},
			maxLag: 1, want: routeTo0},
		// Replay, not receipt: a replica that has received everything but
		// replays nothing (paused or stuck) serves stale reads.
		{name: "replica whose replay is paused 10 MiB behind is excluded though it received everything",
			mod: func(v *cluster.View) {
				st := v.Statuses["pg-1"]
				st.ReplayLSN = 0x5000000 - 10<<20
				v.Statuses["pg-1"] = st
			},
			want: want{action: ActRoute, rw: pg0, primary: pg0, ro: []string{"pg-2"}}},
		{name: "replica whose replay trails within the maximum lag qualifies",
			mod: func(v *cluster.View) {
				st := v.Statuses["pg-1"]
				st.ReplayLSN = 0x5000000 - 4096
				v.Statuses["pg-1"] = st
			},
			maxLag: 4096, want: routeTo0},
		{name: "replica whose replay trails one byte beyond the maximum lag is excluded",
			mod: func(v *cluster.View) {
				st := v.Statuses["pg-1"]
				st.ReplayLSN = 0x5000000 - 4097
				v.Statuses["pg-1"] = st
			},
			maxLag: 4096, want: want{action: ActRoute, rw: pg0, primary: pg0, ro: []string{"pg-2"}}},
		{name: "every replica's replay beyond the lag: none qualifies",
			mod: func(v *cluster.View) {
				for _, n := range []string{"pg-1", "pg-2"} {
					st := v.Statuses[n]
					st.ReplayLSN = 0x1000000
					v.Statuses[n] = st
				}
			},
			want: want{action: ActRoute, rw: pg0, primary: pg0, roWhy: ReasonNoReplica}},
		{name: "replica on an older timeline is excluded",
			mod: func(v *cluster.View) {
				v.Statuses["pg-2"] = status("pg-2", cluster.RoleReplica, cluster.StateStreaming, pos(1, 0x5000000))
			},
			want: want{action: ActRoute, rw: pg0, primary: pg0, ro: []string{"pg-1"}}},
		{name: "replica on a newer timeline than the leader is excluded",
			mod: func(v *cluster.View) {
				v.Statuses["pg-2"] = status("pg-2", cluster.RoleReplica, cluster.StateStreaming, pos(3, 0x5000000))
			},
			want: want{action: ActRoute, rw: pg0, primary: pg0, ro: []string{"pg-1"}}},
		{name: "replica not streaming is excluded",
			mod: func(v *cluster.View) {
				v.Statuses["pg-2"] = status("pg-2", cluster.RoleReplica, cluster.StateRunning, pos(2, 0x5000000))
			},
			want: want{action: ActRoute, rw: pg0, primary: pg0, ro: []string{"pg-1"}}},
		{name: "replica starting is excluded",
			mod: func(v *cluster.View) {
				v.Statuses["pg-2"] = status("pg-2", cluster.RoleReplica, cluster.StateStarting, pos(2, 0x5000000))
			},
			want: want{action: ActRoute, rw: pg0, primary: pg0, ro: []string{"pg-1"}}},
		{name: "standby without leader role is excluded",
			mod: func(v *cluster.View) {
				v.Statuses["pg-2"] = status("pg-2", cluster.RoleStandbyNoLeader, cluster.StateStreaming, pos(2, 0x5000000))
			},
			want: want{action: ActRoute, rw: pg0, primary: pg0, ro: []string{"pg-1"}}},
		{name: "replica without a position is excluded",
			mod: func(v *cluster.View) {
				v.Statuses["pg-2"] = status("pg-2", cluster.RoleReplica, cluster.StateStreaming, pos(2, 0))
			},
			want: want{action: ActRoute, rw: pg0, primary: pg0, ro: []string{"pg-1"}}},
		{name: "replica gone from the statuses is excluded",
			mod:  func(v *cluster.View) { delete(v.Statuses, "pg-2") },
			want: want{action: ActRoute, rw: pg0, primary: pg0, ro: []string{"pg-1"}}},
		{name: "replica without registration is excluded",
			mod:  func(v *cluster.View) { delete(v.Members, "pg-2") },
			want: want{action: ActRoute, rw: pg0, primary: pg0, ro: []string{"pg-1"}}},
		{name: "streaming status from an unregistered, addressless member is excluded",
			mod: func(v *cluster.View) {
				v.Statuses["pg-9"] = status("pg-9", cluster.RoleReplica, cluster.StateStreaming, pos(2, 0x5000000))
				v.Members["pg-9"] = cluster.MemberInfo{Name: "pg-9"}
			},
			want: routeTo0},
		{name: "no replica at all",
			mod: func(v *cluster.View) {
				delete(v.Statuses, "pg-1")
				delete(v.Statuses, "pg-2")
			},
			want: want{action: ActRoute, rw: pg0, primary: pg0, roWhy: ReasonNoReplica}},
		{name: "third replica sorts by name",
			mod: func(v *cluster.View) {
				v.Statuses["pg-3"] = status("pg-3", cluster.RoleReplica, cluster.StateStreaming, pos(2, 0x5000000))
			},
			want: want{action: ActRoute, rw: pg0, primary: pg0, ro: []string{"pg-1", "pg-2", "pg-3"}}},
		{name: "leader not primary: lag against the optime",
			mod: func(v *cluster.View) {
				v.Statuses["pg-0"] = status("pg-0", cluster.RoleStopped, cluster.StateStopped, pos(2, 0x9000000))
				v.Optime = &cluster.Optime{Position: pos(2, 0x5001000)}
			},
			maxLag: 4096, // pg-1 is 4 KiB behind the optime, pg-2 8 KiB
			want:   want{action: ActHold, reason: ReasonLeaderNotUp, ro: []string{"pg-1"}}},
		{name: "leader primary but not running: its position still the reference",
			mod: func(v *cluster.View) {
				v.Statuses["pg-0"] = status("pg-0", cluster.RolePrimary, cluster.StateStarting, pos(2, 0x5000000))
				v.Optime = &cluster.Optime{Position: pos(2, 0x9000000)}
			},
			want: want{action: ActHold, reason: ReasonLeaderNotUp, ro: both}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := healthy()
			if c.mod != nil {
				c.mod(&v)
			}
			maxLag := c.maxLag
			if maxLag == 0 {
				maxLag = lag1M
			}
			now := c.now
			if now.IsZero() {
				now = t0
			}
			got := Route(v, c.age, ttl, maxLag, now, Grant{})
			if got.RWAction != c.want.action {
				t.Errorf("RWAction = %q (%s), want %q", got.RWAction, got.RWDetail, c.want.action)
			}
			if !eqTarget(got.RW, c.want.rw) {
				t.Errorf("RW = %v, want %v", got.RW, c.want.rw)
			}
			if got.RWReason != c.want.reason {
				t.Errorf("RWReason = %q, want %q", got.RWReason, c.want.reason)
			}
			if (got.RWReason == "") != (got.RWDetail == "") {
				t.Errorf("RWReason %q and RWDetail %q must be set together", got.RWReason, got.RWDetail)
			}
			if !eqTarget(got.Primary, c.want.primary) {
				t.Errorf("Primary = %v, want %v", got.Primary, c.want.primary)
			}
			var ro []string
			for _, r := range got.RO {
				ro = append(ro, r.Name)
			}
			if !slices.Equal(ro, c.want.ro) {
				t.Errorf("RO = %v, want %v (%s)", ro, c.want.ro, got.RODetail)
			}
			wantWhy := c.want.roWhy
			if got.ROReason != wantWhy {
				t.Errorf("ROReason = %q, want %q", got.ROReason, wantWhy)
			}
			if got.RO == nil {
				t.Error("RO is nil; want an empty list (JSON [])")
			}
			// Invariants every decision keeps.
			if got.RWAction == ActRoute && (got.RW == nil || !eqTarget(got.RW, got.Primary)) {
				t.Errorf("routing to %v but the primary is %v", got.RW, got.Primary)
			}
			if got.Primary != nil && (v.Leader == nil || got.Primary.Name != v.Leader.Name) {
				t.Errorf("primary %v does not hold the leader key", got.Primary)
			}
			if c.age >= ttl && (got.Primary != nil || len(got.RO) > 0) {
				t.Error("a stale view grants something")
			}
		})
	}
}

func eqTarget(a, b *Target) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return *a == *b
}

// TestRoutePure checks Route neither mutates its input nor depends on
// anything but its arguments.
func TestRoutePure(t *testing.T) {
	v := healthy()
	v.Switchover = &cluster.Switchover{Kind: cluster.KindSwitchover, Leader: "pg-0", ScheduledAt: t0}
	a := Route(v, time.Second, ttl, lag1M, t0.Add(-time.Second), Grant{})
	b := Route(v, time.Second, ttl, lag1M, t0.Add(-time.Second), Grant{})
	if a.RWAction != b.RWAction || !eqTarget(a.RW, b.RW) || !slices.Equal(a.RO, b.RO) {
		t.Fatalf("two calls differ: %+v vs %+v", a, b)
	}
	if len(v.Statuses) != 4 || len(v.Members) != 5 || v.Leader.Name != "pg-0" || v.Switchover == nil {
		t.Fatal("Route modified its input")
	}
}

func TestROTargets(t *testing.T) {
	p := Target{Name: "pg-0", Addr: "a:1"}
	r1 := Target{Name: "pg-1", Addr: "b:1"}
	cases := []struct {
		name     string
		r        Routes
		fallback bool
		want     []Target
		viaPrim  bool
	}{
		{"replicas win", Routes{RWAction: ActRoute, RW: &p, Primary: &p, RO: []Target{r1}}, true, []Target{r1}, false},
		{"no replica, fallback", Routes{RWAction: ActRoute, RW: &p, Primary: &p, RO: []Target{}}, true, []Target{p}, true},
		{"no replica, no fallback", Routes{RWAction: ActRoute, RW: &p, Primary: &p, RO: []Target{}}, false, nil, false},
		{"no replica, primary being switched over", Routes{RWAction: ActHold, Primary: &p, RO: []Target{}}, true, nil, false},
		{"stale", Routes{RWAction: ActRefuse, RO: []Target{}}, true, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, via := roTargets(c.r, c.fallback)
			if !slices.Equal(got, c.want) || via != c.viaPrim {
				t.Errorf("roTargets = %v, %v; want %v, %v", got, via, c.want, c.viaPrim)
			}
		})
	}
}

// A view TTL old refuses read-write connections unless the primary it names
// confirmed, on its own word, that it may still accept writes.
func TestRouteStaleViewWithGrant(t *testing.T) {
	pg0 := &Target{Name: "pg-0", Addr: "10.0.0.10:5432"}
	for _, c := range []struct {
		name    string
		mod     func(*cluster.View)
		age     time.Duration
		g       Grant
		want    Action
		primary *Target
	}{
		{name: "stale, no grant", age: ttl, want: ActRefuse},
		{name: "stale, the primary confirms", age: ttl, g: Grant{Name: "pg-0", Left: time.Second}, want: ActRoute, primary: pg0},
		{name: "stale, the grant ran out", age: ttl, g: Grant{Name: "pg-0"}, want: ActRefuse},
		{name: "stale, another member confirms", age: ttl, g: Grant{Name: "pg-1", Left: time.Second}, want: ActRefuse},
		{name: "stale, the leader was not running", age: ttl, g: Grant{Name: "pg-0", Left: time.Second}, want: ActRefuse,
			mod: func(v *cluster.View) {
				v.Statuses["pg-0"] = status("pg-0", cluster.RolePrimary, cluster.StateStarting, pos(2, 0x5000000))
			}},
		{name: "stale, a switchover was due", age: ttl, g: Grant{Name: "pg-0", Left: time.Second}, want: ActRefuse,
			mod: func(v *cluster.View) {
				v.Switchover = &cluster.Switchover{Kind: cluster.KindSwitchover, Leader: "pg-0"}
			}},
		{name: "fresh view: the grant plays no part", age: time.Second, g: Grant{Name: "pg-0", Left: time.Second}, want: ActRoute, primary: pg0},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := healthy()
			if c.mod != nil {
				c.mod(&v)
			}
			got := Route(v, c.age, ttl, lag1M, t0, c.g)
			if got.RWAction != c.want || !eqTarget(got.Primary, c.primary) || !eqTarget(got.RW, c.primary) {
				t.Fatalf("Route = %s to %v (primary %v, %s); want %s to %v", got.RWAction, got.RW, got.Primary, got.RWDetail, c.want, c.primary)
			}
			if got.Confirmed != (c.age >= ttl && got.Primary != nil) {
				t.Errorf("Confirmed = %v", got.Confirmed)
			}
			if c.age >= ttl && len(got.RO) > 0 {
				t.Error("a stale view routes read-only connections to replicas")
			}
		})
	}
}
