package agenttest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/pg"
)

// WALBlock is how many LSN bytes one WAL token stands for.
const WALBlock = 8192

// Net is a set of in-memory PostgreSQL servers that can replicate from
// each other, addressed by host name (a pg.Source's Host: the member's
// name in these tests). One mutex guards them all: replication, clones and
// rewinds read two servers at once.
type Net struct {
	mu        sync.Mutex
	dbs       map[string]*DB
	nextSysID int
	nextToken int
	reply     int64
	// BeforeWritable, when set, is called (with the Net locked: it must not
	// call the DBs) right before member name's PostgreSQL would become
	// writable — a start as primary or a promotion. An error refuses the
	// change, as if the operation failed: tests check there the invariant
	// "no member promotes without the leader key".
	BeforeWritable func(name string) error
	// OnFence, when set, is called (Net locked) when member name's
	// PostgreSQL is fenced while writable, with the budget it was given.
	OnFence func(name string, within time.Duration)
}

// NewNet returns an empty Net.
func NewNet() *Net { return &Net{dbs: map[string]*DB{}} }

// DB returns the server of member name (created empty: no data directory
// yet), reachable at host name.
func (n *Net) DB(name string) *DB {
	n.mu.Lock()
	defer n.mu.Unlock()
	if d, ok := n.dbs[name]; ok {
		return d
	}
	d := &DB{n: n, name: name}
	n.dbs[name] = d
	return d
}

// DB is one member's PostgreSQL: a data directory (a WAL of unique tokens,
// LSN = tokens × WALBlock, a timeline and its history, the control state)
// and a postmaster (running, ready, in recovery, following an upstream).
// It implements the agent's Database.
type DB struct {
	n    *Net
	name string

	// data directory
	valid      bool
	sysID      string
	control    pg.ClusterState
	tl         uint32
	wal        []string
	checkpoint cluster.Position
	switches   []pg.TimelineSwitch
	syncNames  string
	corrupted  bool
	asides     int

	// postmaster
	running, ready, inRecovery, asPrimary bool
	upstream                              string
	streaming                             bool
	// pid of the postmaster last started; exitPID and exitErr tell how
	// it ended (LastExit).
	pid, exitPID int
	exitErr      error

	// faults, set by tests through the setters
	startFails      bool
	diesAtStart     string
	rewindFails     int
	receiverPaused  bool
	unconfirmedStop bool

	// counts
	promotions, fences, rewinds, clones int
}

func (d *DB) lock() func() { d.n.mu.Lock(); return d.n.mu.Unlock }

func (d *DB) writableLocked() bool { return d.running && d.ready && !d.inRecovery }

func (d *DB) positionLocked() cluster.Position {
	return cluster.Position{Timeline: d.tl, LSN: cluster.LSN(len(d.wal) * WALBlock)}
}

// --- test controls and readings --------------------------------------

// Writable reports whether the server accepts writes now.
func (d *DB) Writable() bool { defer d.lock()(); return d.writableLocked() }

// Position is the end of its WAL.
func (d *DB) Position() cluster.Position { defer d.lock()(); return d.positionLocked() }

// WAL returns a copy of its WAL tokens.
func (d *DB) WAL() []string { defer d.lock()(); return slices.Clone(d.wal) }

// Upstream is the member it follows ("" = none), Streaming whether it
// streams from it now.
func (d *DB) Upstream() (string, bool) { defer d.lock()(); return d.upstream, d.streaming }

// Running reports whether the postmaster runs.
func (d *DB) Running() bool { defer d.lock()(); return d.running }

// Counts returns how many promotions, fences, rewinds and clones (re-clones
// included) it went through.
func (d *DB) Counts() (promotions, fences, rewinds, clones int) {
	defer d.lock()()
	return d.promotions, d.fences, d.rewinds, d.clones
}

// Write commits one transaction on a writable server and returns its
// token ("" when not writable).
func (d *DB) Write() string {
	defer d.lock()()
	if !d.writableLocked() {
		return ""
	}
	d.n.nextToken++
	tok := fmt.Sprintf("%s#%d", d.name, d.n.nextToken)
	d.wal = append(d.wal, tok)
	return tok
}

// Crash kills the postmaster (kill -9, or the host gone): no shutdown
// checkpoint, the control state stays as it was.
func (d *DB) Crash() {
	defer d.lock()()
	if d.running {
		d.exitPID, d.exitErr = d.pid, fmt.Errorf("postgres (pid %d) exited: signal: killed", d.pid)
	}
	d.running, d.ready, d.inRecovery, d.asPrimary, d.upstream, d.streaming = false, false, false, false, "", false
}

// SetStartFails makes every start fail (true) or work again.
func (d *DB) SetStartFails(v bool) { defer d.lock()(); d.startFails = v }

// SetDiesAtStart makes every start spawn a postmaster that exits at once,
// with reason in its log (a stale lock file, a bad setting), as a real
// start does: Start succeeds, the server is gone at the next look. ""
// lets starts work again.
func (d *DB) SetDiesAtStart(reason string) { defer d.lock()(); d.diesAtStart = reason }

// SetRewindFails makes the next n rewinds fail.
func (d *DB) SetRewindFails(n int) { defer d.lock()(); d.rewindFails = n }

// SetReceiverPaused stops (true) or resumes its WAL receiver: a paused
// standby receives nothing and does not stream.
func (d *DB) SetReceiverPaused(v bool) { defer d.lock()(); d.receiverPaused = v }

// SetUnconfirmedStop makes a switchover's stop end without the standbys'
// confirmation (an immediate shutdown, as after a frozen WAL receiver).
func (d *DB) SetUnconfirmedStop(v bool) { defer d.lock()(); d.unconfirmedStop = v }

// Replicate ships WAL: every running standby whose upstream is a writable
// server of the same system, on no later a timeline, and whose WAL is a
// prefix of the upstream's, receives all of it and streams; any other
// does not stream.
func (n *Net) Replicate() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, name := range slices.Sorted(maps.Keys(n.dbs)) {
		d := n.dbs[name]
		d.streaming = false
		if !d.running || !d.ready || !d.inRecovery || d.upstream == "" || d.receiverPaused {
			continue
		}
		up := n.dbs[d.upstream]
		if up == nil || !up.writableLocked() || up.sysID != d.sysID || d.tl > up.tl || !isPrefix(d.wal, up.wal) {
			continue
		}
		d.streaming = true
		d.wal = slices.Clone(up.wal)
		d.tl = up.tl
	}
}

func isPrefix(a, b []string) bool { return len(a) <= len(b) && slices.Equal(a, b[:len(a)]) }

func commonPrefix(a, b []string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// --- agent.Database -------------------------------------------------------

var errNotRunning = errors.New("PostgreSQL is not running")

func (d *DB) Inspect() (pg.DataDirState, error) {
	defer d.lock()()
	if !d.valid {
		return pg.DataDirState{Kind: pg.DataDirEmpty}, nil
	}
	return pg.DataDirState{Kind: pg.DataDirValid, Control: &pg.ControlData{SystemID: d.sysID, State: d.control,
		CheckpointLSN: d.checkpoint.LSN, CheckpointTimeline: d.checkpoint.Timeline}}, nil
}

func (d *DB) WriteMarker(clusterName, sysid string) error { return nil }

func (d *DB) Initdb(ctx context.Context) error {
	defer d.lock()()
	if d.valid || d.running {
		return errors.New("initdb: data directory not empty")
	}
	d.n.nextSysID++
	d.valid, d.sysID, d.control, d.tl, d.wal = true, fmt.Sprintf("7%03d", d.n.nextSysID), pg.StateShutDown, 1, nil
	d.checkpoint, d.switches, d.syncNames, d.corrupted = cluster.Position{Timeline: 1}, nil, "", false
	return nil
}

func (d *DB) source(src pg.Source) (*DB, error) {
	s := d.n.dbs[src.Host]
	if s == nil || !s.running || !s.ready {
		return nil, fmt.Errorf("connect to %s: no running PostgreSQL there", src)
	}
	return s, nil
}

func (d *DB) Clone(ctx context.Context, src pg.Source) error {
	defer d.lock()()
	if d.valid || d.running {
		return errors.New("pg_basebackup: data directory not empty")
	}
	s, err := d.source(src)
	if err != nil {
		return fmt.Errorf("pg_basebackup: %w", err)
	}
	d.valid, d.sysID, d.tl, d.wal = true, s.sysID, s.tl, slices.Clone(s.wal)
	d.control, d.checkpoint = pg.StateInProduction, s.positionLocked() // pg_basebackup copies the primary's pg_control
	d.switches, d.syncNames, d.corrupted = slices.Clone(s.switches), s.syncNames, false
	d.clones++
	return nil
}

func (d *DB) Rewind(ctx context.Context, src pg.Source) (pg.RewindResult, error) {
	defer d.lock()()
	if d.running || !d.valid {
		return pg.RewindResult{}, errors.New("pg_rewind: needs a stopped data directory")
	}
	s, err := d.source(src)
	if err != nil {
		return pg.RewindResult{}, fmt.Errorf("pg_rewind: %w", err)
	}
	if d.rewindFails > 0 {
		d.rewindFails--
		d.corrupted = true
		return pg.RewindResult{}, errors.New("pg_rewind: injected failure")
	}
	n := commonPrefix(d.wal, s.wal)
	res := pg.RewindResult{Rewound: n < len(d.wal) || d.tl != s.tl,
		Diverged: cluster.Position{Timeline: d.tl, LSN: cluster.LSN(n * WALBlock)}, EndOfWAL: cluster.LSN(len(d.wal) * WALBlock)}
	d.wal, d.tl, d.switches = slices.Clone(s.wal[:n]), s.tl, slices.Clone(s.switches)
	d.control, d.checkpoint = pg.StateInArchiveRecovery, d.positionLocked()
	d.rewinds++
	return res, nil
}

func (d *DB) MoveAside(reason string) (string, error) {
	defer d.lock()()
	if d.running {
		return "", errors.New("move aside: PostgreSQL is running")
	}
	d.asides++
	d.valid, d.sysID, d.wal, d.tl, d.control, d.switches, d.corrupted = false, "", nil, 0, "", nil, false
	return fmt.Sprintf("pgdata.old-%d", d.asides), nil
}

func (d *DB) Start(ctx context.Context, o pg.StartOptions) error {
	defer d.lock()()
	switch {
	case d.running:
		return errors.New("start: already running")
	case !d.valid:
		return errors.New("start: no data directory")
	case d.startFails:
		return errors.New("start: PostgreSQL does not start (injected)")
	case d.corrupted:
		return errors.New("start: recovery failed: invalid record")
	}
	if !o.Standby && d.n.BeforeWritable != nil {
		if err := d.n.BeforeWritable(d.name); err != nil {
			return fmt.Errorf("start as primary: %w", err)
		}
	}
	d.pid = max(d.pid+1, fakePID)
	if d.diesAtStart != "" {
		d.exitPID, d.exitErr = d.pid, fmt.Errorf("postgres (pid %d) exited: exit status 1\n    %s", d.pid, d.diesAtStart)
		return nil
	}
	d.running, d.ready, d.inRecovery, d.asPrimary, d.upstream = true, true, o.Standby, !o.Standby, ""
	if o.Primary != nil {
		d.upstream = o.Primary.Host
	}
	if o.Standby {
		d.control = pg.StateInArchiveRecovery
	} else {
		d.control = pg.StateInProduction
	}
	return nil
}

func (d *DB) PID() int {
	defer d.lock()()
	if !d.running {
		return 0
	}
	return d.pid
}

// fakePID is the first pid the fake postmaster gets; each start gets the next.
const fakePID = 4242

func (d *DB) LastExit() (pid int, err error) {
	defer d.lock()()
	if d.running {
		return 0, nil
	}
	return d.exitPID, d.exitErr
}

func (d *DB) RunsAsPrimary() bool { defer d.lock()(); return d.running && d.asPrimary }

// stopLocked is a clean stop: a primary writes its shutdown checkpoint
// (one more WAL token), which its caught-up streaming standbys receive
// before the postmaster exits; a standby records where it was.
func (d *DB) stopLocked(clean bool) {
	if !d.running {
		return
	}
	switch {
	case !clean:
	case d.inRecovery:
		d.control, d.checkpoint = pg.StateShutDownInRecovery, d.positionLocked()
	case d.ready:
		// The checkpoint's location is where its record starts: the
		// record is the last WAL token.
		before := d.wal
		d.control, d.checkpoint = pg.StateShutDown, d.positionLocked()
		d.n.nextToken++
		d.wal = append(slices.Clone(before), fmt.Sprintf("%s#ckpt%d", d.name, d.n.nextToken))
		// The walsenders send everything up to the shutdown checkpoint to
		// the standbys streaming from it before the postmaster exits.
		for _, r := range d.n.dbs {
			if r != d && r.running && r.inRecovery && r.upstream == d.name && r.streaming && !r.receiverPaused && isPrefix(r.wal, before) {
				r.wal, r.tl = slices.Clone(d.wal), d.tl
			}
		}
	}
	d.exitPID, d.exitErr = d.pid, nil
	d.running, d.ready, d.inRecovery, d.asPrimary, d.upstream, d.streaming = false, false, false, false, "", false
}

func (d *DB) Stop(ctx context.Context, mode pg.StopMode) error {
	defer d.lock()()
	d.stopLocked(mode != pg.Immediate)
	return nil
}

func (d *DB) StopForHandover(ctx context.Context, o pg.HandoverStop) (bool, error) {
	d.n.mu.Lock()
	if d.unconfirmedStop {
		d.stopLocked(false)
		d.n.mu.Unlock()
		return false, nil
	}
	wasRunning := d.running
	d.n.mu.Unlock()
	if wasRunning && o.OnFast != nil {
		o.OnFast()
	}
	defer d.lock()()
	d.stopLocked(true)
	return true, nil
}

func (d *DB) Fence(within time.Duration) error {
	defer d.lock()()
	if d.writableLocked() || d.running && d.asPrimary {
		d.fences++
		if d.n.OnFence != nil {
			d.n.OnFence(d.name, within)
		}
	}
	d.stopLocked(true)
	return nil
}

func (d *DB) AdoptOrStopStray(ctx context.Context) error { return nil }

func (d *DB) Reconfigure(ctx context.Context, o pg.StartOptions) error {
	defer d.lock()()
	if !d.running {
		return errNotRunning
	}
	d.upstream = ""
	if o.Primary != nil {
		d.upstream = o.Primary.Host
	}
	d.streaming = false
	return nil
}

func (d *DB) Promote(ctx context.Context) error {
	defer d.lock()()
	if !d.running || !d.ready || !d.inRecovery {
		return errors.New("promote: not a running standby")
	}
	if d.n.BeforeWritable != nil {
		if err := d.n.BeforeWritable(d.name); err != nil {
			return fmt.Errorf("promote: %w", err)
		}
	}
	d.switches = append(d.switches, pg.TimelineSwitch{ParentTimeline: d.tl, SwitchPoint: d.positionLocked().LSN, Reason: "promote"})
	d.tl++
	d.inRecovery, d.asPrimary, d.upstream, d.streaming, d.control = false, true, "", false, pg.StateInProduction
	d.promotions++
	return nil
}

func (d *DB) Close() {}

func (d *DB) Status(ctx context.Context) (pg.Status, error) {
	defer d.lock()()
	if !d.running {
		return pg.Status{}, errNotRunning
	}
	if !d.ready {
		return pg.Status{}, nil
	}
	lsn := d.positionLocked().LSN
	s := pg.Status{Ready: true, InRecovery: d.inRecovery, SystemID: d.sysID, Timeline: d.tl, Streaming: d.streaming,
		SyncStandbyNames: d.syncNames, UpstreamHost: d.upstream}
	if d.inRecovery {
		s.ReceiveLSN, s.ReplayLSN = lsn, lsn
		return s, nil
	}
	s.WriteLSN, s.FlushLSN = lsn, lsn
	for _, name := range slices.Sorted(maps.Keys(d.n.dbs)) {
		r := d.n.dbs[name]
		if r != d && r.running && r.inRecovery && r.upstream == d.name && r.streaming {
			d.n.reply++
			s.Replicas = append(s.Replicas, pg.Replica{Name: r.name, State: "streaming", Flush: r.positionLocked().LSN, Reply: d.n.reply})
		}
	}
	return s, nil
}

func (d *DB) SetSyncStandbys(ctx context.Context, value string) error {
	defer d.lock()()
	if !d.running {
		return errNotRunning
	}
	d.syncNames = value
	return nil
}

// SyncStandbys is synchronous_standby_names as set.
func (d *DB) SyncStandbys() string { defer d.lock()(); return d.syncNames }

func (d *DB) EnsureReplicationUser(ctx context.Context) error {
	defer d.lock()()
	if !d.writableLocked() {
		return errors.New("create replication role: not a writable primary")
	}
	return nil
}

func (d *DB) EnsureProxyAuth(ctx context.Context) error {
	defer d.lock()()
	if !d.writableLocked() {
		return errors.New("ensure the proxy's auth role: not a writable primary")
	}
	return nil
}

func (d *DB) EnsureSlots(ctx context.Context, names []string) error { return nil }

func (d *DB) TimelineHistory(ctx context.Context, tli uint32) ([]pg.TimelineSwitch, error) {
	defer d.lock()()
	var out []pg.TimelineSwitch
	for _, s := range d.switches {
		if s.ParentTimeline < tli {
			out = append(out, s)
		}
	}
	return out, nil
}

// String describes the server for failure messages.
func (d *DB) String() string {
	defer d.lock()()
	var b strings.Builder
	fmt.Fprintf(&b, "%s: valid=%v sys=%s control=%q tl=%d wal=%d running=%v ready=%v recovery=%v upstream=%q streaming=%v",
		d.name, d.valid, d.sysID, d.control, d.tl, len(d.wal), d.running, d.ready, d.inRecovery, d.upstream, d.streaming)
	return b.String()
}
