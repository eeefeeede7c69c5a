package pg

import (
	"fmt"
	"strconv"

	"github.com/holdfast/holdfast/internal/cluster"
)

// Status is one answer from a running PostgreSQL, read in one SQL round
// trip by Engine.Status.
type Status struct {
	// Ready is true when PostgreSQL accepted a connection and answered. When
	// false (starting, recovering before consistency, shutting down) every
	// other field is zero.
	Ready bool
	// RefusesConnections: the server answered on the connection kept open,
	// but a new connection could not be opened (a frozen or hung
	// postmaster: its running backends go on serving).
	RefusesConnections bool
	InRecovery         bool
	SystemID           string
	// Timeline: on a primary, the timeline it writes (from
	// pg_walfile_name(pg_current_wal_lsn()), so it is right immediately
	// after a promotion). On a standby it is a lower bound: the largest of
	// the WAL receiver's received_tli, the last restartpoint's timeline and
	// the minimum recovery point's timeline. PostgreSQL 15 has no exact
	// "replay timeline" function.
	Timeline uint32
	// WriteLSN is pg_current_wal_lsn() on a primary, 0 on a standby.
	WriteLSN cluster.LSN
	// ReceiveLSN and ReplayLSN are pg_last_wal_receive_lsn() and
	// pg_last_wal_replay_lsn() (0 when NULL). On a primary they are 0 or
	// left over from the end of its last recovery: see ReplayedLSN.
	ReceiveLSN cluster.LSN
	ReplayLSN  cluster.LSN
	// Streaming is true when the WAL receiver's status is "streaming".
	Streaming bool
	// UpstreamHost and UpstreamPort are the WAL receiver's sender ("" / 0
	// when there is no WAL receiver).
	UpstreamHost string
	UpstreamPort int
	// SyncStandbyNames is synchronous_standby_names as this server's
	// configuration currently reads (ParseSyncStandbys reads holdfast's
	// own format).
	SyncStandbyNames string
	// FlushLSN is pg_current_wal_flush_lsn() on a primary, 0 on a standby.
	FlushLSN cluster.LSN
	// Replicas are the primary's walsenders (pg_stat_replication), by
	// application_name; nil on a standby.
	Replicas []Replica
}

// Replica is one row of pg_stat_replication.
type Replica struct {
	Name      string      // application_name: the standby's member name
	State     string      // "streaming", "catchup", "startup", ...
	SyncState string      // "async", "potential", "sync", "quorum"
	Flush     cluster.LSN // flush_lsn: WAL the standby has made durable
	// Reply is the standby's last reply_time in microseconds since the
	// epoch, on the standby's clock (0: never replied): compare it only
	// with itself. A standby cut off by a partition keeps its row until
	// wal_sender_timeout, but its reply_time stops changing.
	Reply int64
}

// Position is what the member reports for the leader race and lag checks:
// a primary's WriteLSN, a standby's furthest of received and replayed WAL,
// on Timeline.
func (s Status) Position() cluster.Position {
	if !s.InRecovery {
		return cluster.Position{Timeline: s.Timeline, LSN: s.WriteLSN}
	}
	l := s.ReceiveLSN
	if s.ReplayLSN > l {
		l = s.ReplayLSN
	}
	return cluster.Position{Timeline: s.Timeline, LSN: l}
}

// ReplayedLSN is what the member reports as replayed
// (cluster.MemberStatus.ReplayLSN): a standby's ReplayLSN; 0 on a primary,
// whose writes are visible as they happen (its pg_last_wal_replay_lsn stays
// where its last recovery ended).
func (s Status) ReplayedLSN() cluster.LSN {
	if !s.InRecovery {
		return 0
	}
	return s.ReplayLSN
}

// timelineFromWALFile reads the timeline from a WAL segment file name
// (24 hex digits, the first 8 are the timeline).
func timelineFromWALFile(name string) (uint32, error) {
	if len(name) != 24 {
		return 0, fmt.Errorf("WAL file name %q: want 24 hexadecimal digits", name)
	}
	v, err := strconv.ParseUint(name[:8], 16, 32)
	if err != nil {
		return 0, fmt.Errorf("WAL file name %q: %w", name, err)
	}
	if v == 0 {
		return 0, fmt.Errorf("WAL file name %q: timeline 0", name)
	}
	return uint32(v), nil
}
