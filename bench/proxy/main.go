// Command proxy measures what the holdfast proxy costs a client: pgbench
// throughput (TPS) and mean latency through the holdfast proxy's
// read-write port, against the same pgbench connected directly to the
// primary, through HAProxy in TCP mode, and through pgbouncer in session
// mode, all in one run on one cluster.
//
// Every path ends at the same PostgreSQL (the primary of a local cluster
// started with `holdfast up`); the clients keep their connections for the
// whole run (no -C), so the numbers measure the per-query cost of the extra
// hop, not connection set-up. Two workloads: select-only (-S, one indexed
// read per transaction: the hop's latency dominates) and simple-update (-N:
// three writes and a commit, WAL flush dominates).
//
// To keep background load from favouring one path, every round runs all
// paths back to back, and the order of the paths rotates from round to
// round (the default, one round per path, puts every path in every
// position once). Besides the ratio of mean TPS to direct's, each path's
// median over rounds of its TPS over direct's in the same round is
// reported: on a shared machine a burst of outside load can hit a single
// run. The CPU time each proxy process used during its runs is recorded
// too; per transaction it is the least noise-sensitive measure of a
// proxy's own cost.
//
// On a loaded machine the primary can lose its lease (etcd's fsync stalls
// past the fence point) and the cluster fails over in the middle of a run;
// the round is then repeated whole on the new primary (HAProxy and
// pgbouncer restarted in front of it; at most three times per benchmark)
// and the repeat is recorded in the notes.
//
// HAProxy: TCP mode, one server (the primary's port), no health check.
// pgbouncer: pool_mode session, SCRAM with a plain-text auth_file, run as
// the postgres account (pgbouncer refuses to run as root).
//
// Usage (from the repository root, as root or as a user that can run
// PostgreSQL):
//
//	go run ./bench/proxy
//
// Results go to bench/results/proxy.json and proxy.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/testutil/pgbenchtest"
	"github.com/holdfast/holdfast/internal/testutil/pgbouncertest"
)

// Paths, in their base order.
const (
	pathDirect    = "direct"
	pathHoldfast  = "holdfast-proxy"
	pathHAProxy   = "haproxy"
	pathPgbouncer = "pgbouncer"
)

var paths = []string{pathDirect, pathHoldfast, pathHAProxy, pathPgbouncer}

// Workloads.
var modes = []struct{ name, flag, desc string }{
	{"select-only", "-S", "pgbench -S: one SELECT by primary key per transaction"},
	{"simple-update", "-N", "pgbench -N: UPDATE pgbench_accounts, SELECT, INSERT pgbench_history, commit"},
}

type runResult struct {
	Round      int     `json:"round"`
	Position   int     `json:"position_in_round"`
	TPS        float64 `json:"tps"`
	LatencyMS  float64 `json:"latency_ms"`
	Processed  int     `json:"transactions"`
	Failed     int     `json:"failed"`
	ProxyCPU   float64 `json:"proxy_cpu_cores,omitempty"`     // CPU seconds of the proxy process / wall seconds
	ProxyCPUus float64 `json:"proxy_cpu_us_per_tx,omitempty"` // CPU microseconds of the proxy process per transaction
	// ProxyRunqWait is how long the proxy's threads were ready to run but
	// waited for a CPU, over wall seconds (from /proc/PID/task/*/schedstat):
	// how much the rest of the machine starved the proxy in this run.
	ProxyRunqWait float64 `json:"proxy_runqueue_wait_per_second,omitempty"`
	LoadAverage   float64 `json:"load_average_1m_before"`
}

type pathResult struct {
	Path          string      `json:"path"`
	Runs          []runResult `json:"runs"`
	MeanTPS       float64     `json:"mean_tps"`
	MeanLatencyMS float64     `json:"mean_latency_ms"`
	TPSRatio      float64     `json:"tps_ratio_to_direct"`
	// MedianRoundRatio is the median over rounds of this path's TPS over
	// direct's TPS in the same round: less sensitive to a burst of outside
	// load hitting one run than the ratio of the means.
	MedianRoundRatio float64 `json:"tps_ratio_to_direct_median_of_rounds"`
	LatencyRatio     float64 `json:"latency_ratio_to_direct"`
	MeanProxyCPU     float64 `json:"mean_proxy_cpu_cores,omitempty"`
	// CPUBoundCeiling is the TPS ratio to direct this path could reach at
	// best if direct's run kept every CPU busy: the proxy's own CPU per
	// transaction added to direct's (CPUs / direct TPS). See the notes.
	CPUBoundCeiling float64 `json:"cpu_bound_ceiling_tps_ratio,omitempty"`
	MeanProxyCPUus  float64 `json:"mean_proxy_cpu_us_per_tx,omitempty"`
	MeanRunqWait    float64 `json:"mean_proxy_runqueue_wait_per_second,omitempty"`
	Failed          int     `json:"failed_transactions"`
}

type modeResult struct {
	Mode   string       `json:"mode"`
	Desc   string       `json:"description"`
	Paths  []pathResult `json:"paths"`
	Target struct {
		VsDirect  bool `json:"holdfast_tps_at_least_0_9x_direct"`
		VsHAProxy bool `json:"holdfast_tps_at_least_haproxy"`
	} `json:"target"`
}

type result struct {
	When     time.Time         `json:"when"`
	Machine  map[string]string `json:"machine"`
	Settings map[string]string `json:"settings"`
	Modes    []modeResult      `json:"modes"`
	Target   string            `json:"target"`
	Met      bool              `json:"target_met"`
	Notes    []string          `json:"notes"`
}

func main() {
	clients := flag.Int("clients", 8, "pgbench clients (-c)")
	threads := flag.Int("threads", 2, "pgbench threads (-j)")
	duration := flag.Duration("duration", 15*time.Second, "length of each pgbench run (-T)")
	rounds := flag.Int("rounds", len(paths), "rounds: each runs every path once per workload, in rotated order (a multiple of the number of paths puts every path in every position equally often)")
	scale := flag.Int("scale", 10, "pgbench scale factor (-i -s)")
	members := flag.Int("members", 3, "cluster size")
	out := flag.String("out", "bench/results", "directory for the results")
	flag.Parse()
	if *rounds < 1 || *duration < time.Second || *clients < 1 || *threads < 1 {
		fail(errors.New("-rounds, -duration, -clients and -threads must be positive"))
	}
	if err := run(*clients, *threads, *duration, *rounds, *scale, *members, *out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "proxy bench:", err)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

func run(clients, threads int, duration time.Duration, rounds, scale, members int, outDir string) (err error) {
	for _, tool := range []string{"pgbench", "haproxy", "pgbouncer"} {
		if _, err := lookPath(tool); err != nil {
			return fmt.Errorf("%s is not installed (scripts/install-deps.sh installs it): %w", tool, err)
		}
	}
	work, err := os.MkdirTemp("", "holdfast-bench-proxy")
	if err != nil {
		return err
	}
	// The work directory holds the cluster's logs: kept when the run fails,
	// so the failure can be understood.
	defer func() {
		if err == nil {
			os.RemoveAll(work)
		} else {
			logf("run failed; logs kept in %s", work)
		}
	}()
	os.Chmod(work, 0o755)
	bin := filepath.Join(work, "holdfast")
	if b, err := exec.Command("go", "build", "-o", bin, "./cmd/holdfast").CombinedOutput(); err != nil {
		return fmt.Errorf("build holdfast (run from the repository root): %v\n%s", err, b)
	}
	dir := filepath.Join(work, "cluster")
	logf("starting a %d-member cluster in %s", members, dir)
	if b, err := exec.Command(bin, "up", "--detach", "--dir", dir, "--members", strconv.Itoa(members), "--wait", "120s").CombinedOutput(); err != nil {
		return fmt.Errorf("holdfast up: %v\n%s", err, b)
	}
	defer func() {
		logf("stopping the cluster")
		exec.Command(bin, "down", "--dir", dir).Run()
	}()
	l, err := local.ReadLayout(dir)
	if err != nil {
		return err
	}
	password := l.Superuser.Password
	env := pgEnv(password)
	st, err := connectPaths(work, dir, l, 1)
	if err != nil {
		return err
	}
	defer func() { st.stop() }()

	logf("pgbench -i -s %d on the primary (port %d)", scale, st.pgPort)
	initCmd := exec.Command("pgbench", "-i", "-s", strconv.Itoa(scale), "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(st.pgPort), "-U", l.Superuser.Username, "postgres")
	initCmd.Env = env
	if b, err := initCmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %v\n%s", err, b)
	}

	res := result{
		When:    time.Now().UTC(),
		Machine: machine(),
		Settings: map[string]string{
			"command":  "go run ./bench/proxy " + strings.Join(os.Args[1:], " "),
			"pgbench":  fmt.Sprintf("-c %d -j %d -T %d -n (no vacuum), persistent connections (no -C), simple query protocol", clients, threads, int(duration.Seconds())),
			"scale":    strconv.Itoa(scale),
			"rounds":   fmt.Sprintf("%d; every round runs every path once per workload, path order rotated each round", rounds),
			"cluster":  fmt.Sprintf("%d members, embedded etcd, PostgreSQL defaults as holdfast renders them (asynchronous replication to %d replicas)", members, members-1),
			"holdfast": fmt.Sprintf("the proxy `holdfast up` starts (read-write port, default flags: %d event loop(s) on %d CPUs)", max(1, runtime.NumCPU()/2), runtime.NumCPU()),
			"haproxy":  fmt.Sprintf("mode tcp, one server = the primary's port, no health check, default nbthread (= %d CPUs)", runtime.NumCPU()),
			"pgbouncer": "pool_mode=session, default_pool_size=20, auth_type=scram-sha-256 with a plain-text auth_file, " +
				"run as postgres",
		},
		Target: "holdfast proxy TPS >= 0.9x direct and >= HAProxy's, in both workloads",
	}
	loadBefore := loadAvg()
	const maxRepeats = 3
	repeats := 0
	for _, m := range modes {
		mr := modeResult{Mode: m.name, Desc: m.desc}
		byPath := map[string]*pathResult{}
		for _, p := range paths {
			byPath[p] = &pathResult{Path: p}
		}
		for r := 0; r < rounds; {
			runs, err := runRound(st, env, l.Superuser.Username, m.flag, m.name, r, clients, threads, duration)
			if err != nil {
				// On a loaded machine the primary can lose its lease (etcd's
				// fsync stalls) and the cluster fails over mid-run. The
				// round is then repeated whole, on the new primary, so every
				// round still compares all paths under the same conditions.
				if repeats >= maxRepeats {
					return err
				}
				repeats++
				first, _, _ := strings.Cut(err.Error(), "\n")
				res.Notes = append(res.Notes, fmt.Sprintf("%s round %d was repeated: %s", m.name, r+1, first))
				logf("%s; repeating %s round %d once the cluster is healthy", first, m.name, r+1)
				st.stop()
				next, err := connectPaths(work, dir, l, repeats+1)
				if err != nil {
					return err
				}
				st = next
				continue
			}
			for p, rr := range runs {
				byPath[p].Runs = append(byPath[p].Runs, rr)
			}
			r++
		}
		for _, p := range paths {
			pr := byPath[p]
			var tps, lat, cpu, us, wait float64
			for _, rr := range pr.Runs {
				wait += rr.ProxyRunqWait
				tps += rr.TPS
				lat += rr.LatencyMS
				cpu += rr.ProxyCPU
				us += rr.ProxyCPUus
				pr.Failed += rr.Failed
			}
			n := float64(len(pr.Runs))
			pr.MeanTPS, pr.MeanLatencyMS, pr.MeanProxyCPU = math.Round(tps/n*10)/10, round3(lat/n), round3(cpu/n)
			pr.MeanProxyCPUus = math.Round(us/n*10) / 10
			pr.MeanRunqWait = round3(wait / n)
		}
		direct := byPath[pathDirect]
		for _, p := range paths {
			pr := byPath[p]
			pr.TPSRatio = round3(pr.MeanTPS / direct.MeanTPS)
			var ratios []float64
			for i, rr := range pr.Runs {
				ratios = append(ratios, rr.TPS/direct.Runs[i].TPS)
			}
			pr.MedianRoundRatio = round3(median(ratios))
			if p != pathDirect && pr.MeanProxyCPUus > 0 {
				directUS := float64(runtime.NumCPU()) * 1e6 / direct.MeanTPS
				pr.CPUBoundCeiling = round3(directUS / (directUS + pr.MeanProxyCPUus))
			}
			pr.LatencyRatio = round3(pr.MeanLatencyMS / direct.MeanLatencyMS)
			mr.Paths = append(mr.Paths, *pr)
		}
		hf, hp := byPath[pathHoldfast], byPath[pathHAProxy]
		mr.Target.VsDirect = hf.MeanTPS >= 0.9*direct.MeanTPS
		mr.Target.VsHAProxy = hf.MeanTPS >= hp.MeanTPS
		res.Modes = append(res.Modes, mr)
	}
	res.Met = true
	for _, m := range res.Modes {
		res.Met = res.Met && m.Target.VsDirect && m.Target.VsHAProxy
	}
	res.Machine["load_average_1m_start"] = fmt.Sprintf("%.2f", loadBefore)
	res.Machine["load_average_1m_end"] = fmt.Sprintf("%.2f", loadAvg())
	res.Notes = append(res.Notes,
		"pgbench, PostgreSQL (primary and replicas), the embedded etcd members and the proxy under test all share the machine's CPUs; a proxy's own CPU use competes with the database's.",
		"The 1-minute load average counts this benchmark's own runnable processes too (2 pgbench threads, 8 backends, the proxy: about 10 during a run), so it is not a measure of outside load; whatever else ran on the machine meanwhile is spread over the paths by the rotated order, and shows as the spread between rounds.",
		"Proxy CPU per transaction (CPU time of the proxy process / transactions) is the least noise-sensitive measure of a proxy's own cost: it does not depend on how much CPU the rest of the machine left it.",
		"Ceiling if CPU-bound: pgbench and PostgreSQL keep every CPU busy on the direct path, so a transaction there costs about CPUs / direct TPS of CPU time; through a proxy it costs that plus the proxy's own CPU per transaction, and the TPS ratio cannot exceed direct's cost over the sum. It is an estimate (outside load takes CPUs from the direct run too), but it says what a proxy's cost allows: 0.9x needs a proxy that costs at most a ninth of direct's per-transaction CPU.",
		"Proxy waiting for a CPU: seconds per second that the proxy's threads were ready to run but had no CPU. A single-threaded proxy (holdfast's one event loop, pgbouncer) that waits carries all clients' traffic in that wait; a proxy waiting much longer in one run than in another was starved by other processes then.",
		"Under outside load a proxy with more threads (HAProxy: one per CPU) gets a larger share of the CPUs from the kernel's scheduler at the expense of the other processes, which can lift its TPS, even above direct's; the per-transaction CPU is not affected by this.")
	return write(outDir, res)
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// paths is where the benchmarked paths lead: the primary, and HAProxy and
// pgbouncer started in front of it.
type pathSet struct {
	pgPort   int
	hap, pgb *child
	addrs    map[string]int // port of each path
	pids     map[string]int // pid of each proxy
}

// connectPaths waits for the cluster to be healthy, finds the primary and
// starts HAProxy and pgbouncer in front of it (their files in a
// subdirectory of work numbered attempt), and checks that every path
// reaches the primary.
func connectPaths(work, dir string, l local.Layout, attempt int) (*pathSet, error) {
	deadline := time.Now().Add(2 * time.Minute)
	var primary string
	for {
		v, err := local.View(context.Background(), l)
		if err == nil {
			ok, why := local.Healthy(l, v)
			if ok && v.Leader != nil {
				primary = v.Leader.Name
				break
			}
			err = errors.New(why)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("cluster not healthy: %w", err)
		}
		time.Sleep(time.Second)
	}
	st := &pathSet{addrs: map[string]int{pathHoldfast: l.ProxyRWPort}, pids: map[string]int{}}
	for _, m := range l.Members {
		if m.Name == primary {
			st.pgPort = m.PGPort
		}
	}
	st.addrs[pathDirect] = st.pgPort
	if pid, err := readPID(filepath.Join(dir, "proxy.pid")); err == nil {
		st.pids[pathHoldfast] = pid
	}
	sub := filepath.Join(work, fmt.Sprintf("paths-%d", attempt))
	if err := os.MkdirAll(sub, 0o755); err != nil {
		return nil, err
	}
	var err error
	if st.hap, err = startHAProxy(sub, st.pgPort); err != nil {
		return nil, err
	}
	st.addrs[pathHAProxy], st.pids[pathHAProxy] = st.hap.port, st.hap.pid()
	if st.pgb, err = startPgbouncer(sub, st.pgPort, l.Superuser.Username, l.Superuser.Password); err != nil {
		st.stop()
		return nil, err
	}
	st.addrs[pathPgbouncer] = st.pgb.port
	if pid, err := readPID(filepath.Join(st.pgb.dir, pgbouncertest.PIDFile)); err == nil {
		st.pids[pathPgbouncer] = pid
	}
	for _, p := range paths {
		port, err := serverPort(st.addrs[p], l.Superuser.Username, l.Superuser.Password)
		if err == nil && port != st.pgPort {
			err = fmt.Errorf("reaches PostgreSQL port %d, not the primary's %d", port, st.pgPort)
		}
		if err != nil {
			st.stop()
			return nil, fmt.Errorf("%s (port %d): %w", p, st.addrs[p], err)
		}
	}
	logf("primary %s (port %d); paths: %v (pids of proxies %v)", primary, st.pgPort, st.addrs, st.pids)
	return st, nil
}

// stop ends the HAProxy and pgbouncer this set started.
func (st *pathSet) stop() {
	if st.pgb != nil {
		st.pgb.stop()
		st.pgb = nil
	}
	if st.hap != nil {
		st.hap.stop()
		st.hap = nil
	}
}

// runRound runs one round (index r) of a workload: every path once, in
// the round's rotated order.
func runRound(st *pathSet, env []string, user, flag, name string, r, clients, threads int, duration time.Duration) (map[string]runResult, error) {
	if flag == "-N" {
		// The same starting point for every round's updates.
		vac := exec.Command("psql", "-h", "127.0.0.1", "-p", strconv.Itoa(st.pgPort), "-U", user, "-d", "postgres",
			"-qc", "VACUUM ANALYZE pgbench_accounts, pgbench_history")
		vac.Env = env
		if b, err := vac.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("vacuum: %v\n%s", err, b)
		}
	}
	runs := map[string]runResult{}
	for pos, p := range rotate(paths, r) {
		rr, err := pgbench(env, st.addrs[p], user, flag, clients, threads, duration, st.pids[p])
		if err != nil {
			return nil, fmt.Errorf("%s %s round %d: %w", name, p, r+1, err)
		}
		rr.Round, rr.Position = r+1, pos+1
		logf("%-13s round %d  %-15s tps %9.1f  latency %6.3f ms  failed %d  proxy cpu %.2f cores, %.1f us/tx, waited for a cpu %.2f s/s  (load %.2f)",
			name, r+1, p, rr.TPS, rr.LatencyMS, rr.Failed, rr.ProxyCPU, rr.ProxyCPUus, rr.ProxyRunqWait, rr.LoadAverage)
		runs[p] = rr
	}
	return runs, nil
}

func rotate(s []string, k int) []string {
	k %= len(s)
	return append(append([]string(nil), s[k:]...), s[:k]...)
}

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

func pgEnv(password string) []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "PG") {
			env = append(env, e)
		}
	}
	return append(env, "PGPASSWORD="+password, "PGSSLMODE=disable")
}

// pgbench runs one measurement against a port and parses its summary. pid,
// when not 0, is the proxy process whose CPU time is measured meanwhile.
func pgbench(env []string, port int, user, mode string, clients, threads int, d time.Duration, pid int) (runResult, error) {
	rr := runResult{LoadAverage: loadAvg()}
	cpu0, _ := cpuSeconds(pid)
	wait0, _ := runqWait(pid)
	start := time.Now()
	cmd := exec.Command("pgbench", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", user,
		"-c", strconv.Itoa(clients), "-j", strconv.Itoa(threads), "-T", strconv.Itoa(int(d.Seconds())), "-n", mode, "postgres")
	cmd.Env = env
	b, err := cmd.CombinedOutput()
	wall := time.Since(start).Seconds()
	out := string(b)
	if err != nil {
		return rr, fmt.Errorf("pgbench: %v\n%s", err, out)
	}
	var cpu float64
	if pid != 0 {
		if cpu1, err := cpuSeconds(pid); err == nil {
			cpu = cpu1 - cpu0
			rr.ProxyCPU = round3(cpu / wall)
		}
		if wait1, err := runqWait(pid); err == nil {
			rr.ProxyRunqWait = round3((wait1 - wait0) / wall)
		}
	}
	sum, err := pgbenchtest.Parse(out)
	if err != nil || sum.TPS == 0 {
		return rr, fmt.Errorf("cannot parse pgbench output (%v):\n%s", err, out)
	}
	rr.TPS, rr.LatencyMS, rr.Processed, rr.Failed = sum.TPS, sum.LatencyMS, sum.Processed, sum.Failed
	rr.TPS = math.Round(rr.TPS*10) / 10
	if cpu > 0 && rr.Processed > 0 {
		rr.ProxyCPUus = math.Round(cpu/float64(rr.Processed)*1e7) / 10
	}
	return rr, nil
}

// runqWait is the time a process's threads have spent ready to run but
// waiting for a CPU, in seconds (the second field of each thread's
// /proc/PID/task/TID/schedstat, in nanoseconds).
func runqWait(pid int) (float64, error) {
	if pid == 0 {
		return 0, errors.New("no pid")
	}
	files, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(files) == 0 {
		return 0, fmt.Errorf("no schedstat for pid %d", pid)
	}
	var ns float64
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the thread ended
		}
		if fs := strings.Fields(string(b)); len(fs) >= 2 {
			v, _ := strconv.ParseFloat(fs[1], 64)
			ns += v
		}
	}
	return ns / 1e9, nil
}

// cpuSeconds is a process's user+system CPU time, children excluded.
func cpuSeconds(pid int) (float64, error) {
	if pid == 0 {
		return 0, errors.New("no pid")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad stat")
	}
	f := strings.Fields(s[i+1:])
	// Fields after the command: state is f[0]; utime and stime are stat
	// fields 14 and 15, i.e. f[11] and f[12].
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100, nil // USER_HZ is 100 on Linux
}

func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}

func readPID(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// serverPort connects through port and asks PostgreSQL which port it
// listens on.
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

func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	p := "/usr/sbin/" + name
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found in PATH or /usr/sbin", name)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitListening(port int, cmd *exec.Cmd, logPath string) error {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
			c.Close()
			return nil
		}
		if cmd.ProcessState != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := os.ReadFile(logPath)
	return fmt.Errorf("%s does not listen on %d:\n%s", cmd.Path, port, b)
}

// child is a helper process started in its own process group.
type child struct {
	cmd  *exec.Cmd
	port int
	dir  string
	done chan struct{}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// stop ends the process group this bench started.
func (c *child) stop() {
	syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
}

func start(cmd *exec.Cmd, logPath string, port int, dir string) (*child, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	c := &child{cmd: cmd, port: port, dir: dir, done: make(chan struct{})}
	go func() { cmd.Wait(); logFile.Close(); close(c.done) }()
	if err := waitListening(port, cmd, logPath); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

func startHAProxy(work string, pgPort int) (*child, error) {
	bin, _ := lookPath("haproxy")
	port, err := freePort()
	if err != nil {
		return nil, err
	}
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
		return nil, err
	}
	return start(exec.Command(bin, "-f", path, "-db"), filepath.Join(work, "haproxy.log"), port, work)
}

// startPgbouncer runs pgbouncer (package pgbouncertest: as the postgres
// account when root) with its files in a directory of its own.
func startPgbouncer(work string, pgPort int, user, password string) (*child, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(work, "pgbouncer")
	cmd, err := pgbouncertest.Command(pgbouncertest.Config{Dir: dir, ServerPort: pgPort, ListenPort: port, User: user, Password: password})
	if err != nil {
		return nil, err
	}
	return start(cmd, filepath.Join(work, "pgbouncer.out"), port, dir)
}

func machine() map[string]string {
	m := map[string]string{
		"cpus":   strconv.Itoa(runtime.NumCPU()),
		"go":     runtime.Version(),
		"goos":   runtime.GOOS + "/" + runtime.GOARCH,
		"kernel": firstLine(exec.Command("uname", "-r")),
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				m["cpu_model"] = strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
				break
			}
		}
	}
	m["pgbench"] = firstLine(exec.Command("pgbench", "--version"))
	if p, err := lookPath("haproxy"); err == nil {
		m["haproxy"] = firstLine(exec.Command(p, "-v"))
	}
	if p, err := lookPath("pgbouncer"); err == nil {
		m["pgbouncer"] = firstLine(exec.Command(p, "--version"))
	}
	return m
}

func firstLine(cmd *exec.Cmd) string {
	b, err := cmd.Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
}

func write(dir string, r result) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "proxy.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	var md strings.Builder
	fmt.Fprintf(&md, "# Proxy benchmark\n\n")
	fmt.Fprintf(&md, "Measured %s on %s CPUs (%s), %s, Go %s.\n", r.When.Format(time.RFC3339), r.Machine["cpus"], r.Machine["cpu_model"], r.Machine["pgbench"], r.Machine["go"])
	fmt.Fprintf(&md, "Command: `%s`. Load average (1 min) %s at the start, %s at the end.\n\n", strings.TrimSpace(r.Settings["command"]), r.Machine["load_average_1m_start"], r.Machine["load_average_1m_end"])
	fmt.Fprintf(&md, "Settings:\n\n")
	for _, k := range []string{"pgbench", "scale", "rounds", "cluster", "holdfast", "haproxy", "pgbouncer"} {
		fmt.Fprintf(&md, "- %s: %s\n", k, r.Settings[k])
	}
	fmt.Fprintf(&md, "- versions: %s; %s\n", r.Machine["haproxy"], r.Machine["pgbouncer"])
	for _, m := range r.Modes {
		fmt.Fprintf(&md, "\n## %s\n\n%s\n\n", m.Mode, m.Desc)
		fmt.Fprintf(&md, "| path | TPS (mean) | TPS per round | mean latency | TPS vs direct | TPS vs direct, median of rounds | latency vs direct | proxy CPU (cores) | proxy CPU per transaction | ceiling if CPU-bound | proxy waiting for a CPU | failed |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range m.Paths {
			var per []string
			for _, rr := range p.Runs {
				per = append(per, fmt.Sprintf("%.0f", rr.TPS))
			}
			cpu, us, ceil, wait := "—", "—", "—", "—"
			if p.Path != pathDirect {
				cpu, us = fmt.Sprintf("%.2f", p.MeanProxyCPU), fmt.Sprintf("%.1f µs", p.MeanProxyCPUus)
				wait = fmt.Sprintf("%.2f s/s", p.MeanRunqWait)
			}
			if p.CPUBoundCeiling > 0 {
				ceil = fmt.Sprintf("%.3fx", p.CPUBoundCeiling)
			}
			fmt.Fprintf(&md, "| %s | %.0f | %s | %.3f ms | %.3fx | %.3fx | %.3fx | %s | %s | %s | %s | %d |\n", p.Path, p.MeanTPS, strings.Join(per, " "), p.MeanLatencyMS, p.TPSRatio, p.MedianRoundRatio, p.LatencyRatio, cpu, us, ceil, wait, p.Failed)
		}
		fmt.Fprintf(&md, "\nholdfast proxy >= 0.9x direct: %s; >= HAProxy: %s.\n", yes(m.Target.VsDirect), yes(m.Target.VsHAProxy))
	}
	verdict := "met"
	if !r.Met {
		verdict = "NOT met"
	}
	fmt.Fprintf(&md, "\nTarget: %s — %s.\n", r.Target, verdict)
	if len(r.Notes) > 0 {
		fmt.Fprintf(&md, "\nNotes:\n\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&md, "- %s\n", n)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "proxy.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	fmt.Print(md.String())
	return nil
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
