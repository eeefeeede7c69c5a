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
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/bench/internal/results"
	"github.com/holdfast/holdfast/internal/local"
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
	work, err := os.MkdirTemp("", "holdfast-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	os.Chmod(work, 0o755)
	bin := filepath.Join(work, "holdfast")
	if b, err := exec.Command("go", "build", "-o", bin, "./cmd/holdfast").CombinedOutput(); err != nil {
		return fmt.Errorf("build holdfast (run from the repository root): %v\n%s", err, b)
	}
	dir := filepath.Join(work, "cluster")
	h := &harness{bin: bin, dir: dir}
	if err := h.holdfast("up", "--detach", "--dir", dir, "--members", strconv.Itoa(members), "--wait", "120s"); err != nil {
		return err
	}
	defer h.holdfast("down", "--dir", dir)
	l, err := local.ReadLayout(dir)
	if err != nil {
		return err
	}
	h.layout = l
	if err := h.exec(context.Background(), h.primary(), "CREATE TABLE IF NOT EXISTS bench (id bigserial primary key, at timestamptz default now())"); err != nil {
		return err
	}

	var kill, handover []float64
	for i := 0; i < runs; i++ {
		d, err := h.measure(func(p string) error { return h.killHard(p) })
		if err != nil {
			return fmt.Errorf("kill run %d: %w", i+1, err)
		}
		kill = append(kill, d.Seconds())
		fmt.Printf("kill -9 run %d: %.2fs\n", i+1, d.Seconds())

		d, err = h.measure(func(p string) error { return syscall.Kill(h.agentPID(p), syscall.SIGTERM) })
		if err != nil {
			return fmt.Errorf("handover run %d: %w", i+1, err)
		}
		handover = append(handover, d.Seconds())
		fmt.Printf("clean handover run %d: %.2fs\n", i+1, d.Seconds())
	}
	cfg, _ := os.ReadFile(local.ConfigFile(dir, l.Members[0].Name))
	res := result{
		When:    time.Now().UTC(),
		Machine: map[string]string{"cpus": strconv.Itoa(runtime.NumCPU()), "os": runtime.GOOS + "/" + runtime.GOARCH, "postgres": results.PGVersion()},
		Settings: map[string]string{
			"members":                 strconv.Itoa(members),
			"ttl":                     results.Setting(cfg, "ttl"),
			"loop_interval":           results.Setting(cfg, "loop_interval"),
			"maximum_lag_on_failover": results.Setting(cfg, "maximum_lag_on_failover"),
			"store":                   "embedded etcd",
			"client":                  "new connection per attempt, 20ms between rounds, 500ms connect timeout",
		},
		KillPrimary: results.Summarize(kill),
		Handover:    results.Summarize(handover),
		Target:      "median kill -9 to first write <= 5s",
	}
	res.TargetMet = res.KillPrimary.Median <= 5
	return write(outDir, res)
}

type harness struct {
	bin, dir string
	layout   local.Layout
}

func (h *harness) holdfast(args ...string) error {
	cmd := exec.Command(h.bin, args...)
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("holdfast %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// measure waits for a healthy cluster, breaks the primary with brk, and
// returns the time until a write is acknowledged by another member. Then it
// starts the broken member again.
func (h *harness) measure(brk func(primary string) error) (time.Duration, error) {
	if err := local.WaitHealthy(context.Background(), h.dir, h.layout, 2*time.Minute); err != nil {
		return 0, err
	}
	// Let the replicas catch up fully and the statuses settle.
	time.Sleep(2 * time.Second)
	old := h.primary()
	if old == "" {
		return 0, errors.New("no primary")
	}
	agentPID := h.agentPID(old)
	start := time.Now()
	if err := brk(old); err != nil {
		return 0, err
	}
	deadline := start.Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		for _, m := range h.layout.Members {
			if m.Name == old || m.Witness {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			err := h.exec(ctx, m.Name, "INSERT INTO bench DEFAULT VALUES")
			cancel()
			if err == nil {
				d := time.Since(start)
				// A cleanly stopping agent may still be finishing its
				// shutdown; restart it only once it has exited.
				for pid := agentPID; pid != 0 && syscall.Kill(pid, 0) == nil; {
					time.Sleep(50 * time.Millisecond)
				}
				return d, h.holdfast("up", "--detach", "--dir", h.dir, "--wait", "120s")
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return 0, errors.New("no write acknowledged within 2 minutes")
}

func (h *harness) primary() string {
	v, err := local.View(context.Background(), h.layout)
	if err != nil || v.Leader == nil {
		return ""
	}
	return v.Leader.Name
}

func (h *harness) exec(ctx context.Context, member, sql string) error {
	for _, m := range h.layout.Members {
		if m.Name != member {
			continue
		}
		conn, err := pgx.Connect(ctx, h.layout.SuperuserDSN(m.PGPort, 0))
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, sql)
		return err
	}
	return fmt.Errorf("no member %s", member)
}

func (h *harness) agentPID(member string) int {
	pid, _ := local.RunningPID(h.dir, member)
	return pid
}

func (h *harness) killHard(member string) error {
	_, _, err := local.KillHard(h.dir, member)
	return err
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
