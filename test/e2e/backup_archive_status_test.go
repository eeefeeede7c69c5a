package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/ctl"
)

// archiveStatusWait bounds how long a change of the archiving takes to
// show in `ctl list` and /archive: PostgreSQL's archiver tries, the
// agent reads pg_stat_archiver, publishes its status, and the others
// read the store.
const archiveStatusWait = 2 * time.Minute

// TestArchiveStatus: a cluster archiving into a POSIX repository shows
// archiving ok in `ctl list` and on every member's /archive; with the
// stanza's archive directory replaced by a file, the next WAL segment
// cannot be pushed, and both show failing, with the segment, on every
// member (503 for the probe); once the directory is back, the segment is
// archived and both show ok again.
func TestArchiveStatus(t *testing.T) {
	c, repo := startBackupCluster(t, 2)
	primary := c.Primary()
	c.Exec(primary, "CREATE TABLE archived (v int)")
	c.Exec(primary, "INSERT INTO archived VALUES (1)")
	c.waitArchived(primary)
	c.waitArchive("archiving ok", primary, cluster.ArchiveOK)

	// Break the repository: the stanza's archive directory becomes a file.
	archiveDir := filepath.Join(repo, "archive", c.Layout.Backup.Stanza)
	aside := archiveDir + ".aside"
	if err := os.Rename(archiveDir, aside); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(archiveDir, []byte("not a directory\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.Exec(primary, "INSERT INTO archived VALUES (2)")
	seg := c.switchWAL(primary)
	failing := c.waitArchive("archiving failing", primary, cluster.ArchiveFailing)
	if failing.LastFailedWAL != seg || failing.FailedCount == 0 || !strings.Contains(failing.Reason, seg) {
		t.Errorf("the failing status names %q (%d failures, reason %q); want segment %s", failing.LastFailedWAL, failing.FailedCount, failing.Reason, seg)
	}

	// Repair it: the segment that failed is archived, and all is ok again.
	if err := os.Remove(archiveDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(aside, archiveDir); err != nil {
		t.Fatal(err)
	}
	c.Exec(primary, "INSERT INTO archived VALUES (3)")
	c.waitArchived(primary) // the new segment wakes the archiver, which retries the failed one first
	// The status turns ok as soon as the failed segment is archived; the
	// newer one follows a loop or two later (published by the agent's
	// loop, a moment after the archiver): wait for it rather than for a
	// time.
	ok := c.waitArchive("archiving ok after the repair", primary, cluster.ArchiveOK)
	for deadline := time.Now().Add(archiveStatusWait); ok.LastArchivedWAL <= seg && time.Now().Before(deadline); {
		time.Sleep(500 * time.Millisecond)
		ok = c.waitArchive("archiving ok after the repair, past the failed segment", primary, cluster.ArchiveOK)
	}
	if ok.LastArchivedWAL <= seg {
		t.Errorf("ok again, but the last archived segment %s is not past the one that failed, %s", ok.LastArchivedWAL, seg)
	}
}

// switchWAL ends the primary's current WAL segment and returns its name.
func (c *Cluster) switchWAL(primary string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
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
	return seg
}

// waitArchive waits until `ctl list` (JSON and table) shows the
// primary's archiving in state want, and every database member's
// /archive answers it — 200 for ok, 503 otherwise — naming the primary;
// it returns the status `ctl list` showed.
func (c *Cluster) waitArchive(what, primary string, want cluster.ArchiveState) ctl.ArchiveRow {
	c.t.Helper()
	wantCode := http.StatusServiceUnavailable
	if want == cluster.ArchiveOK {
		wantCode = http.StatusOK
	}
	deadline := time.Now().Add(archiveStatusWait)
	var last []string
	for {
		last = nil
		row, err := c.archiveInList(primary, want)
		if err != nil {
			last = append(last, err.Error())
		}
		for _, m := range c.DBMembers() {
			if err := c.archiveProbe(m, primary, want, wantCode); err != nil {
				last = append(last, err.Error())
			}
		}
		if len(last) == 0 {
			c.t.Logf("%s: ctl list and every /archive show %s: %s", what, want, row.Reason)
			return row
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %s waiting for %s:\n%s", archiveStatusWait, what, strings.Join(last, "\n"))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// archiveInList checks `ctl list`: the JSON's archive object and the line
// under the table.
func (c *Cluster) archiveInList(primary string, want cluster.ArchiveState) (ctl.ArchiveRow, error) {
	l, err := c.List()
	if err != nil {
		return ctl.ArchiveRow{}, err
	}
	if l.Archive == nil || l.Archive.Primary != primary || l.Archive.State != want {
		b, _ := json.Marshal(l.Archive)
		return ctl.ArchiveRow{}, fmt.Errorf("ctl list -o json: archive %s, want %s on %s", b, want, primary)
	}
	out, err := c.ctlRun(20*time.Second, "list")
	line := fmt.Sprintf("Archive on %s: %s", primary, want)
	if err != nil || !strings.Contains(out, line) {
		return ctl.ArchiveRow{}, fmt.Errorf("ctl list: no line %q (err %v):\n%s", line, err, out)
	}
	return *l.Archive, nil
}

// archiveProbe asks member's GET /archive.
func (c *Cluster) archiveProbe(member, primary string, want cluster.ArchiveState, wantCode int) error {
	code, body, err := c.apiDo(member, http.MethodGet, "/archive", "", nil)
	if err != nil {
		return fmt.Errorf("GET /archive on %s: %w", member, err)
	}
	var h api.MemberHealth
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		return fmt.Errorf("GET /archive on %s: %d %s: %w", member, code, body, err)
	}
	if code != wantCode || h.Archive.State != want || h.Archive.Primary != primary {
		return fmt.Errorf("GET /archive on %s = %d %s; want %d, state %s reported by %s", member, code, strings.TrimSpace(body), wantCode, want, primary)
	}
	return nil
}
