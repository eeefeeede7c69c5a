package backup

import (
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

func TestJudgeArchive(t *testing.T) {
	db := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC) // the database's clock at the read
	read := time.Now()                                  // this process's clock at the read
	ago := func(d time.Duration) time.Time { return db.Add(-d) }
	cases := []struct {
		name    string
		st      *ArchiverStats
		readErr string
		now     time.Time
		want    cluster.ArchiveState
		reason  string // a part of the reason
	}{
		{name: "nothing read yet", now: read, want: cluster.ArchiveUnknown, reason: "not been read yet"},
		{name: "nothing read yet, with the error", readErr: "connection refused", now: read, want: cluster.ArchiveUnknown, reason: "connection refused"},
		{name: "nothing to archive yet", st: &ArchiverStats{}, now: read, want: cluster.ArchiveOK},
		{name: "archived, nothing waits", st: &ArchiverStats{ArchivedCount: 3, LastArchivedWAL: "000000010000000000000003", LastArchivedTime: ago(time.Hour)},
			now: read, want: cluster.ArchiveOK},
		{name: "a failure older than the last success", st: &ArchiverStats{LastArchivedTime: ago(time.Minute), LastFailedTime: ago(2 * time.Minute), FailedCount: 1},
			now: read, want: cluster.ArchiveOK},
		{name: "a failure newer than the last success", st: &ArchiverStats{LastArchivedWAL: "000000010000000000000002", LastArchivedTime: ago(2 * time.Minute),
			LastFailedWAL: "000000010000000000000003", LastFailedTime: ago(time.Second), FailedCount: 4, Ready: 1, OldestReady: ago(time.Minute)},
			now: read, want: cluster.ArchiveFailing, reason: "archiving 000000010000000000000003 failed at 2026-12-06T11:59:59Z (4 failures"},
		{name: "failed and never succeeded", st: &ArchiverStats{LastFailedWAL: "000000010000000000000001", LastFailedTime: ago(time.Second), FailedCount: 1},
			now: read, want: cluster.ArchiveFailing, reason: "nothing was archived since"},
		{name: "a file waits briefly (a burst being worked through)", st: &ArchiverStats{LastArchivedTime: ago(10 * time.Minute), Ready: 30, OldestReady: ago(time.Minute)},
			now: read, want: cluster.ArchiveOK},
		{name: "a file waits long, but others were archived meanwhile", st: &ArchiverStats{LastArchivedTime: ago(time.Second), Ready: 300, OldestReady: ago(time.Hour)},
			now: read, want: cluster.ArchiveOK},
		{name: "a file waits long and nothing was archived", st: &ArchiverStats{LastArchivedWAL: "000000010000000000000002", LastArchivedTime: ago(time.Hour), Ready: 2, OldestReady: ago(ArchiveStallAfter)},
			now: read, want: cluster.ArchiveStalled, reason: "2 WAL files wait (the oldest since 2026-12-06T11:55:00Z)"},
		{name: "a file waits long and nothing was ever archived", st: &ArchiverStats{Ready: 1, OldestReady: ago(time.Hour)},
			now: read, want: cluster.ArchiveStalled, reason: "nothing was archived since"},
		{name: "stalls as time passes after the read", st: &ArchiverStats{LastArchivedTime: ago(time.Hour), Ready: 1, OldestReady: ago(ArchiveStallAfter - 10*time.Second)},
			now: read.Add(10 * time.Second), want: cluster.ArchiveStalled},
		{name: "statistics too old", st: &ArchiverStats{LastArchivedTime: ago(time.Minute)}, readErr: "connection refused",
			now: read.Add(archiveStatsStale + time.Second), want: cluster.ArchiveUnknown, reason: "last read at"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.st != nil {
				c.st.DBNow, c.st.ReadAt = db, read
			}
			got := JudgeArchive(c.st, c.readErr, c.now)
			if got.State != c.want {
				t.Fatalf("state %q (%s), want %q", got.State, got.Reason, c.want)
			}
			if c.want == cluster.ArchiveOK && got.Reason != "" {
				t.Errorf("ok with a reason: %q", got.Reason)
			}
			if c.want != cluster.ArchiveOK && !strings.Contains(got.Reason, c.reason) {
				t.Errorf("reason %q does not say %q", got.Reason, c.reason)
			}
			if c.st != nil && got.LastFailedWAL != c.st.LastFailedWAL {
				t.Errorf("last failed WAL %q, want %q", got.LastFailedWAL, c.st.LastFailedWAL)
			}
		})
	}
}

// TestJudgeArchiveIsStable: the status names times, not ages, so it does
// not change while archiving does not (the agent writes it to the store
// only when it changes).
func TestJudgeArchiveIsStable(t *testing.T) {
	db := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	read := time.Now()
	st := &ArchiverStats{LastArchivedTime: db.Add(-time.Hour), LastFailedWAL: "000000010000000000000003", LastFailedTime: db.Add(-time.Second),
		FailedCount: 2, Ready: 1, OldestReady: db.Add(-time.Minute), DBNow: db, ReadAt: read}
	a, b := JudgeArchive(st, "", read), JudgeArchive(st, "", read.Add(20*time.Second))
	if a != b {
		t.Errorf("the status changed with time alone:\n%+v\n%+v", a, b)
	}
}
