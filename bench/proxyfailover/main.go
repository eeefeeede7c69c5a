// Command proxyfailover measures a failover (kill -9 of the primary's agent
// and postmaster together) as clients see it through the holdfast proxy
// and, as the baseline measured in the same failovers, connecting to the
// members directly.
//
// Two clients run side by side during every failover, each opening a new
// connection for every write (an INSERT), one attempt about every 20 ms:
//
//   - through the proxy: the read-write port of the proxy `holdfast up`
//     starts (default flags: --hold-timeout 30s), with a 20 s connect
//     timeout so a held connection is not given up;
//   - directly: every member in one connection string with
//     target_session_attrs=read-write, as a libpq or pgx client without a
//     proxy finds the primary (2 s connect timeout per host).
//
// For each it records the time from the kill to the first write
// acknowledged on a connection opened after the kill, and how many attempts
// opened after the kill failed.
//
// Usage (from the repository root):
//
//	go run ./bench/proxyfailover -runs 7
//
// Results go to bench/results/proxyfailover.json and proxyfailover.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/bench/internal/localfailover"
	"github.com/holdfast/holdfast/bench/internal/results"
	"github.com/holdfast/holdfast/internal/local"
)

// Client timing.
const (
	attemptEvery       = 20 * time.Millisecond // pause between two write attempts
	proxyTimeout       = 20 * time.Second      // per attempt through the proxy, connection included
	directTimeout      = 2 * time.Second       // connect_timeout per host, directly
	directWriteTimeout = 10 * time.Second      // per attempt directly, connection included
	afterFirstWrite    = time.Second           // keep both clients going this long after both wrote
	giveUp             = 2 * time.Minute       // a failover that has not ended by then fails the run
	readyWithin        = time.Minute           // both clients must write before the kill within this
)

// Targets.
const (
	targetExtra     = 0.3 // seconds the proxy's median may exceed direct's
	targetErrorRate = 0.1 // the proxy's errors as a fraction of direct's, at most
)

type runDetail struct {
	From          string         `json:"from"`
	To            string         `json:"to"`
	ProxySeconds  float64        `json:"proxy_kill_to_first_write_seconds"`
	DirectSeconds float64        `json:"direct_kill_to_first_write_seconds"`
	ProxyErrors   int            `json:"proxy_failed_attempts"`
	DirectErrors  int            `json:"direct_failed_attempts"`
	ProxyKinds    map[string]int `json:"proxy_errors,omitempty"`
	DirectKinds   map[string]int `json:"direct_errors,omitempty"`
}

type result struct {
	When         time.Time         `json:"when"`
	Machine      map[string]string `json:"machine"`
	Source       string            `json:"source"`
	Settings     map[string]string `json:"settings"`
	Proxy        results.Stats     `json:"proxy_kill9_to_first_write"`
	Direct       results.Stats     `json:"baseline_direct_kill9_to_first_write"`
	Extra        results.Stats     `json:"proxy_minus_direct"`
	ProxyErrors  int               `json:"proxy_failed_attempts_total"`
	DirectErrors int               `json:"direct_failed_attempts_total"`
	Runs         []runDetail       `json:"runs"`
	Target       string            `json:"target"`
	TargetMet    bool              `json:"target_met"`
}

func main() {
	runs := flag.Int("runs", 7, "failovers to measure (at least 5)")
	members := flag.Int("members", 3, "cluster size")
	out := flag.String("out", "bench/results", "directory for the results")
	flag.Parse()
	if *runs < 5 {
		fail(errors.New("-runs must be at least 5 for a median and spread to mean something"))
	}
	if err := run(*runs, *members, *out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "proxyfailover bench:", err)
	os.Exit(1)
}

func run(runs, members int, outDir string) error {
	loadStart, source := loadAverage(), results.GitSource() // the code Start builds
	c, err := localfailover.Start(members)
	if err != nil {
		return err
	}
	defer c.Close()
	l := c.Layout()
	if l.ProxyRWPort == 0 {
		return errors.New("the local cluster has no proxy")
	}
	proxyDSN := l.SuperuserDSN(l.ProxyRWPort, proxyTimeout)
	directDSN := multiHostDSN(l)
	var details []runDetail
	for i := range runs {
		d, err := measure(c, l, proxyDSN, directDSN)
		if err != nil {
			return fmt.Errorf("run %d: %w", i+1, err)
		}
		details = append(details, d)
		fmt.Printf("run %d: %s -> %s: through the proxy %.2fs (%d failed attempts), directly %.2fs (%d failed attempts)\n",
			i+1, d.From, d.To, d.ProxySeconds, d.ProxyErrors, d.DirectSeconds, d.DirectErrors)
	}
	var px, dx, extra []float64
	res := result{
		When:    time.Now().UTC(),
		Machine: map[string]string{"cpus": strconv.Itoa(runtime.NumCPU()), "os": runtime.GOOS + "/" + runtime.GOARCH, "postgres": results.PGVersion(), "load_average_1m_start": loadStart, "load_average_1m_end": loadAverage()},
		Source:  source,
		Runs:    details,
	}
	res.Settings = c.Settings()
	res.Settings["client"] = fmt.Sprintf("new connection per write, an attempt every %s; through the proxy: its read-write port, %s per attempt; directly: every member, target_session_attrs=read-write, connect_timeout %s per host",
		attemptEvery, proxyTimeout, directTimeout)
	res.Settings["proxy"] = "the proxy holdfast up starts (default flags: --hold-timeout 30s)"
	for _, d := range details {
		px, dx, extra = append(px, d.ProxySeconds), append(dx, d.DirectSeconds), append(extra, d.ProxySeconds-d.DirectSeconds)
		res.ProxyErrors += d.ProxyErrors
		res.DirectErrors += d.DirectErrors
	}
	res.Proxy, res.Direct, res.Extra = results.Summarize(px), results.Summarize(dx), results.Summarize(extra)
	res.Target = fmt.Sprintf("median kill -9 to first write through the proxy <= direct's median + %.1fs, and failed attempts through the proxy <= %.0f%% of direct's", targetExtra, 100*targetErrorRate)
	res.TargetMet = res.Proxy.Median <= res.Direct.Median+targetExtra && float64(res.ProxyErrors) <= targetErrorRate*float64(res.DirectErrors)
	return write(outDir, runs, res)
}

// multiHostDSN names every database member, accepting only a writable one.
func multiHostDSN(l local.Layout) string {
	var hosts, ports []string
	for _, m := range l.Members {
		if !m.Witness {
			hosts, ports = append(hosts, "127.0.0.1"), append(ports, strconv.Itoa(m.PGPort))
		}
	}
	return fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=postgres sslmode=disable connect_timeout=%d target_session_attrs=read-write",
		strings.Join(hosts, ","), strings.Join(ports, ","), l.Superuser.Username, l.Superuser.Password, int(directTimeout/time.Second))
}

// measure runs one failover with both clients writing.
func measure(c *localfailover.Cluster, l local.Layout, proxyDSN, directDSN string) (runDetail, error) {
	var d runDetail
	var px, dx *writer
	defer func() {
		for _, w := range []*writer{px, dx} {
			if w != nil {
				w.halt()
			}
		}
	}()
	err := c.Failover(func(string) error {
		px, dx = startWriter(proxyDSN, proxyTimeout), startWriter(directDSN, directWriteTimeout)
		deadline := time.Now().Add(readyWithin)
		for !px.wrote(time.Time{}) || !dx.wrote(time.Time{}) {
			if time.Now().After(deadline) {
				return fmt.Errorf("no write through the proxy (%v) or directly (%v) within %s before the kill", px.lastErr(), dx.lastErr(), readyWithin)
			}
			time.Sleep(50 * time.Millisecond)
		}
		return nil
	}, func(killedAt time.Time, old string) error {
		d.From = old
		deadline := killedAt.Add(giveUp)
		for !px.wrote(killedAt) || !dx.wrote(killedAt) {
			if time.Now().After(deadline) {
				return fmt.Errorf("no write after the kill within %s through the proxy (%v) or directly (%v)", giveUp, px.lastErr(), dx.lastErr())
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(afterFirstWrite)
		pa, da := px.halt(), dx.halt()
		var first time.Time
		d.ProxySeconds, d.ProxyErrors, d.ProxyKinds, first = summarize(pa, killedAt)
		d.DirectSeconds, d.DirectErrors, d.DirectKinds, _ = summarize(da, killedAt)
		for _, a := range pa {
			if a.end.Equal(first) {
				d.To = memberByPort(l, a.port)
			}
		}
		return nil
	})
	return d, err
}

// summarize returns, over the attempts started after killedAt, the time
// from killedAt to the end of the first successful one, the failures by
// kind, and that first success's end.
func summarize(as []attempt, killedAt time.Time) (float64, int, map[string]int, time.Time) {
	var first time.Time
	failed, kinds := 0, map[string]int{}
	for _, a := range as {
		switch {
		case !a.start.After(killedAt):
		case a.err != nil:
			failed++
			kinds[shortErr(a.err)]++
		case first.IsZero():
			first = a.end
		}
	}
	return first.Sub(killedAt).Seconds(), failed, kinds, first
}

func memberByPort(l local.Layout, port int) string {
	for _, m := range l.Members {
		if m.PGPort == port {
			return m.Name
		}
	}
	return "port " + strconv.Itoa(port)
}

// attempt is one write: a new connection and one INSERT reporting the
// server's port.
type attempt struct {
	start, end time.Time
	port       int
	err        error
}

// writer opens a new connection for every write, one attempt every
// attemptEvery, until halted.
type writer struct {
	dsn     string
	timeout time.Duration

	mu       sync.Mutex
	attempts []attempt
	stop     chan struct{}
	done     chan struct{}
	once     sync.Once
}

func startWriter(dsn string, timeout time.Duration) *writer {
	w := &writer{dsn: dsn, timeout: timeout, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			a := w.write()
			w.mu.Lock()
			w.attempts = append(w.attempts, a)
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-time.After(attemptEvery):
			}
		}
	}()
	return w
}

func (w *writer) write() attempt {
	a := attempt{start: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), w.timeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, w.dsn)
	if err == nil {
		err = conn.QueryRow(ctx, "INSERT INTO bench DEFAULT VALUES RETURNING inet_server_port()").Scan(&a.port)
		conn.Close(context.Background())
	}
	a.err, a.end = err, time.Now()
	return a
}

// wrote reports whether an attempt started after since succeeded.
func (w *writer) wrote(since time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, a := range w.attempts {
		if a.err == nil && a.start.After(since) {
			return true
		}
	}
	return false
}

func (w *writer) lastErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := len(w.attempts) - 1; i >= 0; i-- {
		if w.attempts[i].err != nil {
			return w.attempts[i].err
		}
	}
	return nil
}

// halt stops the writer (waiting for its attempt in flight) and returns
// every attempt, in order.
func (w *writer) halt() []attempt {
	w.once.Do(func() { close(w.stop) })
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]attempt(nil), w.attempts...)
}

var (
	addrRe   = regexp.MustCompile(`127\.0\.0\.1:\d+|port \d+|\[[^\]]*\]:\d+`)
	prefixRe = regexp.MustCompile("^failed to connect to `[^`]*`: *")
	spaceRe  = regexp.MustCompile(`\s+`)
)

// shortErr is an error's message on one line, without pgx's "failed to
// connect to" preamble and the addresses that differ per attempt (a
// multi-host failure lists each host's error in turn).
func shortErr(err error) string {
	s := addrRe.ReplaceAllString(err.Error(), "*")
	s = strings.TrimSpace(spaceRe.ReplaceAllString(prefixRe.ReplaceAllString(s, ""), " "))
	s = strings.ReplaceAll(s, "`", "'")
	if len(s) > 240 {
		s = s[:240] + "…"
	}
	return s
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

func write(dir string, runs int, r result) error {
	if err := results.WriteJSON(dir, "proxyfailover.json", r); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, `# Failover through the proxy benchmark

Measured %s on %s CPUs, PostgreSQL %s, source %s, %s members, %s,
ttl %s, loop_interval %s (the defaults). Command: `+"`go run ./bench/proxyfailover -runs %d`"+`.
Load average (1 min) %s at the start, %s at the end.

Each run kills the primary's agent and postmaster together (SIGKILL) while two clients write side by side: %s.
The proxy is %s. The direct client is the baseline, measured in the same failovers.

| measurement | median | min | max | stdev | runs |
|---|---|---|---|---|---|
| through the proxy: kill -9 → first acknowledged write | %.2fs | %.2fs | %.2fs | %.2fs | %s |
| baseline, directly: kill -9 → first acknowledged write | %.2fs | %.2fs | %.2fs | %.2fs | %s |
| proxy − direct, per run | %.2fs | %.2fs | %.2fs | %.2fs | %s |

Failed write attempts opened after the kill: %d through the proxy, %d directly.

| run | failover | through the proxy | directly | failed through the proxy | failed directly |
|---|---|---|---|---|---|
`, r.When.Format(time.RFC3339), r.Machine["cpus"], r.Machine["postgres"], r.Source, r.Settings["members"], r.Settings["store"],
		r.Settings["ttl"], r.Settings["loop_interval"], runs, r.Machine["load_average_1m_start"], r.Machine["load_average_1m_end"],
		r.Settings["client"], r.Settings["proxy"],
		r.Proxy.Median, r.Proxy.Min, r.Proxy.Max, r.Proxy.Stdev, results.Floats(r.Proxy.RunsSeconds, 2),
		r.Direct.Median, r.Direct.Min, r.Direct.Max, r.Direct.Stdev, results.Floats(r.Direct.RunsSeconds, 2),
		r.Extra.Median, r.Extra.Min, r.Extra.Max, r.Extra.Stdev, results.Floats(r.Extra.RunsSeconds, 2),
		r.ProxyErrors, r.DirectErrors)
	for i, d := range r.Runs {
		fmt.Fprintf(&b, "| %d | %s → %s | %.2fs | %.2fs | %d | %d |\n", i+1, d.From, d.To, d.ProxySeconds, d.DirectSeconds, d.ProxyErrors, d.DirectErrors)
	}
	fmt.Fprintf(&b, "\nErrors through the proxy: %s\n\nErrors directly: %s\n\nTarget: %s — %s.\n\n"+
		"Notes:\n\n"+
		"- The kill is timed from just before the SIGKILLs are sent; an attempt opened in the few milliseconds before the old primary's postmaster died can reach it and fail with it, through the proxy or not.\n"+
		"- The proxy routes to the new primary only once its agent reports primary/running in the store (the proxy's positive permission), which it does right after PostgreSQL's promotion returns; a direct client can write from the moment PostgreSQL leaves recovery. That report, the role watch's event and the proxy's read of the store are what the proxy adds.\n",
		kinds(r.Runs, func(d runDetail) map[string]int { return d.ProxyKinds }),
		kinds(r.Runs, func(d runDetail) map[string]int { return d.DirectKinds }),
		r.Target, map[bool]string{true: "met", false: "NOT met"}[r.TargetMet])
	fmt.Print(b.String())
	return os.WriteFile(filepath.Join(dir, "proxyfailover.md"), []byte(b.String()), 0o644)
}

// kinds totals the error kinds of every run, most frequent first.
func kinds(runs []runDetail, of func(runDetail) map[string]int) string {
	total := map[string]int{}
	for _, d := range runs {
		for k, n := range of(d) {
			total[k] += n
		}
	}
	if len(total) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(total))
	for k := range total {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return total[keys[i]] > total[keys[j]] || total[keys[i]] == total[keys[j]] && keys[i] < keys[j]
	})
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d × `%s`", total[k], k))
	}
	return strings.Join(parts, "; ")
}
