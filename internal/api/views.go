package api

import (
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
	// Lag is the replication lag in bytes, from the received WAL; absent
	// when unknown. ReplayLag is the same from the replayed WAL: how stale
	// the member's reads are (what the ?lag= checks compare).
	Lag             *int64            `json:"lag,omitempty"`
	ReplayLag       *int64            `json:"replay_lag,omitempty"`
	Leader          string            `json:"leader,omitempty"`           // the leader key's holder in the last store read
	ClusterUnlocked bool              `json:"cluster_unlocked,omitempty"` // no member held the leader key
	Pause           bool              `json:"pause,omitempty"`
	Tags            map[string]string `json:"tags,omitempty"`
	// LeaseValidSeconds is how long this member's lease is still valid.
	LeaseValidSeconds float64 `json:"lease_valid_seconds,omitempty"`
	// WritableSeconds is how long this member may still accept writes
	// before it must fence (WritableRemaining); absent when it may not.
	WritableSeconds  float64         `json:"writable_seconds,omitempty"`
	PendingRestart   bool            `json:"pending_restart,omitempty"`
	ScheduledRestart *RestartRequest `json:"scheduled_restart,omitempty"`
	// DCSLastSeen is when this member last read the store (Unix seconds).
	DCSLastSeen   int64     `json:"dcs_last_seen,omitempty"`
	LoopHeartbeat time.Time `json:"loop_heartbeat"`
	Message       string    `json:"message,omitempty"`
	// Archive is the cluster's WAL archiving as this member knows it
	// (ClusterArchive): what /archive judges, with its reason.
	Archive ArchiveHealth `json:"archive"`
}

// XLog is the WAL position in bytes, as Patroni reports it: Location on a
// primary, ReceivedLocation and ReplayedLocation on a standby.
type XLog struct {
	Location         *uint64 `json:"location,omitempty"`
	ReceivedLocation *uint64 `json:"received_location,omitempty"`
	ReplayedLocation *uint64 `json:"replayed_location,omitempty"`
}

// Health renders the member's snapshot as the body of a GET health check.
func Health(s MemberState, now time.Time) MemberHealth {
	h := MemberHealth{
		Name: s.Name, Cluster: s.Cluster, MemberState: s.State, Role: s.Role,
		Timeline: s.Position.Timeline, ReplicationState: ReplicationState(s),
		Pause: s.Paused, Tags: s.Tags, LoopHeartbeat: s.LoopHeartbeat, Message: s.Message,
		LeaseValidSeconds: LeaseRemaining(s, now).Seconds(),
		WritableSeconds:   WritableRemaining(s, now).Seconds(),
		Archive:           ClusterArchive(s, now),
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
			replayed := uint64(cluster.ReplayedPosition(s.Position, s.ReplayLSN).LSN)
			h.XLog.ReceivedLocation, h.XLog.ReplayedLocation = &pos, &replayed
		} else {
			h.XLog.Location = &pos
		}
	}
	if lag, ok := ReplicationLag(s, now, LagWrite); ok {
		h.Lag = &lag
	}
	if lag, ok := ReplicationLag(s, now, LagApply); ok {
		h.ReplayLag = &lag
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
	SynchronousMode     string               `json:"synchronous_mode,omitempty"`
	SyncQuorum          int                  `json:"sync_quorum,omitempty"`
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
	Name     string        `json:"name"`
	Role     cluster.Role  `json:"role"`
	State    cluster.State `json:"state"`
	Host     string        `json:"host"`
	Port     int           `json:"port"`
	APIURL   string        `json:"api_url,omitempty"`
	Timeline uint32        `json:"timeline"`
	LSN      string        `json:"lsn,omitempty"`
	Lag      *int64        `json:"lag"` // bytes not yet received behind the primary; null when unknown
	// ReplayLSN and ReplayLag are as in `ctl list -o json`: a standby's
	// replayed WAL when behind LSN, and the bytes it has not yet replayed
	// behind the primary (null when unknown).
	ReplayLSN string            `json:"replay_lsn,omitempty"`
	ReplayLag *int64            `json:"replay_lag"`
	Following string            `json:"following,omitempty"`
	Leader    bool              `json:"leader"`
	Sync      bool              `json:"sync,omitempty"` // a synchronous standby holding the acknowledged commits
	Witness   bool              `json:"witness,omitempty"`
	Tags      map[string]string `json:"tags,omitempty"`
	Message   string            `json:"message,omitempty"`
}

// ClusterView renders the snapshot's store read as GET /cluster: the same
// rows, order and lag as `ctl list` (cluster.Summarize), plus each member's
// API URL.
func ClusterView(s MemberState) ClusterStatus {
	sum := cluster.Summarize(s.View)
	out := ClusterStatus{
		Cluster: s.Cluster, Leader: sum.Leader, Timeline: sum.Timeline, Paused: sum.Paused,
		SynchronousMode: sum.SyncMode, SyncQuorum: sum.SyncQuorum,
		ScheduledSwitchover: s.ScheduledSwitchover, ReportedBy: s.Name, ViewAt: s.ViewAt, Members: []Member{},
	}
	for _, ms := range sum.Members {
		info := ms.Info
		m := Member{Name: ms.Name, Host: info.Host, Port: info.Port, APIURL: info.APIURL, Witness: info.Witness, Tags: info.Tags,
			Role: ms.Role, State: ms.State, Leader: ms.Leader, Sync: ms.Sync, Lag: ms.Lag, ReplayLag: ms.ReplayLag}
		if st := ms.Status; st != nil {
			m.Message, m.Following, m.Timeline = st.Message, st.Following, st.Position.Timeline
			if st.Position.LSN != 0 {
				m.LSN = st.Position.LSN.String()
			}
			if r := st.Replayed(); r != st.Position {
				m.ReplayLSN = r.LSN.String()
			}
		}
		out.Members = append(out.Members, m)
	}
	return out
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
	SynchronousMode      string `json:"synchronous_mode"`
	SynchronousNodeCount int    `json:"synchronous_node_count"`
	BackupSchedule       string `json:"backup_schedule,omitempty"`
}

func renderConfig(c cluster.Config) configDoc {
	return configDoc{
		TTL: formatDuration(c.TTL), LoopInterval: formatDuration(c.LoopInterval),
		MaximumLagOnFailover: c.MaximumLagOnFailover, PrimaryStartTimeout: formatDuration(c.PrimaryStartTimeout),
		Paused: c.Paused, SynchronousMode: c.SyncMode(), SynchronousNodeCount: c.SyncCount(),
		BackupSchedule: c.BackupSchedule,
	}
}

// formatDuration writes d as the config file does: "4s", "500ms", "1m30s",
// "1m", "2h" (trailing zero units dropped).
func formatDuration(d time.Duration) string { return cluster.FormatDuration(d) }
