package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/backup"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/config"
	"github.com/holdfast/holdfast/internal/decide"
	"github.com/holdfast/holdfast/internal/osuser"
	"github.com/holdfast/holdfast/internal/pg"
)

// ArchiveGate lets this member's PostgreSQL archive WAL (package backup's
// Gate): the agent grants it while the member holds the leader key under
// its current lease, up to the moment it would fence, and revokes it
// before it fences or gives up the key. A fenced, demoted or frozen member
// therefore never pushes WAL.
type ArchiveGate interface {
	// Grant lets the archive command push for the next valid.
	Grant(valid time.Duration) error
	// Revoke stops every push from now on.
	Revoke() error
}

// ArchiveReporter judges this member's WAL archiving while it is the
// primary (package backup's Member): what its status in the store (`ctl
// list`) and the API's /archive check show. It must not block.
type ArchiveReporter interface {
	ArchiveStatus() cluster.ArchiveStatus
}

// archiveOffReason is the archive status's reason on a primary without a
// repository.
const archiveOffReason = "no backup.repository is configured: WAL is not archived"

// archiveStatus is what this member reports of its WAL archiving after
// decision d: nil unless d makes it the primary; ArchiveOff without an
// ArchiveReporter (no repository).
func (a *Agent) archiveStatus(d decide.Decision) *cluster.ArchiveStatus {
	if d.Role != cluster.RolePrimary {
		return nil
	}
	if a.o.ArchiveReporter == nil {
		return &cluster.ArchiveStatus{State: cluster.ArchiveOff, Reason: archiveOffReason}
	}
	s := a.o.ArchiveReporter.ArchiveStatus()
	return &s
}

// tendArchive grants or revokes the archive gate after an observation:
// granted while this member holds the leader key with its current lease.
func (a *Agent) tendArchive() {
	if a.o.Archive == nil {
		return
	}
	l := a.view.Leader
	leads := a.lease.Held && l != nil && l.Name == a.o.Self.Name && l.LeaseID == a.lease.ID
	if leads {
		a.grantArchive(a.lease.Deadline)
		return
	}
	a.revokeArchive("not the leader")
}

// grantArchive marks this member as leading and extends the grant to the
// fence point of a lease ending at deadline (agent clock).
func (a *Agent) grantArchive(deadline time.Duration) {
	if a.o.Archive == nil {
		return
	}
	a.archiving.Store(true)
	if err := a.o.Archive.Grant(deadline - a.o.FenceMargin - a.clock()); err != nil {
		a.log.Error("archive gate", "err", err)
	}
}

// extendArchive extends a standing grant after a lease renewal (the loop's
// or the lease keeper's); it never grants anew.
func (a *Agent) extendArchive(deadline time.Duration) {
	if a.o.Archive == nil || !a.archiving.Load() {
		return
	}
	if err := a.o.Archive.Grant(deadline - a.o.FenceMargin - a.clock()); err != nil {
		a.log.Error("archive gate", "err", err)
	}
}

// revokeArchive stops archiving from now on.
func (a *Agent) revokeArchive(why string) {
	if a.o.Archive == nil {
		return
	}
	if a.archiving.Swap(false) {
		a.log.Info("archive gate revoked", "why", why)
	}
	if err := a.o.Archive.Revoke(); err != nil {
		a.log.Error("archive gate: a member that may no longer archive still holds a grant until it runs out", "err", err)
	}
}

// chainState calls both observers of the served state, first then next.
func chainState(first, next func(api.MemberState)) func(api.MemberState) {
	if first == nil {
		return next
	}
	return func(s api.MemberState) { first(s); next(s) }
}

// newBackupMember prepares the member's backups from its configuration
// (package backup): a POSIX repository must exist; an S3 one must be
// reachable with the configured credentials, and an encrypted one
// readable with the configured passphrase (CheckStanza).
func newBackupMember(c config.Config, acct osuser.Account, host string, port int, load func(context.Context) (cluster.View, error), log *slog.Logger) (*backup.Member, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("backups: find the holdfast binary for archive_command: %w", err)
	}
	repo, err := backup.NewRepo(c.Backup)
	if err != nil {
		return nil, fmt.Errorf("%w: backups: %w", ErrFatal, err)
	}
	var tlsOpts *backup.TLSOptions
	if t := c.Backup.TLS; t.Enabled() {
		// Unreadable TLS files stay unreadable: no retry can fix them, and
		// nothing is written before they are refused.
		o, err := backup.CheckTLS(backup.TLSOptions{CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.CAFile, Port: t.ServerPort(), ClientCN: t.ClientCN})
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrFatal, err)
		}
		tlsOpts = &o
	}
	bk, err := backup.NewMember(backup.MemberOptions{
		Cluster: c.Cluster, Member: c.Name, DataDir: c.DataDir, PGData: pgDataDir(c),
		Host: host, Port: port, User: c.PostgreSQL.Superuser.Username, Password: c.PostgreSQL.Superuser.Password,
		Repo: repo, Stanza: c.BackupStanza(), RetentionFull: c.Backup.RetentionFull,
		Account: acct, Exe: exe, Load: load, Logger: log.With("component", "backup"),
		Peer: api.ClientOptions{Token: c.API.AuthToken, CAFile: c.API.TLS.PeerCAFile(), CertFile: c.API.TLS.CertFile, KeyFile: c.API.TLS.KeyFile},
		TLS:  tlsOpts,
	})
	if err != nil {
		return nil, fmt.Errorf("backups: %w", err)
	}
	var marker pg.Marker
	if b, err := os.ReadFile(filepath.Join(pgDataDir(c), pg.MarkerFile)); err == nil {
		_ = json.Unmarshal(b, &marker) // preflight refused a damaged marker
	}
	if err := bk.CheckStanza(context.Background(), marker.SystemID); err != nil {
		return nil, fmt.Errorf("%w: backups: %w", ErrFatal, err)
	}
	return bk, nil
}

// newBootstrapRestore is the bootstrapper of a member whose
// bootstrap.restore names a backup to start the cluster from. Unusable
// secrets (a missing key file) are fatal: no retry can fix them.
func newBootstrapRestore(c config.Config, acct osuser.Account, binDir string, eng backup.BootstrapEngine, log *slog.Logger) (Bootstrapper, error) {
	r := c.Bootstrap.Restore
	repo, err := backup.NewRepo(r.Source())
	if err != nil {
		return nil, fmt.Errorf("%w: bootstrap.restore: %w", ErrFatal, err)
	}
	target, err := r.Target()
	if err != nil {
		return nil, fmt.Errorf("%w: bootstrap.restore: %w", ErrFatal, err)
	}
	return backup.NewBootstrap(backup.BootstrapOptions{
		Source: backup.Source{Repo: repo, Stanza: r.Stanza, Set: r.Set}, Target: target,
		WorkDir: filepath.Join(c.DataDir, "bootstrap-restore"), BinDir: binDir, Account: acct,
		SuperuserName: c.PostgreSQL.Superuser.Username, SuperuserPassword: c.PostgreSQL.Superuser.Password,
		ReplicationName: c.PostgreSQL.Replication.Username, ReplicationPassword: c.PostgreSQL.Replication.Password,
		Logger: log.With("component", "bootstrap"),
	}, eng), nil
}
