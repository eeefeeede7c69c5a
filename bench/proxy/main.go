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
// round. The CPU time each proxy process used during its runs is recorded
// too.
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
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/internal/local"
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
	Round       int     `json:"round"`
	Position    int     `json:"position_in_round"`
	TPS         float64 `json:"tps"`
	LatencyMS   float64 `json:"latency_ms"`
	Processed   int     `json:"transactions"`
	Failed      int     `json:"failed"`
	ProxyCPU    float64 `json:"proxy_cpu_cores,omitempty"`     // CPU seconds of the proxy process / wall seconds
	ProxyCPUus  float64 `json:"proxy_cpu_us_per_tx,omitempty"` // CPU microseconds of the proxy process per transaction
	LoadAverage float64 `json:"load_average_1m_before"`
}

type pathResult struct {
	Path           string      `json:"path"`
	Runs           []runResult `json:"runs"`
	MeanTPS        float64     `json:"mean_tps"`
	MeanLatencyMS  float64     `json:"mean_latency_ms"`
	TPSRatio       float64     `json:"tps_ratio_to_direct"`
	LatencyRatio   float64     `json:"latency_ratio_to_direct"`
	MeanProxyCPU   float64     `json:"mean_proxy_cpu_cores,omitempty"`
	MeanProxyCPUus float64     `json:"mean_proxy_cpu_us_per_tx,omitempty"`
	Failed         int         `json:"failed_transactions"`
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
	rounds := flag.Int("rounds", 3, "rounds: each runs every path once per workload, in rotated order")
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
	v, err := local.View(context.Background(), l)
	if err != nil {
		return err
	}
	if ok, why := local.Healthy(l, v); !ok {
		return fmt.Errorf("cluster not healthy: %s", why)
	}
	primary := v.Leader.Name
	var pgPort int
	for _, m := range l.Members {
		if m.Name == primary {
			pgPort = m.PGPort
		}
	}
	password := l.Superuser.Password
	env := pgEnv(password)

	logf("pgbench -i -s %d on the primary %s (port %d)", scale, primary, pgPort)
	initCmd := exec.Command("pgbench", "-i", "-s", strconv.Itoa(scale), "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(pgPort), "-U", l.Superuser.Username, "postgres")
	initCmd.Env = env
	if b, err := initCmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pgbench -i: %v\n%s", err, b)
	}

	addrs := map[string]int{pathDirect: pgPort, pathHoldfast: l.ProxyRWPort}
	pids := map[string]int{}
	if pid, err := readPID(filepath.Join(dir, "proxy.pid")); err == nil {
		pids[pathHoldfast] = pid
	}
	hap, err := startHAProxy(work, pgPort)
	if err != nil {
		return err
	}
	defer hap.stop()
	addrs[pathHAProxy], pids[pathHAProxy] = hap.port, hap.pid()
	pgb, err := startPgbouncer(work, pgPort, l.Superuser.Username, password)
	if err != nil {
		return err
	}
	defer pgb.stop()
	addrs[pathPgbouncer] = pgb.port
	if pid, err := readPID(filepath.Join(pgb.dir, "pgbouncer.pid")); err == nil {
		pids[pathPgbouncer] = pid
	}

	// Every path must reach the primary.
	for _, p := range paths {
		port, err := serverPort(addrs[p], l.Superuser.Username, password)
		if err != nil {
			return fmt.Errorf("%s (port %d): %w", p, addrs[p], err)
		}
		if port != pgPort {
			return fmt.Errorf("%s (port %d) reaches PostgreSQL port %d, not the primary's %d", p, addrs[p], port, pgPort)
		}
	}
	logf("paths: %v (pids of proxies %v)", addrs, pids)

	res := result{
		When:    time.Now().UTC(),
		Machine: machine(),
		Settings: map[string]string{
			"command":  "go run ./bench/proxy " + strings.Join(os.Args[1:], " "),
			"pgbench":  fmt.Sprintf("-c %d -j %d -T %d -n (no vacuum), persistent connections (no -C), simple query protocol", clients, threads, int(duration.Seconds())),
			"scale":    strconv.Itoa(scale),
			"rounds":   fmt.Sprintf("%d; every round runs every path once per workload, path order rotated each round", rounds),
			"cluster":  fmt.Sprintf("%d members, embedded etcd, PostgreSQL defaults as holdfast renders them (asynchronous replication to %d replicas)", members, members-1),
			"holdfast": "the proxy `holdfast up` starts (read-write port, default flags)",
			"haproxy":  "mode tcp, one server = the primary's port, no health check, default nbthread",
			"pgbouncer": "pool_mode=session, default_pool_size=20, auth_type=scram-sha-256 with a plain-text auth_file, " +
				"run as postgres",
		},
		Target: "holdfast proxy TPS >= 0.9x direct and >= HAProxy's, in both workloads",
	}
	loadBefore := loadAvg()
	for _, m := range modes {
		mr := modeResult{Mode: m.name, Desc: m.desc}
		byPath := map[string]*pathResult{}
		for _, p := range paths {
			byPath[p] = &pathResult{Path: p}
		}
		for r := 0; r < rounds; r++ {
			order := rotate(paths, r)
			if m.flag == "-N" {
				// The same starting point for every round's updates.
				vac := exec.Command("psql", "-h", "127.0.0.1", "-p", strconv.Itoa(pgPort), "-U", l.Superuser.Username, "-d", "postgres",
					"-qc", "VACUUM ANALYZE pgbench_accounts, pgbench_history")
				vac.Env = env
				if b, err := vac.CombinedOutput(); err != nil {
					return fmt.Errorf("vacuum: %v\n%s", err, b)
				}
			}
			for pos, p := range order {
				rr, err := pgbench(env, addrs[p], l.Superuser.Username, m.flag, clients, threads, duration, pids[p])
				if err != nil {
					return fmt.Errorf("%s %s round %d: %w", m.name, p, r+1, err)
				}
				rr.Round, rr.Position = r+1, pos+1
				logf("%-13s round %d  %-15s tps %9.1f  latency %6.3f ms  failed %d  proxy cpu %.2f cores, %.1f us/tx  (load %.2f)",
					m.name, r+1, p, rr.TPS, rr.LatencyMS, rr.Failed, rr.ProxyCPU, rr.ProxyCPUus, rr.LoadAverage)
				byPath[p].Runs = append(byPath[p].Runs, rr)
			}
		}
		for _, p := range paths {
			pr := byPath[p]
			var tps, lat, cpu, us float64
			for _, rr := range pr.Runs {
				tps += rr.TPS
				lat += rr.LatencyMS
				cpu += rr.ProxyCPU
				us += rr.ProxyCPUus
				pr.Failed += rr.Failed
			}
			n := float64(len(pr.Runs))
			pr.MeanTPS, pr.MeanLatencyMS, pr.MeanProxyCPU = math.Round(tps/n*10)/10, round3(lat/n), round3(cpu/n)
			pr.MeanProxyCPUus = math.Round(us/n*10) / 10
		}
		direct := byPath[pathDirect]
		for _, p := range paths {
			pr := byPath[p]
			pr.TPSRatio = round3(pr.MeanTPS / direct.MeanTPS)
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
		"Proxy CPU per transaction (CPU time of the proxy process / transactions) is the least noise-sensitive measure of a proxy's own cost: it does not depend on how much CPU the rest of the machine left it.")
	return write(outDir, res)
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

var (
	tpsRe       = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
	latRe       = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	failedRe    = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	processedRe = regexp.MustCompile(`(?m)^number of transactions actually processed: (\d+)`)
)

// pgbench runs one measurement against a port and parses its summary. pid,
// when not 0, is the proxy process whose CPU time is measured meanwhile.
func pgbench(env []string, port int, user, mode string, clients, threads int, d time.Duration, pid int) (runResult, error) {
	rr := runResult{LoadAverage: loadAvg()}
	cpu0, _ := cpuSeconds(pid)
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
	}
	m := tpsRe.FindStringSubmatch(out)
	lm := latRe.FindStringSubmatch(out)
	fm := failedRe.FindStringSubmatch(out)
	pm := processedRe.FindStringSubmatch(out)
	if m == nil || lm == nil || pm == nil {
		return rr, fmt.Errorf("cannot parse pgbench output:\n%s", out)
	}
	rr.TPS, _ = strconv.ParseFloat(m[1], 64)
	rr.LatencyMS, _ = strconv.ParseFloat(lm[1], 64)
	rr.Processed, _ = strconv.Atoi(pm[1])
	if fm != nil {
		rr.Failed, _ = strconv.Atoi(fm[1])
	}
	rr.TPS = math.Round(rr.TPS*10) / 10
	if cpu > 0 && rr.Processed > 0 {
		rr.ProxyCPUus = math.Round(cpu/float64(rr.Processed)*1e7) / 10
	}
	return rr, nil
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

// startPgbouncer runs pgbouncer as the postgres account, with its files in
// a directory that account owns.
func startPgbouncer(work string, pgPort int, user, password string) (*child, error) {
	bin, _ := lookPath("pgbouncer")
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(work, "pgbouncer")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ini := fmt.Sprintf(`[databases]
postgres = host=127.0.0.1 port=%d dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %s
pool_mode = session
max_client_conn = 200
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
logfile = %s
pidfile = %s
`, pgPort, port, filepath.Join(dir, "userlist.txt"), filepath.Join(dir, "pgbouncer.log"), filepath.Join(dir, "pgbouncer.pid"))
	files := map[string]string{
		"pgbouncer.ini": ini,
		"userlist.txt":  fmt.Sprintf("%q %q\n", user, password),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			return nil, err
		}
	}
	args := []string{filepath.Join(dir, "pgbouncer.ini")}
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		// pgbouncer refuses to run as root.
		u, err := user_("postgres")
		if err != nil {
			return nil, err
		}
		for _, p := range []string{dir, filepath.Join(dir, "pgbouncer.ini"), filepath.Join(dir, "userlist.txt")} {
			if err := os.Chown(p, u[0], u[1]); err != nil {
				return nil, err
			}
		}
		cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--", bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	return start(cmd, filepath.Join(work, "pgbouncer.out"), port, dir)
}

// user_ returns the uid and gid of an account.
func user_(name string) ([2]int, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return [2]int{}, fmt.Errorf("pgbouncer must not run as root and there is no %q account: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return [2]int{uid, gid}, nil
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
		fmt.Fprintf(&md, "| path | TPS (mean) | TPS per round | mean latency | TPS vs direct | latency vs direct | proxy CPU (cores) | proxy CPU per transaction | failed |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range m.Paths {
			var per []string
			for _, rr := range p.Runs {
				per = append(per, fmt.Sprintf("%.0f", rr.TPS))
			}
			cpu, us := "—", "—"
			if p.Path != pathDirect {
				cpu, us = fmt.Sprintf("%.2f", p.MeanProxyCPU), fmt.Sprintf("%.1f µs", p.MeanProxyCPUus)
			}
			fmt.Fprintf(&md, "| %s | %.0f | %s | %.3f ms | %.3fx | %.3fx | %s | %s | %d |\n", p.Path, p.MeanTPS, strings.Join(per, " "), p.MeanLatencyMS, p.TPSRatio, p.LatencyRatio, cpu, us, p.Failed)
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
