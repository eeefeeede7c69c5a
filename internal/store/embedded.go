package store

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
)

// Embedded-server settings. Heartbeat and election are etcd's defaults,
// spelled out because lease expiry and failover timing depend on them: a
// lost raft leader is replaced after one to two election timeouts (the
// primary's lease renewals wait meanwhile, so it must stay well below
// TTL − fence margin), and the new leader then extends every lease by a
// full TTL.
//
// A 200ms heartbeat (the most etcd allows for a 1s election timeout) would
// halve an idle member's raft traffic, but with it the two members left
// when the raft leader's agent froze (SIGSTOP) had no leader for about 10s
// and the primary fenced (test/e2e TestFrozenReplicaAgentLeavesPrimaryLeased);
// with 100ms a new leader serves within the primary's lease.
const (
	embedHeartbeatMs        = 100
	embedElectionMs         = 1000
	embedQuotaBackendBytes  = 2 << 30 // 2 GiB
	embedCompactionMode     = "periodic"
	embedCompactionRetain   = "1h"
	embedCloseGrace         = 5 * time.Second
	embedHardStopWait       = 3 * time.Second
	embedLogFilePermissions = 0o600
)

// EmbeddedTiming returns the embedded member's raft heartbeat interval and
// election timeout, e.g. for a benchmark that runs a stand-alone etcd as
// the embedded one runs.
func EmbeddedTiming() (heartbeat, election time.Duration) {
	return embedHeartbeatMs * time.Millisecond, embedElectionMs * time.Millisecond
}

// EmbeddedOptions configures StartEmbedded. Addresses are host:port.
type EmbeddedOptions struct {
	Name, Dir                      string
	ListenPeer, ListenClient       string
	AdvertisePeer, AdvertiseClient string
	Peers                          map[string]string // name -> http://host:port, the initial cluster, must include Name
	ClusterToken                   string
	LogFile                        string // etcd's own log (level warn); empty discards it
}

// Embedded is an etcd member running inside the agent process.
type Embedded struct {
	etcd    *embed.Etcd
	logFile *os.File
	url     string

	mu    sync.Mutex
	grpcs []*grpc.Server // client-facing gRPC servers, captured for Close

	closeOnce sync.Once
	closeErr  error
}

// StartEmbedded starts an etcd member with its data in o.Dir. A directory
// that already holds member data restarts that member and the initial
// cluster is ignored; otherwise the member is created as part of a new
// cluster of o.Peers.
//
// It returns as soon as the listeners are up and does not wait for the
// member to join a quorum: in a full-cluster restart members come up in any
// order, and waiting would deadlock agents that start one at a time. Use
// Ready to learn when the member can serve requests. It fails at once, with
// the address in the error, when a port is taken.
//
// etcd registers its Prometheus metrics in package init functions, once
// per process, so several Embedded may run in one process (tests do).
func StartEmbedded(o EmbeddedOptions) (*Embedded, error) {
	cfg, err := embedConfig(o)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd %q: %w", o.Name, err)
	}
	// Fail fast and clearly on a taken port; etcd would report the same
	// from deep inside its listener set-up.
	for _, a := range []string{o.ListenPeer, o.ListenClient} {
		l, err := net.Listen("tcp", a)
		if err != nil {
			return nil, fmt.Errorf("start embedded etcd %q: address %s is not available: %w", o.Name, a, err)
		}
		l.Close()
	}
	em := &Embedded{url: "http://" + o.AdvertiseClient}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("start embedded etcd %q: %w", o.Name, err)
	}
	lg, f, err := embedLogger(o.LogFile)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd %q: %w", o.Name, err)
	}
	em.logFile = f
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	cfg.ServiceRegister = func(s *grpc.Server) {
		em.mu.Lock()
		em.grpcs = append(em.grpcs, s)
		em.mu.Unlock()
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		if f != nil {
			f.Close()
		}
		return nil, fmt.Errorf("start embedded etcd %q: %w", o.Name, err)
	}
	em.etcd = e
	return em, nil
}

func embedConfig(o EmbeddedOptions) (*embed.Config, error) {
	if o.Name == "" || o.Dir == "" {
		return nil, errors.New("name and data directory are required")
	}
	if _, ok := o.Peers[o.Name]; !ok {
		return nil, fmt.Errorf("initial cluster %v does not include this member", o.Peers)
	}
	urlOf := func(what, hostport string) (url.URL, error) {
		if _, _, err := net.SplitHostPort(hostport); err != nil {
			return url.URL{}, fmt.Errorf("%s %q: want host:port: %w", what, hostport, err)
		}
		return url.URL{Scheme: "http", Host: hostport}, nil
	}
	lp, err := urlOf("listen peer address", o.ListenPeer)
	if err != nil {
		return nil, err
	}
	lc, err := urlOf("listen client address", o.ListenClient)
	if err != nil {
		return nil, err
	}
	ap, err := urlOf("advertised peer address", o.AdvertisePeer)
	if err != nil {
		return nil, err
	}
	ac, err := urlOf("advertised client address", o.AdvertiseClient)
	if err != nil {
		return nil, err
	}
	if want := o.Peers[o.Name]; strings.TrimRight(want, "/") != ap.String() {
		return nil, fmt.Errorf("initial cluster gives this member %s but it advertises %s", want, ap.String())
	}
	names := make([]string, 0, len(o.Peers))
	for n := range o.Peers {
		names = append(names, n)
	}
	slices.Sort(names)
	initial := make([]string, 0, len(names))
	for _, n := range names {
		initial = append(initial, n+"="+o.Peers[n])
	}

	cfg := embed.NewConfig()
	cfg.Name = o.Name
	cfg.Dir = o.Dir
	cfg.ListenPeerUrls = []url.URL{lp}
	cfg.ListenClientUrls = []url.URL{lc}
	cfg.AdvertisePeerUrls = []url.URL{ap}
	cfg.AdvertiseClientUrls = []url.URL{ac}
	cfg.InitialCluster = strings.Join(initial, ",")
	cfg.InitialClusterToken = o.ClusterToken
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.TickMs = embedHeartbeatMs
	cfg.ElectionMs = embedElectionMs
	cfg.AutoCompactionMode = embedCompactionMode
	cfg.AutoCompactionRetention = embedCompactionRetain
	cfg.QuotaBackendBytes = embedQuotaBackendBytes
	cfg.MaxRequestBytes = embed.DefaultMaxRequestBytes
	cfg.Logger = "zap"
	cfg.LogLevel = "warn"
	return cfg, nil
}

// embedLogger builds etcd's zap logger: warn and above to path, or nothing.
// etcd calls Fatal on unrecoverable errors (corrupt data, a failed WAL
// write), which exits the process; the hook prints the reason to stderr
// first so it is not lost when the log is discarded.
func embedLogger(path string) (*zap.Logger, *os.File, error) {
	hook := zap.WithFatalHook(fatalHook{})
	if path == "" {
		return zap.New(zapcore.NewNopCore(), hook), nil, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, embedLogFilePermissions)
	if err != nil {
		return nil, nil, fmt.Errorf("open etcd log: %w", err)
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.Lock(f), zapcore.WarnLevel)
	return zap.New(core, hook), f, nil
}

type fatalHook struct{}

func (fatalHook) OnWrite(ce *zapcore.CheckedEntry, fields []zapcore.Field) {
	var b strings.Builder
	for _, f := range fields {
		if f.Type == zapcore.ErrorType {
			if err, ok := f.Interface.(error); ok {
				fmt.Fprintf(&b, " %s=%q", f.Key, err.Error())
			}
		} else if f.String != "" {
			fmt.Fprintf(&b, " %s=%q", f.Key, f.String)
		}
	}
	fmt.Fprintf(os.Stderr, "embedded etcd: fatal: %s%s\n", ce.Message, b.String())
	os.Exit(1)
}

// Ready is closed once the member has joined a quorum and can serve
// requests. It may never close (the other members never come up).
func (m *Embedded) Ready() <-chan struct{} { return m.etcd.Server.ReadyNotify() }

// Stopped is closed when the etcd server has stopped, by Close or on its own
// (for example after being removed from the cluster).
func (m *Embedded) Stopped() <-chan struct{} { return m.etcd.Server.StopNotify() }

// ClientURL is the advertised client URL, "http://host:port".
func (m *Embedded) ClientURL() string { return m.url }

// Close stops the member. If it is the raft leader it first hands
// leadership to another member (so the cluster does not wait an election
// timeout), then cuts client connections at once — a graceful gRPC stop
// would wait up to etcd's request timeout (7s) for watch and keepalive
// streams that never end on their own — and stops the server. A member
// that never became ready is stopped hard at once. If stopping has not
// finished within 5s, the server is stopped hard. It typically takes about
// 1s (etcd waits up to 1s for peer connections to drain). Safe to call more
// than once; later calls return the first result.
func (m *Embedded) Close() error {
	m.closeOnce.Do(func() { m.closeErr = m.close() })
	return m.closeErr
}

func (m *Embedded) close() error {
	lg := m.etcd.GetLogger()
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-m.etcd.Server.ReadyNotify():
		default:
			// A member that never joined a quorum has nothing to hand
			// over, and etcd's Close would block forever waiting for its
			// client servers, which only start once the member is ready.
			m.etcd.Server.HardStop()
		}
		if err := m.etcd.Server.TryTransferLeadershipOnShutdown(); err != nil {
			lg.Warn("leadership transfer before stop failed", zap.Error(err))
		}
		m.mu.Lock()
		gs := slices.Clone(m.grpcs)
		m.mu.Unlock()
		for _, s := range gs {
			s.Stop()
		}
		m.etcd.Close()
	}()
	var err error
	select {
	case <-done:
	case <-time.After(embedCloseGrace):
		lg.Warn("embedded etcd did not stop in time; stopping hard")
		m.etcd.Server.HardStop()
		select {
		case <-done:
		case <-time.After(embedHardStopWait):
			err = errors.New("stop embedded etcd: did not stop after a hard stop")
		}
	}
	if m.logFile != nil && err == nil {
		_ = lg.Sync()
		if cerr := m.logFile.Close(); cerr != nil {
			err = fmt.Errorf("close etcd log: %w", cerr)
		}
	}
	return err
}
