package e2e

// Helpers for the proxy tests (proxy_test.go): a cluster whose `holdfast up`
// output is kept, connections through a proxy listener, an extra
// `holdfast proxy` process with its own flags and metrics, a client that
// opens a connection per write and records where each one landed, pgbench
// through the proxy, and freezing processes with SIGSTOP (always thawed
// when the test ends).

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/pgauth"
	"github.com/holdfast/holdfast/internal/testutil"
	"github.com/holdfast/holdfast/internal/testutil/pgbenchtest"
)

// pxBind returns the cluster bound to t, so the harness's helpers fail the
// sub-test that calls them (never the parent from another goroutine).
func (c *Cluster) pxBind(t *testing.T) *Cluster {
	cc := *c
	cc.t = t
	return &cc
}

// startProxyCluster is StartCluster keeping what `holdfast up` printed. On
// failure the tail of the local proxy's log is printed with the agents'.
func startProxyCluster(t *testing.T, n int) (*Cluster, string) {
	t.Helper()
	testutil.PGBinDir(t)
	c := &Cluster{t: t, Dir: filepath.Join(testutil.Dir(t), "cluster")}
	t.Cleanup(func() {
		if t.Failed() {
			c.DumpLogs()
			t.Logf("==== proxy.log (tail)\n%s", fileTail(local.ProxyLogFile(c.Dir), 80))
		}
		run(t, 3*time.Minute, "down", "--dir", c.Dir)
	})
	out, err := run(t, 3*time.Minute, "up", "--detach", "--dir", c.Dir, "--members", strconv.Itoa(n), "--wait", "90s")
	if err != nil {
		t.Fatalf("holdfast up: %v\n%s", err, out)
	}
	l, err := local.ReadLayout(c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	c.Layout = l
	return c, out
}

// fileTail returns the last n lines of a file.
func fileTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// proxyDSN is a libpq/pgx connection string for a proxy listener.
func (c *Cluster) proxyDSN(addr string, connectTimeout time.Duration) string {
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	return c.Layout.SuperuserDSN(p, max(connectTimeout, time.Second))
}

// directDSN is a connection string over every database member that takes
// only a writable server (target_session_attrs=read-write): how a client
// without the proxy finds the primary.
func (c *Cluster) directDSN(connectTimeout time.Duration) string {
	var hosts, ports []string
	for _, m := range c.Layout.Members {
		if !m.Witness {
			hosts, ports = append(hosts, "127.0.0.1"), append(ports, strconv.Itoa(m.PGPort))
		}
	}
	return fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=postgres sslmode=disable connect_timeout=%d target_session_attrs=read-write",
		strings.Join(hosts, ","), strings.Join(ports, ","), c.Layout.Superuser.Username, c.Layout.Superuser.Password,
		int((max(connectTimeout, time.Second)+time.Second-1)/time.Second))
}

// backend is who answered a connection: PostgreSQL's own port and whether
// it is in recovery.
type backend struct {
	port       int
	inRecovery bool
}

// whoAnswers opens a new connection to dsn and asks the server which port
// it listens on and whether it is in recovery.
func whoAnswers(dsn string, timeout time.Duration) (backend, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return backend{}, err
	}
	defer conn.Close(context.Background())
	var b backend
	err = conn.QueryRow(ctx, "SELECT inet_server_port(), pg_is_in_recovery()").Scan(&b.port, &b.inRecovery)
	return b, err
}

// memberByPort names the member whose PostgreSQL listens on port.
func (c *Cluster) memberByPort(port int) string {
	for _, m := range c.Layout.Members {
		if m.PGPort == port {
			return m.Name
		}
	}
	return fmt.Sprintf("port %d (no member)", port)
}

// leaderRunning is a WaitFor condition: a leader other than the excluded
// members, running as primary.
func leaderRunning(not ...string) func(ctl.ClusterList) bool {
	return func(l ctl.ClusterList) bool {
		if l.Leader == "" {
			return false
		}
		for _, n := range not {
			if l.Leader == n {
				return false
			}
		}
		m := member(l, l.Leader)
		return m.Role == "primary" && m.State == "running"
	}
}

// proxyProc is a `holdfast proxy` process started by a test, with its own
// listeners, flags and metrics endpoint.
type proxyProc struct {
	rw, ro, metrics string
	log             string
}

// startProxyProc starts `holdfast proxy` for the cluster on free ports with
// extra flags, waits until it has read a first view (its metrics show the
// view's age), and stops it when t ends.
func startProxyProc(t *testing.T, c *Cluster, extra ...string) *proxyProc {
	t.Helper()
	p := &proxyProc{
		rw:      fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
		ro:      fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
		metrics: fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t)),
		log:     filepath.Join(testutil.Dir(t), "proxy.log"),
	}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	// --dir last, so this process never looks like the cluster's own proxy
	// (whose command line starts "proxy --dir").
	args := append([]string{"proxy", "--rw-listen", p.rw, "--ro-listen", p.ro, "--metrics-listen", p.metrics,
		"--log-level", "debug"}, extra...)
	args = append(args, "--dir", c.Dir)
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start holdfast proxy: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("holdfast proxy %s did not stop within 15s of SIGTERM", strings.Join(args, " "))
		}
		if t.Failed() {
			t.Logf("==== holdfast %s (log tail)\n%s", strings.Join(args, " "), fileTail(p.log, 120))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("holdfast proxy exited at once:\n%s", fileTail(p.log, 40))
		default:
		}
		if body, err := p.scrape(); err == nil && strings.Contains(body, "\nholdfast_proxy_view_age_seconds ") {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("holdfast proxy read no view within 30s:\n%s", fileTail(p.log, 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var metricsHTTP = &http.Client{Timeout: 5 * time.Second}

func (p *proxyProc) scrape() (string, error) {
	resp, err := metricsHTTP.Get("http://" + p.metrics + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("metrics: HTTP %d", resp.StatusCode)
	}
	return "\n" + string(b), err
}

// metric sums the samples of name whose label set contains every one of
// labels (written as in the exposition: `reason="stale_view"`).
func (p *proxyProc) metric(name string, labels ...string) (float64, error) {
	body, err := p.scrape()
	if err != nil {
		return 0, err
	}
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(line, l) {
				ok = false
			}
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum, nil
}

// freezer stops processes with SIGSTOP and resumes them with SIGCONT; every
// frozen process is resumed when the test ends, whatever happened.
type freezer struct {
	mu     sync.Mutex
	frozen map[int]string
}

func newFreezer(t *testing.T) *freezer {
	f := &freezer{frozen: map[int]string{}}
	t.Cleanup(f.thawAll)
	return f
}

func (f *freezer) freeze(pid int, what string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen[pid] = what // before the signal: a failed or partial freeze is still thawed
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("SIGSTOP %s (pid %d): %w", what, pid, err)
	}
	return nil
}

func (f *freezer) thaw(pid int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	syscall.Kill(pid, syscall.SIGCONT)
	delete(f.frozen, pid)
}

func (f *freezer) thawAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for pid := range f.frozen {
		syscall.Kill(pid, syscall.SIGCONT)
		delete(f.frozen, pid)
	}
}

// walReceiverPID is the pid of a standby's WAL receiver.
func (c *Cluster) walReceiverPID(name string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := c.Connect(ctx, name)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pid FROM pg_stat_wal_receiver").Scan(&pid); err != nil {
		return 0, fmt.Errorf("WAL receiver of %s: %w", name, err)
	}
	return pid, nil
}

// attempt is one write through the proxy: a new connection, one INSERT
// that records the server's port.
type attempt struct {
	start, end time.Time
	port       int
	err        error
}

// connWriter opens a new connection through a proxy listener for every
// INSERT, one attempt every pause, until stopped, recording each attempt.
type connWriter struct {
	dsn, table string
	timeout    time.Duration

	mu       sync.Mutex
	attempts []attempt
	stop     chan struct{}
	done     chan struct{}
}

func startConnWriter(dsn, table string, pause, timeout time.Duration) *connWriter {
	w := &connWriter{dsn: dsn, table: table, timeout: timeout, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			a := w.once()
			w.mu.Lock()
			w.attempts = append(w.attempts, a)
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-time.After(pause):
			}
		}
	}()
	return w
}

func (w *connWriter) once() attempt {
	a := attempt{start: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), w.timeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, w.dsn)
	if err == nil {
		err = conn.QueryRow(ctx, "INSERT INTO "+w.table+" (port) SELECT inet_server_port() RETURNING port").Scan(&a.port)
		conn.Close(context.Background())
	}
	a.err, a.end = err, time.Now()
	return a
}

// halt stops the writer and returns every attempt, in order.
func (w *connWriter) halt() []attempt {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]attempt(nil), w.attempts...)
}

// snapshot returns the attempts so far.
func (w *connWriter) snapshot() []attempt {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]attempt(nil), w.attempts...)
}

// pgbenchEnv is the environment for pgbench through a proxy listener: the
// password comes from the cluster's pgpass file, which lists the proxy's
// ports too.
func (c *Cluster) pgbenchEnv(addr string) []string {
	host, port, _ := net.SplitHostPort(addr)
	env := []string{}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "PG") {
			env = append(env, e)
		}
	}
	return append(env, "PGPASSFILE="+filepath.Join(c.Dir, "pgpass"), "PGHOST="+host, "PGPORT="+port,
		"PGUSER="+c.Layout.Superuser.Username, "PGDATABASE=postgres", "PGSSLMODE=disable")
}

// pgbenchCounts parses pgbench's summary.
func pgbenchCounts(out string) (processed, failed int, err error) {
	s, err := pgbenchtest.Parse(out)
	return s.Processed, s.Failed, err
}

// pgbenchPath is the pgbench of the PostgreSQL the tests run, else the
// one in PATH.
func pgbenchPath(t *testing.T) string {
	p := filepath.Join(testutil.PGBinDir(t), "pgbench")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return "pgbench"
}

// queryInt runs a one-value query on a member.
func (c *Cluster) queryInt(name, sql string, args ...any) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.Connect(ctx, name)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var n int64
	err = conn.QueryRow(ctx, sql, args...).Scan(&n)
	return n, err
}

// fenceGuardOf returns the pid of the agent's fence guard child (0 if none).
func fenceGuardOf(agent int) int {
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		rest := string(stat[strings.LastIndexByte(string(stat), ')')+1:])
		f := strings.Fields(rest)
		if len(f) < 2 || f[1] != strconv.Itoa(agent) {
			continue
		}
		if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.Contains(string(cmd), "fence-guard") {
			return pid
		}
	}
	return 0
}

// proxyAuthTimeout bounds how long the primary's agent takes to install the
// session proxy's auth role once the cluster is healthy (its next loop).
const proxyAuthTimeout = 60 * time.Second

// startSessionProxy starts `holdfast proxy --mode session` for c once the
// primary's agent has installed the auth role the proxy reads verifiers
// as (postgresql.proxy_auth, which holdfast up sets from the layout): the
// proxy takes that role's password from the layout (--dir), as the local
// cluster's own proxy does.
func startSessionProxy(t *testing.T, c *Cluster, extra ...string) *proxyProc {
	t.Helper()
	waitProxyAuth(t, c)
	return startProxyProc(t, c, append([]string{"--mode", "session"}, extra...)...)
}

// waitProxyAuth waits until the auth role logs in to the primary with the
// layout's password and may call the auth function.
func waitProxyAuth(t *testing.T, c *Cluster) {
	t.Helper()
	deadline := time.Now().Add(proxyAuthTimeout)
	for {
		err := func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			m := c.Member(c.Primary())
			conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=disable",
				m.PGPort, pgauth.AuthRole, c.Layout.ProxyAuthPassword))
			if err != nil {
				return err
			}
			defer conn.Close(ctx)
			var n int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+pgauth.AuthFunction+"($1)", c.Layout.Superuser.Username).Scan(&n); err != nil {
				return err
			}
			if n != 1 {
				return fmt.Errorf("%s(%s) returned %d rows", pgauth.AuthFunction, c.Layout.Superuser.Username, n)
			}
			return nil
		}()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the primary's agent did not install the session proxy's auth role within %s: %v", proxyAuthTimeout, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
