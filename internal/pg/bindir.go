package pg

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// requiredPrograms must all be in the binary directory.
var requiredPrograms = []string{"postgres", "initdb", "pg_ctl", "pg_basebackup", "pg_rewind", "pg_controldata"}

// FindBinDir returns the PostgreSQL binary directory: configured when set
// (it must hold postgres, initdb, pg_ctl, pg_basebackup, pg_rewind and
// pg_controldata), else the highest-versioned /usr/lib/postgresql/*/bin
// (Debian's layout; versions compare numerically, so 16 beats 9.6), else
// the directory of postgres on PATH. The error says how to fix it. It reads
// the file system only.
func FindBinDir(configured string) (string, error) {
	const fix = "install PostgreSQL (scripts/install-deps.sh does) or set postgresql.bin_dir"
	if configured != "" {
		if err := checkBinDir(configured); err != nil {
			return "", fmt.Errorf("find PostgreSQL binaries: postgresql.bin_dir %s: %w", configured, err)
		}
		return configured, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	best, bestVersion := "", []int(nil)
	for _, m := range matches {
		v, ok := parseVersion(filepath.Base(filepath.Dir(m)))
		if !ok {
			continue
		}
		if _, err := os.Stat(filepath.Join(m, "postgres")); err != nil {
			continue
		}
		if best == "" || versionLess(bestVersion, v) {
			best, bestVersion = m, v
		}
	}
	if best != "" {
		if err := checkBinDir(best); err != nil {
			return "", fmt.Errorf("find PostgreSQL binaries: %s: %w; %s", best, err, fix)
		}
		return best, nil
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		dir := filepath.Dir(p)
		if err := checkBinDir(dir); err != nil {
			return "", fmt.Errorf("find PostgreSQL binaries: %s (from PATH): %w; %s", dir, err, fix)
		}
		return dir, nil
	}
	return "", fmt.Errorf("find PostgreSQL binaries: none in /usr/lib/postgresql/*/bin nor on PATH; %s", fix)
}

func checkBinDir(dir string) error {
	var missing []string
	for _, p := range requiredPrograms {
		fi, err := os.Stat(filepath.Join(dir, p))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	return nil
}

// parseVersion reads "15" or "9.6" as numbers.
func parseVersion(s string) ([]int, bool) {
	var v []int
	for _, p := range strings.Split(s, ".") {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return nil, false
		}
		v = append(v, n)
	}
	return v, true
}

func versionLess(a, b []int) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return len(a) < len(b)
}
