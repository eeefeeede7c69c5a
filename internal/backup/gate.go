package backup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Gate is the archive gate: a file through which the agent lets its
// PostgreSQL's archive_command push WAL only while this member is the
// leader under a lease it has proven valid. The file holds a deadline on
// the machine's CLOCK_MONOTONIC (shared by every process on the host and
// immune to wall-clock jumps): the moment the agent would fence. A frozen
// agent stops extending it, a fenced or demoted one revokes it, so a member
// that lost the leadership never pushes — its segments stay in pg_wal and
// the new primary's archive has no conflicting copies.
//
// The file lives in the member's data_dir, outside pgdata, so no backup or
// clone ever carries a grant to another machine.
type Gate struct {
	path string
	// now reads CLOCK_MONOTONIC; tests replace it.
	now func() time.Duration
}

// NewGate returns the gate whose file is path.
func NewGate(path string) *Gate { return &Gate{path: path, now: monotonic} }

// Path is the gate's file.
func (g *Gate) Path() string { return g.path }

// monotonic is CLOCK_MONOTONIC as a duration since boot.
func monotonic() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		// Linux always has CLOCK_MONOTONIC: a failure is a broken system.
		panic(fmt.Sprintf("clock_gettime(CLOCK_MONOTONIC): %v", err))
	}
	return time.Duration(ts.Nano())
}

// Grant lets the archive push for the next `valid` (a non-positive valid
// revokes). The file is replaced atomically and readable by every user
// (the archive command runs as PostgreSQL's account); it says nothing
// secret.
func (g *Gate) Grant(valid time.Duration) error {
	if valid <= 0 {
		return g.Revoke()
	}
	until := g.now() + valid
	tmp := g.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatInt(int64(until), 10)+"\n"), 0o644); err != nil {
		return fmt.Errorf("archive gate: grant: %w", err)
	}
	if err := os.Rename(tmp, g.path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("archive gate: grant: %w", err)
	}
	return nil
}

// Revoke stops every push from now on. Revoking a gate never granted is
// not an error.
func (g *Gate) Revoke() error {
	if err := os.Remove(g.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("archive gate: revoke: %w", err)
	}
	return nil
}

// ErrNotGranted means this member may not archive now.
var ErrNotGranted = errors.New("this member may not archive: it is not the primary under a valid lease (the segment stays in pg_wal; the primary archives)")

// Check returns nil while a grant lasts, else an error wrapping
// ErrNotGranted (or saying the file is unreadable).
func (g *Gate) Check() error {
	b, err := os.ReadFile(g.path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: no grant in %s", ErrNotGranted, g.path)
	}
	if err != nil {
		return fmt.Errorf("archive gate: read %s: %w", g.path, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return fmt.Errorf("archive gate: %s is damaged (%q): the agent rewrites it while it leads", g.path, b)
	}
	if left := time.Duration(n) - g.now(); left <= 0 {
		return fmt.Errorf("%w: the grant in %s ran out %s ago", ErrNotGranted, filepath.Base(g.path), -left)
	}
	return nil
}
