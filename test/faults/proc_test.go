package faults

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is a process the harness started (an agent, an etcd member, the
// proxy). It runs in its own session so that signals meant for the test
// never reach it, and is reaped by a goroutine.
type Proc struct {
	Name    string
	Log     string
	Started time.Time
	cmd     *exec.Cmd
	done    chan struct{}

	mu      sync.Mutex
	stopped bool // SIGSTOPped by the harness and not yet continued
}

// startProc starts argv with its output appended to logFile.
func startProc(name, logFile string, argv ...string) (*Proc, error) {
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fmt.Fprintf(f, "==== %s harness: start %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = childEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: logFile, Started: time.Now(), cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// PID is the process id (`ip netns exec` execs the program, so it is the
// program's own pid).
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig unless the process has exited.
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return fmt.Errorf("%s (pid %d) has exited", p.Name, p.PID())
	}
	p.mu.Lock()
	switch sig {
	case syscall.SIGSTOP:
		p.stopped = true
	case syscall.SIGCONT:
		p.stopped = false
	}
	p.mu.Unlock()
	return syscall.Kill(p.PID(), sig)
}

// Wait waits up to timeout for the process to exit.
func (p *Proc) Wait(timeout time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Stop sends SIGCONT (a frozen process cannot act on SIGTERM) and SIGTERM,
// waits up to timeout, then SIGKILLs. It reports whether the process had
// to be killed.
func (p *Proc) Stop(timeout time.Duration) (killed bool) {
	if p.Exited() {
		return false
	}
	_ = p.Signal(syscall.SIGCONT)
	_ = p.Signal(syscall.SIGTERM)
	if p.Wait(timeout) {
		return false
	}
	_ = syscall.Kill(p.PID(), syscall.SIGKILL)
	p.Wait(30 * time.Second)
	return true
}

// Kill sends SIGKILL and waits for the exit.
func (p *Proc) Kill() {
	if p.Exited() {
		return
	}
	_ = syscall.Kill(p.PID(), syscall.SIGKILL)
	p.Wait(30 * time.Second)
}

// pidGone waits until pid has exited (or is a zombie), up to timeout.
func pidGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if syscall.Kill(pid, 0) != nil {
			return true
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(b), ") Z ") {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fileTail returns the last n lines of a file.
func fileTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ExitStatus describes how the process ended ("" while it runs).
func (p *Proc) ExitStatus() string {
	if !p.Exited() {
		return ""
	}
	return p.cmd.ProcessState.String()
}

// childEnv is the environment without the suite's own HOLDFAST_FAULTS*
// variables: the agent refuses HOLDFAST_* variables it does not know.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOLDFAST_FAULTS") {
			env = append(env, kv)
		}
	}
	return env
}
