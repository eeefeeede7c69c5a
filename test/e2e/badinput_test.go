package e2e

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/testutil"
)

// snapshot describes a directory tree: every path with its mode, size and
// content hash, so a test can prove nothing changed.
func snapshot(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		line := fmt.Sprintf("%s %v %d", rel, info.Mode(), info.Size())
		if info.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// runAgent runs `holdfast agent` and expects it to fail within timeout.
func runAgentExpectFailure(t *testing.T, timeout time.Duration, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"agent"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		t.Fatalf("agent did not refuse within %s; output:\n%s", timeout, out)
	}
	if err == nil {
		t.Fatalf("agent exited 0; output:\n%s", out)
	}
	return string(out)
}

func TestBadConfigIsRefusedAndChangesNothing(t *testing.T) {
	dir := testutil.Dir(t)
	dataDir := filepath.Join(dir, "member")
	cases := []struct {
		name, yaml string
		env        []string
		want       []string
	}{
		{"unknown key", "data_dir: " + dataDir + "\npostgresql:\n  listne: 127.0.0.1:5432\n",
			nil, []string{"postgresql.listne", "unknown key", "line 3"}},
		{"bad port", "data_dir: " + dataDir + "\npostgresql:\n  listen: 127.0.0.1:70000\n",
			nil, []string{"postgresql.listen", "70000"}},
		{"wrong type", "data_dir: " + dataDir + "\nttl: ten\n",
			nil, []string{"ttl", "ten"}},
		{"ttl shorter than the loop", "data_dir: " + dataDir + "\nttl: 2s\nloop_interval: 1s\n",
			nil, []string{"ttl"}},
		{"bad environment variable", "data_dir: " + dataDir + "\n",
			[]string{"HOLDFAST_POSTGRESQL_LISTEN=nonsense"}, []string{"HOLDFAST_POSTGRESQL_LISTEN"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".yaml")
			if err := os.WriteFile(file, []byte(tc.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, dir)
			out := runAgentExpectFailure(t, 20*time.Second, tc.env, "--config", file)
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("error does not mention %q:\n%s", w, out)
				}
			}
			if !strings.Contains(out, file) && tc.env == nil {
				t.Errorf("error does not name the file %s:\n%s", file, out)
			}
			if after := snapshot(t, dir); after != before {
				t.Errorf("refused configuration changed the disk:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
				t.Errorf("data_dir was created: %v", err)
			}
		})
	}
}

// A data directory of another cluster is refused, touching nothing: by the
// marker when the cluster name differs, and by PostgreSQL's system
// identifier (compared with the one recorded at bootstrap) when it does not.
func TestForeignDataDirectoryIsRefused(t *testing.T) {
	a := StartCluster(t, 1)
	a.WaitFor("healthy", 60*time.Second, Healthy(1))
	a.Down()
	for _, variant := range []struct{ name, cluster, want string }{
		{"other cluster name", "other", `belongs to cluster "other"`},
		{"other system identifier", "pg", "system identifier"},
	} {
		t.Run(variant.name, func(t *testing.T) {
			b := StartCluster(t, 1, "--cluster", variant.cluster)
			b.WaitFor("healthy", 60*time.Second, Healthy(1))
			b.Down()
			aData := filepath.Join(local.MemberDir(a.Dir, "pg-0"), "pgdata")
			bData := filepath.Join(local.MemberDir(b.Dir, variant.cluster+"-0"), "pgdata")
			// Put B's data where A's member expects its own.
			if err := os.Rename(aData, aData+".mine"); err != nil {
				t.Fatal(err)
			}
			defer func() {
				os.RemoveAll(aData)
				os.Rename(aData+".mine", aData)
			}()
			if out, err := exec.Command("cp", "-a", bData, aData).CombinedOutput(); err != nil {
				t.Fatalf("copy: %v %s", err, out)
			}
			before := snapshot(t, aData)
			out := runAgentExpectFailure(t, 60*time.Second, nil, "--config", local.ConfigFile(a.Dir, "pg-0"))
			if !strings.Contains(out, variant.want) || !strings.Contains(out, "will not touch it") {
				t.Errorf("refusal does not explain itself (want %q):\n%s", variant.want, out)
			}
			if after := snapshot(t, aData); after != before {
				t.Errorf("refused data directory changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}
