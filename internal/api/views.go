package api

import (
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// MemberHealth is the JSON body of a GET health check: this member as it
// sees itself. Its keys follow Patroni's where they mean the same
// (state, role, timeline, xlog, replication_state, cluster_unlocked, pause,
// tags, pending_restart, dcs_last_seen), so monitoring scripts written for
// Patroni find them.
type MemberHealth struct {
	Name    string `json:"name"`
	Cluster string `json:"cluster,omitempty"`
	// State is PostgreSQL's, with Patroni's words: "running" (answers),
	// "starting" (the process runs but does not answer yet) or "stopped".
	State       string        `json:"state"`
	MemberState cluster.State `json:"member_state,omitempty"` // holdfast's state word, as `ctl list` shows it
	Role        cluster.Role  `json:"role"`
	Timeline    uint32        `json:"timeline,omitempty"`
	XLog        XLog          `json:"xlog"`
	LSN         string        `json:"lsn,omitempty"` // Position.LSN as PostgreSQL prints it
	// ReplicationState is "streaming" or "in archive recovery" for a standby.
	ReplicationState string `json:"replication_state,omitempty"`
	// Lag is the replication lag in bytes; absent when unknown.
	Lag             *int64            `json:"lag,omitempty"`
	Leader          string            `json:"leader,omitempty"`           // the leader key's holder in the last store read
	ClusterUnlocked bool              `json:"cluster_unlocked,omitempty"` // no member held the leader key
	Pause           bool              `json:"pause,omitempty"`
	Tags            map[string]string `json:"tags,omitempty"`
	// LeaseValidSeconds is how long this member's lease is still valid.
	LeaseValidSeconds float64         `json:"lease_valid_seconds,omitempty"`
	PendingRestart    bool            `json:"pending_restart,omitempty"`
	ScheduledRestart  *RestartRequest `json:"scheduled_restart,omitempty"`
	// DCSLastSeen is when this member last read the store (Unix seconds).
	DCSLastSeen   int64     `json:"dcs_last_seen,omitempty"`
	LoopHeartbeat time.Time `json:"loop_heartbeat"`
	Message       string    `json:"message,omitempty"`
}

// XLog is the WAL position in bytes, as Patroni reports it: Location on a
// primary, ReceivedLocation on a standby.
type XLog struct {
	Location         *uint64 `json:"location,omitempty"`
	ReceivedLocation *uint64 `json:"received_location,omitempty"`
}

// Health renders the member's snapshot as the body of a GET health check.
func Health(s MemberState, now time.Time) MemberHealth {
	h := MemberHealth{
		Name: s.Name, Cluster: s.Cluster, MemberState: s.State, Role: s.Role,
		Timeline: s.Position.Timeline, ReplicationState: ReplicationState(s),
		Pause: s.Paused, Tags: s.Tags, LoopHeartbeat: s.LoopHeartbeat, Message: s.Message,
		LeaseValidSeconds: LeaseRemaining(s, now).Seconds(),
	}
	switch {
	case s.PGRunning && s.PGReady:
		h.State = "running"
	case s.PGRunning:
		h.State = "starting"
	default:
		h.State = "stopped"
	}
	if s.Position.LSN != 0 {
		pos := uint64(s.Position.LSN)
		h.LSN = s.Position.LSN.String()
		if s.InRecovery {
			h.XLog.ReceivedLocation = &pos
		} else {
			h.XLog.Location = &pos
		}
	}
	if lag, ok := ReplicationLag(s, now); ok {
		h.Lag = &lag
	}
	if !s.ViewAt.IsZero() {
		h.DCSLastSeen = s.ViewAt.Unix()
		if s.View.Leader != nil {
			h.Leader = s.View.Leader.Name
		} else {
			h.ClusterUnlocked = true
		}
	}
	if s.PendingRestart != nil {
		h.PendingRestart = true
		if s.PendingRestart.ScheduledAt != nil || s.PendingRestart.Role != "" {
			r := *s.PendingRestart
			h.ScheduledRestart = &r
		}
	}
	return h
}

// ClusterStatus is GET /cluster: the whole cluster as this member last read
// it from the store, like `holdfast ctl list -o json` plus each member's API
// URL and the scheduled switchover.
type ClusterStatus struct {
	Cluster             string               `json:"cluster"`
	Leader              string               `json:"leader,omitempty"`
	Timeline            uint32               `json:"timeline"`
	Paused              bool                 `json:"paused,omitempty"`
	Members             []Member             `json:"members"`
	ScheduledSwitchover *ScheduledSwitchover `json:"scheduled_switchover,omitempty"`
	// ReportedBy is the member that answered; ViewAt is when it read the
	// store. A ViewAt far in the past means that member cannot reach the
	// store: ask another.
	ReportedBy string    `json:"reported_by"`
	ViewAt     time.Time `json:"view_at"`
}

// Member is one member in ClusterStatus.
type Member struct {
	Name      string            `json:"name"`
	Role      cluster.Role      `json:"role"`
	State     cluster.State     `json:"state"`
	Host      string            `json:"host"`
	Port      int               `json:"port"`
	APIURL    string            `json:"api_url,omitempty"`
	Timeline  uint32            `json:"timeline"`
	LSN       string            `json:"lsn,omitempty"`
	Lag       *int64            `json:"lag"` // bytes behind the primary; null when unknown
	Following string            `json:"following,omitempty"`
	Leader    bool              `json:"leader"`
	Witness   bool              `json:"witness,omitempty"`
	Tags      map[string]string `json:"tags,omitempty"`
	Message   string            `json:"message,omitempty"`
}

// ClusterView renders the snapshot's store read as GET /cluster. Rows,
// order and lag follow `ctl list` (package ctl, which builds on this
// package and so cannot be used here): every registered or reporting
// member, grouped by name and ordered by ordinal (pg-2 before pg-10); lag
// against the leader's published position, else the last optime, on the
// same timeline only.
func ClusterView(s MemberState) ClusterStatus {
	v := s.View
	out := ClusterStatus{
		Cluster: s.Cluster, Timeline: v.Timeline(), ScheduledSwitchover: s.ScheduledSwitchover,
		ReportedBy: s.Name, ViewAt: s.ViewAt, Members: []Member{},
	}
	if v.Config != nil {
		out.Paused = v.Config.Paused
	}
	if v.Leader != nil {
		out.Leader = v.Leader.Name
		if st, ok := v.Statuses[v.Leader.Name]; ok && st.Role == cluster.RolePrimary && st.Position.Timeline > out.Timeline {
			out.Timeline = st.Position.Timeline
		}
	}
	leaderPos, havePos := leaderPosition(v)
	names := map[string]bool{}
	for n := range v.Members {
		names[n] = true
	}
	for n := range v.Statuses {
		names[n] = true
	}
	for _, n := range slices.SortedFunc(maps.Keys(names), compareMembers) {
		info := v.Members[n]
		m := Member{Name: n, Host: info.Host, Port: info.Port, APIURL: info.APIURL, Witness: info.Witness, Tags: info.Tags,
			Role: cluster.RoleStopped, State: cluster.StateStopped, Leader: out.Leader == n}
		if info.Witness {
			m.Role = cluster.RoleWitness
		}
		if st, live := v.Statuses[n]; live {
			m.Role, m.State, m.Message, m.Following = st.Role, st.State, st.Message, st.Following
			m.Timeline = st.Position.Timeline
			if st.Position.LSN != 0 {
				m.LSN = st.Position.LSN.String()
			}
			if havePos && !info.Witness && st.Position.LSN != 0 && st.Position.Timeline == leaderPos.Timeline {
				var lag int64
				if n != out.Leader && leaderPos.LSN > st.Position.LSN {
					lag = int64(min(uint64(leaderPos.LSN-st.Position.LSN), math.MaxInt64))
				}
				m.Lag = &lag
			}
		}
		out.Members = append(out.Members, m)
	}
	return out
}

// compareMembers orders member names as `ctl list` does: by the name before
// the ordinal, then by ordinal, so pg-2 comes before pg-10 and w-0 after
// every pg-*.
func compareMembers(a, b string) int {
	oa, aok := cluster.Ordinal(a)
	ob, bok := cluster.Ordinal(b)
	if aok && bok {
		ba, bb := strings.TrimSuffix(a, "-"+strconv.Itoa(oa)), strings.TrimSuffix(b, "-"+strconv.Itoa(ob))
		if ba != bb {
			return strings.Compare(ba, bb)
		}
		if oa != ob {
			return oa - ob
		}
	}
	return strings.Compare(a, b)
}

// configDoc is the dynamic configuration as JSON: durations as strings
// ("4s"), so the document reads like the config file and PATCH takes back
// what GET gave.
type configDoc struct {
	TTL                  string `json:"ttl"`
	LoopInterval         string `json:"loop_interval"`
	MaximumLagOnFailover int64  `json:"maximum_lag_on_failover"`
	PrimaryStartTimeout  string `json:"primary_start_timeout"`
	Paused               bool   `json:"paused"`
}

func renderConfig(c cluster.Config) configDoc {
	return configDoc{
		TTL: formatDuration(c.TTL), LoopInterval: formatDuration(c.LoopInterval),
		MaximumLagOnFailover: c.MaximumLagOnFailover, PrimaryStartTimeout: formatDuration(c.PrimaryStartTimeout),
		Paused: c.Paused,
	}
}

// formatDuration writes d as the config file does: "4s", "500ms", "1m30s",
// "1m", "2h" (trailing zero units dropped).
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
