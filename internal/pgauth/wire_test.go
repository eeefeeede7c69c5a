package pgauth

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// pipeTimeout bounds every pipe test: nothing here waits on a real server.
const pipeTimeout = 10 * time.Second

// frontResult is what the fake proxy front learnt from one client.
type frontResult struct {
	cred Credentials
	err  error
}

// serveFront plays the proxy's client side on conn: read the startup
// message, run ServeSCRAM against the verifier lookup gives for its user,
// and on success finish the login as PostgreSQL would.
func serveFront(conn net.Conn, lookup func(user string) *Verifier) frontResult {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(pipeTimeout))
	be := pgproto3.NewBackend(conn, conn)
	msg, err := be.ReceiveStartupMessage()
	if err != nil {
		return frontResult{err: err}
	}
	sm, ok := msg.(*pgproto3.StartupMessage)
	if !ok {
		return frontResult{err: errors.New("not a startup message")}
	}
	user := sm.Parameters["user"]
	cred, err := ServeSCRAM(be, ServerOptions{Username: user, Verifier: lookup(user), MockSecret: []byte(testMockSecret), Rand: fixedRand(5)})
	if err != nil {
		return frontResult{err: err}
	}
	be.Send(&pgproto3.AuthenticationOk{})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	return frontResult{cred: cred, err: be.Flush()}
}

// connectThrough connects a real driver (pgconn) as user/password to a
// server function running on the other end of a pipe.
func connectThrough(t *testing.T, user, password string, serve func(net.Conn) frontResult) (*pgconn.PgConn, error, frontResult) {
	t.Helper()
	c, err, wait := connectThroughAsync(t, user, password, serve)
	if err == nil {
		_ = c.Close(context.Background())
	}
	return c, err, wait()
}

// connectThroughAsync is connectThrough that leaves the connection open:
// wait returns serve's result once it ends.
func connectThroughAsync(t *testing.T, user, password string, serve func(net.Conn) frontResult) (*pgconn.PgConn, error, func() frontResult) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pipeTimeout)
	defer cancel()
	clientEnd, serverEnd := net.Pipe()
	done := make(chan frontResult, 1)
	go func() { done <- serve(serverEnd) }()
	cfg, err := pgconn.ParseConfig("host=proxy.test port=5432 dbname=postgres sslmode=disable user=" + user)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = password
	cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{"127.0.0.1"}, nil }
	cfg.DialFunc = func(context.Context, string, string) (net.Conn, error) { return clientEnd, nil }
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		clientEnd.Close()
	}
	return c, err, func() frontResult { return <-done }
}

func TestServeSCRAMWithARealDriver(t *testing.T) {
	v := testVerifier(t, testPassword)
	lookup := func(user string) *Verifier {
		if user == testUser {
			return &v
		}
		return nil
	}
	serve := func(c net.Conn) frontResult { return serveFront(c, lookup) }

	_, err, res := connectThrough(t, testUser, testPassword, serve)
	if err != nil || res.err != nil {
		t.Fatalf("right password: driver %v, server %v", err, res.err)
	}
	if !v.Matches(res.cred.ClientKey) {
		t.Error("the recovered ClientKey does not match the verifier")
	}

	var answers []string
	for _, tc := range []struct{ name, user, password string }{
		{"wrong password", testUser, "wrong"},
		{"unknown user", "mallory", testPassword},
	} {
		_, err, res := connectThrough(t, tc.user, tc.password, serve)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "28P01" || pe.Severity != "FATAL" {
			t.Fatalf("%s: driver got %v", tc.name, err)
		}
		if want := `password authentication failed for user "` + tc.user + `"`; pe.Message != want {
			t.Errorf("%s: message %q, want %q", tc.name, pe.Message, want)
		}
		if !errors.Is(res.err, ErrAuthFailed) {
			t.Errorf("%s: server side %v", tc.name, res.err)
		}
		answers = append(answers, strings.ReplaceAll(pe.Message, tc.user, "U")+"|"+pe.Detail+"|"+pe.Hint)
	}
	if answers[0] != answers[1] {
		t.Errorf("a wrong password and an unknown user are told apart: %q", answers)
	}
}

func TestServeSCRAMRefusesChannelBindingAndOtherMechanisms(t *testing.T) {
	for _, tc := range []struct {
		name, mech string
		data       []byte
		detail     string
	}{
		{"PLUS", "SCRAM-SHA-256-PLUS", []byte("p=tls-server-end-point,,n=,r=abc"), "only SCRAM-SHA-256"},
		{"channel binding flag", Mechanism, []byte("p=tls-server-end-point,,n=,r=abc"), "channel binding"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clientEnd, serverEnd := net.Pipe()
			defer clientEnd.Close()
			_ = clientEnd.SetDeadline(time.Now().Add(pipeTimeout))
			done := make(chan frontResult, 1)
			go func() { done <- serveFront(serverEnd, func(string) *Verifier { return nil }) }()
			fe := pgproto3.NewFrontend(clientEnd, clientEnd)
			fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": testUser}})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			if msg, err := fe.Receive(); err != nil {
				t.Fatal(err)
			} else if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
				t.Fatalf("got %T", msg)
			}
			fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: tc.mech, Data: tc.data})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			msg, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			er, ok := msg.(*pgproto3.ErrorResponse)
			if !ok || er.Code != "08P01" || !strings.Contains(er.Detail, tc.detail) {
				t.Fatalf("got %#v", msg)
			}
			if res := <-done; !errors.Is(res.err, ErrProtocol) {
				t.Errorf("server side: %v", res.err)
			}
		})
	}
}

// TestLoginSCRAMAgainstServeSCRAM logs in with the recovered key to a
// server that holds the verifier, and checks the refusals.
func TestLoginSCRAMAgainstServeSCRAM(t *testing.T) {
	v := testVerifier(t, testPassword)
	_, cred, err := exchange(t, testUser, &v, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	login := func(t *testing.T, serve func(net.Conn) frontResult) (error, frontResult) {
		clientEnd, serverEnd := net.Pipe()
		defer clientEnd.Close()
		_ = clientEnd.SetDeadline(time.Now().Add(pipeTimeout))
		done := make(chan frontResult, 1)
		go func() { done <- serve(serverEnd) }()
		fe := pgproto3.NewFrontend(clientEnd, clientEnd)
		fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": cred.Username}})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		c, err := NewClient(cred, fixedRand(11))
		if err != nil {
			t.Fatal(err)
		}
		err = LoginSCRAM(fe, c)
		clientEnd.Close()
		return err, <-done
	}
	t.Run("ok", func(t *testing.T) {
		err, res := login(t, func(c net.Conn) frontResult { return serveFront(c, func(string) *Verifier { return &v }) })
		if err != nil || res.err != nil {
			t.Fatalf("login %v, server %v", err, res.err)
		}
	})
	t.Run("password changed since", func(t *testing.T) {
		changed, _ := NewVerifier("new", []byte("new salt........"), testIterations)
		err, _ := login(t, func(c net.Conn) frontResult { return serveFront(c, func(string) *Verifier { return &changed }) })
		if !errors.Is(err, ErrStaleCredentials) {
			t.Fatalf("login %v", err)
		}
	})
	t.Run("impostor", func(t *testing.T) {
		bad := v
		bad.ServerKey[3] ^= 0x10
		err, _ := login(t, func(c net.Conn) frontResult { return serveFront(c, func(string) *Verifier { return &bad }) })
		if !errors.Is(err, ErrServerSignature) {
			t.Fatalf("login %v", err)
		}
	})
	for _, tc := range []struct {
		name string
		msg  pgproto3.BackendMessage
		want string
	}{
		{"trust", &pgproto3.AuthenticationOk{}, "trust"},
		{"md5", &pgproto3.AuthenticationMD5Password{Salt: [4]byte{1, 2, 3, 4}}, "md5"},
		{"cleartext", &pgproto3.AuthenticationCleartextPassword{}, "cleartext"},
		{"no SCRAM-SHA-256", &pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256-PLUS"}}, "not SCRAM-SHA-256"},
		{"error", &pgproto3.ErrorResponse{Severity: "FATAL", Code: "3D000", Message: `database "x" does not exist`}, "3D000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err, _ := login(t, func(c net.Conn) frontResult {
				defer c.Close()
				be := pgproto3.NewBackend(c, c)
				if _, err := be.ReceiveStartupMessage(); err != nil {
					return frontResult{err: err}
				}
				be.Send(tc.msg)
				return frontResult{err: be.Flush()}
			})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("login %v, want an error with %q", err, tc.want)
			}
			var be *BackendError
			if tc.name == "error" && (!errors.As(err, &be) || be.Response.Code != "3D000") {
				t.Errorf("not a BackendError: %v", err)
			}
		})
	}
}
