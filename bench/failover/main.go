// Command failover measures how long a holdfast cluster refuses writes when
// its primary dies: the time from kill -9 of the primary's agent and
// postmaster together to the first write acknowledged by the new primary.
//
// As a baseline measured in the same run on the same machine, it also times
// a clean handover: SIGTERM to the primary's agent, which stops PostgreSQL
// and releases the leader key at once. The difference between the two is the
// cost of detecting a dead primary (the lease TTL); the baseline is the cost
// of the promotion itself.
//
// Usage (from the repository root):
//
//	go run ./bench/failover -runs 7
//
// Results go to bench/results/failover.json and failover.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/holdfast/holdfast/bench/internal/localfailover"
	"github.com/holdfast/holdfast/bench/internal/results"
)

type result struct {
	When        time.Time         `json:"when"`
	Machine     map[string]string `json:"machine"`
	Settings    map[string]string `json:"settings"`
	KillPrimary results.Stats     `json:"kill9_primary_to_first_write"`
	Handover    results.Stats     `json:"baseline_clean_handover_to_first_write"`
	Target      string            `json:"target"`
	TargetMet   bool              `json:"target_met"`
}

func main() {
	runs := flag.Int("runs", 7, "measurements of each kind (at least 5)")
	members := flag.Int("members", 3, "cluster size")
	out := flag.String("out", "bench/results", "directory for the results")
	flag.Parse()
	if *runs < 5 {
		fail(errors.New("-runs must be at least 5 for a median and spread to mean something"))
	}
	if err := run(*runs, *members, *out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "failover bench:", err)
	os.Exit(1)
}

func run(runs, members int, outDir string) error {
	c, err := localfailover.Start(members)
	if err != nil {
		return err
	}
	defer c.Close()
	var kill, handover []float64
	for i := 0; i < runs; i++ {
		d, err := c.KillPrimary()
		if err != nil {
			return fmt.Errorf("kill run %d: %w", i+1, err)
		}
		kill = append(kill, d.Seconds())
		fmt.Printf("kill -9 run %d: %.2fs\n", i+1, d.Seconds())

		d, err = c.Handover()
		if err != nil {
			return fmt.Errorf("handover run %d: %w", i+1, err)
		}
		handover = append(handover, d.Seconds())
		fmt.Printf("clean handover run %d: %.2fs\n", i+1, d.Seconds())
	}
	res := result{
		When:        time.Now().UTC(),
		Machine:     results.Machine(),
		Settings:    c.Settings(),
		KillPrimary: results.Summarize(kill),
		Handover:    results.Summarize(handover),
		Target:      "median kill -9 to first write <= 5s",
	}
	res.TargetMet = res.KillPrimary.Median <= 5
	return write(outDir, res)
}

func write(dir string, r result) error {
	if err := results.WriteJSON(dir, "failover.json", r); err != nil {
		return err
	}
	md := fmt.Sprintf(`# Failover benchmark

Measured %s on %s CPUs, PostgreSQL %s, %s members, embedded etcd,
ttl %s, loop_interval %s (the defaults). Command: `+"`go run ./bench/failover -runs %d`"+`.

| measurement | median | min | max | stdev | runs |
|---|---|---|---|---|---|
| kill -9 primary (agent + postmaster) → first acknowledged write | %.2fs | %.2fs | %.2fs | %.2fs | %s |
| baseline: clean handover (SIGTERM agent) → first acknowledged write | %.2fs | %.2fs | %.2fs | %.2fs | %s |

Target: %s — %s.
`, r.When.Format(time.RFC3339), r.Machine["cpus"], r.Machine["postgres"], r.Settings["members"], r.Settings["ttl"], r.Settings["loop_interval"], len(r.KillPrimary.RunsSeconds),
		r.KillPrimary.Median, r.KillPrimary.Min, r.KillPrimary.Max, r.KillPrimary.Stdev, results.Floats(r.KillPrimary.RunsSeconds, 2),
		r.Handover.Median, r.Handover.Min, r.Handover.Max, r.Handover.Stdev, results.Floats(r.Handover.RunsSeconds, 2),
		r.Target, map[bool]string{true: "met", false: "NOT met"}[r.TargetMet])
	fmt.Print(md)
	return os.WriteFile(filepath.Join(dir, "failover.md"), []byte(md), 0o644)
}
