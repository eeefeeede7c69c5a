package pgauth

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/holdfast/holdfast/internal/quote"
)

// nonceLen is the number of random bytes in a nonce (PostgreSQL uses 18,
// 24 characters of base64).
const nonceLen = 18

// gs2 headers without channel binding: "n" the client does not support
// it, "y" it does but believes the server does not. No authzid.
const (
	gs2NoBinding       = "n,,"
	gs2BindingUnneeded = "y,,"
)

// ErrProtocol is wrapped by every error about a SCRAM message that does
// not follow RFC 5802 as PostgreSQL speaks it (PostgreSQL: "malformed
// SCRAM message", SQLSTATE 08P01). A retry with the same client cannot
// help. Use errors.As with *ProtocolError for the detail.
var ErrProtocol = errors.New("malformed SCRAM message")

// ProtocolError describes what was wrong with a SCRAM message. Detail
// never quotes a secret; it may be shown to the client.
type ProtocolError struct {
	// Message names the message ("client-first-message", ...).
	Message string
	// Detail says what is wrong with it.
	Detail string
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("%v: %s: %s", ErrProtocol, e.Message, e.Detail)
}

// Is makes errors.Is(err, ErrProtocol) true.
func (e *ProtocolError) Is(target error) bool { return target == ErrProtocol }

func protocolErr(message, format string, args ...any) error {
	return &ProtocolError{Message: message, Detail: fmt.Sprintf(format, args...)}
}

// newNonce reads nonceLen bytes from r and returns them in base64, which
// is printable and has no ','.
func newNonce(r io.Reader) (string, error) {
	var b [nonceLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", fmt.Errorf("read random bytes for a SCRAM nonce: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b[:]), nil
}

// validNonce: printable ASCII except ',' (RFC 5802 "printable"), non-empty.
func validNonce(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == ',' {
			return false
		}
	}
	return true
}

// attr splits "k=value" where k is the single letter want; ok is false
// when part is not such an attribute.
func attr(part string, want byte) (string, bool) {
	if len(part) < 2 || part[0] != want || part[1] != '=' {
		return "", false
	}
	return part[2:], true
}

// isExtension reports whether part is an attribute "x=..." with a letter
// name, the form of the optional extensions RFC 5802 allows.
func isExtension(part string) bool {
	if len(part) < 2 || part[1] != '=' {
		return false
	}
	c := part[0]
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

// clientFirst is a parsed client-first-message.
type clientFirst struct {
	gs2Header string // "n,," or "y,,"
	bare      string // client-first-message-bare, for the AuthMessage
	nonce     string
}

// parseClientFirst parses gs2-header client-first-message-bare. The
// username attribute is required by the grammar but, as in PostgreSQL,
// ignored: the user is the one of the startup message.
func parseClientFirst(msg string) (clientFirst, error) {
	const name = "client-first-message"
	var cf clientFirst
	switch {
	case strings.HasPrefix(msg, "p="):
		cb, _, _ := strings.Cut(msg[2:], ",")
		return cf, protocolErr(name, "the client requires channel binding (%s), which this server does not offer: use SCRAM-SHA-256 without channel binding (e.g. channel_binding=disable or prefer)", quote.Value(cb))
	case strings.HasPrefix(msg, "n,"), strings.HasPrefix(msg, "y,"):
		// "y" (the client could bind but believes we cannot) is right
		// because this server never offers SCRAM-SHA-256-PLUS. A server
		// that offers it (over TLS) must refuse "y": it means a
		// man in the middle removed -PLUS from the offer.
	default:
		return cf, protocolErr(name, "it does not start with a channel binding flag 'n,' or 'y,'")
	}
	authzid, bare, ok := strings.Cut(msg[2:], ",")
	if !ok {
		return cf, protocolErr(name, "no ',' after the authorization identity")
	}
	if authzid != "" {
		return cf, protocolErr(name, "the client uses an authorization identity (a=), which is not supported")
	}
	cf.gs2Header = msg[:3]
	cf.bare = bare
	parts := strings.Split(bare, ",")
	if _, ok := attr(parts[0], 'm'); ok {
		return cf, protocolErr(name, "the client requires an unsupported SCRAM extension (m=)")
	}
	if _, ok := attr(parts[0], 'n'); !ok {
		return cf, protocolErr(name, "expected the username attribute 'n='")
	}
	if len(parts) < 2 {
		return cf, protocolErr(name, "no nonce attribute 'r='")
	}
	nonce, ok := attr(parts[1], 'r')
	if !ok {
		return cf, protocolErr(name, "expected the nonce attribute 'r='")
	}
	if !validNonce(nonce) {
		return cf, protocolErr(name, "the nonce is empty or has characters other than printable ASCII")
	}
	cf.nonce = nonce
	for _, p := range parts[2:] {
		if !isExtension(p) {
			return cf, protocolErr(name, "garbage after the nonce")
		}
	}
	return cf, nil
}

// clientFinal is a parsed client-final-message.
type clientFinal struct {
	channelBinding []byte // decoded c=
	nonce          string
	withoutProof   string // client-final-message-without-proof
	proof          [KeyLen]byte
}

// parseClientFinal parses c=...,r=...[,ext...],p=... .
func parseClientFinal(msg string) (clientFinal, error) {
	const name = "client-final-message"
	var cf clientFinal
	parts := strings.Split(msg, ",")
	if len(parts) < 3 {
		return cf, protocolErr(name, "expected c=, r= and p= attributes")
	}
	cb, ok := attr(parts[0], 'c')
	if !ok {
		return cf, protocolErr(name, "expected the channel binding attribute 'c='")
	}
	var err error
	if cf.channelBinding, err = base64.StdEncoding.DecodeString(cb); err != nil {
		return cf, protocolErr(name, "the channel binding attribute is not base64")
	}
	if cf.nonce, ok = attr(parts[1], 'r'); !ok {
		return cf, protocolErr(name, "expected the nonce attribute 'r='")
	}
	for _, p := range parts[2 : len(parts)-1] {
		if !isExtension(p) {
			return cf, protocolErr(name, "garbage between the nonce and the proof")
		}
	}
	last := parts[len(parts)-1]
	proof, ok := attr(last, 'p')
	if !ok {
		return cf, protocolErr(name, "the last attribute is not the proof 'p='")
	}
	if err := decodeKey(proof, &cf.proof); err != nil {
		return cf, protocolErr(name, "the proof is %v", err)
	}
	cf.withoutProof = msg[:len(msg)-len(last)-1]
	return cf, nil
}

// serverFirst is a parsed server-first-message.
type serverFirst struct {
	nonce      string
	salt       []byte
	iterations int
}

// parseServerFirst parses r=...,s=...,i=...[,ext...].
func parseServerFirst(msg string) (serverFirst, error) {
	const name = "server-first-message"
	var sf serverFirst
	parts := strings.Split(msg, ",")
	if _, ok := attr(parts[0], 'm'); ok {
		return sf, protocolErr(name, "the server requires an unsupported SCRAM extension (m=)")
	}
	if len(parts) < 3 {
		return sf, protocolErr(name, "expected r=, s= and i= attributes")
	}
	var ok bool
	if sf.nonce, ok = attr(parts[0], 'r'); !ok || !validNonce(sf.nonce) {
		return sf, protocolErr(name, "expected a nonce attribute 'r=' of printable ASCII")
	}
	salt, ok := attr(parts[1], 's')
	if !ok {
		return sf, protocolErr(name, "expected the salt attribute 's='")
	}
	var err error
	if sf.salt, err = base64.StdEncoding.DecodeString(salt); err != nil || len(sf.salt) == 0 {
		return sf, protocolErr(name, "the salt is not non-empty base64")
	}
	iter, ok := attr(parts[2], 'i')
	if !ok {
		return sf, protocolErr(name, "expected the iteration count attribute 'i='")
	}
	if sf.iterations, err = parseIterations(iter); err != nil {
		return sf, protocolErr(name, "%v", err)
	}
	for _, p := range parts[3:] {
		if !isExtension(p) {
			return sf, protocolErr(name, "garbage after the iteration count")
		}
	}
	return sf, nil
}

// parseServerFinal returns the server signature of "v=..." or the error
// the server sent as "e=...".
func parseServerFinal(msg string) ([KeyLen]byte, error) {
	const name = "server-final-message"
	var sig [KeyLen]byte
	first, _, _ := strings.Cut(msg, ",")
	if e, ok := attr(first, 'e'); ok {
		return sig, protocolErr(name, "the server refused: %s", quote.Value(e))
	}
	v, ok := attr(first, 'v')
	if !ok {
		return sig, protocolErr(name, "expected the verifier attribute 'v='")
	}
	if err := decodeKey(v, &sig); err != nil {
		return sig, protocolErr(name, "the server signature is %v", err)
	}
	return sig, nil
}
