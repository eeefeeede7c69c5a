package backup

import (
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

func TestDue(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	set := func(typ string, start time.Time) Set {
		return Set{Type: typ, Start: start, Stop: start.Add(time.Minute), Label: typ + start.Format("150405")}
	}
	sched := cluster.BackupSchedule{Full: 24 * time.Hour, Diff: 6 * time.Hour, Incr: time.Hour}
	st := Stanza{Backups: []Set{set("full", t0), set("incr", t0.Add(time.Hour)), set("diff", t0.Add(6*time.Hour))}}
	failed := set("full", t0.Add(7*time.Hour))
	failed.Error = true
	for _, c := range []struct {
		name     string
		s        cluster.BackupSchedule
		st       Stanza
		now      time.Time
		want     string
		wantNext time.Time
	}{
		{"nothing scheduled", cluster.BackupSchedule{}, Stanza{}, t0, "", time.Time{}},
		{"no backup yet", cluster.BackupSchedule{Incr: time.Hour}, Stanza{}, t0, "full", t0},
		{"only a failed one", sched, Stanza{Backups: []Set{failed}}, t0, "full", t0},
		{"nothing due", sched, st, t0.Add(6*time.Hour + 30*time.Minute), "", t0.Add(7 * time.Hour)},
		{"incr due", sched, st, t0.Add(7 * time.Hour), "incr", t0.Add(7 * time.Hour)},
		{"diff beats incr", sched, st, t0.Add(12 * time.Hour), "diff", t0.Add(12 * time.Hour)},
		{"full beats all", sched, st, t0.Add(24 * time.Hour), "full", t0.Add(24 * time.Hour)},
		{"a failed set does not count", sched, Stanza{Backups: append(append([]Set{}, st.Backups...), failed)}, t0.Add(7 * time.Hour), "incr", t0.Add(7 * time.Hour)},
		{"full only", cluster.BackupSchedule{Full: 24 * time.Hour}, st, t0.Add(23 * time.Hour), "", t0.Add(24 * time.Hour)},
		{"incr from the newest of any type", cluster.BackupSchedule{Incr: time.Hour}, st, t0.Add(6*time.Hour + 59*time.Minute), "", t0.Add(7 * time.Hour)},
	} {
		typ, next := Due(c.s, c.st, c.now)
		if typ != c.want || !next.Equal(c.wantNext) {
			t.Errorf("%s: Due = %q, %s; want %q, %s", c.name, typ, next, c.want, c.wantNext)
		}
	}
}
