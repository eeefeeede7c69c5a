//go:build linux

// Package kubefailover measures, on a real multi-node Kubernetes, the time
// from the forced deletion of the primary's pod (kubectl delete pod
// --grace-period=0 --force) to the first write acknowledged through the
// proxy Service by another member, beside the same run's local figure
// (holdfast up, kill -9 of the primary's agent and postmaster) with the
// same lease settings. Target: the Kubernetes median at most 1.5 × the local
// one.
//
// It is a benchmark, not a test: it runs only when asked, as root, with the
// Kubernetes binaries built (scripts/kube/build.sh):
//
//	HOLDFAST_BENCH=1 go test -count=1 -timeout 60m -v ./bench/kubefailover
//
// HOLDFAST_BENCH_RUNS sets the runs of each kind (default 5). Results go to
// bench/results/kubefailover.json and kubefailover.md.
package kubefailover

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/holdfast/holdfast/bench/internal/localfailover"
	"github.com/holdfast/holdfast/bench/internal/results"
	"github.com/holdfast/holdfast/internal/testutil/release"
)

// The lease settings of both clusters: the agent's defaults.
const (
	ttl          = "4s"
	loopInterval = "1s"
	targetRatio  = 1.5
)

type result struct {
	When      time.Time         `json:"when"`
	Machine   map[string]string `json:"machine"`
	Settings  map[string]string `json:"settings"`
	Kube      results.Stats     `json:"kubernetes_force_delete_primary_pod_to_first_write_through_proxy"`
	Local     results.Stats     `json:"local_kill9_primary_to_first_write"`
	Ratio     float64           `json:"ratio_of_medians"`
	Target    string            `json:"target"`
	TargetMet bool              `json:"target_met"`
}

func TestKubeFailover(t *testing.T) {
	runs, root := results.Gate(t, "HOLDFAST_BENCH=1 go test -count=1 -timeout 60m -v ./bench/kubefailover")

	// The local figure, same machine, same run.
	lc, err := localfailover.Start(3)
	if err != nil {
		t.Fatal(err)
	}
	var local []float64
	for i := range runs {
		d, err := lc.KillPrimary()
		if err != nil {
			lc.Close()
			t.Fatalf("local run %d: %v", i+1, err)
		}
		local = append(local, d.Seconds())
		t.Logf("local kill -9 run %d: %.2fs", i+1, d.Seconds())
	}
	settings := lc.Settings()
	lc.Close()

	e := release.Setup(t, "ttl="+ttl, "loopInterval="+loopInterval)
	e.StartWriter("writer", release.Proxy)
	var kube []float64
	for i := range runs {
		d := measure(t, e)
		kube = append(kube, d.Seconds())
		t.Logf("kubernetes force-delete run %d: %.2fs", i+1, d.Seconds())
	}

	res := result{
		When:    time.Now().UTC(),
		Machine: results.Machine(),
		Settings: map[string]string{
			"members": "3", "ttl": ttl, "loop_interval": loopInterval,
			"local_ttl": settings["ttl"], "local_loop_interval": settings["loop_interval"],
			"kubernetes":        "3 nodes (scripts/kube/cluster.sh), chart defaults but ttl/loopInterval, store.mode kubernetes",
			"kubernetes_client": "a pod running psql through the proxy Service in a loop, a new connection per attempt, 20ms apart",
			"local_client":      settings["client"],
		},
		Kube:   results.Summarize(kube),
		Local:  results.Summarize(local),
		Target: fmt.Sprintf("Kubernetes median <= %.1f x the local median", targetRatio),
	}
	res.Ratio = res.Kube.Median / res.Local.Median
	res.TargetMet = res.Ratio <= targetRatio
	if err := write(filepath.Join(root, "bench/results"), res); err != nil {
		t.Fatal(err)
	}
}

// measure force-deletes the primary's pod and returns the time to the
// first write acknowledged through the proxy by another member.
func measure(t *testing.T, e *release.Env) time.Duration {
	t.Helper()
	e.WaitHealthy(release.HealthyTimeout)
	time.Sleep(2 * time.Second) // let the replicas catch up and the statuses settle
	old := e.Primary()
	oldIP := e.PodIP(old.Name)
	start := time.Now()
	e.C.MustKubectl("delete", "pod", "-n", release.NS, old.Name, "--grace-period=0", "--force", "--wait=false")
	var took time.Duration
	e.Eventually("a write acknowledged by the new primary", release.FailoverTimeout, func() error {
		as, err := e.WriterLog("writer", 3*time.Minute)
		if err != nil {
			return err
		}
		for _, a := range as {
			if a.OK && a.End.After(start) && a.Server != "" && a.Server != oldIP {
				took = a.End.Sub(start)
				return nil
			}
		}
		return fmt.Errorf("none yet")
	})
	return took
}

func write(dir string, r result) error {
	if err := results.WriteJSON(dir, "kubefailover.json", r); err != nil {
		return err
	}
	md := fmt.Sprintf(`# Failover on Kubernetes

Measured %s on %s CPUs, PostgreSQL %s, 3 members, ttl %s, loop_interval %s
in both clusters. Command: `+"`HOLDFAST_BENCH=1 go test -count=1 -timeout 60m -v ./bench/kubefailover`"+`.

| measurement | median | min | max | stdev | runs |
|---|---|---|---|---|---|
| Kubernetes: kubectl delete pod --grace-period=0 --force of the primary → first write acknowledged through the proxy Service | %.2fs | %.2fs | %.2fs | %.2fs | %s |
| local (holdfast up): kill -9 of the primary's agent and postmaster → first acknowledged write | %.2fs | %.2fs | %.2fs | %.2fs | %s |

Ratio of medians %.2f. Target: %s — %s.
`, r.When.Format(time.RFC3339), r.Machine["cpus"], r.Machine["postgres"], r.Settings["ttl"], r.Settings["loop_interval"],
		r.Kube.Median, r.Kube.Min, r.Kube.Max, r.Kube.Stdev, results.Floats(r.Kube.RunsSeconds, 2),
		r.Local.Median, r.Local.Min, r.Local.Max, r.Local.Stdev, results.Floats(r.Local.RunsSeconds, 2),
		r.Ratio, r.Target, map[bool]string{true: "met", false: "NOT met"}[r.TargetMet])
	fmt.Print(md)
	return os.WriteFile(filepath.Join(dir, "kubefailover.md"), []byte(md), 0o644)
}
