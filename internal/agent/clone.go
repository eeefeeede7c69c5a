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
