package proxy

// Session mode's TLS: terminating the clients' TLS on the read-write
// listener (SSLRequest answered 'S'), and TLS from the proxy to the members
// (logins as the client, cancel requests, the auth query), with libpq's
// sslmode names. The decisions are pure functions (clientTLSPolicy,
// serverAnswer, serverTLS.config); the effects are thin around them.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/holdfast/holdfast/internal/certfile"
)

// Server TLS modes (SessionOptions.ServerSSLMode): libpq's sslmode values,
// with libpq's meaning.
const (
	// SSLDisable connects to members in clear (no SSLRequest).
	SSLDisable = "disable"
	// SSLPrefer asks for TLS and goes on in clear when the member has
	// none (ssl = off); the certificate is not checked. The default: a
	// member with ssl = on gets TLS, one without works as before. It
	// protects against listening, not against a man in the middle (who can
	// answer 'N').
	SSLPrefer = "prefer"
	// SSLRequire refuses a member without TLS. The certificate is checked
	// against ServerCAFile when one is given (as libpq does with a root
	// certificate), otherwise not at all.
	SSLRequire = "require"
	// SSLVerifyCA requires TLS and a certificate signed by ServerCAFile
	// (or the system's roots), whatever host it names.
	SSLVerifyCA = "verify-ca"
	// SSLVerifyFull is SSLVerifyCA plus the certificate must name the
	// member's host as the view gives it (DNS name or IP address).
	SSLVerifyFull = "verify-full"
)

// DefaultServerSSLMode is SessionOptions.ServerSSLMode's default.
const DefaultServerSSLMode = SSLPrefer

// ServerSSLModes lists the valid server modes, for messages.
func ServerSSLModes() []string {
	return []string{SSLDisable, SSLPrefer, SSLRequire, SSLVerifyCA, SSLVerifyFull}
}

// sslRequestCode and gssEncRequestCode are the protocol codes of an
// SSLRequest and a GSSENCRequest (each sent as an 8-byte packet: length
// 8, then the code).
const (
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
	// encRequestLen is the length of both packets.
	encRequestLen = 8
)

// alpnPostgreSQL is the ALPN protocol name PostgreSQL 17 clients and
// servers use; the proxy offers it to clients that ask for one.
const alpnPostgreSQL = "postgresql"

// errClientTLSRequired is the refusal of a clear-text client when
// SessionOptions.RequireTLS is set (sent as FATAL 28000).
var errClientTLSRequired = errors.New("TLS is required: connect with sslmode=require, verify-ca or verify-full (sslmode=prefer works too)")

// clientTLSPolicy is what session mode does about a client's encryption:
// offer is whether it has a certificate (answers SSLRequest with 'S'),
// require whether it refuses clients that did not negotiate TLS.
type clientTLSPolicy struct {
	offer, require bool
}

// String names the policy for the log: "off" (SSLRequest answered 'N'),
// "offered" or "required".
func (pol clientTLSPolicy) String() string {
	switch {
	case pol.require:
		return "required"
	case pol.offer:
		return "offered"
	}
	return "off"
}

// onSSLRequest returns the answer to an SSLRequest: 'S' (the TLS
// handshake follows) when the proxy has a certificate, 'N' (go on in
// clear, as PostgreSQL with ssl = off) when it has none. An SSLRequest on
// a connection already encrypted is a protocol violation (PostgreSQL
// refuses it too).
func (pol clientTLSPolicy) onSSLRequest(onTLS bool) (byte, error) {
	switch {
	case onTLS:
		return 0, errors.New("SSLRequest on a connection already encrypted")
	case pol.offer:
		return 'S', nil
	}
	return 'N', nil
}

// onGSSENCRequest returns the answer to a GSSENCRequest: always 'N' (the
// proxy has no GSSAPI encryption; libpq then asks for TLS or goes on in
// clear), and an error on a connection already encrypted.
func (pol clientTLSPolicy) onGSSENCRequest(onTLS bool) (byte, error) {
	if onTLS {
		return 0, errors.New("GSSENCRequest on a connection already encrypted")
	}
	return 'N', nil
}

// admitStartup says whether a startup packet may proceed: with require,
// only over TLS (errClientTLSRequired otherwise). A cancel request is
// admitted either way, as PostgreSQL does: libpq sends it in clear, and
// its key is its credential.
func (pol clientTLSPolicy) admitStartup(onTLS bool) error {
	if pol.require && !onTLS {
		return errClientTLSRequired
	}
	return nil
}

// loadClientTLS builds the listener's TLS configuration from a PEM
// certificate (chain) and key file; nil when neither is given. The files
// are loaded now (an error names them) and looked at again on handshakes
// (certfile.Pair).
func loadClientTLS(certFile, keyFile string, log *slog.Logger) (*tls.Config, error) {
	switch {
	case certFile == "" && keyFile == "":
		return nil, nil
	case certFile == "" || keyFile == "":
		return nil, errors.New("session mode: TLS to clients needs both a certificate file and a key file (--tls-cert-file, --tls-key-file)")
	}
	cf, err := certfile.Load(certFile, keyFile, "proxy clients", log)
	if err != nil {
		return nil, fmt.Errorf("session mode: %w", err)
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: cf.GetCertificate,
		// Offered only to clients that ask for ALPN (PostgreSQL 17's
		// libpq asks for this one).
		NextProtos: []string{alpnPostgreSQL},
	}, nil
}

// serverTLS is how the proxy secures its connections to members.
type serverTLS struct {
	mode string
	// roots verifies the members' certificates; nil: the system's roots.
	roots *x509.CertPool
	// caFile is where roots came from ("" when the system's).
	caFile string
}

// newServerTLS checks mode and loads caFile (PEM, one or more
// certificates).
func newServerTLS(mode, caFile string) (serverTLS, error) {
	if mode == "" {
		mode = DefaultServerSSLMode
	}
	if !slices.Contains(ServerSSLModes(), mode) {
		return serverTLS{}, fmt.Errorf("session mode: server sslmode %q: want one of %s", mode, strings.Join(ServerSSLModes(), ", "))
	}
	s := serverTLS{mode: mode, caFile: caFile}
	if caFile == "" {
		return s, nil
	}
	if mode == SSLDisable || mode == SSLPrefer {
		return serverTLS{}, fmt.Errorf("session mode: a server CA file (%s) is used only with server sslmode require, verify-ca or verify-full, not %s", caFile, mode)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return serverTLS{}, fmt.Errorf("session mode: read the server CA file: %w", err)
	}
	s.roots = x509.NewCertPool()
	if !s.roots.AppendCertsFromPEM(pem) {
		return serverTLS{}, fmt.Errorf("session mode: the server CA file %s holds no PEM certificate", caFile)
	}
	return s, nil
}

// verifies says whether the members' certificates are checked against
// the roots (not only encrypted).
func (s serverTLS) verifies() bool {
	return s.mode == SSLVerifyCA || s.mode == SSLVerifyFull || s.mode == SSLRequire && s.roots != nil
}

// config is the TLS configuration for a member at host (the host part of
// its address in the view); nil with SSLDisable.
func (s serverTLS) config(host string) *tls.Config {
	switch {
	case s.mode == SSLDisable:
		return nil
	case s.mode == SSLVerifyFull:
		// crypto/tls checks the chain and that the certificate names host
		// (an IP address against its IP SANs).
		return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: s.roots, ServerName: host}
	case s.verifies():
		// verify-ca: the chain only. crypto/tls cannot skip just the name
		// check, so the chain is checked here.
		roots := s.roots
		return &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true,
			VerifyConnection: func(cs tls.ConnectionState) error { return verifyChain(cs, roots) }}
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true}
}

// verifyChain checks that the peer's certificate chains to roots (nil:
// the system's), whatever name it carries.
func verifyChain(cs tls.ConnectionState, roots *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the member sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
	if err != nil {
		return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
	}
	return nil
}

// errServerNoTLS is wrapped when a member answered an SSLRequest with 'N'
// while the server sslmode requires TLS: a configuration mismatch that
// another attempt will not fix.
var errServerNoTLS = errors.New("the member does not accept TLS (it answered N to SSLRequest: ssl = off?)")

// serverAnswer decides from a member's answer to an SSLRequest whether the
// TLS handshake follows (true), the connection goes on in clear (false,
// nil: SSLPrefer and 'N'), or the proxy gives up (an error).
func serverAnswer(mode string, answer byte) (bool, error) {
	switch answer {
	case 'S':
		return true, nil
	case 'N':
		if mode == SSLPrefer {
			return false, nil
		}
		return false, fmt.Errorf("%w, and the server sslmode is %s", errServerNoTLS, mode)
	case 'E':
		return false, errors.New("the member answered the SSLRequest with an error (it does not understand it)")
	}
	return false, fmt.Errorf("the member answered the SSLRequest with %q, not S or N", answer)
}

// tlsPolicyError says whether err, from negotiating TLS with a member, is
// the configuration's verdict (no TLS where it is required, a certificate
// that does not verify) rather than a failure of the connection: trying
// again will not help, and the error is worth telling.
func tlsPolicyError(err error) bool {
	var cv *tls.CertificateVerificationError
	return errors.Is(err, errServerNoTLS) || errors.As(err, &cv)
}

// negotiate asks the member on conn (at host) for TLS per s, as libpq
// does before its startup packet, and returns the connection to speak the
// protocol on: conn itself (SSLDisable, or SSLPrefer and a member without
// TLS) or a TLS client over it after its handshake. ctx bounds the
// handshake; the caller sets conn's deadline for the rest. Exactly one
// byte of the member's answer is read before the handshake, so nothing
// sent in clear can be taken for encrypted data. On error the caller
// closes conn.
func (s serverTLS) negotiate(ctx context.Context, conn net.Conn, host string) (net.Conn, error) {
	if s.mode == SSLDisable {
		return conn, nil
	}
	var req [encRequestLen]byte
	binary.BigEndian.PutUint32(req[0:4], encRequestLen)
	binary.BigEndian.PutUint32(req[4:8], sslRequestCode)
	if _, err := conn.Write(req[:]); err != nil {
		return nil, fmt.Errorf("send SSLRequest: %w", err)
	}
	var answer [1]byte
	if _, err := io.ReadFull(conn, answer[:]); err != nil {
		return nil, fmt.Errorf("read the answer to SSLRequest: %w", err)
	}
	useTLS, err := serverAnswer(s.mode, answer[0])
	if err != nil || !useTLS {
		return conn, err
	}
	tc := tls.Client(conn, s.config(host))
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake (server sslmode %s): %w", s.mode, err)
	}
	return tc, nil
}
