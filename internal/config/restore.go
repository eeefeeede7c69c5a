package config

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/quote"
)

// RestoreTarget is where a restore stops replaying WAL. At most one field
// is set; none means the end of the archive (the latest point). It is
// backup.Target; it lives here so a member's configuration can check a
// bootstrap.restore target with the parser holdfast up uses.
type RestoreTarget struct {
	Time time.Time
	LSN  string
	XID  string
}

// Latest reports whether t is the end of the archive.
func (t RestoreTarget) Latest() bool { return t.Time.IsZero() && t.LSN == "" && t.XID == "" }

// String describes t for messages.
func (t RestoreTarget) String() string {
	switch {
	case !t.Time.IsZero():
		return "time " + t.Time.UTC().Format(time.RFC3339Nano)
	case t.LSN != "":
		return "LSN " + t.LSN
	case t.XID != "":
		return "transaction " + t.XID
	}
	return "the latest point"
}

// TargetNames are the names a restore target's three values go by in
// messages: the flags of holdfast up, or the keys of bootstrap.restore.
type TargetNames struct{ Time, LSN, XID string }

var lsnRe = regexp.MustCompile(`^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$`)

// ParseRestoreTarget reads a restore target's time, LSN and transaction
// id ("" = not given; at most one may be). A time is RFC 3339
// ("2026-12-06T10:15:00Z", or with an offset and fractions of a second).
// Errors name the value by names and say how to write it.
func ParseRestoreTarget(names TargetNames, timeArg, lsn, xid string) (RestoreTarget, error) {
	given := 0
	for _, v := range []string{timeArg, lsn, xid} {
		if v != "" {
			given++
		}
	}
	if given > 1 {
		return RestoreTarget{}, fmt.Errorf("restore target: give one of %s, %s and %s", names.Time, names.LSN, names.XID)
	}
	var t RestoreTarget
	switch {
	case timeArg != "":
		tm, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(timeArg))
		if err != nil {
			return RestoreTarget{}, fmt.Errorf("%s %q: not an RFC 3339 time (write e.g. 2026-12-06T10:15:00Z or 2026-12-06T11:15:00.5+01:00)", names.Time, timeArg)
		}
		t.Time = tm
	case lsn != "":
		if !lsnRe.MatchString(lsn) {
			return RestoreTarget{}, fmt.Errorf("%s %q: not a WAL position (write e.g. 0/3000060)", names.LSN, lsn)
		}
		t.LSN = strings.ToUpper(lsn)
	case xid != "":
		if n, err := strconv.ParseUint(xid, 10, 32); err != nil || n < 3 {
			return RestoreTarget{}, fmt.Errorf("%s %q: not a transaction id (a decimal number from 3, e.g. from txid_current())", names.XID, xid)
		}
		t.XID = xid
	}
	return t, nil
}

// Bootstrap configures how the member that bootstraps a new cluster (the
// one that wins the bootstrap claim) builds its first data directory:
// initdb, or, with Restore set, a restore from another cluster's backup.
// It matters only while the cluster does not exist yet: members of an
// existing cluster, and members that lose the claim, clone from the
// primary as usual.
type Bootstrap struct {
	Restore BootstrapRestore `yaml:"restore"`
}

// BootstrapRestore names the backup a new cluster starts from: the
// source's repository (the shapes and secrets of the backup section),
// stanza and optionally backup set, and the point to recover to (at most
// one of TargetTime, TargetLSN, TargetXID; none = the latest point). The
// restored cluster gets a new identity: it archives into its own
// backup.stanza, which must differ from Stanza.
type BootstrapRestore struct {
	Repository     string   `yaml:"repository"`
	Stanza         string   `yaml:"stanza"`
	S3             BackupS3 `yaml:"s3"`
	CipherPass     string   `yaml:"cipher_pass"`
	CipherPassFile string   `yaml:"cipher_pass_file"`
	// Set is a backup label to start from ("" = the newest the target
	// allows).
	Set        string `yaml:"set"`
	TargetTime string `yaml:"target_time"`
	TargetLSN  string `yaml:"target_lsn"`
	TargetXID  string `yaml:"target_xid"`
}

// Enabled reports whether the cluster is bootstrapped from a backup.
func (r BootstrapRestore) Enabled() bool { return r.Repository != "" }

// Source is the source repository as a backup section (for
// backup.NewRepo, which resolves its secrets).
func (r BootstrapRestore) Source() Backup {
	return Backup{Repository: r.Repository, Stanza: r.Stanza, S3: r.S3, CipherPass: r.CipherPass,
		CipherPassFile: r.CipherPassFile, RetentionFull: 1}
}

// Target is the point to recover to; its error names the key at fault
// (relative to bootstrap.restore).
func (r BootstrapRestore) Target() (RestoreTarget, error) {
	return ParseRestoreTarget(TargetNames{Time: "target_time", LSN: "target_lsn", XID: "target_xid"}, r.TargetTime, r.TargetLSN, r.TargetXID)
}

// labelRe is a pgBackRest backup label (e.g. 20261206-101258F, or an
// incremental 20261206-101258F_20261206-111258I).
var labelRe = regexp.MustCompile(`^[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?$`)

// bootstrapProblems checks the bootstrap section: the source repository
// as the backup section is checked, a stanza, a target, and a new backup
// identity for the restored cluster.
func (c Config) bootstrapProblems() []problem {
	r := c.Bootstrap.Restore
	var ps []problem
	bad := func(key, format string, args ...any) {
		ps = append(ps, problem{"bootstrap.restore." + key, fmt.Errorf(format, args...)})
	}
	if !r.Enabled() {
		if r != (BootstrapRestore{}) {
			bad("repository", "required when any bootstrap.restore setting is given (the source cluster's backup.repository: a directory or s3://BUCKET/PATH)")
		}
		return ps
	}
	if c.Witness {
		bad("repository", "a witness runs no database and never bootstraps: remove bootstrap.restore from its configuration")
	}
	for _, p := range r.Source().problemsEnv("HOLDFAST_BOOTSTRAP_RESTORE_") {
		ps = append(ps, problem{"bootstrap.restore." + p.key, p.err})
	}
	if r.Stanza == "" {
		bad("stanza", "required: the source cluster's backup stanza (its backup.stanza, or its cluster name when that is unset; see holdfast ctl backups on the source)")
	}
	if r.Set != "" && !labelRe.MatchString(r.Set) {
		bad("set", "%s is not a backup label (e.g. 20261206-101258F, as holdfast ctl backups lists them)", quote.Value(r.Set))
	}
	if _, err := r.Target(); err != nil {
		ps = append(ps, problem{"bootstrap.restore", err})
	}
	if r.Stanza != "" && c.Backup.Enabled() && r.Stanza == c.BackupStanza() {
		bad("stanza", "%s is also this cluster's own backup stanza: a restored cluster is a new cluster and must never archive into its source's stanza (set backup.stanza to a new name, e.g. %s)",
			quote.Value(r.Stanza), quote.Value(c.Cluster+"-restored"))
	}
	return ps
}
