package workload

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// The modes a Row names.
const (
	ModeSynchronous  = "synchronous"
	ModeAsynchronous = "asynchronous"
)

// Row is one line of the fault report.
type Row struct {
	Scenario       string
	Mode           string // ModeSynchronous or ModeAsynchronous
	Unavailability time.Duration
	AckedLost      int
	ClientErrors   int
	SplitBrain     bool
	Healed         bool // healed without a human
	Note           string
}

// RowFromResult fills a Row from a Check result: the mode comes from
// r.Synchronous (set Row.Mode afterwards to name a particular synchronous
// mode); the note lists the problems, the measured loss span when writes
// were lost, and the suspicious evidence.
func RowFromResult(scenario string, r Result, healed bool) Row {
	row := Row{
		Scenario:       scenario,
		Mode:           ModeAsynchronous,
		Unavailability: r.Unavailability,
		AckedLost:      r.LostAcked,
		ClientErrors:   r.ClientErrors,
		SplitBrain:     r.SplitBrain,
		Healed:         healed,
	}
	if r.Synchronous {
		row.Mode = ModeSynchronous
	}
	notes := r.Problems()
	if r.LostAcked > 0 && r.LostWithinBound {
		notes = append(notes, fmt.Sprintf("lost writes span %d bytes of WAL (bound %d)", r.LossSpanBytes, r.LossBoundBytes))
	}
	notes = append(notes, r.Suspicious...)
	row.Note = strings.Join(notes, "; ")
	return row
}

// FormatReport renders rows as a markdown table ordered by scenario, then
// mode (input order among equal keys). Durations are rounded to
// milliseconds.
func FormatReport(rows []Row) string {
	sorted := append([]Row(nil), rows...)
	sort.SliceStable(sorted, func(i, j int) bool {
		if sorted[i].Scenario != sorted[j].Scenario {
			return sorted[i].Scenario < sorted[j].Scenario
		}
		return sorted[i].Mode < sorted[j].Mode
	})
	var b strings.Builder
	b.WriteString("| scenario | mode | unavailability | acknowledged writes lost | client errors | split brain | healed without a human | note |\n")
	b.WriteString("|---|---|---:|---:|---:|---|---|---|\n")
	for _, r := range sorted {
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %d | %s | %s | %s |\n",
			cell(r.Scenario), cell(r.Mode), r.Unavailability.Round(time.Millisecond),
			r.AckedLost, r.ClientErrors, yesNo(r.SplitBrain), yesNo(r.Healed), cell(r.Note))
	}
	return b.String()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// cell makes s safe inside a markdown table cell.
func cell(s string) string {
	s = strings.ReplaceAll(s, "\r", " ")
	s = strings.ReplaceAll(s, "\n", " ")
	return strings.ReplaceAll(s, "|", `\|`)
}
