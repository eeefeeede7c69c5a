package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/backup"
	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/testutil"
)

// scheduleWait bounds how long a scheduled backup may take to appear: its
// cadence (1m), the leader's judging interval and the backup itself.
const scheduleWait = 4 * time.Minute

// TestBackupSchedule: backup_schedule set with ctl edit-config (a cadence
// below the minimum refused, nothing changed); the leader takes a full
// backup at once (there is none), then an incremental one a minute after
// the newest; after kill -9 of the leader the new one continues the
// schedule from the repository: the next backup is incremental, a minute
// after the last one, not a full one and not at once. Never two backups
// at once; ctl backups shows the schedule.
func TestBackupSchedule(t *testing.T) {
	needPgbackrest(t)
	c := StartCluster(t, 3, "--backup-repo", filepath.Join(testutil.Dir(t), "repo"))
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	if out, err := c.ctlRun(time.Minute, "edit-config", "--set", "backup_schedule=incr=10s"); err == nil || !strings.Contains(out, "backup_schedule: incr=10s: shorter than 1m") {
		t.Fatalf("a 10s cadence: %v\n%s", err, out)
	}
	if out, err := c.ctlRun(time.Minute, "show-config"); err != nil || strings.Contains(out, "incr=10s") {
		t.Fatalf("show-config after a refused change: %v\n%s", err, out)
	}
	if out, err := c.ctlRun(time.Minute, "edit-config", "--set", "backup_schedule=full=24h,incr=1m"); err != nil || !strings.Contains(out, `"backup_schedule": "full=24h,incr=1m"`) {
		t.Fatalf("edit-config backup_schedule: %v\n%s", err, out)
	}

	first := c.waitBackups(1, scheduleWait)
	if first[0].Type != "full" {
		t.Fatalf("the first scheduled backup is %s, want full (the repository held none)", first[0].Type)
	}
	second := c.waitBackups(2, scheduleWait)
	prev := second[1]
	if prev.Type != "incr" || prev.Start.Before(first[0].Start.Add(time.Minute)) {
		t.Fatalf("the second scheduled backup %+v: want incr, a minute after %s", prev, first[0].Start)
	}
	if out, err := c.ctlRun(time.Minute, "backups"); err != nil || !strings.Contains(out, "schedule full=24h,incr=1m") {
		t.Fatalf("ctl backups: %v\n%s", err, out)
	}

	old := c.Primary()
	c.KillHard(old)
	l := c.WaitFor("a new primary", 90*time.Second, func(l ctl.ClusterList) bool {
		return l.Leader != "" && l.Leader != old && member(l, l.Leader).Role == "primary" && member(l, l.Leader).State == "running"
	})
	third := c.waitBackups(3, scheduleWait)
	next := third[2]
	if next.Type != "incr" || next.Start.Before(prev.Start.Add(time.Minute)) {
		t.Fatalf("after the failover the next backup is %s at %s; want incr, at least a minute after the last one (%s)", next.Type, next.Start, prev.Start)
	}
	c.waitLog(l.Leader, "scheduled backup started", time.Minute)
	for i := 1; i < len(third); i++ {
		if third[i].Start.Before(third[i-1].Stop) {
			t.Errorf("backups %s and %s overlap", third[i-1].Label, third[i].Label)
		}
	}
	t.Logf("scheduled: %s %s, %s %s, after the failover %s %s", third[0].Type, third[0].Start, third[1].Type, third[1].Start, next.Type, next.Start)
}

// waitBackups waits until the repository holds at least n valid backups and
// returns them, oldest first.
func (c *Cluster) waitBackups(n int, timeout time.Duration) []backup.Set {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var ok []backup.Set
		if out, err := c.ctlRun(time.Minute, "backups", "-o", "json"); err == nil {
			var l backup.List
			if jsonUnmarshal(out, &l) == nil {
				for _, b := range l.Stanza.Backups {
					if !b.Error {
						ok = append(ok, b)
					}
				}
			}
		}
		if len(ok) >= n {
			return ok
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%d backups after %s, want %d", len(ok), timeout, n)
		}
		time.Sleep(2 * time.Second)
	}
}
