package backup

import (
	"fmt"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// Thresholds of the archive status.
const (
	// ArchiveStallAfter is how long a WAL file may wait for archiving,
	// with nothing archived meanwhile, before archiving counts as
	// stalled. pgBackRest pushes a 16 MB segment in seconds, even to
	// object storage; five minutes without one success while a file
	// waits is a hung archive command or a stuck archiver, not a slow
	// network — yet long enough that a burst of WAL which archiving
	// works through is not reported.
	ArchiveStallAfter = 5 * time.Minute
	// archiveStatsStale is how old the last successful read of the
	// archiver's statistics may be before the status is unknown: many
	// tendIntervals, so one slow query does not flap it, yet a primary
	// whose PostgreSQL stopped answering does not keep reporting ok.
	archiveStatsStale = 15 * tendInterval
)

// JudgeArchive is the archive status of a leading member from its last
// archiver statistics (nil: none read yet in this leadership term), why
// the last read failed ("" when it did not), at now (this process's
// clock). It is pure, so each rule is a table test:
//
//   - unknown: no statistics, or none read for archiveStatsStale;
//   - failing: the last failure is newer than the last success (or
//     nothing ever succeeded): PostgreSQL retries the same file until it
//     is archived, so archiving is stuck on it;
//   - stalled: WAL files wait, the oldest for ArchiveStallAfter, and
//     nothing was archived for as long — no failure is recorded, yet
//     nothing moves (an archive command that hangs);
//   - ok otherwise.
//
// Ages are measured on the database's clock (DBNow) plus the time since
// the read on this process's monotonic clock, so a clock difference
// between the agent and PostgreSQL does not bend them. The Reason names
// times, never ages, so that the status does not change while archiving
// does not (the agent writes it to the store only when it changes).
func JudgeArchive(st *ArchiverStats, readErr string, now time.Time) cluster.ArchiveStatus {
	if st == nil {
		why := "the archiver's statistics have not been read yet in this leadership term"
		if readErr != "" {
			why += ": " + readErr
		}
		return cluster.ArchiveStatus{State: cluster.ArchiveUnknown, Reason: why}
	}
	out := cluster.ArchiveStatus{
		LastArchivedWAL: st.LastArchivedWAL, LastArchivedTime: utc(st.LastArchivedTime),
		FailedCount: st.FailedCount, LastFailedWAL: st.LastFailedWAL, LastFailedTime: utc(st.LastFailedTime),
		Waiting: st.Ready,
	}
	since := now.Sub(st.ReadAt)
	if since > archiveStatsStale {
		out.State = cluster.ArchiveUnknown
		out.Reason = fmt.Sprintf("the archiver's statistics were last read at %s", stamp(st.ReadAt))
		if readErr != "" {
			out.Reason += ": " + readErr
		}
		return out
	}
	dbNow := st.DBNow.Add(since)
	failed := !st.LastFailedTime.IsZero() && (st.LastArchivedTime.IsZero() || st.LastFailedTime.After(st.LastArchivedTime))
	switch {
	case failed:
		out.State = cluster.ArchiveFailing
		out.Reason = fmt.Sprintf("archiving %s failed at %s (%d failures since the statistics were reset); %s; the archive command's error is in PostgreSQL's log",
			st.LastFailedWAL, stamp(st.LastFailedTime), st.FailedCount, lastSuccess(st))
	case st.Ready > 0 && !st.OldestReady.IsZero() && dbNow.Sub(st.OldestReady) >= ArchiveStallAfter &&
		(st.LastArchivedTime.IsZero() || dbNow.Sub(st.LastArchivedTime) >= ArchiveStallAfter):
		out.State = cluster.ArchiveStalled
		out.Reason = fmt.Sprintf("nothing was archived for over %s while %d WAL files wait (the oldest since %s) and no attempt failed; %s: is the archive command hanging?",
			ArchiveStallAfter, st.Ready, stamp(st.OldestReady), lastSuccess(st))
	default:
		out.State = cluster.ArchiveOK
	}
	return out
}

// lastSuccess describes the last successful archiving.
func lastSuccess(st *ArchiverStats) string {
	if st.LastArchivedTime.IsZero() {
		return "nothing was archived since the statistics were reset"
	}
	return fmt.Sprintf("the last success was %s at %s", st.LastArchivedWAL, stamp(st.LastArchivedTime))
}

func utc(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// ArchiveStatus judges this member's archiving now (JudgeArchive) from
// the statistics it read while leading. The agent asks it only while the
// member is the primary; safe for concurrent use.
func (m *Member) ArchiveStatus() cluster.ArchiveStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	return JudgeArchive(m.stats, m.statsErr, time.Now())
}
