package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/local"
)

// archiveCheckWait bounds how long a new primary may take to push what
// the old one left unarchived and pass pgbackrest check.
const archiveCheckWait = 3 * time.Minute

// TestBackupArchiveAcrossFailover: kill -9 of the primary (agent and
// postmaster) while it writes, just after it completed WAL segments it
// may not have archived yet. The new primary pushes the earlier
// timeline's segments the archive lacks and passes pgbackrest check; a
// restore to the latest point holds exactly the new primary's rows,
// including those committed after the failover.
func TestBackupArchiveAcrossFailover(t *testing.T) {
	c, _ := startBackupCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	old := c.Primary()
	c.Exec(old, "CREATE TABLE pitr (v text)")
	if out, err := c.ctlRun(10*time.Minute, "backup", "--type", "full"); err != nil {
		t.Fatalf("ctl backup: %v\n%s", err, out)
	}

	// A writer on the old primary until it dies.
	writing := make(chan struct{})
	go func() {
		defer close(writing)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		conn, err := c.Connect(ctx, old)
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		for i := 0; ; i++ {
			if _, err := conn.Exec(ctx, "INSERT INTO pitr VALUES ($1)", "w"+strconv.Itoa(i)); err != nil {
				return
			}
		}
	}()
	for i := 0; i < 3; i++ {
		c.Exec(old, "INSERT INTO pitr VALUES ($1)", "before"+strconv.Itoa(i))
		c.Exec(old, "SELECT pg_switch_wal()")
	}
	c.KillHard(old)
	<-writing
	l := c.WaitFor("a new primary", 90*time.Second, func(l ctl.ClusterList) bool {
		return l.Leader != "" && l.Leader != old && member(l, l.Leader).Role == "primary" && member(l, l.Leader).State == "running"
	})
	np := l.Leader
	for i := 0; i < 3; i++ {
		c.Exec(np, "INSERT INTO pitr VALUES ($1)", "after"+strconv.Itoa(i))
	}
	logLine := c.waitLog(np, "archive check passed", archiveCheckWait)
	t.Logf("%s: %s", np, logLine)
	c.waitArchived(np)
	pgbackrestCheck(t, c, np)

	want := rowsOf(t, c, np)
	if !slices.Contains(want, "after2") || !slices.Contains(want, "before2") {
		t.Fatalf("the new primary's rows %v lack the rows written before or after the failover", want)
	}
	got := rows(t, restore(t, local.ConfigFile(c.Dir, np)))
	if !slices.Equal(got, want) {
		t.Fatalf("restore to the latest point: %d rows, the new primary holds %d\nmissing: %v", len(got), len(want), missing(want, got))
	}
	t.Logf("restored %d rows, %d of them written after the failover", len(got), 3)
}

// waitLog waits until the member's agent log holds s and returns that
// line.
func (c *Cluster) waitLog(name, s string, timeout time.Duration) string {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(local.LogFile(c.Dir, name))
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, s) {
				return line
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s's log has no %q within %s", name, s, timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// pgbackrestCheck runs pgbackrest check with the member's own
// configuration, as the account PostgreSQL runs as.
func pgbackrestCheck(t *testing.T, c *Cluster, name string) {
	t.Helper()
	work := filepath.Join(local.MemberDir(c.Dir, name), "pgbackrest")
	args := []string{"pgbackrest", "--config=" + filepath.Join(work, "pgbackrest.conf"), "--stanza=" + c.Layout.Backup.Stanza, "check"}
	if os.Geteuid() == 0 {
		args = append([]string{"runuser", "-u", "postgres", "--"}, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), archiveCheckWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	m := c.Member(name)
	cmd.Env = append(os.Environ(), "PGHOST=127.0.0.1", "PGPASSFILE="+filepath.Join(work, "pgpass"), "PGSSLMODE=disable", "PGPORT="+strconv.Itoa(m.PGPort))
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pgbackrest check on %s: %v\n%s", name, err, out)
	}
}

func missing(want, got []string) []string {
	var out []string
	for _, w := range want {
		if !slices.Contains(got, w) {
			out = append(out, w)
		}
	}
	if len(out) > 20 {
		out = append(out[:20], "...")
	}
	return out
}
