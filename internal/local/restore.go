package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/holdfast/holdfast/internal/backup"
	"github.com/holdfast/holdfast/internal/config"
	"github.com/holdfast/holdfast/internal/osuser"
	"github.com/holdfast/holdfast/internal/pg"
)

// ReadBackupConfig reads the backup section of a YAML file — a member's
// holdfast.yaml, or a file holding only that section — checked by the
// same validator as a member's configuration. flag names the option that
// gave the file, for messages. It returns the section and the file's
// cluster name ("" when none).
func ReadBackupConfig(flag, path string) (config.Backup, string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return config.Backup{}, "", fmt.Errorf("%s: %w", flag, err)
	}
	var f struct {
		Cluster string        `yaml:"cluster"`
		Backup  config.Backup `yaml:"backup"`
	}
	f.Backup.RetentionFull = config.Defaults().Backup.RetentionFull
	if err := yaml.Unmarshal(b, &f); err != nil {
		return config.Backup{}, "", fmt.Errorf("%s %s: %w", flag, path, err)
	}
	if errs := f.Backup.Problems("backup."); len(errs) > 0 {
		return config.Backup{}, "", fmt.Errorf("%s %s: %w", flag, path, errors.Join(errs...))
	}
	if f.Backup.Repository == "" {
		return config.Backup{}, "", fmt.Errorf("%s %s: no backup.repository (write a backup: section with repository and stanza)", flag, path)
	}
	return f.Backup, f.Cluster, nil
}

// ReadRestoreSource reads the repository and stanza to restore from (the
// backup section of a source member's holdfast.yaml, or of a file holding
// only that section) and resolves its secrets.
func ReadRestoreSource(path string) (RestoreOptions, error) {
	b, cluster, err := ReadBackupConfig("--restore-from", path)
	if err != nil {
		return RestoreOptions{}, err
	}
	stanza := b.Stanza
	if stanza == "" {
		stanza = cluster
	}
	if stanza == "" {
		return RestoreOptions{}, fmt.Errorf("--restore-from %s: no backup.stanza (and no cluster name to default it to)", path)
	}
	repo, err := backup.NewRepo(b)
	if err != nil {
		return RestoreOptions{}, fmt.Errorf("--restore-from %s: %w", path, err)
	}
	return RestoreOptions{Source: backup.Source{Repo: repo, Stanza: stanza}, Config: b}, nil
}

// newBackup chooses a new cluster's repository (bc) and stanza, refusing,
// before anything is written, a repository that can be neither used nor
// created — for S3: an endpoint it cannot reach, refused credentials, a
// missing bucket — and a stanza the repository already holds (another
// cluster's).
func newBackup(ctx context.Context, o UpOptions, bc config.Backup) (*Backup, error) {
	name := o.Cluster
	if name == "" {
		name = DefaultCluster
	}
	stanza := o.BackupStanza
	if stanza == "" {
		stanza = bc.Stanza
	}
	given := stanza != ""
	if !given {
		var err error
		if stanza, err = NewStanza(name); err != nil {
			return nil, err
		}
	}
	retention := bc.RetentionFull
	bc.Stanza = stanza
	if bc.RetentionFull == 0 {
		bc.RetentionFull = 1 // not given: the members' default
	}
	if errs := bc.Problems("--backup-"); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	nb := &Backup{Repository: bc.Repository, Stanza: stanza, S3: bc.S3, CipherPass: bc.CipherPass, CipherPassFile: bc.CipherPassFile}
	if o.BackupConfig != nil {
		nb.RetentionFull = retention
	}
	repo, err := backup.NewRepo(bc)
	if err != nil {
		return nil, err
	}
	if !repo.IsS3() {
		if err := backup.CheckNewRepository(bc.Repository); err != nil {
			return nil, fmt.Errorf("--backup-repo: %w", err)
		}
		if _, err := os.Stat(bc.Repository); err != nil || !given {
			return nb, nil // a fresh stanza, or nothing to read yet
		}
	}
	acct, err := osuser.Resolve(o.OSUser)
	if err != nil {
		return nil, err
	}
	probe, err := os.MkdirTemp("", "holdfast-probe")
	if err != nil {
		return nil, fmt.Errorf("read the repository: %w", err)
	}
	defer os.RemoveAll(probe)
	st, _, err := backup.Probe(ctx, repo, stanza, probe, acct)
	if err != nil {
		return nil, fmt.Errorf("backup repository: %w", err)
	}
	if err := backup.CheckUnused(st, repo.String()); err != nil {
		flag := "stanza"
		if o.BackupStanza != "" {
			flag = "--backup-stanza"
		}
		return nil, fmt.Errorf("%s %s: %w", flag, stanza, err)
	}
	return nb, nil
}

// prepareBackup makes the repository of a new cluster: a directory the
// PostgreSQL account owns.
func prepareBackup(acct osuser.Account, repo string) error {
	if err := os.MkdirAll(filepath.Dir(repo), 0o755); err != nil {
		return fmt.Errorf("--backup-repo %s: %w", repo, err)
	}
	if err := acct.MkdirOwned(repo, 0o750); err != nil {
		return fmt.Errorf("--backup-repo %s: %w", repo, err)
	}
	return nil
}

// restoreFirst restores the source into the first member's data directory
// before any agent starts; the agent adopts it as the new cluster's
// primary and the others clone from it.
func restoreFirst(ctx context.Context, dir string, l Layout, o UpOptions, acct osuser.Account, tool backup.Tool) error {
	m := l.Members[0]
	bin, err := pg.FindBinDir("")
	if err != nil {
		return err
	}
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "restoring %s from stanza %s in %s to %s\n", m.Name, o.Restore.Source.Stanza, o.Restore.Source.Repo, o.Restore.Target)
	start := time.Now()
	err = backup.RestoreInto(ctx, tool, backup.RestoreOptions{
		Source: o.Restore.Source, Target: o.Restore.Target,
		PGData: filepath.Join(MemberDir(dir, m.Name), "pgdata"), WorkDir: restoreWorkDir(dir),
		BinDir: bin, Account: acct, Port: ports[0],
		SuperuserName: l.Superuser.Username, SuperuserPassword: l.Superuser.Password,
		ReplicationName: l.Replication.Username, ReplicationPassword: l.Replication.Password,
		Now: time.Now(),
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "restored in %s; new stanza %s\n", time.Since(start).Round(time.Second), l.Backup.Stanza)
	return nil
}

// restoreWorkDir keeps the restore's pgBackRest configuration and logs.
func restoreWorkDir(dir string) string { return filepath.Join(dir, "restore") }

// RestoreOptions ask Up to build a new cluster from a backup.
type RestoreOptions struct {
	Source backup.Source
	Target backup.Target
	// Config is the source's backup section: a new cluster given no
	// repository of its own archives into the same one (another stanza).
	Config config.Backup
}
