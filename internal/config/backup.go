package config

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/holdfast/holdfast/internal/quote"
)

// Backup configures continuous WAL archiving and backups with pgBackRest
// (docs/architecture.md, "Backups"). With Repository empty nothing is
// archived and no backup can be taken.
type Backup struct {
	// Repository is the pgBackRest repository: an absolute path to a
	// directory (a POSIX repository; a volume every member reaches).
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
func (b Backup) problems() []problem {
	var ps []problem
	bad := func(key, format string, args ...any) { ps = append(ps, problem{key, fmt.Errorf(format, args...)}) }
	if b.Repository != "" && !filepath.IsAbs(b.Repository) {
		bad("repository", "%s is not an absolute path (write the repository directory from /, e.g. /var/lib/holdfast-backups)", quote.Value(b.Repository))
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

// backupProblems checks the backup section and the PostgreSQL parameters
// it takes over.
func (c Config) backupProblems() []problem {
	var ps []problem
	for _, p := range c.Backup.problems() {
		ps = append(ps, problem{"backup." + p.key, p.err})
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
