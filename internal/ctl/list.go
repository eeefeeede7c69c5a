// Package ctl holds the operator's read views of a cluster, computed from
// one consistent read of the store, and their table and JSON renderings.
package ctl

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// MemberRow is one member as `holdfast ctl list -o json` prints it.
type MemberRow struct {
	Name     string        `json:"name"`
	Role     cluster.Role  `json:"role"`
	State    cluster.State `json:"state"`
	Host     string        `json:"host"`
	Port     int           `json:"port"`
	DSN      string        `json:"dsn,omitempty"`
	Timeline uint32        `json:"timeline"`
	LSN      string        `json:"lsn,omitempty"`
	LagBytes *int64        `json:"lag_bytes"` // WAL not yet received; null when unknown (down, other timeline)
	// ReplayLSN is a standby's replayed WAL, when it reports one behind
	// LSN; ReplayLagBytes how far that is behind the primary (null when
	// unknown): how stale reads from the member are.
	ReplayLSN      string            `json:"replay_lsn,omitempty"`
	ReplayLagBytes *int64            `json:"replay_lag_bytes"`
	Following      string            `json:"following,omitempty"`
	Leader         bool              `json:"leader"`
	Sync           bool              `json:"sync,omitempty"` // a synchronous standby holding the acknowledged commits
	Witness        bool              `json:"witness,omitempty"`
	Tags           map[string]string `json:"tags,omitempty"`
	Message        string            `json:"message,omitempty"`
	// Waiting is what node maintenance the member runs waits for (e.g. a
	// drain of the primary's node with no safe target).
	Waiting string `json:"waiting,omitempty"`
}

// ClusterList is the whole `ctl list` document.
type ClusterList struct {
	Cluster  string `json:"cluster"`
	Leader   string `json:"leader,omitempty"`
	Timeline uint32 `json:"timeline"`
	Paused   bool   `json:"paused,omitempty"`
	// SynchronousMode is the cluster's mode; SyncQuorum how many of the
	// members marked sync hold each acknowledged commit.
	SynchronousMode string      `json:"synchronous_mode,omitempty"`
	SyncQuorum      int         `json:"sync_quorum,omitempty"`
	Members         []MemberRow `json:"members"`
	// Archive is the primary's WAL archiving as it reports it (nil when
	// no member leads, or the primary reports none).
	Archive *ArchiveRow `json:"archive,omitempty"`
	// Proxy is the local cluster's proxy, when there is one.
	Proxy *ProxyAddrs `json:"proxy,omitempty"`
}

// ArchiveRow is the primary's WAL archiving in `ctl list`.
type ArchiveRow struct {
	Primary string `json:"primary"`
	cluster.ArchiveStatus
}

// ProxyAddrs are a proxy's listeners.
type ProxyAddrs struct {
	RW string `json:"rw"`
	RO string `json:"ro,omitempty"`
}

// List computes the list view (see cluster.Summarize). dbUser names the
// user put in DSNs.
func List(clusterName string, v cluster.View, dbUser string) ClusterList {
	sum := cluster.Summarize(v)
	out := ClusterList{Cluster: clusterName, Leader: sum.Leader, Timeline: sum.Timeline, Paused: sum.Paused,
		SynchronousMode: sum.SyncMode, SyncQuorum: sum.SyncQuorum}
	for _, m := range sum.Members {
		info := m.Info
		row := MemberRow{Name: m.Name, Host: info.Host, Port: info.Port, Witness: info.Witness, Tags: info.Tags,
			Role: m.Role, State: m.State, Leader: m.Leader, Sync: m.Sync, LagBytes: m.Lag, ReplayLagBytes: m.ReplayLag}
		if st := m.Status; st != nil {
			row.Message, row.Waiting, row.Following, row.Timeline = st.Message, st.Waiting, st.Following, st.Position.Timeline
			if st.Position.LSN != 0 {
				row.LSN = st.Position.LSN.String()
			}
			if r := st.Replayed(); r != st.Position {
				row.ReplayLSN = r.LSN.String()
			}
		}
		if !info.Witness && info.Host != "" {
			row.DSN = fmt.Sprintf("host=%s port=%d user=%s dbname=postgres", info.Host, info.Port, dbUser)
		}
		out.Members = append(out.Members, row)
	}
	if v.Leader != nil {
		if st, ok := v.Statuses[v.Leader.Name]; ok && st.Archive != nil {
			out.Archive = &ArchiveRow{Primary: v.Leader.Name, ArchiveStatus: *st.Archive}
		}
	}
	return out
}

// WriteJSON prints the list as indented JSON.
func (l ClusterList) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(l)
}

// WriteTable prints the list like patronictl list.
func (l ClusterList) WriteTable(w io.Writer) error {
	title := fmt.Sprintf("Cluster: %s (timeline %d)", l.Cluster, l.Timeline)
	if l.Paused {
		title += " [paused]"
	}
	if l.SynchronousMode != "" && l.SynchronousMode != cluster.SyncOff {
		title += fmt.Sprintf(" [synchronous_mode %s, quorum %d]", l.SynchronousMode, l.SyncQuorum)
	}
	fmt.Fprintln(w, title)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tHOST\tROLE\tSTATE\tTL\tRECEIVE LAG (MB)\tREPLAY LAG (MB)\tTAGS")
	for _, m := range l.Members {
		addr := "-"
		if m.Host != "" {
			addr = fmt.Sprintf("%s:%d", m.Host, m.Port)
		}
		tl := ""
		if m.Timeline > 0 {
			tl = fmt.Sprint(m.Timeline)
		}
		role := string(m.Role)
		if m.Leader {
			role += " *"
		}
		if m.Sync {
			role += " (sync)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, addr, role, m.State, tl, megabytes(m.LagBytes), megabytes(m.ReplayLagBytes), tagString(m.Tags))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, m := range l.Members {
		if m.Waiting != "" {
			fmt.Fprintf(w, "%s: %s\n", m.Name, m.Waiting)
		}
	}
	// A cluster without backups says nothing of archiving in the table
	// (the JSON still has the "off" state).
	if l.Archive != nil && l.Archive.State != cluster.ArchiveOff {
		fmt.Fprintln(w, l.Archive.line())
	}
	if l.Proxy != nil {
		fmt.Fprintf(w, "Proxy: read-write %s  read-only %s\n", l.Proxy.RW, l.Proxy.RO)
	}
	return nil
}

// line is the archive status as one line under the table: the state,
// and the last archived WAL when ok, else the reason.
func (a ArchiveRow) line() string {
	head := fmt.Sprintf("Archive on %s: %s", a.Primary, a.State)
	switch {
	case a.State != cluster.ArchiveOK:
		return head + ": " + a.Reason
	case a.LastArchivedWAL == "":
		return head + " (nothing archived yet)"
	}
	return fmt.Sprintf("%s (last archived %s at %s)", head, a.LastArchivedWAL, a.LastArchivedTime.UTC().Format(time.RFC3339))
}

// megabytes prints a lag in MiB with one decimal, "" when unknown.
func megabytes(b *int64) string {
	if b == nil {
		return ""
	}
	return fmt.Sprintf("%.1f", float64(*b)/(1<<20))
}

func tagString(t map[string]string) string {
	var parts []string
	for k, v := range t {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}
