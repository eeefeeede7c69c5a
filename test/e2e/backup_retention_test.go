package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/backup"
	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/testutil"
)

// TestBackupRetentionAndRefusals: three full backups with retention_full 2
// leave the two newest and the WAL from the older one's start on — the WAL
// only the expired backup needed is gone, none a kept backup needs is — and
// a restore of the oldest kept backup to the latest point holds every row.
// A repository holding another cluster's stanza, a repository that cannot
// be reached and a backup set the stanza does not hold are refused up
// front, with nothing created and the repository unchanged.
func TestBackupRetentionAndRefusals(t *testing.T) {
	c, repo := startBackupCluster(t, 2)
	stanza := c.Layout.Backup.Stanza
	primary := c.Primary()
	c.Exec(primary, "CREATE TABLE pitr (v text)")

	var before backup.List
	for i := 1; i <= 3; i++ {
		c.Exec(primary, "INSERT INTO pitr VALUES ($1)", strconv.Itoa(i))
		c.waitArchived(primary)
		if i == 3 {
			before = c.backupList()
		}
		if out, err := c.ctlRun(10*time.Minute, "backup", "--type", "full"); err != nil {
			t.Fatalf("ctl backup %d: %v\n%s", i, err, out)
		}
	}
	c.Exec(primary, "INSERT INTO pitr VALUES ('4')")
	c.waitArchived(primary)

	after := c.backupList()
	if len(before.Stanza.Backups) != 2 || len(after.Stanza.Backups) != 2 {
		t.Fatalf("backups before the third: %d, after: %d; want 2 and 2 (retention_full 2)", len(before.Stanza.Backups), len(after.Stanza.Backups))
	}
	expired, kept := before.Stanza.Backups[0], after.Stanza.Backups[0]
	if kept.Label != before.Stanza.Backups[1].Label || after.Stanza.Backups[1].Type != "full" {
		t.Fatalf("kept %v, want the second and third full backups (before: %v)", after.Stanza.Backups, before.Stanza.Backups)
	}
	segs := archivedSegments(t, repo, stanza)
	if len(segs) == 0 || segs[0] != kept.WALStart {
		t.Errorf("the archive starts at %v, want the kept backup's start %s (the expired backup %s started at %s)", first(segs), kept.WALStart, expired.Label, expired.WALStart)
	}
	if slices.Contains(segs, expired.WALStart) {
		t.Errorf("segment %s, needed only by the expired backup %s, is still archived", expired.WALStart, expired.Label)
	}
	for i := 1; i < len(segs); i++ {
		if segNo(t, segs[i]) != segNo(t, segs[i-1])+1 {
			t.Errorf("the archive has a gap between %s and %s", segs[i-1], segs[i])
		}
	}
	t.Logf("kept %s and %s; archive %s..%s", kept.Label, after.Stanza.Backups[1].Label, first(segs), segs[len(segs)-1])

	// Refusals change nothing.
	snap := repoSnapshot(t, repo, stanza)
	srcConfig := local.ConfigFile(c.Dir, primary)
	file := filepath.Join(testutil.Dir(t), "a-file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	missingRepo := filepath.Join(testutil.Dir(t), "missing-repo.yaml")
	if err := os.WriteFile(missingRepo, []byte("backup:\n  repository: "+filepath.Join(file, "repo")+"\n  stanza: "+stanza+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"--backup-repo", repo, "--backup-stanza", stanza}, "already holds stanza " + stanza},
		{[]string{"--backup-repo", filepath.Join(file, "repo")}, "cannot be created"},
		{[]string{"--restore-from", missingRepo}, "cannot be read"},
		{[]string{"--restore-from", srcConfig, "--backup-set", expired.Label}, "holds no valid backup " + expired.Label},
	} {
		dir := filepath.Join(testutil.Dir(t), "refused")
		out, err := run(t, time.Minute, append([]string{"up", "--detach", "--dir", dir, "--members", "1"}, bad.args...)...)
		if err == nil || !strings.Contains(out, bad.want) || !strings.Contains(out, "nothing was created") {
			t.Fatalf("up %v: %v, want a refusal saying %q and that nothing was created:\n%s", bad.args, err, bad.want, out)
		}
		if _, err := os.Stat(local.LayoutFile(dir)); err == nil {
			t.Errorf("up %v refused but created a cluster", bad.args)
		}
		t.Logf("refused as expected: %s", strings.TrimSpace(out))
	}
	if got := repoSnapshot(t, repo, stanza); got != snap {
		t.Errorf("the refusals changed the repository:\nbefore %s\nafter  %s", snap, got)
	}

	r := restore(t, srcConfig, "--backup-set", kept.Label)
	if got := rows(t, r); !slices.Equal(got, []string{"1", "2", "3", "4"}) {
		t.Fatalf("restore of %s to the latest point: rows %v, want [1 2 3 4]", kept.Label, got)
	}
}

// backupList reads ctl backups -o json.
func (c *Cluster) backupList() backup.List {
	c.t.Helper()
	out, err := c.ctlRun(time.Minute, "backups", "-o", "json")
	if err != nil {
		c.t.Fatalf("ctl backups: %v\n%s", err, out)
	}
	var l backup.List
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		c.t.Fatalf("ctl backups -o json: %v\n%s", err, out)
	}
	return l
}

// archivedSegments lists the WAL segments of stanza in the POSIX
// repository, sorted.
func archivedSegments(t *testing.T, repo, stanza string) []string {
	t.Helper()
	var segs []string
	err := filepath.WalkDir(filepath.Join(repo, "archive", stanza), func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if n := d.Name(); !d.IsDir() && len(n) > 25 && n[24] == '-' && isHex(n[:24]) {
			segs = append(segs, n[:24])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(segs)
	return segs
}

func isHex(s string) bool {
	for _, r := range s {
		if !strings.ContainsRune("0123456789ABCDEF", r) {
			return false
		}
	}
	return true
}

// segNo is a 16 MB segment's number within its timeline.
func segNo(t *testing.T, seg string) uint64 {
	t.Helper()
	hi, err1 := strconv.ParseUint(seg[8:16], 16, 32)
	lo, err2 := strconv.ParseUint(seg[16:24], 16, 32)
	if err1 != nil || err2 != nil {
		t.Fatalf("segment name %q", seg)
	}
	return hi*0x100 + lo
}

func first(s []string) string {
	if len(s) == 0 {
		return "(none)"
	}
	return s[0]
}

// repoSnapshot describes what a refusal must not change: the stanzas the
// repository holds and stanza's backup list.
func repoSnapshot(t *testing.T, repo, stanza string) string {
	t.Helper()
	var b strings.Builder
	for _, d := range []string{"archive", "backup"} {
		es, err := os.ReadDir(filepath.Join(repo, d))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			b.WriteString(d + "/" + e.Name() + " ")
		}
	}
	info, err := os.ReadFile(filepath.Join(repo, "backup", stanza, "backup.info"))
	if err != nil {
		t.Fatal(err)
	}
	b.WriteString(strconv.Itoa(len(info)))
	return b.String()
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
