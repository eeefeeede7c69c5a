// Command syncwindow measures, after every promotion in a synchronous mode,
// the window during which the new primary acknowledges commits with no
// synchronous copy.
//
// Such commits are possible exactly while the new primary is writable
// (pg_is_in_recovery() = false) and its synchronous_standby_names is empty.
// The window of one event is the time from the first observation of the new
// primary being writable to the first observation of a non-empty
// synchronous_standby_names on it. Every member is polled over one
// persistent connection (reconnected on error) every -poll interval with
//
//	SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names'),
//	       count of pg_stat_replication rows with sync_state sync or quorum
//
// and two more times are recorded from the same first writable
// observation: until pg_stat_replication on the new primary shows a standby
// whose sync_state is 'sync' or 'quorum', and until a commit on the new
// primary succeeds (a probe INSERT over a connection opened beforehand; in
// strict mode this is the write unavailability: commits wait for a
// standby).
//
// For each of the modes on, strict and quorum, a fresh 3-member cluster
// (`holdfast up`) is switched to the mode with `holdfast ctl edit-config
// --set synchronous_mode=M --set synchronous_node_count=1`, then -rounds
// rounds of: a failover by kill -9 of the primary's agent and postmaster
// together (the killed member brought back with `holdfast up --detach` once
// the event is measured), then a planned switchover (`holdfast ctl
// switchover`). Before each event the cluster is healthy, `ctl list` shows
// the mode and a synchronous standby, and the primary's
// synchronous_standby_names is not empty. A fresh cluster per mode, failover
// first, makes every mode's first failover promote a member that has never
// been primary, as the first failover of any cluster does. Each event
// records which replication slots for the others the new primary lacked
// before it (slots survive a demotion, not a clone or pg_rewind): the
// replicas follow the new leader as soon as it takes the key, and one that
// asks for its slot before the new primary has created it waits
// wal_retrieve_retry_interval (5 s) before trying again. A light load (-load inserts per second, persistent
// connections, direct to whichever member the pollers last saw writable)
// runs throughout; the commits the new primary acknowledged to it inside a
// window are counted.
//
// Usage (from the repository root, as root; PostgreSQL runs as postgres):
//
//	go run ./bench/syncwindow -rounds 5
//
// Results go to bench/results/syncwindow.json and syncwindow.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/bench/internal/results"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/local"
)

const (
	connectTimeout = 300 * time.Millisecond // pollers, writer, probe
	queryTimeout   = time.Second            // one poll
	eventTimeout   = 60 * time.Second       // promotion, synchronous standby, first commit
	settle         = time.Second            // after the cluster is ready, before an event
)

// Event kinds.
const (
	switchover = "switchover"
	failover   = "failover"
)

func main() {
	rounds := flag.Int("rounds", 5, "rounds (one switchover and one failover each) per mode, at least 3")
	members := flag.Int("members", 3, "cluster size")
	modes := flag.String("modes", "on,strict,quorum", "synchronous modes to measure, comma-separated")
	poll := flag.Duration("poll", 10*time.Millisecond, "pause between two polls of a member (at most 20ms)")
	load := flag.Int("load", 5, "background inserts per second to the primary")
	keep := flag.Bool("keep", false, "keep the work directory (the agents' logs) even when the run succeeds")
	out := flag.String("out", "bench/results", "directory for the results")
	flag.Parse()
	if *rounds < 3 {
		fail(errors.New("-rounds must be at least 3"))
	}
	if *members < 3 {
		fail(errors.New("-members must be at least 3: a failover needs a synchronous standby left to promote and another to replicate to"))
	}
	if *poll <= 0 || *poll > 20*time.Millisecond {
		fail(errors.New("-poll must be in (0, 20ms]"))
	}
	if *load < 1 {
		fail(errors.New("-load must be at least 1"))
	}
	var ms []string
	for _, m := range strings.Split(*modes, ",") {
		switch m = strings.TrimSpace(m); m {
		case cluster.SyncOn, cluster.SyncStrict, cluster.SyncQuorum:
			ms = append(ms, m)
		default:
			fail(fmt.Errorf("-modes: unknown mode %q (use on, strict, quorum)", m))
		}
	}
	if err := run(ms, *rounds, *members, *poll, *load, *keep, *out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "syncwindow bench:", err)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Printf("%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

// eventResult is one switchover or failover.
type eventResult struct {
	Mode  string `json:"mode"`
	Kind  string `json:"kind"`
	Round int    `json:"round"`
	From  string `json:"from"`
	To    string `json:"to"`
	// MissingSlots: replication slots for the other members that the new
	// primary did not have before the event (it creates them right after
	// PostgreSQL leaves recovery). Slots survive demotion, but not a clone
	// or pg_rewind: only a member that was primary and rejoined without
	// rewind still has them.
	MissingSlots []string `json:"slots_missing_on_new_primary_before"`
	// SlotRefusals: "replication slot ... does not exist" errors in the new
	// primary's PostgreSQL log between the event and the window's end: a
	// standby asked for its slot before it was created, and PostgreSQL
	// retries only after wal_retrieve_retry_interval.
	SlotRefusals int `json:"slot_does_not_exist_errors"`
	// PromoteSeconds: in the new primary's PostgreSQL log, "received
	// promote request" → "redo done" (-1 if not found).
	PromoteSeconds float64 `json:"pg_promote_request_to_redo_done_seconds"`
	// PromotedSeconds: event start (command start, or the kill) → the new
	// primary first seen writable.
	PromotedSeconds float64 `json:"event_to_writable_seconds"`
	// WindowSeconds: first seen writable → first seen writable with a
	// non-empty synchronous_standby_names.
	WindowSeconds float64 `json:"window_seconds"`
	// FirstSyncStandbyNames is the value that closed the window.
	FirstSyncStandbyNames string `json:"first_synchronous_standby_names"`
	// SyncStandbySeconds: first seen writable → pg_stat_replication shows a
	// standby with sync_state sync or quorum.
	SyncStandbySeconds float64 `json:"writable_to_sync_standby_seconds"`
	// CommitSeconds: first seen writable → the probe's first acknowledged
	// INSERT on the new primary.
	CommitSeconds float64 `json:"writable_to_first_commit_seconds"`
	// ProbeFailures: INSERTs the new primary refused before the first
	// acknowledged one, and the first refusal.
	ProbeFailures   int    `json:"probe_failures"`
	ProbeFirstError string `json:"probe_first_error,omitempty"`
	// ReopenedSeconds: time after the window closed, until the next event,
	// during which the new primary was again seen writable with an empty
	// synchronous_standby_names (expected 0).
	ReopenedSeconds float64 `json:"reopened_seconds"`
	// LoadAckedInWindow: background inserts the new primary acknowledged
	// inside the window (commits without a synchronous copy).
	LoadAckedInWindow int `json:"load_commits_acknowledged_in_window"`
	// Polls of the new primary inside the window, and the largest gap
	// between two of its successful polls from the event to the window's end
	// (the measurement's resolution).
	PollsInWindow  int     `json:"polls_in_window"`
	MaxPollGapSecs float64 `json:"max_poll_gap_seconds"`
}

type summary struct {
	Mode        string        `json:"mode"`
	Kind        string        `json:"kind"`
	Window      results.Stats `json:"window"`
	SyncStandby results.Stats `json:"writable_to_sync_standby"`
	Commit      results.Stats `json:"writable_to_first_commit"`
	Promoted    results.Stats `json:"event_to_writable"`
	// The window split by whether a standby was refused its slot by the
	// new primary (see eventResult.SlotRefusals).
	WindowSlotRefused results.Stats `json:"window_when_a_standby_was_refused_its_slot"`
	WindowSlotsReady  results.Stats `json:"window_when_no_standby_was_refused_its_slot"`
	LoadAcked         int           `json:"load_commits_acknowledged_in_windows"`
	Reopened          float64       `json:"reopened_seconds_total"`
}

type result struct {
	When      time.Time         `json:"when"`
	Machine   map[string]string `json:"machine"`
	Settings  map[string]string `json:"settings"`
	Summaries []summary         `json:"summaries"`
	Events    []eventResult     `json:"events"`
	Reference string            `json:"reference"`
}

func run(modes []string, rounds, members int, poll time.Duration, load int, keep bool, outDir string) (err error) {
	work, err := os.MkdirTemp("", "holdfast-bench-syncwindow")
	if err != nil {
		return err
	}
	// The work directory holds the agents' logs: kept when the run fails
	// (or with -keep), so what happened can be read.
	defer func() {
		if err == nil && !keep {
			os.RemoveAll(work)
		} else {
			logf("logs kept in %s", work)
		}
	}()
	os.Chmod(work, 0o755)
	bin := filepath.Join(work, "holdfast")
	source := results.GitSource()
	if b, err := exec.Command("go", "build", "-o", bin, "./cmd/holdfast").CombinedOutput(); err != nil {
		return fmt.Errorf("build holdfast (run from the repository root): %v\n%s", err, b)
	}

	var events []eventResult
	var cfg []byte
	start := time.Now()
	for _, mode := range modes {
		h := &harness{bin: bin, dir: filepath.Join(work, "cluster-"+mode), poll: poll, load: load}
		es, err := h.measure(mode, rounds, members)
		events = append(events, es...)
		if err != nil {
			return fmt.Errorf("mode %s: %w", mode, err)
		}
		if cfg == nil {
			cfg, _ = os.ReadFile(local.ConfigFile(h.dir, h.layout.Members[0].Name))
		}
	}
	logf("all events measured in %s", time.Since(start).Round(time.Second))

	var sums []summary
	for _, mode := range modes {
		for _, kind := range []string{failover, switchover} {
			s := summary{Mode: mode, Kind: kind}
			var win, sb, cm, pr, refused, ready []float64
			for _, e := range events {
				if e.Mode != mode || e.Kind != kind {
					continue
				}
				win, sb, cm, pr = append(win, e.WindowSeconds), append(sb, e.SyncStandbySeconds), append(cm, e.CommitSeconds), append(pr, e.PromotedSeconds)
				if e.SlotRefusals > 0 {
					refused = append(refused, e.WindowSeconds)
				} else {
					ready = append(ready, e.WindowSeconds)
				}
				s.LoadAcked += e.LoadAckedInWindow
				s.Reopened += e.ReopenedSeconds
			}
			s.Window, s.SyncStandby, s.Commit, s.Promoted = results.Summarize(win), results.Summarize(sb), results.Summarize(cm), results.Summarize(pr)
			s.WindowSlotRefused, s.WindowSlotsReady = results.Summarize(refused), results.Summarize(ready)
			sums = append(sums, s)
		}
	}
	res := result{
		When: time.Now().UTC(),
		Machine: map[string]string{"cpus": strconv.Itoa(runtime.NumCPU()), "os": runtime.GOOS + "/" + runtime.GOARCH, "postgres": results.PGVersion(), "source": source,
			"note": "shared: other test suites ran on this machine at the same time"},
		Settings: map[string]string{
			"members":                strconv.Itoa(members),
			"ttl":                    results.Setting(cfg, "ttl"),
			"loop_interval":          results.Setting(cfg, "loop_interval"),
			"store":                  "embedded etcd",
			"synchronous_node_count": "1",
			"rounds":                 strconv.Itoa(rounds),
			"clusters":               "a fresh cluster per mode (`holdfast up`, then `ctl edit-config --set synchronous_mode=M --set synchronous_node_count=1`); each round a failover, then a switchover",
			"poll":                   fmt.Sprintf("every member over one persistent connection, %s between polls, reconnect on error (%s connect timeout)", poll, connectTimeout),
			"load":                   fmt.Sprintf("%d inserts/s over persistent connections to the member last seen writable", load),
			"probe":                  "one INSERT at a time on the new primary over a connection opened before the event, from its first writable observation until one is acknowledged",
			"switchover":             "`holdfast ctl switchover` (candidate chosen by holdfast)",
			"failover":               "kill -9 of the primary's agent and postmaster together; the member restarted with `holdfast up --detach` once the measurement is complete",
		},
		Summaries: sums,
		Events:    events,
		Reference: "Patroni 3.0 leaves the window open for 5-14 s after every failover and switchover (quoted by the issue, not measured here)",
	}
	return write(outDir, res)
}

// measure starts a cluster, switches it to mode, measures the rounds and
// stops it.
func (h *harness) measure(mode string, rounds, members int) (events []eventResult, err error) {
	logf("mode %s: starting a %d-member cluster in %s", mode, members, h.dir)
	if _, err := h.holdfast("up", "--detach", "--dir", h.dir, "--members", strconv.Itoa(members), "--wait", "120s"); err != nil {
		return nil, err
	}
	defer func() {
		logf("mode %s: stopping the cluster", mode)
		h.holdfast("down", "--dir", h.dir)
	}()
	if h.layout, err = local.ReadLayout(h.dir); err != nil {
		return nil, err
	}
	if err := local.WaitHealthy(context.Background(), h.dir, h.layout, 2*time.Minute); err != nil {
		return nil, err
	}
	if err := h.createTable(); err != nil {
		return nil, err
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for _, m := range h.layout.Members {
		if m.Witness {
			continue
		}
		p := &poller{h: h, member: m}
		h.pollers = append(h.pollers, p)
		wg.Add(1)
		go func() { defer wg.Done(); p.loop(ctx, h.poll) }()
	}
	w := &writer{h: h, conns: newConns(h)}
	defer w.conns.close()
	wg.Add(1)
	go func() { defer wg.Done(); w.loop(ctx, time.Second/time.Duration(h.load)) }()

	if err := h.setMode(mode); err != nil {
		return nil, err
	}
	for r := 1; r <= rounds; r++ {
		for _, kind := range []string{failover, switchover} {
			e, err := h.event(mode, kind, r, w)
			if err != nil {
				return events, fmt.Errorf("round %d, %s: %w", r, kind, err)
			}
			events = append(events, e)
			logf("%s %s round %d: %s → %s (slots missing before: %v) writable after %.3fs; window %.3fs (%q); sync standby after %.3fs; first commit after %.3fs (%d refused: %s); %d load commits in the window; reopened %.3fs; max poll gap %.3fs",
				mode, kind, r, e.From, e.To, e.MissingSlots, e.PromotedSeconds, e.WindowSeconds, e.FirstSyncStandbyNames, e.SyncStandbySeconds, e.CommitSeconds, e.ProbeFailures, e.ProbeFirstError, e.LoadAckedInWindow, e.ReopenedSeconds, e.MaxPollGapSecs)
		}
	}
	return events, nil
}

// harness drives the local cluster.
type harness struct {
	bin, dir string
	poll     time.Duration
	load     int
	layout   local.Layout
	pollers  []*poller
}

func (h *harness) holdfast(args ...string) (string, error) {
	b, err := exec.Command(h.bin, args...).CombinedOutput()
	if err != nil {
		return string(b), fmt.Errorf("holdfast %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return string(b), nil
}

func (h *harness) connect(ctx context.Context, m local.Member) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(h.layout.SuperuserDSN(m.PGPort, 0))
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = connectTimeout
	return pgx.ConnectConfig(ctx, cfg)
}

func (h *harness) member(name string) (local.Member, bool) {
	for _, m := range h.layout.Members {
		if m.Name == name {
			return m, true
		}
	}
	return local.Member{}, false
}

func (h *harness) createTable() error {
	v, err := local.View(context.Background(), h.layout)
	if err != nil || v.Leader == nil {
		return fmt.Errorf("no primary to create the table on: %v", err)
	}
	m, _ := h.member(v.Leader.Name)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := h.connect(ctx, m)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, "CREATE TABLE IF NOT EXISTS bench_syncwindow (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), src text)")
	return err
}

// list is what `holdfast ctl list -o json` prints, from one store read.
func (h *harness) list() (ctl.ClusterList, cluster.View, error) {
	v, err := local.View(context.Background(), h.layout)
	if err != nil {
		return ctl.ClusterList{}, v, err
	}
	return ctl.List(h.layout.Cluster, v, h.layout.Superuser.Username), v, nil
}

// ready waits until the cluster is healthy (a running primary, every
// replica streaming from it), `ctl list` shows the mode and a synchronous
// standby, and the primary's synchronous_standby_names is not empty.
func (h *harness) ready(mode string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	why := "not checked yet"
	for time.Now().Before(deadline) {
		if err := local.WaitHealthy(context.Background(), h.dir, h.layout, time.Until(deadline)); err != nil {
			return err
		}
		l, v, err := h.list()
		switch {
		case err != nil:
			why = err.Error()
		case l.SynchronousMode != mode:
			why = fmt.Sprintf("synchronous_mode is %q", l.SynchronousMode)
		case !slices.ContainsFunc(l.Members, func(r ctl.MemberRow) bool { return r.Sync }):
			why = "no member marked sync"
		default:
			if ok, w := local.Healthy(h.layout, v); !ok {
				why = w
				break
			}
			if o, ok := h.poller(l.Leader).last(); !ok || !o.ok || o.inRecovery || o.ssn == "" {
				why = fmt.Sprintf("primary %s not yet seen writable with synchronous standbys", l.Leader)
				break
			}
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("cluster not ready in mode %s after %s: %s", mode, timeout, why)
}

func (h *harness) setMode(mode string) error {
	logf("synchronous_mode %s", mode)
	if _, err := h.holdfast("ctl", "--dir", h.dir, "edit-config", "--set", "synchronous_mode="+mode, "--set", "synchronous_node_count=1"); err != nil {
		return err
	}
	return h.ready(mode, 2*time.Minute)
}

func (h *harness) poller(name string) *poller {
	for _, p := range h.pollers {
		if p.member.Name == name {
			return p
		}
	}
	return &poller{}
}

// event runs one switchover or failover and measures it.
func (h *harness) event(mode, kind string, round int, w *writer) (eventResult, error) {
	e := eventResult{Mode: mode, Kind: kind, Round: round}
	if err := h.ready(mode, 2*time.Minute); err != nil {
		return e, err
	}
	time.Sleep(settle)
	l, _, err := h.list()
	if err != nil {
		return e, err
	}
	old := l.Leader
	e.From = old
	probe := newConns(h) // opened before the event: no connection set-up in the measurement
	defer probe.close()
	missing := map[string][]string{} // per possible new primary
	for _, m := range h.layout.Members {
		if m.Witness || m.Name == old {
			continue
		}
		have, err := probe.slots(m.Name)
		if err != nil {
			return e, err
		}
		for _, o := range h.layout.Members {
			if s := cluster.SlotName(o.Name); !o.Witness && o.Name != m.Name && !slices.Contains(have, s) {
				missing[m.Name] = append(missing[m.Name], s)
			}
		}
	}

	start := time.Now()
	switch kind {
	case switchover:
		if _, err := h.holdfast("ctl", "--dir", h.dir, "switchover"); err != nil {
			return e, err
		}
	case failover:
		if err := h.killHard(old); err != nil {
			return e, err
		}
	}

	// The new primary: the first other member seen writable.
	var np *poller
	var tW time.Time
	for deadline := start.Add(eventTimeout); np == nil; {
		if time.Now().After(deadline) {
			return e, fmt.Errorf("no member other than %s seen writable within %s", old, eventTimeout)
		}
		for _, p := range h.pollers {
			if p.member.Name == old {
				continue
			}
			if o, ok := p.first(start, func(o obs) bool { return o.ok && !o.inRecovery }); ok && (np == nil || o.at.Before(tW)) {
				np, tW = p, o.at
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	e.To = np.member.Name
	e.MissingSlots = missing[e.To]
	e.PromotedSeconds = tW.Sub(start).Seconds()

	// The first acknowledged commit on the new primary.
	var tC time.Time
	for deadline := tW.Add(eventTimeout); ; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			return e, fmt.Errorf("no commit acknowledged by %s within %s of it being writable", e.To, eventTimeout)
		}
		err := probe.exec(e.To, "INSERT INTO bench_syncwindow (src) VALUES ('probe')", eventTimeout)
		if err == nil {
			tC = time.Now()
			break
		}
		if e.ProbeFailures++; e.ProbeFirstError == "" {
			e.ProbeFirstError = fmt.Sprintf("after %.3fs: %v", time.Since(tW).Seconds(), err)
		}
	}
	e.CommitSeconds = tC.Sub(tW).Seconds()

	// Window end and synchronous standby.
	var tS, tR time.Time
	for deadline := tW.Add(eventTimeout); tS.IsZero() || tR.IsZero(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			return e, fmt.Errorf("%s: no synchronous standby within %s of being writable (synchronous_standby_names seen: %v, pg_stat_replication: %v)", e.To, eventTimeout, !tS.IsZero(), !tR.IsZero())
		}
		if o, ok := np.first(tW, func(o obs) bool { return o.ok && !o.inRecovery && o.ssn != "" }); ok && tS.IsZero() {
			tS, e.FirstSyncStandbyNames = o.at, o.ssn
		}
		if o, ok := np.first(tW, func(o obs) bool { return o.ok && !o.inRecovery && o.syncStandbys > 0 }); ok {
			tR = o.at
		}
	}
	e.PromoteSeconds, e.SlotRefusals = pgLog(filepath.Join(local.MemberDir(h.dir, e.To), "postgresql.log"), start, tW, tS)
	e.WindowSeconds = tS.Sub(tW).Seconds()
	e.SyncStandbySeconds = tR.Sub(tW).Seconds()
	e.LoadAckedInWindow = w.acked(e.To, tW, tS)

	if kind == failover {
		if _, err := h.holdfast("up", "--detach", "--dir", h.dir, "--wait", "120s"); err != nil {
			return e, err
		}
	}
	if err := h.ready(mode, 2*time.Minute); err != nil {
		return e, err
	}
	time.Sleep(settle)
	e.ReopenedSeconds = np.reopened(tS, time.Now()).Seconds()
	e.PollsInWindow, e.MaxPollGapSecs = np.resolution(start, tW, tS)
	return e, nil
}

// pgLog reads a member's PostgreSQL log: the time from "received promote
// request" to "redo done" in [start, writable], and the "replication slot
// ... does not exist" errors in [start, end].
func pgLog(path string, start, writable, end time.Time) (float64, int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return -1, 0
	}
	promote, refusals := -1.0, 0
	var requested time.Time
	for _, line := range strings.Split(string(b), "\n") {
		if len(line) < 27 {
			continue
		}
		t, err := time.Parse("2006-01-02 15:04:05.000 MST", line[:27])
		if err != nil || t.Before(start.Add(-time.Second)) || t.After(end.Add(time.Second)) {
			continue
		}
		switch {
		case strings.Contains(line, "received promote request") && !t.After(writable):
			requested = t
		case strings.Contains(line, "redo done at") && !requested.IsZero() && promote < 0:
			promote = t.Sub(requested).Seconds()
		case strings.Contains(line, "ERROR:  replication slot") && strings.Contains(line, "does not exist") && !strings.Contains(line, "FATAL") && !t.After(end):
			refusals++
		}
	}
	return promote, refusals
}

// killHard kills a member's agent and postmaster together.
func (h *harness) killHard(member string) error {
	_, _, err := local.KillHard(h.dir, member)
	return err
}

// obs is one poll of one member.
type obs struct {
	at           time.Time // when the answer arrived
	ok           bool      // false: no connection or the query failed
	inRecovery   bool
	ssn          string // synchronous_standby_names
	syncStandbys int    // pg_stat_replication rows with sync_state sync or quorum
}

const pollQuery = `SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names'),
       (SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum'))::int`

// poller polls one member and keeps every observation.
type poller struct {
	h      *harness
	member local.Member

	mu  sync.Mutex
	obs []obs
}

func (p *poller) loop(ctx context.Context, every time.Duration) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		o := obs{}
		if conn == nil {
			c, err := p.h.connect(ctx, p.member)
			if err == nil {
				conn = c
			}
		}
		if conn != nil {
			qctx, cancel := context.WithTimeout(ctx, queryTimeout)
			err := conn.QueryRow(qctx, pollQuery).Scan(&o.inRecovery, &o.ssn, &o.syncStandbys)
			cancel()
			if err != nil {
				conn.Close(context.Background())
				conn = nil
			} else {
				o.ok = true
			}
		}
		o.at = time.Now()
		p.mu.Lock()
		p.obs = append(p.obs, o)
		p.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(every):
		}
	}
}

// last is the latest observation.
func (p *poller) last() (obs, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.obs) == 0 {
		return obs{}, false
	}
	return p.obs[len(p.obs)-1], true
}

// first is the first observation at or after from that satisfies f.
func (p *poller) first(from time.Time, f func(obs) bool) (obs, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i, _ := slices.BinarySearchFunc(p.obs, from, func(o obs, t time.Time) int { return o.at.Compare(t) })
	for ; i < len(p.obs); i++ {
		if f(p.obs[i]) {
			return p.obs[i], true
		}
	}
	return obs{}, false
}

// reopened sums the stretches in [from, to] during which the member was
// seen writable with an empty synchronous_standby_names, each from its
// first such observation to the next observation that ends it.
func (p *poller) reopened(from, to time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var total time.Duration
	var open time.Time
	for _, o := range p.obs {
		if o.at.Before(from) || o.at.After(to) {
			continue
		}
		bad := o.ok && !o.inRecovery && o.ssn == ""
		switch {
		case bad && open.IsZero():
			open = o.at
		case !bad && !open.IsZero():
			total += o.at.Sub(open)
			open = time.Time{}
		}
	}
	if !open.IsZero() {
		total += to.Sub(open)
	}
	return total
}

// resolution counts the successful polls in [w, s] and the longest gap
// between two successful polls in [start, s].
func (p *poller) resolution(start, w, s time.Time) (int, float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	var prev time.Time
	var gap time.Duration
	for _, o := range p.obs {
		if !o.ok || o.at.Before(start) || o.at.After(s) {
			continue
		}
		if !o.at.Before(w) {
			n++
		}
		if !prev.IsZero() {
			gap = max(gap, o.at.Sub(prev))
		}
		prev = o.at
	}
	return n, gap.Seconds()
}

// conns keeps one connection per member for one goroutine, reopened after
// an error.
type conns struct {
	h *harness
	m map[string]*pgx.Conn
}

func newConns(h *harness) *conns { return &conns{h: h, m: map[string]*pgx.Conn{}} }

func (c *conns) get(name string) (*pgx.Conn, error) {
	if conn, ok := c.m[name]; ok {
		return conn, nil
	}
	m, ok := c.h.member(name)
	if !ok {
		return nil, fmt.Errorf("no member %s", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	conn, err := c.h.connect(ctx, m)
	if err != nil {
		return nil, err
	}
	c.m[name] = conn
	return conn, nil
}

func (c *conns) exec(name, sql string, timeout time.Duration) error {
	conn, err := c.get(name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if _, err = conn.Exec(ctx, sql); err != nil && conn.IsClosed() {
		delete(c.m, name)
	}
	return err
}

// slots lists a member's replication slots.
func (c *conns) slots(name string) ([]string, error) {
	conn, err := c.get(name)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []string
	err = conn.QueryRow(ctx, "SELECT coalesce(array_agg(slot_name::text), '{}') FROM pg_replication_slots").Scan(&out)
	return out, err
}

func (c *conns) close() {
	for n, conn := range c.m {
		conn.Close(context.Background())
		delete(c.m, n)
	}
}

// writer is the light background load: one INSERT at a time, paced, to the
// member the pollers last saw writable.
type writer struct {
	h     *harness
	conns *conns

	mu   sync.Mutex
	acks []ack
}

type ack struct {
	at     time.Time
	member string
}

func (w *writer) loop(ctx context.Context, every time.Duration) {
	for ctx.Err() == nil {
		next := time.Now().Add(every)
		if target := w.target(); target != "" {
			if err := w.conns.exec(target, "INSERT INTO bench_syncwindow (src) VALUES ('load')", 10*time.Second); err == nil {
				w.mu.Lock()
				w.acks = append(w.acks, ack{at: time.Now(), member: target})
				w.mu.Unlock()
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(next)):
		}
	}
}

// target is the member whose latest poll shows it writable, the most
// recently seen first.
func (w *writer) target() string {
	best, at := "", time.Time{}
	for _, p := range w.h.pollers {
		if o, ok := p.last(); ok && o.ok && !o.inRecovery && o.at.After(at) {
			best, at = p.member.Name, o.at
		}
	}
	return best
}

// acked counts the load's commits member acknowledged in [from, to].
func (w *writer) acked(member string, from, to time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, a := range w.acks {
		if a.member == member && !a.at.Before(from) && !a.at.After(to) {
			n++
		}
	}
	return n
}

func write(dir string, r result) error {
	if err := results.WriteJSON(dir, "syncwindow.json", r); err != nil {
		return err
	}
	stat := func(s results.Stats) string {
		if len(s.RunsSeconds) == 0 {
			return "—"
		}
		return fmt.Sprintf("%.3fs / %.3fs (%d)", s.Median, s.Max, len(s.RunsSeconds))
	}
	var table, split, runs strings.Builder
	for _, s := range r.Summaries {
		fmt.Fprintf(&table, "| %s | %s | %.3fs | %.3fs | %.3fs | %.3fs | %.3fs | %.3fs | %.3fs | %.3fs | %d | %d |\n",
			s.Mode, s.Kind, s.Window.Median, s.Window.Max, s.SyncStandby.Median, s.SyncStandby.Max,
			s.Commit.Median, s.Commit.Max, s.Promoted.Median, s.Promoted.Max, s.LoadAcked, len(s.Window.RunsSeconds))
		fmt.Fprintf(&split, "| %s | %s | %s | %s |\n", s.Mode, s.Kind, stat(s.WindowSlotsReady), stat(s.WindowSlotRefused))
	}
	for _, e := range r.Events {
		slots := "all present"
		if len(e.MissingSlots) > 0 {
			slots = "missing " + strings.Join(e.MissingSlots, ", ")
		}
		promote := "?"
		if e.PromoteSeconds >= 0 {
			promote = fmt.Sprintf("%.3fs", e.PromoteSeconds)
		}
		fmt.Fprintf(&runs, "| %s | %s | %d | %s → %s | %.3fs | %s | %s | %d | %.3fs | %.3fs | %.3fs | `%s` | %d |\n",
			e.Mode, e.Kind, e.Round, e.From, e.To, e.PromotedSeconds, promote, slots, e.SlotRefusals,
			e.WindowSeconds, e.SyncStandbySeconds, e.CommitSeconds, e.FirstSyncStandbyNames, e.LoadAckedInWindow)
	}
	md := fmt.Sprintf(`# Synchronous window benchmark

Measured %s on %s CPUs (%s), PostgreSQL %s, source %s, %s members, embedded etcd,
ttl %s, loop_interval %s (the defaults), synchronous_node_count 1.
Command: `+"`go run ./bench/syncwindow -rounds %s`"+`.

**Window**: from the first observation of the new primary being writable
(pg_is_in_recovery() = false) to the first observation of a non-empty
synchronous_standby_names on it — the time during which it could
acknowledge a commit that no standby holds. Also measured from the same
first writable observation: until its pg_stat_replication shows a standby
with sync_state sync or quorum, and until it acknowledges an INSERT (in
strict mode this is the write unavailability: commits wait for a standby).

Clusters: %s.
Polling: %s. Load: %s. Probe: %s.
Failover: %s. Switchover: %s.

| mode | event | window median | window max | → sync standby median | max | → first commit median | max | event → writable median | max | load commits acknowledged inside windows | runs |
|---|---|---|---|---|---|---|---|---|---|---|---|
%s
Reference: %s.

**Why some windows are long.** A replica follows the new leader (reload of
primary_conninfo and primary_slot_name) as soon as the leader key changes
hands, before the new primary has left recovery and created the replication
slots it keeps for the others. A walreceiver that asks for its slot in
that gap is refused ("replication slot ... does not exist" in the new
primary's log) and PostgreSQL tries again only after
wal_retrieve_retry_interval (5 s by default). A new primary lacks the slots
when it has never been primary, or was cloned or rewound since (pg_rewind
and pg_basebackup do not copy slots). In a switchover the old primary
restarts as a standby and is usually still starting up while the new
primary promotes, so it asks for its slot after it exists, becomes the
synchronous standby first and closes the window. Window median / max
(events) by whether the new primary refused a standby its slot:

| mode | event | no standby refused | a standby refused its slot |
|---|---|---|---|
%s
**Why some promotions are slow** (event → writable well above the TTL, or
above ~3 s for a switchover): PostgreSQL 15 notices a promote request in
its streaming state and then sleeps out wal_retrieve_retry_interval before
it finishes recovery; the "promote → redo done" column is that delay, read
from the new primary's log. It delays the promotion, not the window.

| mode | event | round | primary | event → writable | promote → redo done | new primary's slots before | slot refusals | window | → sync standby | → first commit | synchronous_standby_names that closed the window | load commits in window |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
%s`, r.When.Format(time.RFC3339), r.Machine["cpus"], r.Machine["note"], r.Machine["postgres"], r.Machine["source"], r.Settings["members"],
		r.Settings["ttl"], r.Settings["loop_interval"], r.Settings["rounds"],
		r.Settings["clusters"], r.Settings["poll"], r.Settings["load"], r.Settings["probe"], r.Settings["failover"], r.Settings["switchover"],
		table.String(), r.Reference, split.String(), runs.String())
	fmt.Print(md)
	return os.WriteFile(filepath.Join(dir, "syncwindow.md"), []byte(md), 0o644)
}
