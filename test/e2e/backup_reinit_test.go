package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/local"
)

// Bounds of the reinit-from-backup tests.
const (
	// reinitWait bounds a re-initialisation, from the request until the
	// member streams again.
	reinitWait = 3 * time.Minute
	// loadPause is the light load's pause between two inserts.
	loadPause = 10 * time.Millisecond
	// loadAfterStreaming is how long the load runs on once the
	// re-initialised member streams, so rows also reach it by streaming.
	loadAfterStreaming = 2 * time.Second
)

// Log lines the agent writes (package backup, Replicas.Clone).
const (
	logRestoredFromBackup = "replica restored from a backup"
	logFallback           = "replica from a backup not possible: cloning with pg_basebackup"
)

// TestBackupReinitFromBackup: a 3-member cluster archiving into a POSIX
// repository, a full backup, then `ctl reinit` of a replica while a
// writer inserts into the primary. The replica is restored from the
// backup, replays the archive, streams again and holds exactly the
// primary's rows (every acknowledged one among them); the primary's log,
// with replication commands logged, shows the replica's START_REPLICATION
// and no BASE_BACKUP: it served no pg_basebackup.
func TestBackupReinitFromBackup(t *testing.T) {
	c, _ := startBackupCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	primary := c.Primary()
	logReplicationCommands(c, primary)
	c.Exec(primary, "CREATE TABLE load (id bigint PRIMARY KEY)")
	c.Exec(primary, "INSERT INTO load SELECT g FROM generate_series(1, 1000) g")
	if out, err := c.ctlRun(10*time.Minute, "backup", "--type", "full"); err != nil {
		t.Fatalf("ctl backup: %v\n%s", err, out)
	}
	replica := otherThan(c, primary)

	w := startLoad(t, c, primary, 1001)
	pgLog, agentLog, replicaLog := logSize(pgLogFile(c, primary)), logSize(local.LogFile(c.Dir, replica)), logSize(pgLogFile(c, replica))
	out, err := c.ctlRun(time.Minute, "reinit", replica)
	if err != nil || !strings.Contains(out, "restored from the newest backup") {
		t.Fatalf("ctl reinit %s: %v\n%s", replica, err, out)
	}
	t.Log(strings.TrimSpace(out))
	line := c.waitLogAfter(replica, agentLog, logRestoredFromBackup, reinitWait)
	t.Logf("%s: %s", replica, line)
	c.WaitFor(replica+" streaming again", reinitWait, func(l ctl.ClusterList) bool {
		return Healthy(3)(l) && l.Leader == primary
	})
	time.Sleep(loadAfterStreaming)
	acked := w.stop()
	if len(acked) == 0 {
		t.Fatal("the load acknowledged no insert")
	}

	want := ids(t, c, primary)
	c.WaitCount(replica, "load", int64(len(want)), time.Minute)
	got := ids(t, c, replica)
	if !slices.Equal(got, want) {
		t.Fatalf("%s holds %d rows, the primary %d; missing %v", replica, len(got), len(want), missingIDs(want, got))
	}
	if m := missingIDs(acked, got); len(m) > 0 {
		t.Fatalf("%s lacks acknowledged rows: %v", replica, m)
	}

	served := readFrom(pgLogFile(c, primary), pgLog)
	if strings.Contains(served, "BASE_BACKUP") {
		t.Fatalf("the primary %s served a base backup during the reinit:\n%s", primary, grepLines(served, "BASE_BACKUP"))
	}
	slot := `START_REPLICATION SLOT "` + cluster.SlotName(replica) + `"`
	if !strings.Contains(served, slot) {
		t.Fatalf("the primary's log has no %s since the reinit (are replication commands logged?):\n%s", slot, grepLines(served, "replication command"))
	}
	if a := readFrom(local.LogFile(c.Dir, replica), agentLog); strings.Contains(a, logFallback) {
		t.Fatalf("%s fell back to pg_basebackup:\n%s", replica, grepLines(a, logFallback))
	}
	// It caught up from the archive, with the restore_command holdfast
	// renders (pgBackRest's own was removed from postgresql.auto.conf).
	if r := readFrom(pgLogFile(c, replica), replicaLog); !strings.Contains(r, "from archive") {
		t.Errorf("%s's PostgreSQL log shows no WAL restored from the archive:\n%s", replica, grepLines(r, "LOG"))
	}
	auto, err := os.ReadFile(filepath.Join(local.MemberDir(c.Dir, replica), "pgdata", "postgresql.auto.conf"))
	if err != nil || strings.Contains(string(auto), "restore_command") {
		t.Errorf("%s's postgresql.auto.conf still sets restore_command (%v):\n%s", replica, err, auto)
	}
	var rc string
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if conn, err := c.Connect(ctx, replica); err != nil {
		t.Error(err)
	} else {
		err = conn.QueryRow(ctx, "SHOW restore_command").Scan(&rc)
		conn.Close(ctx)
		if err != nil || !strings.Contains(rc, "archive-get") || !strings.Contains(rc, filepath.Join(local.MemberDir(c.Dir, replica), "pgbackrest", "pgbackrest.conf")) {
			t.Errorf("%s's restore_command is %q (%v), want holdfast's archive-get with the member's configuration", replica, rc, err)
		}
	}
	t.Logf("%s restored from the backup and streams: %d rows (%d acknowledged during the reinit), no BASE_BACKUP on %s", replica, len(got), len(acked), primary)
}

// TestBackupReinitFallback: a cluster with a repository but no backup yet;
// `ctl reinit` of the replica falls back to pg_basebackup from the
// primary, says so in the agent's log (with the reason), and the replica
// streams again with the primary's rows.
func TestBackupReinitFallback(t *testing.T) {
	c, _ := startBackupCluster(t, 2)
	c.WaitFor("healthy", 60*time.Second, Healthy(2))
	primary := c.Primary()
	logReplicationCommands(c, primary)
	c.Exec(primary, "CREATE TABLE load (id bigint PRIMARY KEY)")
	c.Exec(primary, "INSERT INTO load SELECT g FROM generate_series(1, 100) g")
	replica := otherThan(c, primary)

	pgLog, agentLog := logSize(pgLogFile(c, primary)), logSize(local.LogFile(c.Dir, replica))
	if out, err := c.ctlRun(time.Minute, "reinit", replica); err != nil {
		t.Fatalf("ctl reinit %s: %v\n%s", replica, err, out)
	}
	line := c.waitLogAfter(replica, agentLog, logFallback, reinitWait)
	if !strings.Contains(line, "no valid backup") && !strings.Contains(line, "not in the repository") {
		t.Errorf("the fallback does not say that there is no backup: %s", line)
	}
	t.Logf("%s: %s", replica, line)
	c.WaitFor(replica+" streaming again", reinitWait, func(l ctl.ClusterList) bool {
		return Healthy(2)(l) && l.Leader == primary
	})
	c.WaitCount(replica, "load", 100, time.Minute)
	if served := readFrom(pgLogFile(c, primary), pgLog); !strings.Contains(served, "BASE_BACKUP") {
		t.Fatalf("the primary's log shows no BASE_BACKUP since the reinit:\n%s", grepLines(served, "replication command"))
	}
	if a := readFrom(local.LogFile(c.Dir, replica), agentLog); strings.Contains(a, logRestoredFromBackup) {
		t.Fatalf("%s claims a restore from a backup that does not exist", replica)
	}
}

// logReplicationCommands makes the member's PostgreSQL log every
// replication command (BASE_BACKUP for a pg_basebackup, START_REPLICATION
// for a standby that streams).
func logReplicationCommands(c *Cluster, name string) {
	c.t.Helper()
	c.Exec(name, "ALTER SYSTEM SET log_replication_commands = on")
	c.Exec(name, "SELECT pg_reload_conf()")
}

func otherThan(c *Cluster, name string) string {
	for _, m := range c.DBMembers() {
		if m != name {
			return m
		}
	}
	c.t.Fatalf("no member other than %s", name)
	return ""
}

func pgLogFile(c *Cluster, name string) string {
	return filepath.Join(local.MemberDir(c.Dir, name), "postgresql.log")
}

func logSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readFrom reads path from byte offset on.
func readFrom(path string, offset int64) string {
	b, _ := os.ReadFile(path)
	if offset > int64(len(b)) {
		return ""
	}
	return string(b[offset:])
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	if len(out) > 20 {
		out = append(out[:20], "...")
	}
	return strings.Join(out, "\n")
}

// waitLogAfter waits until the member's agent log, from byte offset on,
// holds s, and returns that line.
func (c *Cluster) waitLogAfter(name string, offset int64, s string, timeout time.Duration) string {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, line := range strings.Split(readFrom(local.LogFile(c.Dir, name), offset), "\n") {
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

// load inserts increasing ids into the primary's load table over one
// connection until stopped, and records the acknowledged ones.
type load struct {
	done   chan struct{}
	quit   chan struct{}
	mu     sync.Mutex
	acked  []int64
	errors int
}

func startLoad(t *testing.T, c *Cluster, primary string, first int64) *load {
	w := &load{done: make(chan struct{}), quit: make(chan struct{})}
	go func() {
		defer close(w.done)
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for id := first; ; id++ {
			select {
			case <-w.quit:
				return
			case <-time.After(loadPause):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if conn == nil {
				var err error
				if conn, err = c.Connect(ctx, primary); err != nil {
					cancel()
					w.fail()
					continue
				}
			}
			_, err := conn.Exec(ctx, "INSERT INTO load VALUES ($1)", id)
			cancel()
			if err != nil {
				conn.Close(context.Background())
				conn = nil
				w.fail()
				continue
			}
			w.mu.Lock()
			w.acked = append(w.acked, id)
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { w.stop() })
	return w
}

func (w *load) fail() {
	w.mu.Lock()
	w.errors++
	w.mu.Unlock()
}

// stop ends the load and returns the acknowledged ids.
func (w *load) stop() []int64 {
	select {
	case <-w.quit:
	default:
		close(w.quit)
	}
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.acked)
}

func missingIDs(want, got []int64) []int64 {
	var out []int64
	for _, w := range want {
		if _, ok := slices.BinarySearch(got, w); !ok {
			out = append(out, w)
			if len(out) == 20 {
				break
			}
		}
	}
	return out
}
