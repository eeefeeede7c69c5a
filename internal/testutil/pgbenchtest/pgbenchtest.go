// Package pgbenchtest reads pgbench's summary for the tests and benches that
// drive it: one parser for what pgbench prints at the end of a run.
//
// It does not import package testing, so a bench's main program can use it.
package pgbenchtest

import (
	"errors"
	"regexp"
	"strconv"
)

// Summary is the end of a pgbench run. A run with aborted clients still
// prints one.
type Summary struct {
	// Processed is "number of transactions actually processed".
	Processed int
	// Failed is "number of failed transactions" (0 when pgbench printed
	// none: versions before 15 do not).
	Failed int
	// TPS is "tps = N (without initial connection time)"; 0 when missing.
	TPS float64
	// LatencyMS is "latency average = N ms"; 0 when missing.
	LatencyMS float64
}

var (
	processedRe = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
	failedRe    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	tpsRe       = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
	latRe       = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
)

// ErrNoSummary means pgbench's output holds no count of processed
// transactions: it did not get as far as its summary.
var ErrNoSummary = errors.New("pgbench printed no summary (number of transactions actually processed)")

// Parse reads pgbench's summary from its output. Only the processed count
// is required; the other fields are 0 when pgbench printed none.
func Parse(out string) (Summary, error) {
	var s Summary
	m := processedRe.FindStringSubmatch(out)
	if m == nil {
		return s, ErrNoSummary
	}
	s.Processed, _ = strconv.Atoi(m[1]) // \d+: only overflow fails
	if m := failedRe.FindStringSubmatch(out); m != nil {
		s.Failed, _ = strconv.Atoi(m[1])
	}
	if m := tpsRe.FindStringSubmatch(out); m != nil {
		s.TPS, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := latRe.FindStringSubmatch(out); m != nil {
		s.LatencyMS, _ = strconv.ParseFloat(m[1], 64)
	}
	return s, nil
}
