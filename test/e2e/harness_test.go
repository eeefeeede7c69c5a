// Package e2e runs holdfast end to end: the real binary, real PostgreSQL
// processes and real etcd, driven through the same commands an operator uses
// (holdfast up / down / ctl list) and broken with real signals.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
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
	"github.com/holdfast/holdfast/internal/testutil"
)

// binary is the holdfast binary built once for the package.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "holdfast-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Chmod(dir, 0o755)
	binary = filepath.Join(dir, "holdfast")
	build := exec.Command("go", "build", "-o", binary, "../../cmd/holdfast")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build holdfast:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Cluster is a local cluster started with `holdfast up`.
type Cluster struct {
	t      *testing.T
	Dir    string
	Layout local.Layout
}

// run executes the holdfast binary and returns its combined output.
func run(t *testing.T, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// upAttempts is how many times StartCluster makes a cluster whose port was
// taken before it was bound.
const upAttempts = 3

// StartCluster creates and starts an n-member cluster and waits until it is
// healthy. The cluster is stopped when the test ends; on failure the tail
// of every agent log is printed.
func StartCluster(t *testing.T, n int, extra ...string) *Cluster {
	t.Helper()
	testutil.PGBinDir(t)
	c := &Cluster{t: t, Dir: filepath.Join(testutil.Dir(t), "cluster")}
	t.Cleanup(func() {
		if t.Failed() {
			c.DumpLogs()
		}
		run(t, 3*time.Minute, "down", "--dir", c.Dir)
	})
	args := append([]string{"up", "--detach", "--dir", c.Dir, "--members", strconv.Itoa(n), "--wait", "90s"}, extra...)
	var out string
	var err error
	for attempt := 1; ; attempt++ {
		out, err = run(t, 3*time.Minute, args...)
		// up chooses free ports when it creates the cluster and binds them
		// a moment later: another test run on the machine can take one
		// meanwhile. The cluster is then made again, with other ports.
		if err == nil || attempt == upAttempts || !strings.Contains(out, "address already in use") {
			break
		}
		t.Logf("holdfast up: a port was taken between its choice and its use; making the cluster again:\n%s", out)
		run(t, 3*time.Minute, "down", "--dir", c.Dir)
		if err := os.RemoveAll(c.Dir); err != nil {
			t.Fatal(err)
		}
	}
	if err != nil {
		t.Fatalf("holdfast up: %v\n%s", err, out)
	}
	l, err := local.ReadLayout(c.Dir)
	if err != nil {
		t.Fatal(err)
	}
	c.Layout = l
	return c
}

// Up runs `holdfast up` again on the cluster's directory.
func (c *Cluster) Up() {
	c.t.Helper()
	out, err := run(c.t, 3*time.Minute, "up", "--detach", "--dir", c.Dir, "--wait", "90s")
	if err != nil {
		c.t.Fatalf("holdfast up (again): %v\n%s", err, out)
	}
}

// Down runs `holdfast down`.
func (c *Cluster) Down() {
	c.t.Helper()
	out, err := run(c.t, 3*time.Minute, "down", "--dir", c.Dir)
	if err != nil {
		c.t.Fatalf("holdfast down: %v\n%s", err, out)
	}
}

// List returns `holdfast ctl list -o json`.
func (c *Cluster) List() (ctl.ClusterList, error) {
	out, err := run(c.t, 20*time.Second, "ctl", "list", "--dir", c.Dir, "-o", "json")
	var l ctl.ClusterList
	if err != nil {
		return l, fmt.Errorf("ctl list: %v: %s", err, out)
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		return l, fmt.Errorf("ctl list output: %v: %s", err, out)
	}
	return l, nil
}

// WaitFor polls cond every 200ms until it returns true or timeout.
func (c *Cluster) WaitFor(what string, timeout time.Duration, cond func(ctl.ClusterList) bool) ctl.ClusterList {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var last ctl.ClusterList
	var lastErr error
	for time.Now().Before(deadline) {
		l, err := c.List()
		if err == nil {
			last = l
			if cond(l) {
				return l
			}
		}
		lastErr = err
		time.Sleep(200 * time.Millisecond)
	}
	b, _ := json.MarshalIndent(last, "", "  ")
	c.t.Fatalf("timed out after %s waiting for %s; last list: %s (err %v)", timeout, what, b, lastErr)
	return last
}

// Healthy: one primary and every other database member streaming.
func Healthy(n int) func(ctl.ClusterList) bool {
	return func(l ctl.ClusterList) bool {
		primaries, streaming := 0, 0
		for _, m := range l.Members {
			switch {
			case m.Role == "primary" && m.State == "running" && m.Leader:
				primaries++
			case m.Role == "replica" && m.State == "streaming":
				streaming++
			}
		}
		return primaries == 1 && streaming == n-1
	}
}

// Primary returns the current leader's name.
func (c *Cluster) Primary() string {
	c.t.Helper()
	l := c.WaitFor("a primary", 60*time.Second, func(l ctl.ClusterList) bool {
		for _, m := range l.Members {
			if m.Leader && m.Role == "primary" && m.State == "running" {
				return true
			}
		}
		return false
	})
	return l.Leader
}

// Member returns the layout entry of a member.
func (c *Cluster) Member(name string) local.Member {
	for _, m := range c.Layout.Members {
		if m.Name == name {
			return m
		}
	}
	c.t.Fatalf("no member %s", name)
	return local.Member{}
}

// DBMembers lists the database members' names.
func (c *Cluster) DBMembers() []string {
	var out []string
	for _, m := range c.Layout.Members {
		if !m.Witness {
			out = append(out, m.Name)
		}
	}
	return out
}

// Connect opens a connection to a member as the superuser.
func (c *Cluster) Connect(ctx context.Context, name string) (*pgx.Conn, error) {
	m := c.Member(name)
	return pgx.Connect(ctx, c.Layout.SuperuserDSN(m.PGPort, 2*time.Second))
}

// statementTimeout bounds Exec, TryExec and Count (connection included):
// for small statements; bulk ones take bulkStatementTimeout.
const statementTimeout = 5 * time.Second

// bulkStatementTimeout bounds a statement that writes or reads much (a
// table of a million rows, a checkpoint after it) on a loaded machine.
const bulkStatementTimeout = 3 * time.Minute

// execLong runs one long statement on a member.
func execLong(t *testing.T, c *Cluster, name, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bulkStatementTimeout)
	defer cancel()
	conn, err := c.Connect(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("exec on %s: %s: %v", name, sql, err)
	}
}

// Exec runs SQL on a member and fails the test on error.
func (c *Cluster) Exec(name, sql string, args ...any) {
	c.t.Helper()
	if err := c.TryExec(name, sql, args...); err != nil {
		c.t.Fatalf("exec on %s: %s: %v", name, sql, err)
	}
}

// TryExec runs SQL on a member, within statementTimeout.
func (c *Cluster) TryExec(name, sql string, args ...any) error {
	return c.TryExecWithin(name, statementTimeout, sql, args...)
}

// TryExecWithin runs SQL on a member, allowing timeout (a statement that
// writes much on a loaded machine).
func (c *Cluster) TryExecWithin(name string, timeout time.Duration, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := c.Connect(ctx, name)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// Count returns SELECT count(*) of a table on a member.
func (c *Cluster) Count(name, table string) (int64, error) {
	return c.CountWithin(name, table, statementTimeout)
}

// CountWithin counts a table's rows on a member, allowing timeout (a big
// table on a loaded machine).
func (c *Cluster) CountWithin(name, table string, timeout time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := c.Connect(ctx, name)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var n int64
	err = conn.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n)
	return n, err
}

// Writable reports whether the member accepts connections and is not in
// recovery (it would accept writes).
func (c *Cluster) Writable(name string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := c.Connect(ctx, name)
	if err != nil {
		return false
	}
	defer conn.Close(context.Background())
	var rec bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil {
		return false
	}
	return !rec
}

// WaitCount waits until a member has exactly want rows in table.
func (c *Cluster) WaitCount(name, table string, want int64, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var got int64
	var err error
	for time.Now().Before(deadline) {
		if got, err = c.Count(name, table); err == nil && got == want {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatalf("%s: %s has %d rows (err %v), want %d", name, table, got, err, want)
}

// AgentPID is the pid of a member's running agent.
func (c *Cluster) AgentPID(name string) int {
	pid, ok := local.RunningPID(c.Dir, name)
	if !ok {
		c.t.Fatalf("agent of %s is not running", name)
	}
	return pid
}

// StillServedBy says whether the member's PostgreSQL is still the
// postmaster pm, alive: its postmaster.pid names pm and pm runs (a fence's
// SIGKILL leaves the file behind).
func (c *Cluster) StillServedBy(name string, pm int) bool {
	c.t.Helper()
	return c.PostmasterPID(name) == pm && syscall.Kill(pm, 0) == nil
}

// PostmasterPID reads the member's postmaster.pid.
func (c *Cluster) PostmasterPID(name string) int {
	c.t.Helper()
	pid, err := local.PostmasterPID(c.Dir, name)
	if err != nil {
		c.t.Fatal(err)
	}
	return pid
}

// KillHard sends SIGKILL to the member's agent and postmaster together and
// waits until both are gone.
func (c *Cluster) KillHard(name string) {
	c.t.Helper()
	agent, pm, err := local.KillHard(c.Dir, name)
	if err != nil {
		c.t.Fatal(err)
	}
	waitGone(c.t, agent)
	waitGone(c.t, pm)
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); err != nil {
			return
		}
		// A zombie still answers kill 0; its /proc status says Z.
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(b), ") Z ") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("pid %d still alive", pid)
}

// DumpLogs prints the tail of every member's logs.
func (c *Cluster) DumpLogs() {
	for _, m := range c.Layout.Members {
		for _, f := range []string{"agent.log", "postgresql.log", "etcd.log"} {
			b, err := os.ReadFile(filepath.Join(local.MemberDir(c.Dir, m.Name), f))
			if err != nil {
				continue
			}
			lines := strings.Split(string(b), "\n")
			if len(lines) > 60 {
				lines = lines[len(lines)-60:]
			}
			c.t.Logf("==== %s %s (tail)\n%s", m.Name, f, strings.Join(lines, "\n"))
		}
	}
}

// maxWritableRound bounds the span of AtMostOneWritable's evidence: two
// members' answers that they take writes count as two primaries only when
// both queries ran within this span (each member's own query, from its
// start to its answer). Wider apart, on a loaded machine, one answer may
// come from before a hand-over and the other from after it, which proves
// nothing; such pairs are counted and reported, not failed.
const maxWritableRound = 700 * time.Millisecond

// AtMostOneWritable samples every member (all at once, round after round)
// until stop is closed, and fails the test if two members take writes
// within maxWritableRound of each other. When stop is closed it logs how
// many pairs were too far apart to count.
func (c *Cluster) AtMostOneWritable(stop <-chan struct{}) <-chan error {
	res := make(chan error, 1)
	type answer struct {
		writable   bool
		start, end time.Time
	}
	go func() {
		unproven := 0
		for {
			select {
			case <-stop:
				if unproven > 0 {
					c.t.Logf("split-brain sampling: %d rounds had two writable answers more than %s apart (not proof of two primaries)", unproven, maxWritableRound)
				}
				res <- nil
				return
			default:
			}
			names := c.DBMembers()
			answers := make([]answer, len(names))
			var wg sync.WaitGroup
			for i, name := range names {
				wg.Go(func() {
					start := time.Now()
					w := c.Writable(name)
					answers[i] = answer{writable: w, start: start, end: time.Now()}
				})
			}
			wg.Wait()
			var w []string
			var first, last time.Time
			for i, a := range answers {
				if !a.writable {
					continue
				}
				w = append(w, names[i])
				if first.IsZero() || a.start.Before(first) {
					first = a.start
				}
				if a.end.After(last) {
					last = a.end
				}
			}
			if len(w) > 1 {
				if span := last.Sub(first); span <= maxWritableRound {
					res <- fmt.Errorf("two writable primaries within %s: %v", span.Round(time.Millisecond), w)
					return
				}
				unproven++
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	return res
}

func killPID(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// WriteEventually retries sql on the current leader until one attempt is
// acknowledged, and returns the member that acknowledged it.
func (c *Cluster) WriteEventually(timeout time.Duration, sql string) string {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		var l ctl.ClusterList
		if l, err = c.List(); err == nil && l.Leader != "" {
			if err = c.TryExec(l.Leader, sql); err == nil {
				return l.Leader
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("no primary acknowledged %q within %s: %v", sql, timeout, err)
	return ""
}
