package backup

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/testutil"
)

// workerStartWait bounds the wait for the fake pgBackRest's worker to
// start in TestBackupCancelStopsWorkers.
const workerStartWait = 30 * time.Second

// workerGoneWait bounds how long after Backup returned the cancelled
// backup's worker may take to die (well below pgbackrestStopGrace: it was
// sent SIGTERM and SIGKILL by then).
const workerGoneWait = 5 * time.Second

// TestBackupCancelStopsWorkers: a cancelled backup leaves no process of
// its pgBackRest behind. pgBackRest's main process exits on SIGTERM, but
// a local worker busy copying a file notices only once the file is
// copied — minutes for a large file — and goes on writing the aborted
// backup into the repository (seen in TestBackupDuringSwitchover: the
// interrupted attempt's worker wrote a 70 MB file six minutes after the
// job was reported failed, after the cluster was down). The fake
// pgbackrest here exits on SIGTERM and leaves its worker running, as
// pgBackRest does mid-file.
func TestBackupCancelStopsWorkers(t *testing.T) {
	dir := testutil.Dir(t)
	pidFile := filepath.Join(dir, "worker.pid")
	bin := filepath.Join(dir, "pgbackrest")
	script := "#!/bin/sh\nsleep 600 &\necho $! > " + pidFile + "\ntrap 'exit 63' TERM\nwait\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Tool{Binary: bin, Config: "/nonexistent.conf", Stanza: "s"}.Backup(ctx, "full") }()
	var worker int
	for deadline := time.Now().Add(workerStartWait); worker == 0; {
		if b, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(b), "\n") {
			worker, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		if worker == 0 && time.Now().After(deadline) {
			cancel()
			t.Fatalf("the fake pgbackrest's worker did not start within %s", workerStartWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() {
		// Only the fake worker, should it still run (its pid is not reused
		// while it does).
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(worker) + "/cmdline"); err == nil && strings.HasPrefix(string(b), "sleep\x00600") {
			_ = syscall.Kill(worker, syscall.SIGKILL)
		}
	})
	cancel()
	if err := <-done; err == nil {
		t.Fatal("a cancelled backup succeeded")
	}
	// The worker is this test's grandchild: once killed it is reaped by
	// init (or a subreaper), so "gone" is ESRCH or a zombie. A signal is
	// delivered asynchronously: on a loaded machine the killed worker
	// still ran for a moment after Backup returned.
	for deadline := time.Now().Add(workerGoneWait); ; time.Sleep(20 * time.Millisecond) {
		if err := syscall.Kill(worker, 0); errors.Is(err, syscall.ESRCH) || zombie(worker) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cancelled backup's worker (pid %d) still runs %s after Backup returned", worker, workerGoneWait)
		}
	}
}

// zombie says whether pid has exited and waits to be reaped.
func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}
