package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/internal/osuser"
)

// Timeouts of a restore.
const (
	// recoveryTimeout bounds replaying the archive up to the target.
	recoveryTimeout = 30 * time.Minute
	// recoveryPoll is how often the restore asks whether recovery ended.
	recoveryPoll = 200 * time.Millisecond
	// restoreStopTimeout bounds the clean stop after recovery.
	restoreStopTimeout = time.Minute
)

// Source is the repository and stanza a restore reads, and the backup it
// starts from.
type Source struct {
	Repo   Repo
	Stanza string
	// Set is the label of the backup to restore ("" = the newest one the
	// target allows: pgBackRest's choice).
	Set string
}

// RestoreOptions configure RestoreInto.
type RestoreOptions struct {
	Source Source
	Target Target
	// PGData is the new data directory (must not exist or be empty);
	// WorkDir holds the restore's pgBackRest configuration and logs, kept
	// for the record.
	PGData, WorkDir string
	BinDir          string
	Account         osuser.Account
	// Port is a free loopback port recovery runs on.
	Port int
	// Superuser and Replication: the new cluster's roles get these
	// passwords (the restored database holds the source's).
	SuperuserName, SuperuserPassword     string
	ReplicationName, ReplicationPassword string
	// Now is the time a target time must not be after.
	Now time.Time
}

// Inspect reads the source's stanza and refuses, changing nothing, a
// repository that cannot be read, a stanza that is missing or holds no
// valid backup, a backup set it does not hold, and a target no backup can
// reach. workDir receives the configuration pgBackRest reads (created if
// missing).
func Inspect(ctx context.Context, src Source, target Target, workDir string, acct osuser.Account, now time.Time) (Stanza, Tool, error) {
	st, tool, err := Probe(ctx, src.Repo, src.Stanza, workDir, acct)
	if err != nil {
		if !src.Repo.IsS3() {
			return Stanza{}, Tool{}, fmt.Errorf("%w (give the directory the source cluster's backup.repository names)", err)
		}
		return Stanza{}, Tool{}, err
	}
	if !st.Exists() {
		return st, tool, fmt.Errorf("repository %s holds no stanza %s (%s): check backup.stanza in the source's configuration", src.Repo, src.Stanza, st.Status)
	}
	if err := CheckTarget(st, src.Set, target, now); err != nil {
		return st, tool, err
	}
	return st, tool, nil
}

// RestoreInto restores o.Source into o.PGData and replays the archive to
// o.Target, then promotes and stops cleanly, so an agent can adopt the
// directory as a primary. During recovery nothing is archived
// (archive_mode off) and only this machine's loopback can connect
// (trust, on a port of its own); afterwards the recovery settings are
// reset and the roles get the new cluster's passwords. The holdfast
// marker of the source is removed: the directory belongs to the new
// cluster.
func RestoreInto(ctx context.Context, tool Tool, o RestoreOptions) error {
	if err := o.Account.MkdirOwned(o.PGData, 0o700); err != nil {
		return fmt.Errorf("restore: create %s: %w", o.PGData, err)
	}
	if err := tool.Restore(ctx, o.PGData, o.Source.Set, o.Target); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	for _, f := range []string{"holdfast.json", "standby.signal", "postmaster.pid"} {
		if err := os.Remove(filepath.Join(o.PGData, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("restore: remove the source's %s: %w", f, err)
		}
	}
	hba := filepath.Join(o.WorkDir, "recovery_hba.conf")
	if err := os.WriteFile(hba, []byte("host all all 127.0.0.1/32 trust\n"), 0o600); err != nil {
		return fmt.Errorf("restore: write %s: %w", hba, err)
	}
	if err := o.Account.Chown(hba); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(o.WorkDir, "recovery.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(o.BinDir, "postgres"), "-D", o.PGData,
		"-c", "port="+strconv.Itoa(o.Port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
		"-c", "hba_file="+hba, "-c", "archive_mode=off", "-c", "primary_conninfo=", "-c", "primary_slot_name=",
		"-c", "synchronous_standby_names=", "-c", "cluster_name=restore", "-c", "hot_standby=on")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = o.PGData
	// pgBackRest's restore_command (archive-get) reads the repository's
	// secrets from the environment it inherits from this server.
	cmd.Env = append(cmd.Environ(), tool.Secrets.Env()...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	if cred := o.Account.Credential(); cred != nil {
		cmd.SysProcAttr.Credential = cred
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("restore: start PostgreSQL for recovery: %w", err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGINT) // fast shutdown
		select {
		case <-exited:
			var ee *exec.ExitError
			if waitErr != nil && !errors.As(waitErr, &ee) {
				return waitErr
			}
			return nil
		case <-time.After(restoreStopTimeout):
			_ = cmd.Process.Kill()
			return fmt.Errorf("PostgreSQL did not stop within %s after recovery", restoreStopTimeout)
		}
	}
	if err := waitPromoted(ctx, o.Port, o.SuperuserName, exited); err != nil {
		_ = stop()
		return fmt.Errorf("restore: recovery to %s: %w (see %s)", o.Target, err, logf.Name())
	}
	if err := finishRestore(ctx, o); err != nil {
		_ = stop()
		return fmt.Errorf("restore: %w", err)
	}
	if err := stop(); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	return nil
}

// waitPromoted waits until the recovering server on port leaves recovery
// (the target reached and promoted), or exits (the target not reached).
func waitPromoted(ctx context.Context, port int, user string, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, recoveryTimeout)
	defer cancel()
	for {
		select {
		case <-exited:
			return errors.New("PostgreSQL stopped during recovery: the archive does not reach the target (no WAL after it has been archived yet) or recovery failed")
		case <-ctx.Done():
			return fmt.Errorf("not finished within %s", recoveryTimeout)
		case <-time.After(recoveryPoll):
		}
		c, cc := context.WithTimeout(ctx, 5*time.Second)
		conn, err := pgx.Connect(c, fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable", port, user))
		if err != nil {
			cc()
			continue
		}
		var inRecovery bool
		err = conn.QueryRow(c, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
		conn.Close(c)
		cc()
		if err == nil && !inRecovery {
			return nil
		}
	}
}

// finishRestore resets the recovery settings pgBackRest wrote and gives
// the roles the new cluster's passwords.
func finishRestore(ctx context.Context, o RestoreOptions) error {
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=postgres sslmode=disable", o.Port, o.SuperuserName))
	if err != nil {
		return fmt.Errorf("connect after recovery: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, p := range []string{"restore_command", "recovery_target_time", "recovery_target_lsn", "recovery_target_xid",
		"recovery_target_action", "recovery_target", "recovery_target_name", "recovery_target_timeline", "synchronous_standby_names", "archive_command", "archive_mode"} {
		if _, err := conn.Exec(ctx, "ALTER SYSTEM RESET "+p); err != nil {
			return fmt.Errorf("reset %s: %w", p, err)
		}
	}
	for _, r := range []struct{ name, pw string }{{o.SuperuserName, o.SuperuserPassword}, {o.ReplicationName, o.ReplicationPassword}} {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", r.name).Scan(&exists); err != nil {
			return fmt.Errorf("look up role %s: %w", r.name, err)
		}
		if !exists {
			continue // the agent creates the replication role
		}
		if _, err := conn.Exec(ctx, "ALTER ROLE "+pgx.Identifier{r.name}.Sanitize()+" PASSWORD "+quoteLiteral(r.pw)); err != nil {
			return fmt.Errorf("set the password of %s: %w", r.name, err)
		}
	}
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpoint after recovery: %w", err)
	}
	return nil
}

func quoteLiteral(s string) string {
	out := []byte{'\''}
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}
