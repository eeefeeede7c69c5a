//go:build linux

package kube_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/backup"
	"github.com/holdfast/holdfast/internal/testutil/release"
)

// Timeouts of the backup step, generous for a loaded two-core machine.
const (
	// backupRolloutTimeout bounds the role-aware rollout that the upgrade
	// with the backup values starts (three members, one switchover).
	backupRolloutTimeout = 8 * time.Minute
	// archiveTimeout bounds a switched WAL segment's arrival in the
	// repository (archive_command runs at once; a retry after a refused
	// push comes within a minute).
	archiveTimeout = 2 * time.Minute
	// scheduledBackupTimeout bounds a scheduled backup: the leader judges
	// the schedule every 15 s; the backup of the small test database
	// takes seconds, the first one also waits for the stanza.
	scheduledBackupTimeout = 4 * time.Minute
)

// backupClaim is the ReadWriteMany claim of the shared backup repository.
const backupClaim = release.Release + "-backup-repo"

// backupRepoUID is the image's postgres account, which owns the repository.
const backupRepoUID = 999

// testBackups: the chart's backup values on a real cluster. A directory
// repository on one ReadWriteMany volume that every member mounts (a
// hostPath PersistentVolume: every node of the test cluster runs on this
// machine, so one host directory is what NFS would be elsewhere). After
// helm upgrade with backup.enabled (a role-aware rollout), the primary
// archives WAL (a switched segment lands in the repository), the leader's
// agent takes the backup the schedule makes due with no CronJob, ctl
// backup takes one on demand — both on a replica, which reaches the
// primary through its pgBackRest TLS server (the chart's certificate,
// mutual TLS), while the primary runs no backup itself — ctl backups lists them with their WAL and
// time range, and archiving follows a switchover to the new primary.
func testBackups(t *testing.T, e *release.Env) {
	repo := filepath.Join(e.C.Dir, "backup-repo")
	if err := os.Mkdir(repo, 0o750); err != nil {
		t.Fatalf("create the repository directory: %v", err)
	}
	if err := os.Chown(repo, backupRepoUID, backupRepoUID); err != nil {
		t.Fatalf("chown the repository directory: %v", err)
	}
	e.C.Apply(fmt.Sprintf(`apiVersion: v1
kind: PersistentVolume
metadata:
  name: %[1]s
spec:
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: %[2]s, type: Directory}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: %[1]s
  namespace: %[3]s
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ""
  volumeName: %[1]s
  resources:
    requests: {storage: 2Gi}
`, backupClaim, repo, release.NS))
	e.Eventually("the backup claim bound", time.Minute, func() error {
		out, err := e.C.Kubectl("get", "pvc", "-n", release.NS, backupClaim, "-o", "jsonpath={.status.phase}")
		if err == nil && strings.TrimSpace(out) != "Bound" {
			err = fmt.Errorf("phase %q", out)
		}
		return err
	})

	// The upgrade changes the pod template (the repository's volume) and
	// the agents' config: the primary's agent rolls the members.
	e.Upgrade("backup.enabled=true", "backup.posix.existingClaim="+backupClaim, "backup.retentionFull=2", "rollout.supervised=false")
	want := e.UpdateRevision()
	start := time.Now()
	e.WaitRolledOut("every member on the revision with backups", want, backupRolloutTimeout)
	t.Logf("rollout with the backup values took %v", time.Since(start).Round(time.Second))
	for _, m := range e.Members() {
		out := e.C.MustKubectl("exec", "-n", release.NS, m.Name, "-c", "holdfast", "--", "sh", "-c",
			"test -d /var/lib/holdfast-backup && grep -A12 '^backup:' /etc/holdfast/holdfast.yaml && pgbackrest version")
		if !strings.Contains(out, "repository: \"/var/lib/holdfast-backup\"") || !strings.Contains(out, "pgBackRest 2.") {
			t.Fatalf("%s: no backup section naming the shared volume, or no pgbackrest:\n%s", m.Name, out)
		}
		// pgBackRest's TLS server (≥ 2.37), with the chart's certificate.
		if !strings.Contains(out, "cert_file: /etc/holdfast/tls/tls.crt") || !strings.Contains(out, "port: 8432") {
			t.Fatalf("%s: no backup.tls section (pgBackRest's TLS server):\n%s", m.Name, out)
		}
	}

	// WAL archiving from the primary: a row, a switched segment, the
	// segment in the repository.
	primary := e.Primary()
	seg := switchWAL(t, e, primary.Name, "backup-archived")
	waitArchived(t, e, repo, seg)

	// Every member registered its pgBackRest TLS server, and the cluster
	// is healthy (the replicas stream) before a backup is due: else the
	// backup is rightly taken on the primary.
	cms := e.C.MustKubectl("get", "configmap", "-n", release.NS, "-o", "jsonpath={range .items[*]}{.data.member}{\"\\n\"}{end}")
	if n := strings.Count(cms, `"backup_tls_port":8432`); n != len(e.Members()) {
		t.Fatalf("%d member registrations name the TLS server's port 8432, want %d:\n%s", n, len(e.Members()), cms)
	}
	e.WaitHealthy(release.HealthyTimeout)
	primary = e.Primary()

	// A scheduled backup, taken by the agents: no backup exists, so a
	// full one is due as soon as the schedule is set.
	if out, err := ctl(e, e.AnyLive(), "edit-config", "--set", "backup_schedule=full=168h"); err != nil {
		t.Fatalf("ctl edit-config --set backup_schedule: %v\n%s", err, out)
	}
	var l backup.List
	e.Eventually("a scheduled full backup listed", scheduledBackupTimeout, func() error {
		var err error
		if l, err = backups(e); err != nil {
			return err
		}
		if len(l.Stanza.Backups) == 0 {
			return fmt.Errorf("no backup yet (stanza %s: %s)", l.Stanza.Name, l.Stanza.Status)
		}
		return nil
	})
	first := l.Stanza.Backups[0]
	if first.Type != "full" || first.Error {
		t.Fatalf("the scheduled backup is %+v, want a full one without error", first)
	}
	checkSet(t, first)
	// Taken on a replica: pgBackRest records backup-standby in the
	// manifest, the leader's agent logged which member it started it on,
	// and the primary never ran a backup of its own.
	checkStandbyBackup(t, repo, l.Stanza.Name, first.Label)
	e.Eventually("the leader's log names the replica that took the scheduled backup", time.Minute, func() error {
		log, err := e.C.Kubectl("logs", "-n", release.NS, primary.Name, "-c", "holdfast")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(log, "\n") {
			if !strings.Contains(line, "scheduled backup started") {
				continue
			}
			if strings.Contains(line, "from_standby=true") && !strings.Contains(line, "on="+primary.Name+" ") {
				t.Logf("the leader %s: %s", primary.Name, line)
				return nil
			}
			return fmt.Errorf("the scheduled backup was not started on a replica: %s", line)
		}
		return fmt.Errorf("no \"scheduled backup started\" line in %s's log", primary.Name)
	})

	// On demand: ctl backup runs it on a replica, through the primary's
	// pgBackRest TLS server (every member has its own address here, see
	// ctl.BackupSource), and waits for it.
	e.WaitHealthy(release.HealthyTimeout)
	out, err := ctl(e, e.AnyLive(), "backup", "--type", "incr")
	if err != nil || !strings.Contains(out, "backup started on the replica ") || strings.Contains(out, "replica "+e.Primary().Name+"\n") || !strings.Contains(out, "finished in") {
		t.Fatalf("ctl backup --type incr: %v\n%s", err, out)
	}
	t.Logf("ctl backup --type incr:\n%s", out)
	if l, err = backups(e); err != nil {
		t.Fatal(err)
	}
	if n := len(l.Stanza.Backups); n != 2 {
		t.Fatalf("%d backups listed after the on-demand one, want 2: %+v", n, l.Stanza.Backups)
	}
	second := l.Stanza.Backups[1]
	if second.Type != "incr" || second.Prior != first.Label || second.Error {
		t.Errorf("the on-demand backup is %+v, want an incr on %s", second, first.Label)
	}
	checkSet(t, second)
	checkStandbyBackup(t, repo, l.Stanza.Name, second.Label)
	// The primary served no backup: it never ran pgBackRest's backup
	// command (its log of that command does not exist).
	if out, err := e.C.Kubectl("exec", "-n", release.NS, primary.Name, "-c", "holdfast", "--", "sh", "-c",
		"ls /var/lib/holdfast/data/pgbackrest/log/; test ! -e /var/lib/holdfast/data/pgbackrest/log/"+l.Stanza.Name+"-backup.log"); err != nil {
		t.Errorf("the primary %s ran a backup itself: %v\n%s", primary.Name, err, out)
	}
	if l.Stanza.WALMin == "" || l.Stanza.WALMax == "" || l.Stanza.WALMax < second.WALStop {
		t.Errorf("archive range %s..%s, want one reaching the last backup's %s", l.Stanza.WALMin, l.Stanza.WALMax, second.WALStop)
	}
	table, err := ctl(e, e.AnyLive(), "backups")
	if err != nil {
		t.Fatalf("ctl backups: %v\n%s", err, table)
	}
	for _, w := range []string{first.Label, second.Label, first.WALStart, second.WALStop, "restorable from ", "schedule full=168h: next backup due at "} {
		if !strings.Contains(table, w) {
			t.Errorf("ctl backups does not show %q:\n%s", w, table)
		}
	}
	t.Logf("ctl backups:\n%s", table)

	// Archiving follows a switchover: the new primary's segments (on its
	// new timeline) reach the repository.
	old := e.Primary()
	if out, err := ctl(e, e.AnyLive(), "switchover"); err != nil {
		t.Fatalf("ctl switchover: %v\n%s", err, out)
	}
	e.Eventually("another member labelled primary", release.FailoverTimeout, func() error {
		if p, ok := e.CurrentPrimary(); !ok || p.Name == old.Name {
			return fmt.Errorf("primary: %q", p.Name)
		}
		return nil
	})
	e.WaitHealthy(release.HealthyTimeout)
	next := e.Primary()
	seg2 := switchWAL(t, e, next.Name, "backup-after-switchover")
	if seg2[:8] <= seg[:8] {
		t.Errorf("the new primary %s switched segment %s, not on a timeline after %s's", next.Name, seg2, seg)
	}
	waitArchived(t, e, repo, seg2)
	e.Eventually("ctl backups shows the new primary's archive check", time.Minute, func() error {
		out, err := ctl(e, e.AnyLive(), "backups")
		if err == nil && !strings.Contains(out, "archive check on the primary "+next.Name) {
			err = fmt.Errorf("no archive check by %s:\n%s", next.Name, out)
		}
		return err
	})
}

// checkStandbyBackup checks that pgBackRest took backup label from a
// standby: its manifest in the repository on the host records
// backup-standby.
func checkStandbyBackup(t *testing.T, repo, stanza, label string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "backup", stanza, label, "backup.manifest"))
	if err != nil {
		t.Fatalf("the backup %s is not in the shared repository on the host: %v", label, err)
	}
	if !strings.Contains(string(b), "option-backup-standby=true") {
		t.Errorf("the backup %s was not taken from a standby (its manifest has no option-backup-standby=true)", label)
	}
}

// switchWAL writes a row v on the primary, switches its WAL segment and
// returns the switched segment's name, which holds the row's commit: the
// insert is committed before the switch (in one implicit transaction the
// commit would land in the next, unarchived segment, and a recovery to a
// time after the row would find no commit past its target).
func switchWAL(t *testing.T, e *release.Env, primary, v string) string {
	t.Helper()
	out, err := e.Psql(primary, "127.0.0.1", 5432, "begin; insert into t(v) values ('"+v+"'); commit; select pg_walfile_name(pg_switch_wal())")
	if err != nil {
		t.Fatalf("insert and pg_switch_wal on %s: %v\n%s", primary, err, out)
	}
	seg := strings.TrimSpace(out[strings.LastIndex(out, "\n")+1:])
	if len(seg) != 24 {
		t.Fatalf("pg_walfile_name on %s gave %q", primary, out)
	}
	return seg
}

// waitArchived waits for WAL segment seg in the repository's archive on
// the host (pgBackRest stores it as archive/STANZA/ID/PREFIX/SEG-HASH.EXT).
func waitArchived(t *testing.T, e *release.Env, repo, seg string) {
	t.Helper()
	e.Eventually("segment "+seg+" in the repository", archiveTimeout, func() error {
		found, err := filepath.Glob(filepath.Join(repo, "archive", "*", "*", seg[:16], seg+"-*"))
		if err == nil && len(found) == 0 {
			err = fmt.Errorf("not in %s/archive", repo)
		}
		return err
	})
}

// backups is ctl backups -o json, from any live member.
func backups(e *release.Env) (backup.List, error) {
	var l backup.List
	out, err := ctl(e, e.AnyLive(), "backups", "-o", "json")
	if err != nil {
		return l, fmt.Errorf("ctl backups: %v: %s", err, out)
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		return l, fmt.Errorf("ctl backups -o json: %v: %s", err, out)
	}
	return l, nil
}

// checkSet checks what ctl backups reports of one backup: its WAL range
// and its time range.
func checkSet(t *testing.T, b backup.Set) {
	t.Helper()
	if len(b.WALStart) != 24 || len(b.WALStop) != 24 || b.WALStop < b.WALStart {
		t.Errorf("backup %s: WAL range %q..%q", b.Label, b.WALStart, b.WALStop)
	}
	if b.Start.IsZero() || b.Stop.Before(b.Start) || b.Size <= 0 || b.RepoSize <= 0 {
		t.Errorf("backup %s: started %v, stopped %v, %d bytes, %d in the repository", b.Label, b.Start, b.Stop, b.Size, b.RepoSize)
	}
}
