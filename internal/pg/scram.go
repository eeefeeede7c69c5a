package pg

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
)

// scramIterations is PostgreSQL's default scram_iterations.
const scramIterations = 4096

// scramEncodable reports whether holdfast can compute the SCRAM verifier of
// password itself, which keeps the plain password out of SQL text (and so
// out of server logs and statistics). PostgreSQL applies SASLprep to the
// password first; for printable ASCII that is the identity, for anything
// else it is not, so those passwords are sent for the server to hash.
func scramEncodable(password string) bool {
	if password == "" {
		return false
	}
	for i := 0; i < len(password); i++ {
		if c := password[i]; c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// scramVerifier computes the SCRAM-SHA-256 verifier PostgreSQL stores in
// pg_authid.rolpassword: SCRAM-SHA-256$iter:salt$StoredKey:ServerKey.
func scramVerifier(password string, salt []byte, iterations int) (string, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return "", fmt.Errorf("compute SCRAM verifier: %w", err)
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, b64(salt), b64(storedKey[:]), b64(serverKey)), nil
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// scramMatches reports whether verifier (as stored in pg_authid) was made
// from password, recomputing it with the stored salt and iteration count.
// A malformed or non-SCRAM verifier never matches.
func scramMatches(verifier, password string) bool {
	rest, ok := strings.CutPrefix(verifier, "SCRAM-SHA-256$")
	if !ok {
		return false
	}
	params, _, ok := strings.Cut(rest, "$")
	if !ok {
		return false
	}
	iterText, saltText, ok := strings.Cut(params, ":")
	if !ok {
		return false
	}
	iter, err := strconv.Atoi(iterText)
	if err != nil || iter < 1 || iter > 1<<24 {
		return false
	}
	salt, err := base64.StdEncoding.DecodeString(saltText)
	if err != nil || len(salt) == 0 {
		return false
	}
	want, err := scramVerifier(password, salt, iter)
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(want), []byte(verifier)) == 1
}
