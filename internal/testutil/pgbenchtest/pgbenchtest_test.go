package pgbenchtest

import (
	"errors"
	"testing"
)

func TestParse(t *testing.T) {
	out := `pgbench (15.10 (Debian 15.10-0+deb12u1))
transaction type: <builtin: select only>
number of clients: 8
number of transactions actually processed: 123456
number of failed transactions: 7 (0.006%)
latency average = 1.234 ms
initial connection time = 12.345 ms
tps = 6482.1 (without initial connection time)
`
	got, err := Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	want := Summary{Processed: 123456, Failed: 7, TPS: 6482.1, LatencyMS: 1.234}
	if got != want {
		t.Fatalf("Parse: %+v, want %+v", got, want)
	}
	if _, err := Parse("pgbench: error: connection refused\n"); !errors.Is(err, ErrNoSummary) {
		t.Fatalf("Parse of no summary: %v, want ErrNoSummary", err)
	}
	got, err = Parse("number of transactions actually processed: 5\n")
	if err != nil || got != (Summary{Processed: 5}) {
		t.Fatalf("Parse of a bare count: %+v %v", got, err)
	}
}
