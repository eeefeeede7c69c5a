package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/config"
	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/pgauth"
	"github.com/holdfast/holdfast/internal/proxy"
)

func proxyCmd() *cobra.Command {
	var tf targetFlags
	var o proxy.Options
	var maxLag, metricsListen, logLevel, authPasswordFile, mockSecretFile, cpuProfile string
	var tlsCertFile, tlsKeyFile, serverSSLMode, serverCAFile string
	var requireTLS, sessionLoop bool
	var readyFD int
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Route client connections: read-write to the primary, read-only across replicas",
		Long: `Run the holdfast proxy: a layer-4 pass-through that follows role changes by
watching the cluster's store. It fails closed: read-write connections go only
to the member holding the leader key, and only while its view is younger than
the lease TTL; connections to a demoted primary are closed; during a planned
switchover or a failover (no primary, or one that does not accept connections)
new connections are held and handed to the new primary (--hold-timeout).
While the store is out of reach, it keeps routing to the primary only as long
as that member confirms over its API that it may still accept writes (its
lease, or the failsafe). A primary that accepts connections but does not answer
them (--startup-timeout) is tried again, and the client refused after 2×TTL.

Routed connections are served by event loops (epoll, one goroutine each;
--loops), which pass bytes unchanged with one read and one write per chunk.

With --mode=session the read-write listener speaks the PostgreSQL protocol
instead: the proxy authenticates clients with SCRAM-SHA-256 against the
verifiers it reads from the primary as the holdfast_auth role
(--auth-password-file; run pgauth's setup SQL once, see docs/architecture.md),
logs in to the primary as the client, and moves idle sessions — settings and
prepared statements included — to the new primary after a switchover or a
failover instead of closing them. The read-only listener then speaks the
protocol too (same authentication and TLS): each session runs on one member
of the read-only pool (--balance, --max-lag, noloadbalance, --ro-fallback),
logged in with default_transaction_read_only=on, and moves with its state to
another member when its own leaves the pool (stopped, promoted, lagging);
a session that cannot move (a WITH HOLD cursor) is then closed with FATAL
57P01 and the reason. Proxies of one cluster should share one
--mock-secret-file. With --tls-cert-file and --tls-key-file it terminates the
clients' TLS (sslmode=require and verify-full clients work; --tls-require
refuses clear-text ones); without them it answers SSLRequest 'N' like a
server with ssl = off. Its connections to the members — the auth query,
which carries the users' verifiers, included — follow --server-sslmode
(default prefer: TLS whenever the member has ssl = on; use verify-full with
--server-ca-file where the network is not trusted). For a local cluster
(--dir), the mode not given as a flag and the auth role's password come from
the cluster (holdfast up --proxy-mode, postgresql.proxy_auth).

--pool-mode=transaction (session mode only) shares server connections
between clients one transaction at a time: a client holds a server
connection from the start of a transaction (or of a statement or
extended-protocol batch outside one) until the server is idle again; then
the connection returns to a pool per user, database and startup parameters
(at most --pool-size connections; a transaction waits at most
--pool-timeout for one, then its session is closed with FATAL 53300). A
connection idle in its pool for --pool-idle-timeout, or idle and older than
--pool-lifetime, is closed (the next transaction that needs one logs in
again).
Before a client's transaction runs on a connection another client used,
the proxy resets it (DISCARD ALL) and replays the client's settings and
prepared statements there, so each client sees its own session. A client
that creates state which cannot be replayed — a temporary table, a session
advisory lock, LISTEN, a WITH HOLD cursor — keeps its server connection for
the rest of its session (pinned). At a switchover or failover, idle pooled
connections to the old primary are closed and clients between
transactions go on with new ones on the new primary.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// A local cluster's layout (holdfast up) gives the mode, the
			// listeners and the auth role's password not given as flags.
			// Its error waits until the flags are checked: a wrong flag is
			// the first thing to say.
			t, l, targetErr := tf.targetAndLayout()
			var err error
			if l != nil && !cmd.Flags().Changed("mode") && l.ProxyMode != "" {
				o.Mode = l.ProxyMode
			}
			if o.Mode != proxy.ModeSession {
				for _, name := range []string{"pool-mode", "pool-size", "pool-timeout", "pool-idle-timeout", "pool-lifetime"} {
					if cmd.Flags().Changed(name) {
						return fmt.Errorf("--%s needs --mode=session: in passthrough mode the proxy does not see transactions, so it cannot pool server connections", name)
					}
				}
				if cmd.Flags().Changed("session-loop") {
					return errors.New("--session-loop needs --mode=session: passthrough mode always copies bytes on its event loops")
				}
				for _, name := range sessionOnlyFlags() {
					if cmd.Flags().Changed(name) {
						return fmt.Errorf("--%s needs --mode=session: in passthrough mode TLS and authentication are end to end between the client and PostgreSQL", name)
					}
				}
			}
			if m := o.Session.PoolMode; m != proxy.PoolSession && m != proxy.PoolTransaction {
				return fmt.Errorf("--pool-mode %q: want %s or %s", m, proxy.PoolSession, proxy.PoolTransaction)
			}
			if o.Session.PoolSize < 1 || o.Session.PoolTimeout <= 0 {
				return fmt.Errorf("--pool-size %d, --pool-timeout %s: both must be positive", o.Session.PoolSize, o.Session.PoolTimeout)
			}
			if o.Session.PoolIdleTimeout <= 0 || o.Session.PoolLifetime <= 0 {
				return fmt.Errorf("--pool-idle-timeout %s, --pool-lifetime %s: both must be positive", o.Session.PoolIdleTimeout, o.Session.PoolLifetime)
			}
			if targetErr != nil {
				return targetErr
			}
			if l != nil {
				if !cmd.Flags().Changed("rw-listen") && l.ProxyRW() != "" {
					o.RWListen = l.ProxyRW()
				}
				if !cmd.Flags().Changed("ro-listen") && l.ProxyRO() != "" {
					o.ROListen = l.ProxyRO()
				}
			}
			if o.Mode == proxy.ModeSession {
				switch {
				case authPasswordFile != "":
					b, err := os.ReadFile(authPasswordFile)
					if err != nil {
						return fmt.Errorf("--auth-password-file: %w", err)
					}
					o.Session.AuthPassword = strings.TrimRight(string(b), "\r\n")
				case l != nil && l.ProxyAuthPassword != "":
					// The local cluster's members keep the auth role with
					// this password (postgresql.proxy_auth).
					o.Session.AuthPassword = l.ProxyAuthPassword
				default:
					return errors.New("--mode=session needs --auth-password-file (the password of the auth role; a cluster made by holdfast up before session mode existed has none: give one after running pgauth's setup SQL)")
				}
				o.Session.TLSCertFile, o.Session.TLSKeyFile, o.Session.RequireTLS = tlsCertFile, tlsKeyFile, requireTLS
				o.SessionLoopOff = !sessionLoop
				o.Session.ServerSSLMode, o.Session.ServerCAFile = serverSSLMode, serverCAFile
				if mockSecretFile != "" {
					if o.Session.MockSecret, err = os.ReadFile(mockSecretFile); err != nil {
						return fmt.Errorf("--mock-secret-file: %w", err)
					}
				}
			}
			if o.MaxReplicaLag, err = api.ParseSize(maxLag); err != nil {
				return fmt.Errorf("--max-lag: %w", err)
			}
			log := newLogger(cmd.ErrOrStderr(), config.Log{Level: logLevel, Format: "text"}).With("component", "proxy")
			if cpuProfile != "" {
				stop, err := startCPUProfile(cpuProfile)
				if err != nil {
					return err
				}
				defer stop()
			}
			ctx, cancel := signalContext()
			defer cancel()
			st, err := t.OpenStore(ctx, "proxy", log)
			if err != nil {
				return err
			}
			defer st.Close()
			if o.TTL == 0 {
				o.TTL = clusterTTL(ctx, st, log)
			}
			o.Source, o.Logger = st, log
			// While the store is out of reach the proxy asks the primary
			// itself (GET /primary) whether it may still accept writes.
			o.Confirm = &proxy.APIConfirmer{Client: t.API}
			p, err := proxy.New(o)
			if err != nil {
				return err
			}
			if metricsListen != "" {
				ln, err := net.Listen("tcp", metricsListen)
				if err != nil {
					return fmt.Errorf("--metrics-listen %s: %w", metricsListen, err)
				}
				srv := &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 5 * time.Second}
				go srv.Serve(ln)
				defer srv.Close()
			}
			log.Info("proxy running", "rw", p.RWAddr(), "ro", p.ROAddr(), "ttl", o.TTL, "cluster", t.Cluster)
			if readyFD > 0 {
				// `holdfast up` waits for this word on the pipe: the
				// listeners are bound (proxy.New binds them).
				f := os.NewFile(uintptr(readyFD), "ready")
				_, err := fmt.Fprintln(f, local.ReadyWord)
				f.Close()
				if err != nil {
					return fmt.Errorf("--ready-fd %d: report ready: %w", readyFD, err)
				}
			}
			if err := p.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
	}
	tf.register(cmd)
	f := cmd.Flags()
	f.StringVar(&o.RWListen, "rw-listen", "127.0.0.1:5000", "read-write listener (to the primary)")
	f.StringVar(&o.ROListen, "ro-listen", "127.0.0.1:5001", "read-only listener (to replicas); empty disables it")
	f.StringVar(&maxLag, "max-lag", "1MB", "most WAL a replica's replay may lag behind the primary and still get read-only connections")
	f.BoolVar(&o.ROFallbackToPrimary, "ro-fallback", true, "send read-only connections to the primary when no replica qualifies")
	f.StringVar(&o.Balance, "balance", proxy.BalanceRoundRobin, "read-only balancing: round-robin or least-connections")
	f.DurationVar(&o.HoldTimeout, "hold-timeout", proxy.DefaultHoldTimeout, "how long to hold a new read-write connection while there is no primary it can reach (switchover, failover)")
	f.DurationVar(&o.StartupTimeout, "startup-timeout", proxy.DefaultStartupTimeout, "how long a backend may take to answer a client's first bytes before the connection is tried again elsewhere (or, read-write, on the primary again)")
	f.DurationVar(&o.TTL, "ttl", 0, "view staleness bound (default: the cluster's lease TTL)")
	f.IntVar(&o.Loops, "loops", 0, "event loops copying the bytes, at most one core each (default: one per two of GOMAXPROCS, at least one)")
	f.StringVar(&o.Mode, "mode", proxy.ModePassThrough, "mode of both listeners: passthrough (bytes unparsed) or session (speaks the protocol, moves sessions to a new primary or off a replica that leaves the read-only pool)")
	f.StringVar(&authPasswordFile, "auth-password-file", "", "session mode: file holding the auth role's password")
	f.StringVar(&o.Session.AuthUser, "auth-user", pgauth.AuthRole, "session mode: the role the auth query runs as")
	f.StringVar(&o.Session.AuthDatabase, "auth-database", proxy.DefaultAuthDatabase, "session mode: the database the auth query connects to")
	f.StringVar(&mockSecretFile, "mock-secret-file", "", "session mode: file holding the secret (at least 16 bytes) that keys the answers for users that do not exist; share one among a cluster's proxies (default: random per process)")
	f.StringVar(&tlsCertFile, "tls-cert-file", "", "session mode: certificate (PEM, with any intermediates) to terminate clients' TLS with; with --tls-key-file the proxy answers SSLRequest 'S'")
	f.StringVar(&tlsKeyFile, "tls-key-file", "", "session mode: private key (PEM) of --tls-cert-file")
	f.BoolVar(&requireTLS, "tls-require", false, "session mode: refuse clients that do not use TLS (FATAL 28000); needs --tls-cert-file and --tls-key-file")
	f.StringVar(&serverSSLMode, "server-sslmode", proxy.DefaultServerSSLMode, "session mode: TLS to the members (logins, cancel requests, the auth query): disable, prefer, require, verify-ca or verify-full, as libpq's sslmode")
	f.StringVar(&serverCAFile, "server-ca-file", "", "session mode: CA certificates (PEM) that sign the members' certificates, for --server-sslmode require, verify-ca or verify-full (default: the system's)")
	f.BoolVar(&sessionLoop, "session-loop", true, "session mode: serve steady sessions (between transactions, plain TCP; transaction-pooled ones with their pooled server connections) on the event loops; false keeps every session on goroutines, at about twice the CPU per transaction")
	f.StringVar(&o.Session.PoolMode, "pool-mode", proxy.PoolSession, "session mode: session (a server connection per client) or transaction (server connections shared between clients one transaction at a time)")
	f.IntVar(&o.Session.PoolSize, "pool-size", proxy.DefaultPoolSize, "session mode, --pool-mode=transaction: most server connections per pool (user, database and startup parameters)")
	f.DurationVar(&o.Session.PoolTimeout, "pool-timeout", proxy.DefaultPoolTimeout, "session mode, --pool-mode=transaction: how long a transaction waits for a server connection of its pool before its session is closed (FATAL 53300)")
	f.DurationVar(&o.Session.PoolIdleTimeout, "pool-idle-timeout", proxy.DefaultPoolIdleTimeout, "session mode, --pool-mode=transaction: a server connection idle in its pool this long is closed")
	f.DurationVar(&o.Session.PoolLifetime, "pool-lifetime", proxy.DefaultPoolLifetime, "session mode, --pool-mode=transaction: a server connection older than this (less up to a tenth, at random) is closed once it is idle")
	f.StringVar(&metricsListen, "metrics-listen", "", "serve Prometheus metrics on this address")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.IntVar(&readyFD, "ready-fd", 0, "write \"ready\" to this inherited descriptor once the listeners are bound (for holdfast up)")
	_ = f.MarkHidden("ready-fd")
	f.StringVar(&cpuProfile, "cpu-profile", "", "write a CPU profile (go tool pprof) of the whole run to this file when the proxy stops (for benchmarks)")
	_ = f.MarkHidden("cpu-profile")
	return cmd
}

// sessionOnlyFlags are the proxy's flags that only --mode=session uses;
// given in passthrough mode they are an error rather than ignored.
func sessionOnlyFlags() []string {
	return []string{"tls-cert-file", "tls-key-file", "tls-require", "server-sslmode", "server-ca-file"}
}

// clusterTTL reads the cluster's lease TTL: a view older than it may name a
// leader that has been replaced.
func clusterTTL(ctx context.Context, st ctl.Source, log *slog.Logger) time.Duration {
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if v, err := st.Load(c); err == nil && v.Config != nil && v.Config.TTL > 0 {
		return v.Config.TTL
	}
	d := config.Defaults().TTL.D()
	log.Warn("cluster TTL unknown (store unreachable or not bootstrapped); using the default", "ttl", d)
	return d
}

// startCPUProfile starts a CPU profile written to path; stop ends it and
// closes the file (benchmarks profile the proxy this way: it serves no
// pprof endpoint).
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpu-profile: start: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
