package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/internal/testutil"
	"github.com/holdfast/holdfast/internal/testutil/pgtest"
)

// Bounds of TestSegmentArchivedBeforeBackupHistory.
const (
	// archiveOrderWait bounds each wait for PostgreSQL's archiver.
	archiveOrderWait = time.Minute
	// archiveOrderTimeout bounds the whole test, PostgreSQL's start
	// included.
	archiveOrderTimeout = 5 * time.Minute
)

// TestSegmentArchivedBeforeBackupHistory: the check waitArchived relies
// on (segmentArchived) sees a segment archived even when the backup
// history file of a backup that spans a WAL switch was archived after
// it — pg_stat_archiver's last_archived_wal then names that history file
// (START.OFFSET.backup), which sorts before the segment. PostgreSQL's
// archiver orders what it finds in one scan of archive_status by name,
// but when it scans between pg_backup_stop's WAL switch and the history
// file's .ready, it archives the switch's segment first (seen in e2e runs
// of TestBackupDuringSwitchover: the new primary's archive_status listed
// the stop segment done while last_archived_wal named the backup's
// history file, for the 90 s waitArchived waited). The test makes that
// order certain: the archive command refuses the history file while a
// hold file exists, and the history file's .ready is set aside until the
// segment is archived.
func TestSegmentArchivedBeforeBackupHistory(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), archiveOrderTimeout)
	defer cancel()
	dir := testutil.Dir(t)
	arch := filepath.Join(dir, "archive")
	hold := filepath.Join(dir, "hold")
	if err := os.MkdirAll(arch, 0o777); err != nil {
		t.Fatal(err)
	}
	// Both written by PostgreSQL's account when the test runs as root.
	for _, d := range []string{dir, arch} {
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(hold, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e, port := pgtest.StartWith(ctx, t, "pg-0", "archive-order", map[string]string{"archive_mode": "on",
		"archive_command": fmt.Sprintf("case %%f in *.backup) test ! -e %s && cp %%p %s/%%f ;; *) cp %%p %s/%%f ;; esac", hold, arch, arch)})
	data := e.DataDir()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=archive-order dbname=postgres sslmode=disable", port))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(context.Background())
	run := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec := func(sql string) string {
		t.Helper()
		var out string
		if err := conn.QueryRow(ctx, sql).Scan(&out); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return out
	}
	lastArchived := func() string {
		return exec("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
	}
	wait := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(archiveOrderWait); !cond(); {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %s (last archived %q)", what, archiveOrderWait, lastArchived())
			}
			exec("SELECT pg_reload_conf()::text") // wakes the archiver
			time.Sleep(200 * time.Millisecond)
		}
	}
	status := filepath.Join(data, "pg_wal", "archive_status")

	// A backup that spans a WAL switch.
	run("CREATE TABLE t (v int)")
	exec("SELECT pg_backup_start('archive order', true)::text")
	run("INSERT INTO t VALUES (1)")
	exec("SELECT pg_switch_wal()::text")
	run("INSERT INTO t VALUES (2)")
	seg := exec("SELECT pg_walfile_name(lsn) FROM pg_backup_stop(false)")
	ready, _ := filepath.Glob(filepath.Join(status, "*.backup.ready"))
	if len(ready) != 1 {
		t.Fatalf("backup history files waiting for the archiver: %v, want one", ready)
	}
	aside := strings.TrimSuffix(ready[0], ".ready") + ".aside"
	if err := os.Rename(ready[0], aside); err != nil {
		t.Fatal(err)
	}
	wait("the stop segment "+seg+" archived first", func() bool { return lastArchived() == seg })
	if err := os.Rename(aside, ready[0]); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(hold); err != nil {
		t.Fatal(err)
	}
	wait("the backup history file archived after "+seg, func() bool { return strings.HasSuffix(lastArchived(), ".backup") })

	last := lastArchived()
	if last >= seg {
		t.Fatalf("last archived %s sorts at or after %s: the order this test needs did not happen", last, seg)
	}
	ok, err := segmentArchived(ctx, conn, seg)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Fatalf("%s is archived (archive_status lists it done), yet segmentArchived says no (last_archived_wal %s)", seg, last)
	}
	t.Logf("%s archived before %s; segmentArchived sees it", seg, last)
}
