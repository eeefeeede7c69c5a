package workload

import (
	"strings"
	"testing"
	"time"
)

func TestFormatReport(t *testing.T) {
	rows := []Row{
		{Scenario: "kill -9 primary", Mode: ModeSynchronous, Unavailability: 4321 * time.Microsecond * 1000, Healed: true},
		{Scenario: "kill -9 primary", Mode: ModeAsynchronous, AckedLost: 3, ClientErrors: 7, Healed: true, Note: "a|b\nc"},
		{Scenario: "SIGSTOP primary", Mode: ModeAsynchronous, SplitBrain: true},
	}
	got := FormatReport(rows)
	want := `| scenario | mode | unavailability | acknowledged writes lost | client errors | split brain | healed without a human | note |
|---|---|---:|---:|---:|---|---|---|
| SIGSTOP primary | asynchronous | 0s | 0 | 0 | yes | no |  |
| kill -9 primary | asynchronous | 0s | 3 | 7 | no | yes | a\|b c |
| kill -9 primary | synchronous | 4.321s | 0 | 0 | no | yes |  |
`
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	if rows[0].Mode != ModeSynchronous {
		t.Fatal("FormatReport reordered its input")
	}
}

func TestRowFromResult(t *testing.T) {
	ws := []Write{ack(1, "pg-0", 1, 0, 10, 1000), ack(2, "pg-0", 1, 10, 20, 1500), ack(3, "pg-1", 2, 520, 530, 10)}
	r := Check(ws, ids(1, 3), CheckOptions{LossBoundBytes: 1 << 20})
	row := RowFromResult("kill", r, true)
	if row.Mode != ModeAsynchronous || row.AckedLost != 1 || row.Unavailability != 510*time.Millisecond || !row.Healed || row.SplitBrain {
		t.Fatalf("row %+v", row)
	}
	if !strings.Contains(row.Note, "span 0 bytes") {
		t.Fatalf("note %q", row.Note)
	}
	r = Check(ws, ids(1, 3), CheckOptions{Synchronous: true})
	if row := RowFromResult("kill", r, false); row.Mode != ModeSynchronous || !strings.Contains(row.Note, "synchronous mode") {
		t.Fatalf("sync row %+v", row)
	}
}
