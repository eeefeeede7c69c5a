//go:build linux

// Package sessionproxy measures what the session-mode proxy costs a
// client, beside the other ways to reach the primary, in one run on one
// cluster: pgbench select-only (-S) and simple-update (-N), persistent
// connections (no -C), -c 8 -j 2, a fixed duration each, through
//
//   - direct: the primary's own port (the baseline);
//   - holdfast-l4: the pass-through proxy `holdfast up` starts;
//   - holdfast-session: `holdfast proxy --mode=session` (SCRAM at the
//     proxy, every message parsed and tracked);
//   - holdfast-txpool: the same with --pool-mode=transaction (server
//     connections shared between clients one transaction at a time, each
//     client's state replayed on a connection it did not use last);
//   - pgbouncer: PgBouncer (Debian's), pool_mode=session, in front of the
//     primary;
//   - pgbouncer-tx: the same with pool_mode=transaction, what
//     holdfast-txpool is held against;
//   - haproxy: HAProxy, TCP mode, one server (the primary).
//
// Each round runs every path once per workload, in an order rotated from
// round to round, so that outside load is spread over the paths. It
// reports TPS, mean latency, the CPU time each proxy process used per
// transaction (utime+stime from /proc/PID/stat before and after a run) and
// its threads' context switches per transaction (/proc/PID/task/*/status),
// the sleeps and wake-ups its data path costs.
// Target (issue 13): the session proxy's CPU per transaction at most
// PgBouncer's, its TPS at least the best of PgBouncer's and HAProxy's; and
// in transaction mode, CPU per transaction at most PgBouncer's in
// transaction mode, TPS at least its.
//
// It is a benchmark, not a test: it runs only when asked, from anywhere in
// the repository, as root or a user that can run PostgreSQL:
//
//	HOLDFAST_BENCH=1 go test -count=1 -timeout 60m -v ./bench/sessionproxy
//
// HOLDFAST_BENCH_RUNS sets the rounds (default 5),
// HOLDFAST_BENCH_DURATION each pgbench run's length (default 10s), and
// HOLDFAST_BENCH_PROFILE=1 writes a CPU profile of the session proxy over
// all its runs (bench/results/sessionproxy.cpu.pprof) and prints its top
// entries. HOLDFAST_BENCH_BASELINE names another holdfast binary (built
// from another commit, say main's) whose session proxy is measured beside
// this tree's as one more path, holdfast-session-baseline, in the same
// rounds: a change is judged against the code before it under the same
// outside load, not against figures from another day. Results go to
// bench/results/sessionproxy.json and .md.
package sessionproxy

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/bench/internal/results"
	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/pgauth"
	"github.com/holdfast/holdfast/internal/testutil/pgbenchtest"
	"github.com/holdfast/holdfast/internal/testutil/pgbouncertest"
)

// Paths, in their base order.
const (
	pathDirect    = "direct"
	pathL4        = "holdfast-l4"
	pathSession   = "holdfast-session"
	pathTxPool    = "holdfast-txpool"
	pathPgbouncer = "pgbouncer"
	pathPgbTx     = "pgbouncer-tx"
	pathHAProxy   = "haproxy"
	// pathBaseline: HOLDFAST_BENCH_BASELINE's session proxy, when set.
	pathBaseline = "holdfast-session-baseline"
)

var paths = []string{pathDirect, pathL4, pathSession, pathTxPool, pathPgbouncer, pathPgbTx, pathHAProxy}

// pgbench settings (the issue's).
const (
	clients         = 8
	threads         = 2
	scale           = 10
	defaultDuration = 10 * time.Second
	authPassword    = "bench-session-proxy-auth"
	startTimeout    = 30 * time.Second
	stopTimeout     = 15 * time.Second
	clusterWait     = "120s"
)

var workloads = []struct{ name, flag, desc string }{
	{"select-only", "-S", "pgbench -S: one SELECT by primary key per transaction"},
	{"simple-update", "-N", "pgbench -N: UPDATE pgbench_accounts, SELECT, INSERT pgbench_history, commit"},
}

type run struct {
	Round     int     `json:"round"`
	TPS       float64 `json:"tps"`
	LatencyMS float64 `json:"latency_ms"`
	Processed int     `json:"transactions"`
	Failed    int     `json:"failed"`
	CPUus     float64 `json:"proxy_cpu_us_per_tx,omitempty"`
	Switches  float64 `json:"proxy_context_switches_per_tx,omitempty"`
}

type pathResult struct {
	Path            string  `json:"path"`
	Runs            []run   `json:"runs"`
	MedianTPS       float64 `json:"median_tps"`
	MedianLatencyMS float64 `json:"median_latency_ms"`
	MedianCPUus     float64 `json:"median_proxy_cpu_us_per_tx,omitempty"`
	MedianSwitches  float64 `json:"median_proxy_context_switches_per_tx,omitempty"`
	TPSRatio        float64 `json:"median_tps_ratio_to_direct"`
}

type workloadResult struct {
	Workload string       `json:"workload"`
	Desc     string       `json:"description"`
	Paths    []pathResult `json:"paths"`
	CPUMet   bool         `json:"session_cpu_per_tx_at_most_pgbouncer"`
	TPSMet   bool         `json:"session_tps_at_least_best_of_pgbouncer_haproxy"`
	CPUGap   float64      `json:"session_cpu_per_tx_over_pgbouncer"`
	TPSGap   float64      `json:"session_tps_over_best_of_pgbouncer_haproxy"`
	// Transaction mode: holdfast-txpool beside pgbouncer-tx.
	TxCPUMet bool    `json:"txpool_cpu_per_tx_at_most_pgbouncer_tx"`
	TxTPSMet bool    `json:"txpool_tps_at_least_pgbouncer_tx"`
	TxCPUGap float64 `json:"txpool_cpu_per_tx_over_pgbouncer_tx"`
	TxTPSGap float64 `json:"txpool_tps_over_pgbouncer_tx"`
	// Beside HOLDFAST_BENCH_BASELINE's session proxy (0: not measured).
	CPUVsBaseline float64 `json:"session_cpu_per_tx_over_baseline,omitempty"`
	TPSVsBaseline float64 `json:"session_tps_over_baseline,omitempty"`
}

type result struct {
	When      time.Time         `json:"when"`
	Machine   map[string]string `json:"machine"`
	Source    string            `json:"source"`
	Settings  map[string]string `json:"settings"`
	Workloads []workloadResult  `json:"workloads"`
	Target    string            `json:"target"`
	TargetMet bool              `json:"target_met"`
	Profile   []string          `json:"session_proxy_profile_top,omitempty"`
}

func TestSessionProxyBench(t *testing.T) {
	rounds, root := results.Gate(t, "HOLDFAST_BENCH=1 go test -count=1 -timeout 60m -v ./bench/sessionproxy")
	duration := defaultDuration
	if v := os.Getenv("HOLDFAST_BENCH_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second {
			t.Fatalf("HOLDFAST_BENCH_DURATION=%q: want a duration of at least 1s", v)
		}
		duration = d
	}
	profile := os.Getenv("HOLDFAST_BENCH_PROFILE") == "1"
	baseline := os.Getenv("HOLDFAST_BENCH_BASELINE")
	paths := paths
	if baseline != "" {
		if _, err := os.Stat(baseline); err != nil {
			t.Fatalf("HOLDFAST_BENCH_BASELINE: %v", err)
		}
		i := slices.Index(paths, pathSession) + 1
		paths = slices.Insert(slices.Clone(paths), i, pathBaseline)
	}
	for _, tool := range []string{"pgbench", "haproxy", "pgbouncer", "psql"} {
		if _, err := lookPath(tool); err != nil {
			t.Fatalf("%v (scripts/install-deps.sh installs it)", err)
		}
	}
	work := t.TempDir()
	for _, d := range []string{filepath.Dir(work), work} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(work, "holdfast")
	if b, err := exec.Command("go", "build", "-o", bin, "./cmd/holdfast").CombinedOutput(); err != nil {
		t.Fatalf("build holdfast: %v\n%s", err, b)
	}
	dir := filepath.Join(work, "cluster")
	if b, err := exec.Command(bin, "up", "--detach", "--dir", dir, "--members", "3", "--wait", clusterWait).CombinedOutput(); err != nil {
		t.Fatalf("holdfast up: %v\n%s", err, b)
	}
	t.Cleanup(func() { exec.Command(bin, "down", "--dir", dir).Run() })
	l, err := local.ReadLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	pgPort, err := primaryPort(l)
	if err != nil {
		t.Fatal(err)
	}
	su := l.Superuser
	env := pgEnv(su.Password)
	psql := func(sql string) {
		t.Helper()
		cmd := exec.Command("psql", "-h", "127.0.0.1", "-p", strconv.Itoa(pgPort), "-U", su.Username, "-d", "postgres", "-qc", sql)
		cmd.Env = env
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("psql %q: %v\n%s", sql, err, b)
		}
	}
	psql(pgauth.SetupSQL)
	psql("ALTER ROLE " + pgauth.AuthRole + " PASSWORD '" + authPassword + "'")
	initCmd := exec.Command("pgbench", "-i", "-s", strconv.Itoa(scale), "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(pgPort), "-U", su.Username, "postgres")
	initCmd.Env = env
	if b, err := initCmd.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, b)
	}

	// The processes in front of the primary.
	ports := map[string]int{pathDirect: pgPort, pathL4: l.ProxyRWPort}
	pids := map[string]int{}
	if pids[pathL4], err = readPID(filepath.Join(dir, "proxy.pid")); err != nil {
		t.Fatalf("the local proxy's pid: %v", err)
	}
	pwFile := filepath.Join(work, "auth-password")
	if err := os.WriteFile(pwFile, []byte(authPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sessionPort := freePort(t)
	profilePath := filepath.Join(root, "bench", "results", "sessionproxy.cpu.pprof")
	args := []string{"proxy", "--mode", "session", "--auth-password-file", pwFile, "--rw-listen", fmt.Sprintf("127.0.0.1:%d", sessionPort), "--ro-listen", ""}
	if profile {
		args = append(args, "--cpu-profile", profilePath)
	}
	sess := startChild(t, exec.Command(bin, append(args, "--dir", dir)...), filepath.Join(work, "session-proxy.log"), sessionPort)
	ports[pathSession], pids[pathSession] = sessionPort, sess.cmd.Process.Pid
	if baseline != "" {
		port := freePort(t)
		c := startChild(t, exec.Command(baseline, "proxy", "--mode", "session", "--auth-password-file", pwFile,
			"--rw-listen", fmt.Sprintf("127.0.0.1:%d", port), "--ro-listen", "", "--dir", dir), filepath.Join(work, "baseline-proxy.log"), port)
		ports[pathBaseline], pids[pathBaseline] = port, c.cmd.Process.Pid
	}
	txPort := freePort(t)
	tx := startChild(t, exec.Command(bin, "proxy", "--mode", "session", "--pool-mode", "transaction", "--auth-password-file", pwFile,
		"--rw-listen", fmt.Sprintf("127.0.0.1:%d", txPort), "--ro-listen", "", "--dir", dir), filepath.Join(work, "txpool-proxy.log"), txPort)
	ports[pathTxPool], pids[pathTxPool] = txPort, tx.cmd.Process.Pid
	hap := startHAProxy(t, work, pgPort)
	ports[pathHAProxy], pids[pathHAProxy] = hap.port, hap.cmd.Process.Pid
	for p, mode := range map[string]string{pathPgbouncer: pgbouncertest.PoolSession, pathPgbTx: pgbouncertest.PoolTransaction} {
		pgb := startPgbouncer(t, filepath.Join(work, p), pgPort, su.Username, su.Password, mode)
		ports[p] = pgb.port
		if pids[p], err = readPID(filepath.Join(pgb.dir, pgbouncertest.PIDFile)); err != nil {
			t.Fatalf("%s's pid: %v", p, err)
		}
	}
	for _, p := range paths {
		got, err := serverPort(ports[p], su.Username, su.Password)
		if err != nil || got != pgPort {
			t.Fatalf("%s (port %d) reaches PostgreSQL port %d (%v), want the primary's %d", p, ports[p], got, err, pgPort)
		}
	}

	res := result{
		When: time.Now().UTC(), Machine: results.Machine(), Source: results.GitSource(),
		Settings: map[string]string{
			"command":      "HOLDFAST_BENCH=1 go test -count=1 -timeout 60m -v ./bench/sessionproxy",
			"pgbench":      fmt.Sprintf("-c %d -j %d -T %d -n, persistent connections (no -C), simple query protocol, scale %d", clients, threads, int(duration/time.Second), scale),
			"rounds":       fmt.Sprintf("%d; each runs every path once per workload, order rotated each round", rounds),
			"cluster":      "3 members (holdfast up), asynchronous replication",
			"session":      "holdfast proxy --mode=session, default flags, a process of its own",
			"txpool":       "holdfast proxy --mode=session --pool-mode=transaction, default pool size (20), a process of its own",
			"l4":           "the proxy holdfast up starts (pass-through, event loop)",
			"pgbouncer":    "pool_mode=session, default_pool_size=20, SCRAM with a plain-text auth_file, in front of the primary",
			"pgbouncer-tx": "the same with pool_mode=transaction",
			"haproxy":      "mode tcp, one server (the primary), no health check, default nbthread",
		},
		Target: "session proxy CPU per transaction <= PgBouncer's and TPS >= max(PgBouncer, HAProxy); transaction pooling's CPU per transaction <= PgBouncer's in transaction mode and TPS >= its; each workload (medians over rounds)",
	}
	if baseline != "" {
		res.Settings["baseline"] = "holdfast proxy --mode=session as the session path, from " + baseline
	}
	res.Machine["pgbench"] = firstLine(exec.Command("pgbench", "--version"))
	if p, err := lookPath("haproxy"); err == nil {
		res.Machine["haproxy"] = firstLine(exec.Command(p, "-v"))
	}
	if p, err := lookPath("pgbouncer"); err == nil {
		res.Machine["pgbouncer"] = firstLine(exec.Command(p, "--version"))
	}
	res.TargetMet = true
	for _, w := range workloads {
		byPath := map[string]*pathResult{}
		for _, p := range paths {
			byPath[p] = &pathResult{Path: p}
		}
		for r := range rounds {
			if w.flag == "-N" {
				psql("VACUUM ANALYZE pgbench_accounts, pgbench_history")
			}
			for _, p := range rotate(paths, r) {
				rr, err := pgbench(env, ports[p], su.Username, w.flag, duration, pids[p])
				if err != nil {
					t.Fatalf("%s through %s, round %d: %v", w.name, p, r+1, err)
				}
				rr.Round = r + 1
				t.Logf("%-13s round %d  %-25s tps %8.1f  latency %6.3f ms  failed %d  proxy cpu %6.1f us/tx  %5.2f context switches/tx",
					w.name, r+1, p, rr.TPS, rr.LatencyMS, rr.Failed, rr.CPUus, rr.Switches)
				byPath[p].Runs = append(byPath[p].Runs, rr)
			}
		}
		wr := workloadResult{Workload: w.name, Desc: w.desc}
		for _, p := range paths {
			pr := byPath[p]
			var tps, lat, cpu, sw []float64
			for _, rr := range pr.Runs {
				tps, lat, cpu = append(tps, rr.TPS), append(lat, rr.LatencyMS), append(cpu, rr.CPUus)
				sw = append(sw, rr.Switches)
			}
			pr.MedianTPS = round1(median(tps))
			pr.MedianLatencyMS = math.Round(median(lat)*1000) / 1000
			if p != pathDirect {
				pr.MedianCPUus = round1(median(cpu))
				pr.MedianSwitches = math.Round(median(sw)*100) / 100
			}
		}
		for _, p := range paths {
			pr := byPath[p]
			pr.TPSRatio = math.Round(pr.MedianTPS/byPath[pathDirect].MedianTPS*1000) / 1000
			wr.Paths = append(wr.Paths, *pr)
		}
		s, b, h := byPath[pathSession], byPath[pathPgbouncer], byPath[pathHAProxy]
		best := max(b.MedianTPS, h.MedianTPS)
		wr.CPUMet, wr.TPSMet = s.MedianCPUus <= b.MedianCPUus, s.MedianTPS >= best
		wr.CPUGap = math.Round(s.MedianCPUus/b.MedianCPUus*1000) / 1000
		wr.TPSGap = math.Round(s.MedianTPS/best*1000) / 1000
		if base := byPath[pathBaseline]; base != nil {
			wr.CPUVsBaseline = math.Round(s.MedianCPUus/base.MedianCPUus*1000) / 1000
			wr.TPSVsBaseline = math.Round(s.MedianTPS/base.MedianTPS*1000) / 1000
		}
		tx, btx := byPath[pathTxPool], byPath[pathPgbTx]
		wr.TxCPUMet, wr.TxTPSMet = tx.MedianCPUus <= btx.MedianCPUus, tx.MedianTPS >= btx.MedianTPS
		wr.TxCPUGap = math.Round(tx.MedianCPUus/btx.MedianCPUus*1000) / 1000
		wr.TxTPSGap = math.Round(tx.MedianTPS/btx.MedianTPS*1000) / 1000
		res.TargetMet = res.TargetMet && wr.CPUMet && wr.TPSMet && wr.TxCPUMet && wr.TxTPSMet
		res.Workloads = append(res.Workloads, wr)
	}
	if profile {
		sess.stop()
		out, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=25", bin, profilePath).CombinedOutput()
		if err != nil {
			t.Errorf("go tool pprof: %v\n%s", err, out)
		}
		res.Profile = strings.Split(strings.TrimSpace(string(out)), "\n")
		t.Logf("session proxy CPU profile (%s):\n%s", profilePath, out)
	}
	text := report(res)
	t.Log("\n" + text)
	dst := filepath.Join(root, "bench", "results")
	if err := results.WriteJSON(dst, "sessionproxy.json", res); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "sessionproxy.md"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// report renders res as markdown.
func report(res result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Session proxy benchmark\n\nMeasured %s on %s CPUs (source %s), %s; %s; %s.\n\n", res.When.Format(time.RFC3339),
		res.Machine["cpus"], res.Source, res.Machine["pgbench"], res.Machine["haproxy"], res.Machine["pgbouncer"])
	b.WriteString("Settings:\n\n")
	for _, k := range []string{"command", "pgbench", "rounds", "cluster", "session", "baseline", "txpool", "l4", "pgbouncer", "pgbouncer-tx", "haproxy"} {
		if v, ok := res.Settings[k]; ok {
			fmt.Fprintf(&b, "- %s: %s\n", k, v)
		}
	}
	for _, w := range res.Workloads {
		fmt.Fprintf(&b, "\n## %s\n\n%s\n\n", w.Workload, w.Desc)
		b.WriteString("| path | TPS (median) | TPS per round | TPS vs direct | mean latency (median) | proxy CPU per transaction (median) | CPU per round (µs) | proxy context switches per transaction (median) | failed |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range w.Paths {
			var tps, cpu []float64
			failed := 0
			for _, r := range p.Runs {
				tps, cpu = append(tps, r.TPS), append(cpu, r.CPUus)
				failed += r.Failed
			}
			cpuCell, cpuRuns, swCell := "—", "—", "—"
			if p.Path != pathDirect {
				cpuCell, cpuRuns = fmt.Sprintf("%.1f µs", p.MedianCPUus), results.Floats(cpu, 1)
				swCell = fmt.Sprintf("%.2f", p.MedianSwitches)
			}
			fmt.Fprintf(&b, "| %s | %.0f | %s | %.3fx | %.3f ms | %s | %s | %s | %d |\n", p.Path, p.MedianTPS, results.Floats(tps, 0), p.TPSRatio, p.MedianLatencyMS, cpuCell, cpuRuns, swCell, failed)
		}
		fmt.Fprintf(&b, "\nSession proxy CPU per transaction vs PgBouncer's: %.2fx (target <= 1: %s). Session proxy TPS vs the best of PgBouncer and HAProxy: %.2fx (target >= 1: %s).\n",
			w.CPUGap, yesNo(w.CPUMet), w.TPSGap, yesNo(w.TPSMet))
		fmt.Fprintf(&b, "Transaction pooling's CPU per transaction vs PgBouncer's in transaction mode: %.2fx (target <= 1: %s). Its TPS vs PgBouncer's in transaction mode: %.2fx (target >= 1: %s).\n",
			w.TxCPUGap, yesNo(w.TxCPUMet), w.TxTPSGap, yesNo(w.TxTPSMet))
		if w.CPUVsBaseline != 0 {
			fmt.Fprintf(&b, "Session proxy vs the baseline's (%s): %.2fx the CPU per transaction, %.2fx the TPS.\n", res.Settings["baseline"], w.CPUVsBaseline, w.TPSVsBaseline)
		}
	}
	fmt.Fprintf(&b, "\nTarget: %s — %s.\n", res.Target, map[bool]string{true: "met", false: "NOT met"}[res.TargetMet])
	if len(res.Profile) > 0 {
		b.WriteString("\nSession proxy CPU profile over all its runs (`go tool pprof -top`):\n\n```\n" + strings.Join(res.Profile, "\n") + "\n```\n")
	}
	b.WriteString("\nNotes: pgbench, PostgreSQL (primary and two replicas), etcd and the proxy under test share the machine's CPUs, so a proxy's CPU competes with the database's; " +
		"CPU per transaction (the proxy process's utime+stime over the run / transactions) is the least noise-sensitive figure. " +
		"TPS on a shared machine varies from round to round; the medians and the per-round figures are both given.\n")
	return b.String()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// pgbench runs one measurement against port; pid, when not 0, is the
// proxy process whose CPU time it measures meanwhile.
func pgbench(env []string, port int, user, mode string, d time.Duration, pid int) (run, error) {
	var rr run
	cpu0, err := cpuSeconds(pid)
	if pid != 0 && err != nil {
		return rr, err
	}
	sw0, err := contextSwitches(pid)
	if err != nil {
		return rr, err
	}
	cmd := exec.Command("pgbench", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", user,
		"-c", strconv.Itoa(clients), "-j", strconv.Itoa(threads), "-T", strconv.Itoa(int(d/time.Second)), "-n", mode, "postgres")
	cmd.Env = env
	b, err := cmd.CombinedOutput()
	out := string(b)
	if err != nil {
		return rr, fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	sum, err := pgbenchtest.Parse(out)
	if err != nil || sum.TPS == 0 {
		return rr, fmt.Errorf("parse pgbench's summary (%v):\n%s", err, out)
	}
	rr.TPS, rr.LatencyMS, rr.Processed, rr.Failed = round1(sum.TPS), sum.LatencyMS, sum.Processed, sum.Failed
	if pid != 0 {
		cpu1, err := cpuSeconds(pid)
		if err != nil {
			return rr, err
		}
		if rr.Processed > 0 {
			rr.CPUus = round1((cpu1 - cpu0) / float64(rr.Processed) * 1e6)
		}
		sw1, err := contextSwitches(pid)
		if err != nil {
			return rr, err
		}
		if rr.Processed > 0 {
			rr.Switches = math.Round(float64(sw1-sw0)/float64(rr.Processed)*100) / 100
		}
	}
	return rr, nil
}

// contextSwitches is the number of times a process's threads gave up
// their CPU, by waiting (voluntary) or by preemption, summed over the
// threads it has now. Each is a sleep and a wake-up paid on the data
// path: an event-loop proxy (PgBouncer, HAProxy, the l4 proxy) sleeps
// about once per batch of ready sockets, a proxy whose connections are
// served by goroutines about once per message arrival and more. Threads
// that exited during a run are not counted (the proxies measured keep
// theirs).
func contextSwitches(pid int) (int64, error) {
	if pid == 0 {
		return 0, nil
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, fmt.Errorf("read the context switches of pid %d: %w", pid, err)
	}
	var n int64
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue // the thread exited meanwhile
		}
		for _, l := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(l, ":")
			if ok && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches") {
				c, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err != nil {
					return 0, fmt.Errorf("read the context switches of pid %d: %q: %w", pid, l, err)
				}
				n += c
			}
		}
	}
	return n, nil
}

// cpuSeconds is a process's user+system CPU time (children excluded).
func cpuSeconds(pid int) (float64, error) {
	if pid == 0 {
		return 0, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read the CPU time of pid %d: %w", pid, err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	// After the command: state is f[0]; utime and stime (fields 14 and 15
	// of stat) are f[11] and f[12], in clock ticks (USER_HZ = 100).
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("read the CPU time of pid %d: short stat %q", pid, s)
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100, nil
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	switch {
	case n == 0:
		return 0
	case n%2 == 1:
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func round1(f float64) float64 { return math.Round(f*10) / 10 }

func rotate(s []string, k int) []string {
	k %= len(s)
	return append(append([]string(nil), s[k:]...), s[:k]...)
}

func pgEnv(password string) []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "PG") {
			env = append(env, e)
		}
	}
	return append(env, "PGPASSWORD="+password, "PGSSLMODE=disable")
}

// primaryPort waits for a healthy cluster and returns its primary's port.
func primaryPort(l local.Layout) (int, error) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		v, err := local.View(context.Background(), l)
		if err == nil {
			ok, why := local.Healthy(l, v)
			if ok && v.Leader != nil {
				for _, m := range l.Members {
					if m.Name == v.Leader.Name {
						return m.PGPort, nil
					}
				}
			}
			err = errors.New(why)
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("cluster not healthy: %w", err)
		}
		time.Sleep(time.Second)
	}
}

// serverPort connects through port and asks PostgreSQL its port.
func serverPort(port int, user, password string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable connect_timeout=5", port, user, password))
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var p int
	err = conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&p)
	return p, err
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if p := "/usr/sbin/" + name; fileExists(p) {
		return p, nil
	}
	return "", fmt.Errorf("%s is not installed", name)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func firstLine(cmd *exec.Cmd) string {
	b, err := cmd.Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
}

// child is a process the bench started in its own process group.
type child struct {
	cmd  *exec.Cmd
	port int
	dir  string
	done chan struct{}
}

// stop ends the child's process group (SIGTERM, then SIGKILL), once.
func (c *child) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(stopTimeout):
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
}

// startChild starts cmd, waits until it listens on port, and stops it
// when t ends.
func startChild(t *testing.T, cmd *exec.Cmd, logPath string, port int) *child {
	t.Helper()
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	c := &child{cmd: cmd, port: port, done: make(chan struct{})}
	go func() { cmd.Wait(); logFile.Close(); close(c.done) }()
	t.Cleanup(c.stop)
	deadline := time.Now().Add(startTimeout)
	for {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			conn.Close()
			return c
		}
		select {
		case <-c.done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("%s exited at once:\n%s", cmd.Path, b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("%s does not listen on %d within %s:\n%s", cmd.Path, port, startTimeout, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func startHAProxy(t *testing.T, work string, pgPort int) *child {
	t.Helper()
	bin, _ := lookPath("haproxy")
	port := freePort(t)
	cfg := fmt.Sprintf(`global
    maxconn 500

defaults
    mode tcp
    timeout connect 2s
    timeout client 30m
    timeout server 30m

listen primary
    bind 127.0.0.1:%d
    server primary 127.0.0.1:%d
`, port, pgPort)
	path := filepath.Join(work, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return startChild(t, exec.Command(bin, "-f", path, "-db"), filepath.Join(work, "haproxy.log"), port)
}

// startPgbouncer runs PgBouncer in poolMode (pgbouncertest.PoolSession or
// PoolTransaction) in front of pgPort (package pgbouncertest: as the
// postgres account when root), with its files in dir.
func startPgbouncer(t *testing.T, dir string, pgPort int, username, password, poolMode string) *child {
	t.Helper()
	port := freePort(t)
	cmd, err := pgbouncertest.Command(pgbouncertest.Config{Dir: dir, ServerPort: pgPort, ListenPort: port, User: username, Password: password, PoolMode: poolMode})
	if err != nil {
		t.Fatal(err)
	}
	c := startChild(t, cmd, dir+".out", port)
	c.dir = dir
	// The pid file appears once PgBouncer listens; give it a moment.
	for range 50 {
		if fileExists(filepath.Join(dir, pgbouncertest.PIDFile)) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}
