// Command switchover measures how long a holdfast cluster refuses writes
// during a planned switchover (`holdfast ctl switchover`): the longest
// interval between two acknowledged writes of a client that writes all the
// time, around each switchover.
//
// The client opens a new connection for every write, one write about every
// 10 ms, to whichever member is primary: the member that acknowledged the
// last write first, then the others (a replica refuses the INSERT as
// read-only; a stopping primary refuses the connection). It never asks the
// store or the API who the primary is, so the pause it sees is what an
// application with a list of hosts sees.
//
// As a baseline measured in the same run on the same machine, the same
// client's longest interval between acknowledged writes is measured over an
// equal window with no switchover, just before each switchover: what the
// machine alone (connection set-up, scheduling, fsync) costs.
//
// The switchovers go back and forth between two members.
//
// Usage (from the repository root):
//
//	go run ./bench/switchover -runs 7
//
// Results go to bench/results/switchover.json and switchover.md.
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
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/bench/internal/results"
	"github.com/holdfast/holdfast/internal/local"
)

const (
	writeEvery     = 10 * time.Millisecond  // pause between two write attempts
	connectTimeout = 500 * time.Millisecond // per connection attempt
	writeTimeout   = 2 * time.Second        // per INSERT, connection included
	preSwitchover  = time.Second            // window start before the command
	afterCommand   = 3 * time.Second        // window end at least this long after the command returned
)

type runDetail struct {
	From             string  `json:"from"`
	To               string  `json:"to"`
	CommandSeconds   float64 `json:"ctl_switchover_seconds"`
	PauseSeconds     float64 `json:"longest_write_gap_seconds"`
	BaselineSeconds  float64 `json:"baseline_longest_write_gap_seconds"`
	FirstWriteOnNew  float64 `json:"command_start_to_first_write_on_new_primary_seconds"`
	FailedAttempts   int     `json:"failed_write_attempts_in_window"`
	AckedInWindow    int     `json:"acknowledged_writes_in_window"`
	WindowSeconds    float64 `json:"window_seconds"`
	CommandOutput    string  `json:"ctl_output"`
	WritesOnOldAfter int     `json:"writes_acknowledged_by_old_primary_after_command"`
}

type result struct {
	When       time.Time         `json:"when"`
	Machine    map[string]string `json:"machine"`
	Settings   map[string]string `json:"settings"`
	Pause      results.Stats     `json:"switchover_longest_write_gap"`
	Baseline   results.Stats     `json:"baseline_longest_write_gap_without_switchover"`
	Command    results.Stats     `json:"ctl_switchover_duration"`
	Runs       []runDetail       `json:"runs"`
	TotalWrite int               `json:"writes_acknowledged_total"`
	TotalFail  int               `json:"write_attempts_failed_total"`
	Target     string            `json:"target"`
	TargetMet  bool              `json:"target_met"`
}

func main() {
	runs := flag.Int("runs", 7, "switchovers to measure (at least 5)")
	members := flag.Int("members", 3, "cluster size")
	window := flag.Duration("window", 6*time.Second, "length of each measurement window (baseline and switchover)")
	out := flag.String("out", "bench/results", "directory for the results")
	flag.Parse()
	if *runs < 5 {
		fail(errors.New("-runs must be at least 5 for a median and spread to mean something"))
	}
	if *members < 2 {
		fail(errors.New("-members must be at least 2 for a switchover"))
	}
	if err := run(*runs, *members, *window, *out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "switchover bench:", err)
	os.Exit(1)
}

func run(runs, members int, window time.Duration, outDir string) error {
	work, err := os.MkdirTemp("", "holdfast-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	os.Chmod(work, 0o755)
	bin := filepath.Join(work, "holdfast")
	source := results.GitSource()
	if b, err := exec.Command("go", "build", "-o", bin, "./cmd/holdfast").CombinedOutput(); err != nil {
		return fmt.Errorf("build holdfast (run from the repository root): %v\n%s", err, b)
	}
	dir := filepath.Join(work, "cluster")
	h := &harness{bin: bin, dir: dir}
	if _, err := h.holdfast("up", "--detach", "--dir", dir, "--members", strconv.Itoa(members), "--wait", "120s"); err != nil {
		return err
	}
	defer h.holdfast("down", "--dir", dir)
	l, err := local.ReadLayout(dir)
	if err != nil {
		return err
	}
	h.layout = l
	first := h.primary()
	if first == "" {
		return errors.New("no primary after up")
	}
	if err := h.exec(context.Background(), first, "CREATE TABLE IF NOT EXISTS bench_switchover (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())"); err != nil {
		return err
	}
	// The two members the switchovers alternate between.
	pair := [2]string{first, ""}
	for _, m := range l.Members {
		if !m.Witness && m.Name != first {
			pair[1] = m.Name
			break
		}
	}

	w := &writer{h: h, last: first}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { w.loop(stop); close(done) }()
	defer func() { close(stop); <-done }()

	var pauses, baselines, commands []float64
	var details []runDetail
	for i := 0; i < runs; i++ {
		if err := local.WaitHealthy(context.Background(), dir, l, 2*time.Minute); err != nil {
			return fmt.Errorf("run %d: %w", i+1, err)
		}
		time.Sleep(2 * time.Second) // let the rejoined member catch up and the statuses settle

		from := h.primary()
		to := pair[0]
		if from == pair[0] {
			to = pair[1]
		}

		// Baseline: the same client, an equal window, no switchover.
		bStart := time.Now()
		time.Sleep(window)
		baseline := w.longestGap(bStart, bStart.Add(window))

		wStart := time.Now()
		time.Sleep(preSwitchover)
		cmdStart := time.Now()
		out, err := h.holdfast("ctl", "switchover", "--dir", dir, "--to", to)
		cmdEnd := time.Now()
		if err != nil {
			return fmt.Errorf("run %d: %w", i+1, err)
		}
		wEnd := wStart.Add(window)
		if least := cmdEnd.Add(afterCommand); wEnd.Before(least) {
			wEnd = least
		}
		time.Sleep(time.Until(wEnd))
		if now := h.primary(); now != to {
			return fmt.Errorf("run %d: after ctl switchover --to %s the primary is %q", i+1, to, now)
		}
		pause := w.longestGap(wStart, wEnd)
		acked, failed, firstOnNew, oldAfter := w.window(wStart, wEnd, cmdStart, cmdEnd, from, to)
		d := runDetail{
			From: from, To: to,
			CommandSeconds:   cmdEnd.Sub(cmdStart).Seconds(),
			PauseSeconds:     pause.Seconds(),
			BaselineSeconds:  baseline.Seconds(),
			FirstWriteOnNew:  firstOnNew.Seconds(),
			FailedAttempts:   failed,
			AckedInWindow:    acked,
			WindowSeconds:    wEnd.Sub(wStart).Seconds(),
			CommandOutput:    strings.TrimSpace(out),
			WritesOnOldAfter: oldAfter,
		}
		details = append(details, d)
		pauses = append(pauses, d.PauseSeconds)
		baselines = append(baselines, d.BaselineSeconds)
		commands = append(commands, d.CommandSeconds)
		fmt.Printf("run %d: %s -> %s: longest write gap %.3fs (baseline %.3fs), ctl switchover %.3fs, first write on %s %.3fs after the command started, %d failed attempts\n",
			i+1, from, to, d.PauseSeconds, d.BaselineSeconds, d.CommandSeconds, to, d.FirstWriteOnNew, failed)
	}
	totalOK, totalFail := w.totals()
	cfg, _ := os.ReadFile(local.ConfigFile(dir, l.Members[0].Name))
	res := result{
		When:    time.Now().UTC(),
		Machine: map[string]string{"cpus": strconv.Itoa(runtime.NumCPU()), "os": runtime.GOOS + "/" + runtime.GOARCH, "postgres": results.PGVersion(), "source": source},
		Settings: map[string]string{
			"members":                 strconv.Itoa(members),
			"ttl":                     results.Setting(cfg, "ttl"),
			"loop_interval":           results.Setting(cfg, "loop_interval"),
			"maximum_lag_on_failover": results.Setting(cfg, "maximum_lag_on_failover"),
			"store":                   "embedded etcd",
			"window":                  window.String(),
			"client": fmt.Sprintf("one writer; a new connection per write; a write attempt every ~%s; the member that acknowledged the last write first, then the others; %s connect timeout, %s per INSERT",
				writeEvery, connectTimeout, writeTimeout),
			"switchovers": fmt.Sprintf("`holdfast ctl switchover --to M`, back and forth between %s and %s", pair[0], pair[1]),
		},
		Pause:      results.Summarize(pauses),
		Baseline:   results.Summarize(baselines),
		Command:    results.Summarize(commands),
		Runs:       details,
		TotalWrite: totalOK,
		TotalFail:  totalFail,
		Target:     "median longest write gap around a planned switchover < 1s",
	}
	res.TargetMet = res.Pause.Median < 1
	return write(outDir, res)
}

// writer is the benchmark's client.
type writer struct {
	h *harness

	mu       sync.Mutex
	last     string
	acks     []ack
	failures []time.Time
}

type ack struct {
	at     time.Time
	member string
}

func (w *writer) loop(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		w.attempt()
		time.Sleep(writeEvery)
	}
}

// attempt tries the last member that acknowledged a write, then the others,
// each over a new connection, until one acknowledges the INSERT.
func (w *writer) attempt() {
	w.mu.Lock()
	order := []string{w.last}
	w.mu.Unlock()
	for _, m := range w.h.layout.Members {
		if !m.Witness && m.Name != order[0] {
			order = append(order, m.Name)
		}
	}
	for _, m := range order {
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		err := w.h.exec(ctx, m, "INSERT INTO bench_switchover DEFAULT VALUES")
		cancel()
		if err == nil {
			now := time.Now()
			w.mu.Lock()
			w.last = m
			w.acks = append(w.acks, ack{at: now, member: m})
			w.mu.Unlock()
			return
		}
	}
	w.mu.Lock()
	w.failures = append(w.failures, time.Now())
	w.mu.Unlock()
}

// longestGap is the longest interval within [from, to] without an
// acknowledged write, counting from `from` to the first acknowledgement and
// from the last one to `to`.
func (w *writer) longestGap(from, to time.Time) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	prev, gap := from, time.Duration(0)
	for _, a := range w.acks { // appended in order by the one writer
		if a.at.Before(from) || a.at.After(to) {
			continue
		}
		gap = max(gap, a.at.Sub(prev))
		prev = a.at
	}
	return max(gap, to.Sub(prev))
}

// window counts what happened in [from, to]: acknowledged writes, failed
// attempts, the time from the command's start to the first write the new
// primary acknowledged, and writes the old primary acknowledged after the
// command returned (there must be none).
func (w *writer) window(from, to, cmdStart, cmdEnd time.Time, oldP, newP string) (acked, failed int, firstOnNew time.Duration, oldAfter int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	firstOnNew = -1
	for _, a := range w.acks {
		if a.at.Before(from) || a.at.After(to) {
			continue
		}
		acked++
		if a.member == newP && a.at.After(cmdStart) && firstOnNew < 0 {
			firstOnNew = a.at.Sub(cmdStart)
		}
		if a.member == oldP && a.at.After(cmdEnd) {
			oldAfter++
		}
	}
	for _, f := range w.failures {
		if !f.Before(from) && !f.After(to) {
			failed++
		}
	}
	return acked, failed, firstOnNew, oldAfter
}

func (w *writer) totals() (int, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acks), len(w.failures)
}

type harness struct {
	bin, dir string
	layout   local.Layout
}

func (h *harness) holdfast(args ...string) (string, error) {
	cmd := exec.Command(h.bin, args...)
	b, err := cmd.CombinedOutput()
	if err != nil {
		return string(b), fmt.Errorf("holdfast %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return string(b), nil
}

func (h *harness) primary() string {
	v, err := local.View(context.Background(), h.layout)
	if err != nil || v.Leader == nil {
		return ""
	}
	return v.Leader.Name
}

func (h *harness) exec(ctx context.Context, member, sql string) error {
	for _, m := range h.layout.Members {
		if m.Name != member {
			continue
		}
		cfg, err := pgx.ParseConfig(h.layout.SuperuserDSN(m.PGPort, 0))
		if err != nil {
			return err
		}
		cfg.ConnectTimeout = connectTimeout
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, sql)
		return err
	}
	return fmt.Errorf("no member %s", member)
}

func write(dir string, r result) error {
	if err := results.WriteJSON(dir, "switchover.json", r); err != nil {
		return err
	}
	var rows strings.Builder
	for i, d := range r.Runs {
		fmt.Fprintf(&rows, "| %d | %s → %s | %.3fs | %.3fs | %.3fs | %.3fs | %d |\n",
			i+1, d.From, d.To, d.PauseSeconds, d.BaselineSeconds, d.CommandSeconds, d.FirstWriteOnNew, d.FailedAttempts)
	}
	md := fmt.Sprintf(`# Switchover benchmark

Measured %s on %s CPUs, PostgreSQL %s, source %s, %s members, embedded etcd,
ttl %s, loop_interval %s, maximum_lag_on_failover %s (the defaults).
Command: `+"`go run ./bench/switchover -runs %d`"+`.

Client: %s.
Switchovers: %s. Each window is %s (1s before the command, at least 3s after it returns);
the baseline is the same client over an equal window just before each switchover.

| measurement | median | min | max | stdev | runs |
|---|---|---|---|---|---|
| longest interval between acknowledged writes around `+"`ctl switchover`"+` (writes refused) | %.3fs | %.3fs | %.3fs | %.3fs | %s |
| baseline: longest interval between acknowledged writes, no switchover | %.3fs | %.3fs | %.3fs | %.3fs | %s |
| `+"`ctl switchover`"+` command duration | %.3fs | %.3fs | %.3fs | %.3fs | %s |

| run | switchover | longest write gap | baseline gap | command | command start → first write on new primary | failed attempts |
|---|---|---|---|---|---|---|
%s
%d writes acknowledged in total, %d attempts failed (every member refused).

Target: %s — %s.
`, r.When.Format(time.RFC3339), r.Machine["cpus"], r.Machine["postgres"], r.Machine["source"], r.Settings["members"], r.Settings["ttl"], r.Settings["loop_interval"], r.Settings["maximum_lag_on_failover"], len(r.Runs),
		r.Settings["client"], r.Settings["switchovers"], r.Settings["window"],
		r.Pause.Median, r.Pause.Min, r.Pause.Max, r.Pause.Stdev, results.Floats(r.Pause.RunsSeconds, 3),
		r.Baseline.Median, r.Baseline.Min, r.Baseline.Max, r.Baseline.Stdev, results.Floats(r.Baseline.RunsSeconds, 3),
		r.Command.Median, r.Command.Min, r.Command.Max, r.Command.Stdev, results.Floats(r.Command.RunsSeconds, 3),
		rows.String(), r.TotalWrite, r.TotalFail,
		r.Target, map[bool]string{true: "met", false: "NOT met"}[r.TargetMet])
	fmt.Print(md)
	return os.WriteFile(filepath.Join(dir, "switchover.md"), []byte(md), 0o644)
}
