package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/osuser"
	"github.com/holdfast/holdfast/internal/store"
)

// DefaultMembers is the size of a new local cluster.
const DefaultMembers = 3

// UpOptions configure Up.
type UpOptions struct {
	Dir       string
	Cluster   string // used only when creating a new cluster
	Members   int    // used only when creating a new cluster (0 = DefaultMembers)
	Witnesses int    // used only when creating a new cluster
	// Endpoints of an external etcd cluster, used only when creating a new
	// cluster; empty = embedded etcd in every agent.
	Endpoints []string
	// Exe is the holdfast binary to run each agent with.
	Exe string
	// Wait bounds how long Up waits for the cluster to become healthy.
	Wait time.Duration
	// OSUser is the account PostgreSQL runs as when Up runs as root.
	OSUser string
	Out    io.Writer
}

// Up creates the cluster in o.Dir if it does not exist, starts every member
// whose agent is not running (with its existing data), and waits until the
// cluster is healthy: one primary and every other database member streaming.
func Up(ctx context.Context, o UpOptions) (Layout, error) {
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return Layout{}, fmt.Errorf("--dir %s: %w", o.Dir, err)
	}
	l, err := ReadLayout(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		n := o.Members
		if n == 0 {
			n = DefaultMembers
		}
		if l, err = NewLayout(o.Cluster, n, o.Witnesses, o.Endpoints); err != nil {
			return l, err
		}
		acct, err := osuser.Resolve(o.OSUser)
		if err != nil {
			return l, err
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return l, fmt.Errorf("create %s: %w", dir, err)
		}
		if err := osuser.CheckReachable(acct, dir); err != nil {
			return l, err
		}
		if err := l.Write(dir); err != nil {
			return l, err
		}
		fmt.Fprintf(o.Out, "created cluster %q with %d members in %s\n", l.Cluster, len(l.Members), dir)
	case err != nil:
		return l, err
	default:
		if o.Members != 0 && o.Members != l.dbMembers() {
			return l, fmt.Errorf("%s already holds cluster %q with %d database members; --members %d cannot change it (use another --dir, or `holdfast down` and remove the directory)", dir, l.Cluster, l.dbMembers(), o.Members)
		}
	}
	for _, m := range l.Members {
		if pid, ok := RunningPID(dir, m.Name); ok {
			fmt.Fprintf(o.Out, "%s already running (pid %d)\n", m.Name, pid)
			continue
		}
		pid, err := spawn(o.Exe, dir, m.Name)
		if err != nil {
			return l, err
		}
		fmt.Fprintf(o.Out, "started %s (pid %d, log %s)\n", m.Name, pid, LogFile(dir, m.Name))
	}
	if err := startProxy(o.Exe, dir, l, o.Out); err != nil {
		return l, err
	}
	if err := WaitHealthy(ctx, dir, l, o.Wait); err != nil {
		return l, err
	}
	return l, nil
}

func (l Layout) dbMembers() int {
	n := 0
	for _, m := range l.Members {
		if !m.Witness {
			n++
		}
	}
	return n
}

// spawn starts one agent in its own session, so a Ctrl-C in the terminal
// reaches `up` (which stops the members in order) and not every agent at
// once, and a detached cluster outlives the terminal.
func spawn(exe, dir, name string) (int, error) {
	return spawnProcess(exe, []string{"agent", "--config", ConfigFile(dir, name)}, PIDFile(dir, name), LogFile(dir, name))
}

func spawnProcess(exe string, args []string, pidFile, logFile string) (int, error) {
	logf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("open log %s: %w", logFile, err)
	}
	defer logf.Close()
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s %s: %w", exe, strings.Join(args, " "), err)
	}
	pid := cmd.Process.Pid
	if err := writeAtomic(pidFile, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		_ = cmd.Process.Kill()
		return 0, err
	}
	// Reap it if it exits while we are still running; never block on it.
	go func() { _ = cmd.Wait() }()
	return pid, nil
}

// startProxy starts the cluster's local proxy unless it runs already.
func startProxy(exe, dir string, l Layout, out io.Writer) error {
	if l.ProxyRWPort == 0 {
		return nil
	}
	if pid, ok := runningPID(proxyPIDFile(dir), proxyMarker(dir)); ok {
		fmt.Fprintf(out, "proxy already running (pid %d)\n", pid)
		return nil
	}
	pid, err := spawnProcess(exe, []string{"proxy", "--dir", dir}, proxyPIDFile(dir), ProxyLogFile(dir))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "started proxy (pid %d, log %s)\n", pid, ProxyLogFile(dir))
	return nil
}

// View reads the cluster's state from its embedded store.
func View(ctx context.Context, l Layout) (cluster.View, error) {
	st, err := store.Open(ctx, store.Options{Endpoints: l.Endpoints(), Prefix: "/holdfast", Cluster: l.Cluster,
		Member: "ctl", TTL: 5 * time.Second, DialTimeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return cluster.View{}, err
	}
	defer st.Close()
	c, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return st.Load(c)
}

// Healthy reports whether the view shows one running primary holding the
// leader key and every other database member streaming from it.
func Healthy(l Layout, v cluster.View) (bool, string) {
	if v.Leader == nil {
		return false, "no leader yet"
	}
	p, ok := v.Statuses[v.Leader.Name]
	if !ok || p.Role != cluster.RolePrimary || p.State != cluster.StateRunning {
		return false, fmt.Sprintf("leader %s is not running as primary yet", v.Leader.Name)
	}
	for _, m := range l.Members {
		if m.Witness || m.Name == v.Leader.Name {
			continue
		}
		s, ok := v.Statuses[m.Name]
		if !ok || s.Role != cluster.RoleReplica || !s.Streaming {
			return false, fmt.Sprintf("%s is not streaming yet", m.Name)
		}
	}
	return true, ""
}

// WaitHealthy polls until Healthy or timeout; the error names what was
// still missing.
func WaitHealthy(ctx context.Context, dir string, l Layout, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	why := "store not reachable yet"
	for time.Now().Before(deadline) {
		for _, m := range l.Members {
			if _, ok := RunningPID(dir, m.Name); !ok {
				return fmt.Errorf("member %s is not running; the end of %s says:\n%s", m.Name, LogFile(dir, m.Name), logTail(LogFile(dir, m.Name), 5))
			}
		}
		if v, err := View(ctx, l); err == nil {
			var ok bool
			if ok, why = Healthy(l, v); ok {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
	return fmt.Errorf("cluster in %s not healthy after %s: %s (see the members' agent.log)", dir, timeout, why)
}

// Down stops every member: replicas first, then the primary, witnesses last,
// so no replica is promoted while the cluster is being stopped.
func Down(ctx context.Context, dir string, out io.Writer) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	l, err := ReadLayout(dir)
	if err != nil {
		return err
	}
	leader := ""
	if v, err := View(ctx, l); err == nil && v.Leader != nil {
		leader = v.Leader.Name
	}
	order := make([]Member, len(l.Members))
	copy(order, l.Members)
	rank := func(m Member) int {
		switch {
		case m.Witness:
			return 2
		case m.Name == leader:
			return 1
		}
		return 0
	}
	sort.SliceStable(order, func(i, j int) bool { return rank(order[i]) < rank(order[j]) })
	var errs []error
	// The proxy first: clients lose their way in, not their writes.
	if was, err := stopProcess("proxy", proxyPIDFile(dir), proxyMarker(dir), 30*time.Second); err != nil {
		errs = append(errs, err)
	} else if was {
		fmt.Fprintln(out, "stopped proxy")
	}
	_ = os.Remove(proxyPIDFile(dir))
	for _, m := range order {
		was, err := Stop(dir, m.Name, 90*time.Second)
		if err != nil {
			errs = append(errs, err)
		}
		if was {
			fmt.Fprintf(out, "stopped %s\n", m.Name)
		}
		_ = os.Remove(PIDFile(dir, m.Name))
	}
	return errors.Join(errs...)
}

// PrintConnect writes how to reach every member.
func PrintConnect(w io.Writer, dir string, l Layout, v cluster.View) {
	abs, _ := filepath.Abs(dir)
	fmt.Fprintf(w, "\ncluster %q is up. Connect with psql (password in %s):\n", l.Cluster, filepath.Join(abs, "pgpass"))
	fmt.Fprintf(w, "  export PGPASSFILE=%s\n", filepath.Join(abs, "pgpass"))
	for _, m := range l.Members {
		if m.Witness {
			continue
		}
		role := "replica"
		if v.Leader != nil && v.Leader.Name == m.Name {
			role = "primary"
		}
		fmt.Fprintf(w, "  %-8s %-8s psql \"%s\"\n", m.Name, role, l.DSN(m))
	}
	if l.ProxyRWPort != 0 {
		fmt.Fprintf(w, "  proxy    read-write psql \"host=127.0.0.1 port=%d user=%s dbname=postgres\"\n", l.ProxyRWPort, l.Superuser.Username)
		fmt.Fprintf(w, "  proxy    read-only  psql \"host=127.0.0.1 port=%d user=%s dbname=postgres\"\n", l.ProxyROPort, l.Superuser.Username)
	}
	fmt.Fprintf(w, "Status: holdfast ctl list --dir %s    Stop: holdfast down --dir %s\n", abs, abs)
}

// logTail returns the last n lines of a file, for error messages.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}
