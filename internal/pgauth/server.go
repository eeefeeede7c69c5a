package pgauth

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// MinMockSecretLen is the shortest mock secret NewServer accepts.
const MinMockSecretLen = 16

// ErrAuthFailed is wrapped by the error of an exchange whose client did
// not prove it knows the password: a wrong password, or a user without a
// usable verifier (the mock exchange). Both look the same to the client
// (PostgreSQL: "password authentication failed for user ...", SQLSTATE
// 28P01); the error text, for the proxy's log only, tells them apart. A
// retry with the same password cannot help.
var ErrAuthFailed = errors.New("password authentication failed")

// ServerOptions configure one server-side exchange.
type ServerOptions struct {
	// Username is the user of the client's startup message. PostgreSQL
	// ignores the SCRAM username attribute, and so does Server.
	Username string
	// Verifier is the user's verifier from the auth query, or nil when the
	// user has none (FetchVerifier's Lookup.Verifier): then the exchange
	// runs against MockVerifier(MockSecret, Username, MockIterations) and
	// fails at the end.
	Verifier *Verifier
	// MockSecret keys the mock verifiers (see MockVerifier): the same for
	// every proxy of a cluster, at least MinMockSecretLen bytes. Required
	// even when Verifier is set, so a missing secret shows on the first
	// connection, not on the first unknown user.
	MockSecret []byte
	// MockIterations is the mock verifiers' iteration count: the one most
	// roles have (0 means DefaultIterations).
	MockIterations int
	// Rand supplies the server nonce (crypto/rand.Reader in production).
	Rand io.Reader
}

// serverState is where a Server is in the exchange.
type serverState int

const (
	serverAwaitFirst serverState = iota // before client-first
	serverAwaitFinal                    // server-first sent
	serverDone                          // finished, successfully or not
)

// Server is the server side of one SCRAM-SHA-256 exchange, a pure state
// machine over message bytes: ClientFirst, then ClientFinal. It does no
// I/O. One goroutine uses it; it is not reusable.
type Server struct {
	o        ServerOptions
	verifier Verifier
	mock     bool // no real verifier: fail at the end whatever the proof
	// serverNonce makes the server's half of the nonce; tests replace it
	// to replay RFC 7677's example, whose nonce is not base64.
	serverNonce func() (string, error)

	state       serverState
	gs2Header   string
	nonce       string // client nonce + server nonce
	authMessage []byte // client-first-bare "," server-first ","
}

// NewServer starts an exchange. Its errors are configuration errors.
func NewServer(o ServerOptions) (*Server, error) {
	const op = "start SCRAM exchange"
	if o.Username == "" {
		return nil, fmt.Errorf("%s: no user name", op)
	}
	if len(o.MockSecret) < MinMockSecretLen {
		return nil, fmt.Errorf("%s: the mock secret has %d bytes, need at least %d", op, len(o.MockSecret), MinMockSecretLen)
	}
	if o.Rand == nil {
		return nil, fmt.Errorf("%s: no random source", op)
	}
	if o.MockIterations == 0 {
		o.MockIterations = DefaultIterations
	}
	s := &Server{o: o, serverNonce: func() (string, error) { return newNonce(o.Rand) }}
	if o.Verifier != nil {
		s.verifier = *o.Verifier
	} else {
		s.verifier = MockVerifier(o.MockSecret, o.Username, o.MockIterations)
		s.mock = true
	}
	return s, nil
}

// ClientFirst takes the client-first-message (the data of the
// SASLInitialResponse) and returns the server-first-message. The server
// nonce is read from Rand. Errors wrap ErrProtocol (the message is
// malformed or asks for channel binding, an authorization identity or a
// mandatory extension) or are a failure of Rand or a call out of order;
// after an error the exchange is over.
func (s *Server) ClientFirst(msg []byte) ([]byte, error) {
	if s.state != serverAwaitFirst {
		s.state = serverDone
		return nil, errors.New("SCRAM client-first: called out of order")
	}
	s.state = serverDone
	cf, err := parseClientFirst(string(msg))
	if err != nil {
		return nil, err
	}
	serverNonce, err := s.serverNonce()
	if err != nil {
		return nil, fmt.Errorf("SCRAM client-first: %w", err)
	}
	s.gs2Header = cf.gs2Header
	s.nonce = cf.nonce + serverNonce
	first := "r=" + s.nonce + ",s=" + base64.StdEncoding.EncodeToString(s.verifier.Salt) + ",i=" + strconv.Itoa(s.verifier.Iterations)
	s.authMessage = []byte(cf.bare + "," + first + ",")
	s.state = serverAwaitFinal
	return []byte(first), nil
}

// ClientFinal takes the client-final-message (the data of the
// SASLResponse). When the proof matches the verifier it returns the
// server-final-message (to send in AuthenticationSASLFinal) and the
// client's credentials, with the ClientKey recovered from the proof.
// Otherwise the error wraps ErrAuthFailed (wrong proof, or no real
// verifier) or ErrProtocol (malformed message, channel binding data that
// does not repeat the gs2 header, a nonce other than the one of this
// exchange). Proof and key are compared in constant time; a mock exchange
// does the same work as a real one.
func (s *Server) ClientFinal(msg []byte) ([]byte, Credentials, error) {
	if s.state != serverAwaitFinal {
		s.state = serverDone
		return nil, Credentials{}, errors.New("SCRAM client-final: called out of order")
	}
	s.state = serverDone
	cf, err := parseClientFinal(string(msg))
	if err != nil {
		return nil, Credentials{}, err
	}
	if string(cf.channelBinding) != s.gs2Header {
		return nil, Credentials{}, protocolErr("client-final-message", "the channel binding data does not repeat the gs2 header of client-first-message")
	}
	if subtle.ConstantTimeCompare([]byte(cf.nonce), []byte(s.nonce)) != 1 {
		return nil, Credentials{}, protocolErr("client-final-message", "the nonce does not match")
	}
	authMessage := append(s.authMessage, cf.withoutProof...)
	clientSig := hmacBytes(s.verifier.StoredKey[:], authMessage)
	var key ClientKey
	subtle.XORBytes(key[:], cf.proof[:], clientSig)
	if !s.verifier.Matches(key) || s.mock {
		if s.mock {
			return nil, Credentials{}, fmt.Errorf("%w for user %s: the role has no usable SCRAM verifier (mock exchange)", ErrAuthFailed, quoteUser(s.o.Username))
		}
		return nil, Credentials{}, fmt.Errorf("%w for user %s: the client proof does not match the verifier", ErrAuthFailed, quoteUser(s.o.Username))
	}
	serverSig := hmacBytes(s.verifier.ServerKey[:], authMessage)
	final := "v=" + base64.StdEncoding.EncodeToString(serverSig)
	return []byte(final), Credentials{Username: s.o.Username, ClientKey: key, Verifier: s.verifier}, nil
}

func hmacBytes(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

// storedKeyOf is SHA-256(ClientKey).
func storedKeyOf(k ClientKey) [KeyLen]byte { return sha256.Sum256(k[:]) }
