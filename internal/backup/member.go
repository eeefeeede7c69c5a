package backup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/osuser"
)

// Timeouts of the member's backup work.
const (
	// tendInterval is how often the member checks its stanza and the
	// archiver's statistics.
	tendInterval = 2 * time.Second
	// stanzaRetry is how long after a failed stanza-create it tries again.
	stanzaRetry = 10 * time.Second
	// queryTimeout bounds one statistics query or one data_directory read.
	queryTimeout = 5 * time.Second
	// stanzaTimeout bounds stanza-create.
	stanzaTimeout = 2 * time.Minute
	// backupTimeout bounds one backup.
	backupTimeout = 6 * time.Hour
	// infoTimeout bounds one `pgbackrest info`.
	infoTimeout = time.Minute
	// stanzaReadyWait is how long a backup waits for the stanza to exist
	// before it runs: the primary creates it once it runs (a stanza-create
	// after every start), and a backup asked for right after a cluster
	// came up failed with pgBackRest's "backup.info is missing".
	stanzaReadyWait = 30 * time.Second
	// lockWait is how long a backup waits for another pgBackRest on this
	// member to release the stanza's backup lock (a stopped backup's
	// workers hold it a moment after it exits).
	lockWait = 30 * time.Second
)

// Files inside a member's data_dir.
const (
	workDirName = "pgbackrest"
	confName    = "pgbackrest.conf"
	// secretsName holds the repository's secrets for holdfast archive-push
	// and archive-get (mode 0600, the PostgreSQL account's).
	secretsName = "pgbackrest.secrets"
	gateName    = "archive-grant"
)

// MemberOptions configure a member's backups.
type MemberOptions struct {
	Cluster, Member string
	// DataDir is the member's data_dir; PGData its PostgreSQL data
	// directory.
	DataDir, PGData string
	// Host and Port reach this member's PostgreSQL.
	Host string
	Port int
	// User and Password are the superuser's.
	User, Password string
	// Repo is the repository (backup.NewRepo resolves the configuration).
	Repo          Repo
	Stanza        string
	RetentionFull int
	Account       osuser.Account
	// Exe is the holdfast binary (the archive command runs it).
	Exe string
	// Load reads the cluster's view (who leads, where each member is).
	Load func(context.Context) (cluster.View, error)
	// Peer reaches the other members' APIs (the leader starts scheduled
	// backups through them).
	Peer api.ClientOptions
	// TLS, when set, runs pgBackRest's TLS server on this member and lets
	// a backup from this member as a standby reach a primary on another
	// host through that primary's server. NewMember refuses files that do
	// not load (CheckTLS).
	TLS    *TLSOptions
	Logger *slog.Logger
}

// Member is one member's side of backups: the archive gate and command,
// the stanza (created by whichever member leads), backups it takes when
// asked, and the archiver's statistics for /metrics. Observe and the
// BackupService methods are safe for concurrent use; Run runs once.
type Member struct {
	o       MemberOptions
	log     *slog.Logger
	gate    *Gate
	workDir string
	tool    Tool

	mu       sync.Mutex
	leading  bool
	stanzaOK bool // created or verified in this leadership term
	stanzaAt time.Time
	// secured: the earlier timelines pushed and pgbackrest check passed in
	// this leadership term; check is the last attempt's result.
	secured bool
	check   *ArchiveCheck
	stats   *ArchiverStats
	// statsErr is why the last read of the statistics failed ("" when
	// it succeeded).
	statsErr string
	job      *Job
	// stopJob cancels the running job (nil when none runs).
	stopJob context.CancelFunc
	// clone is how the data directory was last built as a replica.
	clone *CloneReport
	// scheduleRetryAt: the schedule waits until then after a failure.
	scheduleRetryAt time.Time
	ctx             context.Context // Run's, for background backups
	// tlsServer is the running pgBackRest TLS server (nil when none runs).
	tlsServer *os.Process
}

// Job is the last backup a member ran or runs.
type Job struct {
	Type    string `json:"type"`
	Member  string `json:"member"`
	Standby bool   `json:"from_standby"`
	// Primary is the member that led when the backup started (the one
	// pgBackRest starts and stops the backup on).
	Primary  string    `json:"primary,omitempty"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	Running  bool      `json:"running"`
	Error    string    `json:"error,omitempty"`
	// PrimaryChanged: the backup failed and the primary changed (or lost
	// its leadership) while it ran — a switchover, a failover. pgBackRest
	// lost the session the backup was started in and stopped; nothing
	// of it can be restored, and taking it again will work.
	PrimaryChanged bool `json:"primary_changed,omitempty"`
}

// List is GET /backups: the stanza and the member's last job.
type List struct {
	Stanza Stanza `json:"stanza"`
	Job    *Job   `json:"job,omitempty"`
	// Check is the leader's last archive check (only when the answering
	// member leads).
	Check *ArchiveCheck `json:"archive_check,omitempty"`
	// Schedule is the cluster's backup schedule judged against the
	// repository (nil when nothing is scheduled).
	Schedule *ScheduleStatus `json:"schedule,omitempty"`
	// Clone is how the answering member's data directory was last built
	// as a replica by this agent (nil when it was not).
	Clone *CloneReport `json:"last_clone,omitempty"`
}

// ArchiverStats is PostgreSQL's pg_stat_archiver on the primary, and the
// WAL files waiting to be archived.
type ArchiverStats struct {
	ArchivedCount    int64
	LastArchivedWAL  string
	LastArchivedTime time.Time
	FailedCount      int64
	LastFailedWAL    string
	LastFailedTime   time.Time
	// Ready is how many WAL files wait to be archived (.ready files in
	// pg_wal/archive_status); OldestReady when the oldest of them was
	// marked ready (zero when none).
	Ready       int64
	OldestReady time.Time
	// DBNow is PostgreSQL's now() at the read: the times above are on
	// the database's clock, and ages are measured on it too.
	DBNow time.Time
	// ReadAt is when (this process's clock) the statistics were read.
	ReadAt time.Time
}

// NewMember prepares the member's pgBackRest files: its work directory and
// configuration (pg1 = this member), a password file, and for a
// repository with secrets the file holdfast archive-push and archive-get
// read them from
// (0600, the PostgreSQL account's), and with TLS the TLS server's
// configuration. It refuses a POSIX repository that is not an existing
// directory and TLS files that do not load (CheckTLS), before anything is
// written; an S3 repository is checked by CheckStanza.
func NewMember(o MemberOptions) (*Member, error) {
	if !o.Repo.IsS3() {
		fi, err := os.Stat(o.Repo.Location)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("backup.repository %s does not exist: create the directory (owned by %s) or mount the repository's volume there", o.Repo, o.Account.Name)
		case err != nil:
			return nil, fmt.Errorf("backup.repository %s cannot be reached: %w", o.Repo, err)
		case !fi.IsDir():
			return nil, fmt.Errorf("backup.repository %s is not a directory", o.Repo)
		}
	}
	if o.TLS != nil {
		t, err := CheckTLS(*o.TLS)
		if err != nil {
			return nil, err
		}
		o.TLS = &t
	}
	m := &Member{o: o, log: o.Logger, workDir: filepath.Join(o.DataDir, workDirName)}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.gate = NewGate(filepath.Join(o.DataDir, gateName))
	if err := m.gate.Revoke(); err != nil { // a grant left by a previous agent is not ours
		return nil, err
	}
	for _, d := range []string{m.workDir, filepath.Join(m.workDir, "log"), filepath.Join(m.workDir, "lock"), filepath.Join(m.workDir, "spool")} {
		if err := o.Account.MkdirOwned(d, 0o700); err != nil {
			return nil, fmt.Errorf("create pgBackRest work directory %s: %w", d, err)
		}
	}
	conf, err := RenderConf(m.settings(nil))
	if err != nil {
		return nil, err
	}
	if err := m.writeOwned(m.ConfigFile(), conf, 0o600); err != nil {
		return nil, err
	}
	if o.Repo.Secrets.Empty() {
		if err := os.Remove(m.secretsFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove %s: %w", m.secretsFile(), err)
		}
	} else if err := m.writeOwned(m.secretsFile(), encodeSecrets(o.Repo.Secrets), 0o600); err != nil {
		return nil, err
	}
	pgpass := fmt.Sprintf("*:*:*:%s:%s\n", pgpassEscape(o.User), pgpassEscape(o.Password))
	if err := m.writeOwned(m.passFile(), pgpass, 0o600); err != nil {
		return nil, err
	}
	m.tool = m.toolFor(m.ConfigFile())
	if o.TLS != nil {
		if err := m.writeServerConf(); err != nil {
			return nil, err
		}
	} else if err := os.Remove(m.serverConfFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove %s: %w", m.serverConfFile(), err)
	}
	return m, nil
}

// CheckStanza refuses a stanza that holds another database than this
// member's data directory (systemID, its "Database system identifier"; ""
// when there is no data yet), and a repository pgBackRest cannot read. The
// agent calls it at start, before PostgreSQL archives anything.
func (m *Member) CheckStanza(ctx context.Context, systemID string) error {
	ctx, cancel := context.WithTimeout(ctx, infoTimeout)
	defer cancel()
	t := m.tool
	t.IOTimeout = probeIOTimeout
	st, err := t.Info(ctx)
	if err != nil {
		return fmt.Errorf("backup.repository: %w", explainRead(m.o.Repo, m.o.Stanza, err))
	}
	return CheckOwner(st, systemID, m.o.Repo.String())
}

func pgpassEscape(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == ':' || s[i] == '\\' {
			out = append(out, '\\')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// ConfigFile is the member's pgbackrest.conf.
func (m *Member) ConfigFile() string { return filepath.Join(m.workDir, confName) }

func (m *Member) passFile() string { return filepath.Join(m.workDir, "pgpass") }

// secretsFile holds the repository's secrets for holdfast archive-push
// and archive-get.
func (m *Member) secretsFile() string { return filepath.Join(m.workDir, secretsName) }

// Gate is the member's archive gate.
func (m *Member) Gate() *Gate { return m.gate }

// Tool runs pgbackrest with the member's configuration.
func (m *Member) Tool() Tool { return m.tool }

func (m *Member) toolFor(conf string) Tool {
	return Tool{Config: conf, Stanza: m.o.Stanza, Account: m.o.Account, Secrets: m.o.Repo.Secrets,
		Env: []string{"PGHOST=" + m.o.Host, "PGPASSFILE=" + m.passFile(), "PGSSLMODE=disable"}}
}

// settings is the member's pgbackrest.conf; with primary, for a backup
// from this standby.
func (m *Member) settings(primary *PGCluster) Settings {
	s := Settings{Repo: m.o.Repo, Stanza: m.o.Stanza, RetentionFull: m.o.RetentionFull, WorkDir: m.workDir,
		PG: []PGCluster{{Path: m.o.PGData, Port: m.o.Port, User: m.o.User}}}
	if primary != nil {
		s.PG = append(s.PG, *primary)
		s.BackupStandby = true
	}
	return s
}

func (m *Member) writeOwned(path, content string, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := m.o.Account.Chown(tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Parameters are the PostgreSQL settings archiving needs: archive_mode on
// (PostgreSQL archives only while it is a primary), the gated archive
// command, and the restore_command that fetches WAL from the archive.
// They go into holdfast.conf, which every start rewrites, so they are
// never lost to a rewrite. PostgreSQL uses restore_command only in
// recovery: a replica restored from a backup replays the archive with it
// before it streams, and a standby that fell behind what the primary still
// keeps catches up from the archive instead of needing a new clone.
//
// Both commands run holdfast (archive-push, archive-get), which reads a
// repository's secrets (S3 credentials, the cipher passphrase) from the
// member's 0600 secrets file and hands them to pgBackRest in its
// environment: PostgreSQL runs its commands without the agent's
// environment, and the secrets are in no file pgBackRest reads.
func (m *Member) Parameters() map[string]string {
	secrets := ""
	if !m.o.Repo.Secrets.Empty() {
		secrets = m.secretsFile()
	}
	return map[string]string{
		"archive_mode": "on",
		"archive_command": ArchiveCommand(ArchiveCommandOptions{Exe: m.o.Exe, Grant: m.gate.Path(), Config: m.ConfigFile(),
			Stanza: m.o.Stanza, Secrets: secrets}),
		"restore_command": RestoreCommand(RestoreCommandOptions{Exe: m.o.Exe, Config: m.ConfigFile(),
			Stanza: m.o.Stanza, Secrets: secrets}),
	}
}

// Observe takes the state the agent serves after each loop: a member that
// newly leads checks its stanza again.
func (m *Member) Observe(st api.MemberState) {
	leads := st.HoldsLeaderKey && st.Role == cluster.RolePrimary
	m.mu.Lock()
	defer m.mu.Unlock()
	if leads != m.leading {
		m.stanzaOK, m.stanzaAt, m.secured = false, time.Time{}, false
		if !leads {
			m.stats, m.statsErr = nil, ""
		}
		// A backup this member took as a standby cannot complete once it
		// leads: the primary it was started on has stepped down, and its
		// backup session with it. Left running it would copy for nothing
		// and hold pgBackRest's lock, which the new primary's stanza check
		// needs.
		if leads && m.job != nil && m.job.Running && m.job.Standby && m.stopJob != nil {
			m.log.Info("stopping this member's backup from a standby: it now leads, so the primary the backup was started on no longer does", "primary", m.job.Primary)
			m.stopJob()
		}
	}
	m.leading = leads
}

// Run tends the stanza and reads the archiver's statistics while this
// member leads, until ctx ends.
func (m *Member) Run(ctx context.Context) {
	m.mu.Lock()
	m.ctx = ctx
	m.mu.Unlock()
	scheduled := make(chan struct{})
	go func() { m.runSchedule(ctx); close(scheduled) }()
	defer func() { <-scheduled }()
	if m.o.TLS != nil {
		served := make(chan struct{})
		go func() { m.runTLSServer(ctx); close(served) }()
		defer func() { <-served }()
	}
	t := time.NewTicker(tendInterval)
	defer t.Stop()
	for {
		m.tend(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *Member) tend(ctx context.Context) {
	m.mu.Lock()
	leading, ok, at, secured := m.leading, m.stanzaOK, m.stanzaAt, m.secured
	lastCheck := m.check
	m.mu.Unlock()
	if !leading {
		return
	}
	if !ok && time.Since(at) >= stanzaRetry {
		c, cancel := context.WithTimeout(ctx, stanzaTimeout)
		err := m.tool.StanzaCreate(c)
		cancel()
		m.mu.Lock()
		m.stanzaOK, m.stanzaAt = err == nil, time.Now()
		m.mu.Unlock()
		if err != nil {
			m.log.Error("backup stanza: nothing can be archived until this is fixed", "stanza", m.o.Stanza, "repository", m.o.Repo.String(), "err", err)
		} else {
			m.log.Info("backup stanza ready", "stanza", m.o.Stanza, "repository", m.o.Repo.String())
			ok = true
		}
	}
	if ok && !secured && (lastCheck == nil || lastCheck.Error == "" || time.Since(lastCheck.At) >= stanzaRetry) {
		res := m.secureArchive(ctx)
		m.mu.Lock()
		if m.leading {
			m.check, m.secured = &res, res.Error == ""
		}
		m.mu.Unlock()
		if res.Error != "" {
			m.log.Error("archive check failed: the archive may not reach the latest WAL until this is fixed", "pushed", res.Pushed, "err", res.Error)
		} else {
			m.log.Info("archive check passed", "pushed_earlier_timeline_segments", res.Pushed)
		}
	}
	c, cancel := context.WithTimeout(ctx, queryTimeout)
	st, err := m.readArchiver(c)
	cancel()
	m.mu.Lock()
	if m.leading {
		if err != nil {
			m.statsErr = err.Error()
		} else {
			m.stats, m.statsErr = &st, ""
		}
	}
	m.mu.Unlock()
	if err != nil {
		m.log.Debug("read pg_stat_archiver", "err", err)
	}
}

func (m *Member) connect(ctx context.Context, host string, port int) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig("sslmode=disable dbname=postgres")
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Password = host, uint16(port), m.o.User, m.o.Password
	return pgx.ConnectConfig(ctx, cfg)
}

// archiverQuery reads pg_stat_archiver, the database's clock, and the WAL
// files waiting to be archived (pg_ls_archive_statusdir, PostgreSQL 12+,
// which the superuser may call).
const archiverQuery = `SELECT a.archived_count, a.last_archived_wal, a.last_archived_time,
	a.failed_count, a.last_failed_wal, a.last_failed_time, now(), r.n, r.oldest
FROM pg_stat_archiver a,
	(SELECT count(*) AS n, min(modification) AS oldest FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') r`

func (m *Member) readArchiver(ctx context.Context) (ArchiverStats, error) {
	conn, err := m.connect(ctx, m.o.Host, m.o.Port)
	if err != nil {
		return ArchiverStats{}, fmt.Errorf("read archiver statistics: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var st ArchiverStats
	var lastOK, lastFail *time.Time
	var okWAL, failWAL *string
	var oldest *time.Time
	err = conn.QueryRow(ctx, archiverQuery).
		Scan(&st.ArchivedCount, &okWAL, &lastOK, &st.FailedCount, &failWAL, &lastFail, &st.DBNow, &st.Ready, &oldest)
	if err != nil {
		return ArchiverStats{}, fmt.Errorf("read archiver statistics: %w", err)
	}
	if oldest != nil {
		st.OldestReady = *oldest
	}
	if lastOK != nil {
		st.LastArchivedTime = *lastOK
	}
	if lastFail != nil {
		st.LastFailedTime = *lastFail
	}
	if okWAL != nil {
		st.LastArchivedWAL = *okWAL
	}
	if failWAL != nil {
		st.LastFailedWAL = *failWAL
	}
	st.ReadAt = time.Now()
	return st, nil
}

// StartBackup implements api.BackupService: it starts a backup in the
// background — from this member's standby, with the primary's help
// (pgBackRest's backup-standby), or from this member when it leads — and
// returns the job. One backup at a time per member.
func (m *Member) StartBackup(ctx context.Context, typ string) (any, error) {
	m.mu.Lock()
	if m.job != nil && m.job.Running {
		j := *m.job
		m.mu.Unlock()
		return nil, api.Errorf(http.StatusConflict, "a %s backup started at %s is still running on %s", j.Type, j.Started.Format(time.RFC3339), m.o.Member)
	}
	runCtx, leading := m.ctx, m.leading
	m.mu.Unlock()
	if runCtx == nil {
		return nil, api.Errorf(http.StatusServiceUnavailable, "backups are starting on %s; try again", m.o.Member)
	}
	tool := m.tool
	standby := !leading
	var at primaryAt
	if standby {
		conf, p, err := m.standbyConfig(ctx)
		if err != nil {
			return nil, api.Errorf(http.StatusConflict, "backup from standby %s: %v", m.o.Member, err)
		}
		tool, at = m.toolFor(conf), p
	} else {
		v, err := m.o.Load(ctx)
		if err != nil {
			return nil, api.Errorf(http.StatusServiceUnavailable, "backup on %s: read the cluster: %v", m.o.Member, err)
		}
		if v.Leader == nil || v.Leader.Name != m.o.Member {
			return nil, api.Errorf(http.StatusConflict, "backup on %s: this member no longer leads; ask again (holdfast ctl backup chooses the member)", m.o.Member)
		}
		at = primaryAt{Leader: *v.Leader, Host: m.o.Host, Port: m.o.Port}
		if at.Started, err = m.postmasterStart(ctx, at.Host, at.Port); err != nil {
			return nil, api.Errorf(http.StatusServiceUnavailable, "backup on %s: %v", m.o.Member, err)
		}
	}
	primary := at.Leader
	job := &Job{Type: typ, Member: m.o.Member, Standby: standby, Primary: primary.Name, Started: time.Now().UTC(), Running: true}
	c, cancel := context.WithTimeout(runCtx, backupTimeout)
	m.mu.Lock()
	m.job, m.stopJob = job, cancel
	started := *job
	m.mu.Unlock()
	m.log.Info("backup started", "type", typ, "from_standby", standby, "primary", primary.Name)
	go func() {
		err := waitStanza(c, tool)
		if err == nil {
			err = backupWhenUnlocked(c, tool, typ)
		}
		cancel()
		changed := ""
		if err != nil {
			changed = m.primaryChange(runCtx, at)
		}
		m.mu.Lock()
		job.Running, job.Finished = false, time.Now().UTC()
		m.stopJob = nil
		if err != nil {
			job.Error = err.Error()
			if changed != "" {
				job.PrimaryChanged = true
				job.Error = fmt.Sprintf("%s during the backup: pgBackRest stopped it, and an aborted backup is never listed nor restored; take it again (holdfast ctl backup does once by itself, a backup_schedule within %s): %v",
					changed, scheduleRetry, err)
			}
		}
		took := job.Finished.Sub(job.Started)
		m.mu.Unlock()
		switch {
		case changed != "":
			m.log.Error("backup failed: the primary changed during it; it must be taken again", "type", typ, "change", changed, "err", err)
		case err != nil:
			m.log.Error("backup failed", "type", typ, "err", err)
		default:
			m.log.Info("backup finished", "type", typ, "took", took.Round(time.Millisecond))
		}
	}()
	return started, nil
}

// primaryAt is the primary a backup started with: its leader key, its
// address and when its PostgreSQL started.
type primaryAt struct {
	cluster.Leader
	Host    string
	Port    int
	Started time.Time
}

// primaryChange says how the cluster's primary changed since the backup
// started with at ("" when it did not, or the cluster cannot be read). A
// new term of the same member counts: its lease, and so the PostgreSQL
// session pgBackRest started the backup in, may be gone. So does a restart
// of the same primary's PostgreSQL within its term (a switchover the
// primary cancelled after stopping PostgreSQL): the session is gone too.
func (m *Member) primaryChange(ctx context.Context, at primaryAt) string {
	c, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	v, err := m.o.Load(c)
	if err != nil {
		return ""
	}
	if d := describePrimaryChange(at.Leader, v.Leader); d != "" {
		return d
	}
	now, err := m.postmasterStart(c, at.Host, at.Port)
	if err != nil || now.Equal(at.Started) {
		return ""
	}
	return fmt.Sprintf("the primary %s's PostgreSQL restarted (at %s)", at.Name, now.UTC().Format(time.RFC3339))
}

// postmasterStart reads when the PostgreSQL at host:port started.
func (m *Member) postmasterStart(ctx context.Context, host string, port int) (time.Time, error) {
	c, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	conn, err := m.connect(c, host, port)
	if err != nil {
		return time.Time{}, fmt.Errorf("read the primary's start time: %w", err)
	}
	defer conn.Close(context.WithoutCancel(c))
	var t time.Time
	if err := conn.QueryRow(c, "SELECT pg_postmaster_start_time()").Scan(&t); err != nil {
		return time.Time{}, fmt.Errorf("read the primary's start time: %w", err)
	}
	return t, nil
}

// describePrimaryChange compares the leader key at a backup's start with
// now's (nil: no leader) and says how it changed ("" = the same term).
func describePrimaryChange(at cluster.Leader, now *cluster.Leader) string {
	switch {
	case now == nil:
		return fmt.Sprintf("the primary %s lost its leadership (no primary now)", at.Name)
	case now.Name != at.Name:
		return fmt.Sprintf("the primary changed from %s to %s (a switchover or failover)", at.Name, now.Name)
	case now.LeaseID != at.LeaseID:
		return fmt.Sprintf("the primary %s lost and regained its leadership", at.Name)
	}
	return ""
}

// standbyConfig writes the configuration of a backup from this standby:
// pg1 this member, pg2 the current primary (its data directory read from
// the primary itself, since pgBackRest checks it), and returns the leader
// key it was written for, with the primary's address and start time. A
// primary on this host is read from this machine's file system (the local
// cluster's case); one on another host — every pod of a StatefulSet — is
// reached through its pgBackRest TLS server, which needs TLS configured on
// this member and the primary registered with its server's port. Without
// either, a primary elsewhere is refused.
func (m *Member) standbyConfig(ctx context.Context) (string, primaryAt, error) {
	v, err := m.o.Load(ctx)
	if err != nil {
		return "", primaryAt{}, fmt.Errorf("read the cluster: %w", err)
	}
	if v.Leader == nil {
		return "", primaryAt{}, errors.New("no primary: a backup from a standby needs one (try again once a primary leads)")
	}
	leader := primaryAt{Leader: *v.Leader}
	if st, ok := v.Statuses[m.o.Member]; !ok || !st.Streaming {
		return "", leader, errors.New("this member is not streaming from the primary")
	}
	p, ok := v.Members[leader.Name]
	if !ok || p.Host == "" {
		return "", leader, fmt.Errorf("the primary %s has no registered address", leader.Name)
	}
	remote := p.Host != m.o.Host
	if remote && (m.o.TLS == nil || p.BackupTLSPort == 0) {
		// pg2 would be reached on this host (PGHOST) and read from this
		// file system: a primary elsewhere would fail pgBackRest late and
		// obscurely. ctl.BackupSource never picks such a replica.
		return "", leader, fmt.Errorf("the primary %s is on another host (%s, this member %s) and backup.tls is not configured on both: a backup from a standby needs pgBackRest's TLS server on the primary and a client certificate here; take it on the primary (holdfast ctl backup chooses it)", leader.Name, p.Host, m.o.Host)
	}
	c, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	conn, err := m.connect(c, p.Host, p.Port)
	if err != nil {
		return "", leader, fmt.Errorf("connect to the primary %s at %s: %w", leader.Name, net.JoinHostPort(p.Host, strconv.Itoa(p.Port)), err)
	}
	defer conn.Close(context.WithoutCancel(c))
	var dir string
	if err := conn.QueryRow(c, "SELECT current_setting('data_directory'), pg_postmaster_start_time()").Scan(&dir, &leader.Started); err != nil {
		return "", leader, fmt.Errorf("read the primary's data directory: %w", err)
	}
	leader.Host, leader.Port = p.Host, p.Port
	pc := &PGCluster{Path: dir, Port: p.Port, User: m.o.User}
	if remote {
		pc.Host, pc.TLS = p.Host, m.clientTLS(p.BackupTLSPort)
	}
	conf, err := RenderConf(m.settings(pc))
	if err != nil {
		return "", leader, err
	}
	path := filepath.Join(m.workDir, "pgbackrest-standby.conf")
	if err := m.writeOwned(path, conf, 0o600); err != nil {
		return "", leader, err
	}
	return path, leader, nil
}

// Backups implements api.BackupService.
func (m *Member) Backups(ctx context.Context) (any, error) {
	st, err := m.tool.Info(ctx)
	if err != nil {
		return nil, err
	}
	l := List{Stanza: st}
	if v, err := m.o.Load(ctx); err == nil {
		l.Schedule = scheduleStatus(v.Config, st, time.Now())
	}
	m.mu.Lock()
	if m.job != nil {
		j := *m.job
		l.Job = &j
	}
	if m.check != nil && m.leading {
		c := *m.check
		l.Check = &c
	}
	if m.clone != nil {
		c := *m.clone
		l.Clone = &c
	}
	m.mu.Unlock()
	return l, nil
}

// Stats returns the archiver statistics last read while this member led
// (false when none).
func (m *Member) Stats() (ArchiverStats, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stats == nil {
		return ArchiverStats{}, false
	}
	return *m.stats, true
}

// Collector serves the archiving metrics.
func (m *Member) Collector() prometheus.Collector {
	labels := prometheus.Labels{"cluster": m.o.Cluster, "member": m.o.Member}
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, labels) }
	return &archiveCollector{m: m,
		granted:  d("holdfast_archive_granted", "1 while this member may archive WAL (it leads under a valid lease), else 0."),
		archived: d("holdfast_archive_archived_count", "WAL files this primary archived since its statistics were reset (pg_stat_archiver); absent unless this member leads."),
		failed:   d("holdfast_archive_failed_count", "Failed attempts to archive WAL on this primary (pg_stat_archiver); absent unless this member leads."),
		age:      d("holdfast_archive_last_archived_age_seconds", "Seconds since this primary last archived a WAL file; absent unless it leads and has archived one."),
		failAge:  d("holdfast_archive_last_failed_age_seconds", "Seconds since this primary last failed to archive a WAL file; absent unless it leads and one failed."),
	}
}

type archiveCollector struct {
	m                                       *Member
	granted, archived, failed, age, failAge *prometheus.Desc
}

func (c *archiveCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.granted, c.archived, c.failed, c.age, c.failAge} {
		ch <- d
	}
}

func (c *archiveCollector) Collect(ch chan<- prometheus.Metric) {
	g := 0.0
	if c.m.gate.Check() == nil {
		g = 1
	}
	ch <- prometheus.MustNewConstMetric(c.granted, prometheus.GaugeValue, g)
	st, ok := c.m.Stats()
	if !ok {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.archived, prometheus.GaugeValue, float64(st.ArchivedCount))
	ch <- prometheus.MustNewConstMetric(c.failed, prometheus.GaugeValue, float64(st.FailedCount))
	now := time.Now()
	if !st.LastArchivedTime.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, now.Sub(st.LastArchivedTime).Seconds())
	}
	if !st.LastFailedTime.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.failAge, prometheus.GaugeValue, now.Sub(st.LastFailedTime).Seconds())
	}
}

// waitStanza waits up to stanzaReadyWait for the stanza to exist in the
// repository (the primary creates it), polling every second.
// backupWhenUnlocked takes the backup, trying again for up to lockWait
// while another pgBackRest holds the stanza's backup lock on this member —
// a backup just stopped (its workers exit a moment after it), an expire.
func backupWhenUnlocked(ctx context.Context, tool Tool, typ string) error {
	deadline := time.Now().Add(lockWait)
	for {
		err := tool.Backup(ctx, typ)
		if !LockHeld(err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
}

func waitStanza(ctx context.Context, tool Tool) error {
	deadline := time.Now().Add(stanzaReadyWait)
	for {
		ic, cancel := context.WithTimeout(ctx, infoTimeout)
		st, err := tool.Info(ic)
		cancel()
		if err == nil && st.Exists() {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("read stanza %s before the backup: %w", tool.Stanza, err)
			}
			return fmt.Errorf("stanza %s does not exist in the repository yet (the primary creates it once it runs; see its log): try again", tool.Stanza)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for stanza %s: %w", tool.Stanza, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}
