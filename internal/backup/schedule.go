package backup

import (
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// Due judges a backup schedule against the repository: which backup type
// is due at now ("" = none) and when the next one is due (zero when
// nothing is scheduled). It reads only st, so a new leader continues the
// schedule from the repository's newest backups, not from memory:
//
//   - no valid backup at all: a full one is due;
//   - full: Full after the start of the newest full backup;
//   - diff: Diff after the start of the newest full or diff backup;
//   - incr: Incr after the start of the newest backup of any type.
//
// When several are due the largest wins (full, then diff, then incr), since
// it also covers the others.
func Due(s cluster.BackupSchedule, st Stanza, now time.Time) (typ string, next time.Time) {
	if s.IsZero() {
		return "", time.Time{}
	}
	var lastFull, lastDiff, lastAny time.Time
	any := false
	for _, b := range st.Backups {
		if b.Error {
			continue
		}
		any = true
		lastAny = later(lastAny, b.Start)
		switch b.Type {
		case "full":
			lastFull = later(lastFull, b.Start)
			lastDiff = later(lastDiff, b.Start)
		case "diff":
			lastDiff = later(lastDiff, b.Start)
		}
	}
	if !any {
		return "full", now
	}
	for _, c := range []struct {
		typ   string
		every time.Duration
		from  time.Time
	}{{"full", s.Full, lastFull}, {"diff", s.Diff, lastDiff}, {"incr", s.Incr, lastAny}} {
		if c.every <= 0 {
			continue
		}
		at := c.from.Add(c.every)
		if c.from.IsZero() { // e.g. diff before any full: pgBackRest takes a full one
			at = now
		}
		if !at.After(now) && typ == "" {
			typ = c.typ
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	if typ != "" {
		next = now
	}
	return typ, next
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
