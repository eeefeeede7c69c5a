package fenceguard

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Client is the agent's end: it starts the guard process and sends it
// messages. Its methods are safe for concurrent use (the loop and the
// lease keeper both arm it) and a nil *Client does nothing.
type Client struct {
	mu  sync.Mutex
	w   io.WriteCloser
	cmd *exec.Cmd
}

// Start runs `<binary> fence-guard` with its output to logTo. The guard
// exits when the agent's end of the pipe closes — also when the agent is
// killed, since the kernel closes its descriptors.
func Start(binary string, logTo io.Writer) (*Client, error) {
	cmd := exec.Command(binary, "fence-guard")
	cmd.Stdout, cmd.Stderr = logTo, logTo
	w, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start fence guard: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start fence guard: %w", err)
	}
	go func() { _ = cmd.Wait() }()
	return &Client{w: w, cmd: cmd}, nil
}

// Arm asks the guard to kill process group pgid unless armed again or
// disarmed within d. d ≤ 0 kills at once.
func (c *Client) Arm(pgid int, d time.Duration) error {
	if c == nil || pgid <= 1 {
		return nil
	}
	return c.send(fmt.Sprintf("arm %d %d\n", pgid, max(d, 0).Milliseconds()))
}

// Disarm tells the guard to forget the process group.
func (c *Client) Disarm() error {
	if c == nil {
		return nil
	}
	return c.send("disarm\n")
}

func (c *Client) send(msg string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.w == nil {
		return fmt.Errorf("fence guard: closed")
	}
	if _, err := io.WriteString(c.w, msg); err != nil {
		return fmt.Errorf("fence guard: %w", err)
	}
	return nil
}

// Close disarms and stops the guard.
func (c *Client) Close() {
	if c == nil {
		return
	}
	_ = c.Disarm()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.w != nil {
		_ = c.w.Close()
		c.w = nil
	}
}

// KillGroup is the real guard's kill: SIGKILL to every process of the group.
func KillGroup(pgid int) error {
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		return err
	}
	return nil
}

// Binary is the running executable, for Start.
func Binary() (string, error) { return os.Executable() }
