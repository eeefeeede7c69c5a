package backup

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/holdfast/holdfast/internal/osuser"
)

// BootstrapEngine is what a Bootstrap needs of the database engine
// (*pg.Engine): building the empty data directory in a temporary sibling
// that is installed only when complete.
type BootstrapEngine interface {
	CloneWith(ctx context.Context, how string, fill func(ctx context.Context, dir string) error) error
}

// BootstrapOptions configure NewBootstrap.
type BootstrapOptions struct {
	Source Source
	Target Target
	// WorkDir keeps the restore's pgBackRest configuration and logs.
	WorkDir string
	BinDir  string
	Account osuser.Account
	// The new cluster's roles get these passwords.
	SuperuserName, SuperuserPassword     string
	ReplicationName, ReplicationPassword string
	Logger                               *slog.Logger
	// Now is the wall clock a target time is checked against; nil =
	// time.Now.
	Now func() time.Time
}

// Bootstrap builds a new cluster's first data directory from another
// cluster's backup instead of initdb (a member's bootstrap.restore): the
// agent that wins the bootstrap claim calls Initdb in place of the
// engine's. The cluster it makes is new: it archives into its own stanza
// (the configuration refuses the source's), and the source's repository
// is only read.
type Bootstrap struct {
	o  BootstrapOptions
	db BootstrapEngine
}

// NewBootstrap returns the restoring bootstrap over engine db.
func NewBootstrap(o BootstrapOptions, db BootstrapEngine) *Bootstrap {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Bootstrap{o: o, db: db}
}

// Initdb checks the source (Inspect: a repository that cannot be read, a
// missing stanza or backup set, a target no backup reaches are refused
// before anything is written), then restores it to the target with
// RestoreInto into a temporary sibling of the data directory, which the
// engine installs only when the restore completed: on any failure the
// data directory is left empty and the temporary one removed, so the
// agent gives the bootstrap claim back and tries again, as after a failed
// initdb. ctx cancels the restore.
func (b *Bootstrap) Initdb(ctx context.Context) error {
	o := b.o
	_, tool, err := Inspect(ctx, o.Source, o.Target, o.WorkDir, o.Account, o.Now())
	if err != nil {
		return fmt.Errorf("restore from stanza %s: %w", o.Source.Stanza, err)
	}
	start := time.Now()
	how := fmt.Sprintf("restore of stanza %s in %s to %s", o.Source.Stanza, o.Source.Repo, o.Target)
	b.o.Logger.Info("bootstrapping the cluster from a backup", "stanza", o.Source.Stanza, "repository", o.Source.Repo.String(), "target", o.Target.String())
	err = b.db.CloneWith(ctx, how, func(ctx context.Context, dir string) error {
		port, err := freeLoopbackPort()
		if err != nil {
			return err
		}
		return RestoreInto(ctx, tool, RestoreOptions{
			Source: o.Source, Target: o.Target, PGData: dir, WorkDir: o.WorkDir,
			BinDir: o.BinDir, Account: o.Account, Port: port,
			SuperuserName: o.SuperuserName, SuperuserPassword: o.SuperuserPassword,
			ReplicationName: o.ReplicationName, ReplicationPassword: o.ReplicationPassword,
			Now: o.Now(),
		})
	})
	if err != nil {
		return err
	}
	b.o.Logger.Info("cluster bootstrapped from a backup", "stanza", o.Source.Stanza, "target", o.Target.String(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// freeLoopbackPort is a loopback port nothing listens on now, for the
// restore's private recovery server.
func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port for recovery: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
