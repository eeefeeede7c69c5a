package cluster

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/quote"
)

// MinBackupInterval is the shortest cadence of a scheduled backup type:
// a backup starts a checkpoint and reads the whole database (full) or
// its changed files, so a shorter one is a mistake.
const MinBackupInterval = time.Minute

// BackupSchedule is how often the leader's agent takes each type of
// backup (0 = never on schedule); see Config.BackupSchedule.
type BackupSchedule struct {
	Full, Diff, Incr time.Duration
}

// IsZero reports whether nothing is scheduled.
func (s BackupSchedule) IsZero() bool { return s == BackupSchedule{} }

// String writes s as ParseBackupSchedule reads it ("" when nothing is
// scheduled).
func (s BackupSchedule) String() string {
	var parts []string
	for _, p := range []struct {
		name string
		d    time.Duration
	}{{"full", s.Full}, {"diff", s.Diff}, {"incr", s.Incr}} {
		if p.d > 0 {
			parts = append(parts, p.name+"="+FormatDuration(p.d))
		}
	}
	return strings.Join(parts, ",")
}

// ParseBackupSchedule reads the backup_schedule setting: "" (no schedule),
// or comma-separated type=interval pairs, e.g. "full=168h,diff=24h,incr=1h",
// each type (full, diff, incr) at most once, each interval at least
// MinBackupInterval. A schedule without full takes a full backup only when
// the repository holds none.
func ParseBackupSchedule(s string) (BackupSchedule, error) {
	var out BackupSchedule
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			return BackupSchedule{}, fmt.Errorf("%s: want type=interval (e.g. full=168h,incr=1h)", quote.Value(part))
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		var dst *time.Duration
		switch k {
		case "full":
			dst = &out.Full
		case "diff":
			dst = &out.Diff
		case "incr":
			dst = &out.Incr
		default:
			return BackupSchedule{}, fmt.Errorf("%s is not a backup type (write full, diff or incr)", quote.Value(k))
		}
		if seen[k] {
			return BackupSchedule{}, fmt.Errorf("%s is given twice", k)
		}
		seen[k] = true
		d, err := time.ParseDuration(v)
		if err != nil {
			return BackupSchedule{}, fmt.Errorf("%s=%s: not a duration (write e.g. %s=24h)", k, quote.Value(v), k)
		}
		if d < MinBackupInterval {
			return BackupSchedule{}, fmt.Errorf("%s=%s: shorter than %s", k, FormatDuration(d), FormatDuration(MinBackupInterval))
		}
		*dst = d
	}
	if out.IsZero() {
		return BackupSchedule{}, errors.New("no backup type given")
	}
	return out, nil
}

// Schedule is the parsed BackupSchedule of a valid configuration (Problems
// refuses one that does not parse; a foreign writer's reads as none).
func (c Config) Schedule() BackupSchedule {
	s, err := ParseBackupSchedule(c.BackupSchedule)
	if err != nil {
		return BackupSchedule{}
	}
	return s
}
