package results

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// minRuns is the fewest runs of each kind a benchmark reports a median of.
const minRuns = 5

// Gate starts a benchmark written as a Go test: it skips unless
// HOLDFAST_BENCH=1 (a benchmark is not part of the test suite; cmd is the
// command that runs it), reads HOLDFAST_BENCH_RUNS (default and minimum
// minRuns), and moves to the repository root, which it returns.
func Gate(t *testing.T, cmd string) (runs int, root string) {
	t.Helper()
	if os.Getenv("HOLDFAST_BENCH") != "1" {
		t.Skip("a benchmark: run it with " + cmd)
	}
	runs = minRuns
	if v := os.Getenv("HOLDFAST_BENCH_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < minRuns {
			t.Fatalf("HOLDFAST_BENCH_RUNS=%q: want a number of at least %d", v, minRuns)
		}
		runs = n
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(root)
	return runs, root
}
