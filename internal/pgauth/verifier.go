package pgauth

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Mechanism is the SASL mechanism name of SCRAM-SHA-256.
const Mechanism = "SCRAM-SHA-256"

// DefaultIterations is PostgreSQL's default scram_iterations; mock
// verifiers use it unless told otherwise, so that an unknown user looks
// like a user whose password was set with the defaults.
const DefaultIterations = 4096

// DefaultSaltLen is the salt length PostgreSQL uses (SCRAM_DEFAULT_SALT_LEN).
const DefaultSaltLen = 16

// KeyLen is the length of SHA-256 digests: StoredKey, ServerKey,
// ClientKey, proofs and signatures.
const KeyLen = sha256.Size

// verifierPrefix starts every SCRAM-SHA-256 secret in pg_authid.rolpassword.
const verifierPrefix = Mechanism + "$"

// Labels of RFC 5802's key derivation.
const (
	clientKeyLabel = "Client Key"
	serverKeyLabel = "Server Key"
)

// ErrNotSCRAM is wrapped by ParseVerifier's error when the secret is not a
// SCRAM-SHA-256 verifier at all (an md5 hash, a plain password, empty).
// PostgreSQL cannot do SCRAM with such a role either.
var ErrNotSCRAM = errors.New("not a SCRAM-SHA-256 secret")

// Verifier is a role's SCRAM-SHA-256 secret as PostgreSQL stores it:
// SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> (base64).
// It is not the password and does not let anyone log in as the role, but
// it allows an offline guess at the password: treat it as a secret (never
// log it; errors from this package never quote it).
type Verifier struct {
	Iterations int
	Salt       []byte
	StoredKey  [KeyLen]byte
	ServerKey  [KeyLen]byte
}

// ParseVerifier parses a pg_authid.rolpassword value. Its errors say which
// part is wrong but never quote the secret; a secret that is not SCRAM at
// all wraps ErrNotSCRAM.
func ParseVerifier(s string) (Verifier, error) {
	const op = "parse SCRAM verifier"
	rest, ok := strings.CutPrefix(s, verifierPrefix)
	if !ok {
		return Verifier{}, fmt.Errorf("%s: %w (it does not start with %q)", op, ErrNotSCRAM, verifierPrefix)
	}
	params, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return Verifier{}, fmt.Errorf("%s: no '$' between <iterations>:<salt> and <StoredKey>:<ServerKey>", op)
	}
	iterText, saltText, ok := strings.Cut(params, ":")
	if !ok {
		return Verifier{}, fmt.Errorf("%s: no ':' between iterations and salt", op)
	}
	var v Verifier
	var err error
	if v.Iterations, err = parseIterations(iterText); err != nil {
		return Verifier{}, fmt.Errorf("%s: %w", op, err)
	}
	if v.Salt, err = base64.StdEncoding.DecodeString(saltText); err != nil || len(v.Salt) == 0 {
		return Verifier{}, fmt.Errorf("%s: the salt is not non-empty base64", op)
	}
	storedText, serverText, ok := strings.Cut(keys, ":")
	if !ok {
		return Verifier{}, fmt.Errorf("%s: no ':' between StoredKey and ServerKey", op)
	}
	if err := decodeKey(storedText, &v.StoredKey); err != nil {
		return Verifier{}, fmt.Errorf("%s: StoredKey: %w", op, err)
	}
	if err := decodeKey(serverText, &v.ServerKey); err != nil {
		return Verifier{}, fmt.Errorf("%s: ServerKey: %w", op, err)
	}
	return v, nil
}

// parseIterations accepts a decimal iteration count from 1 to MaxInt32
// (PostgreSQL's scram_iterations range).
func parseIterations(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > math.MaxInt32 || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("iteration count is not a decimal number from 1 to %d", math.MaxInt32)
	}
	return n, nil
}

// decodeKey decodes base64 text that must hold exactly KeyLen bytes.
func decodeKey(s string, dst *[KeyLen]byte) error {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return fmt.Errorf("not base64")
	}
	if len(b) != KeyLen {
		return fmt.Errorf("%d bytes, want %d", len(b), KeyLen)
	}
	copy(dst[:], b)
	return nil
}

// Encode renders the verifier as PostgreSQL stores it in
// pg_authid.rolpassword (a secret: see Verifier).
func (v Verifier) Encode() string {
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("%s%d:%s$%s:%s", verifierPrefix, v.Iterations, b64(v.Salt), b64(v.StoredKey[:]), b64(v.ServerKey[:]))
}

// String describes the verifier without its salt and keys, so that
// printing one (or Credentials) by mistake does not log a secret.
func (v Verifier) String() string {
	return fmt.Sprintf("SCRAM-SHA-256 verifier (%d iterations, salt and keys redacted)", v.Iterations)
}

// GoString hides the salt and keys from %#v too.
func (v Verifier) GoString() string { return v.String() }

// NewVerifier computes the verifier of password with salt and iterations,
// as PostgreSQL does for a password that SASLprep leaves unchanged
// (printable ASCII); holdfast never needs it for clients (it works from
// verifiers), only to make test vectors and to check them.
func NewVerifier(password string, salt []byte, iterations int) (Verifier, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, KeyLen)
	if err != nil {
		return Verifier{}, fmt.Errorf("compute SCRAM verifier: %w", err)
	}
	ck := DeriveClientKey(salted)
	v := Verifier{Iterations: iterations, Salt: append([]byte(nil), salt...), StoredKey: sha256.Sum256(ck[:])}
	copy(v.ServerKey[:], hmacSHA256(salted, serverKeyLabel))
	return v, nil
}

// DeriveClientKey is HMAC(SaltedPassword, "Client Key"): what a client
// derives from its password, and what Server recovers from a client's
// proof.
func DeriveClientKey(saltedPassword []byte) ClientKey {
	var k ClientKey
	copy(k[:], hmacSHA256(saltedPassword, clientKeyLabel))
	return k
}

// Matches reports, in constant time, whether k is the ClientKey this
// verifier was made from: SHA-256(k) == StoredKey.
func (v Verifier) Matches(k ClientKey) bool {
	h := sha256.Sum256(k[:])
	return hmac.Equal(h[:], v.StoredKey[:])
}

// MockVerifier returns the verifier the server side runs the exchange
// against for a user that has none (does not exist, cannot log in, no
// SCRAM secret, expired), as PostgreSQL does with its mock authentication
// nonce: a salt and keys derived from secret and the user name, so that
// asking twice for the same unknown user gives the same salt — a fresh
// random salt each time would reveal that the user does not exist. Every
// proxy of a cluster must use the same secret (a proxy that answered with
// a different salt than its neighbour for the same name would reveal it
// too), and it must stay secret. No password matches a mock verifier in
// practice; Server fails such an exchange regardless.
func MockVerifier(secret []byte, username string, iterations int) Verifier {
	v := Verifier{Iterations: iterations}
	v.Salt = mockHMAC(secret, "salt", username)[:DefaultSaltLen]
	copy(v.StoredKey[:], mockHMAC(secret, "stored key", username))
	copy(v.ServerKey[:], mockHMAC(secret, "server key", username))
	return v
}

// mockHMAC is HMAC(secret, label NUL username): labels keep the three
// derived values independent.
func mockHMAC(secret []byte, label, username string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(label))
	m.Write([]byte{0})
	m.Write([]byte(username))
	return m.Sum(nil)
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// ClientKey is HMAC(SaltedPassword, "Client Key"): with the verifier's
// salt and iteration count it logs in as its user wherever the user's
// password is unchanged — a secret as good as the password for logging in
// (though not the password itself). It prints as a placeholder so that it
// cannot end up in a log by accident.
type ClientKey [KeyLen]byte

// String hides the key.
func (ClientKey) String() string { return "pgauth.ClientKey(redacted)" }

// GoString hides the key from %#v too.
func (ClientKey) GoString() string { return "pgauth.ClientKey(redacted)" }
