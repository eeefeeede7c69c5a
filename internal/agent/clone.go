package agent

import (
	"context"

	"github.com/holdfast/holdfast/internal/pg"
)

// Cloner builds an empty data directory into a standby of the cluster that
// will follow src (the primary): *pg.Engine copies src with
// pg_basebackup; backup.Replicas restores the newest backup instead, so
// the primary serves no full copy, and falls back to pg_basebackup itself.
// Called from the agent goroutine only, under the lease keeper. On error
// the data directory is left empty, and the ordinary rules clone again.
type Cloner interface {
	Clone(ctx context.Context, src pg.Source) error
}

// cloner is Options.Cloner, or the database engine's own clone.
func (a *Agent) cloner() Cloner {
	if a.o.Cloner != nil {
		return a.o.Cloner
	}
	return a.o.DB
}

// reinitFrom says, for the reinit request's answer, where the new copy
// comes from.
func (a *Agent) reinitFrom() string {
	if a.o.Cloner != nil {
		return "restored from the newest backup (cloned from the primary if there is none)"
	}
	return "cloned from the primary"
}

// Bootstrapper builds the new cluster's first data directory when this
// member wins the bootstrap claim, in place of DB.Initdb:
// backup.Bootstrap restores another cluster's backup (bootstrap.restore).
// Called from the agent goroutine only, under the lease keeper. On error
// the data directory must be left empty: the agent then gives the claim
// back and the bootstrap is tried again, as after a failed initdb.
type Bootstrapper interface {
	Initdb(ctx context.Context) error
}

// bootstrapper is Options.Bootstrapper, or the database engine's initdb.
func (a *Agent) bootstrapper() (Bootstrapper, string) {
	if a.o.Bootstrapper != nil {
		return a.o.Bootstrapper, "restore from a backup"
	}
	return a.o.DB, "initdb"
}
