package faults

// Tests of the harness's pure helpers; they need neither root nor
// PostgreSQL.

import (
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/workload"
)

func TestAckGap(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	writes := []workload.Write{
		{Outcome: workload.Acked, End: at(100)},
		{Outcome: workload.Failed, End: at(200)},
		{Outcome: workload.Acked, End: at(900)},
		{Outcome: workload.Unknown, End: at(950)},
		{Outcome: workload.Acked, End: at(1000)},
		{Outcome: workload.Acked, End: at(5000)}, // outside the window
	}
	gap, last := ackGap(writes, at(0), at(2000))
	if gap != time.Second || !last.Equal(at(1000)) {
		t.Fatalf("gap %s last %s, want 1s (1000→2000) and 1000ms", gap, last)
	}
	gap, last = ackGap(nil, at(0), at(2000))
	if gap != 2*time.Second || !last.IsZero() {
		t.Fatalf("no writes: gap %s last %s, want the whole window and no last", gap, last)
	}
}

func TestRunID(t *testing.T) {
	for _, c := range []struct {
		name, id string
		ok       bool
	}{
		{"hf-a1b2-c0pg-0", "a1b2", true},
		{"hf-probe-123", "", false},
		{"hf-zzzz-pg", "", false},
		{"other", "", false},
	} {
		id, ok := runID(c.name, "hf-", "-")
		if id != c.id || ok != c.ok {
			t.Errorf("runID(%q) = %q, %v; want %q, %v", c.name, id, ok, c.id, c.ok)
		}
	}
}

func TestTableName(t *testing.T) {
	if got := tableName("w", "kill -9 primary", "strict"); got != "w_kill_9_primary_strict" {
		t.Fatalf("tableName = %q", got)
	}
}

func TestMakePlanDefaults(t *testing.T) {
	t.Setenv("HOLDFAST_FAULTS", "")
	t.Setenv("HOLDFAST_FAULTS_SCENARIOS", "")
	t.Setenv("HOLDFAST_FAULTS_MODES", "")
	t.Setenv("HOLDFAST_FAULTS_REPORT", "")
	p, err := makePlan()
	if err != nil {
		t.Fatal(err)
	}
	if p.full || p.report != "" || len(p.modes) != 2 {
		t.Fatalf("CI plan: %+v", p)
	}
	for _, sc := range p.scenarios {
		if !sc.CI {
			t.Errorf("CI plan includes %q", sc.Name)
		}
	}
	t.Setenv("HOLDFAST_FAULTS", "full")
	if p, _ = makePlan(); !p.full || len(p.scenarios) != len(scenarios()) || p.report == "" {
		t.Fatalf("full plan: %d scenarios, report %q", len(p.scenarios), p.report)
	}
	t.Setenv("HOLDFAST_FAULTS_MODES", "sometimes")
	if _, err := makePlan(); err == nil {
		t.Fatal("an unknown mode was accepted")
	}
}

// A row over its bound shows the scenario's reason, or says it states
// none; a row within it says yes; a reason only applies to its mode.
func TestFormatRowsMarksOverBound(t *testing.T) {
	sc := Scenario{Name: "s", Exceeds: map[string]string{anySynchronous: "waits for the standby"}}
	bound := 10 * time.Second
	rows := []reportRow{
		{Row: workload.Row{Scenario: "a", Mode: "asynchronous", Unavailability: 3 * time.Second}, Bound: bound, Reason: sc.exceeds(cluster.SyncOff)},
		{Row: workload.Row{Scenario: "b", Mode: "asynchronous", Unavailability: 12 * time.Second}, Bound: bound, Reason: sc.exceeds(cluster.SyncOff)},
		{Row: workload.Row{Scenario: "c", Mode: "synchronous (strict)", Unavailability: 12 * time.Second}, Bound: bound, Reason: sc.exceeds(cluster.SyncStrict)},
	}
	lines := strings.Split(strings.TrimSpace(formatRows(rows)), "\n")
	if len(lines) != 5 {
		t.Fatalf("want a header, a rule and 3 rows:\n%s", strings.Join(lines, "\n"))
	}
	for i, want := range []string{"| 3s | yes |", "| 12s | **no** (bound 10s): no reason stated |", "| 12s | **no** (bound 10s): waits for the standby |"} {
		if !strings.Contains(lines[2+i], want) {
			t.Errorf("row %d: %q lacks %q", i, lines[2+i], want)
		}
	}
}
