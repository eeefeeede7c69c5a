package agent

import (
	"context"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/pg"
)

// The agent's edges: what it needs from the consensus store and from the
// database engine, in small interfaces owned here, next to their use, so
// a backend (etcd, the Kubernetes API, an in-memory fake in tests; a
// second database engine) implements exactly what the loop calls.
//
// Concurrency: the loop goroutine makes every call, except that
//   - the lease keeper (withLeaseKeeper) calls LeaseStore.KeepAlive
//     while a long action runs on the loop goroutine;
//   - the API's goroutines call RequestStore and ViewStore.Load.
// Implementations must therefore be safe for concurrent use.

// ViewStore reads the cluster's state.
type ViewStore interface {
	// Load reads everything under the cluster's prefix in one consistent
	// read.
	Load(ctx context.Context) (cluster.View, error)
	// Watch returns a channel that receives (coalesced) when the leader,
	// initialize, config, failover or history key changes, until ctx ends.
	// Status and optime writes must not wake it.
	Watch(ctx context.Context) <-chan struct{}
}

// LeaseStore is this member's one lease: its leader key, status and
// bootstrap claim are bound to it.
type LeaseStore interface {
	// Lease returns the current lease's id, granting one if there is none
	// (or it was lost).
	Lease(ctx context.Context) (int64, error)
	// KeepAlive renews the lease and returns the TTL granted, counted by
	// the caller from before the call. An error wrapping ErrLeaseLost
	// means the lease is gone (its keys with it).
	KeepAlive(ctx context.Context) (time.Duration, error)
	// Revoke ends the lease at once, deleting every key bound to it.
	Revoke(ctx context.Context) error
}

// LeaderStore is the leader key: compare-and-swap on creation, bound to
// this member's lease.
type LeaderStore interface {
	// AcquireLeader creates the key naming this member if no key exists;
	// false (no error) when another holds it.
	AcquireLeader(ctx context.Context) (bool, error)
	// ReleaseLeader deletes the key if it is this member's under its
	// current lease.
	ReleaseLeader(ctx context.Context) error
	// DeleteStaleLeader deletes the key at revision rev (one this member
	// left under a lease it no longer holds).
	DeleteStaleLeader(ctx context.Context, rev int64) error
}

// BootstrapStore is the cluster's bootstrap record.
type BootstrapStore interface {
	// ClaimInit creates the initialize key for this member (under its
	// lease); false when another member claimed it or it exists.
	ClaimInit(ctx context.Context) (bool, error)
	// FinishInit records the system identifier, if the claim is still ours.
	FinishInit(ctx context.Context, sysid string) error
	// AbortInit deletes this member's unfinished claim.
	AbortInit(ctx context.Context) error
	// PutConfigIfAbsent writes the cluster's dynamic configuration if the
	// store holds none.
	PutConfigIfAbsent(ctx context.Context, c cluster.Config) error
}

// MemberStore is this member's own records.
type MemberStore interface {
	// Register writes the member's registration (no lease).
	Register(ctx context.Context, m cluster.MemberInfo) error
	// PutStatus writes the member's status, bound to its lease.
	PutStatus(ctx context.Context, s cluster.MemberStatus) error
	// DeleteStatus removes it (a clean stop).
	DeleteStatus(ctx context.Context) error
}

// PrimaryStore is what the primary publishes for the others.
type PrimaryStore interface {
	// PutOptime writes the primary's last position (no lease: it outlives
	// the primary).
	PutOptime(ctx context.Context, o cluster.Optime) error
	// PutSync writes the synchronous record, compare-and-swap on rev (0:
	// create), only while this member holds the leader key.
	PutSync(ctx context.Context, s cluster.SyncState, rev int64) error
	// AppendHistory records a timeline switch.
	AppendHistory(ctx context.Context, h cluster.HistoryEntry) error
	// RecordDiscard records the WAL a rewind of this member discarded, on
	// the history entry of the timeline that branched at divergedAt.
	RecordDiscard(ctx context.Context, divergedAt cluster.LSN, d cluster.Discard) error
}

// RequestStore is the operator's requests and settings: the API backend
// writes them (compare-and-swap); the loop clears or names a switchover.
type RequestStore interface {
	// PutSwitchover creates the failover key; false when one is pending.
	PutSwitchover(ctx context.Context, sw cluster.Switchover) (bool, error)
	// DeleteSwitchover deletes it at revision rev.
	DeleteSwitchover(ctx context.Context, rev int64) error
	// PutConfig writes the dynamic configuration at revision rev.
	PutConfig(ctx context.Context, c cluster.Config, rev int64) error
}

// RaftLeaderMover is an optional capability of a Store: the embedded
// etcd's raft leadership. Moving it off the primary's host keeps a
// failover after that host dies from waiting for a new raft leader, which
// extends every lease by a full TTL. A store without it (an in-memory
// fake) is simply not asked; one that implements it with nothing to move
// (the Kubernetes API) does nothing.
type RaftLeaderMover interface {
	MoveLeaderAway(ctx context.Context, localEndpoint string) error
}

// Store is everything the agent needs from the consensus store
// (implemented by *store.Etcd and *kubestore.Store, which also implement
// RaftLeaderMover; agenttest.Store in tests). Errors wrap store.ErrUnavailable (any failure to reach a
// quorum: what the failsafe acts on), store.ErrLeaseLost or
// store.ErrConflict (a lost compare-and-swap).
type Store interface {
	ViewStore
	LeaseStore
	LeaderStore
	BootstrapStore
	MemberStore
	PrimaryStore
	RequestStore
}

// DataDir is the engine's data directory: its state while PostgreSQL is
// stopped, and the long operations that replace its contents. Initdb,
// Clone and Rewind require PostgreSQL stopped; they run under the lease
// keeper, and stop when ctx ends.
type DataDir interface {
	// Inspect classifies the directory and reads pg_controldata.
	Inspect() (pg.DataDirState, error)
	// WriteMarker records the cluster and system identifier in it.
	WriteMarker(cluster, sysid string) error
	Initdb(ctx context.Context) error
	Clone(ctx context.Context, src pg.Source) error
	Rewind(ctx context.Context, src pg.Source) (pg.RewindResult, error)
	// MoveAside keeps the directory under a new name and leaves it empty;
	// it returns where the old data went.
	MoveAside(reason string) (string, error)
}

// Process is the postmaster, owned by the engine (one goroutine spawns and
// waits for it). Running, PID and RunsAsPrimary never block.
type Process interface {
	Start(ctx context.Context, o pg.StartOptions) error
	Running() bool
	PID() int
	// LastExit is the pid of the postmaster last started once it has
	// exited (0 before that) and why: nil for exit status 0, else the
	// status and PostgreSQL's last log lines.
	LastExit() (pid int, err error)
	// RunsAsPrimary: started as a primary or promoted (known even when
	// PostgreSQL does not answer).
	RunsAsPrimary() bool
	Stop(ctx context.Context, mode pg.StopMode) error
	// StopForHandover is a switchover's stop; confirmed is true when the
	// standbys confirmed the final WAL.
	StopForHandover(ctx context.Context, o pg.HandoverStop) (confirmed bool, err error)
	// Fence stops every write within the given budget, escalating to
	// killing the process group; it returns an error only if PostgreSQL
	// still runs.
	Fence(within time.Duration) error
	// AdoptOrStopStray deals with a postmaster a previous agent left.
	AdoptOrStopStray(ctx context.Context) error
	// Reconfigure points a running standby at a new upstream (reload).
	Reconfigure(ctx context.Context, o pg.StartOptions) error
	Promote(ctx context.Context) error
	// Close releases the engine's connections (PostgreSQL keeps running).
	Close()
}

// SQL is what the agent asks a running PostgreSQL.
type SQL interface {
	// Status reads readiness, recovery, WAL positions, replication.
	Status(ctx context.Context) (pg.Status, error)
	SetSyncStandbys(ctx context.Context, value string) error
	EnsureReplicationUser(ctx context.Context) error
	// EnsureProxyAuth keeps the session proxy's auth role on the primary
	// (cheap after its first success; see pg.Engine.EnsureProxyAuth).
	EnsureProxyAuth(ctx context.Context) error
	EnsureSlots(ctx context.Context, names []string) error
	// TimelineHistory reads the history file of timeline tli.
	TimelineHistory(ctx context.Context, tli uint32) ([]pg.TimelineSwitch, error)
}

// Database is everything the agent needs from the database engine
// (implemented by *pg.Engine; agenttest.DB in tests). All calls come from
// the loop goroutine.
type Database interface {
	DataDir
	Process
	SQL
}
