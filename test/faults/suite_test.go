package faults

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/testutil"
)

// defaultSyncMode is the synchronous mode the matrix runs: strict never
// acknowledges a commit without a synchronous standby, which is what
// "0 acknowledged writes lost in every scenario" needs.
const defaultSyncMode = cluster.SyncStrict

// plan is what one invocation runs.
type plan struct {
	full      bool
	scenarios []Scenario
	modes     []string
	report    string // where to write the report ("" = nowhere)
}

// makePlan reads HOLDFAST_FAULTS ("" = the CI subset, "full"),
// HOLDFAST_FAULTS_SCENARIOS (names, comma-separated, case-insensitive
// substrings), HOLDFAST_FAULTS_MODES (default "off,strict") and
// HOLDFAST_FAULTS_REPORT (default docs/faults-report.md in full mode).
func makePlan() (plan, error) {
	p := plan{full: suiteSelection() == "full", modes: []string{cluster.SyncOff, defaultSyncMode}}
	if m := envList("HOLDFAST_FAULTS_MODES"); len(m) > 0 {
		p.modes = m
	}
	for _, m := range p.modes {
		if !slices.Contains(cluster.SyncModes(), m) {
			return p, fmt.Errorf("HOLDFAST_FAULTS_MODES: %q is not a mode (%s)", m, strings.Join(cluster.SyncModes(), ", "))
		}
	}
	names := envList("HOLDFAST_FAULTS_SCENARIOS")
	for _, sc := range scenarios() {
		switch {
		case len(names) > 0:
			if slices.ContainsFunc(names, func(n string) bool { return strings.Contains(strings.ToLower(sc.Name), strings.ToLower(n)) }) {
				p.scenarios = append(p.scenarios, sc)
			}
		case p.full || sc.CI:
			p.scenarios = append(p.scenarios, sc)
		}
	}
	if len(p.scenarios) == 0 {
		return p, fmt.Errorf("HOLDFAST_FAULTS_SCENARIOS=%q matches no scenario", os.Getenv("HOLDFAST_FAULTS_SCENARIOS"))
	}
	p.report = os.Getenv("HOLDFAST_FAULTS_REPORT")
	if p.report == "" && p.full {
		p.report = "../../docs/faults-report.md"
	}
	return p, nil
}

// TestFaults runs the selected scenarios in every selected mode, sharing
// one cluster per cluster kind (restored to health between scenarios, and
// replaced when it cannot be), and prints the report.
func TestFaults(t *testing.T) {
	if suiteSelection() == "off" {
		t.Skip("HOLDFAST_FAULTS=off")
	}
	if testing.Short() {
		t.Skip("the fault suite runs real clusters; not in -short")
	}
	if why := netUnavailable(); why != "" {
		t.Skip(why)
	}
	testutil.PGBinDir(t)
	p, err := makePlan()
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	load := startLoadSampler()
	n := NewNet(t)
	t.Logf("fault network %s on %s.0/24", n.ID, n.Subnet)

	var rows []reportRow
	var skipped []string
	clusters := 0
	for _, kind := range []string{kindEmbedded, kindEtcd, kindVolume} {
		var todo []Scenario
		for _, sc := range p.scenarios {
			if sc.Kind == kind {
				todo = append(todo, sc)
			}
		}
		if len(todo) == 0 {
			continue
		}
		var c *Cluster
		newCluster := func() {
			if c != nil {
				c.Close(t)
			}
			o := ClusterOptions{Tag: fmt.Sprintf("c%d", clusters), ExternalEtcd: kind == kindEtcd}
			if kind == kindVolume {
				o.VolumeBytes = volumeBytes
			}
			clusters++
			start := time.Now()
			c = NewCluster(t, n, o)
			c.probeFailsafe(t)
			t.Logf("cluster %s (%s) healthy in %s", o.Tag, kind, time.Since(start).Round(100*time.Millisecond))
		}
		for _, mode := range p.modes {
			for _, sc := range todo {
				if c == nil {
					newCluster()
				} else if _, err := c.WaitHealthy(2 * time.Minute); err != nil {
					t.Logf("the cluster did not recover from the previous scenario (%v); starting a new one", err)
					newCluster()
				}
				if c.mode != mode {
					err := c.SetMode(mode)
					if errors.Is(err, errSyncUnsupported) && mode != cluster.SyncOff {
						msg := fmt.Sprintf("%s in %s mode: not run: %v", sc.Name, mode, err)
						t.Log(msg)
						skipped = append(skipped, msg)
						continue
					}
					if errors.Is(err, errSyncUnsupported) {
						// Off is what a holdfast without the setting does.
						err = nil
					}
					if err != nil {
						t.Fatalf("set synchronous_mode %s: %v", mode, err)
					}
					c.mode = mode
				}
				var row reportRow
				t.Run(strings.ReplaceAll(sc.Name, " ", "_")+"/"+mode, func(t *testing.T) {
					runScenario(t, c, sc, mode, &row)
				})
				rows = append(rows, row)
			}
		}
		if c != nil {
			c.Close(t)
		}
	}

	report := formatReport(p, rows, skipped, time.Since(began), load.Stop())
	t.Log("\n" + report)
	fmt.Println(report)
	if p.report != "" {
		if err := os.WriteFile(p.report, []byte(report), 0o644); err != nil {
			t.Errorf("write the report: %v", err)
		} else {
			t.Logf("report written to %s", p.report)
		}
	}
}

// probeFailsafe turns failsafe_mode on should the cluster ever get such a
// setting; today the failsafe is always on (docs/architecture.md,
// "Consensus loss").
func (c *Cluster) probeFailsafe(t *testing.T) {
	err := c.PatchConfig(map[string]any{"failsafe_mode": true}, errFailsafeUnsupported)
	if err != nil && !errors.Is(err, errFailsafeUnsupported) {
		t.Fatalf("turn failsafe_mode on: %v", err)
	}
}

// formatReport is the report document: when, what, on what, and the table.
//
// load describes the machine's load during the run (loadSampler), and
// HOLDFAST_FAULTS_NOTE, when set, adds what else the machine ran: the
// unavailability a loaded machine shows is not the one an idle one does.
func formatReport(p plan, rows []reportRow, skipped []string, took time.Duration, load string) string {
	var b strings.Builder
	b.WriteString("# holdfast fault report\n\n")
	b.WriteString("Generated by `test/faults` (see [faults.md](faults.md)); do not edit by hand.\n\n")
	fmt.Fprintf(&b, "- date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "- commit: %s\n", commit())
	sel := "CI subset"
	if p.full {
		sel = "full matrix"
	}
	var names []string
	for _, sc := range p.scenarios {
		names = append(names, sc.Name)
	}
	fmt.Fprintf(&b, "- selection: %s (%d scenarios × modes %s), took %s\n", sel, len(p.scenarios), strings.Join(p.modes, ", "), took.Round(time.Second))
	fmt.Fprintf(&b, "- machine: %s\n", machine())
	if note := strings.TrimSpace(os.Getenv("HOLDFAST_FAULTS_NOTE")); note != "" {
		load += "; " + note
	}
	fmt.Fprintf(&b, "- load: %s\n", load)
	b.WriteString("- cluster: 3 members, each on its own network namespace; holdfast's defaults (ttl 4s, loop 1s, maximum_lag_on_failover 1MiB) unless the row says otherwise\n")
	b.WriteString("- workload: 2 clients through `holdfast proxy` and 2 directly on each member inserting unique ids (5 ms pause), 2 register clients through the proxy\n")
	b.WriteString("- unavailability: the longest time without an acknowledged write; acknowledged writes lost: acknowledged ids missing on the final primary; client errors: writes through the proxy not acknowledged (failed or unknown; the direct clients of replicas are refused by design and not counted); split brain: proven by interleaved acknowledgements on two members (checker), or, in asynchronous mode, two members out of recovery in one sampling round; healed: healthy (one primary, every replica streaming, a write acknowledged directly and through the proxy) within 3 min of the heal, with no step but the heal itself\n\n")
	b.WriteString("- bound: issue 11 holds every row's unavailability to 2×TTL + a promotion (" + promotionAllowance.String() + "), or a stated reason; the column *≤ bound* says `yes`, or **no** with the scenario's reason (stated in `test/faults/scenarios_test.go`, `Scenario.Exceeds`)\n\n")
	b.WriteString(formatRows(rows))
	b.WriteString("\nScenarios:\n\n")
	for _, sc := range p.scenarios {
		fmt.Fprintf(&b, "- **%s**: %s\n", sc.Name, sc.What)
	}
	if len(skipped) > 0 {
		b.WriteString("\nNot run:\n\n")
		for _, s := range skipped {
			fmt.Fprintf(&b, "- %s\n", s)
		}
	}
	return b.String()
}

// commit is the working tree's commit, marked when it has changes.
func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += " (with uncommitted changes)"
	}
	return c
}

// machine describes where the report was made.
func machine() string {
	s := fmt.Sprintf("%s/%s, %d CPUs", runtime.GOOS, runtime.GOARCH, runtime.NumCPU())
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.TrimPrefix(strings.SplitN(string(b), "\n", 2)[0], "MemTotal:"), "%d", &kb)
		s += fmt.Sprintf(", %d GiB RAM", kb>>20)
	}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		s += ", kernel " + strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("sh", "-c", "ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1").Output(); err == nil {
		s += ", PostgreSQL " + strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(string(out)), "/usr/lib/postgresql/"), "/bin"))
	}
	return s
}

// formatRows renders the rows as a markdown table ordered by scenario, then
// mode (input order among equal keys): workload.FormatReport's columns and
// *≤ bound*, which marks a row over its bound and gives the scenario's
// reason (or says it states none).
func formatRows(rows []reportRow) string {
	sorted := slices.Clone(rows)
	slices.SortStableFunc(sorted, func(a, b reportRow) int {
		if c := strings.Compare(a.Scenario, b.Scenario); c != 0 {
			return c
		}
		return strings.Compare(a.Mode, b.Mode)
	})
	yesNo := func(v bool) string {
		if v {
			return "yes"
		}
		return "no"
	}
	var b strings.Builder
	b.WriteString("| scenario | mode | unavailability | ≤ bound | acknowledged writes lost | client errors | split brain | healed without a human | note |\n")
	b.WriteString("|---|---|---:|---|---:|---:|---|---|---|\n")
	for _, r := range sorted {
		within := "yes"
		switch {
		case r.Bound == 0:
			within = "—" // the run did not get as far as reading the TTL
		case r.Over() && r.Reason != "":
			within = fmt.Sprintf("**no** (bound %s): %s", r.Bound, r.Reason)
		case r.Over():
			within = fmt.Sprintf("**no** (bound %s): no reason stated", r.Bound)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %d | %s | %s | %s |\n",
			tableCell(r.Scenario), tableCell(r.Mode), r.Unavailability.Round(time.Millisecond), tableCell(within),
			r.AckedLost, r.ClientErrors, yesNo(r.SplitBrain), yesNo(r.Healed), tableCell(r.Note))
	}
	return b.String()
}

// tableCell makes s safe inside a markdown table cell.
func tableCell(s string) string {
	s = strings.ReplaceAll(s, "\r", " ")
	s = strings.ReplaceAll(s, "\n", " ")
	return strings.ReplaceAll(s, "|", `\|`)
}

// loadSampleEvery is how often the run's load average is sampled.
const loadSampleEvery = 30 * time.Second

// loadSampler samples the 1-minute load average while the suite runs, for
// the report's header.
type loadSampler struct {
	stop chan struct{}
	done chan string
}

func startLoadSampler() *loadSampler {
	l := &loadSampler{stop: make(chan struct{}), done: make(chan string, 1)}
	go func() {
		var lo, hi float64
		n := 0
		sample := func() {
			b, err := os.ReadFile("/proc/loadavg")
			if err != nil {
				return
			}
			var v float64
			if _, err := fmt.Sscanf(string(b), "%f", &v); err != nil {
				return
			}
			if n == 0 || v < lo {
				lo = v
			}
			if n == 0 || v > hi {
				hi = v
			}
			n++
		}
		sample()
		for {
			select {
			case <-l.stop:
				sample()
				if n == 0 {
					l.done <- "unknown (no /proc/loadavg)"
				} else {
					l.done <- fmt.Sprintf("1-minute load average %.1f–%.1f during the run (%d samples, %d CPUs)", lo, hi, n, runtime.NumCPU())
				}
				return
			case <-time.After(loadSampleEvery):
				sample()
			}
		}
	}()
	return l
}

// Stop ends the sampling and describes the load seen.
func (l *loadSampler) Stop() string {
	close(l.stop)
	return <-l.done
}
