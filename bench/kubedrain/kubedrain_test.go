//go:build linux

// Package kubedrain measures, on a real multi-node Kubernetes, the write
// pause a client sees through the proxy Service while the primary's node
// is drained (kubectl drain with the chart's PodDisruptionBudgets: the
// agents hand the primary over before the eviction), beside a plain
// `holdfast ctl switchover` measured on the same cluster in the same run.
// Target: the drain's median pause at most 1.2 × the switchover's.
//
// The pause is the longest time without an acknowledged write (by the
// servers' clock) from the start of the drain or switchover until the
// cluster is healthy again, seen by writers on every node (a DaemonSet,
// which drains leave alone) inserting through the proxy Service with a new
// connection per insert.
//
// It is a benchmark, not a test: it runs only when asked, as root, with the
// Kubernetes binaries built (scripts/kube/build.sh):
//
//	HOLDFAST_BENCH=1 go test -count=1 -timeout 60m -v ./bench/kubedrain
//
// HOLDFAST_BENCH_RUNS sets the runs of each kind (default 5). Results go to
// bench/results/kubedrain.json and kubedrain.md.
package kubedrain

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/holdfast/holdfast/bench/internal/results"
	"github.com/holdfast/holdfast/internal/testutil/release"
)

const (
	ttl          = "6s"
	loopInterval = "1s"
	targetRatio  = 1.2
	writers      = "bench-writers"
)

type result struct {
	When       time.Time         `json:"when"`
	Machine    map[string]string `json:"machine"`
	Settings   map[string]string `json:"settings"`
	Drain      results.Stats     `json:"drain_of_primary_node_write_pause"`
	Switchover results.Stats     `json:"ctl_switchover_write_pause"`
	Ratio      float64           `json:"ratio_of_medians"`
	Target     string            `json:"target"`
	TargetMet  bool              `json:"target_met"`
}

func TestKubeDrain(t *testing.T) {
	runs, root := results.Gate(t, "HOLDFAST_BENCH=1 go test -count=1 -timeout 60m -v ./bench/kubedrain")

	e := release.Setup(t, "ttl="+ttl, "loopInterval="+loopInterval)
	e.StartWriters(writers, release.Proxy)
	if _, err := e.Psql(e.AnyLive(), release.Proxy, 5432, "create table if not exists t(id bigserial primary key, v text not null)"); err != nil {
		t.Fatal(err) // e.Write's table
	}
	var drain, switchover []float64
	// Alternate the two kinds so that the machine's load falls on both.
	for i := range runs {
		d := measure(t, e, "drain", func() {
			node := e.Primary().Node
			if out, err := e.C.Kubectl("drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--force", "--timeout=3m"); err != nil {
				t.Fatalf("kubectl drain %s: %v\n%s", node, err, out)
			}
			e.C.MustKubectl("uncordon", node)
		})
		drain = append(drain, d.Seconds())
		s := measure(t, e, "switchover", func() {
			if out, err := e.Ctl(e.AnyLive(), "switchover"); err != nil {
				t.Fatalf("ctl switchover: %v\n%s", err, out)
			}
		})
		switchover = append(switchover, s.Seconds())
		t.Logf("run %d: drain pause %.2fs, switchover pause %.2fs", i+1, d.Seconds(), s.Seconds())
	}

	res := result{
		When:    time.Now().UTC(),
		Machine: results.Machine(),
		Settings: map[string]string{
			"members": "3", "ttl": ttl, "loop_interval": loopInterval,
			"kubernetes": "3 nodes (scripts/kube/cluster.sh), the chart's defaults but ttl/loopInterval, store.mode kubernetes",
			"client":     "a writer pod on every node (DaemonSet) running psql through the proxy Service in a loop, a new connection per insert, 20ms apart",
		},
		Drain:      results.Summarize(drain),
		Switchover: results.Summarize(switchover),
		Target:     fmt.Sprintf("drain median <= %.1f x the switchover median", targetRatio),
	}
	res.Ratio = res.Drain.Median / res.Switchover.Median
	res.TargetMet = res.Ratio <= targetRatio
	if err := write(filepath.Join(root, "bench/results"), res); err != nil {
		t.Fatal(err)
	}
}

// measure runs act on a healthy cluster and returns the longest write
// pause from its start until the cluster is healthy again with the new
// primary taking writes.
func measure(t *testing.T, e *release.Env, what string, act func()) time.Duration {
	t.Helper()
	e.WaitHealthy(release.HealthyTimeout)
	time.Sleep(3 * time.Second) // let the replicas catch up and the statuses settle
	old := e.Primary()
	start := time.Now()
	act()
	acted := time.Since(start)
	e.Eventually(what+": another primary taking writes", release.FailoverTimeout, func() error {
		if p, ok := e.CurrentPrimary(); !ok || p.Name == old.Name {
			return fmt.Errorf("primary: %q", p.Name)
		}
		return e.Write("bench-" + what)
	})
	e.WaitHealthy(release.HealthyTimeout)
	end := time.Now()
	time.Sleep(time.Second) // the last writes reach the logs
	as, err := e.WritersLog(writers)
	if err != nil {
		t.Fatalf("writers' logs: %v", err)
	}
	gap, began := release.LongestGap(as, start, end)
	t.Logf("%s: the action returned after %v; the longest pause began %v after its start and lasted %v", what,
		acted.Round(100*time.Millisecond), began.Sub(start).Round(100*time.Millisecond), gap.Round(100*time.Millisecond))
	return gap
}

func write(dir string, r result) error {
	if err := results.WriteJSON(dir, "kubedrain.json", r); err != nil {
		return err
	}
	md := fmt.Sprintf(`# Drain of the primary's node on Kubernetes

Measured %s on %s CPUs, PostgreSQL %s, 3 members, ttl %s, loop_interval %s.
Command: `+"`HOLDFAST_BENCH=1 go test -count=1 -timeout 60m -v ./bench/kubedrain`"+`.
Write pause: the longest time without an acknowledged write (servers' clock)
from the start of the action until the cluster is healthy again, seen by a
writer on every node inserting through the proxy Service.

| measurement | median | min | max | stdev | runs |
|---|---|---|---|---|---|
| kubectl drain of the primary's node (PDBs in place; the agents switch over first) | %.2fs | %.2fs | %.2fs | %.2fs | %s |
| holdfast ctl switchover | %.2fs | %.2fs | %.2fs | %.2fs | %s |

Ratio of medians %.2f. Target: %s — %s.
`, r.When.Format(time.RFC3339), r.Machine["cpus"], r.Machine["postgres"], r.Settings["ttl"], r.Settings["loop_interval"],
		r.Drain.Median, r.Drain.Min, r.Drain.Max, r.Drain.Stdev, results.Floats(r.Drain.RunsSeconds, 2),
		r.Switchover.Median, r.Switchover.Min, r.Switchover.Max, r.Switchover.Stdev, results.Floats(r.Switchover.RunsSeconds, 2),
		r.Ratio, r.Target, map[bool]string{true: "met", false: "NOT met"}[r.TargetMet])
	fmt.Print(md)
	return os.WriteFile(filepath.Join(dir, "kubedrain.md"), []byte(md), 0o644)
}
