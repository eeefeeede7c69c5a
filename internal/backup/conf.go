// Package backup integrates pgBackRest: continuous WAL archiving from the
// current primary only, backups (from a standby when one is healthy), the
// list of backups and what they can restore, and point-in-time restores.
//
// The pure core — rendering pgbackrest.conf and the archive_command,
// parsing `pgbackrest info --output=json`, judging a recovery target against
// the backups — does no I/O. The effects (running pgbackrest, the archive
// gate's file, the archiver statistics) are in files of their own.
package backup

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// PGCluster is one PostgreSQL data directory pgBackRest works on.
type PGCluster struct {
	// Path is the data directory exactly as the server reports
	// data_directory (pgBackRest checks it).
	Path string
	Port int
	// User is the database superuser pgBackRest connects as.
	User string
	// Host, when set, is another member's address: pgBackRest reaches this
	// data directory through the TLS server there (pg-host-type=tls),
	// with TLS's client certificate. Path and Port are then as seen on
	// that host.
	Host string
	TLS  *ClientTLS
}

// ClientTLS is how pgBackRest reaches another member's TLS server: its
// port, this member's certificate and key, and the CA that signed the
// server's certificate (which must name Host).
type ClientTLS struct {
	Port                      int
	CertFile, KeyFile, CAFile string
}

// Settings is everything RenderConf needs.
type Settings struct {
	// Repo is the repository (its secrets are not rendered: they reach
	// pgBackRest in its environment).
	Repo   Repo
	Stanza string
	// RetentionFull is repo1-retention-full (≥ 1).
	RetentionFull int
	// WorkDir holds pgBackRest's log, lock and spool files for one member.
	WorkDir string
	// PG lists the data directories, the local member first (pg1). A backup
	// from a standby lists the standby first and the primary second, with
	// BackupStandby set.
	PG            []PGCluster
	BackupStandby bool
}

// RenderConf returns a pgbackrest.conf for s. It refuses a value that could
// break the file (a newline, NUL, or surrounding blanks), relative paths,
// ports out of range and an empty PG list. The output is deterministic.
func RenderConf(s Settings) (string, error) {
	const op = "render pgbackrest.conf"
	if len(s.PG) == 0 {
		return "", fmt.Errorf("%s: no PostgreSQL data directory", op)
	}
	if s.BackupStandby && len(s.PG) < 2 {
		return "", fmt.Errorf("%s: a backup from a standby needs the primary too", op)
	}
	if s.RetentionFull < 1 {
		return "", fmt.Errorf("%s: retention %d: keep at least one full backup", op, s.RetentionFull)
	}
	if !validStanza(s.Stanza) {
		return "", fmt.Errorf("%s: stanza %q: use 1-63 letters, digits, '.', '_' or '-'", op, s.Stanza)
	}
	global := map[string]string{
		"repo1-retention-full": strconv.Itoa(s.RetentionFull),
		"log-path":             s.WorkDir + "/log",
		"lock-path":            s.WorkDir + "/lock",
		"spool-path":           s.WorkDir + "/spool",
		"log-level-console":    "warn",
		"log-level-stderr":     "off",
		"log-level-file":       "info",
		"start-fast":           "y",
		"archive-timeout":      "60",
		"compress-type":        "lz4",
		"process-max":          "2",
		"archive-check":        "y",
		"expire-auto":          "y",
		// An aborted backup is never resumed: a backup stopped by a
		// switchover or failover was copied from a member in another
		// role (often another machine), and resume keeps the files whose
		// size and time stamp match — evidence of nothing across two
		// servers. The next backup copies everything again.
		"resume": "n",
	}
	if s.BackupStandby {
		global["backup-standby"] = "y"
	}
	if err := repoOptions(global, s.Repo); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	stanza := map[string]string{}
	for i, p := range s.PG {
		n := strconv.Itoa(i + 1)
		if p.Port < 1 || p.Port > 65535 {
			return "", fmt.Errorf("%s: pg%s port %d out of range", op, n, p.Port)
		}
		if !strings.HasPrefix(p.Path, "/") {
			return "", fmt.Errorf("%s: pg%s path %q is not absolute", op, n, p.Path)
		}
		if p.Host != "" {
			if p.TLS == nil {
				return "", fmt.Errorf("%s: pg%s on host %s: a remote data directory is reached through pgBackRest's TLS server only, and no TLS is configured", op, n, p.Host)
			}
			if p.TLS.Port < 1 || p.TLS.Port > 65535 {
				return "", fmt.Errorf("%s: pg%s TLS server port %d out of range", op, n, p.TLS.Port)
			}
			stanza["pg"+n+"-host"] = p.Host
			stanza["pg"+n+"-host-type"] = "tls"
			stanza["pg"+n+"-host-port"] = strconv.Itoa(p.TLS.Port)
			stanza["pg"+n+"-host-cert-file"] = p.TLS.CertFile
			stanza["pg"+n+"-host-key-file"] = p.TLS.KeyFile
			stanza["pg"+n+"-host-ca-file"] = p.TLS.CAFile
		}
		stanza["pg"+n+"-path"] = p.Path
		stanza["pg"+n+"-port"] = strconv.Itoa(p.Port)
		stanza["pg"+n+"-user"] = p.User
	}
	if !strings.HasPrefix(s.WorkDir, "/") {
		return "", fmt.Errorf("%s: path %q is not absolute", op, s.WorkDir)
	}
	var b strings.Builder
	b.WriteString("# Written by holdfast; changes are overwritten.\n")
	if err := section(&b, "global", global); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	if err := section(&b, s.Stanza, stanza); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	return b.String(), nil
}

// ServerSettings is everything RenderServerConf needs.
type ServerSettings struct {
	// WorkDir holds the server's log and lock files.
	WorkDir string
	// Port is tls-server-port; the server listens on every address.
	Port int
	// CertFile, KeyFile: the server's certificate and key; CAFile: the CA
	// that signed the clients' certificates.
	CertFile, KeyFile, CAFile string
	// ClientCN are the common names of the client certificates accepted,
	// for Stanza only.
	ClientCN []string
	Stanza   string
}

// RenderServerConf returns the pgbackrest.conf of this member's TLS server
// (`pgbackrest server`): mutual TLS, only the listed client common names,
// and only for this cluster's stanza. The remote commands it runs take
// their data directory options from the client. It refuses what could
// break the file, relative paths, a port out of range, an empty client
// list and a common name pgBackRest could not parse.
func RenderServerConf(s ServerSettings) (string, error) {
	const op = "render the pgBackRest TLS server's configuration"
	if s.Port < 1 || s.Port > 65535 {
		return "", fmt.Errorf("%s: port %d out of range", op, s.Port)
	}
	if !validStanza(s.Stanza) {
		return "", fmt.Errorf("%s: stanza %q: use 1-63 letters, digits, '.', '_' or '-'", op, s.Stanza)
	}
	if len(s.ClientCN) == 0 {
		return "", fmt.Errorf("%s: no client certificate common name to accept", op)
	}
	for _, cn := range s.ClientCN {
		if cn == "" || strings.ContainsAny(cn, "=,") {
			return "", fmt.Errorf("%s: client common name %q cannot be listed (empty, or holds '=' or ',')", op, cn)
		}
	}
	for _, f := range []string{s.WorkDir, s.CertFile, s.KeyFile, s.CAFile} {
		if !strings.HasPrefix(f, "/") {
			return "", fmt.Errorf("%s: path %q is not absolute", op, f)
		}
	}
	global := map[string]string{
		"tls-server-address":   "*",
		"tls-server-port":      strconv.Itoa(s.Port),
		"tls-server-cert-file": s.CertFile,
		"tls-server-key-file":  s.KeyFile,
		"tls-server-ca-file":   s.CAFile,
		"log-path":             s.WorkDir + "/log",
		"lock-path":            s.WorkDir + "/lock",
		"log-level-console":    "off",
		"log-level-stderr":     "warn",
		"log-level-file":       "info",
	}
	var b strings.Builder
	b.WriteString("# Written by holdfast; changes are overwritten.\n")
	if err := section(&b, "global", global); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	// tls-server-auth is a list: one line per common name, each for this
	// stanza only.
	for _, cn := range s.ClientCN {
		if strings.ContainsAny(cn, "\n\r\x00") || strings.TrimSpace(cn) != cn {
			return "", fmt.Errorf("%s: client common name %q cannot be written (several lines or surrounding blanks)", op, cn)
		}
		fmt.Fprintf(&b, "tls-server-auth=%s=%s\n", cn, s.Stanza)
	}
	return b.String(), nil
}

// repoOptions adds the repository's options to the global section: its
// type and place, and the cipher type (the passphrase and the S3
// credentials are not written: see Secrets).
func repoOptions(global map[string]string, r Repo) error {
	if r.S3 == nil {
		if !strings.HasPrefix(r.Location, "/") {
			return fmt.Errorf("repository path %q is not absolute", r.Location)
		}
		global["repo1-path"] = r.Location
	} else {
		s := r.S3
		if !strings.HasPrefix(s.Path, "/") {
			return fmt.Errorf("repository path %q in bucket %s is not absolute", s.Path, s.Bucket)
		}
		global["repo1-type"] = "s3"
		global["repo1-path"] = s.Path
		global["repo1-s3-bucket"] = s.Bucket
		global["repo1-s3-endpoint"] = s.Host
		global["repo1-s3-region"] = s.Region
		if s.Port != 0 {
			if s.Port < 1 || s.Port > 65535 {
				return fmt.Errorf("S3 endpoint port %d out of range", s.Port)
			}
			global["repo1-storage-port"] = strconv.Itoa(s.Port)
		}
		if s.URIStyle != "" {
			global["repo1-s3-uri-style"] = s.URIStyle
		}
		if s.CAFile != "" {
			global["repo1-storage-ca-file"] = s.CAFile
		}
		if s.SkipVerify {
			global["repo1-storage-verify-tls"] = "n"
		}
	}
	if r.Encrypted {
		global["repo1-cipher-type"] = CipherType
	}
	return nil
}

func section(b *strings.Builder, name string, kv map[string]string) error {
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(b, "\n[%s]\n", name)
	for _, k := range keys {
		v := kv[k]
		if v == "" || strings.ContainsAny(v, "\n\r\x00") || strings.TrimSpace(v) != v {
			return fmt.Errorf("%s: value %q cannot be written (empty, several lines or surrounding blanks)", k, v)
		}
		fmt.Fprintf(b, "%s=%s\n", k, v)
	}
	return nil
}

// validStanza is what holdfast accepts as a stanza name (config validates
// the same rule with its own message).
func validStanza(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case i > 0 && (r == '.' || r == '_' || r == '-'):
		default:
			return false
		}
	}
	return true
}

// ArchiveCommandOptions is what ArchiveCommand renders.
type ArchiveCommandOptions struct {
	// Exe is the holdfast binary.
	Exe string
	// Grant is the archive gate's file (see Gate).
	Grant string
	// Config is the pgbackrest.conf the push uses.
	Config string
	Stanza string
	// Secrets is the file of the repository's secrets ("" = none).
	Secrets string
}

// ArchiveCommand is PostgreSQL's archive_command: `holdfast archive-push`,
// which pushes the segment with pgBackRest only while the gate holds a
// grant (this member leads under a valid lease) and fails otherwise, so
// PostgreSQL keeps the segment and retries. Every argument is quoted for
// the shell, and '%' in them is doubled for PostgreSQL.
func ArchiveCommand(o ArchiveCommandOptions) string {
	q := func(s string) string {
		return strings.ReplaceAll("'"+strings.ReplaceAll(s, "'", `'\''`)+"'", "%", "%%")
	}
	secrets := ""
	if o.Secrets != "" {
		secrets = " --secrets " + q(o.Secrets)
	}
	return fmt.Sprintf("%s archive-push --grant %s --pgbackrest-config %s --stanza %s%s %%p",
		q(o.Exe), q(o.Grant), q(o.Config), q(o.Stanza), secrets)
}

// RestoreCommandOptions is what RestoreCommand renders.
type RestoreCommandOptions struct {
	// Exe is the holdfast binary.
	Exe string
	// Config is the pgbackrest.conf the fetch uses.
	Config string
	Stanza string
	// Secrets is the file of the repository's secrets ("" = none).
	Secrets string
}

// RestoreCommand is PostgreSQL's restore_command: `holdfast archive-get`,
// which fetches the segment %f into %p with `pgbackrest archive-get`,
// handing it the repository's secrets from the Secrets file in its
// environment. Every repository goes through the wrapper, with or without
// secrets, so one command is rendered, tested and documented: PostgreSQL
// runs restore_command without the agent's environment, and a direct
// `pgbackrest archive-get` could not read an S3 repository's credentials
// or an encrypted repository's passphrase. Every argument is quoted for
// the shell, and '%' in them is doubled for PostgreSQL.
func RestoreCommand(o RestoreCommandOptions) string {
	q := func(s string) string {
		return strings.ReplaceAll("'"+strings.ReplaceAll(s, "'", `'\''`)+"'", "%", "%%")
	}
	secrets := ""
	if o.Secrets != "" {
		secrets = " --secrets " + q(o.Secrets)
	}
	return fmt.Sprintf("%s archive-get --pgbackrest-config %s --stanza %s%s %%f \"%%p\"",
		q(o.Exe), q(o.Config), q(o.Stanza), secrets)
}
