package pg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/internal/procstat"
)

// postmaster is one postgres process we started. pid and standby are set
// before Start returns; err is written by the owner goroutine before it
// closes done, so reading err after <-done is race-free.
type postmaster struct {
	pid     int
	proc    *os.Process
	standby bool
	done    chan struct{}
	err     error
}

// signal sends sig to the postmaster. os.Process signals through a pidfd,
// so a signal can never hit another process that reused the pid after the
// postmaster exited; signalling an exited postmaster is not an error.
func (p *postmaster) signal(sig syscall.Signal) error {
	if err := p.proc.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return nil
}

func (p *postmaster) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// StartOptions say how to start PostgreSQL.
type StartOptions struct {
	// Standby starts in recovery (standby.signal); otherwise as a primary.
	Standby bool
	// Primary is where a standby streams from; nil = a standby with no
	// upstream, replaying local WAL only.
	Primary *Source
	// SlotName is the primary's physical slot for this member ("" = none).
	SlotName string
}

// StopMode is how PostgreSQL shuts down.
type StopMode int

const (
	// Smart (SIGTERM) waits for clients to disconnect.
	Smart StopMode = iota
	// Fast (SIGINT) terminates sessions, writes a shutdown checkpoint.
	Fast
	// Immediate (SIGQUIT) kills everything at once; the next start runs
	// crash recovery.
	Immediate
)

func (m StopMode) String() string {
	switch m {
	case Smart:
		return "smart"
	case Fast:
		return "fast"
	case Immediate:
		return "immediate"
	}
	return "StopMode(" + strconv.Itoa(int(m)) + ")"
}

func (m StopMode) signal() syscall.Signal {
	switch m {
	case Smart:
		return syscall.SIGTERM
	case Immediate:
		return syscall.SIGQUIT
	}
	return syscall.SIGINT
}

// escalationGrace is how long Stop and Fence wait after escalating to an
// immediate shutdown before reporting that PostgreSQL still runs.
const escalationGrace = 10 * time.Second

// Start writes holdfast.conf and holdfast_hba.conf (atomically, owned by
// the account), makes postgresql.conf end with include_if_exists =
// 'holdfast.conf', creates or removes standby.signal, and spawns
// `postgres -D DataDir` directly (no pg_ctl) as the account, with its
// output appended to the log file, in its own process group.
//
// It returns as soon as the process is spawned, without waiting for
// PostgreSQL to accept connections (the agent must keep renewing its lease
// meanwhile): poll Status for Ready and Exited for an early death.
//
// The postmaster gets SIGQUIT (immediate shutdown) when the agent dies, so
// a killed agent never leaves a primary running unsupervised. The kernel
// sends that parent-death signal when the OS *thread* that forked the child
// exits, so the process is spawned and waited for by a dedicated owner
// goroutine, locked to its thread, that lives until the postmaster exits.
//
// It refuses when a postmaster it started still runs, and when DataDir
// holds no PostgreSQL data. ctx is only checked before spawning.
func (e *Engine) Start(ctx context.Context, so StartOptions) error {
	const op = "start PostgreSQL"
	if e.Running() {
		return fmt.Errorf("%s: already running (pid %d)", op, e.pm.pid)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	e.proxyAuthDone = false
	if err := e.requireValid(op); err != nil {
		return err
	}
	if !so.Standby && (so.Primary != nil || so.SlotName != "") {
		return fmt.Errorf("%s: a primary cannot have an upstream or a slot", op)
	}
	if err := e.writeConfig(so); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	signal := filepath.Join(e.o.DataDir, "standby.signal")
	if so.Standby {
		if err := e.writeFileAtomic(signal, nil, 0o600); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
	} else if err := os.Remove(signal); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: %w", op, err)
	}
	logf, err := e.openLog()
	if err != nil {
		return fmt.Errorf("%s: open log file %s: %w", op, e.o.LogFile, err)
	}
	fmt.Fprintf(logf, "%s holdfast: starting postgres (standby=%v)\n", time.Now().UTC().Format(time.RFC3339), so.Standby)

	cmd := exec.Command(filepath.Join(e.o.BinDir, "postgres"), "-D", e.o.DataDir)
	cmd.Env = e.env()
	cmd.Dir = e.o.DataDir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = e.sysProcAttr(syscall.SIGQUIT)

	pm := &postmaster{standby: so.Standby, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// The owner goroutine. It never unlocks: the thread that forked
		// the postmaster must live as long as the postmaster (or the
		// kernel sends it SIGQUIT); when this goroutine returns, after the
		// postmaster has exited, the runtime discards the thread.
		runtime.LockOSThread()
		err := cmd.Start()
		logf.Close() // the child has its own copy
		if err != nil {
			started <- err
			return
		}
		pm.pid = cmd.Process.Pid
		pm.proc = cmd.Process
		started <- nil
		if err := cmd.Wait(); err != nil {
			pm.err = fmt.Errorf("postgres (pid %d) exited: %w\n%s", pm.pid, err, indent(lastLines(readTail(e.o.LogFile, 16<<10), tailLines)))
		}
		close(pm.done)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("%s: spawn postgres: %w", op, err)
	}
	e.pm = pm
	e.closeConn()
	e.log.Info("postgres spawned", "pid", pm.pid, "standby", so.Standby, "primary", so.Primary, "slot", so.SlotName)
	return nil
}

// RunsAsPrimary reports whether the postmaster this engine runs was
// started as a primary or has been promoted: it may accept writes, whether
// or not it answers.
func (e *Engine) RunsAsPrimary() bool { return e.Running() && !e.pm.standby }

// Running reports whether the postmaster we started is alive. It never
// blocks.
func (e *Engine) Running() bool { return e.pm != nil && !e.pm.exited() }

// LastExit reports how the postmaster this engine last started ended: its
// pid and nil for exit status 0, else an error with the exit status and
// the last lines of the log file (why it did not start, or crashed). The
// pid is 0 before any Start and while that postmaster runs. It never
// blocks.
func (e *Engine) LastExit() (pid int, err error) {
	if e.pm == nil || !e.pm.exited() {
		return 0, nil
	}
	return e.pm.pid, e.pm.err
}

// PID is the running postmaster's process id, 0 when none runs.
func (e *Engine) PID() int {
	if !e.Running() {
		return 0
	}
	return e.pm.pid
}

// Stop shuts PostgreSQL down in mode and waits until it has exited or ctx
// is done. When ctx expires during a Fast stop it escalates to Immediate
// and waits up to 10 s more. It returns an error if the postmaster still
// runs; nil at once when none runs.
func (e *Engine) Stop(ctx context.Context, mode StopMode) error {
	if !e.Running() {
		return nil
	}
	pm := e.pm
	e.closeConn()
	e.log.Info("stopping postgres", "pid", pm.pid, "mode", mode.String())
	if err := pm.signal(mode.signal()); err != nil {
		return fmt.Errorf("stop PostgreSQL (%s): signal pid %d: %w", mode, pm.pid, err)
	}
	select {
	case <-pm.done:
		return nil
	case <-ctx.Done():
	}
	if mode == Fast {
		e.log.Warn("fast shutdown did not finish in time; escalating to immediate", "pid", pm.pid)
		_ = pm.signal(syscall.SIGQUIT)
		select {
		case <-pm.done:
			return nil
		case <-time.After(escalationGrace):
		}
	}
	return fmt.Errorf("stop PostgreSQL (%s): pid %d still runs: %w", mode, pm.pid, ctx.Err())
}

// Fence makes a PostgreSQL that must not be writable stop accepting writes
// within the given budget (deadline: now + within, on this process's
// monotonic clock; the caller computes the budget on its own clock, so no
// wall-clock instant crosses the interface). It sends SIGINT (fast shutdown: backends are terminated at
// once, so writes normally stop within milliseconds); if the postmaster is
// still there shortly before deadline, SIGQUIT (immediate shutdown); and at
// deadline SIGKILL to the postmaster's whole process group. The last step
// is for a postmaster that cannot act on a signal — frozen (SIGSTOP), or
// hung — while its backends go on committing on the connections they
// already have: only killing every process of the group stops them, and
// PostgreSQL recovers from it as from a crash. It blocks until the
// postmaster exits or escalationGrace after the kill, and returns an error
// only if it still runs. No-op when none runs.
func (e *Engine) Fence(within time.Duration) error {
	if !e.Running() {
		return nil
	}
	deadline := time.Now().Add(within)
	pm := e.pm
	e.closeConn()
	e.log.Warn("fencing: fast shutdown", "pid", pm.pid, "deadline", deadline)
	_ = pm.signal(syscall.SIGINT)
	quitAt := deadline.Add(-min(time.Until(deadline)/3, 500*time.Millisecond))
	if waitExit(pm, quitAt) {
		return nil
	}
	e.log.Warn("fencing: fast shutdown missed its deadline; immediate shutdown", "pid", pm.pid)
	_ = pm.signal(syscall.SIGQUIT)
	if waitExit(pm, deadline) {
		return nil
	}
	e.log.Error("fencing: PostgreSQL did not stop by the fence deadline; killing its process group", "pid", pm.pid)
	if err := syscall.Kill(-pm.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		e.log.Error("fencing: kill the process group", "pid", pm.pid, "err", err)
	}
	if waitExit(pm, time.Now().Add(escalationGrace)) {
		return nil
	}
	return fmt.Errorf("fence PostgreSQL: pid %d still runs after SIGINT, SIGQUIT and SIGKILL", pm.pid)
}

// waitExit waits until the postmaster exits (true) or until t (false).
func waitExit(pm *postmaster, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-pm.done:
		return true
	case <-timer.C:
		return false
	}
}

// AdoptOrStopStray handles what a previous agent run left in DataDir. It
// is called at agent start, before this engine starts anything.
//
// If postmaster.pid names a live postgres process serving DataDir, it is
// stopped (fast, then immediate when ctx expires), because we never adopt a
// postmaster we did not start: we could not wait for it, see it die, or
// have it die with us.
//
// Any other postmaster.pid is the remnant of a postmaster that died, and
// is removed: PostgreSQL refuses to start while the pid in its lock file
// is alive, whatever process has it now, and in a container started again
// on the same volume the dead postmaster's pid soon belongs to another
// process (one of the agent's own threads), so the member would never
// start again. It also refuses an empty or garbled lock file (a crash
// while one was written). A pid whose process cannot be examined is left
// for PostgreSQL to judge. Errors mean the stray still runs or the file
// could not be examined or removed.
func (e *Engine) AdoptOrStopStray(ctx context.Context) error {
	const op = "stop stray postmaster"
	if e.Running() {
		return nil
	}
	lock := filepath.Join(e.o.DataDir, "postmaster.pid")
	b, err := os.ReadFile(lock)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err == nil && pid > 0 {
		switch lockHolder(pid, e.o.DataDir) {
		case holderServer:
			return e.stopStray(ctx, pid)
		case holderUnknown:
			e.log.Warn("postmaster.pid names a process that cannot be examined; leaving the file for PostgreSQL, which refuses to start while that process lives", "pid", pid)
			return nil
		}
	}
	e.log.Warn("removing the lock file of a postmaster that is gone", "file", lock, "content", first)
	if err := os.Remove(lock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s: remove stale lock file: %w", op, err)
	}
	return nil
}

// stopStray stops a postmaster serving DataDir that this engine did not
// start (see AdoptOrStopStray).
func (e *Engine) stopStray(ctx context.Context, pid int) error {
	e.log.Warn("a postmaster from a previous run serves the data directory; stopping it (holdfast never adopts a postmaster it did not start)", "pid", pid)
	_ = syscall.Kill(pid, syscall.SIGINT)
	if waitGone(ctx, pid) {
		return nil
	}
	e.log.Warn("stray postmaster survived fast shutdown; immediate shutdown", "pid", pid)
	_ = syscall.Kill(pid, syscall.SIGQUIT)
	grace, cancel := context.WithTimeout(context.Background(), escalationGrace)
	defer cancel()
	if waitGone(grace, pid) {
		return nil
	}
	return fmt.Errorf("stop stray postmaster: pid %d still runs", pid)
}

// holder is what the pid in a lock file is now (lockHolder).
type holder int

const (
	holderGone    holder = iota // no such process, or a zombie
	holderServer                // a postgres process serving the data directory
	holderOther                 // a live process that is something else
	holderUnknown               // a live process that cannot be examined
)

// lockHolder tells what pid, read from dataDir's postmaster.pid, is now.
func lockHolder(pid int, dataDir string) holder {
	if !procstat.Alive(pid) {
		return holderGone
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return holderUnknown
	}
	if !bytes.Contains(cmdline, []byte("postgres")) {
		return holderOther
	}
	want := dataDir
	if r, err := filepath.EvalSymlinks(dataDir); err == nil {
		want = r
	}
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil {
		if cwd == want || cwd == dataDir {
			return holderServer
		}
		return holderOther
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	for _, a := range args {
		if a == dataDir || a == want {
			return holderServer
		}
	}
	return holderUnknown
}

// waitGone polls until pid is gone or ctx is done.
func waitGone(ctx context.Context, pid int) bool {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if !procstat.Alive(pid) {
			return true
		}
		select {
		case <-ctx.Done():
			return !procstat.Alive(pid)
		case <-t.C:
		}
	}
}

// Reconfigure rewrites holdfast.conf (and holdfast_hba.conf) for a new
// upstream or slot and, when PostgreSQL runs, reloads it (SIGHUP):
// PostgreSQL 13+ applies primary_conninfo and primary_slot_name on reload by
// restarting the WAL receiver. It cannot turn a primary into a standby or
// back (that takes a restart, or Promote): so.Standby must match how the
// running postmaster was started. The reload is asynchronous; poll Status
// for UpstreamHost/Streaming. ctx is only checked before writing.
func (e *Engine) Reconfigure(ctx context.Context, so StartOptions) error {
	const op = "reconfigure PostgreSQL"
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if !so.Standby && (so.Primary != nil || so.SlotName != "") {
		return fmt.Errorf("%s: a primary cannot have an upstream or a slot", op)
	}
	running := e.Running()
	if running && so.Standby != e.pm.standby {
		return fmt.Errorf("%s: running as standby=%v; switching to standby=%v needs a restart or a promotion", op, e.pm.standby, so.Standby)
	}
	if err := e.writeConfig(so); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if !running {
		return nil
	}
	if err := e.pm.signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("%s: reload pid %d: %w", op, e.pm.pid, err)
	}
	e.log.Info("postgres reloaded", "primary", so.Primary, "slot", so.SlotName)
	return nil
}

// settings turns options into what RenderConf needs.
func (e *Engine) settings(so StartOptions) Settings {
	s := Settings{
		Member:     e.o.Member,
		ListenHost: e.o.ListenHost,
		Port:       e.o.Port,
		HBAFile:    filepath.Join(e.o.DataDir, HBAFile),
		Parameters: e.o.Parameters,
		Standby:    so.Standby,
		SlotName:   so.SlotName,
	}
	if so.Primary != nil {
		s.Upstream = &Upstream{
			Host:     so.Primary.Host,
			Port:     so.Primary.Port,
			User:     e.o.Replication.Username,
			Password: e.o.Replication.Password,
		}
	}
	return s
}

// writeConfig writes holdfast_hba.conf and holdfast.conf and makes
// postgresql.conf include the latter last.
func (e *Engine) writeConfig(so StartOptions) error {
	conf, err := RenderConf(e.settings(so))
	if err != nil {
		return err
	}
	hba := RenderHBA(HBASettings{UserLines: e.o.PgHBA, ReplicationUser: e.o.Replication.Username})
	if err := e.writeFileAtomic(filepath.Join(e.o.DataDir, HBAFile), []byte(hba), 0o600); err != nil {
		return err
	}
	if err := e.writeFileAtomic(filepath.Join(e.o.DataDir, ConfFile), []byte(conf), 0o600); err != nil {
		return err
	}
	main := filepath.Join(e.o.DataDir, "postgresql.conf")
	b, err := os.ReadFile(main)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read postgresql.conf: %w", err)
	}
	mode := os.FileMode(0o600)
	if fi, err := os.Stat(main); err == nil {
		mode = fi.Mode().Perm()
	}
	if updated, changed := ensureInclude(string(b)); changed {
		if err := e.writeFileAtomic(main, []byte(updated), mode); err != nil {
			return err
		}
	}
	return nil
}

// HandoverStop configures StopForHandover.
type HandoverStop struct {
	// Smart is how long open sessions may finish their transactions
	// (smart shutdown: no new session is admitted) before the fast
	// shutdown terminates them.
	Smart time.Duration
	// Confirm is how long, once the shutdown checkpoint is written, the
	// standbys have to confirm they flushed the final WAL. Their
	// walsenders keep the postmaster alive until they do; a standby that
	// stopped acknowledging (a frozen WAL receiver) would otherwise hold
	// the shutdown until wal_sender_timeout.
	Confirm time.Duration
	// OnFast, when set, is called (on the caller's goroutine) when the
	// fast shutdown begins: from then on no session can commit.
	OnFast func()
}

// handoverPoll is how often StopForHandover reads pg_control while the
// fast shutdown runs.
const handoverPoll = 100 * time.Millisecond

// StopForHandover stops a primary that hands over to a standby: a smart
// shutdown for o.Smart, then a fast one. confirmed is true when the
// postmaster exited by itself after that: every walsender then had its
// standby confirm the flush of all WAL up to and including the shutdown
// checkpoint, so every standby still connected holds the final WAL.
//
// It escalates to an immediate shutdown, and returns confirmed false with
// no error, when the standbys have not confirmed within o.Confirm of
// pg_control recording the shutdown checkpoint, or when ctx is done first
// (the checkpoint itself did not finish). The data directory then holds
// every commit (the checkpoint, or crash recovery, replays them), but a
// standby may lack the tail: the caller must not hand over. An error
// means the postmaster still runs.
func (e *Engine) StopForHandover(ctx context.Context, o HandoverStop) (confirmed bool, err error) {
	if !e.Running() {
		return true, nil
	}
	pm := e.pm
	e.closeConn()
	e.log.Info("stopping postgres for a handover", "pid", pm.pid, "mode", Smart.String(), "smart_for", o.Smart)
	if err := pm.signal(Smart.signal()); err != nil {
		return false, fmt.Errorf("stop PostgreSQL for a handover (smart): signal pid %d: %w", pm.pid, err)
	}
	if waitExit(pm, time.Now().Add(o.Smart)) {
		return true, nil
	}
	e.log.Info("stopping postgres for a handover", "pid", pm.pid, "mode", Fast.String(), "confirm_within", o.Confirm)
	if err := pm.signal(Fast.signal()); err != nil {
		return false, fmt.Errorf("stop PostgreSQL for a handover (fast): signal pid %d: %w", pm.pid, err)
	}
	if o.OnFast != nil {
		o.OnFast()
	}
	var checkpointed time.Time
	tick := time.NewTicker(handoverPoll)
	defer tick.Stop()
	for {
		select {
		case <-pm.done:
			return true, nil
		case <-ctx.Done():
			e.log.Warn("shutdown checkpoint not written in time; immediate shutdown, the handover is off", "pid", pm.pid)
			return false, e.quitAfterHandover(pm)
		case <-tick.C:
		}
		if checkpointed.IsZero() {
			if st, err := e.Inspect(); err == nil && st.Control != nil && st.Control.State == StateShutDown {
				checkpointed = time.Now()
			}
			continue
		}
		if time.Since(checkpointed) >= o.Confirm {
			e.log.Warn("standbys did not confirm the final WAL in time; immediate shutdown, the handover is off", "pid", pm.pid, "confirm_within", o.Confirm)
			return false, e.quitAfterHandover(pm)
		}
	}
}

// quitAfterHandover escalates a handover's shutdown to an immediate one
// and waits for the postmaster to exit.
func (e *Engine) quitAfterHandover(pm *postmaster) error {
	_ = pm.signal(syscall.SIGQUIT)
	if waitExit(pm, time.Now().Add(escalationGrace)) {
		return nil
	}
	return fmt.Errorf("stop PostgreSQL for a handover: pid %d still runs after an immediate shutdown", pm.pid)
}
