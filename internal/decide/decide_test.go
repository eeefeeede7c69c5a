package decide

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// ---------------------------------------------------------------------------
// Observation builder.
//
// base() is a healthy 3-member cluster seen from pg-1, a replica streaming
// from the primary pg-0. Every case applies small mods that state only what
// differs from it.
// ---------------------------------------------------------------------------

const (
	sysID      = "7412345678901234567"
	otherSysID = "7999999999999999999"
	myLease    = int64(0x1001)
	peerLease  = int64(0x2002)
	tl         = uint32(3)
	lsn        = cluster.LSN(0x3_0000_0000)
	mib        = cluster.LSN(1 << 20)
)

const now = 100 * time.Second

func pos(t uint32, l cluster.LSN) cluster.Position { return cluster.Position{Timeline: t, LSN: l} }

func testSettings() Settings {
	return Settings{
		TTL:                 4 * time.Second,
		LoopInterval:        time.Second,
		FenceMargin:         time.Second,
		MaximumLag:          1 << 20,
		PrimaryStartTimeout: 10 * time.Second,
		StartupGrace:        12 * time.Second,
		RewindAfter:         5 * time.Second,
	}
}

func memberInfo(name string) cluster.MemberInfo {
	n, _ := cluster.Ordinal(name)
	return cluster.MemberInfo{Name: name, Host: fmt.Sprintf("10.0.0.%d", 10+n), Port: 5432, APIURL: fmt.Sprintf("http://10.0.0.%d:8008", 10+n)}
}

func base() Observation {
	members := map[string]cluster.MemberInfo{}
	for _, n := range []string{"pg-0", "pg-1", "pg-2"} {
		members[n] = memberInfo(n)
	}
	return Observation{
		Now:      now,
		Self:     memberInfo("pg-1"),
		Settings: testSettings(),
		StoreOK:  true,
		View: cluster.View{
			Revision: 42,
			Init:     cluster.InitState{Present: true, SystemID: sysID, Revision: 2},
			Leader:   &cluster.Leader{Name: "pg-0", LeaseID: peerLease, Revision: 40},
			Members:  members,
			Statuses: map[string]cluster.MemberStatus{
				"pg-0": {Name: "pg-0", Role: cluster.RolePrimary, State: cluster.StateRunning, Position: pos(tl, lsn), SystemID: sysID},
				"pg-1": {Name: "pg-1", Role: cluster.RoleReplica, State: cluster.StateStreaming, Position: pos(tl, lsn), Following: "pg-0", Streaming: true, SystemID: sysID},
				"pg-2": {Name: "pg-2", Role: cluster.RoleReplica, State: cluster.StateStreaming, Position: pos(tl, lsn), Following: "pg-0", Streaming: true, SystemID: sysID},
			},
			Optime: &cluster.Optime{Position: pos(tl, lsn), Leader: "pg-0"},
			History: []cluster.HistoryEntry{
				{Timeline: 2, SwitchLSN: 0x1_0000_0000, Leader: "pg-2", Reason: "failover"},
				{Timeline: 3, SwitchLSN: 0x2_0000_0000, Leader: "pg-0", Reason: "failover"},
			},
			Config: &cluster.Config{TTL: 4 * time.Second, LoopInterval: time.Second, MaximumLagOnFailover: 1 << 20, PrimaryStartTimeout: 10 * time.Second},
		},
		Lease: Lease{Held: true, ID: myLease, Deadline: now + 3900*time.Millisecond},
		Data:  Data{Kind: DataValid, SystemID: sysID, ControlState: ControlInArchiveRecovery},
		PG: PG{Running: true, Ready: true, InRecovery: true, SystemID: sysID, Position: pos(tl, lsn),
			Streaming: true, Upstream: "pg-0"},
	}
}

type mod func(*Observation)

func build(mods ...mod) Observation {
	o := base()
	for _, m := range mods {
		m(&o)
	}
	return o
}

func self(name string) mod {
	return func(o *Observation) { o.Self = o.View.Members[name] }
}

// leaderIs puts name in the leader key; name == Self gets our own lease.
func leaderIs(name string) mod {
	return func(o *Observation) {
		id := peerLease
		if name == o.Self.Name {
			id = o.Lease.ID
		}
		o.View.Leader = &cluster.Leader{Name: name, LeaseID: id, Revision: 40}
	}
}

func noLeaderKey(o *Observation) { o.View.Leader = nil }

func writable(o *Observation) {
	o.PG.InRecovery, o.PG.Streaming, o.PG.Upstream = false, false, ""
}

func pgStopped(o *Observation) { o.PG = PG{} }

func pgStarting(o *Observation) { o.PG = PG{Running: true, Upstream: o.PG.Upstream} }

func control(state string) mod { return func(o *Observation) { o.Data.ControlState = state } }

func emptyData(o *Observation) {
	o.Data = Data{Kind: DataEmpty}
	o.PG = PG{}
}

// primary makes Self pg-0, the healthy primary holding the key.
func primary(o *Observation) {
	self("pg-0")(o)
	leaderIs("pg-0")(o)
	writable(o)
	o.Data.ControlState = ControlInProduction
}

// race: the primary pg-0 is gone (no key, no status); pg-1 and pg-2 run in
// recovery without upstream at the optime. Self stays pg-1.
func race(o *Observation) {
	o.View.Leader = nil
	delete(o.View.Statuses, "pg-0")
	for _, n := range []string{"pg-1", "pg-2"} {
		st := o.View.Statuses[n]
		st.Role, st.State, st.Streaming, st.Following = cluster.RoleStandbyNoLeader, cluster.StateWaiting, false, ""
		o.View.Statuses[n] = st
	}
	o.PG.Streaming = false
}

func status(name string, f func(*cluster.MemberStatus)) mod {
	return func(o *Observation) {
		st, ok := o.View.Statuses[name]
		if !ok {
			st = cluster.MemberStatus{Name: name, Role: cluster.RoleStandbyNoLeader, State: cluster.StateWaiting}
		}
		f(&st)
		o.View.Statuses[name] = st
	}
}

// lastLeader makes name the member the optime records as the last primary.
func lastLeader(name string) mod {
	return func(o *Observation) { o.View.Optime.Leader = name }
}

func statusPos(name string, p cluster.Position) mod {
	return status(name, func(st *cluster.MemberStatus) { st.Position = p })
}

func dropStatus(name string) mod { return func(o *Observation) { delete(o.View.Statuses, name) } }

func myPos(p cluster.Position) mod { return func(o *Observation) { o.PG.Position = p } }

func optimeAt(p cluster.Position) mod {
	return func(o *Observation) { o.View.Optime = &cluster.Optime{Position: p, Leader: "pg-0"} }
}

// tag sets a member's tags in the registry, and on Self when it is Self.
func tag(name, k, v string) mod {
	return func(o *Observation) {
		m := o.View.Members[name]
		tags := map[string]string{}
		for kk, vv := range m.Tags {
			tags[kk] = vv
		}
		tags[k] = v
		m.Tags = tags
		o.View.Members[name] = m
		if o.Self.Name == name {
			o.Self = m
		}
	}
}

func register(info cluster.MemberInfo) mod {
	return func(o *Observation) { o.View.Members[info.Name] = info }
}

func unregister(name string) mod { return func(o *Observation) { delete(o.View.Members, name) } }

func storeUnreachable(o *Observation) { o.StoreOK = false }

func pausedCluster(o *Observation) {
	if o.View.Config == nil {
		o.View.Config = &cluster.Config{}
	}
	o.View.Config.Paused = true
}

func deadlineIn(d time.Duration) mod { return func(o *Observation) { o.Lease.Deadline = o.Now + d } }

func at(t time.Duration) mod {
	return func(o *Observation) {
		d := o.Lease.Deadline - o.Now
		o.Now = t
		o.Lease.Deadline = t + d
	}
}

func memory(m Memory) mod { return func(o *Observation) { o.Memory = m } }

func initBy(name string) mod {
	return func(o *Observation) { o.View.Init = cluster.InitState{Present: true, Bootstrapper: name, Revision: 1} }
}

// freshStore: nothing in the store but the member registrations.
func freshStore(o *Observation) {
	o.View.Init = cluster.InitState{}
	o.View.Leader = nil
	o.View.Statuses = map[string]cluster.MemberStatus{}
	o.View.Optime = nil
	o.View.History = nil
	o.View.Config = nil
}

// ---------------------------------------------------------------------------
// Expectations.
// ---------------------------------------------------------------------------

// acts renders actions as "kind" or "kind:target", in order.
func acts(as []Action) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		s := string(a.Kind)
		if a.Target != "" {
			s += ":" + a.Target
		}
		out = append(out, s)
	}
	return out
}

var promotion = []string{"acquire-leader", "ensure-slots", "promote", "record-promotion", "publish-optime"}

type want struct {
	role    cluster.Role
	state   cluster.State // "" = not checked
	actions []string      // exact, ordered; nil = none
	fatal   []string      // substrings of Fatal; nil = Fatal must be empty
	msg     []string      // substrings of Message
	memory  Memory
	slots   []string // for the ensure-slots action, when present
	reason  []string // substrings of the first action's Reason
}

type scenario struct {
	name string
	mods []mod
	want want
}

func run(t *testing.T, cases []scenario) {
	t.Helper()
	seen := map[string]bool{}
	for _, c := range cases {
		if seen[c.name] {
			t.Fatalf("duplicate case name %q", c.name)
		}
		seen[c.name] = true
		t.Run(c.name, func(t *testing.T) {
			o := build(c.mods...)
			d := Decide(o)
			check(t, o, d, c.want)
			checkInvariants(t, o, d)
		})
	}
}

func check(t *testing.T, o Observation, d Decision, w want) {
	t.Helper()
	if d.Role != w.role {
		t.Errorf("role = %q, want %q (message %q)", d.Role, w.role, d.Message)
	}
	if w.state != "" && d.State != w.state {
		t.Errorf("state = %q, want %q (message %q)", d.State, w.state, d.Message)
	}
	if got := acts(d.Actions); !slices.Equal(got, w.actions) && !(len(got) == 0 && len(w.actions) == 0) {
		t.Errorf("actions = %q, want %q (message %q)", got, w.actions, d.Message)
	}
	if w.fatal == nil && d.Fatal != "" {
		t.Errorf("unexpected Fatal %q", d.Fatal)
	}
	if w.fatal != nil && d.Fatal == "" {
		t.Errorf("Fatal is empty, want it to mention %q", w.fatal)
	}
	for _, s := range w.fatal {
		if !strings.Contains(d.Fatal, s) {
			t.Errorf("Fatal %q does not mention %q", d.Fatal, s)
		}
	}
	for _, s := range w.msg {
		if !strings.Contains(d.Message, s) {
			t.Errorf("message %q does not mention %q", d.Message, s)
		}
	}
	got := d.Memory
	got.Streamed = w.memory.Streamed // checked by the invariants (s)
	if got != w.memory {
		t.Errorf("memory = %+v, want %+v", d.Memory, w.memory)
	}
	if w.slots != nil {
		found := false
		for _, a := range d.Actions {
			if a.Kind == ActEnsureSlots {
				found = true
				if !slices.Equal(a.Slots, w.slots) {
					t.Errorf("slots = %q, want %q", a.Slots, w.slots)
				}
			}
		}
		if !found {
			t.Errorf("no ensure-slots action; want slots %q", w.slots)
		}
	}
	if len(w.reason) > 0 {
		if len(d.Actions) == 0 {
			t.Errorf("no action to carry reason %q", w.reason)
		} else {
			for _, s := range w.reason {
				if !strings.Contains(d.Actions[0].Reason, s) {
					t.Errorf("reason of %s = %q, does not mention %q", d.Actions[0].Kind, d.Actions[0].Reason, s)
				}
			}
		}
	}
}

func TestBaseIsAHealthyStreamingReplica(t *testing.T) {
	d := Decide(base())
	check(t, base(), d, want{role: cluster.RoleReplica, state: cluster.StateStreaming, msg: []string{"pg-0"}})
}

// ---------------------------------------------------------------------------
// Bootstrap, adoption, clone.
// ---------------------------------------------------------------------------

func TestBootstrap(t *testing.T) {
	run(t, []scenario{
		{"empty data and no init key bootstraps", []mod{freshStore, emptyData},
			want{role: cluster.RoleUninitialized, state: cluster.StateBootstrapping,
				actions: []string{"claim-init", "initdb", "acquire-leader", "start-primary"}}},
		{"nofailover member still bootstraps an empty cluster", []mod{freshStore, emptyData, tag("pg-1", "nofailover", "true")},
			want{role: cluster.RoleUninitialized, state: cluster.StateBootstrapping,
				actions: []string{"claim-init", "initdb", "acquire-leader", "start-primary"}}},
		{"own unfinished claim with empty data is aborted", []mod{freshStore, initBy("pg-1"), emptyData},
			want{role: cluster.RoleUninitialized, state: cluster.StateFailed, actions: []string{"abort-init"}}},
		{"another member bootstrapping: wait with empty data", []mod{freshStore, initBy("pg-2"), emptyData},
			want{role: cluster.RoleUninitialized, state: cluster.StateWaiting, msg: []string{"pg-2"}}},
		{"another member bootstrapping: wait with stopped data", []mod{freshStore, initBy("pg-2"), pgStopped, control(ControlShutDown)},
			want{role: cluster.RoleStopped, state: cluster.StateWaiting, msg: []string{"pg-2"}}},
		{"another member bootstrapping while our PostgreSQL is writable: fence", []mod{freshStore, initBy("pg-2"), writable},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"initdb done, no leader: take the key", []mod{freshStore, initBy("pg-1"), pgStopped, control(ControlShutDown)},
			want{role: cluster.RoleUninitialized, state: cluster.StateBootstrapping, actions: []string{"acquire-leader"}}},
		{"initdb done, holding the key, PostgreSQL stopped: start primary", []mod{freshStore, initBy("pg-1"), leaderIs("pg-1"), pgStopped, control(ControlShutDown)},
			want{role: cluster.RolePrimary, state: cluster.StateBootstrapping, actions: []string{"start-primary"}}},
		{"bootstrap primary starting: wait", []mod{freshStore, initBy("pg-1"), leaderIs("pg-1"), pgStarting},
			want{role: cluster.RolePrimary, state: cluster.StateStarting}},
		{"bootstrap primary ready: finish init", []mod{freshStore, initBy("pg-1"), leaderIs("pg-1"), writable},
			want{role: cluster.RolePrimary, state: cluster.StateBootstrapping, actions: []string{"finish-init", "publish-optime"}}},
		{"bootstrapping but another member holds the key: abort", []mod{freshStore, initBy("pg-1"), leaderIs("pg-2"), pgStopped},
			want{role: cluster.RoleUninitialized, state: cluster.StateFailed, actions: []string{"abort-init"}}},
		{"bootstrapping, another member holds the key, writable: fence", []mod{freshStore, initBy("pg-1"), leaderIs("pg-2"), writable},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"bootstrapping, writable without any key: fence", []mod{freshStore, initBy("pg-1"), writable},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"bootstrapping, key of a previous run: abort", []mod{freshStore, initBy("pg-1"), leaderIs("pg-1"),
			func(o *Observation) { o.View.Leader.LeaseID = 0x999 }, pgStopped},
			want{role: cluster.RoleUninitialized, state: cluster.StateFailed, actions: []string{"abort-init"}}},
		{"bootstrapping, key of a previous run, writable: fence", []mod{freshStore, initBy("pg-1"), leaderIs("pg-1"),
			func(o *Observation) { o.View.Leader.LeaseID = 0x999 }, writable},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"adopt: data but no init key", []mod{freshStore, pgStopped, control(ControlShutDown)},
			want{role: cluster.RoleStopped, state: cluster.StateWaiting, actions: []string{"claim-init", "finish-init"}}},
		{"adopt: running replica", []mod{freshStore, func(o *Observation) { o.PG.Streaming = false }},
			want{role: cluster.RoleReplica, state: cluster.StateWaiting, actions: []string{"claim-init", "finish-init"}}},
		{"adopt: writable PostgreSQL is fenced first", []mod{freshStore, writable},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
	})
}

func TestClone(t *testing.T) {
	run(t, []scenario{
		{"empty data, ready leader: clone and start", []mod{emptyData},
			want{role: cluster.RoleUninitialized, state: cluster.StateCloning,
				actions: []string{"clone:pg-0", "start-standby:pg-0"}, msg: []string{"pg-0"}}},
		{"nofailover member clones too", []mod{emptyData, tag("pg-1", "nofailover", "yes")},
			want{role: cluster.RoleUninitialized, state: cluster.StateCloning,
				actions: []string{"clone:pg-0", "start-standby:pg-0"}}},
		{"leader still starting: wait", []mod{emptyData, status("pg-0", func(st *cluster.MemberStatus) { st.State = cluster.StateStarting })},
			want{role: cluster.RoleUninitialized, state: cluster.StateWaiting}},
		{"leader reports replica role: wait", []mod{emptyData, status("pg-0", func(st *cluster.MemberStatus) { st.Role = cluster.RoleReplica })},
			want{role: cluster.RoleUninitialized, state: cluster.StateWaiting}},
		{"leader has no status: wait", []mod{emptyData, dropStatus("pg-0")},
			want{role: cluster.RoleUninitialized, state: cluster.StateWaiting}},
		{"leader not registered: wait", []mod{emptyData, unregister("pg-0")},
			want{role: cluster.RoleUninitialized, state: cluster.StateWaiting}},
		{"no leader: wait", []mod{emptyData, noLeaderKey},
			want{role: cluster.RoleUninitialized, state: cluster.StateWaiting}},
		{"empty data but our name in the key: clear it", []mod{emptyData, leaderIs("pg-1")},
			want{role: cluster.RoleUninitialized, state: cluster.StateWaiting, actions: []string{"delete-stale-leader"}}},
		{"empty data, our name in the key of a previous run: clear it", []mod{emptyData, leaderIs("pg-1"),
			func(o *Observation) { o.View.Leader.LeaseID = 1 }},
			want{role: cluster.RoleUninitialized, state: cluster.StateWaiting, actions: []string{"delete-stale-leader"}}},
	})
}

// ---------------------------------------------------------------------------
// Data of another cluster, invalid data, witness.
// ---------------------------------------------------------------------------

func TestForeignAndInvalidData(t *testing.T) {
	run(t, []scenario{
		{"stopped data of another cluster", []mod{pgStopped, func(o *Observation) { o.Data.SystemID = otherSysID }},
			want{role: cluster.RoleStopped, state: cluster.StateFailed, fatal: []string{otherSysID, sysID, "another PostgreSQL cluster"}}},
		{"primary data of another cluster, even holding the key", []mod{primary, pgStopped, func(o *Observation) { o.Data.SystemID = otherSysID }},
			want{role: cluster.RoleStopped, state: cluster.StateFailed, fatal: []string{otherSysID, sysID}}},
		{"running PostgreSQL of another cluster is stopped", []mod{func(o *Observation) { o.Data.SystemID = ""; o.PG.SystemID = otherSysID }},
			want{role: cluster.RoleStopped, state: cluster.StateFailed, actions: []string{"stop"}, fatal: []string{otherSysID, sysID}}},
		{"running PostgreSQL of another cluster is stopped even when paused", []mod{pausedCluster, func(o *Observation) { o.PG.SystemID = otherSysID }},
			want{role: cluster.RoleStopped, state: cluster.StateFailed, actions: []string{"stop"}, fatal: []string{otherSysID}}},
		{"invalid data directory", []mod{pgStopped, func(o *Observation) {
			o.Data = Data{Kind: DataInvalid, Problem: "lost+found and a README"}
		}},
			want{role: cluster.RoleUninitialized, state: cluster.StateFailed, fatal: []string{"lost+found and a README", "not a PostgreSQL data directory"}}},
		{"invalid data directory with the store down", []mod{storeUnreachable, pgStopped, func(o *Observation) { o.Data = Data{Kind: DataInvalid, Problem: "x"} }},
			want{role: cluster.RoleUninitialized, state: cluster.StateFailed, fatal: []string{"not a PostgreSQL data directory"}}},
		{"system identifier unknown yet: no verdict", []mod{pgStopped, control(ControlShutDownRecovery), func(o *Observation) { o.Data.SystemID = "" }},
			want{role: cluster.RoleReplica, state: cluster.StateStarting, actions: []string{"start-standby:pg-0"}}},
		{"cluster not finished bootstrapping: no verdict", []mod{freshStore, initBy("pg-2"), pgStopped, func(o *Observation) { o.Data.SystemID = otherSysID }},
			want{role: cluster.RoleStopped, state: cluster.StateWaiting}},
		{"witness", []mod{func(o *Observation) { o.Self.Witness = true }},
			want{role: cluster.RoleWitness, state: cluster.StateRunning}},
		{"witness with the store down and odd data", []mod{storeUnreachable, func(o *Observation) {
			o.Self.Witness = true
			o.Data = Data{Kind: DataInvalid}
		}},
			want{role: cluster.RoleWitness, state: cluster.StateRunning}},
		{"witness holding nothing while no leader", []mod{race, func(o *Observation) { o.Self.Witness = true }},
			want{role: cluster.RoleWitness, state: cluster.StateRunning}},
	})
}

// ---------------------------------------------------------------------------
// The primary: healthy, fencing, crashes.
// ---------------------------------------------------------------------------

func TestPrimary(t *testing.T) {
	run(t, []scenario{
		{"healthy primary", []mod{primary},
			want{role: cluster.RolePrimary, state: cluster.StateRunning,
				actions: []string{"publish-optime", "ensure-slots", "ensure-roles", "move-raft-leader"}, slots: []string{"pg_1", "pg_2"}}},
		{"slots: every other registered database member, sanitised, no witness", []mod{primary,
			register(cluster.MemberInfo{Name: "pg-3", Host: "10.0.0.13", Port: 5432, Tags: map[string]string{"nofailover": "true"}}),
			register(cluster.MemberInfo{Name: "arbiter-a-1", Witness: true}),
			register(cluster.MemberInfo{Name: "db-eu-west-7", Host: "10.1.0.7", Port: 5432})},
			want{role: cluster.RolePrimary, state: cluster.StateRunning,
				actions: []string{"publish-optime", "ensure-slots", "ensure-roles", "move-raft-leader"},
				slots:   []string{"db_eu_west_7", "pg_1", "pg_2", "pg_3"}}},
		{"slots: a lone primary keeps none", []mod{primary, unregister("pg-1"), unregister("pg-2")},
			want{role: cluster.RolePrimary, state: cluster.StateRunning,
				actions: []string{"publish-optime", "ensure-slots", "ensure-roles", "move-raft-leader"}, slots: []string{}}},
		{"healthy primary forgets memory", []mod{primary, memory(Memory{PrimaryDownSince: now - time.Second, BehindSince: now})},
			want{role: cluster.RolePrimary, state: cluster.StateRunning,
				actions: []string{"publish-optime", "ensure-slots", "ensure-roles", "move-raft-leader"}}},
	})
}

func TestFencing(t *testing.T) {
	run(t, []scenario{
		{"lease deadline exactly at the fence margin", []mod{primary, deadlineIn(time.Second)},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence", "release-leader"}}},
		{"lease deadline inside the fence margin", []mod{primary, deadlineIn(300 * time.Millisecond)},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence", "release-leader"}}},
		{"lease deadline passed", []mod{primary, deadlineIn(-time.Second)},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence", "release-leader"}}},
		{"lease deadline just outside the margin", []mod{primary, deadlineIn(time.Second + time.Millisecond)},
			want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"publish-optime", "ensure-slots", "ensure-roles", "move-raft-leader"}}},
		{"lease expiring while PostgreSQL is down: fence and release", []mod{primary, pgStopped, deadlineIn(500 * time.Millisecond)},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence", "release-leader"}}},
		{"store down, lease about to expire", []mod{primary, storeUnreachable, deadlineIn(500 * time.Millisecond)},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}, msg: []string{"lease"}}},
		{"store down, lease at the margin", []mod{primary, storeUnreachable, deadlineIn(time.Second)},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"store down, lease comfortably valid: keep serving", []mod{primary, storeUnreachable, deadlineIn(3 * time.Second),
			memory(Memory{PrimaryDownSince: 7 * time.Second})},
			want{role: cluster.RolePrimary, state: cluster.StateRunning, msg: []string{"3s"},
				memory: Memory{PrimaryDownSince: 7 * time.Second}}},
		{"store down, lease valid but the last read showed another leader", []mod{primary, leaderIs("pg-2"), storeUnreachable, deadlineIn(3 * time.Second)},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"store down, lease valid but the last read showed no leader", []mod{primary, noLeaderKey, storeUnreachable, deadlineIn(3 * time.Second)},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"store down, key bound to another lease of ours", []mod{primary, storeUnreachable, deadlineIn(3 * time.Second),
			func(o *Observation) { o.View.Leader.LeaseID = 0x777 }},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"store down, lease lost", []mod{primary, storeUnreachable, func(o *Observation) { o.Lease = Lease{Deadline: o.Now + 3*time.Second} }},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"store down, empty view at start-up, writable PostgreSQL", []mod{primary, storeUnreachable, func(o *Observation) { o.View = cluster.View{} }},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"a primary that does not answer, another member holds the key: fence", []mod{primary, leaderIs("pg-2"),
			func(o *Observation) { o.PG.Ready, o.PG.RunsAsPrimary = false, true }},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}, msg: []string{"does not answer"}}},
		{"a primary that does not answer, no leader key: fence", []mod{primary, noLeaderKey,
			func(o *Observation) { o.PG.Ready, o.PG.RunsAsPrimary = false, true }},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"store down, a primary that does not answer, lease about to expire: fence", []mod{primary, storeUnreachable, deadlineIn(500 * time.Millisecond),
			func(o *Observation) { o.PG.Ready, o.PG.RunsAsPrimary = false, true }},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"a standby that does not answer, another member holds the key: left alone", []mod{leaderIs("pg-2"), pgStarting},
			want{role: cluster.RoleReplica, state: cluster.StateStarting}},
		{"store down, replica waits and keeps memory", []mod{storeUnreachable, memory(Memory{BehindSince: 90 * time.Second})},
			want{role: cluster.RoleReplica, state: cluster.StateWaiting, memory: Memory{BehindSince: 90 * time.Second}}},
		{"store down, stopped member waits", []mod{storeUnreachable, pgStopped},
			want{role: cluster.RoleStopped, state: cluster.StateWaiting}},
		{"store down, primary PostgreSQL down: nothing starts", []mod{primary, storeUnreachable, pgStopped, memory(Memory{PrimaryDownSince: 95 * time.Second})},
			want{role: cluster.RoleStopped, state: cluster.StateWaiting, memory: Memory{PrimaryDownSince: 95 * time.Second}}},
		{"writable while another member holds the key", []mod{writable},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}, msg: []string{"pg-0"}}},
		{"writable with no leader key", []mod{race, writable},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"our name in the key under another lease, writable", []mod{primary, func(o *Observation) { o.View.Leader.LeaseID = peerLease }},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"our name in the key under another lease, not writable", []mod{primary, func(o *Observation) {
			o.View.Leader.LeaseID = peerLease
			o.PG.InRecovery = true
		}},
			want{role: cluster.RoleReplica, state: cluster.StateWaiting, actions: []string{"delete-stale-leader"}}},
		{"our name in the key under another lease, stopped", []mod{primary, pgStopped, func(o *Observation) { o.View.Leader.LeaseID = peerLease }},
			want{role: cluster.RoleStopped, state: cluster.StateWaiting, actions: []string{"delete-stale-leader"}}},
		{"our key and lease id but the lease is lost", []mod{primary, pgStopped, func(o *Observation) { o.Lease.Held = false }},
			want{role: cluster.RoleStopped, state: cluster.StateWaiting, actions: []string{"delete-stale-leader"}}},
		{"our key and lease id, lease lost, still writable", []mod{primary, func(o *Observation) { o.Lease.Held = false }},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
		{"writable but not ready is not writable", []mod{race, writable, func(o *Observation) { o.PG.Ready = false }},
			want{role: cluster.RoleStandbyNoLeader, state: cluster.StateStarting}},
	})
}

func TestPrimaryCrash(t *testing.T) {
	down := func(since time.Duration) mod { return memory(Memory{PrimaryDownSince: since}) }
	timeout := testSettings().PrimaryStartTimeout
	run(t, []scenario{
		{"first sight of a stopped primary: restart in place", []mod{primary, pgStopped},
			want{role: cluster.RolePrimary, state: cluster.StateCrashed, actions: []string{"start-primary"},
				memory: Memory{PrimaryDownSince: now}}},
		{"cleanly shut down primary data restarts as primary", []mod{primary, pgStopped, control(ControlShutDown)},
			want{role: cluster.RolePrimary, state: cluster.StateCrashed, actions: []string{"start-primary"},
				memory: Memory{PrimaryDownSince: now}}},
		{"crash-recovery primary data restarts as primary", []mod{primary, pgStopped, control(ControlInCrashRecovery)},
			want{role: cluster.RolePrimary, state: cluster.StateCrashed, actions: []string{"start-primary"},
				memory: Memory{PrimaryDownSince: now}}},
		{"still down, within the timeout: retry and remember since when", []mod{primary, pgStopped, down(now - 3*time.Second)},
			want{role: cluster.RolePrimary, state: cluster.StateCrashed, actions: []string{"start-primary"},
				memory: Memory{PrimaryDownSince: now - 3*time.Second}}},
		{"down for exactly primary_start_timeout: one more try", []mod{primary, pgStopped, down(now - timeout)},
			want{role: cluster.RolePrimary, state: cluster.StateCrashed, actions: []string{"start-primary"},
				memory: Memory{PrimaryDownSince: now - timeout}}},
		{"down beyond primary_start_timeout: give up the key", []mod{primary, pgStopped, down(now - timeout - time.Millisecond)},
			want{role: cluster.RolePrimary, state: cluster.StateFailed, actions: []string{"release-leader"},
				msg: []string{"primary_start_timeout", "10s"}}},
		{"running but not ready beyond the timeout: fence and give up", []mod{primary, pgStarting, down(now - 2*timeout)},
			want{role: cluster.RolePrimary, state: cluster.StateFailed, actions: []string{"fence", "release-leader"}}},
		{"running but not ready within the timeout: wait", []mod{primary, pgStarting, down(now - time.Second)},
			want{role: cluster.RolePrimary, state: cluster.StateStarting, memory: Memory{PrimaryDownSince: now - time.Second}}},
		{"running but not ready, first sight: wait and remember", []mod{primary, pgStarting},
			want{role: cluster.RolePrimary, state: cluster.StateStarting, memory: Memory{PrimaryDownSince: now}}},
		{"standby data while holding the key: start in recovery", []mod{primary, pgStopped, control(ControlShutDownRecovery)},
			want{role: cluster.RolePrimary, state: cluster.StateCrashed, actions: []string{"start-standby"},
				memory: Memory{PrimaryDownSince: now}}},
		{"archive-recovery data while holding the key: start in recovery", []mod{primary, pgStopped, control(ControlInArchiveRecovery)},
			want{role: cluster.RolePrimary, state: cluster.StateCrashed, actions: []string{"start-standby"},
				memory: Memory{PrimaryDownSince: now}}},
		{"holding the key with a standby running: finish the promotion", []mod{primary, func(o *Observation) { o.PG.InRecovery = true }},
			want{role: cluster.RolePrimary, state: cluster.StateStarting, actions: promotion, slots: []string{"pg_1", "pg_2"}}},
		{"a lease about to expire wins over restarting", []mod{primary, pgStopped, down(now - time.Second), deadlineIn(time.Second / 2)},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence", "release-leader"}}},
	})
}

// ---------------------------------------------------------------------------
// Followers.
// ---------------------------------------------------------------------------

func TestFollower(t *testing.T) {
	behind := func(o *Observation) {
		o.PG.Streaming = false
		o.PG.Position = pos(tl-1, lsn+5*mib)
	}
	rewindAfter := testSettings().RewindAfter
	notReady := status("pg-0", func(st *cluster.MemberStatus) { st.State = cluster.StateStarting })
	run(t, []scenario{
		{"old primary data, ready leader: rewind then follow", []mod{pgStopped, control(ControlInProduction)},
			want{role: cluster.RoleReplica, state: cluster.StateRewinding, actions: []string{"rewind:pg-0", "start-standby:pg-0"}}},
		{"cleanly shut down primary data: rewind then follow", []mod{pgStopped, control(ControlShutDown)},
			want{role: cluster.RoleReplica, state: cluster.StateRewinding, actions: []string{"rewind:pg-0", "start-standby:pg-0"}}},
		{"crash-recovery primary data: rewind then follow", []mod{pgStopped, control(ControlInCrashRecovery)},
			want{role: cluster.RoleReplica, state: cluster.StateRewinding, actions: []string{"rewind:pg-0", "start-standby:pg-0"}}},
		{"old primary data after a failed rewind: reinit", []mod{pgStopped, control(ControlShutDown),
			func(o *Observation) { o.LastRewindError = "could not find common ancestor" }},
			want{role: cluster.RoleReplica, state: cluster.StateCloning, actions: []string{"reinit:pg-0", "start-standby:pg-0"},
				reason: []string{"could not find common ancestor", "pg-0"}}},
		{"old primary data, leader not ready: wait", []mod{pgStopped, control(ControlInProduction), notReady},
			want{role: cluster.RoleStopped, state: cluster.StateWaiting, msg: []string{"pg-0"}}},
		{"old primary data, leader has no status: wait", []mod{pgStopped, control(ControlInProduction), dropStatus("pg-0")},
			want{role: cluster.RoleStopped, state: cluster.StateWaiting}},
		{"old primary data, failed rewind, leader not ready: wait, never reinit blind", []mod{pgStopped, control(ControlInProduction), notReady,
			func(o *Observation) { o.LastRewindError = "x" }},
			want{role: cluster.RoleStopped, state: cluster.StateWaiting}},
		{"clean standby data: start following", []mod{pgStopped, control(ControlShutDownRecovery)},
			want{role: cluster.RoleReplica, state: cluster.StateStarting, actions: []string{"start-standby:pg-0"}}},
		{"archive-recovery data: start following even if the leader is not ready", []mod{pgStopped, notReady},
			want{role: cluster.RoleReplica, state: cluster.StateStarting, actions: []string{"start-standby:pg-0"}}},
		{"standby data after a failed rewind: reinit, never start a half-rewound directory", []mod{pgStopped, control(ControlShutDownRecovery),
			func(o *Observation) { o.LastRewindError = "pg_rewind: fatal: could not open file" }},
			want{role: cluster.RoleReplica, state: cluster.StateCloning, actions: []string{"reinit:pg-0", "start-standby:pg-0"},
				reason: []string{"could not open file"}}},
		{"standby data after a failed rewind, leader not ready: wait", []mod{pgStopped, control(ControlShutDownRecovery), notReady,
			func(o *Observation) { o.LastRewindError = "x" }},
			want{role: cluster.RoleStopped, state: cluster.StateWaiting}},
		{"following another upstream: follow the leader", []mod{func(o *Observation) { o.PG.Upstream = "pg-2" }},
			want{role: cluster.RoleReplica, state: cluster.StateRunning, actions: []string{"follow:pg-0"}}},
		{"following no upstream: follow the leader", []mod{func(o *Observation) { o.PG.Upstream = ""; o.PG.Streaming = false }},
			want{role: cluster.RoleReplica, state: cluster.StateRunning, actions: []string{"follow:pg-0"}}},
		{"a new leader: follow it", []mod{leaderIs("pg-2"), status("pg-2", func(st *cluster.MemberStatus) {
			st.Role, st.State = cluster.RolePrimary, cluster.StateRunning
		})},
			want{role: cluster.RoleReplica, state: cluster.StateRunning, actions: []string{"follow:pg-2"}}},
		{"streaming: nothing to do, memory forgotten", []mod{memory(Memory{BehindSince: now - time.Hour, PrimaryDownSince: time.Second})},
			want{role: cluster.RoleReplica, state: cluster.StateStreaming}},
		{"not ready: wait, memory kept", []mod{pgStarting, memory(Memory{BehindSince: now - time.Second})},
			want{role: cluster.RoleReplica, state: cluster.StateStarting, memory: Memory{BehindSince: now - time.Second}}},
		{"not streaming on the leader's timeline: wait, no memory", []mod{func(o *Observation) { o.PG.Streaming = false },
			memory(Memory{BehindSince: now - time.Hour})},
			want{role: cluster.RoleReplica, state: cluster.StateRunning, msg: []string{"not streaming"}}},
		{"not streaming on an older timeline: start the clock", []mod{behind},
			want{role: cluster.RoleReplica, state: cluster.StateRunning, memory: Memory{BehindSince: now},
				msg: []string{"timeline 2", "primary on 3"}}},
		{"older timeline, not yet RewindAfter", []mod{behind, memory(Memory{BehindSince: now - rewindAfter + time.Millisecond})},
			want{role: cluster.RoleReplica, state: cluster.StateRunning, memory: Memory{BehindSince: now - rewindAfter + time.Millisecond}}},
		{"older timeline for RewindAfter: stop, rewind, follow", []mod{behind, memory(Memory{BehindSince: now - rewindAfter})},
			want{role: cluster.RoleReplica, state: cluster.StateRewinding, actions: []string{"stop", "rewind:pg-0", "start-standby:pg-0"}}},
		{"older timeline long past RewindAfter but leader not ready: keep waiting", []mod{behind, notReady, memory(Memory{BehindSince: now - time.Minute})},
			want{role: cluster.RoleReplica, state: cluster.StateRunning, memory: Memory{BehindSince: now - time.Minute}}},
		{"older timeline judged by history when the leader has no status", []mod{behind, dropStatus("pg-0")},
			want{role: cluster.RoleReplica, state: cluster.StateRunning, memory: Memory{BehindSince: now}}},
		{"older timeline while streaming: fine", []mod{behind, func(o *Observation) { o.PG.Streaming = true }},
			want{role: cluster.RoleReplica, state: cluster.StateStreaming}},
		{"nofailover replica follows as usual", []mod{tag("pg-1", "nofailover", "true"), func(o *Observation) { o.PG.Upstream = "" }},
			want{role: cluster.RoleReplica, state: cluster.StateRunning, actions: []string{"follow:pg-0"}}},
	})
}

// ---------------------------------------------------------------------------
// The leader race.
// ---------------------------------------------------------------------------

func TestLeaderRace(t *testing.T) {
	grace := testSettings().StartupGrace
	wait := want{role: cluster.RoleStandbyNoLeader, state: cluster.StateWaiting}
	waitMsg := func(s ...string) want { w := wait; w.msg = s; return w }
	standBack := func(since time.Duration, s ...string) want {
		w := waitMsg(s...)
		w.memory = Memory{PreferWaitSince: since}
		return w
	}
	wins := want{role: cluster.RolePrimary, state: cluster.StateStarting, actions: promotion, slots: []string{"pg_0", "pg_2"}}
	winsMsg := func(s ...string) want { w := wins; w.msg = s; return w }
	run(t, []scenario{
		{"PostgreSQL stopped: start in recovery without upstream", []mod{race, pgStopped},
			want{role: cluster.RoleStandbyNoLeader, state: cluster.StateStarting, actions: []string{"start-standby"}}},
		{"old primary data, stopped: start in recovery without upstream", []mod{race, pgStopped, control(ControlInProduction)},
			want{role: cluster.RoleStandbyNoLeader, state: cluster.StateStarting, actions: []string{"start-standby"}}},
		{"not ready: wait", []mod{race, pgStarting},
			want{role: cluster.RoleStandbyNoLeader, state: cluster.StateStarting}},
		{"best position: promote", []mod{race, statusPos("pg-2", pos(tl, lsn-1))},
			winsMsg("most recent WAL")},
		{"ahead of everyone and of the optime: promote", []mod{race, myPos(pos(tl, lsn+10))},
			wins},
		{"peer with a higher LSN: wait", []mod{race, statusPos("pg-2", pos(tl, lsn+1))},
			waitMsg("pg-2", "more recent WAL")},
		{"peer with a higher LSN that precedes us by name: wait", []mod{race, statusPos("pg-0", pos(tl, lsn+1))},
			waitMsg("pg-0")},
		{"peer on a higher timeline beats our higher LSN", []mod{race, myPos(pos(tl, lsn+100*mib)), statusPos("pg-2", pos(tl+1, 0x10))},
			waitMsg("pg-2")},
		{"our higher timeline beats a peer's higher LSN", []mod{race, myPos(pos(tl+1, 0x10)), statusPos("pg-2", pos(tl, lsn+100*mib))},
			wins},
		{"equal position with a peer that precedes us by name: both race, the CAS picks", []mod{race, status("pg-0", func(st *cluster.MemberStatus) {
			st.Role, st.State, st.Position = cluster.RoleStandbyNoLeader, cluster.StateWaiting, pos(tl, lsn)
		})},
			wins},
		{"equal position, the preceding peer has failed: promote", []mod{race, status("pg-0", func(st *cluster.MemberStatus) {
			st.Role, st.State, st.Position = cluster.RoleStandbyNoLeader, cluster.StateFailed, pos(tl, lsn)
		})},
			wins},
		{"equal position, we precede the peer: promote", []mod{race},
			wins},
		{"equal LSN on an older timeline is behind", []mod{race, myPos(pos(tl, lsn)), statusPos("pg-2", pos(tl+1, lsn))},
			waitMsg("pg-2")},
		{"nofailover: never promotes, even when best", []mod{race, tag("pg-1", "nofailover", "true"), myPos(pos(tl, lsn+mib))},
			waitMsg("nofailover")},
		{"nofailover tag spelled on", []mod{race, tag("pg-1", "nofailover", "ON")},
			waitMsg("nofailover")},
		{"nofailover false does not bar", []mod{race, tag("pg-1", "nofailover", "false")},
			wins},
		{"a nofailover peer ahead does not block", []mod{race, tag("pg-2", "nofailover", "true"), statusPos("pg-2", pos(tl, lsn+mib))},
			wins},
		{"a witness peer ahead does not block", []mod{race,
			register(cluster.MemberInfo{Name: "w-9", Witness: true}),
			status("w-9", func(st *cluster.MemberStatus) { st.Role, st.Position = cluster.RoleStandbyNoLeader, pos(tl+5, lsn) })},
			wins},
		{"an unregistered witness status does not block", []mod{race,
			status("w-9", func(st *cluster.MemberStatus) { st.Role, st.Position = cluster.RoleWitness, pos(tl+5, lsn) })},
			wins},
		{"an unregistered candidate ahead blocks", []mod{race, statusPos("pg-7", pos(tl, lsn+1))},
			waitMsg("pg-7")},
		{"a peer still reporting primary is a lower bound: its higher position blocks the race", []mod{race, status("pg-0", func(st *cluster.MemberStatus) {
			st.Role, st.State, st.Position = cluster.RolePrimary, cluster.StateFailed, pos(tl, lsn+mib)
		})},
			waitMsg("pg-0", "more recent WAL")},
		{"a peer still reporting primary at a lower position does not block", []mod{race, status("pg-0", func(st *cluster.MemberStatus) {
			st.Role, st.State, st.Position = cluster.RolePrimary, cluster.StateFailed, pos(tl, lsn-mib)
		})},
			wins},
		{"lag exactly maximum_lag_on_failover: promote", []mod{race, myPos(pos(tl, lsn-mib)), statusPos("pg-2", pos(tl, lsn-mib))},
			wins},
		{"lag beyond maximum_lag_on_failover: no promotion", []mod{race, myPos(pos(tl, lsn-mib-1)), statusPos("pg-2", pos(tl, 0))},
			waitMsg("1048577 bytes behind", "maximum_lag_on_failover 1048576")},
		{"lag beyond the maximum even when everyone is behind", []mod{race, myPos(pos(tl, lsn-10*mib)), statusPos("pg-2", pos(tl, lsn-11*mib))},
			waitMsg("10485760 bytes")},
		{"lower timeline than the cluster history: no promotion", []mod{race, myPos(pos(tl-1, lsn+100*mib)), statusPos("pg-2", pos(tl-1, 0))},
			waitMsg("timeline 2", "timeline 3")},
		{"history newer than the optime counts", []mod{race, func(o *Observation) {
			o.View.History = append(o.View.History, cluster.HistoryEntry{Timeline: tl + 1, Leader: "pg-0"})
		}},
			waitMsg("timeline 4")},
		{"optime on an older timeline does not measure lag", []mod{race, myPos(pos(tl, 0x10)), statusPos("pg-2", pos(tl, 0)),
			optimeAt(pos(tl-1, lsn+100*mib))},
			wins},
		{"no optime: no lag check", []mod{race, myPos(pos(tl, 0x10)), statusPos("pg-2", pos(tl, 0)), func(o *Observation) { o.View.Optime = nil }},
			wins},
		{"startup grace: behind the optime, a registered member silent: wait", []mod{race, at(5 * time.Second),
			myPos(pos(tl, lsn-100)), statusPos("pg-2", pos(tl, lsn-200))},
			waitMsg("pg-0", "12s")},
		{"startup grace over: promote", []mod{race, at(grace + time.Second),
			myPos(pos(tl, lsn-100)), statusPos("pg-2", pos(tl, lsn-200))},
			wins},
		{"startup grace ends exactly at StartupGrace", []mod{race, at(grace),
			myPos(pos(tl, lsn-100)), statusPos("pg-2", pos(tl, lsn-200))},
			wins},
		// The optime cannot prove we hold everything: the last primary may have
		// committed after losing quorum. Inside the grace, its report is awaited.
		{"startup grace: even at the optime, a silent registered member is awaited", []mod{race, at(time.Second), statusPos("pg-2", pos(tl, lsn-200))},
			waitMsg("pg-0", "report its WAL position")},
		{"startup grace: even ahead of the optime, a silent registered member is awaited", []mod{race, at(time.Second), myPos(pos(tl, lsn+1))},
			waitMsg("pg-0")},
		{"startup grace: a member reporting no position yet is awaited", []mod{race, at(5 * time.Second), myPos(pos(tl, lsn-100)),
			statusPos("pg-2", pos(tl, lsn-200)), status("pg-0", func(st *cluster.MemberStatus) {
				st.Role, st.State, st.Position = cluster.RoleStandbyNoLeader, cluster.StateStarting, cluster.Position{}
			})},
			waitMsg("pg-0")},
		{"startup grace: every registered member reports a position", []mod{race, at(5 * time.Second), myPos(pos(tl, lsn-100)),
			statusPos("pg-2", pos(tl, lsn-200)), status("pg-0", func(st *cluster.MemberStatus) {
				st.Role, st.State, st.Position = cluster.RoleStandbyNoLeader, cluster.StateWaiting, pos(tl, lsn-300)
			})},
			wins},
		{"startup grace: silent nofailover and witness members are not awaited", []mod{race, at(5 * time.Second),
			myPos(pos(tl, lsn-100)), statusPos("pg-2", pos(tl, lsn-200)), tag("pg-0", "nofailover", "1"),
			register(cluster.MemberInfo{Name: "w-1", Witness: true})},
			want{role: cluster.RolePrimary, state: cluster.StateStarting, actions: promotion, slots: []string{"pg_0", "pg_2"}}},
		// An agent that has streamed from a leader since it started is in a
		// running cluster, not one starting again: a primary lost within
		// the grace (the Kubernetes suite's force deletion 17 s after the
		// cluster came up) is replaced at once, not when its pod reports.
		{"startup grace: after streaming from a leader, a silent member is not awaited", []mod{race, at(5 * time.Second),
			myPos(pos(tl, lsn-100)), statusPos("pg-2", pos(tl, lsn-200)), func(o *Observation) { o.Memory.Streamed = true }},
			wins},
		{"startup grace: after streaming, still no promotion behind a reporting member", []mod{race, at(5 * time.Second),
			myPos(pos(tl, lsn-100)), statusPos("pg-2", pos(tl, lsn-50)), func(o *Observation) { o.Memory.Streamed = true }},
			waitMsg("pg-2", "more recent WAL")},
		{"startup grace: the silent member being the only one ahead", []mod{race, at(5 * time.Second),
			myPos(pos(tl, lsn-100)), dropStatus("pg-2")},
			waitMsg("pg-0")},
		// Preference (failover_priority, then the last primary's zone) only
		// chooses between candidates holding the same WAL, for a bounded time.
		{"a peer with a higher failover_priority at the same WAL: stand back", []mod{race, tag("pg-2", "failover_priority", "5")},
			standBack(now, "standing back for pg-2", "failover_priority 5 > 1")},
		{"a peer with a higher failover_priority behind us: promote", []mod{race, tag("pg-2", "failover_priority", "5"), statusPos("pg-2", pos(tl, lsn-1))},
			wins},
		{"our higher failover_priority: promote", []mod{race, tag("pg-1", "failover_priority", "5")},
			wins},
		{"failover_priority 0 is nofailover", []mod{race, tag("pg-1", "failover_priority", "0")},
			waitMsg("nofailover")},
		{"an unreadable failover_priority never promotes", []mod{race, tag("pg-1", "failover_priority", "high")},
			waitMsg("nofailover")},
		{"a peer in the last primary's zone at the same WAL: stand back", []mod{race, tag("pg-0", "zone", "a"), tag("pg-2", "zone", "a"), tag("pg-1", "zone", "b")},
			standBack(now, "standing back for pg-2", "zone a")},
		// The last primary (pg-0 in these observations) ranks after every
		// other candidate, whatever its priority: its record outlives it,
		// and a pod re-created under its name may report the same WAL a
		// second after it left.
		{"the last primary back at the same WAL, in its own zone: not waited for", []mod{race, tag("pg-0", "zone", "a"), tag("pg-2", "zone", "c"), tag("pg-1", "zone", "b"),
			status("pg-0", func(st *cluster.MemberStatus) { st.Position = pos(tl, lsn) })},
			wins},
		{"the last primary's own record, still running, at the same WAL: not waited for", []mod{race, tag("pg-0", "zone", "a"), tag("pg-1", "zone", "b"),
			status("pg-0", func(st *cluster.MemberStatus) {
				st.Role, st.State, st.Position = cluster.RolePrimary, cluster.StateRunning, pos(tl, lsn)
			})},
			wins},
		{"the last primary with a higher failover_priority: not waited for either", []mod{race, tag("pg-0", "failover_priority", "5"),
			status("pg-0", func(st *cluster.MemberStatus) { st.Position = pos(tl, lsn) })},
			wins},
		{"this member was the last primary: stand back for a peer at the same WAL", []mod{race, lastLeader("pg-1")},
			standBack(now, "standing back for pg-2", "this member was the last primary")},
		{"this member was the last primary, with a higher failover_priority: stand back all the same", []mod{race, lastLeader("pg-1"), tag("pg-1", "failover_priority", "5")},
			standBack(now, "standing back for pg-2", "this member was the last primary")},
		{"this member was the last primary, the peer behind: promote", []mod{race, lastLeader("pg-1"), statusPos("pg-2", pos(tl, lsn-1))},
			wins},
		{"this member was the last primary, standing back ends after two loops", []mod{race, lastLeader("pg-1"),
			func(o *Observation) { o.Memory.PreferWaitSince = now - 2*time.Second }},
			winsMsg("preferred pg-2 did not take over")},
		{"both in other zones: no preference", []mod{race, tag("pg-0", "zone", "a"), tag("pg-2", "zone", "c"), tag("pg-1", "zone", "b")},
			wins},
		{"priority ranks before zone", []mod{race, tag("pg-0", "zone", "a"), tag("pg-2", "zone", "a"), tag("pg-1", "zone", "b"), tag("pg-1", "failover_priority", "2")},
			wins},
		{"a preferred peer that is failing is not waited for", []mod{race, tag("pg-2", "failover_priority", "5"),
			status("pg-2", func(st *cluster.MemberStatus) { st.State = cluster.StateFailed })},
			wins},
		{"standing back ends after two loops", []mod{race, tag("pg-2", "failover_priority", "5"),
			func(o *Observation) { o.Memory.PreferWaitSince = now - 2*time.Second }},
			winsMsg("preferred pg-2 did not take over")},
		{"standing back continues within two loops", []mod{race, tag("pg-2", "failover_priority", "5"),
			func(o *Observation) { o.Memory.PreferWaitSince = now - 1500*time.Millisecond }},
			standBack(now-1500*time.Millisecond, "standing back for pg-2")},
		{"a stand-back start from an earlier spell is ignored", []mod{race, tag("pg-2", "failover_priority", "5"),
			func(o *Observation) { o.Memory.PreferWaitSince = now - time.Minute }},
			standBack(now, "standing back for pg-2")},
		{"synchronous mode: a preferred peer outside the synchronous record is not waited for", []mod{race, tag("pg-2", "failover_priority", "5"),
			func(o *Observation) {
				o.Settings.SyncMode = cluster.SyncOn
				o.View.Sync = &cluster.SyncState{Leader: "pg-0", Members: []string{"pg-1"}, Quorum: 1}
			}},
			want{role: cluster.RolePrimary, state: cluster.StateStarting, actions: []string{"acquire-leader", "put-sync", "ensure-slots", "promote", "record-promotion", "publish-optime"}}},
	})
}

// ---------------------------------------------------------------------------
// Paused cluster.
// ---------------------------------------------------------------------------

func TestPaused(t *testing.T) {
	run(t, []scenario{
		{"paused healthy primary publishes its position only", []mod{pausedCluster, primary},
			want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"publish-optime"}, msg: []string{"paused"}}},
		{"paused primary with an expiring lease is not fenced", []mod{pausedCluster, primary, deadlineIn(0)},
			want{role: cluster.RolePrimary, state: cluster.StateRunning, actions: []string{"publish-optime"}}},
		{"paused primary crashed: not restarted, memory kept", []mod{pausedCluster, primary, pgStopped, memory(Memory{PrimaryDownSince: 3 * time.Second})},
			want{role: cluster.RoleStopped, state: cluster.StateStopped, memory: Memory{PrimaryDownSince: 3 * time.Second}}},
		{"paused, writable without the key: left alone", []mod{pausedCluster, writable},
			want{role: cluster.RolePrimary, state: cluster.StateRunning}},
		{"paused, no leader, best candidate: no promotion", []mod{pausedCluster, race},
			want{role: cluster.RoleReplica, state: cluster.StateRunning}},
		{"paused replica stopped: not started", []mod{pausedCluster, pgStopped},
			want{role: cluster.RoleStopped, state: cluster.StateStopped}},
		{"paused old primary data: not rewound", []mod{pausedCluster, pgStopped, control(ControlInProduction), func(o *Observation) { o.LastRewindError = "x" }},
			want{role: cluster.RoleStopped, state: cluster.StateStopped}},
		{"paused empty member: no clone", []mod{pausedCluster, emptyData},
			want{role: cluster.RoleUninitialized, state: cluster.StateStopped}},
		{"paused replica behind for long: no rewind", []mod{pausedCluster, func(o *Observation) {
			o.PG.Streaming, o.PG.Position = false, pos(tl-1, lsn)
		}, memory(Memory{BehindSince: time.Second})},
			want{role: cluster.RoleReplica, state: cluster.StateRunning, memory: Memory{BehindSince: time.Second}}},
		{"paused replica streaming", []mod{pausedCluster},
			want{role: cluster.RoleReplica, state: cluster.StateStreaming}},
		{"paused, stale key of ours: not deleted", []mod{pausedCluster, primary, func(o *Observation) { o.View.Leader.LeaseID = 1; o.PG.InRecovery = true }},
			want{role: cluster.RoleReplica, state: cluster.StateRunning}},
		{"store down while paused: the lease rule still fences", []mod{pausedCluster, primary, storeUnreachable, deadlineIn(0)},
			want{role: cluster.RoleStopped, state: cluster.StateFenced, actions: []string{"fence"}}},
	})
}

// TestSequences walks multi-loop sequences by hand, applying what the agent
// would have done (sometimes only a prefix of the actions), and checks that
// each next decision continues the work.
func TestSequences(t *testing.T) {
	t.Run("bootstrap to primary", func(t *testing.T) {
		o := build(freshStore, emptyData, self("pg-0"))
		steps := [][]string{
			{"claim-init", "initdb", "acquire-leader", "start-primary"},
		}
		d := Decide(o)
		if got := acts(d.Actions); !slices.Equal(got, steps[0]) {
			t.Fatalf("step 1: %q", got)
		}
		// initdb done, the acquire failed (agent stopped there).
		initBy("pg-0")(&o)
		o.Data = Data{Kind: DataValid, SystemID: sysID, ControlState: ControlShutDown}
		if got := acts(Decide(o).Actions); !slices.Equal(got, []string{"acquire-leader"}) {
			t.Fatalf("after initdb: %q", got)
		}
		leaderIs("pg-0")(&o)
		if got := acts(Decide(o).Actions); !slices.Equal(got, []string{"start-primary"}) {
			t.Fatalf("holding the key: %q", got)
		}
		o.PG = PG{Running: true, Ready: true, SystemID: sysID, Position: pos(1, 0x1000000)}
		if got := acts(Decide(o).Actions); !slices.Equal(got, []string{"finish-init", "publish-optime"}) {
			t.Fatalf("ready: %q", got)
		}
		o.View.Init = cluster.InitState{Present: true, SystemID: sysID}
		o.View.Config = &cluster.Config{}
		d = Decide(o)
		if d.Role != cluster.RolePrimary || !slices.Equal(acts(d.Actions), []string{"publish-optime", "ensure-slots", "ensure-roles", "move-raft-leader"}) {
			t.Fatalf("bootstrapped: %s %q", d.Role, acts(d.Actions))
		}
	})
	t.Run("primary crash gives up after the timeout", func(t *testing.T) {
		o := build(primary, pgStopped)
		for i := 0; ; i++ {
			d := Decide(o)
			if i > 20 {
				t.Fatalf("never gave up: %q", acts(d.Actions))
			}
			if slices.Contains(acts(d.Actions), "release-leader") {
				if o.Now-now <= testSettings().PrimaryStartTimeout {
					t.Fatalf("gave up too early at %s", o.Now)
				}
				break
			}
			o.Memory = d.Memory
			o.Now += time.Second
			o.Lease.Deadline = o.Now + 3*time.Second
		}
	})
	t.Run("behind replica rewinds after RewindAfter, then re-clones after a failed rewind", func(t *testing.T) {
		o := build(func(o *Observation) { o.PG.Streaming = false; o.PG.Position = pos(tl-1, lsn) })
		var d Decision
		for i := 0; i < 10; i++ {
			d = Decide(o)
			if len(d.Actions) > 0 {
				break
			}
			o.Memory = d.Memory
			o.Now += time.Second
		}
		if got := acts(d.Actions); !slices.Equal(got, []string{"stop", "rewind:pg-0", "start-standby:pg-0"}) {
			t.Fatalf("rewind: %q", got)
		}
		if o.Now-now < testSettings().RewindAfter {
			t.Fatalf("rewound after %s", o.Now-now)
		}
		// stop ran, the rewind failed.
		o.Memory = d.Memory
		o.PG = PG{}
		o.Data.ControlState = ControlShutDownRecovery
		o.LastRewindError = "pg_rewind: could not find previous WAL record"
		if got := acts(Decide(o).Actions); !slices.Equal(got, []string{"reinit:pg-0", "start-standby:pg-0"}) {
			t.Fatalf("after a failed rewind: %q", got)
		}
	})
}

// WritableUntil is the fence point Decide enforces: FenceMargin before the
// lease deadline while the view shows the key bound to that lease, or
// before the end of the failsafe promises, whichever is later.
func TestWritableUntil(t *testing.T) {
	s := Settings{TTL: 4 * time.Second, FenceMargin: time.Second}
	self := cluster.MemberInfo{Name: "pg-0"}
	keyed := cluster.View{Leader: &cluster.Leader{Name: "pg-0", LeaseID: 7}}
	lease := Lease{Held: true, ID: 7, Deadline: 10 * time.Second}
	for _, c := range []struct {
		name   string
		view   cluster.View
		lease  Lease
		mem    Memory
		until  time.Duration
		wantOK bool
	}{
		{"lease", keyed, lease, Memory{}, 9 * time.Second, true},
		{"failsafe beyond the lease", keyed, lease, Memory{FailsafeUntil: 12 * time.Second}, 11 * time.Second, true},
		{"lease beyond the failsafe", keyed, lease, Memory{FailsafeUntil: 8 * time.Second}, 9 * time.Second, true},
		{"key bound to another lease", keyed, Lease{Held: true, ID: 8, Deadline: 10 * time.Second}, Memory{}, 0, false},
		{"another member's key", cluster.View{Leader: &cluster.Leader{Name: "pg-1", LeaseID: 7}}, lease, Memory{}, 0, false},
		{"no key, failsafe only", cluster.View{}, Lease{}, Memory{FailsafeUntil: 12 * time.Second}, 11 * time.Second, true},
		{"nothing", cluster.View{}, lease, Memory{}, 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := Observation{Self: self, Settings: s, View: c.view, Lease: c.lease}
			until, ok := WritableUntil(o, c.mem)
			if ok != c.wantOK || (ok && until != c.until) {
				t.Errorf("WritableUntil = %s, %v; want %s, %v", until, ok, c.until, c.wantOK)
			}
		})
	}
}

// The store came back after the primary served under the failsafe: it took
// its key back, but its lease renewal has not gone through yet. The
// promises still run, so it keeps serving (and remembers them) instead of
// fencing — fencing there made it win the next race and promote itself on
// a new timeline (test/kube APIServerUnreachable). Once they end too, it
// fences.
func TestKeyBackUnderFailsafeKeepsServing(t *testing.T) {
	o := build(primary)
	o.Lease.Deadline = now - time.Second
	o.Memory.FailsafeUntil = now + 3*time.Second
	d := Decide(o)
	if d.Role != cluster.RolePrimary || slices.Contains(acts(d.Actions), "fence") {
		t.Fatalf("under the failsafe with a stale lease: %s %q (%s)", d.Role, acts(d.Actions), d.Message)
	}
	if d.Memory.FailsafeUntil != o.Memory.FailsafeUntil {
		t.Fatalf("FailsafeUntil forgotten: %s", d.Memory.FailsafeUntil)
	}
	o.Memory = d.Memory
	o.Now = o.Memory.FailsafeUntil - o.Settings.FenceMargin
	if got := acts(Decide(o).Actions); len(got) == 0 || got[0] != "fence" {
		t.Fatalf("promises and lease both ended: %q, want a fence first", got)
	}
}

// A failsafe round confirmed in a loop where the store answers counts as
// one where it does not: the primary, without its key, takes it back
// rather than fencing.
func TestFailsafeRoundWithStoreBack(t *testing.T) {
	o := build(primary, noLeaderKey)
	o.Memory.FailsafeUntil = now // the last promises just ran out
	if got := acts(Decide(o).Actions); len(got) == 0 || got[0] != "fence" {
		t.Fatalf("without a new round: %q, want a fence first", got)
	}
	o.Failsafe.AllConfirmedAt = now - 100*time.Millisecond
	d := Decide(o)
	if got := acts(d.Actions); !slices.Contains(got, "acquire-leader") || slices.Contains(got, "fence") {
		t.Fatalf("with a round confirmed this loop: %q (%s), want the key taken back", got, d.Message)
	}
	if want := o.Failsafe.AllConfirmedAt + o.Settings.TTL; d.Memory.FailsafeUntil != want {
		t.Fatalf("FailsafeUntil = %s, want %s", d.Memory.FailsafeUntil, want)
	}
}

func TestNeedsFailsafeRound(t *testing.T) {
	in := func(o *Observation) { o.Memory.FailsafeUntil = now + 2*time.Second }
	storeDown := func(o *Observation) { o.StoreOK = false }
	staleLease := func(o *Observation) { o.Lease.Deadline = now }
	for _, c := range []struct {
		name string
		mods []mod
		want bool
	}{
		{"healthy primary", []mod{primary}, false},
		{"replica", nil, false},
		{"store down, key last seen ours", []mod{primary, storeDown}, true},
		{"store down, key last seen another's", []mod{primary, leaderIs("pg-1"), storeDown}, false},
		{"store down, already under the failsafe", []mod{primary, noLeaderKey, in, storeDown}, true},
		{"store down, the primary's status query timed out", []mod{primary, storeDown, func(o *Observation) { o.PG.Ready, o.PG.RunsAsPrimary = false, true }}, true},
		{"store back, no key, under the failsafe", []mod{primary, noLeaderKey, in}, true},
		{"store back, no key, failsafe over", []mod{primary, noLeaderKey}, false},
		{"store back, key ours but lease stale, under the failsafe", []mod{primary, staleLease, in}, true},
		{"store back, key ours and lease live, under the failsafe", []mod{primary, in}, false},
		{"store back, another member's key", []mod{primary, leaderIs("pg-1"), in}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := NeedsFailsafeRound(build(c.mods...)); got != c.want {
				t.Errorf("NeedsFailsafeRound = %v, want %v", got, c.want)
			}
		})
	}
}

// A primary whose postmaster accepts no new connection (frozen, hung) but
// whose open sessions go on stays the primary — the proxy keeps those
// sessions — for primary_start_timeout, then fences and gives the key up.
func TestPrimaryRefusingConnections(t *testing.T) {
	o := build(primary)
	o.PG.RefusesConnections = true
	d := Decide(o)
	if d.Role != cluster.RolePrimary || d.State != cluster.StateRunning || d.Memory.PrimaryDownSince != now {
		t.Fatalf("first loop: %s/%s, memory %+v (%s)", d.Role, d.State, d.Memory, d.Message)
	}
	if got := acts(d.Actions); slices.Contains(got, "fence") {
		t.Fatalf("first loop fences: %q", got)
	}
	o.Memory = d.Memory
	o.Now += o.Settings.PrimaryStartTimeout + time.Millisecond
	d = Decide(o)
	if got := acts(d.Actions); !slices.Equal(got, []string{"fence", "release-leader"}) {
		t.Fatalf("after primary_start_timeout: %q (%s), want fence, release-leader", got, d.Message)
	}
	o.PG.RefusesConnections = false
	o.Now = now + time.Second
	if d := Decide(o); d.Memory.PrimaryDownSince != 0 {
		t.Fatalf("accepting again: PrimaryDownSince %s kept", d.Memory.PrimaryDownSince)
	}
}

func TestRefusesPromise(t *testing.T) {
	leaseGone := func(o *Observation) { o.Lease.Deadline = now }
	for _, c := range []struct {
		name string
		mods []mod
		want bool
	}{
		{"replica", nil, false},
		{"writable primary", []mod{primary}, true},
		{"primary that does not answer", []mod{primary, func(o *Observation) { o.PG.Ready, o.PG.RunsAsPrimary = false, true }}, true},
		{"key holder promoting", []mod{leaderIs("pg-1")}, true},
		{"fenced, stale view names it, lease ran out", []mod{leaderIs("pg-1"), pgStopped, leaseGone}, false},
		{"fenced, stale view names it, lease not held", []mod{leaderIs("pg-1"), pgStopped, func(o *Observation) { o.Lease.Held = false }}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := RefusesPromise(build(c.mods...)); got != c.want {
				t.Errorf("RefusesPromise = %v, want %v", got, c.want)
			}
		})
	}
}
