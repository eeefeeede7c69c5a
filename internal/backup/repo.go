package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/internal/osuser"
)

// CheckNewRepository refuses, changing nothing, a repository directory that
// can be neither used nor created: path exists and is not a directory, or
// the nearest existing directory above it is a file or cannot be reached.
// A missing directory under a reachable one is accepted (the caller
// creates it).
func CheckNewRepository(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("repository %s: give an absolute path", path)
	}
	fi, err := os.Stat(path)
	switch {
	case err == nil && fi.IsDir():
		return nil
	case err == nil:
		return fmt.Errorf("repository %s is not a directory: give a directory (or a path where one can be created)", path)
	case !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("repository %s cannot be reached: %w (check the path and its permissions, or mount the repository's volume)", path, err)
	}
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		switch {
		case err == nil && fi.IsDir():
			return nil
		case err == nil:
			return fmt.Errorf("repository %s cannot be created: %s is not a directory (give a path under a directory)", path, dir)
		case !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR):
			return fmt.Errorf("repository %s cannot be reached: %w (check the path and its permissions, or mount the repository's volume)", path, err)
		}
		if dir == "/" {
			return fmt.Errorf("repository %s cannot be created: no directory above it exists", path)
		}
	}
}

// probeIOTimeout is pgBackRest's io-timeout while it probes a repository:
// pgBackRest retries an unreachable endpoint for about four times as long
// (with its default of 60 s, four minutes before it says so).
const probeIOTimeout = 10 * time.Second

// Probe reads stanza's state in the repository without changing it: it
// writes a pgbackrest.conf (and pgBackRest's log and lock directories)
// into workDir, created if missing and owned by acct, and runs `pgbackrest
// info`. The Tool it returns reads the stanza with that configuration.
// A repository pgBackRest cannot read — a missing directory, an S3
// endpoint it cannot reach, refused credentials, a missing bucket, a
// passphrase that does not decrypt it — is refused with what to do
// (ExplainRepoError); the error wraps pgBackRest's.
func Probe(ctx context.Context, repo Repo, stanza, workDir string, acct osuser.Account) (Stanza, Tool, error) {
	if !repo.IsS3() {
		fi, err := os.Stat(repo.Location)
		if err != nil || !fi.IsDir() {
			if err == nil {
				err = errors.New("not a directory")
			}
			return Stanza{}, Tool{}, fmt.Errorf("repository %s cannot be read: %w", repo, err)
		}
	}
	for _, d := range []string{workDir, filepath.Join(workDir, "log"), filepath.Join(workDir, "lock"), filepath.Join(workDir, "spool")} {
		if err := acct.MkdirOwned(d, 0o700); err != nil {
			return Stanza{}, Tool{}, fmt.Errorf("create %s: %w", d, err)
		}
	}
	conf, err := RenderConf(Settings{Repo: repo, Stanza: stanza, RetentionFull: 1, WorkDir: workDir,
		PG: []PGCluster{{Path: filepath.Join(workDir, "none"), Port: 5432, User: "postgres"}}})
	if err != nil {
		return Stanza{}, Tool{}, err
	}
	path := filepath.Join(workDir, "probe-pgbackrest.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return Stanza{}, Tool{}, fmt.Errorf("write %s: %w", path, err)
	}
	if err := acct.Chown(path); err != nil {
		return Stanza{}, Tool{}, fmt.Errorf("write %s: %w", path, err)
	}
	tool := Tool{Config: path, Stanza: stanza, Account: acct, Secrets: repo.Secrets, IOTimeout: probeIOTimeout}
	st, err := tool.Info(ctx)
	if err != nil {
		return Stanza{}, Tool{}, explainRead(repo, stanza, err)
	}
	tool.IOTimeout = 0
	return st, tool, nil
}

// explainRead is the error of a `pgbackrest info` that failed: what is
// wrong with the repository and what to do, wrapping err.
func explainRead(repo Repo, stanza string, err error) error {
	var re *RepoError
	if errors.As(err, &re) {
		return &unusableError{text: fmt.Sprintf("repository %s cannot be used: %s", repo, ExplainRepoError(repo, re.Message)), err: err}
	}
	return fmt.Errorf("read stanza %s in %s: %w", stanza, repo, err)
}

// unusableError says what to do about a repository; it wraps pgBackRest's
// error without repeating it.
type unusableError struct {
	text string
	err  error
}

func (e *unusableError) Error() string { return e.text }
func (e *unusableError) Unwrap() error { return e.err }

// CheckUnused refuses a stanza that already exists in the repository: a new
// cluster needs a stanza of its own, and one that exists holds another
// cluster's backups and archive.
func CheckUnused(st Stanza, repository string) error {
	if !st.Exists() {
		return nil
	}
	return fmt.Errorf("repository %s already holds stanza %s (%s): it is another cluster's backup identity, and a new cluster archiving into it would corrupt that cluster's archive; give the new cluster a stanza of its own (or leave the stanza out for a fresh one)",
		repository, st.Name, describeOwner(st))
}

// CheckOwner refuses a stanza holding another database than systemID (the
// member's data directory's "Database system identifier"): archiving or
// backing up into it would mix two clusters' WAL. A stanza not created yet,
// or an unknown systemID (no data directory yet), passes.
func CheckOwner(st Stanza, systemID, repository string) error {
	if !st.Exists() || systemID == "" || st.SystemID() == "" || st.SystemID() == systemID {
		return nil
	}
	return fmt.Errorf("stanza %s in repository %s belongs to another cluster (%s) than this member's data directory (system identifier %s): give this cluster a stanza of its own (backup.stanza) or another repository; nothing was archived",
		st.Name, repository, describeOwner(st), systemID)
}

// describeOwner says whose a stanza is, for messages.
func describeOwner(st Stanza) string {
	parts := []string{}
	if id := st.SystemID(); id != "" {
		parts = append(parts, "database system identifier "+id)
	}
	n := 0
	for _, b := range st.Backups {
		if !b.Error {
			n++
		}
	}
	parts = append(parts, fmt.Sprintf("%d backups", n))
	if b, ok := st.Latest(); ok {
		parts = append(parts, "newest "+b.Label)
	}
	return strings.Join(parts, ", ")
}
