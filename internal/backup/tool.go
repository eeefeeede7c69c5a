package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/internal/osuser"
)

// Tool runs pgbackrest with one configuration file and stanza, as the
// account PostgreSQL runs as (it must read the data directory and write
// the repository).
type Tool struct {
	// Binary is the pgbackrest program ("" = found on PATH).
	Binary  string
	Config  string
	Stanza  string
	Account osuser.Account
	// Env is added to the environment: pgBackRest connects to PostgreSQL
	// through libpq, which takes the host (holdfast's PostgreSQL listens on
	// TCP only) and the password file from PGHOST and PGPASSFILE.
	Env []string
	// Secrets reach pgBackRest in its environment (the repository's S3
	// credentials and passphrase).
	Secrets Secrets
	// IOTimeout, when set, overrides pgBackRest's io-timeout: a probe
	// bounds how long an unreachable repository keeps it waiting
	// (pgBackRest retries for about four times io-timeout).
	IOTimeout time.Duration
}

// FindBinary returns the path of pgbackrest, or an error saying how to
// install it.
func FindBinary() (string, error) {
	p, err := exec.LookPath("pgbackrest")
	if err != nil {
		return "", fmt.Errorf("pgbackrest not found on PATH: install the pgbackrest package (scripts/install-deps.sh does): %w", err)
	}
	return p, nil
}

// lockErrorCode is pgBackRest's exit code for "unable to acquire lock"
// (LockAcquireError).
const lockErrorCode = 50

// LockHeld says whether err is pgBackRest's refusal to run because another
// pgBackRest process holds the lock it needs.
func LockHeld(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && ee.ExitCode() == lockErrorCode
}

// pgbackrestStopGrace is how long a cancelled pgBackRest has, after
// SIGTERM, before it is killed.
const pgbackrestStopGrace = 10 * time.Second

// run runs `pgbackrest --config --stanza <args>` and returns its standard
// output; an error carries the end of its standard error. A cancelled
// pgBackRest gets SIGTERM, and is killed pgbackrestStopGrace later.
func (t Tool) run(ctx context.Context, args ...string) ([]byte, error) {
	return t.exec(ctx, false, args)
}

// runGroup is run for a command with worker processes (a backup): it runs
// in a process group of its own, and cancelling it signals the whole
// group. pgBackRest's main process exits on SIGTERM, but a local worker
// copying a file notices only once that file is copied — minutes for a
// large one — and meanwhile writes the aborted backup into the
// repository, past the job's end and even past the agent's.
func (t Tool) runGroup(ctx context.Context, args ...string) ([]byte, error) {
	return t.exec(ctx, true, args)
}

func (t Tool) exec(ctx context.Context, group bool, args []string) ([]byte, error) {
	bin := t.Binary
	if bin == "" {
		var err error
		if bin, err = FindBinary(); err != nil {
			return nil, err
		}
	}
	full := []string{"--config=" + t.Config, "--stanza=" + t.Stanza}
	if t.IOTimeout > 0 {
		full = append(full, fmt.Sprintf("--io-timeout=%g", t.IOTimeout.Seconds()))
	}
	full = append(full, args...)
	cmd := exec.CommandContext(ctx, bin, full...)
	// A cancelled pgBackRest gets SIGTERM first: it releases its locks
	// (a SIGKILLed backup's workers could keep the stanza locked while
	// they notice). A command with workers gets it as a group (runGroup).
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = pgbackrestStopGrace
	cmd.Env = append(append(cmd.Environ(), t.Env...), t.Secrets.Env()...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: group}
	if cred := t.Account.Credential(); cred != nil {
		cmd.SysProcAttr.Credential = cred
		cmd.Dir = "/"
	}
	if group {
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if group && ctx.Err() != nil && cmd.Process != nil {
		// Cancelled: whatever of the group outlived the main process and
		// the grace (a worker that ignored SIGTERM) is killed. The group
		// id is the main process's pid, not reused while a member lives.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = strings.TrimSpace(out.String())
		}
		if len(msg) > 2000 {
			msg = "..." + msg[len(msg)-2000:]
		}
		return out.Bytes(), fmt.Errorf("pgbackrest %s (stanza %s): %w: %s", args[0], t.Stanza, err, msg)
	}
	return out.Bytes(), nil
}

// StanzaCreate creates the stanza, or checks that the existing one holds
// this database (pgBackRest refuses a stanza of another system
// identifier). Idempotent.
func (t Tool) StanzaCreate(ctx context.Context) error {
	_, err := t.run(ctx, "stanza-create")
	return err
}

// Check verifies that archiving works end to end (a WAL switch reaches the
// repository).
func (t Tool) Check(ctx context.Context) error {
	_, err := t.run(ctx, "check")
	return err
}

// Backup takes a backup of type typ ("" = pgBackRest's choice: incr, or
// full when none exists) and expires what retention no longer keeps.
func (t Tool) Backup(ctx context.Context, typ string) error {
	args := []string{"backup"}
	if typ != "" {
		args = append(args, "--type="+typ)
	}
	_, err := t.runGroup(ctx, args...)
	return err
}

// Info reads the stanza's backups. A stanza missing from the repository is
// not an error: see Stanza.Exists.
func (t Tool) Info(ctx context.Context) (Stanza, error) {
	out, err := t.run(ctx, "info", "--output=json")
	if err != nil {
		return Stanza{}, err
	}
	sts, err := ParseInfo(out)
	if err != nil {
		if msg, ok := unreadableRepoMessage(out); ok {
			return Stanza{}, &RepoError{Message: msg}
		}
		return Stanza{}, err
	}
	for _, s := range sts {
		if s.Name == t.Stanza {
			if s.RepoError != "" {
				return s, &RepoError{Message: s.RepoError}
			}
			return s, nil
		}
	}
	return Stanza{}, errors.New("pgbackrest info: the stanza is missing from the answer")
}

// RepoError is pgBackRest's answer when it could not read the repository
// (pgbackrest info's status "other"): unreachable, refused credentials, a
// missing bucket, a passphrase that does not decrypt it. ExplainRepoError
// says what to do.
type RepoError struct{ Message string }

func (e *RepoError) Error() string {
	first, _, _ := strings.Cut(e.Message, "\n")
	return "pgbackrest info: the repository cannot be read: " + first
}

// unreadableRepoMessage reads the repository's error out of `pgbackrest
// info` output that is not valid JSON: reading an encrypted repository
// without its cipher, pgBackRest 2.45 quotes the file's encrypted bytes
// in the message. The message is cut at the first byte that is not
// printable text.
func unreadableRepoMessage(out []byte) (string, bool) {
	const marker = `"status":{"code":99,"message":"`
	i := bytes.Index(out, []byte(marker))
	if i < 0 {
		return "", false
	}
	msg := out[i+len(marker):]
	for j, c := range msg {
		if c < 0x20 || c >= 0x7f || c == '"' {
			msg = msg[:j]
			break
		}
	}
	text := strings.ReplaceAll(string(msg), `\n`, "; ")
	return strings.TrimRight(text, ": ") + ": the content is not text (an encrypted file, read without the passphrase it was encrypted with)", true
}

// ListArchive lists the names in the stanza's archive directory dir
// (relative to the stanza's archive, e.g. "15-1/0000000100000000"); a
// missing directory lists nothing.
func (t Tool) ListArchive(ctx context.Context, dir string) ([]string, error) {
	out, err := t.run(ctx, "repo-ls", "archive/"+t.Stanza+"/"+dir)
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(out)), nil
}

// ArchivePush pushes one WAL file (archive_command's %p, relative to the
// data directory).
func (t Tool) ArchivePush(ctx context.Context, wal string) error {
	_, err := t.run(ctx, "archive-push", wal)
	return err
}

// ArchiveGet fetches the archived WAL file wal (restore_command's %f) into
// dest (%p, relative to the data directory). It only reads the
// repository, and asks for no asynchronous fetch (archive-async off), so
// pgBackRest writes no spool file either: dest is the only file written.
// An error is returned when the file is not in the archive too, which
// PostgreSQL reads as "not available" (a standby then streams).
func (t Tool) ArchiveGet(ctx context.Context, wal, dest string) error {
	_, err := t.run(ctx, "archive-get", "--no-archive-async", wal, dest)
	return err
}

// Restore restores the stanza's backup set (label; "" = pgBackRest's
// choice for the target) into pgPath (which must be empty) with the
// recovery settings for target; the database is not started.
func (t Tool) Restore(ctx context.Context, pgPath, set string, target Target) error {
	args := append([]string{"restore", "--pg1-path=" + pgPath}, RestoreArgs(target)...)
	if set != "" {
		args = append(args, "--set="+set)
	}
	_, err := t.run(ctx, args...)
	return err
}

// RestoreStandby restores the stanza's backup set (label) into pgPath
// (which must be empty) as a standby: pgBackRest writes standby.signal and
// its restore_command (see StripRecoverySettings); the database is not
// started. The WAL the backup needs to become consistent is not copied:
// recovery fetches it from the archive.
func (t Tool) RestoreStandby(ctx context.Context, pgPath, set string) error {
	_, err := t.run(ctx, "restore", "--pg1-path="+pgPath, "--type=standby", "--set="+set)
	return err
}
