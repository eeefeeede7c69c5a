// Package fenceguard is the agent's userspace dead-man's switch for
// PostgreSQL: a small child process (`holdfast fence-guard`) that kills the
// postmaster's whole process group if the agent stops confirming, in time,
// that the primary may keep accepting writes.
//
// It guards against the failure fencing cannot handle from inside the
// agent: a frozen agent (SIGSTOP, a hung system call, a stalled runtime)
// stops renewing its lease and stops fencing, while its postmaster keeps
// accepting writes; the lease expires, another member is promoted, and two
// primaries accept writes. The guard is a separate process, so it keeps
// running while the agent is frozen, and it acts on its own monotonic
// clock. A frozen *host* (or cgroup) freezes PostgreSQL too, which accepts
// nothing then; the kernel watchdog (package watchdog) covers a host that
// keeps running PostgreSQL but not the agent's child.
//
// Protocol, one line per message on the guard's stdin:
//
//	arm <pgid> <ms>   kill process group pgid unless another arm or a
//	                  disarm arrives within ms milliseconds
//	disarm            forget it
//
// The guard exits when stdin closes (the agent exited; PostgreSQL dies with
// the agent by its parent-death signal).
package fenceguard

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// Options configure Run.
type Options struct {
	// Kill kills a process group (syscall.Kill(-pgid, SIGKILL) in the real
	// guard).
	Kill func(pgid int) error
	Log  *slog.Logger
}

type command struct {
	arm    bool
	pgid   int
	within time.Duration
}

// parse reads one protocol line.
func parse(line string) (command, error) {
	f := strings.Fields(line)
	switch {
	case len(f) == 1 && f[0] == "disarm":
		return command{}, nil
	case len(f) == 3 && f[0] == "arm":
		pgid, err := strconv.Atoi(f[1])
		if err != nil || pgid <= 1 {
			return command{}, fmt.Errorf("fence guard: %q: bad process group", line)
		}
		ms, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil || ms < 0 {
			return command{}, fmt.Errorf("fence guard: %q: bad delay", line)
		}
		return command{arm: true, pgid: pgid, within: time.Duration(ms) * time.Millisecond}, nil
	}
	return command{}, fmt.Errorf("fence guard: %q: not a command (arm <pgid> <ms> | disarm)", line)
}

// Run serves the protocol on r until r ends or ctx is done. A malformed
// line disarms (the guard never kills on a message it did not understand)
// and is logged.
func Run(ctx context.Context, r io.Reader, o Options) error {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	lines := make(chan string)
	readErr := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
		readErr <- sc.Err()
		close(lines)
	}()
	var (
		timer *time.Timer
		fire  <-chan time.Time
		pgid  int
	)
	stop := func() {
		if timer != nil {
			timer.Stop()
		}
		timer, fire, pgid = nil, nil, 0
	}
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case line, ok := <-lines:
			if !ok {
				return <-readErr
			}
			c, err := parse(line)
			if err != nil {
				log.Error("ignoring message; disarmed", "err", err)
				stop()
				continue
			}
			stop()
			if c.arm {
				pgid = c.pgid
				timer = time.NewTimer(c.within)
				fire = timer.C
			}
		case <-fire:
			log.Error("the agent did not confirm the primary in time: killing PostgreSQL's process group", "pgid", pgid)
			if err := o.Kill(pgid); err != nil {
				log.Error("kill PostgreSQL's process group", "pgid", pgid, "err", err)
			}
			stop()
		}
	}
}
