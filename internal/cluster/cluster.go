// Package cluster holds the vocabulary every part of holdfast shares: member
// identity, the reports members publish in the consensus store, the leader
// record, timeline history and the dynamic cluster settings. It is pure data
// and pure helpers — no I/O — so the decision function, the store adapter,
// the CLI and the proxy can all speak it without depending on each other.
package cluster

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/quote"
)

// Role is what a member currently is in the cluster.
type Role string

const (
	// RolePrimary accepts writes. Only the holder of the leader key may be it.
	RolePrimary Role = "primary"
	// RoleReplica streams (or tries to stream) from the primary.
	RoleReplica Role = "replica"
	// RoleStandbyNoLeader runs PostgreSQL read-only, in recovery, while no
	// member holds the leader key: it replays local WAL so it can report a
	// position for the leader race.
	RoleStandbyNoLeader Role = "standby"
	// RoleWitness votes in the consensus store and runs no database.
	RoleWitness Role = "witness"
	// RoleUninitialized has no data yet (waiting to bootstrap or clone).
	RoleUninitialized Role = "uninitialized"
	// RoleStopped has data but PostgreSQL is not running.
	RoleStopped Role = "stopped"
)

// State is a short word for what a member is doing, as shown by `ctl list`.
type State string

const (
	StateRunning       State = "running"
	StateStreaming     State = "streaming"
	StateStarting      State = "starting"
	StateStopped       State = "stopped"
	StateBootstrapping State = "bootstrapping"
	StateCloning       State = "cloning"
	StateRewinding     State = "rewinding"
	StateFenced        State = "fenced"
	StateCrashed       State = "crashed"
	StateWaiting       State = "waiting"
	StateFailed        State = "failed"
)

// LSN is a PostgreSQL WAL position (XLogRecPtr).
type LSN uint64

// ParseLSN reads the textual form PostgreSQL prints ("16/B374D848").
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, fmt.Errorf("parse LSN %s: want the form X/Y in hexadecimal", quote.Value(s))
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse LSN %s: high half: %w", quote.Value(s), err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("parse LSN %s: low half: %w", quote.Value(s), err)
	}
	return LSN(h<<32 | l), nil
}

// String prints the LSN the way PostgreSQL does.
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint64(l)&0xFFFFFFFF) }

// MarshalText makes LSNs readable in the store and in JSON output.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText is the inverse of MarshalText.
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

// Position orders WAL positions across timelines: a higher timeline always
// wins, because a member on an older timeline may hold WAL that the cluster
// abandoned at the last promotion, however large its LSN.
type Position struct {
	Timeline uint32 `json:"timeline"`
	LSN      LSN    `json:"lsn"`
}

// Less reports whether p is strictly behind q.
func (p Position) Less(q Position) bool {
	if p.Timeline != q.Timeline {
		return p.Timeline < q.Timeline
	}
	return p.LSN < q.LSN
}

var ordinalRe = regexp.MustCompile(`-([0-9]+)$`)

// Ordinal derives the StatefulSet-style ordinal from a member name: "pg-2"
// gives 2. ok is false for a name without a numeric suffix.
func Ordinal(name string) (n int, ok bool) {
	m := ordinalRe.FindStringSubmatch(name)
	if m == nil {
		return 0, false
	}
	v, err := strconv.Atoi(m[1])
	if err != nil {
		return 0, false
	}
	return v, true
}

var nameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ValidName reports whether name can serve as a member or cluster name: a
// DNS label (lower-case letters, digits and '-', at most 63 characters), so
// it works as a host name, an etcd member name and a replication slot name.
func ValidName(name string) error {
	if !nameRe.MatchString(name) {
		return fmt.Errorf("%s is not a valid name: use 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit", quote.Value(name))
	}
	return nil
}

// SlotName is the physical replication slot the primary keeps for a member.
func SlotName(member string) string { return strings.ReplaceAll(member, "-", "_") }

// MemberInfo is what a member registers once, without a lease: it outlives
// the member's process so the primary keeps its replication slot and `ctl
// list` can show a member that is down.
type MemberInfo struct {
	Name    string            `json:"name"`
	Host    string            `json:"host"` // where clients and replicas reach PostgreSQL
	Port    int               `json:"port"` // PostgreSQL port
	APIURL  string            `json:"api_url,omitempty"`
	Witness bool              `json:"witness,omitempty"`
	Tags    map[string]string `json:"tags,omitempty"` // e.g. nofailover=true
	// BackupTLSPort is the port of the member's pgBackRest TLS server (0:
	// none runs): a replica on another host can take a backup from
	// itself only when the primary runs one (ctl.BackupSource).
	BackupTLSPort int `json:"backup_tls_port,omitempty"`
}

// NoFailover reports whether the member may never be promoted: tagged
// nofailover, or failover_priority 0. An unreadable value (refused by
// CheckTags at start-up, so only seen from a foreign writer) reads as the
// safe side: never promote.
func (m MemberInfo) NoFailover() bool {
	if v, ok := m.Tags[TagNoFailover]; ok {
		if b, err := ParseBool(v); err != nil || b {
			return true
		}
	}
	return m.FailoverPriority() == 0
}

// NoLoadBalance reports whether the member is tagged to receive no
// read-only traffic (an unreadable value reads as true: keep it out).
func (m MemberInfo) NoLoadBalance() bool {
	v, ok := m.Tags[TagNoLoadBalance]
	if !ok {
		return false
	}
	b, err := ParseBool(v)
	return err != nil || b
}

// FailoverPriority is the member's promotion priority: higher is
// preferred, 0 means never, DefaultFailoverPriority when untagged. An
// unreadable value reads as 0 (never promote what we cannot rank).
func (m MemberInfo) FailoverPriority() int {
	v, ok := m.Tags[TagFailoverPriority]
	if !ok {
		return DefaultFailoverPriority
	}
	n, err := parsePriority(v)
	if err != nil {
		return 0
	}
	return n
}

// Zone is the failure domain the member runs in ("" when unknown): on
// Kubernetes its node's topology.kubernetes.io/zone label.
func (m MemberInfo) Zone() string { return m.Tags[TagZone] }

// MemberStatus is what a live member reports every loop, bound to its lease:
// when the member dies the report disappears with the lease.
type MemberStatus struct {
	Name     string   `json:"name"`
	Role     Role     `json:"role"`
	State    State    `json:"state"`
	Position Position `json:"position"` // received/flushed WAL for replicas, current WAL for the primary
	// ReplayLSN is, on a standby, the WAL it has replayed
	// (pg_last_wal_replay_lsn): what a query on it sees. It is on
	// Position's timeline and never beyond it. 0 on a primary and in
	// reports from agents older than the field: read it through Replayed.
	// Failover compares Position (what a promotion keeps), never this.
	ReplayLSN LSN    `json:"replay_lsn,omitempty"`
	Following string `json:"following,omitempty"` // the member a replica streams from
	Streaming bool   `json:"streaming,omitempty"`
	SystemID  string `json:"system_id,omitempty"`
	Message   string `json:"message,omitempty"` // the last decision's reason, for humans
	// Waiting is what node maintenance this member runs is waiting for
	// (e.g. a drain of the primary's node with no safe target), for `ctl
	// list`; "" when nothing waits.
	Waiting string `json:"waiting,omitempty"`
	// Cleared is the last switchover or failover request this member
	// cleared, and why (nil = none since its agent started): how the
	// member that took the request learns its fate — completed, or
	// cancelled and why — once the request itself is gone.
	Cleared *ClearedRequest `json:"cleared_request,omitempty"`
	// Archive is the primary's WAL archiving (nil on other members, and
	// from agents older than the field): what `ctl list` and every
	// member's /archive health check show.
	Archive   *ArchiveStatus `json:"archive,omitempty"`
	UpdatedAt time.Time      `json:"updated_at"` // wall clock of the reporter: for display only, never for decisions
}

// ClearedRequest is a switchover or failover request a member cleared.
type ClearedRequest struct {
	// RequestedAt identifies the request (Switchover.RequestedAt).
	RequestedAt time.Time `json:"requested_at"`
	Kind        string    `json:"kind"`
	// Reason is why it was cleared: completed, or why it was cancelled.
	Reason string `json:"reason"`
}

// Replayed is the position a query on the member sees (see
// ReplayedPosition): what read routing, the health checks' lag and the
// operator views' replay lag measure.
func (s MemberStatus) Replayed() Position { return ReplayedPosition(s.Position, s.ReplayLSN) }

// Leader is the leader key: the member allowed to run as primary.
type Leader struct {
	Name     string
	LeaseID  int64
	Revision int64 // mod revision of the key, for compare-and-swap
}

// HistoryEntry records one promotion: the timeline it created and why.
type HistoryEntry struct {
	Timeline  uint32    `json:"timeline"`
	SwitchLSN LSN       `json:"switch_lsn"` // where the parent timeline ended
	Leader    string    `json:"leader"`
	Reason    string    `json:"reason"`
	At        time.Time `json:"at"`
	// Discarded lists the WAL that former primaries threw away when
	// pg_rewind moved them onto this timeline (see Discard).
	Discarded []Discard `json:"discarded,omitempty"`
}

// Optime is the last WAL position the primary reported. It has no lease, so
// it survives the primary; failover candidates measure their lag against it.
type Optime struct {
	Position Position `json:"position"`
	Leader   string   `json:"leader"`
}

// InitState is the bootstrap key: empty while nobody has bootstrapped,
// "bootstrapping by <member>" while one member runs initdb (bound to that
// member's lease, so a crash mid-bootstrap frees it), then the PostgreSQL
// system identifier, forever.
type InitState struct {
	Present      bool
	Bootstrapper string // set while a bootstrap is in progress
	SystemID     string // set once bootstrap has completed
	Revision     int64
}

// Config is the cluster-wide dynamic configuration kept in the store. It is
// written by the bootstrapping member from its own file and then shared, so
// every member judges leases and lag by the same numbers.
type Config struct {
	TTL                  time.Duration `json:"ttl"`
	LoopInterval         time.Duration `json:"loop_interval"`
	MaximumLagOnFailover int64         `json:"maximum_lag_on_failover"`
	PrimaryStartTimeout  time.Duration `json:"primary_start_timeout"`
	Paused               bool          `json:"paused,omitempty"`
	// SynchronousMode is one of the Sync* modes ("" reads as SyncOff).
	SynchronousMode string `json:"synchronous_mode,omitempty"`
	// SynchronousNodeCount is N: the number of synchronous standbys in
	// modes on and strict, the quorum (ANY N) in mode quorum. 0 reads as 1.
	SynchronousNodeCount int `json:"synchronous_node_count,omitempty"`
	// BackupSchedule is when the leader's agent takes backups with
	// pgBackRest (ParseBackupSchedule; "" = only on demand). The schedule
	// runs from the repository's newest backups, so it survives failovers.
	BackupSchedule string `json:"backup_schedule,omitempty"`
}

// Synchronous replication modes (Config.SynchronousMode).
const (
	// SyncOff: asynchronous replication; a failover may lose up to
	// maximum_lag_on_failover bytes of acknowledged commits.
	SyncOff = "off"
	// SyncOn: commits wait for N synchronous standbys while any is
	// healthy; with none, the primary falls back to asynchronous commits
	// (and no automatic failover can then be proven safe).
	SyncOn = "on"
	// SyncStrict: a commit is never acknowledged without a synchronous
	// standby: with none healthy, commits wait.
	SyncStrict = "strict"
	// SyncQuorum: commits wait for any N of the healthy standbys
	// (synchronous_standby_names = 'ANY N (...)').
	SyncQuorum = "quorum"
)

// SyncModes lists the valid synchronous modes, for messages.
func SyncModes() []string { return []string{SyncOff, SyncOn, SyncStrict, SyncQuorum} }

// SyncMode returns the configured mode, "" read as SyncOff.
func (c Config) SyncMode() string {
	if c.SynchronousMode == "" {
		return SyncOff
	}
	return c.SynchronousMode
}

// SyncCount returns N, 0 read as 1.
func (c Config) SyncCount() int {
	if c.SynchronousNodeCount <= 0 {
		return 1
	}
	return c.SynchronousNodeCount
}

// CheckSync checks the synchronous replication settings of a valid
// configuration (Problems) against the number of replicas the cluster has
// (database members minus the primary). It guards against settings that
// could never be satisfied: a strict cluster asking for more synchronous
// standbys than exist would never acknowledge a commit again.
func (c Config) CheckSync(replicas int) error {
	if c.SyncCount() > replicas {
		return fmt.Errorf("synchronous_node_count %d is larger than the number of replicas (%d): add members or lower the count", c.SyncCount(), replicas)
	}
	return nil
}

// SyncState is the store's record of who holds every acknowledged commit.
// Its contract, kept by the primary's order of changes: every commit
// PostgreSQL has acknowledged is on Leader and on at least Quorum of
// Members. A failover candidate that is Leader, or that sees
// len(Members)-Quorum+1 members of Members (itself included) and is at
// least as far along as each, provably holds every acknowledged commit.
type SyncState struct {
	Leader   string   `json:"leader"`
	Members  []string `json:"members"`
	Quorum   int      `json:"quorum"`
	Revision int64    `json:"-"`
}

// Switchover kinds.
const (
	// KindSwitchover is planned: the healthy primary stops cleanly, hands
	// its last WAL to the candidate, then releases the leader key.
	KindSwitchover = "switchover"
	// KindFailover is forced by an operator when there is no healthy
	// primary: only the named candidate may take the leader key.
	KindFailover = "failover"
)

// Switchover is a pending planned switchover or manual failover, kept in
// the store so every member sees the same request. The member that
// completes it (the new primary) deletes it.
type Switchover struct {
	Kind        string    `json:"kind"`
	Leader      string    `json:"leader,omitempty"`       // the primary it applies to; "" = whoever leads
	Candidate   string    `json:"candidate,omitempty"`    // "" = the most up-to-date eligible replica
	ScheduledAt time.Time `json:"scheduled_at,omitempty"` // zero = now
	RequestedAt time.Time `json:"requested_at"`           // for display only
	Revision    int64     `json:"-"`
}

// View is one consistent read of everything under the cluster's prefix.
type View struct {
	Revision int64
	Init     InitState
	Leader   *Leader // nil when no member holds the leader key
	Members  map[string]MemberInfo
	Statuses map[string]MemberStatus // only live members
	Optime   *Optime
	History  []HistoryEntry
	Config   *Config // nil before bootstrap wrote it
	// ConfigRevision is the config key's mod revision, for compare-and-swap.
	ConfigRevision int64
	// Switchover is the pending switchover or failover request, if any.
	Switchover *Switchover
	// Sync is the synchronous replication record, nil if never written.
	Sync *SyncState
}

// Timeline returns the newest timeline the cluster has recorded, 0 if none.
func (v View) Timeline() uint32 {
	var t uint32
	if v.Optime != nil {
		t = v.Optime.Position.Timeline
	}
	for _, h := range v.History {
		if h.Timeline > t {
			t = h.Timeline
		}
	}
	return t
}
