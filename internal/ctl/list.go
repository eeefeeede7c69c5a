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

	"github.com/holdfast/holdfast/internal/cluster"
)

// MemberRow is one member as `holdfast ctl list -o json` prints it.
type MemberRow struct {
	Name      string            `json:"name"`
	Role      cluster.Role      `json:"role"`
	State     cluster.State     `json:"state"`
	Host      string            `json:"host"`
	Port      int               `json:"port"`
	DSN       string            `json:"dsn,omitempty"`
	Timeline  uint32            `json:"timeline"`
	LSN       string            `json:"lsn,omitempty"`
	LagBytes  *int64            `json:"lag_bytes"` // null when unknown (down, other timeline)
	Following string            `json:"following,omitempty"`
	Leader    bool              `json:"leader"`
	Witness   bool              `json:"witness,omitempty"`
	Tags      map[string]string `json:"tags,omitempty"`
	Message   string            `json:"message,omitempty"`
}

// ClusterList is the whole `ctl list` document.
type ClusterList struct {
	Cluster  string      `json:"cluster"`
	Leader   string      `json:"leader,omitempty"`
	Timeline uint32      `json:"timeline"`
	Paused   bool        `json:"paused,omitempty"`
	Members  []MemberRow `json:"members"`
	// Proxy is the local cluster's proxy, when there is one.
	Proxy *ProxyAddrs `json:"proxy,omitempty"`
}

// ProxyAddrs are a proxy's listeners.
type ProxyAddrs struct {
	RW string `json:"rw"`
	RO string `json:"ro,omitempty"`
}

// List computes the list view. dbUser names the user put in DSNs.
func List(clusterName string, v cluster.View, dbUser string) ClusterList {
	out := ClusterList{Cluster: clusterName, Timeline: v.Timeline()}
	if v.Config != nil {
		out.Paused = v.Config.Paused
	}
	var leaderPos *cluster.Position
	if v.Leader != nil {
		out.Leader = v.Leader.Name
		if st, ok := v.Statuses[v.Leader.Name]; ok && st.Role == cluster.RolePrimary {
			p := st.Position
			leaderPos = &p
			if p.Timeline > out.Timeline {
				out.Timeline = p.Timeline
			}
		}
	}
	if leaderPos == nil && v.Optime != nil {
		p := v.Optime.Position
		leaderPos = &p
	}
	names := map[string]bool{}
	for n := range v.Members {
		names[n] = true
	}
	for n := range v.Statuses {
		names[n] = true
	}
	for _, n := range sortedNames(names) {
		info := v.Members[n]
		st, live := v.Statuses[n]
		row := MemberRow{Name: n, Host: info.Host, Port: info.Port, Witness: info.Witness, Tags: info.Tags,
			Role: cluster.RoleStopped, State: cluster.StateStopped, Leader: out.Leader == n}
		if info.Witness {
			row.Role = cluster.RoleWitness
		}
		if live {
			row.Role, row.State, row.Message, row.Following = st.Role, st.State, st.Message, st.Following
			row.Timeline = st.Position.Timeline
			if st.Position.LSN != 0 {
				row.LSN = st.Position.LSN.String()
			}
			if leaderPos != nil && !info.Witness && st.Position.Timeline == leaderPos.Timeline && st.Position.LSN != 0 {
				lag := int64(leaderPos.LSN) - int64(st.Position.LSN)
				if lag < 0 || n == out.Leader {
					lag = 0
				}
				row.LagBytes = &lag
			}
		}
		if !info.Witness && info.Host != "" {
			row.DSN = fmt.Sprintf("host=%s port=%d user=%s dbname=postgres", info.Host, info.Port, dbUser)
		}
		out.Members = append(out.Members, row)
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
	fmt.Fprintln(w, title)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tHOST\tROLE\tSTATE\tTL\tLAG (MB)\tTAGS")
	for _, m := range l.Members {
		addr := "-"
		if m.Host != "" {
			addr = fmt.Sprintf("%s:%d", m.Host, m.Port)
		}
		tl, lag := "", ""
		if m.Timeline > 0 {
			tl = fmt.Sprint(m.Timeline)
		}
		if m.LagBytes != nil {
			lag = fmt.Sprintf("%.1f", float64(*m.LagBytes)/(1<<20))
		}
		role := string(m.Role)
		if m.Leader {
			role += " *"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, addr, role, m.State, tl, lag, tagString(m.Tags))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if l.Proxy != nil {
		fmt.Fprintf(w, "Proxy: read-write %s  read-only %s\n", l.Proxy.RW, l.Proxy.RO)
	}
	return nil
}

func tagString(t map[string]string) string {
	var parts []string
	for k, v := range t {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func sortedNames(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	// Group by the name before the ordinal, then order by ordinal, so
	// pg-2 comes before pg-10 and a witness w-0 after every pg-*.
	sort.Slice(out, func(i, j int) bool {
		oi, iok := cluster.Ordinal(out[i])
		oj, jok := cluster.Ordinal(out[j])
		bi, bj := strings.TrimSuffix(out[i], fmt.Sprintf("-%d", oi)), strings.TrimSuffix(out[j], fmt.Sprintf("-%d", oj))
		if iok && jok && bi == bj && oi != oj {
			return oi < oj
		}
		if iok && jok && bi != bj {
			return bi < bj
		}
		return out[i] < out[j]
	})
	return out
}
