package pg

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// tailLines is how many lines of a failed command's output an error shows.
const tailLines = 20

// tailBuffer keeps the last bytes written to it.
type tailBuffer struct {
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.buf) }

// lastLines returns the last n non-empty lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// env is the environment of every PostgreSQL program: ours without PG*
// variables (so nothing from the agent's environment redirects a program to
// another server or data directory) and with LC_ALL=C (so the output we
// parse is not translated), plus extra.
func (e *Engine) env(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") || k == "LANG" || k == "LANGUAGE" {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "LC_ALL=C")
	return append(env, extra...)
}

// sysProcAttr runs a program as the account, in its own process group, and
// sends it sig when the OS thread that started it dies (0 = none).
func (e *Engine) sysProcAttr(sig syscall.Signal) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Credential: e.o.Account.Credential(),
		Setpgid:    true,
		Pdeathsig:  sig,
	}
}

// run runs a PostgreSQL program from BinDir as the account and waits for
// it, returning its combined output (the last 64 KiB). When toLog is set
// the output is also appended to the log file. ctx cancels the program:
// SIGTERM to its process group, SIGKILL 10 s later. The program gets
// SIGTERM if the agent dies (Pdeathsig), so an orphaned pg_basebackup does
// not keep writing into a directory the next agent removes. The error names
// op and carries the last lines of output.
func (e *Engine) run(ctx context.Context, op, prog string, args, extraEnv []string, toLog bool) (string, error) {
	path := filepath.Join(e.o.BinDir, prog)
	tail := &tailBuffer{max: 64 << 10}
	var out io.Writer = tail
	if toLog {
		if lf, err := e.openLog(); err != nil {
			e.log.Warn("cannot open the PostgreSQL log file; command output only goes to errors", "file", e.o.LogFile, "err", err)
		} else {
			defer lf.Close()
			fmt.Fprintf(lf, "%s holdfast: %s: running %s\n", time.Now().UTC().Format(time.RFC3339), op, prog)
			out = io.MultiWriter(lf, tail)
		}
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = e.env(extraEnv...)
	cmd.Dir = filepath.Dir(e.o.DataDir)
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = e.sysProcAttr(syscall.SIGTERM)
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second

	// Pdeathsig fires when the creating OS thread exits, so start and wait
	// on a thread locked for the purpose.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		errc <- cmd.Run()
	}()
	err := <-errc
	output := tail.String()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return output, fmt.Errorf("%s: %s failed: %w\n%s", op, prog, err, indent(lastLines(output, tailLines)))
	}
	return output, nil
}

func indent(s string) string {
	if s == "" {
		return "  (no output)"
	}
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}

// openLog opens the log file for appending, creating it (and its parent)
// if needed, owned by the account.
func (e *Engine) openLog() (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(e.o.LogFile), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(e.o.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	if err := e.o.Account.Chown(e.o.LogFile); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// readTail returns up to the last max bytes of the file at path ("" when
// it cannot be read).
func readTail(path string, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	off := fi.Size() - max
	if off < 0 {
		off = 0
	}
	b := make([]byte, fi.Size()-off)
	n, _ := f.ReadAt(b, off)
	return string(b[:n])
}
