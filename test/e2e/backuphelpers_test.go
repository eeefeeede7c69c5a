package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/internal/testutil"
)

// column runs query on a member and returns its single column's values.
func column[T any](t *testing.T, c *Cluster, name, query string) []T {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := c.Connect(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rs, err := conn.Query(ctx, query)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rs, pgx.RowTo[T])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// rows reads the pitr table on the primary.
func rows(t *testing.T, c *Cluster) []string {
	t.Helper()
	return column[string](t, c, c.Primary(), "SELECT v FROM pitr ORDER BY v")
}

// rowsOf reads the pitr table on a member.
func rowsOf(t *testing.T, c *Cluster, name string) []string {
	t.Helper()
	return column[string](t, c, name, "SELECT v FROM pitr ORDER BY v")
}

// ids reads the load table's ids on a member, sorted.
func ids(t *testing.T, c *Cluster, name string) []int64 {
	t.Helper()
	return column[int64](t, c, name, "SELECT id FROM load ORDER BY id")
}

// backupThenTarget takes a full backup (its output must hold each of want
// and "finished"), notes a time strictly between row A, committed before,
// and row B, inserted after, waits for B's WAL to be archived and returns
// the noted time.
func (c *Cluster) backupThenTarget(primary string, want ...string) time.Time {
	c.t.Helper()
	out, err := c.ctlRun(10*time.Minute, "backup", "--type", "full")
	ok := err == nil
	for _, w := range append(want, "finished") {
		ok = ok && strings.Contains(out, w)
	}
	if !ok {
		c.t.Fatalf("ctl backup: %v\n%s", err, out)
	}
	c.t.Log(strings.TrimSpace(out))
	time.Sleep(1100 * time.Millisecond) // the noted time lies strictly between the commits
	target := time.Now().UTC()
	time.Sleep(1100 * time.Millisecond)
	c.Exec(primary, "INSERT INTO pitr VALUES ('B')")
	c.waitArchived(primary)
	return target
}

// needPgbackrest skips the test when pgBackRest is not installed.
func needPgbackrest(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/usr/bin/pgbackrest"); err != nil {
		t.Skip("pgbackrest is not installed (scripts/install-deps.sh installs it)")
	}
}

// startBackupCluster starts n members archiving into a POSIX repository
// of the test's own, and returns the cluster and the repository (it skips
// the test without pgBackRest).
func startBackupCluster(t *testing.T, n int) (*Cluster, string) {
	t.Helper()
	needPgbackrest(t)
	repo := filepath.Join(testutil.Dir(t), "repo")
	return StartCluster(t, n, "--backup-repo", repo), repo
}
