//go:build linux

// Package kube_test proves holdfast on a real multi-node Kubernetes
// (scripts/kube/cluster.sh: apiserver, controller-manager, scheduler,
// kubelets, containerd, CoreDNS), installed with the chart and the image
// built by scripts/image/build.sh.
package kube_test

import (
	"encoding/json"
	"fmt"
	ctlpkg "github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/testutil/release"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testValues: a lease short enough to keep the test quick, long enough for
// a loaded two-core machine (the chart's defaults are 10s/2s).
var testValues = []string{"ttl=6s", "loopInterval=1s"}

// ttl is testValues' lease TTL.
const ttl = 6 * time.Second

// afterAPIRestart bounds how long pods take to reach a restarted API
// server through the kubernetes Service.
const afterAPIRestart = 3 * time.Minute

// TestKubernetes runs the end-to-end scenarios one after another on one
// cluster; each leaves it healthy for the next.
func TestKubernetes(t *testing.T) {
	e := release.Setup(t, testValues...)
	steps := []struct {
		name string
		fn   func(t *testing.T, e *release.Env)
	}{
		{"Up", testUp},
		{"CtlSwitchover", testCtlSwitchover},
		{"ForceDeletePrimaryPod", testForceDeletePrimary},
		{"GracefulDeletePrimaryPod", testGracefulDeletePrimary},
		{"KillPrimaryContainerProcesses", testKillPrimaryProcesses},
		{"DeleteEveryPod", testDeleteEveryPod},
		{"NodeLost", testNodeLost},
		{"APIServerUnreachable", testAPIServerUnreachable},
		{"CordonPrimaryNode", testCordonPrimaryNode},
		{"DrainPrimaryNode", testDrainPrimaryNode},
		{"NoSafeTarget", testNoSafeTarget},
		{"RoleAwareRollout", testRoleAwareRollout},
		{"SupervisedRollout", testSupervisedRollout},
		{"RollingNodeUpgrade", testRollingNodeUpgrade},
		{"ForeignDataRefused", testForeignData},
		// The proxy runs in session mode from here on (the backup steps'
		// upgrades keep it: --reuse-values).
		{"SessionProxy", testSessionProxy},
		// Last: they upgrade the release with backups on (backup_test.go,
		// backup_s3_test.go); BackupsS3 follows Backups.
		{"Backups", testBackups},
		// Before BackupsS3: it restores from the directory repository.
		{"RestoreFromBackup", testRestoreFromBackup},
		{"BackupsS3", testBackupsS3},
	}
	for _, s := range steps {
		ok := t.Run(s.name, func(t *testing.T) {
			e.T = t
			s.fn(t, e)
		})
		e.T = t
		if !ok {
			return // later steps assume a healthy cluster
		}
	}
}

// testUp: three members, one per node, one labelled primary; a row written
// through the proxy is on both replicas; -rw and the proxy's read-write
// port reach the primary, -ro and the proxy's read-only port a replica.
func testUp(t *testing.T, e *release.Env) {
	ms := e.Members()
	nodes := map[string]bool{}
	for _, m := range ms {
		nodes[m.Node] = true
	}
	if len(nodes) != 3 {
		t.Fatalf("members on %d nodes, want one per node: %+v", len(nodes), ms)
	}
	from := e.AnyLive()
	if _, err := e.Psql(from, release.Proxy, 5432, "create table if not exists t(id bigserial primary key, v text not null)"); err != nil {
		t.Fatal(err)
	}
	if err := e.Write("up"); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Role != "replica" {
			continue
		}
		e.Eventually("row on replica "+m.Name, 30*time.Second, func() error {
			n, err := e.Count(m.Name, "up")
			if err == nil && n != 1 {
				err = fmt.Errorf("%d rows", n)
			}
			return err
		})
	}
	for _, c := range []struct {
		host     string
		port     int
		recovery string
	}{
		{release.Release + "-rw", 5432, "f"}, {release.Proxy, 5432, "f"},
		{release.Release + "-ro", 5432, "t"}, {release.Proxy, 5433, "t"},
	} {
		e.Eventually(fmt.Sprintf("%s:%d reaches the right role", c.host, c.port), 30*time.Second, func() error {
			out, err := e.Psql(from, c.host, c.port, "select pg_is_in_recovery()")
			if err == nil && out != c.recovery {
				err = fmt.Errorf("pg_is_in_recovery() = %s, want %s", out, c.recovery)
			}
			return err
		})
	}
}

// timeline is the member's timeline as the cluster knows it (ctl list: the
// position the member reports), which a standby's control file shows only
// after its next restartpoint.
func timeline(e *release.Env, member string) (int, error) {
	from := e.AnyLive()
	if from == "" {
		return 0, fmt.Errorf("no live pod to run ctl in")
	}
	out, err := ctl(e, from, "list", "-o", "json")
	if err != nil {
		return 0, fmt.Errorf("ctl list: %v: %s", err, out)
	}
	var list ctlpkg.ClusterList
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return 0, err
	}
	for _, m := range list.Members {
		if m.Name == member {
			return int(m.Timeline), nil
		}
	}
	return 0, fmt.Errorf("ctl list shows no member %s", member)
}

// ctl runs holdfast ctl with args in pod, against the Kubernetes store.
func ctl(e *release.Env, pod string, args ...string) (string, error) { return e.Ctl(pod, args...) }

// testCtlSwitchover: ctl in a pod lists the cluster from the Kubernetes
// store and switches over through the members' API; the labels and the
// proxy follow, nothing is lost.
func testCtlSwitchover(t *testing.T, e *release.Env) {
	old := e.Primary()
	from := e.AnyLive()
	out, err := ctl(e, from, "list", "-o", "json")
	if err != nil {
		t.Fatalf("ctl list: %v\n%s", err, out)
	}
	var list ctlpkg.ClusterList
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("ctl list -o json: %v\n%s", err, out)
	}
	if len(list.Members) != 3 || list.Leader != old.Name {
		t.Fatalf("ctl list: leader %q, %d members, want %s and 3:\n%s", list.Leader, len(list.Members), old.Name, out)
	}
	if err := e.Write("switchover-before"); err != nil {
		t.Fatal(err)
	}
	s := e.SampleLabels()
	if out, err := ctl(e, from, "switchover"); err != nil {
		t.Fatalf("ctl switchover: %v\n%s", err, out)
	}
	e.Eventually("another member labelled primary", release.FailoverTimeout, func() error {
		if p, ok := e.CurrentPrimary(); !ok || p.Name == old.Name {
			return fmt.Errorf("primary: %q", p.Name)
		}
		return e.Write("switchover-after")
	})
	e.WaitHealthy(release.HealthyTimeout)
	s.Finish(t)
	e.Eventually("every row on the old primary", 60*time.Second, func() error {
		for _, v := range []string{"switchover-before", "switchover-after"} {
			if n, err := e.Count(old.Name, v); err != nil || n != 1 {
				return fmt.Errorf("row %s: %d, %v", v, n, err)
			}
		}
		return nil
	})
	if out, err := ctl(e, from, "history"); err != nil || !strings.Contains(out, e.Primary().Name) {
		t.Errorf("ctl history does not show the promotion of %s: %v\n%s", e.Primary().Name, err, out)
	}
}

// failover checks what every lost primary must lead to: another member
// labelled primary, writes through the proxy resuming, and the old pod back
// as a replica on the new timeline holding every row, on its own volume.
func failover(e *release.Env, old release.Member, marker string, kill func()) {
	t := e.T
	t.Helper()
	tl, err := timeline(e, old.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Write(marker + "-before"); err != nil {
		t.Fatal(err)
	}
	s := e.SampleLabels()
	start := time.Now()
	kill()
	took := e.Eventually("a write through the proxy after the primary's loss", release.FailoverTimeout, func() error {
		for _, m := range e.Members() {
			if m.Role == "primary" && m.Name != old.Name {
				return e.Write(marker+"-after", old.Name)
			}
		}
		return fmt.Errorf("no other member labelled primary")
	})
	t.Logf("first acknowledged write through the proxy %v after the primary's loss", took.Round(100*time.Millisecond))
	_ = start
	e.WaitHealthy(release.HealthyTimeout)
	s.Finish(t)
	back := e.Members()
	for _, m := range back {
		if m.Name != old.Name {
			continue
		}
		if m.Role != "replica" {
			t.Errorf("%s came back as %q, want replica", m.Name, m.Role)
		}
		if m.Claim != old.Claim {
			t.Errorf("%s came back on claim %s, want %s", m.Name, m.Claim, old.Claim)
		}
	}
	e.Eventually(old.Name+" holds every row on the new timeline", 60*time.Second, func() error {
		for _, v := range []string{marker + "-before", marker + "-after", "up"} {
			if n, err := e.Count(old.Name, v); err != nil || n < 1 {
				return fmt.Errorf("row %s: %d, %v", v, n, err)
			}
		}
		if now, err := timeline(e, old.Name); err != nil || now <= tl {
			return fmt.Errorf("timeline %d (was %d): %v", now, tl, err)
		}
		return nil
	})
}

func testForceDeletePrimary(t *testing.T, e *release.Env) {
	old := e.Primary()
	failover(e, old, "forcedelete", func() {
		e.C.MustKubectl("delete", "pod", "-n", release.NS, old.Name, "--grace-period=0", "--force", "--wait=false")
	})
}

// testGracefulDeletePrimary: a graceful deletion of the primary's pod
// (what a node's graceful shutdown does, bypassing the budgets) sends
// SIGTERM; the agent hands the primary over before PostgreSQL stops, so
// writes resume without waiting for the lease to run out. The handover is
// timed by the servers' clocks — from the deletion the API server
// recorded to the promotion the new primary recorded — so that neither
// kubectl's start nor the test's polling on a loaded machine counts.
func testGracefulDeletePrimary(t *testing.T, e *release.Env) {
	old := e.Primary()
	before := promotions(e)
	var deleted time.Time
	failover(e, old, "graceful", func() {
		deleted = time.Now()
		e.C.MustKubectl("delete", "pod", "-n", release.NS, old.Name, "--wait=false")
		if at, err := deletionTime(e, old); err == nil {
			deleted = at
		} else {
			t.Logf("the deletion's time from the API server: %v; timing from the test's clock", err)
		}
	})
	// The first promotion after the deletion (another may follow before
	// the history is read).
	var promoted time.Time
	e.Eventually("the promotion in the store's history", historyWait, func() error {
		at := promotionTimes(e)
		if len(at) <= before {
			return fmt.Errorf("%d entries, as before the deletion", len(at))
		}
		promoted = at[before]
		return nil
	})
	took := promoted.Sub(deleted)
	t.Logf("the new primary recorded its promotion %v after the graceful deletion", took.Round(100*time.Millisecond))
	if took >= ttl {
		t.Errorf("the handover took %v, as long as the lease (%v): the primary did not hand over on SIGTERM", took, ttl)
	}
}

// deletionTime is when the API server took the deletion of member m's pod
// (to the second): its deletionTimestamp less its grace period.
func deletionTime(e *release.Env, m release.Member) (time.Time, error) {
	out, err := e.C.Kubectl("get", "pod", "-n", release.NS, m.Name, "-o", `jsonpath={.metadata.uid} {.metadata.deletionTimestamp} {.metadata.deletionGracePeriodSeconds}`)
	if err != nil {
		return time.Time{}, err
	}
	f := strings.Fields(out)
	if len(f) != 3 || f[0] != m.UID {
		return time.Time{}, fmt.Errorf("pod %s: %q: not the deleted pod, or no deletion recorded", m.Name, out)
	}
	at, err := time.Parse(time.RFC3339, f[1])
	if err != nil {
		return time.Time{}, fmt.Errorf("pod %s: deletionTimestamp %q: %w", m.Name, f[1], err)
	}
	grace, err := strconv.Atoi(f[2])
	if err != nil {
		return time.Time{}, fmt.Errorf("pod %s: deletionGracePeriodSeconds %q: %w", m.Name, f[2], err)
	}
	return at.Add(-time.Duration(grace) * time.Second), nil
}

func testKillPrimaryProcesses(t *testing.T, e *release.Env) {
	old := e.Primary()
	failover(e, old, "killprocs", func() {
		pids := release.PodProcesses(old.UID)
		if len(pids) == 0 {
			t.Fatalf("no processes of pod %s (uid %s) found", old.Name, old.UID)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		t.Logf("killed %d processes of %s", len(pids), old.Name)
	})
}

// testDeleteEveryPod: every member's pod deleted at once (a full restart);
// the cluster comes back by itself with every committed row.
func testDeleteEveryPod(t *testing.T, e *release.Env) {
	if err := e.Write("full-restart"); err != nil {
		t.Fatal(err)
	}
	before := e.Members()
	if len(before) == 0 {
		t.Fatal("no member pods to delete")
	}
	var names []string
	uids := map[string]string{}
	for _, m := range before {
		names = append(names, m.Name)
		uids[m.Name] = m.UID
	}
	e.C.MustKubectl(append([]string{"delete", "pod", "-n", release.NS, "--wait=false"}, names...)...)
	// The deleted pods may look healthy for a while: every member is
	// waited for as a new pod first.
	e.Eventually("every member a new pod", release.HealthyTimeout, func() error {
		ms := e.Members()
		if len(ms) < len(names) {
			return fmt.Errorf("%d of %d member pods", len(ms), len(names))
		}
		for _, m := range ms {
			if m.UID == uids[m.Name] {
				return fmt.Errorf("%s is still pod %s", m.Name, m.UID)
			}
		}
		return nil
	})
	e.WaitHealthy(release.HealthyTimeout)
	e.Eventually("a write after the full restart", release.FailoverTimeout, func() error { return e.Write("after-full-restart") })
	for _, m := range e.Members() {
		e.Eventually("every row on "+m.Name, 60*time.Second, func() error {
			for _, v := range []string{"up", "full-restart", "after-full-restart"} {
				if n, err := e.Count(m.Name, v); err != nil || n < 1 {
					return fmt.Errorf("row %s: %d, %v", v, n, err)
				}
			}
			return nil
		})
	}
}

// testNodeLost: the primary's node stops (kubelet stopped, its pods'
// processes frozen). Failover is bounded by the lease, not by Kubernetes'
// node timeouts; when the node returns its member rejoins as a replica.
func testNodeLost(t *testing.T, e *release.Env) {
	old := e.Primary()
	node := old.Node
	restored := false
	restore := func() {
		if !restored {
			restored = true
			e.C.Thaw(node)
			e.C.StartKubelet(node)
		}
	}
	t.Cleanup(restore)
	tl, err := timeline(e, old.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Write("nodelost-before"); err != nil {
		t.Fatal(err)
	}
	s := e.SampleLabels()
	e.C.StopKubelet(node)
	e.C.Freeze(node)
	start := time.Now()
	// The bound is on the database: another member labelled primary and
	// taking writes through the -rw Service, which follows the label.
	took := e.Eventually("a write to the new primary with the old one's node lost", release.FailoverTimeout, func() error {
		for _, m := range e.Members() {
			if m.Role == "primary" && m.Name != old.Name {
				from := e.AnyLive(old.Name, node)
				if from == "" {
					return fmt.Errorf("no live pod to write from")
				}
				_, err := e.Psql(from, release.Release+"-rw", 5432, "insert into t(v) values ('nodelost-after')")
				return err
			}
		}
		return fmt.Errorf("no other member labelled primary")
	})
	t.Logf("failover with the node lost took %v (the node is still Ready=%s to Kubernetes)", took.Round(100*time.Millisecond), nodeReady(e, node))
	if took > 40*time.Second {
		t.Errorf("failover took %v: that is Kubernetes' node timeout, not the lease", took)
	}
	// Through the proxy Service too — one of whose pods may be on the lost
	// node: kube-proxy keeps sending connections there until Kubernetes
	// marks the node NotReady, so clients must retry.
	e.Eventually("a write through the proxy", release.FailoverTimeout, func() error { return e.Write("nodelost-proxy", old.Name, node) })
	t.Logf("and through the proxy Service %v after the loss", time.Since(start).Round(100*time.Millisecond))
	restore()
	e.WaitHealthy(release.HealthyTimeout)
	s.Finish(t)
	e.Eventually(old.Name+" back as a replica with every row", 90*time.Second, func() error {
		for _, v := range []string{"nodelost-before", "nodelost-after"} {
			if n, err := e.Count(old.Name, v); err != nil || n < 1 {
				return fmt.Errorf("row %s: %d, %v", v, n, err)
			}
		}
		if now, err := timeline(e, old.Name); err != nil || now <= tl {
			return fmt.Errorf("timeline %d (was %d): %v", now, tl, err)
		}
		return nil
	})
}

// testAPIServerUnreachable: the Kubernetes API (the store) is gone for 3 ×
// TTL while the members still reach each other: the primary keeps serving
// writes (the failsafe: every member confirms it), nothing is promoted,
// and the cluster carries on when the API server is back.
func testAPIServerUnreachable(t *testing.T, e *release.Env) {
	old := e.Primary()
	ip := e.PodIP(old.Name)
	tl, err := timeline(e, old.Name)
	if err != nil {
		t.Fatal(err)
	}
	e.StartWriter("direct-writer", release.Release+"-rw")
	defer e.C.Kubectl("delete", "pod", "-n", release.NS, "direct-writer", "--grace-period=0", "--force")
	// The writer writes to the primary before the outage: what the test
	// counts is writes going on through it.
	e.Eventually("the writer's writes acknowledged by "+old.Name, historyWait, func() error {
		as, err := e.WriterLog("direct-writer", writerLogWindow)
		if err != nil {
			return err
		}
		for _, a := range as {
			if a.OK && a.Server == ip {
				return nil
			}
		}
		return fmt.Errorf("%d attempts, none acknowledged by %s (%s)", len(as), old.Name, ip)
	})
	down := time.Now()
	e.C.StopAPIServer()
	restored := false
	t.Cleanup(func() {
		if !restored {
			e.C.StartAPIServer()
		}
	})
	time.Sleep(3 * ttl)
	up := time.Now()
	e.C.StartAPIServer()
	restored = true
	as, err := lastWrites(e, "direct-writer")
	if err != nil {
		t.Fatal(err)
	}
	// Writes were acknowledged by the old primary during the outage, late
	// in it too: after a TTL every lease would have run out.
	var during, late, elsewhere int
	for _, a := range as {
		if !a.OK || a.End.Before(down) || a.Start.After(up) {
			continue
		}
		if a.Server != ip {
			elsewhere++
			continue
		}
		during++
		if a.Start.After(down.Add(ttl + time.Second)) {
			late++
		}
	}
	t.Logf("during the %v outage: %d writes acknowledged by the primary, %d of them more than a TTL in", up.Sub(down).Round(time.Second), during, late)
	if late == 0 {
		t.Errorf("the primary stopped acknowledging writes during the API server outage (failsafe)")
	}
	if elsewhere > 0 {
		t.Errorf("%d writes acknowledged by another member during the outage", elsewhere)
	}
	e.WaitHealthy(release.HealthyTimeout)
	if p := e.Primary(); p.Name != old.Name {
		t.Errorf("%s was promoted although the primary kept serving", p.Name)
	}
	// Pods reach a restarted API server through the kubernetes Service
	// again only after a while (the test cluster's trap: up to a minute).
	e.Eventually("the same timeline after the outage", afterAPIRestart, func() error {
		now, err := timeline(e, old.Name)
		if err == nil && now != tl {
			t.Errorf("timeline %d after the outage, was %d: a promotion happened", now, tl)
		}
		return err
	})
	e.Eventually("a write through the proxy after the outage", afterAPIRestart, func() error { return e.Write("after-api-outage") })
}

// rolloutWriters is the writer DaemonSet of the rollout step.
const rolloutWriters = "rollout-writers"

// historyWait bounds the wait for a promotion to show in the store's
// history (the new primary records it right after promoting), and for a
// writer's first writes.
const historyWait = time.Minute

// writerLogWindow is how far back a writer's log is read: longer than any
// step that reads it.
const writerLogWindow = 5 * time.Minute

// switchoverWindow bounds, either side of a switchover's promotion, when
// clients may see errors: the old primary's drain and stop before it, the
// proxies' next read of the roles after it.
const switchoverWindow = 2 * ttl

// promotionTimes are the times of the store's history entries, oldest
// first (none before the first promotion).
func promotionTimes(e *release.Env) []time.Time {
	e.T.Helper()
	out := e.C.MustKubectl("get", "configmap", "-n", release.NS, release.Release+"-config", "-o", "jsonpath={.data.history}")
	if strings.TrimSpace(out) == "" {
		return nil // no promotion recorded yet
	}
	var h []struct {
		At time.Time `json:"at"`
	}
	if err := json.Unmarshal([]byte(out), &h); err != nil {
		e.T.Fatalf("history %q: %v", out, err)
	}
	at := make([]time.Time, len(h))
	for i, x := range h {
		at[i] = x.At
	}
	return at
}

// lastPromotion is the time of the store's newest history entry.
func lastPromotion(e *release.Env) time.Time {
	e.T.Helper()
	at := promotionTimes(e)
	if len(at) == 0 {
		e.T.Fatal("no promotion in the store's history")
	}
	return at[len(at)-1]
}

// promotions counts the history entries in the store.
func promotions(e *release.Env) int {
	e.T.Helper()
	return len(promotionTimes(e))
}

// testCordonPrimaryNode: cordoning the primary's node (no drain) moves
// the primary once, onto a node that is not cordoned; uncordoning moves
// nothing.
func testCordonPrimaryNode(t *testing.T, e *release.Env) {
	old := e.Primary()
	before := promotions(e)
	s := e.SampleLabels()
	e.C.MustKubectl("cordon", old.Node)
	t.Cleanup(func() { e.C.Kubectl("uncordon", old.Node) })
	e.Eventually("the primary off the cordoned node", release.FailoverTimeout, func() error {
		if p, ok := e.CurrentPrimary(); !ok || p.Node == old.Node {
			return fmt.Errorf("primary: %q on %q", p.Name, p.Node)
		}
		return e.Write("cordon")
	})
	e.WaitHealthy(release.HealthyTimeout)
	moved := e.Primary()
	time.Sleep(2 * ttl)
	if n := promotions(e) - before; n != 1 {
		t.Errorf("%d promotions after a cordon, want 1", n)
	}
	e.C.MustKubectl("uncordon", old.Node)
	time.Sleep(2 * ttl)
	if p := e.Primary(); p.Name != moved.Name {
		t.Errorf("the primary moved from %s to %s after the uncordon", moved.Name, p.Name)
	}
	if n := promotions(e) - before; n != 1 {
		t.Errorf("%d promotions after cordon and uncordon, want 1", n)
	}
	s.Finish(t)
}

// testDrainPrimaryNode: kubectl drain of the primary's node, with the
// chart's PodDisruptionBudgets in place, completes by itself: the primary
// hands over first (one switchover), then its pod is evicted; after the
// uncordon the member comes back as a replica with every row.
func testDrainPrimaryNode(t *testing.T, e *release.Env) {
	old := e.Primary()
	before := promotions(e)
	if err := e.Write("drain-before"); err != nil {
		t.Fatal(err)
	}
	s := e.SampleLabels()
	t.Cleanup(func() { e.C.Kubectl("uncordon", old.Node) })
	start := time.Now()
	out, err := e.C.Kubectl("drain", old.Node, "--ignore-daemonsets", "--delete-emptydir-data", "--force", "--timeout=100s")
	if err != nil {
		t.Fatalf("kubectl drain: %v\n%s", err, out)
	}
	t.Logf("kubectl drain of %s (the primary's node) finished in %v", old.Node, time.Since(start).Round(time.Second))
	if p := e.Primary(); p.Node == old.Node {
		t.Fatalf("%s on the drained node %s is primary", p.Name, p.Node)
	}
	if err := e.Write("drain-after"); err != nil {
		t.Fatal(err)
	}
	e.C.MustKubectl("uncordon", old.Node)
	e.WaitHealthy(release.HealthyTimeout)
	s.Finish(t)
	if n := promotions(e) - before; n != 1 {
		t.Errorf("%d promotions for one drain, want 1", n)
	}
	if out, err := ctl(e, e.AnyLive(), "explain"); err != nil || !strings.Contains(out, "DrainSwitchover") || !strings.Contains(out, "is the primary") {
		t.Errorf("ctl explain does not tell of the drain's switchover: %v\n%s", err, out)
	}
	e.Eventually(old.Name+" back with every row", 90*time.Second, func() error {
		for _, v := range []string{"drain-before", "drain-after"} {
			if n, err := e.Count(old.Name, v); err != nil || n != 1 {
				return fmt.Errorf("row %s: %d, %v", v, n, err)
			}
		}
		return nil
	})
}

// testRoleAwareRollout: a changed PostgreSQL parameter (a new StatefulSet
// revision; the OnDelete strategy leaves the pods alone) is rolled by the
// primary's agent: replicas one at a time, one switchover, the old primary
// last; every member ends on the new revision with the new setting and
// every row.
func testRoleAwareRollout(t *testing.T, e *release.Env) {
	e.StartWriters(rolloutWriters, release.Proxy)
	t.Cleanup(func() { e.C.Kubectl("delete", "daemonset", "-n", release.NS, rolloutWriters, "--wait=false") })
	old := e.Primary()
	before := promotions(e)
	start := time.Now()
	if err := e.Write("rollout-before"); err != nil {
		t.Fatal(err)
	}
	s := e.SampleLabels()
	e.Upgrade("postgresql.parameters.work_mem=7MB")
	final := e.WaitRolledOut("every member on the new revision", e.UpdateRevision(), 6*time.Minute)
	t.Logf("rollout of 3 members took %v", time.Since(start).Round(time.Second))
	s.Finish(t)
	if n := promotions(e) - before; n != 1 {
		t.Errorf("%d promotions in the rollout, want exactly 1", n)
	}
	// Client errors through the proxy only around the switchover: from the
	// primary's drain to the new primary's promotion, plus the proxy's
	// re-read of the roles.
	at := lastPromotion(e)
	as, err := e.WritersLog(rolloutWriters)
	if err != nil {
		t.Fatalf("writers' logs: %v", err)
	}
	failed, acked := 0, 0
	for _, a := range as {
		switch {
		case a.Start.Before(start):
		case a.OK:
			acked++
		case a.Start.Before(at.Add(-switchoverWindow)) || a.Start.After(at.Add(switchoverWindow)):
			t.Errorf("a write through the proxy failed at %s, outside the switchover at %s", a.Start.Format(time.StampMilli), at.Format(time.StampMilli))
		default:
			failed++
		}
	}
	t.Logf("rollout under load: %d writes acknowledged, %d failed, all within %v of the promotion", acked, failed, switchoverWindow)
	var last release.Member
	for _, m := range final {
		if m.Created.After(last.Created) {
			last = m
		}
	}
	if last.Name != old.Name {
		t.Errorf("%s was recreated last, want the old primary %s", last.Name, old.Name)
	}
	if err := e.Write("rollout-after"); err != nil {
		t.Fatal(err)
	}
	for _, m := range final {
		e.Eventually(m.Name+" has the new setting and every row", time.Minute, func() error {
			out, err := e.Psql(m.Name, "127.0.0.1", 5432, "show work_mem")
			if err == nil && out != "7MB" {
				return fmt.Errorf("work_mem %s", out)
			}
			for _, v := range []string{"rollout-before", "rollout-after"} {
				if n, err := e.Count(m.Name, v); err != nil || n != 1 {
					return fmt.Errorf("row %s: %d, %v", v, n, err)
				}
			}
			return err
		})
	}
}

// testNoSafeTarget: with every replica's node cordoned, a cordon of the
// primary's node moves nothing; the agent says why (an event, ctl
// explain); once a replica's node is uncordoned, the primary moves there.
func testNoSafeTarget(t *testing.T, e *release.Env) {
	old := e.Primary()
	var others []release.Member
	for _, m := range e.Members() {
		if m.Name != old.Name {
			others = append(others, m)
		}
	}
	for _, m := range others {
		e.C.MustKubectl("cordon", m.Node)
	}
	t.Cleanup(func() {
		for _, m := range append(others, old) {
			e.C.Kubectl("uncordon", m.Node)
		}
	})
	e.C.MustKubectl("cordon", old.Node)
	e.Eventually("ctl explain and ctl list say why the drain waits", 60*time.Second, func() error {
		out, err := ctl(e, e.AnyLive(), "explain")
		if err == nil && !strings.Contains(out, "DrainWaiting") {
			err = fmt.Errorf("no DrainWaiting in:\n%s", out)
		}
		if err != nil {
			return err
		}
		out, err = ctl(e, e.AnyLive(), "list")
		if err == nil && !strings.Contains(out, old.Name+": drain of node "+old.Node) {
			err = fmt.Errorf("ctl list does not say the drain waits:\n%s", out)
		}
		return err
	})
	if p := e.Primary(); p.Name != old.Name {
		t.Fatalf("the primary moved to %s on a cordoned node", p.Name)
	}
	e.C.MustKubectl("uncordon", others[0].Node)
	e.Eventually("the primary on the uncordoned node", release.FailoverTimeout, func() error {
		if p, ok := e.CurrentPrimary(); !ok || p.Name != others[0].Name {
			return fmt.Errorf("primary: %q, want %s", p.Name, others[0].Name)
		}
		return nil
	})
	for _, m := range append(others, old) {
		e.C.MustKubectl("uncordon", m.Node)
	}
	e.WaitHealthy(release.HealthyTimeout)
}

// testSupervisedRollout: with rollout.supervised the replicas roll, then
// the agent waits for ctl rollout --approve before the switchover.
func testSupervisedRollout(t *testing.T, e *release.Env) {
	old := e.Primary()
	before := promotions(e)
	e.Upgrade("rollout.supervised=true", "postgresql.parameters.work_mem=9MB")
	want := e.UpdateRevision()
	e.Eventually("the replicas rolled, the primary waiting for approval", 5*time.Minute, func() error {
		for _, m := range e.Members() {
			if (m.Name == old.Name) == (m.Revision == want) || !m.Ready {
				return fmt.Errorf("%s at revision %s (update %s), ready %v", m.Name, m.Revision, want, m.Ready)
			}
		}
		out, err := ctl(e, e.AnyLive(), "explain")
		if err == nil && !strings.Contains(out, "RolloutAwaitingApproval") {
			err = fmt.Errorf("ctl explain does not say the rollout waits for approval:\n%s", out)
		}
		return err
	})
	time.Sleep(2 * ttl)
	if p := e.Primary(); p.Name != old.Name || promotions(e) != before {
		t.Fatalf("a supervised rollout switched over (to %s) without approval", p.Name)
	}
	out, err := ctl(e, e.AnyLive(), "rollout", "--approve")
	if err != nil || !strings.Contains(out, "supervised, approved") {
		t.Fatalf("ctl rollout --approve: %v\n%s", err, out)
	}
	e.Eventually("every member on the new revision after the approval", 5*time.Minute, func() error {
		if err := e.HealthyErr(); err != nil {
			return err
		}
		for _, m := range e.Members() {
			if m.Revision != want {
				return fmt.Errorf("%s at revision %s", m.Name, m.Revision)
			}
		}
		return nil
	})
	if n := promotions(e) - before; n != 1 {
		t.Errorf("%d promotions in the supervised rollout, want 1", n)
	}
	if out, err := ctl(e, e.AnyLive(), "rollout", "status"); err != nil || !strings.Contains(out, "every member runs the update revision") {
		t.Errorf("ctl rollout: %v\n%s", err, out)
	}
}

// lastWrites reads a writer pod's log, retrying while the API server
// settles after a restart.
func lastWrites(e *release.Env, pod string) ([]release.Attempt, error) {
	var as []release.Attempt
	var err error
	for range 30 {
		if as, err = e.WriterLog(pod, writerLogWindow); err == nil {
			return as, nil
		}
		time.Sleep(2 * time.Second)
	}
	return nil, err
}

func restartsOf(e *release.Env, pod string) int {
	for _, m := range e.Members() {
		if m.Name == pod {
			return m.Restarts
		}
	}
	return -1
}

func nodeReady(e *release.Env, node string) string {
	out, _ := e.C.Kubectl("get", "node", node, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
	return out
}

// testForeignData: a volume holding another cluster's data is refused by
// the agent, with an event on the pod, and left untouched.
func testForeignData(t *testing.T, e *release.Env) {
	var victim release.Member
	for _, m := range e.Members() {
		if m.Role == "replica" {
			victim = m
		}
	}
	path := pvHostPath(t, e, victim.Claim)
	marker := filepath.Join(path, "data", "pgdata", "holdfast.json")
	orig, err := os.ReadFile(marker)
	if err != nil {
		t.Fatalf("read %s's marker on the host: %v", victim.Name, err)
	}
	foreign := strings.Replace(string(orig), `"cluster":"`+release.Release+`"`, `"cluster":"another"`, 1)
	if foreign == string(orig) {
		t.Fatalf("marker %s does not name cluster %s: %s", marker, release.Release, orig)
	}
	// The running agent rewrites its marker: freeze the member, write
	// another cluster's marker, then kill it; its container starts again
	// in the same pod and meets the foreign marker.
	pids := release.PodProcesses(victim.UID)
	if len(pids) == 0 {
		t.Fatalf("no processes of pod %s", victim.Name)
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
	if err := os.WriteFile(marker, []byte(foreign), 0o600); err != nil {
		t.Fatal(err)
	}
	restore := func() { _ = os.WriteFile(marker, orig, 0o600) }
	t.Cleanup(restore)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	e.Eventually("an event refusing the foreign data", 2*time.Minute, func() error {
		out, err := e.C.Kubectl("get", "events", "-n", release.NS, "--field-selector", "involvedObject.name="+victim.Name+",reason=DataDirRefused", "-o", "jsonpath={.items[*].message}")
		if err == nil && !strings.Contains(out, `belongs to cluster "another"`) {
			err = fmt.Errorf("events: %q", out)
		}
		return err
	})
	// The agent keeps refusing, restart after restart, and never touches
	// the directory.
	pgdata := filepath.Join(path, "data", "pgdata")
	before, restarts := dirDigest(t, pgdata), restartsOf(e, victim.Name)
	e.Eventually("another refused start", 2*time.Minute, func() error {
		if n := restartsOf(e, victim.Name); n <= restarts {
			return fmt.Errorf("%d restarts", n)
		}
		return nil
	})
	if after := dirDigest(t, pgdata); after != before {
		t.Errorf("the refused data directory changed")
	}
	if b, _ := os.ReadFile(marker); string(b) != foreign {
		t.Errorf("the foreign marker changed: %s", b)
	}
	for _, m := range e.Members() {
		if m.Name == victim.Name && m.Role != "unhealthy" {
			t.Errorf("%s labelled %q while it refuses to start, want unhealthy", m.Name, m.Role)
		}
	}
	restore()
	e.C.MustKubectl("delete", "pod", "-n", release.NS, victim.Name, "--wait=false")
	e.WaitHealthy(release.HealthyTimeout)
}

// pvHostPath is the host directory of the local PersistentVolume bound to claim.
func pvHostPath(t *testing.T, e *release.Env, claim string) string {
	t.Helper()
	p, err := e.VolumePath(claim)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// dirDigest summarises a directory's files (names, sizes, modification
// times) to tell whether anything changed.
func dirDigest(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %d %d\n", p, fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return b.String()
}
