package config

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/holdfast/holdfast/internal/quote"
)

// Backup configures continuous WAL archiving and backups with pgBackRest
// (docs/architecture.md, "Backups"). With Repository empty nothing is
// archived and no backup can be taken.
type Backup struct {
	// Repository is the pgBackRest repository: an absolute path to a
	// directory (a POSIX repository; a volume every member reaches), or
	// s3://BUCKET[/PATH] for an S3-compatible object store (configured
	// under s3).
	Repository string `yaml:"repository"`
	// Stanza names this cluster's backups and archive in the repository.
	// Default: the cluster name. It is the cluster's backup identity: a
	// restored cluster must use another one (holdfast up --restore-from
	// chooses a new one), so it never archives into its source's stanza.
	Stanza string `yaml:"stanza"`
	// RetentionFull is how many full backups the repository keeps
	// (pgBackRest's repo1-retention-full); older ones, and the WAL only
	// they need, are expired after each backup. Default 2.
	RetentionFull int `yaml:"retention_full"`
	// S3 reaches an s3:// repository.
	S3 BackupS3 `yaml:"s3"`
	// CipherPass or CipherPassFile (a file holding it) encrypts the
	// repository with pgBackRest's aes-256-cbc cipher. Every member, and a
	// restore, needs the same passphrase; a lost one loses the backups.
	// Prefer the file, or HOLDFAST_BACKUP_CIPHER_PASS, to a value in a
	// file others may read.
	CipherPass     string `yaml:"cipher_pass"`
	CipherPassFile string `yaml:"cipher_pass_file"`
	// TLS runs pgBackRest's TLS server on this member (supervised by the
	// agent) and lets this member reach the other members' servers, so a
	// replica on another host — every pod of a StatefulSet — can take a
	// backup from itself with the primary's help (pgBackRest's
	// backup-standby). Without it, a replica qualifies only on the
	// primary's host, and backups elsewhere are taken on the primary.
	TLS BackupTLS `yaml:"tls"`
}

// DefaultBackupTLSPort is pgBackRest's TLS server port (its tls-server-port
// and pg-host-port defaults).
const DefaultBackupTLSPort = 8432

// BackupTLS configures pgBackRest's TLS server and client with mutual TLS:
// the member's certificate (one whose subject alternative names cover the
// address the other members reach it at, its postgresql connect address,
// and whose key usage allows both server and client authentication), its
// key, and the CA that signed every member's certificate. Set all three
// files or none.
type BackupTLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	CAFile   string `yaml:"ca_file"`
	// Port is where the server listens on every address (default 8432).
	// Each member registers its own; a replica reaches the primary's.
	Port int `yaml:"port"`
	// ClientCN lists the certificate common names the server accepts
	// (tls-server-auth, for this cluster's stanza only). Default: the
	// common name of this member's own certificate — right when the
	// members share one certificate, as the Helm chart's do.
	ClientCN []string `yaml:"client_cn"`
}

// Enabled reports whether the TLS server is configured.
func (t BackupTLS) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" || t.CAFile != "" }

// ServerPort is Port, or the default.
func (t BackupTLS) ServerPort() int {
	if t.Port == 0 {
		return DefaultBackupTLSPort
	}
	return t.Port
}

// problems checks the values only (Load); the agent reads the files at
// start (backup.CheckTLS) and refuses unreadable ones before it writes
// anything.
func (t BackupTLS) problems() []problem {
	var ps []problem
	bad := func(key, format string, args ...any) {
		ps = append(ps, problem{"tls." + key, fmt.Errorf(format, args...)})
	}
	if !t.Enabled() {
		if t.Port != 0 || len(t.ClientCN) > 0 {
			bad("cert_file", "required when tls.port or tls.client_cn is set (the certificate of pgBackRest's TLS server)")
		}
		return ps
	}
	for _, f := range []struct{ key, v string }{{"cert_file", t.CertFile}, {"key_file", t.KeyFile}, {"ca_file", t.CAFile}} {
		switch {
		case f.v == "":
			bad(f.key, "required when any of tls.cert_file, key_file, ca_file is set (pgBackRest's TLS needs the certificate, its key and the members' CA)")
		case !filepath.IsAbs(f.v):
			bad(f.key, "%s is not an absolute path", quote.Value(f.v))
		case strings.ContainsAny(f.v, "\n\r\x00") || strings.TrimSpace(f.v) != f.v:
			bad(f.key, "%s holds a line break, NUL or surrounding blanks", quote.Value(f.v))
		}
	}
	if t.Port < 0 || t.Port > 65535 {
		bad("port", "%d is not 1-65535 (default %d)", t.Port, DefaultBackupTLSPort)
	}
	for _, cn := range t.ClientCN {
		if cn == "" || strings.ContainsAny(cn, "=,\n\r\x00") || strings.TrimSpace(cn) != cn {
			bad("client_cn", "%s is not a certificate common name pgBackRest can list (no '=', ',', line breaks or surrounding blanks)", quote.Value(cn))
		}
	}
	return ps
}

// BackupS3 is how pgBackRest reaches an S3-compatible repository. The
// credentials come from Key/Secret (meant for HOLDFAST_BACKUP_S3_KEY and
// HOLDFAST_BACKUP_S3_SECRET, e.g. from a Kubernetes Secret) or from files
// (KeyFile/SecretFile); holdfast hands them to pgBackRest in its
// environment, never in pgbackrest.conf, and never logs them.
type BackupS3 struct {
	// Endpoint is host[:port] of the S3 API, without a scheme: pgBackRest
	// speaks HTTPS only (e.g. s3.eu-west-1.amazonaws.com, minio.internal:9000).
	Endpoint string `yaml:"endpoint" json:"endpoint,omitempty"`
	// Region signs the requests (e.g. us-east-1).
	Region string `yaml:"region" json:"region,omitempty"`
	// URIStyle is how buckets are addressed: "host" (bucket.endpoint, the
	// default, AWS's) or "path" (endpoint/bucket, most self-hosted servers).
	URIStyle string `yaml:"uri_style" json:"uri_style,omitempty"`
	// CAFile is a PEM file of the CA that signed the endpoint's
	// certificate ("" = the system's CAs).
	CAFile string `yaml:"ca_file" json:"ca_file,omitempty"`
	// TLSSkipVerify accepts any certificate: for tests only.
	TLSSkipVerify bool `yaml:"tls_skip_verify" json:"tls_skip_verify,omitempty"`
	// Key and Secret are the access key id and secret access key; KeyFile
	// and SecretFile are files holding them (one of each pair).
	Key        string `yaml:"key" json:"key,omitempty"`
	KeyFile    string `yaml:"key_file" json:"key_file,omitempty"`
	Secret     string `yaml:"secret" json:"secret,omitempty"`
	SecretFile string `yaml:"secret_file" json:"secret_file,omitempty"`
}

// S3Scheme prefixes an S3 repository's location.
const S3Scheme = "s3://"

// IsS3 reports whether the repository is an S3 bucket.
func (b Backup) IsS3() bool { return strings.HasPrefix(b.Repository, S3Scheme) }

// bucketRe is an S3 bucket name (the rules every S3 implementation
// accepts: 3-63 lowercase letters, digits, '.' and '-', starting and ending
// with a letter or digit).
var bucketRe = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// ParseS3Location splits s3://BUCKET[/PATH] into the bucket and the
// repository's absolute path inside it ("/" when none is given).
func ParseS3Location(loc string) (bucket, path string, err error) {
	rest, ok := strings.CutPrefix(loc, S3Scheme)
	if !ok {
		return "", "", fmt.Errorf("%s is not an s3:// location", quote.Value(loc))
	}
	bucket, path, _ = strings.Cut(rest, "/")
	if !bucketRe.MatchString(bucket) {
		return "", "", fmt.Errorf("bucket %s in %s is not a bucket name (3-63 lowercase letters, digits, '.' or '-'; write s3://BUCKET/PATH)", quote.Value(bucket), quote.Value(loc))
	}
	path = "/" + strings.Trim(path, "/")
	if strings.Contains(path, "//") || strings.ContainsAny(path, "?#\\ \n\r\x00") {
		return "", "", fmt.Errorf("path %s in %s is not a clean path (no empty segments, blanks, '?', '#' or '\\')", quote.Value(path), quote.Value(loc))
	}
	return bucket, path, nil
}

// Enabled reports whether backups are configured.
func (b Backup) Enabled() bool { return b.Repository != "" }

// stanzaRe is what pgBackRest accepts as a stanza name, kept to the
// characters that need no quoting in a file name or a command line.
var stanzaRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// maxRetentionFull is pgBackRest's upper bound for repo1-retention-full.
const maxRetentionFull = 9999999

// BackupStanza is the stanza this member archives into: backup.stanza, or
// the cluster name when unset.
func (c Config) BackupStanza() string {
	if c.Backup.Stanza != "" {
		return c.Backup.Stanza
	}
	return c.Cluster
}

// archiveParameters are the PostgreSQL parameters holdfast sets when
// backups are configured (so the user may not).
var archiveParameters = []string{"archive_mode", "archive_command", "archive_library", "restore_command"}

// Problems lists what is wrong with the backup section alone, each with the
// dotted key (under prefix, e.g. "backup.") and how to fix it. It looks at
// the values only. It is the one validator of the section: Load runs it on
// a member's file, holdfast up --restore-from on the source's.
func (b Backup) Problems(prefix string) []error {
	var errs []error
	for _, p := range b.problems() {
		errs = append(errs, fmt.Errorf("%s%s: %w", prefix, p.key, p.err))
	}
	return errs
}

// problems is Problems with the keys relative to the section.
func (b Backup) problems() []problem { return b.problemsEnv("HOLDFAST_BACKUP_") }

// problemsEnv is problems for a section whose variables start with env
// (HOLDFAST_BACKUP_, or HOLDFAST_BOOTSTRAP_RESTORE_ for a restore's source).
func (b Backup) problemsEnv(env string) []problem {
	var ps []problem
	bad := func(key, format string, args ...any) { ps = append(ps, problem{key, fmt.Errorf(format, args...)}) }
	switch {
	case b.IsS3():
		if _, _, err := ParseS3Location(b.Repository); err != nil {
			bad("repository", "%w", err)
		}
		ps = append(ps, b.S3.problems(env+"S3_")...)
	case b.Repository != "" && !filepath.IsAbs(b.Repository):
		bad("repository", "%s is not an absolute path (write the repository directory from /, e.g. /var/lib/holdfast-backups, or s3://BUCKET/PATH for an S3 bucket)", quote.Value(b.Repository))
	}
	if !b.IsS3() && b.S3 != (BackupS3{}) {
		bad("s3", "set only for an s3:// repository (repository is %s)", quote.Value(b.Repository))
	}
	if b.CipherPass != "" && b.CipherPassFile != "" {
		bad("cipher_pass", "give the passphrase once: cipher_pass or cipher_pass_file, not both")
	}
	if b.CipherPassFile != "" && !filepath.IsAbs(b.CipherPassFile) {
		bad("cipher_pass_file", "%s is not an absolute path", quote.Value(b.CipherPassFile))
	}
	if strings.ContainsAny(b.CipherPass, "\n\r\x00") {
		bad("cipher_pass", "the passphrase holds a line break or NUL (not shown): use one line")
	}
	if b.Repository == "" && (b.CipherPass != "" || b.CipherPassFile != "") {
		bad("repository", "required when the repository's encryption is set (the repository it encrypts)")
	}
	if b.Repository == "" && b.Stanza != "" {
		bad("repository", "required when stanza is set (the directory holding the backups)")
	}
	if b.Stanza != "" && !stanzaRe.MatchString(b.Stanza) {
		bad("stanza", "%s is not a stanza name (1-63 letters, digits, '.', '_' or '-', starting with a letter or digit)", quote.Value(b.Stanza))
	}
	if b.RetentionFull < 1 || b.RetentionFull > maxRetentionFull {
		bad("retention_full", "%d is out of range (keep 1 to %d full backups, e.g. 2)", b.RetentionFull, maxRetentionFull)
	}
	return ps
}

// problems checks an S3 repository's settings (keys relative to the
// backup section; env prefixes the variables that can hold the
// credentials). It never shows a credential's value.
func (s BackupS3) problems(env string) []problem {
	var ps []problem
	bad := func(key, format string, args ...any) {
		ps = append(ps, problem{"s3." + key, fmt.Errorf(format, args...)})
	}
	switch {
	case s.Endpoint == "":
		bad("endpoint", "required for an s3:// repository (host[:port] of the S3 API, e.g. s3.us-east-1.amazonaws.com or minio.internal:9000)")
	case strings.Contains(s.Endpoint, "://"):
		bad("endpoint", "%s: write host[:port] without a scheme (pgBackRest always uses HTTPS)", quote.Value(s.Endpoint))
	default:
		host, port, err := net.SplitHostPort(s.Endpoint)
		if err != nil {
			host, port = s.Endpoint, ""
		}
		if host == "" || strings.ContainsAny(host, "/ \t\n\r\x00") {
			bad("endpoint", "%s is not host[:port]", quote.Value(s.Endpoint))
		}
		if port != "" {
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				bad("endpoint", "%s: port %s is not 1-65535", quote.Value(s.Endpoint), quote.Value(port))
			}
		}
	}
	if s.Region == "" {
		bad("region", "required for an s3:// repository (the region requests are signed for; us-east-1 for most self-hosted servers)")
	} else if strings.ContainsAny(s.Region, "/ \t\n\r\x00") {
		bad("region", "%s is not a region name", quote.Value(s.Region))
	}
	switch s.URIStyle {
	case "", "host", "path":
	default:
		bad("uri_style", "%s: write host (bucket.endpoint, AWS) or path (endpoint/bucket, most self-hosted servers)", quote.Value(s.URIStyle))
	}
	if s.CAFile != "" && !filepath.IsAbs(s.CAFile) {
		bad("ca_file", "%s is not an absolute path", quote.Value(s.CAFile))
	}
	pair := func(name, value, file, what string) {
		switch {
		case value != "" && file != "":
			bad(name, "give the %s once: %s or %s_file, not both", what, name, name)
		case value == "" && file == "":
			bad(name, "required for an s3:// repository: the %s, in %s_file (a file holding it) or %s%s", what, name, env, strings.ToUpper(name))
		case file != "" && !filepath.IsAbs(file):
			bad(name+"_file", "%s is not an absolute path", quote.Value(file))
		case strings.ContainsAny(value, "\n\r\x00 "):
			bad(name, "the %s holds a blank, line break or NUL (not shown)", what)
		}
	}
	pair("key", s.Key, s.KeyFile, "access key id")
	pair("secret", s.Secret, s.SecretFile, "secret access key")
	return ps
}

// backupProblems checks the backup section and the PostgreSQL parameters
// it takes over.
func (c Config) backupProblems() []problem {
	var ps []problem
	for _, p := range c.Backup.problems() {
		ps = append(ps, problem{"backup." + p.key, p.err})
	}
	for _, p := range c.Backup.TLS.problems() {
		ps = append(ps, problem{"backup." + p.key, p.err})
	}
	if c.Backup.TLS.Enabled() && !c.Backup.Enabled() {
		ps = append(ps, problem{"backup.repository", errors.New("required when backup.tls is set (the TLS server serves backups of this cluster's repository)")})
	}
	if !c.Backup.Enabled() || c.Witness {
		return ps
	}
	if c.Backup.Stanza == "" && !stanzaRe.MatchString(c.Cluster) {
		ps = append(ps, problem{"backup.stanza", fmt.Errorf("the cluster name %s cannot be a stanza name: set backup.stanza", quote.Value(c.Cluster))})
	}
	for name := range c.PostgreSQL.Parameters {
		for _, p := range archiveParameters {
			if strings.EqualFold(name, p) {
				ps = append(ps, problem{"postgresql.parameters." + name, fmt.Errorf("holdfast sets it when backup.repository is set (only the primary archives, through pgBackRest): remove it")})
			}
		}
	}
	return ps
}
