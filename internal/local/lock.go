package local

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// LockFile is the lock `holdfast up` holds on a cluster's directory while
// it creates or starts the cluster.
func LockFile(dir string) string { return filepath.Join(dir, "up.lock") }

// dirLock is a held LockFile.
type dirLock struct{ f *os.File }

// lockDir takes the directory's lock without waiting: two `holdfast up` on
// one directory would otherwise both find a member or the proxy not
// running, both start it, and one copy would fail to bind while its `up`
// reported it started. The lock is an flock on LockFile, so it is released
// when its holder exits, however it exits; the file records the holder's
// pid for the message of the one refused. The descriptor is close-on-exec:
// the agents and the proxy `up` spawns do not inherit the lock.
func lockDir(dir string) (*dirLock, error) {
	path := LockFile(dir)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder := "another holdfast up"
			if b, rerr := os.ReadFile(path); rerr == nil {
				if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
					holder = fmt.Sprintf("another holdfast up (pid %d)", pid)
				}
			}
			return nil, fmt.Errorf("%s is creating or starting the cluster in %s: wait for it to finish (it holds %s), then run up again", holder, dir, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &dirLock{f}, nil
}

// release gives the lock up. The file stays: removing it would let a
// process that opened it before the removal lock a file nobody else sees.
func (l *dirLock) release() {
	_ = l.f.Truncate(0)
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	l.f.Close()
}
