package e2e

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/config"
	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/testutil"
)

// TestBackupBootstrapRestore: cluster A archives into a POSIX repository;
// a backup, row A, a noted time, row B. A stops. Cluster B's members are
// started from their own configuration files (no holdfast up flag), each
// with bootstrap.restore naming A's repository, stanza and the noted time,
// and backups into a stanza of its own in the same repository. The member
// that wins the bootstrap restores instead of initdb: B's primary holds A
// and not B, the other member clones from it and streams, a row written
// on B reaches B's stanza, and A's stanza is byte for byte as A left it.
func TestBackupBootstrapRestore(t *testing.T) {
	if _, err := os.Stat("/usr/bin/pgbackrest"); err != nil {
		t.Skip("pgbackrest is not installed (scripts/install-deps.sh installs it)")
	}
	repo := filepath.Join(testutil.Dir(t), "repo")
	a := StartCluster(t, 1, "--backup-repo", repo)
	primary := a.Primary()
	a.Exec(primary, "CREATE TABLE pitr (v text)")
	a.Exec(primary, "INSERT INTO pitr VALUES ('A')")
	target := a.backupThenTarget(primary)
	srcStanza := a.Layout.Backup.Stanza
	a.Down()
	before := repoFiles(t, repo, srcStanza)

	b := &Cluster{t: t, Dir: filepath.Join(testutil.Dir(t), "restored")}
	t.Cleanup(func() {
		if t.Failed() {
			b.DumpLogs()
		}
		run(t, 3*time.Minute, "down", "--dir", b.Dir)
	})
	l, err := local.NewLayout("restored", 2, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	const newStanza = "restored-new"
	l.Backup = &local.Backup{Repository: repo, Stanza: newStanza}
	if err := l.Write(b.Dir); err != nil {
		t.Fatal(err)
	}
	// Each member's file gets the bootstrap section, as an operator (or
	// the chart) would write it.
	for _, m := range l.Members {
		c := l.MemberConfig(b.Dir, m)
		c.Bootstrap.Restore = config.BootstrapRestore{Repository: repo, Stanza: srcStanza, TargetTime: target.Format(time.RFC3339Nano)}
		out, err := config.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(local.ConfigFile(b.Dir, m.Name), out, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b.Layout = l
	b.Up()
	b.WaitFor("B healthy: the restored primary and a clone streaming from it", 3*time.Minute, Healthy(2))
	bp := b.Primary()
	if got := rowsOf(t, b, bp); !slices.Equal(got, []string{"A"}) {
		t.Fatalf("B's primary %s: rows %v, want [A] (restored to %s)", bp, got, target.Format(time.RFC3339Nano))
	}
	booted := ""
	for _, m := range l.Members {
		log, _ := os.ReadFile(local.LogFile(b.Dir, m.Name))
		if strings.Contains(string(log), "cluster bootstrapped from a backup") {
			booted += m.Name
		}
		if strings.Contains(string(log), "running initdb") {
			t.Errorf("%s ran initdb", m.Name)
		}
	}
	if booted != bp {
		t.Errorf("members that restored: %q, want only the primary %s", booted, bp)
	}
	for _, m := range b.DBMembers() {
		if m != bp {
			b.WaitCount(m, "pitr", 1, time.Minute)
		}
	}

	b.Exec(bp, "INSERT INTO pitr VALUES ('C')")
	b.waitArchived(bp)
	if len(repoFiles(t, repo, newStanza)) == 0 {
		t.Errorf("nothing in B's stanza %s", newStanza)
	}
	after := repoFiles(t, repo, srcStanza)
	if !slices.Equal(before, after) {
		t.Errorf("A's stanza %s changed while B ran:\nbefore %v\nafter  %v", srcStanza, before, after)
	}
	out, err := b.ctlRun(time.Minute, "list")
	t.Logf("B: %s %v", out, err)
}

// repoFiles lists a stanza's files in a POSIX repository (archive and
// backups), with their sizes and modification times.
func repoFiles(t *testing.T, repo, stanza string) []string {
	t.Helper()
	var out []string
	for _, sub := range []string{"archive", "backup"} {
		root := filepath.Join(repo, sub, stanza)
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if os.IsNotExist(err) {
					return nil
				}
				return err
			}
			if d.IsDir() {
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(repo, p)
			out = append(out, rel+" "+fi.ModTime().UTC().Format(time.RFC3339Nano)+" "+fmt.Sprint(fi.Size()))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(out)
	return out
}
