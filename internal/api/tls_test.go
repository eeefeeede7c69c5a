package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testPKI is a CA, a server certificate for 127.0.0.1 and two client
// certificates — one signed by the CA, one self-signed — as PEM files.
type testPKI struct {
	dir                   string
	ca                    *x509.Certificate
	caKey                 *ecdsa.PrivateKey
	caFile                string
	serverCert, serverKey string
	clientCert, clientKey string
	rogueCert, rogueKey   string
	otherCA               string // a CA that signed nothing here
	serial                int64
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir()}
	p.ca, p.caKey = p.issue(t, "holdfast test CA", nil, nil, true, 0)
	p.caFile = filepath.Join(p.dir, "ca.crt")
	writePEM(t, p.caFile, "CERTIFICATE", p.ca.Raw)
	p.serverCert, p.serverKey = p.issueFiles(t, "server", "pg-0", p.ca, p.caKey, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = p.issueFiles(t, "client", "operator", p.ca, p.caKey, x509.ExtKeyUsageClientAuth)
	p.rogueCert, p.rogueKey = p.issueFiles(t, "rogue", "mallory", nil, nil, x509.ExtKeyUsageClientAuth)
	other, _ := p.issue(t, "another CA", nil, nil, true, 0)
	p.otherCA = filepath.Join(p.dir, "other-ca.crt")
	writePEM(t, p.otherCA, "CERTIFICATE", other.Raw)
	return p
}

// issue makes a certificate signed by parent (self-signed when nil).
func (p *testPKI) issue(t *testing.T, cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, isCA bool, usage x509.ExtKeyUsage) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{usage}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
			tmpl.DNSNames = []string{"localhost"}
		}
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// issueFiles issues a leaf certificate and writes it and its key.
func (p *testPKI) issueFiles(t *testing.T, name, cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	cert, key := p.issue(t, cn, parent, parentKey, false, usage)
	certFile, keyFile = filepath.Join(p.dir, name+".crt"), filepath.Join(p.dir, name+".key")
	writePEM(t, certFile, "CERTIFICATE", cert.Raw)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, keyFile, "PRIVATE KEY", der)
	return certFile, keyFile
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newTestClient(t *testing.T, url string, o ClientOptions) *Client {
	t.Helper()
	c, err := NewClient(url, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestTLS(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, newFake(primaryState()), ServerOptions{CertFile: p.serverCert, KeyFile: p.serverKey})
	if !strings.HasPrefix(srv.URL(), "https://127.0.0.1:") {
		t.Fatalf("URL %s", srv.URL())
	}
	ctx := context.Background()

	c := newTestClient(t, srv.URL(), ClientOptions{CAFile: p.caFile})
	if code, err := c.Health(ctx, "/primary"); err != nil || code != 200 {
		t.Errorf("over TLS: %d, %v", code, err)
	}
	// Mutations need nothing more without a client CA or token.
	if _, err := c.Pause(ctx); err != nil {
		t.Errorf("pause over TLS: %v", err)
	}

	// The server's certificate is verified.
	if _, err := newTestClient(t, srv.URL(), ClientOptions{}).Health(ctx, "/primary"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("unknown CA accepted: %v", err)
	}
	if _, err := newTestClient(t, srv.URL(), ClientOptions{CAFile: p.otherCA}).Health(ctx, "/primary"); err == nil {
		t.Errorf("certificate of another CA accepted")
	}
	// Plain HTTP to the TLS port gets no answer from the API.
	if r := call(t, nil, "GET", strings.Replace(srv.URL(), "https://", "http://", 1)+"/primary", ""); r.code != http.StatusBadRequest {
		t.Errorf("plain HTTP to the TLS port = %d", r.code)
	}
	// TLS 1.1 and older are refused.
	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	_, err := tls.Dial("tcp", srv.Addr().String(), &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS11})
	if err == nil {
		t.Errorf("TLS 1.1 handshake succeeded")
	}
	conn, err := tls.Dial("tcp", srv.Addr().String(), &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS12})
	if err != nil {
		t.Errorf("TLS 1.2 refused: %v", err)
	} else {
		conn.Close()
	}
}

func TestClientCertificates(t *testing.T) {
	p := newPKI(t)
	f := newFake(primaryState())
	srv := startServer(t, f, ServerOptions{CertFile: p.serverCert, KeyFile: p.serverKey, ClientCAFile: p.caFile, AuthToken: "tok"})
	ctx := context.Background()

	anon := newTestClient(t, srv.URL(), ClientOptions{CAFile: p.caFile, Token: "tok"})
	// Health checks and reads need no certificate: probes and load
	// balancers carry none.
	for _, path := range []string{"/primary", "/liveness", "/health"} {
		if code, err := anon.Health(ctx, path); err != nil || code != 200 {
			t.Errorf("%s without a client certificate: %d, %v", path, code, err)
		}
	}
	if _, err := anon.Cluster(ctx); err != nil {
		t.Errorf("GET /cluster without a client certificate: %v", err)
	}
	// Changes do.
	var e *Error
	if _, err := anon.Pause(ctx); !errors.As(err, &e) || e.Status != 403 || !strings.Contains(e.Message, "needs a client certificate signed by the API's client CA") {
		t.Errorf("pause without a client certificate: %v", err)
	}
	if calls, _ := f.called(); len(calls) != 0 {
		t.Errorf("backend reached without a certificate: %v", calls)
	}

	// A certificate from the CA, but no token: both are required.
	noToken := newTestClient(t, srv.URL(), ClientOptions{CAFile: p.caFile, CertFile: p.clientCert, KeyFile: p.clientKey})
	if _, err := noToken.Pause(ctx); !errors.As(err, &e) || e.Status != 401 {
		t.Errorf("certificate without token: %v", err)
	}
	ok := newTestClient(t, srv.URL(), ClientOptions{CAFile: p.caFile, CertFile: p.clientCert, KeyFile: p.clientKey, Token: "tok"})
	if _, err := ok.Pause(ctx); err != nil {
		t.Errorf("certificate and token: %v", err)
	}
	if calls, _ := f.called(); len(calls) != 1 || calls[0] != "SetPaused" {
		t.Errorf("backend calls %v", calls)
	}

	// Go's client withholds a certificate the server's CAs did not sign: the
	// request goes without one and is refused.
	rogue := newTestClient(t, srv.URL(), ClientOptions{CAFile: p.caFile, CertFile: p.rogueCert, KeyFile: p.rogueKey, Token: "tok"})
	if _, err := rogue.Pause(ctx); !errors.As(err, &e) || e.Status != 403 {
		t.Errorf("self-signed client certificate: %v", err)
	}
	// A client that presents it anyway fails the handshake, whatever the
	// request.
	rogueCert, err := tls.LoadX509KeyPair(p.rogueCert, p.rogueKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	forced := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs:              pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &rogueCert, nil },
	}}}
	for _, req := range []struct{ method, path string }{{"GET", "/health"}, {"POST", "/pause"}} {
		r, _ := http.NewRequest(req.method, srv.URL()+req.path, nil)
		r.Header.Set("Authorization", "Bearer tok")
		if resp, err := forced.Do(r); err == nil {
			resp.Body.Close()
			t.Errorf("%s %s with a self-signed client certificate = %d, want a failed handshake", req.method, req.path, resp.StatusCode)
		}
	}
	if calls, _ := f.called(); len(calls) != 0 {
		t.Errorf("backend reached with a rogue certificate: %v", calls)
	}
}

func TestNewServerTLSErrors(t *testing.T) {
	p := newPKI(t)
	b := newFake(primaryState())
	for _, tc := range []struct {
		name string
		o    ServerOptions
		want string
	}{
		{"missing cert", ServerOptions{CertFile: filepath.Join(p.dir, "none.crt"), KeyFile: p.serverKey}, "load the TLS certificate"},
		{"key of another cert", ServerOptions{CertFile: p.serverCert, KeyFile: p.clientKey}, "private key does not match public key"},
		{"missing client CA", ServerOptions{CertFile: p.serverCert, KeyFile: p.serverKey, ClientCAFile: filepath.Join(p.dir, "none.crt")}, "reading client CA"},
		{"client CA not PEM", ServerOptions{CertFile: p.serverCert, KeyFile: p.serverKey, ClientCAFile: p.serverKey}, "holds no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Backend, tc.o.Listen = b, "127.0.0.1:0"
			s, err := NewServer(tc.o)
			if err == nil {
				s.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "api: new server: ") {
				t.Errorf("error %q, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestCertificateReload: a renewed certificate is served without a
// restart; a half-written one does not replace the working one.
func TestCertificateReload(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, newFake(primaryState()), ServerOptions{CertFile: p.serverCert, KeyFile: p.serverKey})
	srv.certs.SetCheckInterval(0)
	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	servedCN := func() string {
		t.Helper()
		conn, err := tls.Dial("tcp", srv.Addr().String(), &tls.Config{RootCAs: pool})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if cn := servedCN(); cn != "pg-0" {
		t.Fatalf("served %q", cn)
	}

	// Renew: a new certificate and key at the same paths.
	renewedCert, renewedKey := p.issueFiles(t, "renewed", "pg-0-renewed", p.ca, p.caKey, x509.ExtKeyUsageServerAuth)
	for _, mv := range [][2]string{{renewedCert, p.serverCert}, {renewedKey, p.serverKey}} {
		if err := os.Rename(mv[0], mv[1]); err != nil {
			t.Fatal(err)
		}
	}
	if cn := servedCN(); cn != "pg-0-renewed" {
		t.Errorf("after renewal served %q", cn)
	}

	// A certificate replaced but its key not yet: keep serving the old pair.
	other, _ := p.issueFiles(t, "next", "pg-0-next", p.ca, p.caKey, x509.ExtKeyUsageServerAuth)
	if err := os.Rename(other, p.serverCert); err != nil {
		t.Fatal(err)
	}
	if cn := servedCN(); cn != "pg-0-renewed" {
		t.Errorf("with a mismatched pair served %q, want the previous certificate", cn)
	}
}
