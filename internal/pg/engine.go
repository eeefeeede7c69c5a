package pg

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/osuser"
)

// Credentials of a database role holdfast uses. Passwords are required:
// holdfast's pg_hba rules always ask for one (scram-sha-256).
type Credentials struct {
	Username, Password string
}

// Options configure an Engine.
type Options struct {
	// BinDir holds the PostgreSQL programs; "" means FindBinDir("").
	BinDir string
	// DataDir is the data directory (absolute). Its parent must exist or be
	// creatable; holdfast keeps temporary and moved-aside siblings
	// (<DataDir>.initdb-tmp, .clone-tmp, .restore-tmp, .old-<time>) next to it, so
	// DataDir must not itself be a mount point: use a subdirectory.
	DataDir string
	// LogFile receives PostgreSQL's stderr/stdout and the output of the
	// programs holdfast runs. Default: <DataDir>.log.
	LogFile string
	// Account runs every PostgreSQL program (see package osuser).
	Account osuser.Account
	// Member is this member's name (cluster_name, application_name).
	Member string
	// ListenHost is listen_addresses; Port the PostgreSQL port.
	ListenHost string
	Port       int
	// ConnectHost is where holdfast itself connects to this PostgreSQL.
	// Default: ListenHost, or 127.0.0.1 when ListenHost is a wildcard.
	ConnectHost string
	// Parameters, PgHBA and InitdbArgs come from the user's configuration.
	Parameters map[string]string
	PgHBA      []string
	InitdbArgs []string
	// Superuser is holdfast's own role (created by initdb); Replication is
	// the role standbys stream with.
	Superuser, Replication Credentials
	// ProxyAuth, when its Password is set, is the role the session proxy
	// reads verifiers as, which the primary installs (EnsureProxyAuth).
	// Empty: the operator installs it, or no session proxy is used.
	ProxyAuth ProxyAuth
	Logger    *slog.Logger
}

// ProxyAuth describes the session proxy's auth role (package pgauth owns
// the names and the SQL; the agent fills this in).
type ProxyAuth struct {
	// Role logs in with Password; it gets no privilege but Function.
	Role, Password string
	// Function, with its argument types ("schema.name(text)"), is what
	// Role must be able to execute; SetupSQL (idempotent) installs it.
	Function, SetupSQL string
}

// Engine drives one member's PostgreSQL.
//
// An Engine is used by ONE goroutine, the agent loop: its methods are not
// safe for concurrent use. Internally a dedicated "owner goroutine" per
// postmaster spawns and waits for the process (see Start); the engine only
// reads its results through a channel, so Running and Exited never block.
type Engine struct {
	o   Options
	log *slog.Logger

	pm     *postmaster // the last postmaster we started, nil before Start
	conn   *pgx.Conn   // Status' connection, reopened on failure and when older than statusConnMaxAge
	connAt time.Time   // when conn was opened
	// proxyAuthDone: EnsureProxyAuth succeeded on this primary (reset by
	// Start and Promote).
	proxyAuthDone bool
}

// New checks the options and returns an Engine. It starts nothing and
// touches no file. It fails when a required option is missing or the
// PostgreSQL parameters would be refused by RenderConf (so a bad
// configuration is reported at startup, not at the first Start).
func New(o Options) (*Engine, error) {
	if o.DataDir == "" || !filepath.IsAbs(o.DataDir) {
		return nil, fmt.Errorf("new PostgreSQL engine: data directory %q must be an absolute path", o.DataDir)
	}
	o.DataDir = filepath.Clean(o.DataDir)
	if o.DataDir == "/" {
		return nil, fmt.Errorf("new PostgreSQL engine: data directory cannot be /")
	}
	if o.BinDir == "" {
		d, err := FindBinDir("")
		if err != nil {
			return nil, fmt.Errorf("new PostgreSQL engine: %w", err)
		}
		o.BinDir = d
	}
	if o.LogFile == "" {
		o.LogFile = o.DataDir + ".log"
	}
	if err := cluster.ValidName(o.Member); err != nil {
		return nil, fmt.Errorf("new PostgreSQL engine: member: %w", err)
	}
	if o.ListenHost == "" {
		return nil, fmt.Errorf("new PostgreSQL engine: no listen host")
	}
	if o.ConnectHost == "" {
		o.ConnectHost = o.ListenHost
		if h := strings.TrimSpace(o.ListenHost); h == "*" || h == "0.0.0.0" || h == "::" || strings.Contains(h, ",") {
			o.ConnectHost = "127.0.0.1"
		}
	}
	for _, c := range []struct {
		what string
		cred Credentials
	}{{"superuser", o.Superuser}, {"replication", o.Replication}} {
		if c.cred.Username == "" || c.cred.Password == "" {
			return nil, fmt.Errorf("new PostgreSQL engine: the %s role needs a username and a password", c.what)
		}
		if strings.ContainsAny(c.cred.Username, "\x00\n\r") || strings.ContainsAny(c.cred.Password, "\x00\n\r") {
			return nil, fmt.Errorf("new PostgreSQL engine: the %s role's username or password contains NUL or a line break", c.what)
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Engine{o: o, log: o.Logger.With("component", "postgres")}
	if _, err := RenderConf(e.settings(StartOptions{Standby: true, Primary: &Source{Host: "localhost", Port: 1}})); err != nil {
		return nil, fmt.Errorf("new PostgreSQL engine: %w", err)
	}
	return e, nil
}

// DataDir returns the data directory.
func (e *Engine) DataDir() string { return e.o.DataDir }

// Source is another member's PostgreSQL to clone, rewind or stream from.
type Source struct {
	Host string
	Port int
}

// String is host:port.
func (s Source) String() string { return fmt.Sprintf("%s:%d", s.Host, s.Port) }

// DataDirKind classifies the data directory.
type DataDirKind string

const (
	// DataDirMissing: the directory does not exist.
	DataDirMissing DataDirKind = "missing"
	// DataDirEmpty: the directory exists and is empty.
	DataDirEmpty DataDirKind = "empty"
	// DataDirValid: PG_VERSION is present; it holds a PostgreSQL cluster.
	DataDirValid DataDirKind = "valid"
	// DataDirInvalid: something that is not PostgreSQL data is there;
	// holdfast never touches it.
	DataDirInvalid DataDirKind = "invalid"
)

// Marker is holdfast.json in the data directory: which cluster and
// PostgreSQL system the data belongs to, written by WriteMarker.
type Marker struct {
	Cluster  string `json:"cluster"`
	SystemID string `json:"system_id"`
}

// MarkerFile is the marker's name inside the data directory.
const MarkerFile = "holdfast.json"

// DataDirState is what Inspect found.
type DataDirState struct {
	Kind DataDirKind
	// Control is pg_controldata's view; set for DataDirValid only.
	Control *ControlData
	// Marker is holdfast.json, nil when absent.
	Marker *Marker
	// Reason says, for DataDirInvalid, what is there.
	Reason string
}

// Err is nil except for DataDirInvalid, where it explains what is in the
// directory and that holdfast will not touch it.
func (s DataDirState) Err() error {
	if s.Kind != DataDirInvalid {
		return nil
	}
	return errors.New(s.Reason)
}

// Inspect looks at the data directory without changing anything. The error
// is for failures to look (permissions, pg_controldata failing on a
// damaged pg_control, an unreadable marker); an invalid directory is not an
// error of Inspect but Kind DataDirInvalid (see DataDirState.Err). With an
// error, the returned state still says what was found so far.
func (e *Engine) Inspect() (DataDirState, error) {
	kind, names, err := e.dirKind()
	if err != nil {
		return DataDirState{}, fmt.Errorf("inspect data directory: %w", err)
	}
	st := DataDirState{Kind: kind}
	if kind == DataDirMissing || kind == DataDirEmpty {
		return st, nil
	}
	if kind == DataDirInvalid && names == nil {
		st.Reason = fmt.Sprintf("data directory %s is not a directory; holdfast will not touch it: remove it or change the data directory", e.o.DataDir)
		return st, nil
	}
	m, err := e.readMarker()
	if err != nil {
		return st, fmt.Errorf("inspect data directory: %w", err)
	}
	st.Marker = m
	if kind == DataDirInvalid {
		shown := names
		more := ""
		if len(shown) > 10 {
			more = fmt.Sprintf(" and %d more", len(shown)-10)
			shown = shown[:10]
		}
		st.Reason = fmt.Sprintf("data directory %s is not empty but holds no PostgreSQL data (no PG_VERSION): it contains %s%s; holdfast will not touch it: move it away or change the data directory",
			e.o.DataDir, strings.Join(shown, ", "), more)
		return st, nil
	}
	out, err := e.run(context.Background(), "inspect data directory", "pg_controldata", []string{e.o.DataDir}, nil, false)
	if err != nil {
		return st, err
	}
	cd, err := ParseControlData(out)
	if err != nil {
		return st, fmt.Errorf("inspect data directory: %w", err)
	}
	st.Control = &cd
	return st, nil
}

// dirKind classifies DataDir from the file system alone. names lists the
// entries of a non-empty directory (nil for a non-directory).
func (e *Engine) dirKind() (DataDirKind, []string, error) {
	fi, err := os.Lstat(e.o.DataDir)
	if errors.Is(err, os.ErrNotExist) {
		return DataDirMissing, nil, nil
	}
	if err != nil {
		return "", nil, err
	}
	if !fi.IsDir() {
		return DataDirInvalid, nil, nil
	}
	entries, err := os.ReadDir(e.o.DataDir)
	if err != nil {
		return "", nil, err
	}
	if len(entries) == 0 {
		return DataDirEmpty, nil, nil
	}
	names := make([]string, 0, len(entries))
	valid := false
	for _, en := range entries {
		names = append(names, en.Name())
		if en.Name() == "PG_VERSION" && en.Type().IsRegular() {
			valid = true
		}
	}
	if valid {
		return DataDirValid, names, nil
	}
	return DataDirInvalid, names, nil
}

func (e *Engine) readMarker() (*Marker, error) {
	b, err := os.ReadFile(filepath.Join(e.o.DataDir, MarkerFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", MarkerFile, err)
	}
	var m Marker
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("read %s: %w", MarkerFile, err)
	}
	return &m, nil
}

// WriteMarker records in the data directory which cluster and system it
// belongs to (atomically, owned by the account), so a later start can tell
// a directory from another cluster. The data directory must exist.
func (e *Engine) WriteMarker(clusterName, sysid string) error {
	b, err := json.Marshal(Marker{Cluster: clusterName, SystemID: sysid})
	if err != nil {
		return fmt.Errorf("write marker: %w", err)
	}
	if err := e.writeFileAtomic(filepath.Join(e.o.DataDir, MarkerFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write marker: %w", err)
	}
	return nil
}

// Initdb creates a new cluster: initdb runs as the account into the
// sibling <DataDir>.initdb-tmp (any leftover from an interrupted attempt is
// removed first), with the superuser from Options (password from a
// temporary file only the account can read, removed afterwards),
// --auth=scram-sha-256 --data-checksums --encoding=UTF8 --locale=C and then
// Options.InitdbArgs (which can override those). Only a complete cluster is
// renamed into DataDir, so DataDir is never half-initialised, even if the
// agent dies meanwhile. It refuses a non-empty DataDir and leaves it as it
// is. ctx cancels initdb.
func (e *Engine) Initdb(ctx context.Context) error {
	const op = "initdb"
	e.log.Info("running initdb", "dir", e.o.DataDir)
	start := time.Now()
	err := e.buildInto(op, ".initdb-tmp", func(tmp string) error {
		pw, err := e.secretFile(e.o.Superuser.Password + "\n")
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		defer os.Remove(pw)
		args := []string{
			"-D", tmp,
			"--username=" + e.o.Superuser.Username,
			"--pwfile=" + pw,
			"--auth=scram-sha-256",
			"--data-checksums",
			"--encoding=UTF8",
			"--locale=C",
		}
		args = append(args, e.o.InitdbArgs...)
		_, err = e.run(ctx, op, "initdb", args, nil, true)
		return err
	})
	if err != nil {
		return err
	}
	e.log.Info("initdb done", "dir", e.o.DataDir, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// buildInto is how a data directory comes into being, by initdb or by a
// clone: it refuses a non-empty DataDir, lets build fill a fresh temporary
// sibling (DataDir+suffix, owned by the account), and renames it into
// DataDir only when build succeeded; otherwise the sibling is removed and
// DataDir is left as it was. So DataDir is never half-written, even if the
// agent dies meanwhile. Errors from build are returned as they are.
func (e *Engine) buildInto(op, suffix string, build func(tmp string) error) error {
	if err := e.requireEmpty(op); err != nil {
		return err
	}
	tmp := e.o.DataDir + suffix
	if err := e.prepareTemp(tmp); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	err := build(tmp)
	if err == nil {
		if err = e.install(tmp); err != nil {
			err = fmt.Errorf("%s: %w", op, err)
		}
	}
	if err != nil {
		if rerr := os.RemoveAll(tmp); rerr != nil {
			e.log.Warn("could not remove temporary directory", "dir", tmp, "err", rerr)
		}
	}
	return err
}

// Clone copies src with pg_basebackup (as the account, logged in as the
// replication role, password in PGPASSWORD; -X stream -c fast, no
// progress) into <DataDir>.clone-tmp and renames it into DataDir when
// complete. It refuses a non-empty DataDir; on failure the temporary
// directory is removed and DataDir is left as it was (absent or empty).
// The copy carries src's configuration files; Start rewrites holdfast's.
// ctx cancels pg_basebackup.
func (e *Engine) Clone(ctx context.Context, src Source) error {
	op := "clone from " + src.String()
	ci, err := conninfo(
		[2]string{"host", src.Host},
		[2]string{"port", strconv.Itoa(src.Port)},
		[2]string{"user", e.o.Replication.Username},
		[2]string{"application_name", e.o.Member},
		[2]string{"connect_timeout", "5"},
	)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	e.log.Info("cloning", "source", src.String(), "dir", e.o.DataDir)
	start := time.Now()
	err = e.buildInto(op, ".clone-tmp", func(tmp string) error {
		args := []string{"-D", tmp, "-d", ci, "-X", "stream", "-c", "fast", "--no-password"}
		_, err := e.run(ctx, op, "pg_basebackup", args, []string{"PGPASSWORD=" + e.o.Replication.Password}, true)
		return err
	})
	if err != nil {
		return err
	}
	e.log.Info("clone done", "source", src.String(), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// CloneWith builds DataDir as a clone by another means than
// pg_basebackup: fill writes a copy of this cluster's data into dir, an
// empty temporary sibling (<DataDir>.restore-tmp) owned by the account,
// and the result is renamed into DataDir only when fill succeeded and
// left PostgreSQL data there (PG_VERSION). It
// refuses a non-empty DataDir; on failure the temporary directory is
// removed and DataDir is left as it was (absent or empty), so a fallback
// to Clone can follow at once. how names the means in logs and errors
// (e.g. "restore of backup 20261206-101258F"). Like Clone, the result
// must be started as a standby (Start rewrites holdfast's configuration).
// ctx is passed to fill.
func (e *Engine) CloneWith(ctx context.Context, how string, fill func(ctx context.Context, dir string) error) error {
	op := "clone by " + how
	e.log.Info("cloning", "by", how, "dir", e.o.DataDir)
	start := time.Now()
	err := e.buildInto(op, ".restore-tmp", func(tmp string) error {
		if err := fill(ctx, tmp); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		if fi, err := os.Stat(filepath.Join(tmp, "PG_VERSION")); err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("%s: it wrote no PostgreSQL data (no PG_VERSION)", op)
		}
		return nil
	})
	if err != nil {
		return err
	}
	e.log.Info("clone done", "by", how, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// Rewind makes the stopped DataDir a copy of src's history with pg_rewind
// (as the account, connecting as the superuser, password in PGPASSWORD).
// The result says whether pg_rewind changed anything ("no rewind
// required" when not), where the histories diverged and where this
// directory's WAL ended before the rewind: the WAL between the two was
// thrown away (RewindResult.Discarded). On PostgreSQL 13+ pg_rewind first runs crash recovery itself
// (single-user mode) on a target that was not shut down cleanly; single-user
// mode refuses standby.signal, so Rewind removes standby.signal and
// recovery.signal first (Start writes what is needed). pg_rewind copies
// src's configuration files too, holdfast's included; Start rewrites them.
// Before pg_rewind, Rewind makes sure src's pg_control shows its current
// timeline (a CHECKPOINT on src if not): pg_rewind compares the timelines
// in pg_control, and a primary promoted moments ago still shows its old
// timeline there until its first checkpoint, which makes pg_rewind wrongly
// answer "no rewind required".
// After a rewind the directory is inconsistent until it has replayed src's
// WAL: start it only as a standby of src. Refuses while PostgreSQL runs.
// The error carries the tail of pg_rewind's output.
func (e *Engine) Rewind(ctx context.Context, src Source) (RewindResult, error) {
	op := "rewind from " + src.String()
	var res RewindResult
	if e.Running() {
		return res, fmt.Errorf("%s: PostgreSQL is running; stop it first", op)
	}
	if err := e.requireValid(op); err != nil {
		return res, err
	}
	// Read the end of the local WAL before pg_rewind replaces it: it is the
	// only record of how much a former primary wrote past the divergence.
	res.EndOfWAL = e.endOfWAL(ctx)
	for _, f := range []string{"standby.signal", "recovery.signal"} {
		if err := os.Remove(filepath.Join(e.o.DataDir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return res, fmt.Errorf("%s: %w", op, err)
		}
	}
	ci, err := conninfo(
		[2]string{"host", src.Host},
		[2]string{"port", strconv.Itoa(src.Port)},
		[2]string{"user", e.o.Superuser.Username},
		[2]string{"dbname", "postgres"},
		[2]string{"application_name", e.o.Member},
		[2]string{"connect_timeout", "5"},
	)
	if err != nil {
		return res, fmt.Errorf("%s: %w", op, err)
	}
	if err := e.checkpointIfBehind(ctx, ci); err != nil {
		return res, fmt.Errorf("%s: %w", op, err)
	}
	args := []string{"--target-pgdata=" + e.o.DataDir, "--source-server=" + ci}
	e.log.Info("running pg_rewind", "source", src.String(), "dir", e.o.DataDir)
	start := time.Now()
	out, err := e.run(ctx, op, "pg_rewind", args, []string{"PGPASSWORD=" + e.o.Superuser.Password}, true)
	if err != nil {
		return res, err
	}
	res.Rewound = !strings.Contains(out, "no rewind required")
	res.Diverged, _ = parseDivergence(out)
	e.log.Info("pg_rewind done", "source", src.String(), "rewound", res.Rewound, "diverged_at", res.Diverged.LSN, "diverged_timeline", res.Diverged.Timeline,
		"end_of_wal", res.EndOfWAL, "took", time.Since(start).Round(time.Millisecond))
	return res, nil
}

// RewindResult is what a pg_rewind did to the data directory.
type RewindResult struct {
	// Rewound is false when pg_rewind found nothing to do.
	Rewound bool
	// Diverged is where this directory's history left the source's, as
	// pg_rewind reports it ("servers diverged at WAL location X on
	// timeline T"): T is this directory's timeline there. Zero when
	// pg_rewind did not say.
	Diverged cluster.Position
	// EndOfWAL is the end of the last valid WAL record the directory held
	// before the rewind, read from its last checkpoint on the checkpoint's
	// timeline; zero when it could not be read. WAL the directory wrote on
	// a newer timeline than its last checkpoint's is not counted.
	EndOfWAL cluster.LSN
}

// Discarded is how many bytes of WAL the rewind threw away: from Diverged
// to EndOfWAL. 0 when nothing was rewound or either end is unknown.
func (r RewindResult) Discarded() int64 {
	if !r.Rewound || r.Diverged.LSN == 0 || r.EndOfWAL <= r.Diverged.LSN {
		return 0
	}
	return int64(r.EndOfWAL - r.Diverged.LSN)
}

// endOfWAL reads where the stopped directory's WAL ends, with pg_waldump
// from the last checkpoint; 0 when it cannot tell (logged). pg_waldump
// stops with an error at the first invalid record: that error names the
// position, which is the end.
func (e *Engine) endOfWAL(ctx context.Context) cluster.LSN {
	st, err := e.Inspect()
	if err != nil || st.Control == nil {
		e.log.Warn("read the end of WAL before pg_rewind: no pg_control", "err", err)
		return 0
	}
	c := st.Control
	args := []string{"--quiet", "--path=" + filepath.Join(e.o.DataDir, "pg_wal"),
		"--timeline=" + strconv.FormatUint(uint64(c.CheckpointTimeline), 10), "--start=" + c.CheckpointLSN.String()}
	out, _ := e.run(ctx, "read the end of WAL", "pg_waldump", args, nil, false)
	end, ok := parseWALEnd(out)
	if !ok || end < c.CheckpointLSN {
		e.log.Warn("read the end of WAL before pg_rewind: pg_waldump did not say", "output", lastLines(out, tailLines))
		return 0
	}
	return end
}

// lsnInText matches an LSN as PostgreSQL's programs print it.
var lsnInText = regexp.MustCompile(`\b[0-9A-F]{1,8}/[0-9A-F]{1,8}\b`)

// parseWALEnd reads the end of WAL from the output of pg_waldump --quiet:
// the highest LSN it names. Reading stops at the first invalid record with
// e.g. "error in WAL record at 0/164FC38: invalid record length at
// 0/164FDD0: wanted 24, got 0" (the end is the second position) or, on a
// recycled page, "unexpected pageaddr 0/1000000 in WAL segment ..., LSN
// 0/2000000, offset 0" (the end is the page's LSN); the other positions
// it prints are earlier.
func parseWALEnd(out string) (cluster.LSN, bool) {
	var end cluster.LSN
	found := false
	for _, m := range lsnInText.FindAllString(out, -1) {
		if l, err := cluster.ParseLSN(m); err == nil && l >= end {
			end, found = l, true
		}
	}
	return end, found
}

// divergenceRe matches pg_rewind's report of the divergence point.
var divergenceRe = regexp.MustCompile(`servers diverged at WAL location ([0-9A-F]+/[0-9A-F]+) on timeline ([0-9]+)`)

// parseDivergence reads "servers diverged at WAL location X on timeline T"
// from pg_rewind's output.
func parseDivergence(out string) (cluster.Position, bool) {
	m := divergenceRe.FindStringSubmatch(out)
	if m == nil {
		return cluster.Position{}, false
	}
	l, err := cluster.ParseLSN(m[1])
	if err != nil {
		return cluster.Position{}, false
	}
	t, err := strconv.ParseUint(m[2], 10, 32)
	if err != nil {
		return cluster.Position{}, false
	}
	return cluster.Position{Timeline: uint32(t), LSN: l}, true
}

// MoveAside renames DataDir to <DataDir>.old-<UTC time> and returns the new
// path. Earlier copies are kept, never deleted automatically: a member
// never destroys data it cannot prove replaceable (a diverged primary's
// copy may hold the only trace of some commits); their presence is logged
// for an operator to reclaim. reason is logged. Refuses while PostgreSQL
// runs or when DataDir does not exist.
func (e *Engine) MoveAside(reason string) (string, error) {
	const op = "move data directory aside"
	if e.Running() {
		return "", fmt.Errorf("%s: PostgreSQL is running; stop it first", op)
	}
	if _, err := os.Lstat(e.o.DataDir); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	// Earlier copies are never deleted automatically: one may hold the only
	// trace of commits a diverged primary made. Their presence is logged so
	// an operator can reclaim the space.
	if olds, _ := filepath.Glob(e.o.DataDir + ".old-*"); len(olds) > 0 {
		e.log.Warn("earlier moved-aside data directories are kept; remove them when no longer needed", "dirs", olds)
	}
	dst := e.o.DataDir + ".old-" + time.Now().UTC().Format("20060102T150405.000Z")
	if err := os.Rename(e.o.DataDir, dst); err != nil {
		return "", fmt.Errorf("%s: %w", op, err)
	}
	syncDir(filepath.Dir(e.o.DataDir))
	e.log.Warn("moved data directory aside", "from", e.o.DataDir, "to", dst, "reason", reason)
	return dst, nil
}

// requireValid refuses to work on a directory without PostgreSQL data.
func (e *Engine) requireValid(op string) error {
	kind, _, err := e.dirKind()
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if kind != DataDirValid {
		return fmt.Errorf("%s: data directory %s holds no PostgreSQL data (%s)", op, e.o.DataDir, kind)
	}
	return nil
}

// requireEmpty refuses to create a cluster over anything.
func (e *Engine) requireEmpty(op string) error {
	kind, names, err := e.dirKind()
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	switch kind {
	case DataDirMissing, DataDirEmpty:
		return nil
	case DataDirValid:
		return fmt.Errorf("%s: data directory %s already holds PostgreSQL data; refusing to overwrite it", op, e.o.DataDir)
	default:
		sort.Strings(names)
		return fmt.Errorf("%s: data directory %s is not empty (%s); refusing to touch it", op, e.o.DataDir, strings.Join(names, ", "))
	}
}

// prepareTemp makes a fresh, empty temporary sibling owned by the account.
func (e *Engine) prepareTemp(tmp string) error {
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("remove leftover %s: %w", tmp, err)
	}
	if err := os.MkdirAll(filepath.Dir(e.o.DataDir), 0o755); err != nil {
		return fmt.Errorf("create parent directory: %w", err)
	}
	return e.o.Account.MkdirOwned(tmp, 0o700)
}

// install renames a complete temporary cluster into DataDir (which is
// absent or an empty directory) and syncs the parent directory.
func (e *Engine) install(tmp string) error {
	if err := os.Rename(tmp, e.o.DataDir); err != nil {
		if errors.Is(err, syscall.EXDEV) || errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("rename %s to %s: %w (is the data directory a mount point? use a subdirectory of the volume)", tmp, e.o.DataDir, err)
		}
		return fmt.Errorf("rename %s to %s: %w", tmp, e.o.DataDir, err)
	}
	syncDir(filepath.Dir(e.o.DataDir))
	return nil
}

// secretFile writes content to a new file in DataDir's parent that only the
// account can read, and returns its path. The caller removes it.
func (e *Engine) secretFile(content string) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(e.o.DataDir), ".holdfast-secret-*")
	if err != nil {
		return "", fmt.Errorf("create password file: %w", err)
	}
	name := f.Name()
	fail := func(err error) (string, error) {
		f.Close()
		os.Remove(name)
		return "", fmt.Errorf("write password file: %w", err)
	}
	if err := f.Chmod(0o600); err != nil {
		return fail(err)
	}
	if err := e.o.Account.Chown(name); err != nil {
		return fail(err)
	}
	if _, err := f.WriteString(content); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(name)
		return "", fmt.Errorf("write password file: %w", err)
	}
	return name, nil
}

// writeFileAtomic replaces path with data: a temporary file in the same
// directory, owned by the account, synced, then renamed over path, so
// PostgreSQL never reads a half-written file.
func (e *Engine) writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := fmt.Sprintf("%s.tmp-%x", path, rnd)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Chmod(mode); err != nil {
		return fail(err)
	}
	if err := e.o.Account.Chown(tmp); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	syncDir(filepath.Dir(path))
	return nil
}

// syncDir makes a rename in dir durable; failures only cost durability.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
