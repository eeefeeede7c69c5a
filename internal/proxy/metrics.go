package proxy

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Listener names, as they appear in metric labels and logs.
const (
	ListenerRW = "rw"
	ListenerRO = "ro"
)

// Byte directions of holdfast_proxy_bytes_total.
const (
	DirToBackend = "to_backend" // client → PostgreSQL
	DirToClient  = "to_client"  // PostgreSQL → client
)

// metrics are one proxy's instruments. Counters live here; the current
// connections and the view age are computed at scrape time from the
// proxy's own state (connCollector), so they can never drift from it and
// a backend that lost its last connection disappears instead of lingering
// at zero forever.
type metrics struct {
	routed  *prometheus.CounterVec
	refused *prometheus.CounterVec
	held    prometheus.Counter
	bytes   *prometheus.CounterVec
	// bytesByIndex are bytes' children by listener index (see
	// listenerIndex) and direction (dirToBackend, dirToClient).
	bytesByIndex [2][2]prometheus.Counter
}

// connCollector reports holdfast_proxy_connections and
// holdfast_proxy_view_age_seconds from the proxy's state at scrape time.
type connCollector struct {
	p           *Proxy
	conns, view *prometheus.Desc
}

func (c *connCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.conns
	ch <- c.view
}

func (c *connCollector) Collect(ch chan<- prometheus.Metric) {
	counts, age, loaded := c.p.snapshotForMetrics()
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(n), k.listener, k.backend)
	}
	if loaded {
		ch <- prometheus.MustNewConstMetric(c.view, prometheus.GaugeValue, age.Seconds())
	}
}

// newMetrics registers the proxy's metrics with reg. own says reg is the
// proxy's private registry, which then also gets the Go runtime and
// process collectors (a shared registry is assumed to have its own).
func newMetrics(p *Proxy, reg prometheus.Registerer, own bool) (*metrics, error) {
	m := &metrics{
		routed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_proxy_routed_total",
			Help: "Client connections the proxy connected to a backend, by listener and backend member.",
		}, []string{"listener", "backend"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_proxy_refused_total",
			Help: "Client connections the proxy closed without connecting them to a backend, by listener and reason.",
		}, []string{"listener", "reason"}),
		held: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "holdfast_proxy_held_total",
			Help: "Read-write client connections the proxy held while waiting for a primary it can reach (switchover, failover, leader race).",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_proxy_bytes_total",
			Help: "Bytes the proxy passed through, by listener and direction (to_backend, to_client); published when a connection ends and at least every second while bytes flow.",
		}, []string{"listener", "direction"}),
	}
	for i, l := range []string{ListenerRW, ListenerRO} {
		m.bytesByIndex[i] = [2]prometheus.Counter{
			dirToBackend: m.bytes.WithLabelValues(l, DirToBackend),
			dirToClient:  m.bytes.WithLabelValues(l, DirToClient),
		}
	}
	cs := []prometheus.Collector{m.routed, m.refused, m.held, m.bytes, &connCollector{
		p: p,
		conns: prometheus.NewDesc("holdfast_proxy_connections",
			"Client connections currently connected through the proxy, by listener and backend member.",
			[]string{"listener", "backend"}, nil),
		view: prometheus.NewDesc("holdfast_proxy_view_age_seconds",
			"Seconds since the proxy's last successful read of the store began; absent before the first one.",
			nil, nil),
	}}
	if own {
		cs = append(cs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register proxy metrics: %w", err)
		}
	}
	return m, nil
}

// sessionMetrics are session mode's instruments (registered only in
// ModeSession).
type sessionMetrics struct {
	// migrated counts sessions moved to a new server connection, by
	// listener (ListenerRW: to a new primary; ListenerRO: off a member
	// that left the read-only pool).
	migrated *prometheus.CounterVec
	// unmovable counts sessions closed because they could not be moved,
	// by listener and pgsession.Reason label (restore_failed: the new
	// server refused the replayed state or the client's credentials).
	unmovable *prometheus.CounterVec
	// failed counts requests in flight when the connection to the
	// session's server was lost, answered with an error while their
	// session survived, by listener.
	failed *prometheus.CounterVec
	// held observes how long a client's request waited for a primary.
	held prometheus.Histogram
}

func newSessionMetrics(reg prometheus.Registerer) (*sessionMetrics, error) {
	m := &sessionMetrics{
		migrated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_proxy_sessions_migrated_total",
			Help: "Client sessions (session mode) moved to a new server connection with their settings and prepared statements, by listener: rw to the new primary after a switchover or failover, ro off a member that left the read-only pool.",
		}, []string{"listener"}),
		unmovable: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_proxy_sessions_unmovable_total",
			Help: "Client sessions (session mode) closed because they could not be moved to the next server, by listener (rw, ro) and reason (temp_table, advisory_lock, listen, hold_cursor, transaction, settings, opaque, statement_context, copy, restore_failed).",
		}, []string{"listener", "reason"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "holdfast_proxy_session_requests_failed_total",
			Help: "Requests in flight when the connection to the session's server was lost, answered with an error (SQLSTATE 40003 or 40001) while their session moved on, by listener.",
		}, []string{"listener"}),
		held: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "holdfast_proxy_session_held_seconds",
			Help:    "How long a client's request (session mode) was held at its session's boundary waiting for a primary (switchover, failover).",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	for _, c := range []prometheus.Collector{m.migrated, m.unmovable, m.failed, m.held} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register session metrics: %w", err)
		}
	}
	return m, nil
}
