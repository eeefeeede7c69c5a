package backup

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/config"
)

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

// Target is where a restore stops replaying WAL. At most one field is set;
// none means the end of the archive (the latest point). The type lives in
// package config, whose bootstrap.restore section checks a target too.
type Target = config.RestoreTarget

// ParseTarget reads the --target-time, --target-lsn and --target-xid
// values ("" = not given), with config.ParseRestoreTarget.
func ParseTarget(timeArg, lsn, xid string) (Target, error) {
	return config.ParseRestoreTarget(config.TargetNames{Time: "--target-time", LSN: "--target-lsn", XID: "--target-xid"}, timeArg, lsn, xid)
}

// parseLSN reads "X/Y".
func parseLSN(s string) (uint64, bool) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, false
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return h<<32 | l, true
}

// CheckTarget refuses a target no backup of st can reach: no valid backup
// at all, a time before the end of the oldest backup or after now, an LSN
// before the end of the oldest backup. With set (a backup label), the
// restore starts from that backup: it must be in st and valid, and the
// target must not lie before its end. Each message says what is wrong and
// what can be restored. (Whether the archive reaches a later target is
// known only by replaying it: a restore that stops short fails then.)
func CheckTarget(st Stanza, set string, t Target, now time.Time) error {
	oldest := Set{}
	found := false
	for _, b := range st.Backups {
		if !b.Error && (set == "" || b.Label == set) {
			oldest, found = b, true
			break
		}
	}
	switch {
	case !found && set != "":
		var labels []string
		for _, b := range st.Backups {
			if !b.Error {
				labels = append(labels, b.Label)
			}
		}
		return fmt.Errorf("stanza %s holds no valid backup %s: give one of %s (see holdfast ctl backups)", st.Name, set, strings.Join(labels, ", "))
	case !found:
		return fmt.Errorf("stanza %s holds no valid backup to restore from (take one with holdfast ctl backup)", st.Name)
	}
	what := "the oldest backup"
	if set != "" {
		what = "the chosen backup"
	}
	switch {
	case !t.Time.IsZero():
		if t.Time.After(now) {
			return fmt.Errorf("target time %s is in the future (now is %s): give a time that has passed, or leave the target out for the latest point",
				t.Time.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
		if t.Time.Before(oldest.Stop) {
			return fmt.Errorf("target time %s is before the end of %s (%s, finished %s): the earliest time stanza %s can restore to from it is %s",
				t.Time.UTC().Format(time.RFC3339), what, oldest.Label, oldest.Stop.Format(time.RFC3339), st.Name, oldest.Stop.Format(time.RFC3339))
		}
	case t.LSN != "":
		want, _ := parseLSN(t.LSN)
		if stop, ok := parseLSN(oldest.LSNStop); ok && want < stop {
			return fmt.Errorf("target LSN %s is before the end of %s (%s, ends at %s): the earliest position stanza %s can restore to from it is %s",
				t.LSN, what, oldest.Label, oldest.LSNStop, st.Name, oldest.LSNStop)
		}
	}
	return nil
}

// RestoreArgs are pgbackrest restore's target options for t.
func RestoreArgs(t Target) []string {
	switch {
	case !t.Time.IsZero():
		return []string{"--type=time", "--target=" + t.Time.UTC().Format("2006-01-02 15:04:05.999999") + "+00", "--target-action=promote"}
	case t.LSN != "":
		return []string{"--type=lsn", "--target=" + t.LSN, "--target-action=promote"}
	case t.XID != "":
		return []string{"--type=xid", "--target=" + t.XID, "--target-action=promote"}
	}
	return []string{"--type=default"}
}
