// Package api is a holdfast member's HTTP API and the client the CLI uses to
// call it: the REST API and the CLI share this one package of routes and
// request/response types, so they cannot drift apart.
//
// The API serves three audiences:
//
//   - Load balancers and orchestrators: health checks with Patroni's paths
//     and status codes (/primary, /replica?lag=16MB, /liveness, ...), so
//     HAProxy configurations and Kubernetes probes written for Patroni work
//     unchanged. They are answered from the agent's last loop snapshot
//     (Backend.State), never by doing I/O, so they answer even while the
//     store or PostgreSQL hang. The decision is the pure function Check.
//   - Monitoring: GET /metrics (Prometheus), GET /cluster, /history, /config.
//   - Operators, through the CLI: switchover, failover, restart,
//     reinitialize, pause/resume and changes to the dynamic configuration.
//     These are the only requests that may require a bearer token and a
//     client certificate (ServerOptions).
//
// The package does not import the agent: the agent implements Backend.
package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// Backend is what the API needs from the member it runs in.
type Backend interface {
	// State returns this member's latest loop snapshot. It never does I/O and
	// never blocks: health checks must answer even when the store or
	// PostgreSQL hang. The API may keep the snapshot and read it from several
	// goroutines; the backend must not modify it (or the maps and slices it
	// holds) after handing it out.
	State() MemberState

	// Mutations. Errors returned as *Error carry an HTTP status and a
	// message for the client; any other error is a 500 (503 for a context
	// deadline). The context ends when the client goes away or the server's
	// mutation timeout passes.

	// Switchover moves the primary role to another member, now or at
	// r.ScheduledAt. Result.Scheduled means it was scheduled (202), not done.
	Switchover(ctx context.Context, r SwitchoverRequest) (Result, error)
	// CancelSwitchover cancels a scheduled switchover.
	CancelSwitchover(ctx context.Context) error
	// Failover promotes r.Candidate, with or without a healthy primary.
	Failover(ctx context.Context, r FailoverRequest) (Result, error)
	// Restart restarts this member's PostgreSQL, now or at r.ScheduledAt.
	Restart(ctx context.Context, r RestartRequest) (Result, error)
	// Reinitialize throws away this member's data and clones it afresh from
	// the primary. It must refuse on the member holding the leader key.
	Reinitialize(ctx context.Context) (Result, error)
	// SetPaused turns maintenance mode (no automatic failover) on or off for
	// the whole cluster.
	SetPaused(ctx context.Context, paused bool) (Result, error)
	// Failsafe is a primary's request to keep serving while it cannot
	// reach the consensus store. Accepting it is a promise not to take the
	// leader key for a TTL; the backend refuses (*Error 409) when this
	// member is itself the primary or taking the key.
	Failsafe(ctx context.Context, r FailsafeRequest) (Result, error)
	// PatchConfig applies a change to the cluster's dynamic configuration,
	// validates the result (e.g. ttl against loop_interval) and returns it.
	PatchConfig(ctx context.Context, patch ConfigPatch) (cluster.Config, error)
	// History returns the cluster's timeline history, oldest first.
	History(ctx context.Context) ([]cluster.HistoryEntry, error)
}

// MemberState is a member's latest loop snapshot, as the agent hands it to
// the API. Every health check, /cluster and /metrics are computed from it
// alone.
//
// Times: LoopHeartbeat and ViewAt must come from time.Now() in this process,
// so they carry Go's monotonic clock reading; the API compares them with its
// own time.Now(), and the comparisons then ignore steps of the wall clock
// (an NTP correction must not make a stuck loop look alive, or a valid lease
// look expired).
type MemberState struct {
	// Cluster is the cluster's name (the store's key prefix), for /cluster
	// and the metrics' labels.
	Cluster string
	// Name is this member's name.
	Name string
	// Role and State are what the last decision made this member.
	Role  cluster.Role
	State cluster.State

	// PGRunning: the postmaster process exists. PGReady: PostgreSQL accepted
	// a connection and answered the status query in the last loop (so
	// InRecovery and Position are current). InRecovery: it runs as a
	// standby. Streaming: a WAL receiver is streaming from the primary.
	PGRunning, PGReady, InRecovery, Streaming bool
	// Position is this member's WAL position: received/flushed WAL for a
	// standby, current WAL for the primary.
	Position cluster.Position
	// ReplayLSN is a standby's replayed WAL on Position's timeline (0 on a
	// primary): see cluster.ReplayedPosition. The replica checks' ?lag=
	// and /readiness measure from it.
	ReplayLSN cluster.LSN

	// HoldsLeaderKey: the leader key names this member and is bound to its
	// current, live lease, as of LoopHeartbeat.
	HoldsLeaderKey bool
	// LeaseValidFor is how long the lease was still valid at LoopHeartbeat
	// (the agent's lease deadline minus the heartbeat, on its monotonic
	// clock); 0 when it holds no lease. The API counts it down from
	// LoopHeartbeat, so a stuck loop does not keep advertising a lease that
	// has expired: once it has, the store may already have promoted another
	// member, and a load balancer still sending writes here would split the
	// cluster's clients.
	LeaseValidFor time.Duration
	// WritableFor is how long, at LoopHeartbeat, this member may still keep
	// its PostgreSQL writable before it must fence: its fence point (the
	// fence margin before its lease's deadline while the leader key is bound
	// to that lease, or before the end of every member's failsafe promise,
	// whichever is later) minus LoopHeartbeat; 0 when it is not a running,
	// writable primary. The API counts it down from LoopHeartbeat
	// (WritableRemaining), so a stuck loop stops vouching for itself before
	// the fence point. It is what the proxy trusts while it cannot read the
	// store itself.
	WritableFor time.Duration

	// Tags are this member's tags; ?tag_<key>=<value> health-check filters
	// match against them.
	Tags map[string]string
	// NoLoadBalance: the member is tagged noloadbalance, so /replica,
	// /read-only (as a replica), /async and /sync answer 503: it takes no
	// read traffic.
	NoLoadBalance bool
	// Paused: the cluster is in maintenance mode (no automatic failover).
	Paused bool

	// LoopHeartbeat is when the agent's loop last completed (time.Now() of
	// this process). A long action that cannot complete a loop but renews the
	// lease meanwhile (a clone that takes hours) must refresh it as it
	// renews, or /liveness fails and the orchestrator kills the agent — and
	// with it PostgreSQL and the clone. The agent should set it to its start
	// time before the first loop, so a slow first loop gets the same grace.
	LoopHeartbeat time.Time
	// LoopInterval and TTL are the settings in force (the store's dynamic
	// configuration, or the member's own until bootstrap wrote it).
	LoopInterval, TTL time.Duration
	// LastLoopDuration is how long the last completed loop took.
	LastLoopDuration time.Duration

	// View is the last successful read of the store, taken at ViewAt. It is
	// stale while the store is unreachable.
	View   cluster.View
	ViewAt time.Time

	// Message is the last decision's reason, for humans.
	Message string
	// Waiting is what node maintenance this member runs is waiting for
	// (Agent.SetWaiting); "" when nothing waits.
	Waiting string
	// PendingRestart is a restart of PostgreSQL that was asked for and has not
	// happened yet (scheduled, or waiting for a role condition); nil if none.
	PendingRestart *RestartRequest
	// ScheduledSwitchover is the switchover the cluster has scheduled, if any,
	// wherever the agent keeps it; nil if none.
	ScheduledSwitchover *ScheduledSwitchover
	// MaxLagOnFailover is the cluster's maximum_lag_on_failover in bytes; it
	// is the default ?lag of /readiness.
	MaxLagOnFailover int64
	// Sync: this member is a synchronous standby the store's record names
	// for the current leader (it holds every acknowledged commit).
	Sync bool
	// Archive is this member's WAL archiving while it is the primary
	// (what it reports in its status); nil otherwise. /archive answers
	// from it on the primary, from the primary's status in View elsewhere.
	Archive *cluster.ArchiveStatus
}

// ScheduledSwitchover is a switchover waiting for its time.
type ScheduledSwitchover struct {
	At        time.Time `json:"at"`
	Leader    string    `json:"leader,omitempty"`    // the primary to move away from
	Candidate string    `json:"candidate,omitempty"` // the member to promote; "" lets the cluster choose
}

// SwitchoverRequest is the body of POST /switchover. Both names are
// optional: Leader, when set, must be the current primary (it guards
// against switching over a primary that changed since the operator looked);
// Candidate, when empty, lets the cluster pick the best replica.
type SwitchoverRequest struct {
	Leader      string     `json:"leader,omitempty"`
	Candidate   string     `json:"candidate,omitempty"`
	ScheduledAt *time.Time `json:"scheduled_at,omitempty"` // RFC 3339; nil means now
}

// FailsafeRequest is the body of POST /failsafe: a primary that cannot
// reach the consensus store asks each member to let it keep serving.
type FailsafeRequest struct {
	Leader string `json:"leader"`
}

// FailoverRequest is the body of POST /failover.
type FailoverRequest struct {
	Candidate string `json:"candidate"` // required
	// Force accepts the loss cluster.AssessFailover reports: without it a
	// failover to a candidate that may lack acknowledged commits is refused
	// (412) with the facts.
	Force bool `json:"force,omitempty"`
}

// Restart roles: a restart with a role only happens if the member has it
// when the restart is due.
const (
	RestartPrimary = "primary"
	RestartReplica = "replica"
)

// RestartRequest is the body of POST /restart.
type RestartRequest struct {
	Role        string     `json:"role,omitempty"`         // "", RestartPrimary or RestartReplica
	ScheduledAt *time.Time `json:"scheduled_at,omitempty"` // RFC 3339; nil means now
}

// ConfigPatch is a change to the cluster's dynamic configuration, sent as a
// JSON merge patch to PATCH /config: only the keys present change. Durations
// travel as strings ("4s"), maximum_lag_on_failover as a number of bytes or
// a size string ("16MB").
type ConfigPatch struct {
	TTL                  *time.Duration
	LoopInterval         *time.Duration
	MaximumLagOnFailover *int64
	PrimaryStartTimeout  *time.Duration
	Paused               *bool
	SynchronousMode      *string
	SynchronousNodeCount *int
	BackupSchedule       *string
}

// Result is the outcome of a mutation that succeeded.
type Result struct {
	// Scheduled: the operation was accepted for later (HTTP 202), not done.
	Scheduled bool `json:"scheduled,omitempty"`
	// Message says what happened, for humans.
	Message string `json:"message"`
}

// Error is an error with an HTTP status: the backend returns it to choose
// the status of a refused request, the server answers it as
// {"error": Message}, and the client returns it with the server's status
// and message.
type Error struct {
	Status  int
	Message string
}

// Errorf builds an *Error with a formatted message.
func Errorf(status int, format string, args ...any) *Error {
	return &Error{Status: status, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("HTTP %d %s", e.Status, http.StatusText(e.Status))
	}
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
}

// StatusOf is the HTTP status a handler answers for err: the status of an
// *Error anywhere in its chain, 503 for a context deadline (the backend
// could not finish in time; the operation may still complete), else 500.
func StatusOf(err error) int {
	var e *Error
	switch {
	case errors.As(err, &e) && e.Status >= 400 && e.Status <= 599:
		return e.Status
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// errorBody is every error response: {"error": "..."}.
type errorBody struct {
	Error string `json:"error"`
}
