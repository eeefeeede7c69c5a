package ctl

import (
	"errors"
	"sort"

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
	if v.Leader == nil {
		return "", false, errors.New("no primary: a backup needs one (see holdfast ctl list)")
	}
	primary, ok := v.Members[v.Leader.Name]
	if !ok || primary.Host == "" {
		return v.Leader.Name, false, nil
	}
	ref, hasRef := v.PrimaryPosition()
	type cand struct {
		name string
		lag  int64
	}
	var cs []cand
	for name, st := range v.Statuses {
		info, ok := v.Members[name]
		reach := info.Host == primary.Host || (primary.BackupTLSPort != 0 && info.BackupTLSPort != 0)
		if name == v.Leader.Name || !ok || info.Witness || !st.Streaming || st.Following != v.Leader.Name || !reach {
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
		return v.Leader.Name, false, nil
	}
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].lag != cs[j].lag {
			return cs[i].lag < cs[j].lag
		}
		return cs[i].name < cs[j].name
	})
	return cs[0].name, true, nil
}
