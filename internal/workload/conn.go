package workload

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
)

// Defaults for the zero values of the options.
const (
	defaultConnectTimeout   = 2 * time.Second
	defaultStatementTimeout = 5 * time.Second
	defaultRetryDelay       = 50 * time.Millisecond
	closeTimeout            = time.Second
	// setupConnectTimeout bounds the login of a workload's set-up (its
	// table), before any fault: a machine so loaded that a SCRAM login
	// through the proxy takes longer than the clients' connect timeout
	// failed a fault run before its fault began.
	setupConnectTimeout = 30 * time.Second
)

var identifierRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// checkIdentifier accepts a plain lower-case SQL identifier, so it can be
// spliced into statements unquoted.
func checkIdentifier(what, name string) error {
	if !identifierRE.MatchString(name) {
		return fmt.Errorf("%s %q: want a plain lower-case identifier ([a-z_][a-z0-9_]*)", what, name)
	}
	return nil
}

// connConfig parses dsn for a workload client: the given connect timeout,
// the simple query protocol (one message per statement, one round trip),
// a context watcher that drops the connection when a statement's context
// ends instead of asking the server to cancel (a server-side cancel of a
// commit waiting for synchronous replication is reported as success), and
// a dialer whose connections count the bytes written (see sent).
func connConfig(dsn string, connectTimeout time.Duration) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse DSN: %w", err)
	}
	cfg.ConnectTimeout = connectTimeout
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: c.Conn()}
	}
	dial := cfg.DialFunc
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c}, nil
	}
	return cfg, nil
}

// countingConn counts the bytes written to the socket.
type countingConn struct {
	net.Conn
	written atomic.Int64
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.written.Add(int64(n))
	return n, err
}

// written returns the bytes written so far on c's socket, or -1 when the
// socket is not a countingConn (then anything may have been sent).
func written(c *pgx.Conn) int64 {
	nc := c.PgConn().Conn()
	for {
		switch x := nc.(type) {
		case *countingConn:
			return x.written.Load()
		case interface{ NetConn() net.Conn }: // *tls.Conn
			nc = x.NetConn()
		default:
			return -1
		}
	}
}

// sent reports whether any byte was written on c since before was taken
// with written. It is the workload's own answer to "could the server have
// received the statement", used instead of pgconn.SafeToRetry: pgx (v5.12)
// reports a statement the server received, when the server then closes the
// connection without answering, as connLockError "conn closed" with
// SafeToRetry true (MultiResultReader.NextResult drops the read error).
func sent(c *pgx.Conn, before int64) bool {
	now := written(c)
	return before < 0 || now < 0 || now > before
}

// connectForSetup is connect with at least setupConnectTimeout to log in.
func connectForSetup(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	setup := cfg.Copy()
	setup.ConnectTimeout = max(setup.ConnectTimeout, setupConnectTimeout)
	return connect(ctx, setup)
}

// connect opens a connection, bounded by cfg.ConnectTimeout and ctx.
func connect(ctx context.Context, cfg *pgx.ConnConfig) (*pgx.Conn, error) {
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return c, nil
}

// closeConn closes c without waiting long for a server that may be gone.
func closeConn(c *pgx.Conn) {
	if c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	_ = c.Close(ctx)
}

// classify returns the outcome of a statement that was attempted on an
// open connection and returned err; wasSent says whether any byte was
// written since the attempt began:
//   - nil: Acked;
//   - the server answered with severity ERROR: Failed (the single-statement
//     transaction was rolled back);
//   - nothing was written: Failed;
//   - anything else (FATAL/PANIC, I/O error after sending, timeout,
//     cancellation): Unknown.
func classify(err error, wasSent bool) Outcome {
	if err == nil {
		return Acked
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		sev := pe.SeverityUnlocalized
		if sev == "" {
			sev = pe.Severity
		}
		if strings.EqualFold(sev, "ERROR") {
			return Failed
		}
		return Unknown
	}
	if !wasSent {
		return Failed
	}
	return Unknown
}

// sleep waits d or until ctx is done; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
