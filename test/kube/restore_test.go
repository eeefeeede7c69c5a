//go:build linux

package kube_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/testutil/release"
)

// Bounds of the restore step, generous for a loaded two-core machine.
const (
	// restoreTimeout bounds the second release's bootstrap: pod scheduled,
	// backup restored, WAL replayed to the target, promoted, labelled.
	restoreTimeout = 8 * time.Minute
	// clockStep separates the rows from the noted target time: the target
	// has whole seconds, so each row is at least a second away from it.
	clockStep = 2 * time.Second
)

// restored is the second release, made from the first one's backups.
const restored = "pgrestored"

// testRestoreFromBackup: the chart's bootstrap.restore values on a real
// cluster. A second release, in the same namespace, is bootstrapped from
// the first release's repository (the claim Backups made, mounted
// read-only) to a time between two archived rows: its primary holds the
// earlier row and not the later one, it has a timeline and roles of its
// own, and nothing of it archives into the source's stanza. The step
// removes its release and its claims; the source is untouched.
func testRestoreFromBackup(t *testing.T, e *release.Env) {
	l, err := backups(e)
	if err != nil {
		t.Fatal(err)
	}
	stanza := l.Stanza.Name
	if stanza == "" || len(l.Stanza.Backups) == 0 {
		t.Fatalf("the source lists no stanza or no backup to restore from: %+v", l.Stanza)
	}
	primary := e.Primary().Name
	waitArchived(t, e, e.C.Dir+"/backup-repo", switchWAL(t, e, primary, "restore-kept"))
	time.Sleep(clockStep)
	target, err := e.Psql(primary, "127.0.0.1", 5432, `select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')`)
	if err != nil {
		t.Fatalf("read the primary's clock: %v\n%s", err, target)
	}
	if _, err := time.Parse(time.RFC3339, target); err != nil {
		t.Fatalf("the primary's clock gave %q: %v", target, err)
	}
	time.Sleep(clockStep)
	// The later row's segment archived too: recovery to a time must see a
	// commit after it to stop there.
	waitArchived(t, e, e.C.Dir+"/backup-repo", switchWAL(t, e, primary, "restore-dropped"))
	t.Logf("restoring stanza %s of %s to %s", stanza, release.Release, target)

	claims := []string{"data-" + restored + "-0"}
	pod := restored + "-0"
	t.Cleanup(func() {
		if t.Failed() {
			// What a person needs after a failed restore: the agent's
			// log and PostgreSQL's recovery log.
			out, _ := e.C.Kubectl("logs", "-n", release.NS, pod, "-c", "holdfast", "--tail", "60")
			t.Logf("logs of %s:\n%s", pod, out)
			out, _ = e.C.Kubectl("exec", "-n", release.NS, pod, "-c", "holdfast", "--", "tail", "-n", "40", "/var/lib/holdfast/data/bootstrap-restore/recovery.log")
			t.Logf("recovery log of %s:\n%s", pod, out)
		}
		if err := e.UninstallOther(restored); err != nil {
			t.Logf("%v", err)
		}
		for _, c := range claims {
			if out, err := e.C.Kubectl("delete", "pvc", "-n", release.NS, c, "--ignore-not-found", "--wait=false"); err != nil {
				t.Logf("delete claim %s: %v\n%s", c, err, out)
			}
		}
	})
	if err := e.InstallOther(restored, append(testValues,
		"replicas=1", "proxy.enabled=false", "resources.requests.cpu=100m", "resources.requests.memory=256Mi",
		"bootstrap.restore.enabled=true",
		"bootstrap.restore.posix.existingClaim="+backupClaim,
		"bootstrap.restore.stanza="+stanza,
		"bootstrap.restore.targetTime="+target)...); err != nil {
		t.Fatal(err)
	}
	e.Eventually(pod+" restored, ready and labelled primary", restoreTimeout, func() error {
		out, err := e.C.Kubectl("get", "pod", "-n", release.NS, pod, "-o",
			`jsonpath={.status.phase} {.status.conditions[?(@.type=="Ready")].status} {.metadata.labels.holdfast\.io/role}`)
		if err == nil && strings.TrimSpace(out) != "Running True primary" {
			err = fmt.Errorf("phase, ready, role: %q", out)
		}
		return err
	})
	if out, err := e.Psql(pod, "127.0.0.1", 5432, "select pg_is_in_recovery()"); err != nil || out != "f" {
		t.Fatalf("%s: pg_is_in_recovery() = %q, %v; want a primary", pod, out, err)
	}
	for v, want := range map[string]int{"restore-kept": 1, "restore-dropped": 0, "up": 1} {
		if n, err := e.Count(pod, v); err != nil || n != want {
			t.Errorf("%s holds %d rows %q (%v), want %d", pod, n, v, err, want)
		}
	}
	// Its own cluster: the roles carry this release's passwords (the psql
	// above logged in with them), and no backup section or archive
	// command names the source's stanza.
	cfg := e.C.MustKubectl("exec", "-n", release.NS, pod, "-c", "holdfast", "--", "cat", "/etc/holdfast/holdfast.yaml")
	if regexp.MustCompile(`(?m)^backup:`).MatchString(cfg) {
		t.Errorf("%s has a backup section although its backups are off:\n%s", pod, cfg)
	}
	archive, err := e.Psql(pod, "127.0.0.1", 5432, "show archive_command")
	if err != nil {
		t.Fatalf("%s: show archive_command: %v", pod, err)
	}
	if regexp.MustCompile(`stanza[= ]+['"]?` + regexp.QuoteMeta(stanza) + `($|[^-a-zA-Z0-9_])`).MatchString(archive) {
		t.Errorf("%s archives into the source's stanza %s: archive_command %q", pod, stanza, archive)
	}
	// The source is untouched: still healthy, still holding both rows.
	e.WaitHealthy(release.HealthyTimeout)
	for _, v := range []string{"restore-kept", "restore-dropped"} {
		if n, err := e.Count(e.Primary().Name, v); err != nil || n != 1 {
			t.Errorf("the source's primary holds %d rows %q (%v), want 1", n, v, err)
		}
	}
}
