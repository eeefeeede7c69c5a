package pgauth

import (
	"crypto/hmac"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrServerSignature is wrapped when a server's final message does not
// carry the signature only a holder of the user's verifier (ServerKey)
// can compute: the server is not the database it claims to be, or the
// user's password changed. Do not retry against that server.
var ErrServerSignature = errors.New("server signature does not match: the server does not hold this user's verifier")

// ErrStaleCredentials is wrapped when a server's salt or iteration count
// differs from the verifier the client authenticated against: the
// password was changed since, and the ClientKey cannot log in any more.
// The client must authenticate again (reconnect).
var ErrStaleCredentials = errors.New("the server's SCRAM salt or iteration count differs from the verifier the client authenticated against (password changed?)")

// Credentials log in as a user who proved its password to the proxy: the
// ClientKey recovered from the client's proof and the verifier it was
// checked against (salt, iteration count, and ServerKey to check the
// servers). They are a secret as good as a password for logging in; keep
// them in memory for the client's session only.
type Credentials struct {
	Username  string
	ClientKey ClientKey
	Verifier  Verifier
}

// clientState is where a Client is in the exchange.
type clientState int

const (
	clientAwaitFirst clientState = iota // client-first sent
	clientAwaitFinal                    // client-final sent
	clientDone                          // finished, successfully or not
)

// Client is the client side of one SCRAM-SHA-256 exchange that uses a
// ClientKey instead of a password, a pure state machine: First, then
// ServerFirst, then ServerFinal. It does no I/O. One goroutine uses it; it
// is not reusable.
type Client struct {
	cred        Credentials
	state       clientState
	nonce       string
	first       []byte // client-first-message
	authMessage []byte
}

// NewClient starts an exchange with credentials from Server.ClientFinal;
// the client nonce is read from rnd (crypto/rand.Reader in production).
// It fails only when rnd does, or when the credentials are inconsistent
// (the ClientKey does not match the verifier's StoredKey).
func NewClient(cred Credentials, rnd io.Reader) (*Client, error) {
	const op = "start SCRAM login"
	if !cred.Verifier.Matches(cred.ClientKey) {
		return nil, fmt.Errorf("%s: the ClientKey does not match the verifier", op)
	}
	nonce, err := newNonce(rnd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	// PostgreSQL takes the user from the startup message and ignores this
	// one; libpq sends it empty, and so do we (a name would need SASLprep
	// and escaping for nothing).
	return newClient(cred, nonce, ""), nil
}

// newClient is NewClient with a given nonce and SCRAM username attribute
// (tests replay RFC 7677's example with it).
func newClient(cred Credentials, nonce, scramUser string) *Client {
	bare := "n=" + scramUser + ",r=" + nonce
	return &Client{cred: cred, nonce: nonce, first: []byte(gs2NoBinding + bare), authMessage: []byte(bare + ",")}
}

// First returns the client-first-message (the data of the
// SASLInitialResponse).
func (c *Client) First() []byte { return c.first }

// ServerFirst takes the server-first-message (the data of
// AuthenticationSASLContinue) and returns the client-final-message. Errors
// wrap ErrProtocol (malformed, or a nonce that does not extend ours) or
// ErrStaleCredentials.
func (c *Client) ServerFirst(msg []byte) ([]byte, error) {
	if c.state != clientAwaitFirst {
		c.state = clientDone
		return nil, errors.New("SCRAM server-first: called out of order")
	}
	c.state = clientDone
	sf, err := parseServerFirst(string(msg))
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(sf.nonce, c.nonce) || len(sf.nonce) == len(c.nonce) {
		return nil, protocolErr("server-first-message", "the nonce does not extend the client's")
	}
	v := c.cred.Verifier
	if sf.iterations != v.Iterations || !hmac.Equal(sf.salt, v.Salt) {
		return nil, fmt.Errorf("SCRAM login as %s: %w", quoteUser(c.cred.Username), ErrStaleCredentials)
	}
	withoutProof := "c=" + base64.StdEncoding.EncodeToString([]byte(gs2NoBinding)) + ",r=" + sf.nonce
	c.authMessage = append(append(append(c.authMessage, msg...), ','), withoutProof...)
	stored := storedKeyOf(c.cred.ClientKey)
	clientSig := hmacBytes(stored[:], c.authMessage)
	proof := make([]byte, KeyLen)
	subtle.XORBytes(proof, c.cred.ClientKey[:], clientSig)
	c.state = clientAwaitFinal
	return []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof)), nil
}

// ServerFinal checks the server-final-message (the data of
// AuthenticationSASLFinal): nil when the server proved it holds the
// verifier's ServerKey. Errors wrap ErrServerSignature or ErrProtocol (an
// "e=" error from the server included).
func (c *Client) ServerFinal(msg []byte) error {
	if c.state != clientAwaitFinal {
		c.state = clientDone
		return errors.New("SCRAM server-final: called out of order")
	}
	c.state = clientDone
	sig, err := parseServerFinal(string(msg))
	if err != nil {
		return err
	}
	want := hmacBytes(c.cred.Verifier.ServerKey[:], c.authMessage)
	if !hmac.Equal(sig[:], want) {
		return fmt.Errorf("SCRAM login as %s: %w", quoteUser(c.cred.Username), ErrServerSignature)
	}
	return nil
}
