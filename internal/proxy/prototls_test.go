package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/holdfast/holdfast/internal/certfile"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/testutil/testca"
)

// tlsTestTimeout bounds one exchange of these tests (generous: the
// machine is shared).
const tlsTestTimeout = 30 * time.Second

// testPKI is a CA and one server certificate for 127.0.0.1 and
// member.test, written as PEM files.
type testPKI struct {
	ca                     *testca.CA
	caFile, certFile, keyF string
	cert                   tls.Certificate
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	ca, err := testca.New("holdfast test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue("member", nil, []string{"127.0.0.1", "member.test"}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	k := testPKI{ca: ca, caFile: filepath.Join(dir, "ca.crt"), certFile: filepath.Join(dir, "server.crt"), keyF: filepath.Join(dir, "server.key")}
	for f, b := range map[string][]byte{k.caFile: ca.CertPEM, k.certFile: certPEM, k.keyF: keyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if k.cert, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestClientTLSPolicy(t *testing.T) {
	for _, tc := range []struct {
		name     string
		pol      clientTLSPolicy
		onTLS    bool
		ssl, gss byte // 0: an error
		admitErr bool
	}{
		{name: "no certificate: N, as ssl = off", pol: clientTLSPolicy{}, ssl: 'N', gss: 'N'},
		{name: "certificate, clear so far", pol: clientTLSPolicy{offer: true}, ssl: 'S', gss: 'N'},
		{name: "certificate, already on TLS", pol: clientTLSPolicy{offer: true}, onTLS: true},
		{name: "required, clear startup refused", pol: clientTLSPolicy{offer: true, require: true}, ssl: 'S', gss: 'N', admitErr: true},
		{name: "required, on TLS", pol: clientTLSPolicy{offer: true, require: true}, onTLS: true},
	} {
		ssl, err := tc.pol.onSSLRequest(tc.onTLS)
		if (err != nil) != (tc.ssl == 0) || ssl != tc.ssl {
			t.Errorf("%s: SSLRequest answered %q, %v; want %q", tc.name, ssl, err, tc.ssl)
		}
		gss, err := tc.pol.onGSSENCRequest(tc.onTLS)
		if (err != nil) != (tc.gss == 0) || gss != tc.gss {
			t.Errorf("%s: GSSENCRequest answered %q, %v; want %q", tc.name, gss, err, tc.gss)
		}
		if err := tc.pol.admitStartup(tc.onTLS); (err != nil) != tc.admitErr {
			t.Errorf("%s: admitStartup: %v, want an error: %v", tc.name, err, tc.admitErr)
		} else if err != nil && !errors.Is(err, errClientTLSRequired) {
			t.Errorf("%s: admitStartup: %v, want errClientTLSRequired", tc.name, err)
		}
	}
}

func TestServerAnswer(t *testing.T) {
	for _, tc := range []struct {
		mode     string
		answer   byte
		useTLS   bool
		err      bool
		noTLSErr bool
	}{
		{SSLPrefer, 'S', true, false, false},
		{SSLPrefer, 'N', false, false, false},
		{SSLRequire, 'S', true, false, false},
		{SSLRequire, 'N', false, true, true},
		{SSLVerifyCA, 'N', false, true, true},
		{SSLVerifyFull, 'N', false, true, true},
		{SSLVerifyFull, 'E', false, true, false},
		{SSLPrefer, 'x', false, true, false},
	} {
		useTLS, err := serverAnswer(tc.mode, tc.answer)
		if useTLS != tc.useTLS || (err != nil) != tc.err || errors.Is(err, errServerNoTLS) != tc.noTLSErr {
			t.Errorf("serverAnswer(%s, %q) = %v, %v; want %v, error %v (no TLS: %v)", tc.mode, tc.answer, useTLS, err, tc.useTLS, tc.err, tc.noTLSErr)
		}
		if tc.noTLSErr && !tlsPolicyError(err) {
			t.Errorf("serverAnswer(%s, %q): %v is not a policy error (it would be retried)", tc.mode, tc.answer, err)
		}
	}
}

// Bad TLS settings are refused at New with a message that names them.
func TestSessionTLSOptions(t *testing.T) {
	k := newTestPKI(t)
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*SessionOptions)
		want string
	}{
		{"cert without key", func(o *SessionOptions) { o.TLSCertFile = k.certFile }, "both a certificate file and a key file"},
		{"key without cert", func(o *SessionOptions) { o.TLSKeyFile = k.keyF }, "both a certificate file and a key file"},
		{"key that is no key", func(o *SessionOptions) { o.TLSCertFile, o.TLSKeyFile = k.certFile, notPEM }, "load the TLS certificate"},
		{"require without a certificate", func(o *SessionOptions) { o.RequireTLS = true }, "--tls-cert-file"},
		{"unknown server sslmode", func(o *SessionOptions) { o.ServerSSLMode = "allow" }, `server sslmode "allow": want one of disable, prefer, require, verify-ca, verify-full`},
		{"CA file with disable", func(o *SessionOptions) { o.ServerSSLMode, o.ServerCAFile = SSLDisable, k.caFile }, "not disable"},
		{"CA file with prefer", func(o *SessionOptions) { o.ServerCAFile = k.caFile }, "not prefer"},
		{"CA file missing", func(o *SessionOptions) { o.ServerSSLMode, o.ServerCAFile = SSLVerifyFull, "/nonexistent/ca.crt" }, "read the server CA file"},
		{"CA file not PEM", func(o *SessionOptions) { o.ServerSSLMode, o.ServerCAFile = SSLVerifyFull, notPEM }, "holds no PEM certificate"},
	} {
		o := Options{RWListen: "127.0.0.1:0", Source: newFakeSource(cluster.View{})}
		sessionMode(&o)
		tc.mod(&o.Session)
		if p, err := New(o); err == nil || !strings.Contains(err.Error(), tc.want) {
			if err == nil {
				p.Close()
			}
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	o := Options{RWListen: "127.0.0.1:0", Source: newFakeSource(cluster.View{})}
	sessionMode(&o)
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.tls.server.mode != DefaultServerSSLMode || p.tls.client != nil {
		t.Errorf("default TLS: server mode %q, client config %v; want %q and none", p.tls.server.mode, p.tls.client, DefaultServerSSLMode)
	}
}

// fakeMember accepts one connection, reads an SSLRequest, answers it and,
// after 'S', serves TLS with cert and echoes one line.
func fakeMember(t *testing.T, answer byte, cert tls.Certificate) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(tlsTestTimeout))
		req := make([]byte, encRequestLen)
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		if _, err := c.Write([]byte{answer}); err != nil {
			return
		}
		var conn net.Conn = c
		if answer == 'S' {
			tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
			if tc.Handshake() != nil {
				return
			}
			conn = tc
		}
		b := make([]byte, 5)
		if _, err := io.ReadFull(conn, b); err == nil {
			_, _ = conn.Write(b)
		}
	}()
	return ln.Addr().String()
}

// negotiate against fake members: which modes accept which certificate
// and which answer, and that the connection returned carries the
// protocol afterwards (encrypted or not).
func TestServerTLSNegotiate(t *testing.T) {
	k := newTestPKI(t)
	other := newTestPKI(t) // a CA that did not sign the member's certificate
	for _, tc := range []struct {
		name    string
		mode    string
		caFile  string
		answer  byte
		host    string
		wantTLS bool
		policy  bool // a policy error (not retried)
	}{
		{name: "prefer, member with TLS", mode: SSLPrefer, answer: 'S', host: "127.0.0.1", wantTLS: true},
		{name: "prefer, member without TLS", mode: SSLPrefer, answer: 'N', host: "127.0.0.1"},
		{name: "require, member without TLS", mode: SSLRequire, answer: 'N', host: "127.0.0.1", policy: true},
		{name: "require, no CA: not verified", mode: SSLRequire, answer: 'S', host: "elsewhere.test", wantTLS: true},
		{name: "require with the CA: verified like verify-ca", mode: SSLRequire, caFile: other.caFile, answer: 'S', host: "127.0.0.1", policy: true},
		{name: "verify-ca, another host name", mode: SSLVerifyCA, caFile: k.caFile, answer: 'S', host: "elsewhere.test", wantTLS: true},
		{name: "verify-ca, another CA", mode: SSLVerifyCA, caFile: other.caFile, answer: 'S', host: "127.0.0.1", policy: true},
		{name: "verify-full, IP address", mode: SSLVerifyFull, caFile: k.caFile, answer: 'S', host: "127.0.0.1", wantTLS: true},
		{name: "verify-full, DNS name", mode: SSLVerifyFull, caFile: k.caFile, answer: 'S', host: "member.test", wantTLS: true},
		{name: "verify-full, another host name", mode: SSLVerifyFull, caFile: k.caFile, answer: 'S', host: "elsewhere.test", policy: true},
		{name: "verify-full, another CA", mode: SSLVerifyFull, caFile: other.caFile, answer: 'S', host: "127.0.0.1", policy: true},
	} {
		s, err := newServerTLS(tc.mode, tc.caFile)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		addr := fakeMember(t, tc.answer, k.cert)
		raw, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = raw.SetDeadline(time.Now().Add(tlsTestTimeout))
		ctx, cancel := context.WithTimeout(context.Background(), tlsTestTimeout)
		conn, err := s.negotiate(ctx, raw, tc.host)
		cancel()
		switch {
		case tc.policy:
			if err == nil || !tlsPolicyError(err) {
				t.Errorf("%s: %v; want a policy error", tc.name, err)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
		default:
			if _, isTLS := conn.(*tls.Conn); isTLS != tc.wantTLS {
				t.Errorf("%s: TLS %v, want %v", tc.name, isTLS, tc.wantTLS)
			}
			b := make([]byte, 5)
			if _, err := conn.Write([]byte("hello")); err != nil {
				t.Errorf("%s: write after negotiation: %v", tc.name, err)
			} else if _, err := io.ReadFull(conn, b); err != nil || string(b) != "hello" {
				t.Errorf("%s: read after negotiation: %q, %v", tc.name, b, err)
			}
		}
		raw.Close()
	}
	// disable sends nothing: the connection is returned as it is.
	s, err := newServerTLS(SSLDisable, "")
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if conn, err := s.negotiate(context.Background(), a, "127.0.0.1"); err != nil || conn != a {
		t.Errorf("disable: %v, %v; want the connection unchanged", conn, err)
	}
}

// tlsSessionProxy starts a session-mode proxy whose primary is a fake
// backend, with a certificate for clients.
func tlsSessionProxy(t *testing.T, k testPKI, require bool) *Proxy {
	t.Helper()
	a := startBackend(t, "pg-0")
	return startProxy(t, newFakeSource(mkView("pg-0", primary(a))), func(o *Options) {
		sessionMode(o)
		o.Session.TLSCertFile, o.Session.TLSKeyFile, o.Session.RequireTLS = k.certFile, k.keyF, require
		o.Session.ServerSSLMode = SSLDisable // the fake backend is no PostgreSQL
	})
}

// startTLS asks for TLS, expects 'S' and completes the handshake,
// checking the proxy's certificate against the test CA (verify-full).
func (pc *pgClient) startTLS(t *testing.T, k testPKI) {
	t.Helper()
	pc.fe.Send(&pgproto3.SSLRequest{})
	if err := pc.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(pc.c, b); err != nil || b[0] != 'S' {
		t.Fatalf("answer to SSLRequest: %q, %v; want 'S'", b, err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(k.ca.CertPEM)
	tc := tls.Client(pc.c, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake with the proxy: %v", err)
	}
	pc.c, pc.fe = tc, pgproto3.NewFrontend(tc, tc)
}

// With a certificate the proxy answers SSLRequest 'S' (after a
// GSSENCRequest answered 'N'), and the startup goes on over TLS: the
// client then gets the proxy's own refusal (the fake primary cannot run
// the auth query) through the encrypted connection.
func TestSessionModeClientTLS(t *testing.T) {
	k := newTestPKI(t)
	for _, require := range []bool{false, true} {
		p := tlsSessionProxy(t, k, require)
		pc := dialPG(t, p.RWAddr())
		pc.encryptionRefused(t, &pgproto3.GSSEncRequest{})
		pc.startTLS(t, k)
		pc.startup(t, map[string]string{"user": "alice", "database": "app"})
		if e := pc.fatal(t); e.Code != codeInternal {
			t.Errorf("require %v: over TLS got %s %q; want the auth query's XX000 (the startup got through)", require, e.Code, e.Message)
		}
		if got := counter(t, p.m.refused.WithLabelValues(ListenerRW, ReasonTLSRequired)); got != 0 {
			t.Errorf("require %v: refused_total{tls_required} = %v over TLS", require, got)
		}
	}
}

// With RequireTLS a clear-text startup packet is refused with FATAL 28000
// and counted; without it, it goes on in clear.
func TestSessionModeClearClientRefusedWhenTLSRequired(t *testing.T) {
	k := newTestPKI(t)
	p := tlsSessionProxy(t, k, true)
	pc := dialPG(t, p.RWAddr())
	pc.startup(t, map[string]string{"user": "alice"})
	e := pc.fatal(t)
	want := msgPrefix + errClientTLSRequired.Error()
	if e.Severity != "FATAL" || e.Code != codeInvalidAuthSpec || e.Message != want {
		t.Errorf("clear client: %s %s %q; want FATAL 28000 %q", e.Severity, e.Code, e.Message, want)
	}
	if got := counter(t, p.m.refused.WithLabelValues(ListenerRW, ReasonTLSRequired)); got != 1 {
		t.Errorf("refused_total{tls_required} = %v, want 1", got)
	}

	p = tlsSessionProxy(t, k, false)
	pc = dialPG(t, p.RWAddr())
	pc.startup(t, map[string]string{"user": "alice"})
	if e := pc.fatal(t); e.Code != codeInternal {
		t.Errorf("clear client, TLS optional: %s %q; want the auth query's XX000 (the startup got through)", e.Code, e.Message)
	}
}

// A client that sends its startup packet right behind its SSLRequest,
// before the 'S', has those bytes taken as the start of its TLS
// handshake — which fails — never as a startup packet (buffer stuffing).
func TestSessionModeClientTLSNoBufferStuffing(t *testing.T) {
	k := newTestPKI(t)
	p := tlsSessionProxy(t, k, false)
	pc := dialPG(t, p.RWAddr())
	pc.fe.Send(&pgproto3.SSLRequest{})
	pc.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "alice"}})
	if err := pc.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(pc.c)
	if len(b) == 0 || b[0] != 'S' {
		t.Fatalf("answer: %q, %v; want 'S' first", b, err)
	}
	// After 'S' the proxy reads a TLS record; a startup packet is none,
	// so it closes the connection (possibly with a TLS alert), and never
	// answers as PostgreSQL would.
	if rest := b[1:]; len(rest) > 0 && rest[0] != 0x15 {
		t.Errorf("after 'S' the proxy sent %q; want nothing or a TLS alert", rest)
	}
}

// A renewed client certificate is served without a restart; a pair
// half-replaced (new certificate, old key) leaves the working one in
// service.
func TestClientCertificateReload(t *testing.T) {
	k := newTestPKI(t)
	cf, err := certfile.Load(k.certFile, k.keyF, "proxy clients", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	cf.SetCheckInterval(0)
	served := func() string {
		t.Helper()
		c, err := cf.GetCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return leaf.Subject.CommonName
	}
	if cn := served(); cn != "member" {
		t.Fatalf("served %q, want member", cn)
	}
	issue := func(cn string) (certPEM, keyPEM []byte) {
		t.Helper()
		c, key, err := k.ca.Issue(cn, nil, []string{"127.0.0.1"}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
		if err != nil {
			t.Fatal(err)
		}
		return c, key
	}
	// write replaces a file by renaming a new one over it, as renewal tools
	// do, with a modification time that differs from the old one's.
	write := func(path string, b []byte, at time.Time) {
		t.Helper()
		tmp := path + ".new"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(tmp, at, at); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	renewedCert, renewedKey := issue("renewed")
	later := time.Now().Add(time.Minute)
	write(k.certFile, renewedCert, later)
	write(k.keyF, renewedKey, later)
	if cn := served(); cn != "renewed" {
		t.Errorf("after renewal served %q, want renewed", cn)
	}
	nextCert, _ := issue("next")
	write(k.certFile, nextCert, later.Add(time.Minute))
	if cn := served(); cn != "renewed" {
		t.Errorf("with the certificate replaced and not its key served %q, want the previous pair (renewed)", cn)
	}
}
