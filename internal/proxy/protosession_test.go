package proxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/pgsession"
)

// Session mode against fake backends (they are not PostgreSQL): what
// happens before any login. The whole flow against real PostgreSQL is in
// test/e2e/sessionproxy_test.go.

func sessionMode(o *Options) {
	o.Mode = ModeSession
	o.Session = SessionOptions{AuthPassword: "secret"}
}

// pgClient speaks the protocol's startup to the proxy.
type pgClient struct {
	c  net.Conn
	fe *pgproto3.Frontend
}

func dialPG(t *testing.T, addr string) *pgClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &pgClient{c: c, fe: pgproto3.NewFrontend(c, c)}
}

// encryptionRefused sends an SSLRequest or GSSENCRequest and expects 'N'.
func (pc *pgClient) encryptionRefused(t *testing.T, m pgproto3.FrontendMessage) {
	t.Helper()
	pc.fe.Send(m)
	if err := pc.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := pc.c.Read(b); err != nil || b[0] != 'N' {
		t.Fatalf("answer to %T: %q, %v; want 'N'", m, b, err)
	}
}

func (pc *pgClient) startup(t *testing.T, params map[string]string) {
	t.Helper()
	pc.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params})
	if err := pc.fe.Flush(); err != nil {
		t.Fatal(err)
	}
}

// fatal reads until an ErrorResponse and returns it.
func (pc *pgClient) fatal(t *testing.T) *pgproto3.ErrorResponse {
	t.Helper()
	for {
		m, err := pc.fe.Receive()
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			return e
		}
	}
}

func TestSessionModeOptions(t *testing.T) {
	src := newFakeSource(cluster.View{})
	for _, tc := range []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"unknown mode", func(o *Options) { o.Mode = "pool" }, `mode "pool"`},
		{"no auth password", func(o *Options) { o.Mode = ModeSession }, "password is required"},
		{"short mock secret", func(o *Options) { sessionMode(o); o.Session.MockSecret = []byte("short") }, "mock secret has 5 bytes"},
	} {
		o := Options{RWListen: "127.0.0.1:0", Source: src}
		tc.mod(&o)
		if _, err := New(o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	o := Options{RWListen: "127.0.0.1:0", Source: src}
	sessionMode(&o)
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if n := len(p.o.Session.MockSecret); n != mockSecretLen {
		t.Errorf("generated mock secret of %d bytes, want %d", n, mockSecretLen)
	}
	if p.o.Session.AuthUser != "holdfast_auth" || p.o.Session.AuthDatabase != DefaultAuthDatabase {
		t.Errorf("defaults: %+v", p.o.Session)
	}
	mfs, err := p.gatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, n := range []string{"holdfast_proxy_session_held_seconds"} {
		if !names[n] {
			t.Errorf("metric %s not registered in session mode", n)
		}
	}
	// Pass-through registers none of them.
	pt, err := New(Options{RWListen: "127.0.0.1:0", Source: src})
	if err != nil {
		t.Fatal(err)
	}
	defer pt.Close()
	mfs, _ = pt.gatherer.Gather()
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "holdfast_proxy_session") {
			t.Errorf("pass-through mode registers %s", mf.GetName())
		}
	}
}

// A client is answered 'N' to encryption requests, and refused with a
// message of the proxy's own when the auth query cannot run (the primary
// is a fake) — told nothing about the user.
func TestSessionModeStartupAndFailedAuthQuery(t *testing.T) {
	a := startBackend(t, "pg-0")
	src := newFakeSource(mkView("pg-0", primary(a)))
	p := startProxy(t, src, sessionMode)
	pc := dialPG(t, p.RWAddr())
	pc.encryptionRefused(t, &pgproto3.SSLRequest{})
	pc.encryptionRefused(t, &pgproto3.GSSEncRequest{})
	pc.startup(t, map[string]string{"user": "alice", "database": "app"})
	e := pc.fatal(t)
	if e.Severity != "FATAL" || e.Code != "XX000" || strings.Contains(e.Message, "alice") {
		t.Errorf("got %s %s %q; want FATAL XX000 that says nothing of the user", e.Severity, e.Code, e.Message)
	}
	if got := counter(t, p.m.refused.WithLabelValues(ListenerRW, ReasonAuthQuery)); got != 1 {
		t.Errorf("refused_total{rw,auth_query_failed} = %v, want 1", got)
	}
}

// Without a primary a new client waits HoldTimeout, then is told why.
func TestSessionModeNoPrimary(t *testing.T) {
	src := newFakeSource(mkView(""))
	p := startProxy(t, src, func(o *Options) { sessionMode(o); o.HoldTimeout = 300 * time.Millisecond })
	pc := dialPG(t, p.RWAddr())
	start := time.Now()
	pc.startup(t, map[string]string{"user": "alice"})
	e := pc.fatal(t)
	if e.Code != codeCannotConnectNow || !strings.Contains(e.Message, "holdfast proxy: no primary to connect to") {
		t.Errorf("got %s %q", e.Code, e.Message)
	}
	if waited := time.Since(start); waited < 250*time.Millisecond {
		t.Errorf("refused after %s, before the hold timeout", waited)
	}
}

// A cancel request for a key no session has is dropped: the connection
// closes with no answer.
func TestSessionModeUnknownCancelKey(t *testing.T) {
	a := startBackend(t, "pg-0")
	p := startProxy(t, newFakeSource(mkView("pg-0", primary(a))), sessionMode)
	pc := dialPG(t, p.RWAddr())
	pc.fe.Send(&pgproto3.CancelRequest{ProcessID: 42, SecretKey: []byte{1, 2, 3, 4}})
	if err := pc.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if n, err := pc.c.Read(b); err == nil {
		t.Fatalf("the proxy answered a cancel request: %q", b[:n])
	}
}

func TestRetryableLoginCodes(t *testing.T) {
	for code, want := range map[string]bool{"57P03": true, "57P01": true, "53300": true, "28P01": false, "3D000": false, "": false} {
		if got := retryableCode(code); got != want {
			t.Errorf("retryableCode(%q) = %v, want %v", code, got, want)
		}
	}
}

// A change of the routes that comes after the session acted on the routes
// and before it waits for the next change is not missed: a session
// holding a request for want of a primary takes the primary that came in
// that gap at once (it used to wait on the newer change's channel, and the
// request waited out its hold timeout with a primary there to take it).
func TestSessionActsOnChangeBeforeItsWait(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialed := make(chan struct{}, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
			select {
			case dialed <- struct{}{}:
			default:
			}
		}
	}()
	// Nothing but the change itself may wake the session: no periodic
	// re-read (a long TTL), no polling while it holds (a role watch).
	src := newFakeSource(mkView(""))
	p := startProxy(t, quietSource{src}, func(o *Options) {
		sessionMode(o)
		o.HoldTimeout, o.TTL = 10*time.Minute, time.Hour
	})
	st := pgsession.New(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "u", "database": "d"}})
	if _, err := st.Backend(&pgproto3.ReadyForQuery{TxStatus: pgsession.TxIdle}); err != nil {
		t.Fatal(err)
	}
	server, client := net.Pipe()
	defer client.Close()
	go func() { _, _ = io.Copy(io.Discard, client) }()
	ps := &protoSession{p: p, log: slog.New(slog.DiscardHandler), client: server, be: pgproto3.NewBackend(server, server),
		st: st, done: make(chan struct{}), retry: dialRetryMin,
		pending: &event{fromClient: true, msg: &pgproto3.Query{String: "SELECT 1"}, ack: make(chan struct{}, 1)}}
	first := true
	ps.afterStep = func() {
		if !first {
			return
		}
		first = false
		if ps.pending == nil || ps.bc != nil {
			t.Errorf("after the first step: pending %v, attached %v; want the request held", ps.pending != nil, ps.bc != nil)
		}
		// The primary comes now, between the step and the wait.
		seen := ps.rtChanged
		src.set(mkView("pg-0", primary(&backend{name: "pg-0", port: ln.Addr().(*net.TCPAddr).Port})), true)
		select {
		case <-seen:
		case <-time.After(20 * time.Second):
			t.Error("the proxy did not take the new view")
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		ps.run(ctx)
	}()
	defer func() {
		cancel()
		<-ran
		close(ps.done)
	}()
	select {
	case <-dialed:
	case <-time.After(30 * time.Second):
		t.Fatal("the session did not try the primary that came between its step and its wait")
	}
}

// quietSource is a fakeSource with a role watch that never signals (so
// the proxy does not poll the store while a session holds).
type quietSource struct{ *fakeSource }

func (quietSource) WatchRoles(ctx context.Context) <-chan struct{} { return make(chan struct{}) }
