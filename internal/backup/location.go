package backup

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/holdfast/holdfast/internal/config"
)

// CipherType is the cipher an encrypted repository uses.
const CipherType = "aes-256-cbc"

// Repo is a pgBackRest repository: where it is, how to reach it, and
// whether it is encrypted. The zero Repo is no repository.
type Repo struct {
	// Location is the repository as configured: an absolute directory (a
	// POSIX repository) or s3://BUCKET/PATH. Messages name it.
	Location string
	// S3 is set for an S3 repository.
	S3 *S3
	// Encrypted: repo1-cipher-type is CipherType, with Secrets.CipherPass.
	Encrypted bool
	// Secrets are the credentials and the passphrase (never written to
	// pgbackrest.conf nor shown: see Secrets).
	Secrets Secrets
}

// S3 is how pgBackRest reaches an S3-compatible repository.
type S3 struct {
	Bucket string
	// Path is the repository's absolute path in the bucket (repo1-path).
	Path string
	// Host and Port are the endpoint's (Port 0: 443).
	Host   string
	Port   int
	Region string
	// URIStyle is "host" or "path" ("" = pgBackRest's default, host).
	URIStyle string
	// CAFile verifies the endpoint's certificate ("" = the system's CAs).
	CAFile     string
	SkipVerify bool
}

// PosixRepo is the POSIX repository in dir, unencrypted.
func PosixRepo(dir string) Repo { return Repo{Location: dir} }

// String is the repository's location.
func (r Repo) String() string { return r.Location }

// IsS3 reports whether the repository is an S3 bucket.
func (r Repo) IsS3() bool { return r.S3 != nil }

// Endpoint is an S3 repository's host:port, for messages.
func (r Repo) Endpoint() string {
	if r.S3 == nil {
		return ""
	}
	port := r.S3.Port
	if port == 0 {
		port = 443
	}
	return net.JoinHostPort(r.S3.Host, strconv.Itoa(port))
}

// Secrets are an S3 repository's credentials and an encrypted
// repository's passphrase. They reach pgBackRest only in its environment
// (Env) or a file of the PostgreSQL account's, mode 0600 (WriteSecretsFile),
// and print as "[redacted]" whatever the format, so a log line or an error
// that carries a Repo never shows them.
type Secrets struct {
	S3Key, S3Secret, CipherPass string
}

// The pgBackRest environment variables Secrets sets.
const (
	envS3Key      = "PGBACKREST_REPO1_S3_KEY"
	envS3Secret   = "PGBACKREST_REPO1_S3_KEY_SECRET"
	envCipherPass = "PGBACKREST_REPO1_CIPHER_PASS"
)

const redacted = "[redacted]"

func (Secrets) String() string               { return redacted }
func (Secrets) GoString() string             { return redacted }
func (Secrets) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (Secrets) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// Empty reports whether there is no secret.
func (s Secrets) Empty() bool { return s == Secrets{} }

// Env is the secrets as pgBackRest's environment variables.
func (s Secrets) Env() []string {
	var env []string
	for _, kv := range []struct{ k, v string }{{envS3Key, s.S3Key}, {envS3Secret, s.S3Secret}, {envCipherPass, s.CipherPass}} {
		if kv.v != "" {
			env = append(env, kv.k+"="+kv.v)
		}
	}
	return env
}

// encodeSecrets renders the secrets file: one VARIABLE=value a line.
func encodeSecrets(s Secrets) string {
	var b strings.Builder
	for _, kv := range s.Env() {
		b.WriteString(kv + "\n")
	}
	return b.String()
}

// ReadSecretsFile reads the secrets file the agent wrote (holdfast
// archive-push and archive-get read it, running as the PostgreSQL account,
// which owns it). It refuses a file that is not a regular file, that
// another account owns, or that the group or others may read or write
// (mode 0600 expected): secrets in a file someone else could read, or
// could have replaced with their own repository's credentials, are not
// used. The error says what to fix; retrying cannot help until it is.
func ReadSecretsFile(path string) (Secrets, error) {
	const op = "read the repository's secrets"
	f, err := os.Open(path)
	if err != nil {
		return Secrets{}, fmt.Errorf("%s: %w", op, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Secrets{}, fmt.Errorf("%s: %w", op, err)
	}
	if err := checkSecretsFile(path, fi, os.Geteuid()); err != nil {
		return Secrets{}, fmt.Errorf("%s: %w", op, err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return Secrets{}, fmt.Errorf("%s: %w", op, err)
	}
	var s Secrets
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case envS3Key:
			s.S3Key = v
		case envS3Secret:
			s.S3Secret = v
		case envCipherPass:
			s.CipherPass = v
		}
	}
	return s, nil
}

// checkSecretsFile judges the secrets file's metadata for a reader whose
// effective user id is uid: a regular file, owned by uid, mode 0600 or
// stricter.
func checkSecretsFile(path string, fi os.FileInfo, uid int) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file (%s): the agent writes it; restart the agent to write it again", path, fi.Mode().Type())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != uid {
		return fmt.Errorf("%s is owned by uid %d, not by this account (uid %d): it must be the PostgreSQL account's; restart the agent to write it again", path, st.Uid, uid)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s has mode %#o, readable or writable by others: want 0600 (chmod 600 %s)", path, perm, path)
	}
	return nil
}

// NewRepo resolves a member's backup section into a Repo, reading the
// secret files. The section must have passed config.Backup.Problems. An
// unreadable or empty secret file is refused, naming the key and the file
// (never its content).
func NewRepo(b config.Backup) (Repo, error) {
	r := Repo{Location: b.Repository}
	var err error
	if r.Secrets.CipherPass, err = secret("backup.cipher_pass", b.CipherPass, b.CipherPassFile); err != nil {
		return Repo{}, err
	}
	r.Encrypted = r.Secrets.CipherPass != ""
	if !b.IsS3() {
		return r, nil
	}
	bucket, path, err := config.ParseS3Location(b.Repository)
	if err != nil {
		return Repo{}, fmt.Errorf("backup.repository: %w", err)
	}
	s := &S3{Bucket: bucket, Path: path, Host: b.S3.Endpoint, Region: b.S3.Region, URIStyle: b.S3.URIStyle,
		CAFile: b.S3.CAFile, SkipVerify: b.S3.TLSSkipVerify}
	if h, p, err := net.SplitHostPort(b.S3.Endpoint); err == nil {
		s.Host = h
		if s.Port, err = strconv.Atoi(p); err != nil {
			return Repo{}, fmt.Errorf("backup.s3.endpoint %s: port %s is not a number", b.S3.Endpoint, p)
		}
	}
	r.S3 = s
	if r.Secrets.S3Key, err = secret("backup.s3.key", b.S3.Key, b.S3.KeyFile); err != nil {
		return Repo{}, err
	}
	if r.Secrets.S3Secret, err = secret("backup.s3.secret", b.S3.Secret, b.S3.SecretFile); err != nil {
		return Repo{}, err
	}
	if r.Secrets.S3Key == "" || r.Secrets.S3Secret == "" {
		return Repo{}, fmt.Errorf("backup.s3: an S3 repository needs key (or key_file) and secret (or secret_file)")
	}
	return r, nil
}

// secret is value, or the content of file (one line; a final line break
// is dropped).
func secret(key, value, file string) (string, error) {
	if file == "" {
		return value, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("%s_file: read %s: %w (the file must be readable by the account holdfast runs as)", key, file, err)
	}
	v := strings.TrimRight(string(b), "\r\n")
	switch {
	case v == "":
		return "", fmt.Errorf("%s_file %s is empty: write the value in it", key, file)
	case strings.ContainsAny(v, "\n\r\x00"):
		return "", fmt.Errorf("%s_file %s holds more than one line: write only the value", key, file)
	}
	return v, nil
}

// s3ErrorCodeRe finds an S3 error document's code in pgBackRest's message.
var s3ErrorCodeRe = regexp.MustCompile(`<Code>([A-Za-z0-9.]+)</Code>`)

// ExplainRepoError turns pgBackRest's message about a repository it could
// not read (msg) into one that says what is wrong and what to do. A
// message it does not recognise is returned with its first line only.
func ExplainRepoError(r Repo, msg string) string {
	first, _, _ := strings.Cut(strings.TrimSpace(msg), "\n")
	code := ""
	if m := s3ErrorCodeRe.FindStringSubmatch(msg); m != nil {
		code = m[1]
	}
	cipherHint := "give the passphrase the repository was encrypted with (backup.cipher_pass_file or HOLDFAST_BACKUP_CIPHER_PASS), or none if it is not encrypted"
	switch {
	case r.IsS3() && (strings.Contains(msg, "HostConnectError") || strings.Contains(msg, "unable to connect") || strings.Contains(msg, "unable to get address")):
		return fmt.Sprintf("the S3 endpoint %s cannot be reached (%s): check backup.s3.endpoint and that the server runs and is reachable from this machine", r.Endpoint(), first)
	case r.IsS3() && strings.Contains(msg, "CryptoError") && (strings.Contains(msg, "certificate") || strings.Contains(msg, "verify") || strings.Contains(msg, "TLS")):
		return fmt.Sprintf("TLS with the S3 endpoint %s failed (%s): give the CA that signed its certificate in backup.s3.ca_file, and an endpoint name the certificate holds", r.Endpoint(), first)
	case r.IsS3() && code == "NoSuchBucket":
		return fmt.Sprintf("bucket %s does not exist at %s: create it (holdfast never creates buckets) or correct the bucket in backup.repository", r.S3.Bucket, r.Endpoint())
	case r.IsS3() && (code == "SignatureDoesNotMatch" || code == "InvalidAccessKeyId" || code == "XAdminUserNotFound" ||
		code == "AccessDenied" || code == "InvalidToken" || strings.Contains(first, "403 (Forbidden)")):
		if code == "" {
			code = "403 Forbidden"
		}
		return fmt.Sprintf("the S3 endpoint %s refused the credentials (%s): check backup.s3.key and backup.s3.secret (or their _file), and that the key may read and write bucket %s", r.Endpoint(), code, r.S3.Bucket)
	case strings.Contains(msg, "CryptoError") || strings.Contains(msg, "cipher") || strings.Contains(msg, "unable to load info file") ||
		strings.Contains(msg, "encrypted file"):
		return fmt.Sprintf("the repository's files cannot be decrypted or read with the configured encryption (%s): %s", first, cipherHint)
	}
	return first
}
