package cluster

import "time"

// ArchiveState is the primary's WAL archiving as one word (package backup
// judges it from PostgreSQL's pg_stat_archiver).
type ArchiveState string

const (
	// ArchiveOK: the last attempt succeeded and no WAL file waits too long.
	ArchiveOK ArchiveState = "ok"
	// ArchiveFailing: the last attempt failed (a failure newer than the
	// last success): WAL piles up in pg_wal and the archive ends early.
	ArchiveFailing ArchiveState = "failing"
	// ArchiveStalled: no attempt failed, yet a WAL file has waited for
	// archiving too long and nothing was archived meanwhile (a hung
	// archive command, a stuck archiver).
	ArchiveStalled ArchiveState = "stalled"
	// ArchiveOff: no repository is configured; nothing is archived.
	ArchiveOff ArchiveState = "off"
	// ArchiveUnknown: the primary could not read its archiver's
	// statistics lately (PostgreSQL down, starting, or just promoted).
	ArchiveUnknown ArchiveState = "unknown"
)

// ArchiveStatus is the primary's WAL archiving, as it reports it in its
// MemberStatus (and the API serves it). Times are PostgreSQL's, in UTC;
// zero when it never happened (since the statistics were reset).
//
// The primary writes its status only when it changes (or every
// heartbeat), so nothing in it may change while archiving does not:
// it carries times, never ages.
type ArchiveStatus struct {
	State ArchiveState `json:"state"`
	// Reason says why State is not ok, for humans ("" when ok).
	Reason           string    `json:"reason,omitempty"`
	LastArchivedWAL  string    `json:"last_archived_wal,omitempty"`
	LastArchivedTime time.Time `json:"last_archived_time,omitzero"`
	FailedCount      int64     `json:"failed_count,omitempty"`
	LastFailedWAL    string    `json:"last_failed_wal,omitempty"`
	LastFailedTime   time.Time `json:"last_failed_time,omitzero"`
	// Waiting is how many WAL files wait to be archived (.ready in
	// pg_wal/archive_status) at the last read.
	Waiting int64 `json:"waiting,omitempty"`
}
