package local

import (
	"context"
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

// ReadRestoreSource reads the repository and stanza to restore from: the
// backup section of a YAML file — a source member's holdfast.yaml, or a
// file holding only that section — checked by the same validator as a
// member's configuration.
func ReadRestoreSource(path string) (backup.Source, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return backup.Source{}, fmt.Errorf("--restore-from: %w", err)
	}
	var f struct {
		Cluster string        `yaml:"cluster"`
		Backup  config.Backup `yaml:"backup"`
	}
	f.Backup.RetentionFull = 1
	if err := yaml.Unmarshal(b, &f); err != nil {
		return backup.Source{}, fmt.Errorf("--restore-from %s: %w", path, err)
	}
	if errs := f.Backup.Problems("backup."); len(errs) > 0 {
		return backup.Source{}, fmt.Errorf("--restore-from %s: %w", path, errs[0])
	}
	if f.Backup.Repository == "" {
		return backup.Source{}, fmt.Errorf("--restore-from %s: no backup.repository (write a backup: section with repository and stanza)", path)
	}
	stanza := f.Backup.Stanza
	if stanza == "" {
		stanza = f.Cluster
	}
	if stanza == "" {
		return backup.Source{}, fmt.Errorf("--restore-from %s: no backup.stanza (and no cluster name to default it to)", path)
	}
	return backup.Source{Repository: f.Backup.Repository, Stanza: stanza}, nil
}

// newBackup chooses a new cluster's repository and stanza, refusing,
// before anything is written, a repository that can be neither used nor
// created and a stanza the repository already holds (another cluster's).
func newBackup(ctx context.Context, o UpOptions) (*Backup, error) {
	name := o.Cluster
	if name == "" {
		name = DefaultCluster
	}
	stanza := o.BackupStanza
	if stanza == "" {
		var err error
		if stanza, err = NewStanza(name); err != nil {
			return nil, err
		}
	} else if errs := (config.Backup{Repository: o.BackupRepo, Stanza: stanza, RetentionFull: 1}).Problems("--backup-"); len(errs) > 0 {
		return nil, errs[0]
	}
	if err := backup.CheckNewRepository(o.BackupRepo); err != nil {
		return nil, fmt.Errorf("--backup-repo: %w", err)
	}
	if _, err := os.Stat(o.BackupRepo); err != nil || o.BackupStanza == "" {
		return &Backup{Repository: o.BackupRepo, Stanza: stanza}, nil // a fresh stanza, or nothing to read yet
	}
	acct, err := osuser.Resolve(o.OSUser)
	if err != nil {
		return nil, err
	}
	probe, err := os.MkdirTemp("", "holdfast-probe")
	if err != nil {
		return nil, fmt.Errorf("--backup-stanza: read the repository: %w", err)
	}
	defer os.RemoveAll(probe)
	st, _, err := backup.Probe(ctx, o.BackupRepo, stanza, probe, acct)
	if err != nil {
		return nil, fmt.Errorf("--backup-repo: %w", err)
	}
	if err := backup.CheckUnused(st, o.BackupRepo); err != nil {
		return nil, fmt.Errorf("--backup-stanza %s: %w", stanza, err)
	}
	return &Backup{Repository: o.BackupRepo, Stanza: stanza}, nil
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
	fmt.Fprintf(o.Out, "restoring %s from stanza %s in %s to %s\n", m.Name, o.Restore.Source.Stanza, o.Restore.Source.Repository, o.Restore.Target)
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
}
