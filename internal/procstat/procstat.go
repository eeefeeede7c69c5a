// Package procstat reads what holdfast needs of a process from Linux's
// /proc/PID/stat: its state and its parent.
package procstat

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// Stat is a process's state letter (R, S, D, T, Z, X, …) and its parent's
// pid.
type Stat struct {
	State byte
	PPID  int
}

// Read reads pid's /proc/PID/stat. The command name, which comes before
// the state in parentheses, may itself hold spaces and parentheses: the
// fields are taken after its last ')'.
func Read(pid int) (Stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return Stat{}, fmt.Errorf("read the state of process %d: %w", pid, err)
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return Stat{}, fmt.Errorf("read the state of process %d: no command name in %q", pid, b)
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 2 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("read the state of process %d: no state and parent in %q", pid, b)
	}
	ppid, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return Stat{}, fmt.Errorf("read the state of process %d: parent %q: %w", pid, f[1], err)
	}
	return Stat{State: f[0][0], PPID: ppid}, nil
}

// Alive says whether pid is a process that has not exited: it exists and
// is neither a zombie (Z) nor dead (X).
func Alive(pid int) bool {
	s, err := Read(pid)
	return err == nil && s.State != 'Z' && s.State != 'X'
}
