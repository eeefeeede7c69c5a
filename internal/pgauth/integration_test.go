package pgauth

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/holdfast/holdfast/internal/pg"
	"github.com/holdfast/holdfast/internal/testutil/pgtest"
)

// Roles of the integration test.
const (
	itAuthPassword = "auth-role-secret"
	itSuperPass    = "super-secret"
	itDatabase     = "postgres"
)

// startPostgres starts a throwaway PostgreSQL (holdfast's own engine:
// scram-sha-256 for every TCP login) and returns it with its port.
func startPostgres(ctx context.Context, t *testing.T) (*pg.Engine, int) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a real PostgreSQL; skipped with -short")
	}
	return pgtest.Start(ctx, t, "pgauth", itSuperPass)
}

func connectAs(ctx context.Context, t *testing.T, port int, user, password string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s sslmode=disable user=%s", port, itDatabase, user))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = password
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// TestWithPostgreSQL runs the whole design against a real PostgreSQL: the
// operator's SetupSQL, the auth query as the low-privilege role, a real
// driver authenticating to a miniature proxy with its password, and the
// proxy logging in to PostgreSQL with only the recovered ClientKey.
func TestWithPostgreSQL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	e, port := startPostgres(ctx, t)

	// The operator's setup, twice (it is idempotent), and the test's roles.
	for range 2 {
		if err := e.Exec(ctx, SetupSQL); err != nil {
			t.Fatalf("SetupSQL: %v", err)
		}
	}
	for _, sql := range []string{
		"ALTER ROLE holdfast_auth PASSWORD '" + itAuthPassword + "'",
		"CREATE ROLE alice LOGIN PASSWORD '" + testPassword + "'",
		"CREATE ROLE expired LOGIN PASSWORD 'x' VALID UNTIL '2000-01-01'",
		"CREATE ROLE cannot NOLOGIN PASSWORD 'x'",
		"CREATE ROLE nopassword LOGIN",
		"SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'x'; RESET password_encryption",
		"CREATE ROLE other LOGIN PASSWORD 'other'",
	} {
		if err := e.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}

	auth := connectAs(ctx, t, port, AuthRole, itAuthPassword)

	t.Run("auth query", func(t *testing.T) {
		l, err := FetchVerifier(ctx, auth, "alice")
		if err != nil || l.Verifier == nil {
			t.Fatalf("alice: %+v %v", l, err)
		}
		// Our verifier computation agrees with PostgreSQL's.
		mine, err := NewVerifier(testPassword, l.Verifier.Salt, l.Verifier.Iterations)
		if err != nil || mine.Encode() != l.Verifier.Encode() || l.Verifier.Iterations != DefaultIterations || len(l.Verifier.Salt) != DefaultSaltLen {
			t.Errorf("PostgreSQL's verifier of alice is not ours: %v", err)
		}
		for user, reason := range map[string]string{
			"nobody":     "no role",
			"cannot":     "no role",
			"expired":    "expired",
			"nopassword": "no password",
			"md5user":    "not a SCRAM-SHA-256 secret",
		} {
			l, err := FetchVerifier(ctx, auth, user)
			if err != nil || l.Verifier != nil || !strings.Contains(l.Reason, reason) {
				t.Errorf("%s: %+v %v; want no verifier because %q", user, l, err, reason)
			}
		}
	})

	t.Run("the auth role is low-privilege", func(t *testing.T) {
		var pe *pgconn.PgError
		if _, err := auth.Exec(ctx, "SELECT rolpassword FROM pg_catalog.pg_authid"); !errors.As(err, &pe) || pe.Code != "42501" {
			t.Errorf("holdfast_auth reads pg_authid: %v", err)
		}
		other := connectAs(ctx, t, port, "other", "other")
		if _, err := FetchVerifier(ctx, other, "alice"); !errors.As(err, &pe) || pe.Code != "42501" {
			t.Errorf("another role runs the auth function: %v", err)
		}
	})

	proxy := func(conn net.Conn) frontResult { return miniProxy(ctx, conn, auth, port) }

	t.Run("right password: the proxy logs in with the ClientKey", func(t *testing.T) {
		c, err, wait := connectThroughAsync(t, "alice", testPassword, proxy)
		if err != nil {
			t.Fatalf("driver %v, proxy %v", err, wait().err)
		}
		rr, err := c.Exec(ctx, "SELECT current_user, session_user").ReadAll()
		if err != nil || len(rr) != 1 || len(rr[0].Rows) != 1 {
			t.Fatalf("select current_user: %+v %v", rr, err)
		}
		if cu, su := string(rr[0].Rows[0][0]), string(rr[0].Rows[0][1]); cu != "alice" || su != "alice" {
			t.Errorf("current_user %q, session_user %q", cu, su)
		}
		_ = c.Close(context.Background())
		res := wait()
		if res.err != nil || res.cred.Username != "alice" {
			t.Errorf("proxy: %v", res.err)
		}
	})

	for _, tc := range []struct{ name, user, password string }{
		{"wrong password", "alice", "wrong"},
		{"nonexistent user", "nobody", testPassword},
		{"expired password", "expired", "x"},
		{"md5 password", "md5user", "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err, res := connectThrough(t, tc.user, tc.password, proxy)
			var pe *pgconn.PgError
			want := `password authentication failed for user "` + tc.user + `"`
			if !errors.As(err, &pe) || pe.Code != "28P01" || pe.Message != want || pe.Detail != "" {
				t.Fatalf("driver got %v; want %q", err, want)
			}
			if !errors.Is(res.err, ErrAuthFailed) {
				t.Errorf("the proxy failed otherwise: %v", res.err)
			}
		})
	}

	t.Run("PostgreSQL refuses a wrong ClientKey", func(t *testing.T) {
		l, err := FetchVerifier(ctx, auth, "alice")
		if err != nil || l.Verifier == nil {
			t.Fatal(err)
		}
		var wrong ClientKey
		v := *l.Verifier
		v.StoredKey = storedKeyOf(wrong) // only so that our side lets it through
		server, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		defer server.Close()
		_ = server.SetDeadline(time.Now().Add(pipeTimeout))
		fe := pgproto3.NewFrontend(server, server)
		fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "alice", "database": itDatabase}})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		err = LoginSCRAM(fe, newClient(Credentials{Username: "alice", ClientKey: wrong, Verifier: v}, "abcdef", ""))
		var be *BackendError
		if !errors.As(err, &be) || be.Response.Code != "28P01" {
			t.Fatalf("PostgreSQL let a wrong ClientKey in: %v", err)
		}
	})

	t.Run("PostgreSQL words it the same", func(t *testing.T) {
		cfg, _ := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s sslmode=disable user=nobody password=x", port, itDatabase))
		_, err := pgconn.ConnectConfig(ctx, cfg)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "28P01" || pe.Message != `password authentication failed for user "nobody"` {
			t.Errorf("PostgreSQL says %v", err)
		}
	})
}

// miniProxy is the smallest proxy that uses the package as the real one
// will: look the user up with the auth role, authenticate the client
// against the verifier (or the mock), log in to PostgreSQL with the
// recovered key, pass the rest of the login through message by message
// until ReadyForQuery, then copy bytes.
func miniProxy(ctx context.Context, client net.Conn, auth *pgx.Conn, port int) frontResult {
	defer client.Close()
	_ = client.SetDeadline(time.Now().Add(pipeTimeout))
	be := pgproto3.NewBackend(client, client)
	msg, err := be.ReceiveStartupMessage()
	if err != nil {
		return frontResult{err: err}
	}
	sm, ok := msg.(*pgproto3.StartupMessage)
	if !ok {
		return frontResult{err: fmt.Errorf("got %T", msg)}
	}
	user := sm.Parameters["user"]
	l, err := FetchVerifier(ctx, auth, user)
	if err != nil {
		return frontResult{err: err}
	}
	cred, err := ServeSCRAM(be, ServerOptions{Username: user, Verifier: l.Verifier, MockSecret: []byte(testMockSecret), Rand: rand.Reader})
	if err != nil {
		return frontResult{err: err}
	}

	server, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return frontResult{err: err}
	}
	defer server.Close()
	_ = server.SetDeadline(time.Now().Add(pipeTimeout))
	fe := pgproto3.NewFrontend(server, server)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": user, "database": sm.Parameters["database"]}})
	if err := fe.Flush(); err != nil {
		return frontResult{err: err}
	}
	c, err := NewClient(cred, rand.Reader)
	if err != nil {
		return frontResult{err: err}
	}
	if err := LoginSCRAM(fe, c); err != nil {
		return frontResult{err: err}
	}
	be.Send(&pgproto3.AuthenticationOk{})
	for {
		msg, err := fe.Receive()
		if err != nil {
			return frontResult{err: err}
		}
		be.Send(msg)
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if err := be.Flush(); err != nil {
		return frontResult{err: err}
	}
	if n := fe.ReadBufferLen(); n != 0 {
		return frontResult{err: fmt.Errorf("%d bytes buffered after ReadyForQuery", n)}
	}
	done := make(chan struct{})
	go func() { _, _ = io.Copy(client, server); client.Close(); close(done) }()
	_, _ = io.Copy(server, client)
	server.Close()
	<-done
	return frontResult{cred: cred}
}
