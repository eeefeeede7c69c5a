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
