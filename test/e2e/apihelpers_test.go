package e2e

// Helpers for the tests of the members' HTTP API and the operator commands
// built on it: health checks over HTTP, a client that writes to whichever
// member is primary, HAProxy configured as Patroni recommends, and checks
// that a refused request changed nothing.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/testutil"
)

// in returns the cluster bound to t, for use inside a sub-test: the
// harness's helpers fail the test they were given, and a sub-test must not
// fail its parent from its own goroutine.
func (c *Cluster) in(t *testing.T) *Cluster {
	cc := *c
	cc.t = t
	return &cc
}

var apiHTTP = &http.Client{Timeout: 15 * time.Second}

// apiDo sends one request to a member's API and returns the status and
// body.
func (c *Cluster) apiDo(member, method, path, body string, header map[string]string) (int, string, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.Layout.APIURL(c.Member(member))+path, rd)
	if err != nil {
		return 0, "", err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := apiHTTP.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// healthPaths are the health checks issue 3 names, each asked with GET,
// HEAD and OPTIONS.
var healthPaths = []string{"/", "/primary", "/read-write", "/leader", "/replica", "/replica?lag=1MB",
	"/read-only", "/sync", "/async", "/health", "/liveness", "/readiness"}

// healthOK lists, per role, the paths answered 200; every other path in
// healthPaths must answer 503.
var healthOK = map[string][]string{
	"primary": {"/", "/primary", "/read-write", "/leader", "/read-only", "/health", "/liveness", "/readiness"},
	"replica": {"/replica", "/replica?lag=1MB", "/read-only", "/async", "/health", "/liveness", "/readiness"},
}

func expectedHealth(role, path string) int {
	if slices.Contains(healthOK[role], path) {
		return http.StatusOK
	}
	return http.StatusServiceUnavailable
}

// healthMismatches asks every health path with every method on each member
// of roles and lists the answers that differ from the role's expectation.
func (c *Cluster) healthMismatches(roles map[string]string) []string {
	var bad []string
	for _, name := range slices.Sorted(maps.Keys(roles)) {
		role := roles[name]
		for _, path := range healthPaths {
			want := expectedHealth(role, path)
			for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodOptions} {
				code, body, err := c.apiDo(name, method, path, "", nil)
				switch {
				case err != nil:
					bad = append(bad, fmt.Sprintf("%s (%s) %s %s: %v", name, role, method, path, err))
				case code != want:
					bad = append(bad, fmt.Sprintf("%s (%s) %s %s = %d, want %d (body %s)", name, role, method, path, code, want, strings.TrimSpace(body)))
				case method == http.MethodGet && path == "/health":
					// The body of a GET names the member and its role.
					var h struct {
						Name string `json:"name"`
						Role string `json:"role"`
					}
					if err := json.Unmarshal([]byte(body), &h); err != nil || h.Name != name || h.Role != role {
						bad = append(bad, fmt.Sprintf("%s (%s) GET /health body %s: want name %s role %s", name, role, strings.TrimSpace(body), name, role))
					}
				}
			}
		}
	}
	return bad
}

// checkHealth polls until every member answers every health check as its
// role says, and fails the test listing the differences after timeout.
// Health checks answer from each agent's last loop, which may lag `ctl list`
// by a loop: hence the polling.
func (c *Cluster) checkHealth(roles map[string]string, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		bad := c.healthMismatches(roles)
		if len(bad) == 0 {
			c.t.Logf("every health check answered as expected for %v (%d paths x GET/HEAD/OPTIONS per member)", roles, len(healthPaths))
			return
		}
		if time.Now().After(deadline) {
			c.t.Errorf("health checks still wrong after %s:\n  %s", timeout, strings.Join(bad, "\n  "))
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// roles maps the primary to "primary" and every other database member to
// "replica".
func (c *Cluster) roles(primary string) map[string]string {
	out := map[string]string{}
	for _, m := range c.DBMembers() {
		out[m] = "replica"
	}
	out[primary] = "primary"
	return out
}

// ctlRun runs `holdfast ctl ARGS --dir DIR`.
func (c *Cluster) ctlRun(timeout time.Duration, args ...string) (string, error) {
	return run(c.t, timeout, append(append([]string{"ctl"}, args...), "--dir", c.Dir)...)
}

var httpStatusRe = regexp.MustCompile(`\(HTTP (\d{3})\)`)

// httpStatusIn returns the HTTP status a failed ctl command reports, or 0.
func httpStatusIn(out string) int {
	m := httpStatusRe.FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// facts are what a refused request must leave unchanged.
type facts struct {
	leader   string
	timeline uint32
	history  int
}

func (c *Cluster) facts() facts {
	c.t.Helper()
	l := c.WaitFor("a leader", 30*time.Second, func(l ctl.ClusterList) bool { return l.Leader != "" })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := local.View(ctx, c.Layout)
	if err != nil {
		c.t.Fatalf("read the store: %v", err)
	}
	return facts{leader: l.Leader, timeline: l.Timeline, history: len(v.History)}
}

// assertUnchanged waits two loop intervals (a request that slipped through
// would be acted on by then), then checks that the leader, the timeline and
// the history are as before, that no switchover request is pending in the
// store, and that no member reports one in progress.
func (c *Cluster) assertUnchanged(before facts, after string) {
	c.t.Helper()
	time.Sleep(2 * time.Second)
	l, err := c.List()
	if err != nil {
		c.t.Fatalf("after %s: %v", after, err)
	}
	if l.Leader != before.leader || l.Timeline != before.timeline {
		c.t.Errorf("after %s: leader %q timeline %d, want leader %q timeline %d (unchanged)", after, l.Leader, l.Timeline, before.leader, before.timeline)
	}
	for _, m := range l.Members {
		if strings.Contains(strings.ToLower(m.Message), "switchover") {
			c.t.Errorf("after %s: %s reports %q", after, m.Name, m.Message)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := local.View(ctx, c.Layout)
	if err != nil {
		c.t.Fatalf("after %s: read the store: %v", after, err)
	}
	if v.Switchover != nil {
		c.t.Errorf("after %s: a switchover request is pending in the store: %+v", after, *v.Switchover)
	}
	if len(v.History) != before.history {
		c.t.Errorf("after %s: history has %d entries, had %d", after, len(v.History), before.history)
	}
}

// primaryWriter writes rows with unique ids, each INSERT over a new
// connection, to whichever member accepts it: the member that accepted the
// last write first, then the others. A write is acknowledged only when its
// INSERT returned without error.
type primaryWriter struct {
	c      *Cluster
	table  string
	nextID atomic.Int64

	mu      sync.Mutex
	last    string
	acked   []int64
	ackedAt []time.Time
	failed  int // rounds in which no member accepted the write
}

func newPrimaryWriter(c *Cluster, table string) *primaryWriter {
	return &primaryWriter{c: c, table: table}
}

func (w *primaryWriter) dsn(member string) string {
	return w.c.Layout.SuperuserDSN(w.c.Member(member).PGPort, time.Second)
}

func (w *primaryWriter) insert(member string, id int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, w.dsn(member))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "INSERT INTO "+w.table+" (id) VALUES ($1)", id)
	return err
}

// write makes one attempt: one INSERT per member, in order, until one is
// acknowledged. Every INSERT uses a fresh id.
func (w *primaryWriter) write() bool {
	w.mu.Lock()
	order := []string{}
	if w.last != "" {
		order = append(order, w.last)
	}
	w.mu.Unlock()
	for _, m := range w.c.DBMembers() {
		if !slices.Contains(order, m) {
			order = append(order, m)
		}
	}
	for _, m := range order {
		id := w.nextID.Add(1)
		if err := w.insert(m, id); err == nil {
			now := time.Now()
			w.mu.Lock()
			w.last = m
			w.acked = append(w.acked, id)
			w.ackedAt = append(w.ackedAt, now)
			w.mu.Unlock()
			return true
		}
	}
	w.mu.Lock()
	w.failed++
	w.mu.Unlock()
	return false
}

// start runs n writers, each pausing between attempts, until stop is
// closed; the returned channel is closed when all have returned.
func (w *primaryWriter) start(n int, pause time.Duration, stop <-chan struct{}) <-chan struct{} {
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				w.write()
				time.Sleep(pause)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return done
}

func (w *primaryWriter) results() (acked []int64, failed int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.acked), w.failed
}

// longestGap is the longest interval without an acknowledged write within
// [from, to], counting from `from` to the first acknowledgement and from the
// last to `to`.
func (w *primaryWriter) longestGap(from, to time.Time) time.Duration {
	w.mu.Lock()
	ts := slices.Clone(w.ackedAt)
	w.mu.Unlock()
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	prev, gap := from, time.Duration(0)
	for _, at := range ts {
		if at.Before(from) || at.After(to) {
			continue
		}
		gap = max(gap, at.Sub(prev))
		prev = at
	}
	return max(gap, to.Sub(prev))
}

// haproxy is an HAProxy process in front of the cluster, configured as
// Patroni's documentation recommends: TCP mode, the primary found by an
// HTTP check of each member's API.
type haproxy struct {
	port int
	cfg  string
	out  *lockedBuffer
}

// startHAProxy starts HAProxy for the cluster; it is stopped when t ends.
// Without haproxy installed it returns nil (and fails the test under CI).
func startHAProxy(t *testing.T, c *Cluster) *haproxy {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/haproxy"); serr == nil {
			bin = "/usr/sbin/haproxy"
		} else {
			if os.Getenv("CI") != "" {
				t.Fatal("haproxy is not installed: CI must run scripts/install-deps.sh first")
			}
			t.Log("haproxy is not installed (run scripts/install-deps.sh): skipping the HAProxy checks")
			return nil
		}
	}
	h := &haproxy{port: testutil.FreePort(t), out: &lockedBuffer{}}
	var b strings.Builder
	fmt.Fprintf(&b, `global
    maxconn 200

defaults
    mode tcp
    retries 2
    timeout connect 2s
    timeout client 30m
    timeout server 30m
    timeout check %s

listen primary
    bind 127.0.0.1:%d
    option httpchk OPTIONS /primary
    http-check expect status 200
    default-server inter %s fall %d rise 1 on-marked-down shutdown-sessions
`, hapCheckTimeout, h.port, hapCheckInterval, hapFall)
	for _, m := range c.Layout.Members {
		if !m.Witness {
			fmt.Fprintf(&b, "    server %s 127.0.0.1:%d maxconn 100 check port %d\n", m.Name, m.PGPort, m.APIPort)
		}
	}
	h.cfg = b.String()
	path := filepath.Join(testutil.Dir(t), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(h.cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c refuses the configuration: %v\n%s\n%s", err, out, h.cfg)
	}
	cmd := exec.Command(bin, "-f", path, "-db")
	cmd.Stdout, cmd.Stderr = h.out, h.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start haproxy: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("haproxy configuration:\n%s\nhaproxy output:\n%s", h.cfg, h.out.String())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", h.port), time.Second)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy does not listen on %d: %v\n%s", h.port, err, h.out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return h
}

// write connects through HAProxy (a new connection), asks which PostgreSQL
// port answered, and inserts a row there.
func (h *haproxy) write(c *Cluster, table string, id int64) (port int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.Layout.SuperuserDSN(h.port, 2*time.Second))
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil {
		return 0, err
	}
	_, err = conn.Exec(ctx, "INSERT INTO "+table+" (id, port) VALUES ($1, $2)", id, port)
	return port, err
}

// HAProxy's health checks of the members: one every hapCheckInterval,
// each allowed hapCheckTimeout (an agent's API answers late on a loaded
// machine), hapFall failed in a row to mark a server down.
const (
	hapCheckInterval = time.Second
	hapCheckTimeout  = 5 * time.Second
	hapFall          = 3
)

// hapRouteTimeout bounds waitRoutedTo: HAProxy marking the old primary
// down (hapFall checks) and the new one up, and five writes in a row on a
// loaded machine.
const hapRouteTimeout = time.Minute

// waitRoutedTo polls with new connections through HAProxy until five
// writes in a row land on member and are acknowledged there.
func (h *haproxy) waitRoutedTo(c *Cluster, table string, ids *atomic.Int64, member string, timeout time.Duration) time.Duration {
	c.t.Helper()
	want := c.Member(member).PGPort
	start := time.Now()
	deadline := start.Add(timeout)
	inARow, tries := 0, 0
	var last string
	for inARow < 5 {
		if time.Now().After(deadline) {
			c.t.Fatalf("writes through HAProxy did not land on %s (port %d) within %s: %d tries, last: %s", member, want, timeout, tries, last)
		}
		tries++
		port, err := h.write(c, table, ids.Add(1))
		switch {
		case err != nil:
			inARow, last = 0, fmt.Sprintf("error %v (port %d)", err, port)
		case port != want:
			inARow, last = 0, fmt.Sprintf("write acknowledged on port %d", port)
		default:
			inARow++
			continue
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start)
}
