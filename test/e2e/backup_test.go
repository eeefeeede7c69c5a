package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sys/unix"

	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/testutil"
)

// archiveWait bounds how long a switched WAL segment may take to reach the
// repository.
const archiveWait = 90 * time.Second

// TestBackupPointInTimeRestore: a cluster archiving into a pgBackRest
// repository; a backup from the replica; row A, a noted time, row B;
// a restore to that time holds A and not B; a switchover, then row C on
// the new primary; a restore to the latest point holds A, B and C, and
// the old primary holds no archive grant. Bad restores are refused with
// nothing created.
func TestBackupPointInTimeRestore(t *testing.T) {
	c, _ := startBackupCluster(t, 2)
	primary := c.Primary()
	c.Exec(primary, "CREATE TABLE pitr (v text)")
	c.Exec(primary, "INSERT INTO pitr VALUES ('A')")

	target := c.backupThenTarget(primary, "the replica")

	out, err := c.ctlRun(time.Minute, "backups")
	if err != nil || !strings.Contains(out, "full") || !strings.Contains(out, "restorable from") {
		t.Fatalf("ctl backups: %v\n%s", err, out)
	}

	srcConfig := local.ConfigFile(c.Dir, primary)
	// Refusals change nothing.
	for _, bad := range [][]string{
		{"--target-time", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)},
		{"--target-time", "2000-01-01T00:00:00Z"},
	} {
		dir := filepath.Join(testutil.Dir(t), "refused")
		out, err := run(t, time.Minute, append([]string{"up", "--detach", "--dir", dir, "--members", "1", "--restore-from", srcConfig}, bad...)...)
		if err == nil {
			t.Fatalf("up --restore-from %v accepted:\n%s", bad, out)
		}
		if _, err := os.Stat(local.LayoutFile(dir)); err == nil {
			t.Errorf("up --restore-from %v refused but created a cluster: %s", bad, out)
		}
		t.Logf("refused as expected: %s", strings.TrimSpace(out))
	}

	pitr := restore(t, srcConfig, "--target-time", target.Format(time.RFC3339Nano))
	if got := rows(t, pitr); !slices.Equal(got, []string{"A"}) {
		t.Fatalf("restore to %s: rows %v, want [A]", target.Format(time.RFC3339Nano), got)
	}
	if pitr.Layout.Backup == nil || pitr.Layout.Backup.Stanza == c.Layout.Backup.Stanza {
		t.Fatalf("the restored cluster's stanza %+v must differ from the source's %+v", pitr.Layout.Backup, c.Layout.Backup)
	}
	pitr.Down()

	// A switchover: rows committed after it reach the archive, and the
	// old primary stops archiving.
	replica := ""
	for _, m := range c.DBMembers() {
		if m != primary {
			replica = m
		}
	}
	if out, err := c.ctlRun(2*time.Minute, "switchover", "--to", replica); err != nil {
		t.Fatalf("ctl switchover: %v\n%s", err, out)
	}
	c.WaitFor("the replica leads with the old primary streaming", 90*time.Second, func(l ctl.ClusterList) bool { return l.Leader == replica && Healthy(2)(l) })
	c.Exec(replica, "INSERT INTO pitr VALUES ('C')")
	c.waitArchived(replica)
	if _, err := os.Stat(filepath.Join(local.MemberDir(c.Dir, primary), "archive-grant")); err == nil {
		t.Errorf("the old primary %s still holds an archive grant", primary)
	}

	latest := restore(t, srcConfig)
	if got := rows(t, latest); !slices.Equal(got, []string{"A", "B", "C"}) {
		t.Fatalf("restore to the latest point: rows %v, want [A B C]", got)
	}
}

// restore builds a one-member cluster from the source's backups.
func restore(t *testing.T, srcConfig string, target ...string) *Cluster {
	t.Helper()
	r := &Cluster{t: t, Dir: filepath.Join(testutil.Dir(t), "restored")}
	t.Cleanup(func() {
		if t.Failed() {
			r.DumpLogs()
		}
		run(t, 3*time.Minute, "down", "--dir", r.Dir)
	})
	out, err := run(t, 5*time.Minute, append([]string{"up", "--detach", "--dir", r.Dir, "--members", "1", "--wait", "90s", "--restore-from", srcConfig}, target...)...)
	if err != nil {
		recovery, _ := os.ReadFile(filepath.Join(r.Dir, "restore", "recovery.log"))
		if len(recovery) > 4000 {
			recovery = recovery[len(recovery)-4000:]
		}
		t.Fatalf("up --restore-from %v: %v\n%s\nrecovery.log (tail):\n%s", target, err, out, recovery)
	}
	l, err := local.ReadLayout(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	r.Layout = l
	return r
}

// waitArchived switches WAL on the primary and waits until the segment
// holding everything committed so far is in the archive.
//
// The segment counts as archived when PostgreSQL marked it done
// (pg_wal/archive_status/SEG.done: its archive_command succeeded for it)
// or when pg_stat_archiver's last archived file sorts at or after it.
// The statistics alone are not enough: last_archived_wal names the last
// file archived, not the newest segment. A backup that spans a WAL switch
// ends with pg_backup_stop switching WAL, then writing its history file
// (START.OFFSET.backup); the archiver, woken by the switch, may archive
// the stop segment before it sees the history file, and archive the
// history file last. last_archived_wal then sorts before the stop
// segment, which is archived — and, when nothing was written since,
// pg_switch_wal does nothing and names that very segment
// (TestSegmentArchivedBeforeBackupHistory).
func (c *Cluster) waitArchived(primary string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), archiveWait)
	defer cancel()
	conn, err := c.Connect(ctx, primary)
	if err != nil {
		c.t.Fatal(err)
	}
	defer conn.Close(ctx)
	var seg string
	if err := conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_switch_wal())").Scan(&seg); err != nil {
		c.t.Fatal(err)
	}
	for {
		ok, err := segmentArchived(ctx, conn, seg)
		if err != nil {
			c.t.Fatal(err)
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("segment %s not archived by %s within %s\n%s", seg, primary, archiveWait, c.archiveDiagnosis(primary))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// segmentArchived says whether the PostgreSQL on conn archived the
// complete segment seg (see waitArchived): it marked it done, or its last
// archived file sorts at or after it.
func segmentArchived(ctx context.Context, conn *pgx.Conn, seg string) (bool, error) {
	var last *string
	var done bool
	err := conn.QueryRow(ctx, `SELECT (SELECT last_archived_wal FROM pg_stat_archiver),
		EXISTS (SELECT 1 FROM pg_ls_archive_statusdir() WHERE name = $1 || '.done')`, seg).Scan(&last, &done)
	if err != nil {
		return false, fmt.Errorf("read whether %s is archived: %w", seg, err)
	}
	return done || (last != nil && *last >= seg), nil
}

// archiveDiagnosis says what a member's archiver is doing: its
// statistics, the segments waiting in pg_wal/archive_status, its archive
// gate and the tail of its pgBackRest log — for a test that saw a segment
// not reach the archive.
func (c *Cluster) archiveDiagnosis(name string) string {
	var b strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if conn, err := c.Connect(ctx, name); err != nil {
		fmt.Fprintf(&b, "connect: %v\n", err)
	} else {
		var row string
		err := conn.QueryRow(ctx, `SELECT row_to_json(a)::text FROM pg_stat_archiver a`).Scan(&row)
		fmt.Fprintf(&b, "pg_stat_archiver: %s %v\n", row, err)
		conn.Close(ctx)
	}
	dir := local.MemberDir(c.Dir, name)
	status, _ := filepath.Glob(filepath.Join(dir, "pgdata", "pg_wal", "archive_status", "*"))
	for i := range status {
		status[i] = filepath.Base(status[i])
	}
	fmt.Fprintf(&b, "archive_status: %v\n", status)
	grant, err := os.ReadFile(filepath.Join(dir, "archive-grant"))
	fmt.Fprintf(&b, "archive-grant: %q %v (CLOCK_MONOTONIC now %d)\n", strings.TrimSpace(string(grant)), err, monotonicNow())
	logs, _ := filepath.Glob(filepath.Join(dir, "pgbackrest", "log", "*.log"))
	for _, l := range logs {
		fmt.Fprintf(&b, "==== %s (tail)\n%s\n", filepath.Base(l), fileTail(l, 25))
	}
	return b.String()
}

// monotonicNow is CLOCK_MONOTONIC in nanoseconds, the archive gate's clock.
func monotonicNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return -1
	}
	return ts.Nano()
}
