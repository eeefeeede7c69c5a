package api

import (
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// memberCollector computes the member's metrics from Backend.State at
// scrape time. Nothing is stored between scrapes, so a metric can never be
// stale relative to the snapshot, and a scrape does no I/O beyond reading
// the snapshot.
type memberCollector struct {
	state func() MemberState
	now   func() time.Time

	role, leader, timeline, walPosition, lag, replayLag, leaseValid,
	loopDuration, loopAge, paused, pgRunning, pgReady, streaming, waiting *prometheus.Desc
}

// metricRoles are the roles holdfast_member_role always reports, so a query
// for one role finds a 0 rather than nothing on members without it.
func metricRoles() []string {
	return []string{"primary", "replica", "standby", "witness", "uninitialized", "stopped"}
}

func newMemberCollector(state func() MemberState, now func() time.Time) *memberCollector {
	labels := []string{"cluster", "member"}
	d := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, append(append([]string{}, labels...), extra...), nil)
	}
	return &memberCollector{
		state: state, now: now,
		role:         d("holdfast_member_role", "1 for the member's current role, 0 for the others.", "role"),
		leader:       d("holdfast_leader", "1 if this member holds the leader key under a lease that has not run out, else 0."),
		timeline:     d("holdfast_timeline", "Timeline of this member's WAL position (0 if unknown)."),
		walPosition:  d("holdfast_wal_position_bytes", "This member's WAL position (LSN) in bytes: current WAL on the primary, received WAL on a standby."),
		lag:          d("holdfast_replication_lag_bytes", "Bytes of WAL this member has not received behind the primary's last published position; absent when unknown."),
		replayLag:    d("holdfast_replay_lag_bytes", "Bytes of WAL this member has not replayed behind the primary's last published position (how stale its reads are); absent when unknown."),
		leaseValid:   d("holdfast_lease_valid_seconds", "Seconds this member's store lease is still valid (0 if it holds none)."),
		loopDuration: d("holdfast_loop_duration_seconds", "Duration of the agent's last completed loop."),
		loopAge:      d("holdfast_loop_heartbeat_age_seconds", "Seconds since the agent's loop last completed (what /liveness judges)."),
		paused:       d("holdfast_paused", "1 if the cluster is paused (maintenance mode, no automatic failover), else 0."),
		pgRunning:    d("holdfast_postgres_running", "1 if this member's PostgreSQL process runs, else 0."),
		pgReady:      d("holdfast_postgres_ready", "1 if this member's PostgreSQL answered the agent's last status query, else 0."),
		streaming:    d("holdfast_streaming", "1 if this member's PostgreSQL streams WAL from the primary, else 0."),
		waiting:      d("holdfast_maintenance_waiting", "1 while node maintenance this member runs is waiting (e.g. a drain of the primary's node with no safe target; holdfast ctl explain says why), else 0."),
	}
}

// Describe implements prometheus.Collector.
func (c *memberCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.role, c.leader, c.timeline, c.walPosition, c.lag, c.replayLag, c.leaseValid,
		c.loopDuration, c.loopAge, c.paused, c.pgRunning, c.pgReady, c.streaming, c.waiting} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *memberCollector) Collect(ch chan<- prometheus.Metric) {
	s, now := c.state(), c.now()
	gauge := func(d *prometheus.Desc, v float64, extra ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{s.Cluster, s.Name}, extra...)...)
	}
	roles := metricRoles()
	if s.Role != "" && !slices.Contains(roles, string(s.Role)) {
		roles = append(roles, string(s.Role))
	}
	for _, r := range roles {
		gauge(c.role, b2f(string(s.Role) == r), r)
	}
	gauge(c.leader, b2f(holdsLease(s, now)))
	gauge(c.timeline, float64(s.Position.Timeline))
	gauge(c.walPosition, float64(s.Position.LSN))
	if lag, ok := ReplicationLag(s, now, LagWrite); ok {
		gauge(c.lag, float64(lag))
	}
	if lag, ok := ReplicationLag(s, now, LagApply); ok {
		gauge(c.replayLag, float64(lag))
	}
	gauge(c.leaseValid, LeaseRemaining(s, now).Seconds())
	gauge(c.loopDuration, s.LastLoopDuration.Seconds())
	if !s.LoopHeartbeat.IsZero() {
		gauge(c.loopAge, max(0, now.Sub(s.LoopHeartbeat).Seconds()))
	}
	gauge(c.paused, b2f(s.Paused))
	gauge(c.waiting, b2f(s.Waiting != ""))
	gauge(c.pgRunning, b2f(s.PGRunning))
	gauge(c.pgReady, b2f(s.PGReady))
	gauge(c.streaming, b2f(s.Streaming))
}

// newRegistry is the server's own registry: the member's metrics plus the
// agent process's Go runtime and process metrics. Each server has its own,
// so two servers in one process (tests, or a future multi-member host)
// never collide, and nothing is registered globally.
func newRegistry(state func() MemberState, now func() time.Time) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		newMemberCollector(state, now),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return reg, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
