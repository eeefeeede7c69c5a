package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/holdfast/holdfast/internal/osuser"
	"github.com/holdfast/holdfast/internal/testutil"
	"github.com/holdfast/holdfast/internal/testutil/testca"
)

// tlsConnectTimeout bounds one connection through the TLS session proxy.
const tlsConnectTimeout = 30 * time.Second

// TestSessionProxyTLS runs `holdfast proxy --mode=session` with TLS on both
// sides in front of a two-member cluster whose PostgreSQL has ssl = on
// (certificates from a test CA):
//
//   - pgx clients with sslmode=verify-full (checking the proxy's
//     certificate against the CA) and sslmode=prefer, and psql with
//     sslmode=require, connect over TLS and run queries;
//   - the proxy's own connections to the members are TLS in verify-full
//     (pg_stat_ssl): the session's server connection and the auth query's,
//     which carries the users' verifiers;
//   - --tls-require refuses a clear-text client (sslmode=disable) with a
//     clear FATAL 28000;
//   - a cancel request (over TLS, as pgx sends it) cancels the statement
//     on the member, reached over TLS;
//   - an idle TLS session moves to the new primary at a switchover, on the
//     same client TLS connection, and its new server connection is TLS too.
func TestSessionProxyTLS(t *testing.T) {
	c, _ := startProxyCluster(t, 2)
	c.WaitFor("healthy", 90*time.Second, Healthy(2))

	dir := filepath.Join(testutil.Dir(t), "tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	ca, err := testca.New("holdfast e2e CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"ca.crt": ca.CertPEM}
	for _, name := range []string{"member", "proxy"} {
		crt, key, err := ca.Issue(name, nil, []string{"127.0.0.1", "localhost"}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
		if err != nil {
			t.Fatal(err)
		}
		files[name+".crt"], files[name+".key"] = crt, key
	}
	// PostgreSQL runs as the account `holdfast up` gives it (postgres when
	// the tests run as root): the member's files are that account's, and
	// it refuses a key file others may read.
	acct, err := osuser.Resolve("postgres")
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(name, "member.") {
			if err := acct.Chown(f); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := func(name string) string { return filepath.Join(dir, name) }

	// ssl = on on every member (postgresql.auto.conf: per member, kept
	// across role changes; one certificate serves both, on 127.0.0.1).
	for _, m := range c.DBMembers() {
		for _, sql := range []string{
			fmt.Sprintf("ALTER SYSTEM SET ssl_cert_file = '%s'", path("member.crt")),
			fmt.Sprintf("ALTER SYSTEM SET ssl_key_file = '%s'", path("member.key")),
			"ALTER SYSTEM SET ssl = on",
			"SELECT pg_reload_conf()",
		} {
			c.Exec(m, sql)
		}
	}
	for _, m := range c.DBMembers() {
		dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=postgres sslmode=verify-full sslrootcert=%s connect_timeout=5",
			c.Member(m).PGPort, c.Layout.Superuser.Username, c.Layout.Superuser.Password, path("ca.crt"))
		deadline := time.Now().Add(30 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			conn, err := pgx.Connect(ctx, dsn)
			cancel()
			if err == nil {
				conn.Close(context.Background())
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("member %s does not take verify-full connections 30s after ssl = on: %v", m, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	p := startSessionProxy(t, c,
		"--tls-cert-file", path("proxy.crt"), "--tls-key-file", path("proxy.key"), "--tls-require",
		"--server-sslmode", "verify-full", "--server-ca-file", path("ca.crt"))
	t.Cleanup(func() {
		if b, err := os.ReadFile(p.log); err == nil && strings.Contains(string(b), "WARNING: DATA RACE") {
			t.Errorf("the session-mode proxy reported a data race:\n%s", fileTail(p.log, 200))
		}
	})
	_, port, _ := net.SplitHostPort(p.rw)
	dsn := func(sslmode string) string {
		return fmt.Sprintf("host=127.0.0.1 port=%s user=%s password=%s dbname=postgres sslmode=%s sslrootcert=%s connect_timeout=%d",
			port, c.Layout.Superuser.Username, c.Layout.Superuser.Password, sslmode, path("ca.crt"), int(tlsConnectTimeout/time.Second))
	}
	connect := func(t *testing.T, sslmode string) *pgx.Conn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), tlsConnectTimeout)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn(sslmode))
		if err != nil {
			t.Fatalf("connect through the proxy with sslmode=%s: %v", sslmode, err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		if _, ok := conn.PgConn().Conn().(*tls.Conn); !ok {
			t.Fatalf("sslmode=%s: the client's connection to the proxy is %T, not TLS", sslmode, conn.PgConn().Conn())
		}
		return conn
	}
	// serverSSL is whether the session's server connection (the proxy's
	// login as the client) is TLS, and on which port it is.
	serverSSL := func(t *testing.T, conn *pgx.Conn) (ssl bool, port int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), sessionQueryTimeout)
		defer cancel()
		if err := conn.QueryRow(ctx, "SELECT s.ssl, inet_server_port() FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()").Scan(&ssl, &port); err != nil {
			t.Fatalf("read pg_stat_ssl through the proxy: %v", err)
		}
		return ssl, port
	}

	t.Run("verify-full and prefer clients run queries over TLS, and the proxy reaches the members over TLS", func(t *testing.T) {
		ctx := context.Background()
		for _, mode := range []string{"verify-full", "prefer"} {
			conn := connect(t, mode)
			if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS tls_items (x int)"); err != nil {
				t.Fatalf("sslmode=%s: %v", mode, err)
			}
			if _, err := conn.Exec(ctx, "INSERT INTO tls_items VALUES ($1)", 42); err != nil {
				t.Fatalf("sslmode=%s: %v", mode, err)
			}
			ssl, port := serverSSL(t, conn)
			if want := c.Member(c.Primary()).PGPort; !ssl || port != want {
				t.Errorf("sslmode=%s: the session's server connection: ssl %v on port %d; want TLS to the primary on %d", mode, ssl, port, want)
			}
		}
		// The auth query's pooled connections (application_name
		// holdfast-proxy-auth) are TLS: no verifier crossed in clear.
		var tlsConns, clearConns int
		err := connect(t, "verify-full").QueryRow(ctx, `SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
			FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'holdfast-proxy-auth'`).Scan(&tlsConns, &clearConns)
		if err != nil {
			t.Fatal(err)
		}
		if tlsConns < 1 || clearConns != 0 {
			t.Errorf("auth query connections on the primary: %d over TLS, %d in clear; want at least one, all TLS", tlsConns, clearConns)
		}
	})

	t.Run("psql with sslmode=require works, without TLS it is refused", func(t *testing.T) {
		psql := filepath.Join(testutil.PGBinDir(t), "psql")
		run := func(sslmode string) (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			// sslrootcert is left out: with require, libpq would check the
			// chain when given one; plain require only encrypts.
			conninfo := fmt.Sprintf("host=127.0.0.1 port=%s user=%s dbname=postgres sslmode=%s connect_timeout=30",
				port, c.Layout.Superuser.Username, sslmode)
			cmd := exec.CommandContext(ctx, psql, "-X", "-At", "-d", conninfo, "-c", "SELECT count(*) FROM tls_items")
			cmd.Env = append(os.Environ(), "PGPASSWORD="+c.Layout.Superuser.Password, "PGSSLROOTCERT=/nonexistent")
			out, err := cmd.CombinedOutput()
			return strings.TrimSpace(string(out)), err
		}
		if out, err := run("require"); err != nil || out != "2" {
			t.Errorf("psql sslmode=require through the proxy: %q, %v; want 2", out, err)
		}
		out, err := run("disable")
		if want := "holdfast proxy: TLS is required"; err == nil || !strings.Contains(out, want) {
			t.Errorf("psql sslmode=disable through the proxy: %q, %v; want a failure saying %q", out, err, want)
		}
	})

	t.Run("a clear-text client is refused with FATAL 28000", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), tlsConnectTimeout)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn("disable"))
		if err == nil {
			conn.Close(context.Background())
			t.Fatal("a client with sslmode=disable got in")
		}
		var pe *pgconn.PgError
		want := "holdfast proxy: TLS is required: connect with sslmode=require, verify-ca or verify-full (sslmode=prefer works too)"
		if !errors.As(err, &pe) || pe.Severity != "FATAL" || pe.Code != "28000" || pe.Message != want {
			t.Errorf("sslmode=disable: %v; want FATAL 28000 %q", err, want)
		}
		if n, err := p.metric("holdfast_proxy_refused_total", `reason="tls_required"`); err != nil || n < 1 {
			t.Errorf(`holdfast_proxy_refused_total{reason="tls_required"} = %v (%v), want >= 1`, n, err)
		}
	})

	t.Run("a cancel request reaches the statement through the proxy and its TLS to the member", func(t *testing.T) {
		conn := connect(t, "verify-full")
		ctx, cancel := context.WithTimeout(context.Background(), sessionQueryTimeout)
		defer cancel()
		done := make(chan error, 1)
		go func() {
			_, err := conn.Exec(ctx, "SELECT pg_sleep(60)")
			done <- err
		}()
		// pgx sends the CancelRequest over TLS too (as the connection was);
		// the proxy passes it on to the member over its own TLS. One sent
		// before the statement reached the member cancels nothing: send
		// until the statement ends.
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case err := <-done:
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != "57014" {
					t.Errorf("the cancelled statement: %v; want ERROR 57014 query_canceled", err)
				}
				return
			case <-tick.C:
				cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
				if err := conn.PgConn().CancelRequest(cctx); err != nil {
					t.Logf("cancel request: %v", err)
				}
				ccancel()
			case <-ctx.Done():
				t.Fatal("the statement was not cancelled")
			}
		}
	})

	t.Run("an idle TLS session moves to the new primary at a switchover", func(t *testing.T) {
		c := c.pxBind(t)
		c.WaitFor("healthy", 90*time.Second, Healthy(2))
		old := c.Primary()
		ctx := context.Background()
		conn := connect(t, "verify-full")
		clientConn := conn.PgConn().Conn()
		if _, err := conn.Exec(ctx, "SET application_name = 'tls-survivor'"); err != nil {
			t.Fatal(err)
		}
		if o, err := c.ctlRun(time.Minute, "switchover"); err != nil {
			t.Fatalf("ctl switchover: %v\n%s", err, o)
		}
		np := c.WaitFor("a new primary after the switchover", 60*time.Second, leaderRunning(old)).Leader
		ssl, port := serverSSL(t, conn)
		if want := c.Member(np).PGPort; !ssl || port != want {
			t.Errorf("after the switchover the session's server connection: ssl %v on port %d; want TLS to the new primary %s on %d", ssl, port, np, want)
		}
		qctx, cancel := context.WithTimeout(ctx, sessionQueryTimeout)
		defer cancel()
		var app string
		var n int
		if err := conn.QueryRow(qctx, "SELECT current_setting('application_name'), (SELECT count(*) FROM tls_items)").Scan(&app, &n); err != nil {
			t.Fatal(err)
		}
		if app != "tls-survivor" || n != 2 {
			t.Errorf("after the switchover: application_name %q, %d rows; want %q, 2", app, n, "tls-survivor")
		}
		if conn.PgConn().Conn() != clientConn {
			t.Error("the client's TLS connection was replaced: the session did not move on it")
		}
		if n, err := p.metric("holdfast_proxy_sessions_migrated_total"); err != nil || n < 1 {
			t.Errorf("holdfast_proxy_sessions_migrated_total = %v (%v), want >= 1", n, err)
		}
	})
}
