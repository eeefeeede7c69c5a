package cluster

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

func TestReplayedPosition(t *testing.T) {
	recv := Position{Timeline: 3, LSN: 0x5000000}
	for _, tc := range []struct {
		name   string
		replay LSN
		want   Position
	}{
		{"not reported (a primary, an older agent)", 0, recv},
		{"replay behind: paused or stuck", 0x4000000, Position{Timeline: 3, LSN: 0x4000000}},
		{"replay caught up", 0x5000000, recv},
		{"replay never beyond the reported position", 0x6000000, recv},
	} {
		if got := ReplayedPosition(recv, tc.replay); got != tc.want {
			t.Errorf("%s: ReplayedPosition(%v, %v) = %v, want %v", tc.name, recv, tc.replay, got, tc.want)
		}
		if got := (MemberStatus{Position: recv, ReplayLSN: tc.replay}).Replayed(); got != tc.want {
			t.Errorf("%s: MemberStatus.Replayed() = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestLagBytes(t *testing.T) {
	ref := Position{Timeline: 2, LSN: 0x3000000}
	for _, tc := range []struct {
		name  string
		ref   Position
		p     Position
		lag   int64
		known bool
	}{
		{"behind", ref, Position{Timeline: 2, LSN: 0x2000000}, 0x1000000, true},
		{"equal", ref, ref, 0, true},
		{"ahead counts as no lag", ref, Position{Timeline: 2, LSN: 0x4000000}, 0, true},
		{"other timeline", ref, Position{Timeline: 1, LSN: 0x2000000}, 0, false},
		{"no position", ref, Position{Timeline: 2}, 0, false},
		{"no reference", Position{Timeline: 2}, Position{Timeline: 2, LSN: 1}, 0, false},
		{"saturates", Position{Timeline: 2, LSN: math.MaxUint64}, Position{Timeline: 2, LSN: 1}, math.MaxInt64, true},
	} {
		lag, known := LagBytes(tc.ref, tc.p)
		if lag != tc.lag || known != tc.known {
			t.Errorf("%s: LagBytes(%v, %v) = %d, %v; want %d, %v", tc.name, tc.ref, tc.p, lag, known, tc.lag, tc.known)
		}
	}
}

func TestPrimaryPosition(t *testing.T) {
	live := Position{Timeline: 2, LSN: 0x3000000}
	opt := &Optime{Position: Position{Timeline: 2, LSN: 0x2000000}, Leader: "pg-0"}
	for _, tc := range []struct {
		name string
		v    View
		want Position
		ok   bool
	}{
		{"the leader's live status", View{Leader: &Leader{Name: "pg-0"}, Optime: opt,
			Statuses: map[string]MemberStatus{"pg-0": {Role: RolePrimary, Position: live}}}, live, true},
		{"a leader not (yet) primary: the optime", View{Leader: &Leader{Name: "pg-0"}, Optime: opt,
			Statuses: map[string]MemberStatus{"pg-0": {Role: RoleReplica, Position: live}}}, opt.Position, true},
		{"a primary without a position: the optime", View{Leader: &Leader{Name: "pg-0"}, Optime: opt,
			Statuses: map[string]MemberStatus{"pg-0": {Role: RolePrimary}}}, opt.Position, true},
		{"no leader: the optime", View{Optime: opt}, opt.Position, true},
		{"nothing known", View{}, Position{}, false},
	} {
		got, ok := tc.v.PrimaryPosition()
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: PrimaryPosition() = %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

// A status written by an agent that does not know replay_lsn reads as
// replayed up to its position (the old behaviour), and a status that
// reports none writes no key an older reader would trip over.
func TestMemberStatusReplayJSON(t *testing.T) {
	var old MemberStatus
	if err := json.Unmarshal([]byte(`{"name":"pg-1","role":"replica","state":"streaming","position":{"timeline":1,"lsn":"0/3000000"},"updated_at":"2026-01-01T00:00:00Z"}`), &old); err != nil {
		t.Fatal(err)
	}
	if old.ReplayLSN != 0 || old.Replayed() != old.Position {
		t.Errorf("a status without replay_lsn: ReplayLSN %v, Replayed %v; want 0 and the position %v", old.ReplayLSN, old.Replayed(), old.Position)
	}
	b, err := json.Marshal(MemberStatus{Name: "pg-0", Role: RolePrimary, Position: Position{Timeline: 1, LSN: 0x3000000}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "replay_lsn") {
		t.Errorf("a status without a replay position marshals replay_lsn: %s", b)
	}
	b, err = json.Marshal(MemberStatus{Name: "pg-1", Position: Position{Timeline: 1, LSN: 0x3000000}, ReplayLSN: 0x2000000})
	if err != nil {
		t.Fatal(err)
	}
	var back MemberStatus
	if err := json.Unmarshal(b, &back); err != nil || back.ReplayLSN != 0x2000000 || !strings.Contains(string(b), `"replay_lsn":"0/2000000"`) {
		t.Errorf("round trip of a replay position: %s -> %+v (err %v)", b, back, err)
	}
}
