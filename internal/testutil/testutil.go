// Package testutil has helpers shared by tests that run real PostgreSQL and
// etcd processes: free loopback ports, directories an unprivileged
// PostgreSQL account can reach when the tests run as root, and the
// PostgreSQL binary directory.
package testutil

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Dir returns a fresh temporary directory that every user can traverse
// (0755 on it and its parent), so PostgreSQL running as an unprivileged
// account under a root test can reach data directories created inside it.
// It is removed when the test ends.
func Dir(t testing.TB) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{filepath.Dir(d), d} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatalf("chmod %s: %v", p, err)
		}
	}
	return d
}

// PGBinDir returns the PostgreSQL binary directory, or skips the test with
// the command that installs PostgreSQL when none is found.
func PGBinDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("HOLDFAST_TEST_PG_BIN"); d != "" {
		return d
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	sort.Strings(matches)
	if len(matches) > 0 {
		return filepath.Dir(matches[len(matches)-1])
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		return filepath.Dir(p)
	}
	if os.Getenv("CI") != "" {
		t.Fatal("PostgreSQL is not installed: CI must run scripts/install-deps.sh first")
	}
	t.Skip("PostgreSQL is not installed: run scripts/install-deps.sh")
	return ""
}

// modulePath names the repository's go.mod.
const modulePath = "github.com/holdfast/holdfast"

// RepoRoot is the repository's root: the nearest directory, from the
// working directory up, whose go.mod is holdfast's. It fails the test when
// there is none.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module "+modulePath+"\n") {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("repository root: no holdfast go.mod above the working directory")
		}
		dir = parent
	}
}

// tailFileMax bounds how much of a file TailFile reads from its end.
const tailFileMax = 64 << 10

// TailFile returns the last n lines of the file at path (from at most its
// last 64 KiB), or a line saying why it could not be read: it is for
// showing logs after a failure, where a missing file is itself a finding.
func TailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > tailFileMax {
		_, _ = f.Seek(-tailFileMax, io.SeekEnd)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
