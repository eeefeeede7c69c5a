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

	"github.com/holdfast/holdfast/internal/backup"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/config"
	"github.com/holdfast/holdfast/internal/osuser"
	"github.com/holdfast/holdfast/internal/proxy"
	"github.com/holdfast/holdfast/internal/quote"
	"github.com/holdfast/holdfast/internal/store"
)

// DefaultMembers is the size of a new local cluster.
const DefaultMembers = 3

// DefaultCluster is the name of a new local cluster.
const DefaultCluster = "pg"

// proxyReadyWait bounds how long Up waits, once the cluster is healthy, for
// the proxy it started to report its listeners bound.
const proxyReadyWait = 30 * time.Second

// UpOptions configure Up.
type UpOptions struct {
	Dir string
	// Cluster names a new cluster ("" = not given: DefaultCluster). Given
	// for a directory that holds a cluster, it must be that cluster's name.
	Cluster string
	// Members is the number of database members of a new cluster (0 = not
	// given: DefaultMembers). Given for a directory that holds a cluster,
	// it must be that cluster's number.
	Members   int
	Witnesses int // used only when creating a new cluster
	// Endpoints of an external etcd cluster, used only when creating a new
	// cluster; empty = embedded etcd in every agent.
	Endpoints []string
	// Exe is the holdfast binary to run each agent with.
	Exe string
	// Wait bounds how long Up waits for the cluster to become healthy.
	Wait time.Duration
	// OSUser is the account PostgreSQL runs as when Up runs as root.
	OSUser string
	// BackupRepo, for a new cluster, is a pgBackRest repository directory
	// (created if missing): the primary archives WAL there and backups go
	// there. With Restore and no BackupRepo, the source's repository.
	BackupRepo string
	// BackupConfig, for a new cluster, is any repository's settings (a
	// backup section: an S3 bucket, encryption), instead of BackupRepo.
	BackupConfig *config.Backup
	// BackupStanza, with BackupRepo, names the new cluster's stanza ("" = a
	// fresh <cluster>-<8 hex>). One the repository holds already is refused.
	BackupStanza string
	// Restore builds a new cluster from a backup (nil: initdb).
	Restore *RestoreOptions
	// ProxyMode is the mode of the proxy up runs (proxy.ModePassThrough or
	// proxy.ModeSession; "" = not given: passthrough for a new cluster).
	// Given for a directory that holds a cluster, it must be that
	// cluster's.
	ProxyMode string
	Out       io.Writer
}

// Up creates the cluster in o.Dir if it does not exist, starts every member
// whose agent is not running (with its existing data) and the proxy, and
// waits until the cluster is healthy: one primary and every other database
// member streaming, and the proxy listening.
//
// Options that contradict the cluster a directory holds are refused before
// anything starts, and options that cannot make a new cluster before
// anything is written. Up holds the directory's lock (LockFile) while it
// works: a second Up on the same directory meanwhile is refused, naming
// the first. A new cluster whose store would lose its majority with one
// member down (two voters) is created with a warning on o.Out.
func Up(ctx context.Context, o UpOptions) (Layout, error) {
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return Layout{}, fmt.Errorf("--dir %s: %w", o.Dir, err)
	}
	if o.Members < 0 {
		return Layout{}, fmt.Errorf("--members %d: a cluster needs at least 1 database member", o.Members)
	}
	var fresh *Layout // the new cluster's layout, checked before anything is written
	if _, err := ReadLayout(dir); errors.Is(err, os.ErrNotExist) {
		name, n := o.Cluster, o.Members
		if name == "" {
			name = DefaultCluster
		}
		if n == 0 {
			n = DefaultMembers
		}
		nl, err := NewLayout(name, n, o.Witnesses, o.Endpoints)
		if err != nil {
			return nl, err
		}
		switch o.ProxyMode {
		case "", proxy.ModePassThrough:
			nl.ProxyMode = proxy.ModePassThrough
		case proxy.ModeSession:
			nl.ProxyMode = proxy.ModeSession
		default:
			return nl, fmt.Errorf("--proxy-mode %s: use %s (bytes passed through) or %s (sessions moved to a new primary)", quote.Value(o.ProxyMode), proxy.ModePassThrough, proxy.ModeSession)
		}
		var bc *config.Backup
		switch {
		case o.BackupRepo != "" && o.BackupConfig != nil:
			return nl, errors.New("--backup-repo and --backup-config both give a repository: give one (the repository in --backup-config's file)")
		case strings.HasPrefix(o.BackupRepo, config.S3Scheme):
			return nl, fmt.Errorf("--backup-repo %s: an S3 repository needs its endpoint, region and credentials: give them in a file with --backup-config (docs/backups.md)", o.BackupRepo)
		case o.BackupRepo != "":
			if !filepath.IsAbs(o.BackupRepo) {
				if o.BackupRepo, err = filepath.Abs(o.BackupRepo); err != nil {
					return nl, fmt.Errorf("--backup-repo: %w", err)
				}
			}
			bc = &config.Backup{Repository: o.BackupRepo}
		case o.BackupConfig != nil:
			c := *o.BackupConfig
			bc = &c
		case o.Restore != nil:
			c := o.Restore.Config
			c.Stanza = "" // the source's: the new cluster gets its own
			bc = &c
		}
		if o.Restore != nil && !o.Restore.Source.Repo.IsS3() {
			if fi, err := os.Stat(o.Restore.Source.Repo.Location); err != nil || !fi.IsDir() {
				if err == nil {
					err = errors.New("not a directory")
				}
				return nl, fmt.Errorf("--restore-from: repository %s cannot be read: %w (give the directory the source cluster's backup.repository names); nothing was created", o.Restore.Source.Repo, err)
			}
		}
		if o.BackupStanza != "" && bc == nil {
			return nl, errors.New("--backup-stanza needs --backup-repo, --backup-config or --restore-from")
		}
		if bc != nil {
			if nl.Backup, err = newBackup(ctx, o, *bc); err != nil {
				return nl, fmt.Errorf("%w; nothing was created", err)
			}
		}
		fresh = &nl
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nl, fmt.Errorf("create %s: %w", dir, err)
		}
	}
	lock, err := lockDir(dir)
	if err != nil {
		return Layout{}, err
	}
	defer lock.release()
	// Read again under the lock: another up may have created the cluster.
	l, err := ReadLayout(dir)
	switch {
	case errors.Is(err, os.ErrNotExist) && fresh != nil:
		l = *fresh
		acct, err := osuser.Resolve(o.OSUser)
		if err != nil {
			return l, err
		}
		if err := osuser.CheckReachable(acct, dir); err != nil {
			return l, err
		}
		var restoreTool backup.Tool
		if o.Restore != nil {
			// Refused here, before the cluster is written: an unreadable
			// repository, a missing stanza, a target no backup reaches.
			if _, restoreTool, err = backup.Inspect(ctx, o.Restore.Source, o.Restore.Target, restoreWorkDir(dir), acct, time.Now()); err != nil {
				_ = os.RemoveAll(restoreWorkDir(dir))
				return l, fmt.Errorf("--restore-from: %w; nothing was created", err)
			}
		}
		if l.Backup != nil && !l.Backup.Config(config.Backup{}).IsS3() {
			if err := prepareBackup(acct, l.Backup.Repository); err != nil {
				return l, err
			}
		}
		if err := l.Write(dir); err != nil {
			return l, err
		}
		if o.Restore != nil {
			if err := restoreFirst(ctx, dir, l, o, acct, restoreTool); err != nil {
				// Leave no half-made cluster: the next up starts afresh.
				// The restore's log stays in restoreWorkDir.
				for _, m := range l.Members {
					_ = os.RemoveAll(MemberDir(dir, m.Name))
				}
				_ = os.Remove(filepath.Join(dir, "pgpass"))
				_ = os.Remove(LayoutFile(dir))
				return l, fmt.Errorf("%w; the new cluster was removed (the restore's logs are in %s)", err, restoreWorkDir(dir))
			}
		}
		fmt.Fprintf(o.Out, "created cluster %q with %d members in %s\n", l.Cluster, len(l.Members), dir)
		if w := StoreWarning(l); w != "" {
			fmt.Fprintf(o.Out, "warning: %s\n", w)
		}
	case err != nil:
		return l, err
	default:
		if err := l.checkGiven(dir, o); err != nil {
			return l, err
		}
		if o.Restore != nil || o.BackupRepo != "" || o.BackupConfig != nil {
			return l, fmt.Errorf("--restore-from, --backup-repo and --backup-config make a new cluster, and %s already holds cluster %q: give another --dir", dir, l.Cluster)
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
	px, err := startProxy(o.Exe, dir, l, o.Out)
	if err != nil {
		return l, err
	}
	if err := resumeAfterDown(ctx, dir, l, o.Wait, o.Out); err != nil {
		return l, err
	}
	if err := WaitHealthy(ctx, dir, l, o.Wait); err != nil {
		return l, err
	}
	if err := px.wait(ctx, dir, l, o.Out); err != nil {
		return l, err
	}
	return l, nil
}

// checkGiven refuses options given for an existing cluster that contradict
// it: they would otherwise be ignored in silence, and the operator would
// believe a cluster started that is not the one running.
func (l Layout) checkGiven(dir string, o UpOptions) error {
	if o.Cluster != "" && o.Cluster != l.Cluster {
		return fmt.Errorf("%s already holds cluster %q; --cluster %s names another (leave --cluster out to start %q, or give another --dir for a new cluster %s)",
			dir, l.Cluster, quote.Value(o.Cluster), l.Cluster, quote.Value(o.Cluster))
	}
	if o.Members != 0 && o.Members != l.dbMembers() {
		return fmt.Errorf("%s already holds cluster %q with %d database members; --members %d cannot change it (use another --dir, or `holdfast down` and remove the directory)", dir, l.Cluster, l.dbMembers(), o.Members)
	}
	if o.ProxyMode != "" && o.ProxyMode != l.proxyMode() {
		return fmt.Errorf("%s already holds cluster %q, whose proxy runs in %s mode; --proxy-mode %s cannot change it (leave --proxy-mode out, or run another proxy: holdfast proxy --dir %s --mode %s --rw-listen HOST:PORT --ro-listen HOST:PORT)",
			dir, l.Cluster, l.proxyMode(), quote.Value(o.ProxyMode), dir, quote.Value(o.ProxyMode))
	}
	return nil
}

// proxyMode is the mode up runs the cluster's proxy in.
func (l Layout) proxyMode() string {
	if l.ProxyMode == "" {
		return proxy.ModePassThrough
	}
	return l.ProxyMode
}

// StoreWarning says what is fragile about a layout's consensus store, ""
// when nothing is. With two voters (two members, no witness, embedded
// etcd), one member down loses the store's majority: no member can then
// take or keep the leader key, so losing either member stops writes — the
// opposite of what two members are for.
func StoreWarning(l Layout) string {
	if len(l.External) > 0 || len(l.Members) != 2 {
		return ""
	}
	return fmt.Sprintf("cluster %q has 2 members and no witness: its embedded store has 2 voters, so with one member down it loses its majority and no member can be primary (writes stop until both are back). Add a witness (--witnesses 1) or use 3 members (--members 3) to survive the loss of one member.", l.Cluster)
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
	return spawnProcess(exe, []string{"agent", "--config", ConfigFile(dir, name)}, PIDFile(dir, name), LogFile(dir, name), nil)
}

// readyFD is the descriptor number a spawned process finds the write end
// of its readiness pipe at (the first of exec.Cmd's ExtraFiles).
const readyFD = 3

// ReadyWord is what a process Up spawns with a readiness pipe (the proxy's
// --ready-fd) writes there once it is ready, followed by a newline.
const ReadyWord = "ready"

// spawnProcess starts exe with args in its own session, output to logFile,
// and records its pid in pidFile. ready, when not nil, is passed to the
// process as descriptor readyFD.
func spawnProcess(exe string, args []string, pidFile, logFile string, ready *os.File) (int, error) {
	logf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("open log %s: %w", logFile, err)
	}
	defer logf.Close()
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if ready != nil {
		cmd.ExtraFiles = []*os.File{ready}
	}
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

// proxyStart is a proxy Up started (or found running): wait tells whether
// it came up.
type proxyStart struct {
	pid   int
	ready <-chan error // nil: not started by this Up
}

// startProxy starts the cluster's local proxy unless it runs already. The
// proxy reports on a pipe (its --ready-fd) once its listeners are bound.
func startProxy(exe, dir string, l Layout, out io.Writer) (proxyStart, error) {
	if l.ProxyRWPort == 0 {
		return proxyStart{}, nil
	}
	if pid, ok := runningPID(proxyPIDFile(dir), proxyMarker(dir)); ok {
		fmt.Fprintf(out, "proxy already running (pid %d)\n", pid)
		return proxyStart{pid: pid}, nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		return proxyStart{}, fmt.Errorf("start proxy: %w", err)
	}
	pid, err := spawnProcess(exe, []string{"proxy", "--dir", dir, "--ready-fd", strconv.Itoa(readyFD)}, proxyPIDFile(dir), ProxyLogFile(dir), w)
	w.Close() // the proxy holds the only write end now
	if err != nil {
		r.Close()
		return proxyStart{}, err
	}
	ready := make(chan error, 1)
	go func() {
		defer r.Close()
		b, _ := io.ReadAll(io.LimitReader(r, 64))
		if strings.TrimSpace(string(b)) == ReadyWord {
			ready <- nil
			return
		}
		ready <- errors.New("it exited before binding its listeners")
	}()
	fmt.Fprintf(out, "starting proxy (pid %d, log %s)\n", pid, ProxyLogFile(dir))
	return proxyStart{pid: pid, ready: ready}, nil
}

// wait waits until the proxy Up started has bound its listeners, and says
// so; the error quotes the proxy's log when it did not (a port taken by
// another program, say).
func (p proxyStart) wait(ctx context.Context, dir string, l Layout, out io.Writer) error {
	if p.ready == nil {
		return nil
	}
	var err error
	select {
	case err = <-p.ready:
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(proxyReadyWait):
		err = fmt.Errorf("it did not report its listeners bound within %s", proxyReadyWait)
	}
	if err != nil {
		return fmt.Errorf("the proxy (pid %d) failed to start: %w; the end of %s says:\n%s", p.pid, err, ProxyLogFile(dir), logTail(ProxyLogFile(dir), 5))
	}
	fmt.Fprintf(out, "proxy listening on %s (read-write, %s mode) and %s (read-only)\n", l.ProxyRW(), l.proxyMode(), l.ProxyRO())
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

// Down stops every member: the primary first, then the replicas, witnesses
// last. The primary stops while every other member still runs, so the
// store keeps its quorum (the embedded etcd lives in the agents) until the
// primary has stopped PostgreSQL cleanly, published its final position and
// released the leader key; and its synchronous standbys are still there,
// so a synchronous cluster never falls back to asynchronous commits on the
// way down. So that no replica is promoted once the key is free, Down first
// pauses the cluster (unless it already is) and leaves a marker; the next
// Up resumes it (see resumeAfterDown). Without a reachable store or a
// leader, the members are stopped in the same order without a pause.
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
		if _, running := RunningPID(dir, leader); running {
			if err := pauseForDown(ctx, dir, l, v); err != nil {
				fmt.Fprintf(out, "warning: %v; a replica may be promoted while the cluster stops\n", err)
			}
		}
	}
	order := make([]Member, len(l.Members))
	copy(order, l.Members)
	rank := func(m Member) int {
		switch {
		case m.Witness:
			return 2
		case m.Name == leader:
			return 0
		}
		return 1
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

// downPauseFile marks a cluster that Down paused (and Up must resume).
func downPauseFile(dir string) string { return filepath.Join(dir, "paused-by-down") }

// pauseForDown pauses the cluster in the store, so that no replica races
// for the leader key the primary releases when it stops. The marker is
// written before the pause: a Down interrupted in between leaves a marker
// on an unpaused cluster, which Up's resume treats as done. A cluster the
// operator had paused is left alone (no marker: it stays paused).
func pauseForDown(ctx context.Context, dir string, l Layout, v cluster.View) error {
	if v.Config == nil || v.Config.Paused {
		return nil
	}
	if err := writeAtomic(downPauseFile(dir), []byte("paused by holdfast down; the next holdfast up resumes it\n"), 0o644); err != nil {
		return fmt.Errorf("pause the cluster before stopping it: %w", err)
	}
	if err := setPaused(ctx, l, true); err != nil {
		_ = os.Remove(downPauseFile(dir))
		return fmt.Errorf("pause the cluster before stopping it: %w", err)
	}
	return nil
}

// resumeAfterDown resumes a cluster that Down paused, once its store
// answers (the members were just started), and removes the marker. No
// marker: nothing to do. Bounded by timeout.
func resumeAfterDown(ctx context.Context, dir string, l Layout, timeout time.Duration, out io.Writer) error {
	if _, err := os.Stat(downPauseFile(dir)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	deadline := time.Now().Add(timeout)
	for {
		err := setPaused(ctx, l, false)
		if err == nil {
			if err := os.Remove(downPauseFile(dir)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("resume the cluster paused by holdfast down: %w", err)
			}
			fmt.Fprintln(out, "resumed the cluster (paused by holdfast down)")
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("resume the cluster paused by holdfast down (resume it with `holdfast ctl resume --dir %s`): %w", dir, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// setPaused writes config.paused with a compare-and-swap on the config's
// revision, retried on a concurrent change; already so is success.
func setPaused(ctx context.Context, l Layout, paused bool) error {
	st, err := store.Open(ctx, store.Options{Endpoints: l.Endpoints(), Prefix: "/holdfast", Cluster: l.Cluster,
		Member: "ctl", TTL: 5 * time.Second, DialTimeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer st.Close()
	for range 5 {
		c, cancel := context.WithTimeout(ctx, 3*time.Second)
		v, err := st.Load(c)
		if err == nil && v.Config == nil {
			err = errors.New("the cluster has no configuration in the store")
		}
		if err == nil && v.Config.Paused != paused {
			cfg := *v.Config
			cfg.Paused = paused
			err = st.PutConfig(c, cfg, v.ConfigRevision)
		}
		cancel()
		if !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("set paused=%t: %w: the configuration kept changing", paused, store.ErrConflict)
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
