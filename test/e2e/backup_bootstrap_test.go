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
// A restore to a transaction the archive never reaches fails, is retried,
// and leaves neither the data directory nor its temporary sibling.
func TestBackupBootstrapRestore(t *testing.T) {
	a, repo := startBackupCluster(t, 1)
	primary := a.Primary()
	a.Exec(primary, "CREATE TABLE pitr (v text)")
	a.Exec(primary, "INSERT INTO pitr VALUES ('A')")
	target := a.backupThenTarget(primary)
	srcStanza := a.Layout.Backup.Stanza
	a.Down()
	before := repoFiles(t, repo, srcStanza)

	const newStanza = "restored-new"
	b := bootstrapCluster(t, "restored", 2, repo, newStanza,
		config.BootstrapRestore{Repository: repo, Stanza: srcStanza, TargetTime: target.Format(time.RFC3339Nano)})
	l := b.Layout
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
	b.Down()

	// A restore that cannot succeed (a transaction the archive never
	// reaches: recovery ends short of it) leaves no data directory: the
	// member logs the failure, gives the claim back and tries again.
	f := bootstrapCluster(t, "unreachable", 1, repo, "unreachable-new",
		config.BootstrapRestore{Repository: repo, Stanza: srcStanza, TargetXID: "4000000000"})
	if out, err := run(t, 3*time.Minute, "up", "--detach", "--dir", f.Dir, "--wait", "1s"); err == nil {
		t.Fatalf("up of a cluster whose restore cannot succeed reported it healthy:\n%s", out)
	}
	name := f.Layout.Members[0].Name
	logFile := local.LogFile(f.Dir, name)
	deadline := time.Now().Add(5 * time.Minute)
	for {
		log, _ := os.ReadFile(logFile)
		if strings.Count(string(log), "building the new cluster's data directory") >= 2 {
			break // failed, and tried again
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failed restore and retry logged by %s within 5m:\n%s", name, log)
		}
		time.Sleep(time.Second)
	}
	f.Down()
	pgdata := filepath.Join(local.MemberDir(f.Dir, name), "pgdata")
	if entries, err := os.ReadDir(pgdata); err == nil && len(entries) > 0 {
		t.Errorf("the failed restore left %d entries in %s", len(entries), pgdata)
	}
	if _, err := os.Stat(pgdata + ".restore-tmp"); err == nil {
		t.Errorf("the failed restore left %s.restore-tmp", pgdata)
	}
	log, _ := os.ReadFile(logFile)
	if !strings.Contains(string(log), "bootstrap by restore from a backup") || !strings.Contains(string(log), "recovery to transaction 4000000000") {
		t.Errorf("the log does not say which target failed:\n%s", log)
	}
	if got := repoFiles(t, repo, srcStanza); !slices.Equal(before, got) {
		t.Errorf("A's stanza %s changed by the failed restore", srcStanza)
	}

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

// bootstrapCluster writes, without starting it, an n-member local cluster
// archiving into stanza own of repo whose members' files carry restore as
// their bootstrap.restore section, as an operator (or the chart) writes
// them; holdfast up then starts it as an existing cluster. It is stopped
// when the test ends.
func bootstrapCluster(t *testing.T, name string, n int, repo, own string, restore config.BootstrapRestore) *Cluster {
	t.Helper()
	c := &Cluster{t: t, Dir: filepath.Join(testutil.Dir(t), name)}
	t.Cleanup(func() {
		if t.Failed() {
			c.DumpLogs()
		}
		run(t, 3*time.Minute, "down", "--dir", c.Dir)
	})
	l, err := local.NewLayout(name, n, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.Backup = &local.Backup{Repository: repo, Stanza: own}
	if err := l.Write(c.Dir); err != nil {
		t.Fatal(err)
	}
	for _, m := range l.Members {
		mc := l.MemberConfig(c.Dir, m)
		mc.Bootstrap.Restore = restore
		out, err := config.Marshal(mc)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(local.ConfigFile(c.Dir, m.Name), out, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c.Layout = l
	return c
}
