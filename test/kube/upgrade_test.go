//go:build linux

package kube_test

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/testutil/release"
)

// upgradeWriters is the writer DaemonSet of the rolling node upgrade.
const upgradeWriters = "upgrade-writers"

// drainTimeout bounds one kubectl drain: it must complete by itself.
const drainTimeout = 3 * time.Minute

// phase is one step of the rolling node upgrade, for the report.
type phase struct {
	node, what  string
	start, end  time.Time
	switchovers int    // promotions during the phase
	moved       string // "pg-0 (node-1) → pg-1 (node-2)" when the primary moved
}

// testRollingNodeUpgrade is the seed scenario of node maintenance: under
// a steady write load through the proxy Service, every node in turn is
// drained (kubectl drain, the chart's PDBs in place), "upgraded" (its
// kubelet and container runtime stopped and started again) and
// uncordoned — with synchronous_mode on, then off. Every drain completes
// by itself; the primary moves at most once per node that hosted it and
// never onto a cordoned node; no acknowledged write is lost; two members
// never accept writes at once; the cluster ends healthy with no human
// step. A report (unavailability, client errors, switchovers per step) is
// logged, and written to $HOLDFAST_KUBE_REPORT when set.
func testRollingNodeUpgrade(t *testing.T, e *release.Env) {
	e.StartWriters(upgradeWriters, release.Proxy)
	t.Cleanup(func() { e.C.Kubectl("delete", "daemonset", "-n", release.NS, upgradeWriters, "--wait=false") })
	var report []string
	for _, mode := range []string{cluster.SyncOn, cluster.SyncOff} {
		ok := t.Run("synchronous_mode="+mode, func(t *testing.T) {
			e.T = t
			report = append(report, rollingUpgrade(t, e, mode)...)
		})
		e.T = t
		if !ok {
			break
		}
	}
	text := upgradeReport(report)
	t.Log("\n" + text)
	if path := os.Getenv("HOLDFAST_KUBE_REPORT"); path != "" {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Errorf("write the report: %v", err)
		}
	}
}

// rollingUpgrade upgrades every node once in synchronous mode mode and
// returns the report's rows.
func rollingUpgrade(t *testing.T, e *release.Env, mode string) []string {
	if out, err := ctl(e, e.AnyLive(), "edit-config", "--set", "synchronous_mode="+mode); err != nil {
		t.Fatalf("ctl edit-config synchronous_mode=%s: %v\n%s", mode, err, out)
	}
	e.Eventually("synchronous_mode "+mode+" in effect", time.Minute, func() error {
		out, err := ctl(e, e.AnyLive(), "show-config")
		if err == nil && !strings.Contains(out, `"synchronous_mode": "`+mode+`"`) {
			return fmt.Errorf("show-config:\n%s", out)
		}
		if err != nil {
			return err
		}
		p, ok := e.CurrentPrimary()
		if !ok {
			return fmt.Errorf("no primary")
		}
		names, err := e.Psql(p.Name, "127.0.0.1", 5432, "show synchronous_standby_names")
		if err == nil && (names == "") != (mode == cluster.SyncOff) {
			err = fmt.Errorf("synchronous_standby_names %q on %s", names, p.Name)
		}
		return err
	})
	e.WaitHealthy(release.HealthyTimeout)
	var nodes []string
	for _, m := range e.Members() {
		nodes = append(nodes, m.Node)
	}
	slices.Sort(nodes)
	s := e.SampleLabels()
	begin := time.Now()
	var phases []phase
	hosted := 0
	run := func(node, what string, fn func()) phase {
		before, p0 := promotions(e), e.Primary()
		ph := phase{node: node, what: what, start: time.Now()}
		fn()
		ph.end = time.Now()
		p1 := e.Primary()
		ph.switchovers = promotions(e) - before
		if p1.Name != p0.Name {
			ph.moved = fmt.Sprintf("%s (%s) → %s (%s)", p0.Name, p0.Node, p1.Name, p1.Node)
		}
		phases = append(phases, ph)
		return ph
	}
	for _, node := range nodes {
		onNode := e.Primary().Node == node
		if onNode {
			hosted++
		}
		t.Cleanup(func() { e.C.Kubectl("uncordon", node) })
		d := run(node, "drain", func() {
			out, err := e.C.Kubectl("drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--force", "--timeout="+drainTimeout.String())
			if err != nil {
				t.Fatalf("kubectl drain %s did not complete by itself: %v\n%s", node, err, out)
			}
		})
		if p := e.Primary(); p.Node == node {
			t.Fatalf("%s on the drained node %s is primary", p.Name, node)
		}
		if onNode && d.switchovers != 1 || !onNode && d.switchovers != 0 {
			t.Errorf("drain of %s (primary there: %v): %d promotions", node, onNode, d.switchovers)
		}
		run(node, "upgrade", func() {
			e.C.StopKubelet(node)
			e.C.StopRuntime(node)
			e.C.StartRuntime(node)
			e.C.StartKubelet(node)
			e.C.WaitNodeReady(node, "True", 2*time.Minute)
		})
		run(node, "uncordon", func() {
			e.C.MustKubectl("uncordon", node)
			e.WaitHealthy(release.HealthyTimeout)
		})
	}
	s.Finish(t)
	finish := time.Now()
	total := 0
	for _, ph := range phases {
		total += ph.switchovers
		if ph.what != "drain" && ph.switchovers != 0 {
			t.Errorf("%s of %s: %d promotions, want none", ph.what, ph.node, ph.switchovers)
		}
	}
	if total > hosted {
		t.Errorf("%d switchovers for %d nodes that hosted the primary", total, hosted)
	}
	t.Logf("synchronous_mode %s: %d nodes upgraded in %v, %d switchovers (%d nodes hosted the primary)",
		mode, len(nodes), time.Since(begin).Round(time.Second), total, hosted)

	// The writers' view: let them write on the final primary, then read
	// every acknowledged row back from it.
	e.Eventually("a write through the proxy after the upgrade", time.Minute, func() error { return e.Write("upgrade-" + mode) })
	time.Sleep(2 * time.Second)
	as, err := e.WritersLog(upgradeWriters)
	if err != nil {
		t.Fatalf("writers' logs: %v", err)
	}
	var acked []release.Attempt
	failed := map[int]int{} // phase index → failed attempts
	for _, a := range as {
		if a.Start.Before(begin) {
			continue
		}
		if a.OK {
			acked = append(acked, a)
			continue
		}
		for i, ph := range phases {
			if !a.Start.Before(ph.start) && a.Start.Before(ph.end) {
				failed[i]++
			}
		}
	}
	if len(acked) == 0 {
		t.Fatal("no acknowledged write during the upgrade")
	}
	sort.Slice(acked, func(i, j int) bool { return acked[i].At.Before(acked[j].At) })
	// Two members never accepted writes at once: ordered by the servers'
	// clock, the acknowledging server changes once per switchover.
	changes := 0
	for i := 1; i < len(acked); i++ {
		if acked[i].Server != acked[i-1].Server {
			changes++
		}
	}
	if changes > total {
		t.Errorf("the acknowledging server changed %d times for %d switchovers: two members accepted writes at once", changes, total)
	}
	lost := lostWrites(t, e, acked)
	if len(lost) > 0 {
		t.Errorf("%d acknowledged writes lost (synchronous_mode %s), e.g. ids %v", len(lost), mode, lost[:min(len(lost), 10)])
	}
	var rows []string
	for i, ph := range phases {
		rows = append(rows, fmt.Sprintf("| %s | %s | %s | %v | %s | %d | %d | %s |", modeName(mode), ph.node, ph.what,
			ph.end.Sub(ph.start).Round(time.Second), gapIn(acked, ph.start, ph.end), failed[i], ph.switchovers, ph.moved))
	}
	rows = append(rows, fmt.Sprintf("| %s | all | whole upgrade | %v | %s | %d | %d | %d acknowledged writes, %d lost |", modeName(mode),
		finish.Sub(begin).Round(time.Second), gapIn(acked, begin, finish), sum(failed), total, len(acked), len(lost)))
	return rows
}

// lostWrites returns the acknowledged ids missing on the primary.
func lostWrites(t *testing.T, e *release.Env, acked []release.Attempt) []int64 {
	t.Helper()
	lo, hi := acked[0].ID, acked[0].ID
	for _, a := range acked {
		lo, hi = min(lo, a.ID), max(hi, a.ID)
	}
	out, err := e.Psql(e.AnyLive(), release.Release+"-rw", 5432, fmt.Sprintf("select id from writes where id between %d and %d", lo, hi))
	if err != nil {
		t.Fatalf("read the writes back: %v", err)
	}
	have := map[int64]bool{}
	for _, f := range strings.Fields(out) {
		if id, err := strconv.ParseInt(f, 10, 64); err == nil {
			have[id] = true
		}
	}
	var lost []int64
	for _, a := range acked {
		if !have[a.ID] {
			lost = append(lost, a.ID)
		}
	}
	return lost
}

// gapIn is release.LongestGap for the report.
func gapIn(acked []release.Attempt, from, to time.Time) string {
	gap, _ := release.LongestGap(acked, from, to)
	return gap.Round(100 * time.Millisecond).String()
}

func sum(m map[int]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func modeName(mode string) string {
	if mode == cluster.SyncOff {
		return "asynchronous"
	}
	return "synchronous (" + mode + ")"
}

// upgradeReport renders the rows as the report.
func upgradeReport(rows []string) string {
	var b strings.Builder
	b.WriteString(`# Rolling node upgrade

Generated by ` + "`test/kube`" + ` (step RollingNodeUpgrade); do not edit by hand.

- date: ` + time.Now().UTC().Format("2006-01-02 15:04 UTC") + `
- cluster: the chart on the three-node test Kubernetes (one member per node), ttl 6s, loop 1s
- per node: ` + "`kubectl drain --ignore-daemonsets`" + ` with the chart's PodDisruptionBudgets, then its kubelet and containerd stopped and started ("upgrade"), then ` + "`kubectl uncordon`" + ` and the member back, streaming
- workload: a writer on every node (a DaemonSet, which drains leave alone) inserting through the proxy Service, a new connection per insert
- unavailability: the longest time without an acknowledged write (servers' clock) within the step; client errors: inserts that failed (refused, reset or timed out) and started within the step; switchovers: promotions in the store's history

| mode | node | step | took | unavailability | client errors | switchovers | primary moved |
|---|---|---|---:|---:|---:|---:|---|
`)
	for _, r := range rows {
		b.WriteString(r + "\n")
	}
	return b.String()
}
