package ctl

import (
	"errors"
	"sort"
	"strings"

	"github.com/holdfast/holdfast/internal/cluster"
)

// BackupSource picks the member a backup is taken from: a replica
// streaming from the primary, so the primary only starts and stops the
// backup (pgBackRest's backup-standby) — the one with the least lag, then
// by name — or the primary when no replica streams. It fails when nobody
// leads.
//
// A replica qualifies when its pgBackRest can reach the primary's data
// directory (pg2): on the primary's host, from its own file system
// (holdfast up's members, all on 127.0.0.1); on another host — every pod
// of a StatefulSet has its own address — through pgBackRest's TLS server,
// so only when both the primary and the replica registered one
// (backup.tls). Any other replica would fail every backup ("unable to find
// primary cluster"); with none qualifying the backup is taken on the
// primary.
func BackupSource(v cluster.View) (member string, fromStandby bool, err error) {
	member, fromStandby, _, err = ExplainBackupSource(v)
	return member, fromStandby, err
}

// ExplainBackupSource is BackupSource, and when it picks the primary, why
// each other member was passed over (by name; nil when a replica was
// picked): the log and ctl backup say why a backup loads the primary.
func ExplainBackupSource(v cluster.View) (member string, fromStandby bool, skipped map[string]string, err error) {
	if v.Leader == nil {
		return "", false, nil, errors.New("no primary: a backup needs one (see holdfast ctl list)")
	}
	skipped = map[string]string{}
	primary, ok := v.Members[v.Leader.Name]
	if !ok || primary.Host == "" {
		skipped[v.Leader.Name] = "the primary has no registered address"
		return v.Leader.Name, false, skipped, nil
	}
	ref, hasRef := v.PrimaryPosition()
	type cand struct {
		name string
		lag  int64
	}
	var cs []cand
	for name, info := range v.Members {
		if name == v.Leader.Name || info.Witness {
			continue
		}
		st, live := v.Statuses[name]
		switch {
		case !live:
			skipped[name] = "no current status (not running, or its record is older than a TTL)"
			continue
		case !st.Streaming || st.Following != v.Leader.Name:
			skipped[name] = "not streaming from the primary"
			continue
		case info.Host != primary.Host && primary.BackupTLSPort == 0:
			skipped[name] = "on another host, and the primary runs no pgBackRest TLS server (backup.tls)"
			continue
		case info.Host != primary.Host && info.BackupTLSPort == 0:
			skipped[name] = "on another host without backup.tls (no client certificate for the primary's pgBackRest TLS server)"
			continue
		}
		lag := int64(0)
		if hasRef {
			if l, ok := cluster.LagBytes(ref, st.Position); ok {
				lag = l
			}
		}
		cs = append(cs, cand{name, lag})
	}
	if len(cs) == 0 {
		return v.Leader.Name, false, skipped, nil
	}
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].lag != cs[j].lag {
			return cs[i].lag < cs[j].lag
		}
		return cs[i].name < cs[j].name
	})
	return cs[0].name, true, nil, nil
}

// SkippedText renders ExplainBackupSource's skipped members on one line,
// by name ("" when none).
func SkippedText(skipped map[string]string) string {
	names := make([]string, 0, len(skipped))
	for n := range skipped {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + ": " + skipped[n]
	}
	return strings.Join(parts, "; ")
}
