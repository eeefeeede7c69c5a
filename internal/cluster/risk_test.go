package cluster

import (
	"errors"
	"strings"
	"testing"
)

func riskView() View {
	return View{
		Members: map[string]MemberInfo{"pg-0": {Name: "pg-0"}, "pg-1": {Name: "pg-1"}, "pg-2": {Name: "pg-2"}, "w-0": {Name: "w-0", Witness: true}},
		Statuses: map[string]MemberStatus{
			"pg-1": {Name: "pg-1", Position: Position{Timeline: 1, LSN: 0x5000000}},
			"pg-2": {Name: "pg-2", Position: Position{Timeline: 1, LSN: 0x5100000}},
			"w-0":  {Name: "w-0"},
		},
		Optime: &Optime{Position: Position{Timeline: 1, LSN: 0x5200000}, Leader: "pg-0"},
	}
}

func TestAssessFailover(t *testing.T) {
	v := riskView()
	r := AssessFailover(v, "pg-1")
	if !r.AtRisk() || r.BehindLast != 0x200000 || r.MostAdvanced != "pg-2" || r.BehindMost != 0x100000 || r.Diverged {
		t.Fatalf("less advanced candidate: %+v", r)
	}
	want := "pg-1 is at 0/5000000 (timeline 1), 2097152 bytes behind the last known primary position 0/5200000 (timeline 1), published by pg-0; the most advanced member is pg-2 at 0/5100000 (timeline 1), 1048576 bytes ahead of pg-1"
	if got := r.String(); got != want {
		t.Fatalf("message:\n got %s\nwant %s", got, want)
	}

	r = AssessFailover(v, "pg-2")
	if !r.AtRisk() || r.BehindLast != 0x100000 || r.BehindMost != 0 || !strings.Contains(r.String(), "no reporting member is ahead of pg-2") {
		t.Fatalf("most advanced candidate behind the optime: %+v %s", r, r)
	}

	v.Optime.Position.LSN = 0x5100000
	if r = AssessFailover(v, "pg-2"); r.AtRisk() {
		t.Fatalf("candidate holding everything known is not at risk: %+v %s", r, r)
	}

	v.Optime = nil
	if r = AssessFailover(v, "pg-2"); r.AtRisk() || !strings.Contains(r.String(), "no primary position was ever published") {
		t.Fatalf("no optime: %+v %s", r, r)
	}

	v = riskView()
	v.Statuses["pg-1"] = MemberStatus{Name: "pg-1"}
	if r = AssessFailover(v, "pg-1"); !r.AtRisk() || !strings.Contains(r.String(), "pg-1 reports no WAL position") {
		t.Fatalf("no position: %+v %s", r, r)
	}

	// Older timeline with a higher LSN: diverged, bytes unknown.
	v = riskView()
	v.Optime.Position = Position{Timeline: 2, LSN: 0x5000000}
	v.Statuses["pg-1"] = MemberStatus{Name: "pg-1", Position: Position{Timeline: 1, LSN: 0x5080000}}
	v.Statuses["pg-2"] = MemberStatus{Name: "pg-2", Position: Position{Timeline: 2, LSN: 0x5000000}}
	if r = AssessFailover(v, "pg-1"); !r.AtRisk() || !r.Diverged || !strings.Contains(r.String(), "older timeline") {
		t.Fatalf("diverged: %+v %s", r, r)
	}
	// Older timeline, below: an exact count across the switch.
	v.Statuses["pg-1"] = MemberStatus{Name: "pg-1", Position: Position{Timeline: 1, LSN: 0x4000000}}
	if r = AssessFailover(v, "pg-1"); r.Diverged || r.BehindLast != 0x1000000 {
		t.Fatalf("older timeline below: %+v", r)
	}
}

func TestAddDiscard(t *testing.T) {
	hist := []HistoryEntry{{Timeline: 2, SwitchLSN: 0x3000000}, {Timeline: 3, SwitchLSN: 0x5000000}}
	d := Discard{Member: "pg-0", Timeline: 2, End: 0x5300000}
	out, err := AddDiscard(hist, 0x5000000, d)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist[1].Discarded) != 0 {
		t.Fatal("AddDiscard modified its input")
	}
	if len(out[1].Discarded) != 1 || out[1].Discarded[0] != d || out[1].Bytes(d) != 0x300000 {
		t.Fatalf("recorded on the wrong entry: %+v", out)
	}
	if _, err := AddDiscard(hist, 0x4000000, d); !errors.Is(err, ErrNoBranch) {
		t.Fatalf("no entry branches at 0/4000000: err %v", err)
	}
	if _, err := AddDiscard(hist, 0x3000000, Discard{Timeline: 2}); !errors.Is(err, ErrNoBranch) {
		t.Fatalf("an entry of the discard's own timeline does not branch off it: err %v", err)
	}
	if (HistoryEntry{SwitchLSN: 10}).Bytes(Discard{End: 5}) != 0 {
		t.Fatal("an end before the switch point discards nothing")
	}
}
