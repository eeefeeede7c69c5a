package proxy

// Session mode's authentication: its options, the auth-query connections
// to the primary, and logging in to a member as the client.

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/holdfast/holdfast/internal/pgauth"
)

// Read-write modes (Options.Mode).
const (
	// ModePassThrough passes read-write connections' bytes unparsed (the
	// default): every client, authentication method and TLS setting works,
	// and a connection to a primary that is no longer the primary is
	// closed.
	ModePassThrough = "passthrough"
	// ModeSession terminates the PostgreSQL protocol on both listeners:
	// the proxy authenticates clients with SCRAM-SHA-256 (verifiers read
	// from the member the session starts on), logs in to that member as
	// the client, tracks each session's state and moves idle sessions to
	// the new primary after a switchover or failover, or (read-only) off
	// a replica that leaves the read-only pool (protosession.go,
	// protoplace.go).
	ModeSession = "session"
)

// Defaults of SessionOptions.
const (
	// DefaultAuthDatabase is the database the auth query connects to.
	DefaultAuthDatabase = "postgres"
	// authPoolSize bounds the auth-query connections to the primary, open
	// at once or kept idle: each client's startup packet runs an auth query
	// before the client proves anything, so a flood of unauthenticated
	// clients must not open connections without limit (and exhaust the
	// primary's max_connections). A lookup waits for a free one at most
	// authQueryTimeout.
	authPoolSize = 4
	// mockSecretLen is the length of a mock secret generated per process.
	mockSecretLen = 32
)

// Timeouts of session mode.
const (
	// clientStartupTimeout bounds how long a client may take to send its
	// startup packet (after any SSLRequest), and then the SCRAM exchange
	// (PostgreSQL's authentication_timeout is a minute; a real client needs
	// milliseconds).
	clientStartupTimeout = 30 * time.Second
	// backendLoginTimeout bounds logging in to a member and, when moving a
	// session, replaying its state there.
	backendLoginTimeout = 10 * time.Second
	// authQueryTimeout bounds one auth query, connecting included.
	authQueryTimeout = 5 * time.Second
	// cancelTimeout bounds passing a cancel request on to a member.
	cancelTimeout = 5 * time.Second
	// stopWriteTimeout bounds a session's last writes: its closing error
	// to the client, a Terminate to a server it leaves, and any write
	// still blocked when the proxy stops.
	stopWriteTimeout = time.Second
)

// SessionOptions configure ModeSession.
type SessionOptions struct {
	// AuthUser is the role the auth query runs as (default
	// pgauth.AuthRole, holdfast_auth; pgauth.SetupSQL creates it).
	AuthUser string
	// AuthPassword is AuthUser's password. Required.
	AuthPassword string
	// AuthDatabase is the database the auth query connects to (default
	// DefaultAuthDatabase); pgauth.SetupSQL must have run in it.
	AuthDatabase string
	// MockSecret keys the mock verifiers of users that do not exist (see
	// pgauth.MockVerifier): every proxy of a cluster should use the same,
	// so that an unknown user gets the same salt from each, as from one
	// server. Nil: a random secret for this process (logged as a warning).
	MockSecret []byte
	// MockIterations is the mock verifiers' iteration count (0:
	// pgauth.DefaultIterations).
	MockIterations int
	// Rand supplies nonces, mock secrets and the clients' cancel keys
	// (default crypto/rand.Reader).
	Rand io.Reader

	// TLSCertFile and TLSKeyFile (PEM: the certificate, with any
	// intermediates after it, and its private key) make the proxy answer
	// a client's SSLRequest with 'S' and terminate its TLS; set both or
	// neither. Without them an SSLRequest is answered 'N', as by a
	// PostgreSQL with ssl = off: sslmode=prefer clients go on in clear,
	// sslmode=require ones give up. They are loaded at New, and loaded
	// again when they change (looked at on a handshake, at most every
	// certfile.CheckInterval).
	TLSCertFile, TLSKeyFile string
	// RequireTLS refuses a client whose startup packet did not come over
	// TLS (FATAL 28000, errClientTLSRequired), as a pg_hba.conf of
	// hostssl lines only would; cancel requests are still taken in clear
	// (libpq sends them so). Requires TLSCertFile and TLSKeyFile.
	RequireTLS bool
	// ServerSSLMode is how the proxy connects to members — its logins as
	// the client, cancel requests and the auth query, which carries the
	// users' verifiers: SSLDisable, SSLPrefer (the default,
	// DefaultServerSSLMode), SSLRequire, SSLVerifyCA or SSLVerifyFull,
	// with libpq's meanings.
	ServerSSLMode string
	// ServerCAFile (PEM) holds the CA certificates the members'
	// certificates are checked against (SSLRequire, SSLVerifyCA,
	// SSLVerifyFull); empty: the system's roots.
	ServerCAFile string

	// PoolMode is PoolSession (the default: a server connection per
	// client session) or PoolTransaction (server connections shared
	// between sessions one transaction at a time; see pool.go). Only
	// valid in session mode.
	PoolMode string
	// PoolSize is the most server connections per pool under
	// PoolTransaction (0: DefaultPoolSize); a pool is a user, database
	// and set of other startup parameters.
	PoolSize int
	// PoolTimeout bounds how long a transaction waits for a server
	// connection of its pool (0: DefaultPoolTimeout); then its session is
	// closed with FATAL 53300.
	PoolTimeout time.Duration
	// PoolIdleTimeout: a server connection idle in its pool this long is
	// closed (0: DefaultPoolIdleTimeout), so that the connections a burst
	// opened go back to the server once it has passed.
	PoolIdleTimeout time.Duration
	// PoolLifetime: a server connection older than this is closed once it
	// is idle (0: DefaultPoolLifetime), so that no server backend lives
	// for ever (its caches only grow) and connections follow a changed
	// server setting in time.
	PoolLifetime time.Duration
}

// sessionTLS is session mode's TLS, loaded from SessionOptions.
type sessionTLS struct {
	client *tls.Config // nil: no TLS to clients
	policy clientTLSPolicy
	server serverTLS
}

// loadTLS checks o's TLS settings and loads their files.
func (o *SessionOptions) loadTLS(log *slog.Logger) (sessionTLS, error) {
	client, err := loadClientTLS(o.TLSCertFile, o.TLSKeyFile, log)
	if err != nil {
		return sessionTLS{}, err
	}
	if o.RequireTLS && client == nil {
		return sessionTLS{}, errors.New("session mode: requiring TLS from clients needs a certificate and key to offer it (--tls-cert-file, --tls-key-file)")
	}
	server, err := newServerTLS(o.ServerSSLMode, o.ServerCAFile)
	if err != nil {
		return sessionTLS{}, err
	}
	return sessionTLS{client: client, policy: clientTLSPolicy{offer: client != nil, require: o.RequireTLS}, server: server}, nil
}

// setDefaults validates o and fills in its defaults.
func (o *SessionOptions) setDefaults(log *slog.Logger) error {
	if o.AuthPassword == "" {
		return errors.New("session mode: the auth role's password is required")
	}
	if o.AuthUser == "" {
		o.AuthUser = pgauth.AuthRole
	}
	if o.AuthDatabase == "" {
		o.AuthDatabase = DefaultAuthDatabase
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.MockSecret == nil {
		o.MockSecret = make([]byte, mockSecretLen)
		if _, err := io.ReadFull(o.Rand, o.MockSecret); err != nil {
			return fmt.Errorf("session mode: generate a mock secret: %w", err)
		}
		log.Warn("session mode: no mock secret configured; using a random one for this process. Proxies of one cluster should share one (--mock-secret-file), so that a user that does not exist looks the same through each")
	}
	if len(o.MockSecret) < pgauth.MinMockSecretLen {
		return fmt.Errorf("session mode: the mock secret has %d bytes, need at least %d", len(o.MockSecret), pgauth.MinMockSecretLen)
	}
	return nil
}

// authPool keeps a few connections to the primary, logged in as the auth
// role, for the auth query. Its connections all lead to one target: when
// the caller asks for another (the primary changed), the old ones are
// closed. Safe for concurrent use.
type authPool struct {
	o     SessionOptions
	tls   serverTLS
	slots chan struct{} // one per lookup running (capacity authPoolSize)
	mu    sync.Mutex
	t     Target
	idle  []*pgx.Conn
}

func newAuthPool(o SessionOptions, st serverTLS) *authPool {
	return &authPool{o: o, tls: st, slots: make(chan struct{}, authPoolSize)}
}

// lookup runs the auth query for user on t, which the caller has just
// been told is the primary. An error means the query could not run (the
// connection, the auth role's password, SetupSQL not run): the client
// must be told nothing about the user.
func (a *authPool) lookup(ctx context.Context, t Target, user string) (pgauth.Lookup, error) {
	ctx, cancel := context.WithTimeout(ctx, authQueryTimeout)
	defer cancel()
	select {
	case a.slots <- struct{}{}:
		defer func() { <-a.slots }()
	case <-ctx.Done():
		return pgauth.Lookup{}, fmt.Errorf("auth query on %s: wait for one of %d auth connections: %w", t.Name, authPoolSize, context.Cause(ctx))
	}
	c, err := a.acquire(ctx, t)
	if err != nil {
		return pgauth.Lookup{}, err
	}
	l, err := pgauth.FetchVerifier(ctx, c, user)
	a.release(t, c, err == nil)
	return l, err
}

func (a *authPool) acquire(ctx context.Context, t Target) (*pgx.Conn, error) {
	a.mu.Lock()
	var stale []*pgx.Conn
	if a.t != t {
		stale, a.idle, a.t = a.idle, nil, t
	}
	var c *pgx.Conn
	if n := len(a.idle); n > 0 {
		c, a.idle = a.idle[n-1], a.idle[:n-1]
	}
	a.mu.Unlock()
	for _, s := range stale {
		_ = s.Close(context.Background())
	}
	if c != nil {
		return c, nil
	}
	host, port, err := net.SplitHostPort(t.Addr)
	if err != nil {
		return nil, fmt.Errorf("auth query on %s: address %q: %w", t.Name, t.Addr, err)
	}
	u := url.URL{Scheme: "postgres", User: url.UserPassword(a.o.AuthUser, a.o.AuthPassword), Host: net.JoinHostPort(host, port),
		Path: "/" + a.o.AuthDatabase, RawQuery: "sslmode=disable&application_name=holdfast-proxy-auth"}
	cfg, err := pgx.ParseConfig(u.String())
	if err != nil {
		return nil, fmt.Errorf("auth query on %s: connection settings: %w", t.Name, err)
	}
	// The server sslmode, applied as libpq would: the verifiers this
	// connection carries cross the network encrypted whenever the mode
	// asks for TLS, and with SSLPrefer whenever the member offers it.
	cfg.TLSConfig = a.tls.config(host)
	if a.tls.mode == SSLPrefer {
		cfg.Fallbacks = append(cfg.Fallbacks, &pgconn.FallbackConfig{Host: cfg.Host, Port: cfg.Port})
	}
	c, err = pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("auth query on %s: connect as %s: %w", t.Name, a.o.AuthUser, err)
	}
	return c, nil
}

// release returns c to the pool when it is healthy and still leads to the
// pool's target; otherwise it is closed.
func (a *authPool) release(t Target, c *pgx.Conn, ok bool) {
	a.mu.Lock()
	keep := ok && a.t == t && len(a.idle) < authPoolSize && !c.IsClosed()
	if keep {
		a.idle = append(a.idle, c)
	}
	a.mu.Unlock()
	if !keep {
		_ = c.Close(context.Background())
	}
}

// close closes the idle connections.
func (a *authPool) close() {
	a.mu.Lock()
	idle := a.idle
	a.idle = nil
	a.mu.Unlock()
	for _, c := range idle {
		_ = c.Close(context.Background())
	}
}

// backendConn is one server connection of a protocol session, logged in
// as the client.
type backendConn struct {
	t    Target
	conn net.Conn // under lmu once published (the loop makes it again when it hands the session back)
	out  *outbox  // fe's writer: started when the session takes the connection (publish)
	fe   *pgproto3.Frontend
	src  *frameSource  // fe's reader: see frameSource
	ack  chan struct{} // the reader's acknowledgements (capacity 1), kept across hand-overs to the loop
	past bool          // the read deadline is in the past, set by the session's parking (under the session's lock)

	// lmu guards conn, the loop fields and released between the session
	// (which hands the connection to its loop and back), the loop and a
	// cut from another goroutine (release): a cut shuts the loop's socket
	// down, so that the loop sees the connection end at once, and the
	// descriptor is closed by whoever takes it from the loop, never under
	// the loop: its owner session (leaveLoop), a session that takes it
	// idle from its pool (fromLoop), or, for a pooled connection let go
	// while idle, the loop itself (sessLoop.serveIdle) once the release
	// is done — or the release, when the loop stopped first.
	lmu      sync.Mutex
	lfd      int           // the loop's duplicate of the socket; -1: none (goroutine mode)
	lp       *sessLoop     // the loop lfd is registered with (lfd >= 0; nil: that loop stopped, and release closes lfd)
	ltok     uint64        // lfd's epoll token there
	lowner   *protoSession // the session the loop serves lfd for; nil: a pooled connection idle in its pool (or let go)
	released bool
	key      *pgproto3.BackendKeyData // the server's cancel key (nil until known)
	gen      int                      // the session's count of backend connections
	stop     chan struct{}            // closed when the session lets this connection go
	once     sync.Once
	pl       *poolLink // transaction pooling: its pool (nil otherwise; see pool.go)

	// fallback: a read-only session's connection to the primary by
	// fallback (set by publish; see placement.home).
	fallback bool
}

// release ends the connection: its reader and writer stop, and the server
// sees the connection close (when graceful, after what was queued for it
// and a Terminate, within stopWriteTimeout). Only the session goroutine
// releases gracefully; a cut (not graceful) may come from any goroutine
// and does not wait.
func (b *backendConn) release(graceful bool) {
	b.once.Do(func() {
		close(b.stop)
		conn := b.netConn()
		if graceful {
			_ = conn.SetWriteDeadline(time.Now().Add(stopWriteTimeout))
			b.fe.Send(&pgproto3.Terminate{})
			_ = b.fe.Flush()
		}
		b.out.close(graceful)
		_ = conn.Close()
		b.lmu.Lock()
		b.released = true
		switch {
		case b.lfd >= 0 && b.lp == nil:
			// Its loop stopped while it was idle there (sessLoop.stop):
			// nobody else closes the descriptor.
			_ = syscall.Close(b.lfd)
			b.lfd = -1
		case b.lfd >= 0:
			// The loop's duplicate keeps the socket open: shut it down so
			// that the server and the loop see the end now.
			_ = syscall.Shutdown(b.lfd, syscall.SHUT_RDWR)
		}
		b.lmu.Unlock()
		if b.pl != nil {
			b.pl.cp.closed(b)
		}
	})
}

// cut reports whether the connection was released (by the session, or
// cut by another goroutine): nothing may be sent on it any more.
func (b *backendConn) cut() bool {
	select {
	case <-b.stop:
		return true
	default:
		return false
	}
}

// netConn is the connection's net.Conn now (after a stay in the loop, a
// new one over the same socket).
func (b *backendConn) netConn() net.Conn {
	b.lmu.Lock()
	defer b.lmu.Unlock()
	return b.conn
}

// errLoginRetry wraps a login failure another attempt may not have: the
// member did not take the connection, broke it, or said it cannot take
// one now (starting up, shutting down, too many connections).
var errLoginRetry = errors.New("the member did not take the connection")

// login dials t and logs in as the client with its credentials, sending
// startup as the startup parameters. It returns once AuthenticationOk has
// arrived: the caller reads the rest of the startup through the returned
// connection's Frontend. The connection's deadline is at most
// backendLoginTimeout away; the caller clears it. Errors wrap
// errLoginRetry when another attempt may succeed; otherwise they are the
// server's refusal (*pgauth.BackendError: pass it to the client) or the
// credentials' failure (pgauth.ErrStaleCredentials,
// pgauth.ErrServerSignature).
func (p *Proxy) login(ctx context.Context, t Target, cred pgauth.Credentials, startup map[string]string) (*backendConn, error) {
	op := "log in to " + t.Name + " as " + cred.Username
	raw, err := p.dialer.DialContext(ctx, "tcp", t.Addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", op, errLoginRetry, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(longAgo) })
	defer stop()
	_ = raw.SetDeadline(time.Now().Add(backendLoginTimeout))
	conn, err := p.negotiateTLS(ctx, raw, t)
	if err != nil {
		_ = raw.Close()
		if tlsPolicyError(err) {
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		return nil, fmt.Errorf("%s: %w: %w", op, errLoginRetry, err)
	}
	out := newOutbox(conn)
	src := newFrameSource(conn, conn, maxServerMessageLen)
	fe := pgproto3.NewFrontend(src, out)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: startup})
	err = fe.Flush()
	if err == nil {
		var c *pgauth.Client
		if c, err = pgauth.NewClient(cred, p.o.Session.Rand); err == nil {
			err = pgauth.LoginSCRAM(fe, c)
		}
	}
	if err != nil {
		_ = conn.Close()
		var be *pgauth.BackendError
		switch {
		case errors.As(err, &be) && retryableCode(be.Response.Code):
			return nil, fmt.Errorf("%s: %w: %w", op, errLoginRetry, err)
		case errors.As(err, &be), errors.Is(err, pgauth.ErrStaleCredentials), errors.Is(err, pgauth.ErrServerSignature), errors.Is(err, pgauth.ErrProtocol):
			return nil, fmt.Errorf("%s: %w", op, err)
		}
		return nil, fmt.Errorf("%s: %w: %w", op, errLoginRetry, err)
	}
	return &backendConn{t: t, conn: conn, out: out, fe: fe, src: src, ack: make(chan struct{}, 1), lfd: -1, stop: make(chan struct{})}, nil
}

// negotiateTLS secures a new connection to t per the server sslmode
// (serverTLS.negotiate), naming t's host for verify-full.
func (p *Proxy) negotiateTLS(ctx context.Context, conn net.Conn, t Target) (net.Conn, error) {
	host, _, err := net.SplitHostPort(t.Addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", t.Addr, err)
	}
	return p.tls.server.negotiate(ctx, conn, host)
}

// retryableCode says whether a server's login refusal may pass: the
// server is starting up or shutting down (class 57), or has no connection
// slot free (53300).
func retryableCode(code string) bool {
	return len(code) == 5 && code[:2] == "57" || code == "53300"
}
