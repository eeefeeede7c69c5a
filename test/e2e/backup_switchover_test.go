package e2e

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/backup"
	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/testutil"
)

// Bounds of the backup-during-switchover test.
const (
	// switchoverBackupRows is the size of the table that makes the
	// backup's copy last several seconds (about 150 MB; with one
	// pgBackRest process and gzip, see TestBackupDuringSwitchover).
	switchoverBackupRows = 1_500_000
	// copyStartWait bounds the wait for the backup's copy to begin.
	copyStartWait = 2 * time.Minute
	// switchoverBackupWait bounds ctl backup, its retry included.
	switchoverBackupWait = 5 * time.Minute
	// switchoverAttempts is how many times the test runs its scenario
	// when the primary cancels the switchover.
	switchoverAttempts = 3
)

// backupLabelRe finds the label in ctl backup's "backup LABEL (full)
// finished" line.
var backupLabelRe = regexp.MustCompile(`backup (\d{8}-\d{6}F) \(full\) finished`)

// TestBackupDuringSwitchover: issue 12's "a backup taken while a
// switchover happens either completes consistently or fails clearly and
// is retried — never a backup that cannot restore". A 2-member cluster
// with about 150 MB of data; `ctl backup --type full` runs from the
// replica (pgBackRest's backup-standby: the copy from the replica, the
// backup started and stopped on the primary), and once pgBackRest copies
// files, `ctl switchover` makes that replica the primary and demotes the
// primary the backup was started on. Then either the backup completed, or
// it failed saying the primary changed (in ctl backup's output and in GET
// /backups of the member that ran it) and ctl backup took it again. The
// backup ctl backup reports is restored (`up --restore-from --backup-set
// LABEL`, to the latest point): it holds every row, those written after
// the switchover included.
//
// To make the copy last long enough for the switchover to land inside
// it, the agents run pgBackRest with one process and gzip
// (PGBACKREST_PROCESS_MAX, PGBACKREST_COMPRESS_TYPE in their environment,
// which pgBackRest prefers to its configuration file).
func TestBackupDuringSwitchover(t *testing.T) {
	needPgbackrest(t)
	t.Setenv("PGBACKREST_PROCESS_MAX", "1")
	t.Setenv("PGBACKREST_COMPRESS_TYPE", "gz")
	repo := filepath.Join(testutil.Dir(t), "repo")
	c := StartCluster(t, 2, "--backup-repo", repo)
	c.WaitFor("healthy", 60*time.Second, Healthy(2))
	primary := c.Primary()
	replica := otherThan(c, primary)
	execLong(t, c, primary, "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS a, md5((g * 7)::text) AS b FROM generate_series(1, $1::int) g", switchoverBackupRows)
	c.Exec(primary, "CREATE TABLE pitr (v text)")
	c.Exec(primary, "INSERT INTO pitr VALUES ('A')")
	c.WaitCount(replica, "pitr", 1, time.Minute)
	c.WaitCount(replica, "big", switchoverBackupRows, time.Minute)

	var done chan ctlResult
	var copySeen time.Time // the interrupted attempt had started by then
	for attempt := 1; ; attempt++ {
		done = make(chan ctlResult, 1)
		before := backupDirs(repo, c.Layout.Backup.Stanza)
		go func() {
			out, err := c.ctlRun(switchoverBackupWait, "backup", "--type", "full")
			done <- ctlResult{out, err}
		}()
		copying := waitBackupCopying(t, repo, c.Layout.Backup.Stanza, before, done)
		copySeen = time.Now()
		t.Logf("pgBackRest copies (%s); switchover to %s", copying, replica)
		out, err := c.ctlRun(2*time.Minute, "switchover", "--to", replica)
		if err == nil {
			break
		}
		// On a loaded machine the standbys may not confirm the final WAL
		// in time; the primary then cancels the switchover and starts
		// again, by design. Let that backup end, and try the scenario
		// again.
		if !strings.Contains(out, "was cancelled by") || attempt == switchoverAttempts {
			t.Fatalf("ctl switchover (attempt %d): %v\n%s", attempt, err, out)
		}
		r := <-done
		t.Logf("the switchover was cancelled (attempt %d): %s\nthat backup ended with %v:\n%s", attempt, strings.TrimSpace(out), r.err, r.out)
		c.WaitFor("healthy again", 90*time.Second, Healthy(2))
	}
	c.WaitFor(replica+" leads with "+primary+" streaming", 90*time.Second, func(l ctl.ClusterList) bool {
		return l.Leader == replica && Healthy(2)(l)
	})
	c.Exec(replica, "INSERT INTO pitr VALUES ('B')")

	res := <-done
	t.Logf("ctl backup:\n%s", strings.TrimSpace(res.out))
	if res.err != nil {
		t.Fatalf("ctl backup failed for good (it should complete, or fail clearly and be taken again): %v\n%s", res.err, res.out)
	}
	m := backupLabelRe.FindStringSubmatch(res.out)
	if m == nil {
		t.Fatalf("ctl backup names no finished full backup:\n%s", res.out)
	}
	label := m[1]
	if strings.Contains(res.out, "taking the backup again") {
		// The first attempt failed: clearly, in ctl backup's words and in
		// the API of the member that ran it.
		if !strings.Contains(res.out, "the primary changed from "+primary+" to "+replica) {
			t.Errorf("the failed attempt does not say that the primary changed:\n%s", res.out)
		}
		code, body, err := c.apiDo(replica, "GET", "/backups", "", nil)
		var l backup.List
		if err != nil || code != 200 || json.Unmarshal([]byte(body), &l) != nil {
			t.Fatalf("GET /backups on %s: %d %v\n%s", replica, code, err, body)
		}
		// Unless the second attempt ran on the same member (then its last
		// job is that one, finished).
		switch {
		case l.Job != nil && !l.Job.Running && l.Job.Error == "" && l.Job.Started.After(copySeen):
			t.Logf("%s ran the second attempt too", replica)
		case l.Job == nil || !l.Job.PrimaryChanged || !strings.Contains(l.Job.Error, "take it again"):
			t.Errorf("%s's last job does not say the primary changed: %+v", replica, l.Job)
		}
		t.Logf("the interrupted backup failed clearly and was taken again as %s", label)
	} else {
		t.Logf("the backup %s completed across the switchover", label)
	}
	// Only complete backups are listed; the one ctl backup named is one.
	st := backupsJSON(t, c)
	var labels []string
	for _, b := range st.Backups {
		labels = append(labels, b.Label)
		if b.Error {
			t.Errorf("backup %s is listed with an error", b.Label)
		}
	}
	if !slices.Contains(labels, label) {
		t.Fatalf("ctl backups lists %v, not %s", labels, label)
	}

	c.waitArchived(replica)
	restored := restore(t, local.ConfigFile(c.Dir, replica), "--backup-set", label)
	if got := rows(t, restored); !slices.Equal(got, []string{"A", "B"}) {
		t.Fatalf("restore of %s to the latest point: rows %v, want [A B]", label, got)
	}
	n, err := restored.CountWithin(restored.Primary(), "big", bulkStatementTimeout)
	if err != nil || n != switchoverBackupRows {
		t.Fatalf("restore of %s: big holds %d rows (%v), want %d", label, n, err, switchoverBackupRows)
	}
	t.Logf("restore of %s holds every row", label)
}

// ctlResult is a holdfast ctl command's output and error.
type ctlResult struct {
	out string
	err error
}

// backupDirs lists the full backups' directories in a POSIX repository.
func backupDirs(repo, stanza string) map[string]bool {
	ms, _ := filepath.Glob(filepath.Join(repo, "backup", stanza, "*F"))
	set := map[string]bool{}
	for _, m := range ms {
		set[m] = true
	}
	return set
}

// waitBackupCopying waits until a full backup's directory in the POSIX
// repository, other than those in before, holds copied data files, and
// returns it. It fails the test when ctl backup ends (reported on done)
// before that.
func waitBackupCopying(t *testing.T, repo, stanza string, before map[string]bool, done <-chan ctlResult) string {
	t.Helper()
	deadline := time.Now().Add(copyStartWait)
	for {
		ms, _ := filepath.Glob(filepath.Join(repo, "backup", stanza, "*F", "pg_data", "base", "*", "*"))
		for _, m := range ms {
			if dir := filepath.Dir(filepath.Dir(filepath.Dir(m))); !before[filepath.Dir(dir)] {
				return dir
			}
		}
		select {
		case r := <-done:
			t.Fatalf("ctl backup ended before its copy was seen: %v\n%s", r.err, r.out)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no backup copying into %s within %s", repo, copyStartWait)
		}
	}
}

// backupsJSON is ctl backups' stanza.
func backupsJSON(t *testing.T, c *Cluster) backup.Stanza {
	t.Helper()
	out, err := c.ctlRun(time.Minute, "backups", "-o", "json")
	if err != nil {
		t.Fatalf("ctl backups: %v\n%s", err, out)
	}
	var l backup.List
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("ctl backups -o json: %v\n%s", err, out)
	}
	return l.Stanza
}
