package pg

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/holdfast/holdfast/internal/cluster"
)

// SQLSTATEs holdfast tells apart.
const (
	sqlstateCannotConnectNow = "57P03" // starting up, shutting down, not yet consistent
	sqlstateAdminShutdown    = "57P01" // terminating connection due to administrator command
	sqlstateCrashShutdown    = "57P02"
	sqlstateDuplicateObject  = "42710"
	sqlstateNotInPrereq      = "55000" // e.g. pg_promote: recovery is not in progress
)

// connect returns the open connection or opens one: as the superuser, over TCP
// to ConnectHost:Port, database postgres, connect timeout 1 s.
func (e *Engine) connect(ctx context.Context) (*pgx.Conn, error) {
	if e.conn != nil && !e.conn.IsClosed() {
		return e.conn, nil
	}
	e.conn = nil
	c, err := e.dial(ctx)
	if err != nil {
		return nil, err
	}
	e.conn, e.connAt = c, time.Now()
	return c, nil
}

// dial opens a new connection as the superuser (connect timeout 1 s).
func (e *Engine) dial(ctx context.Context) (*pgx.Conn, error) {
	ci, err := conninfo(
		[2]string{"host", e.o.ConnectHost},
		[2]string{"port", strconv.Itoa(e.o.Port)},
		[2]string{"user", e.o.Superuser.Username},
		[2]string{"dbname", "postgres"},
		[2]string{"application_name", "holdfast"},
		[2]string{"connect_timeout", "1"},
		[2]string{"sslmode", "prefer"},
	)
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(ci)
	if err != nil {
		return nil, err
	}
	cfg.Password = e.o.Superuser.Password
	return pgx.ConnectConfig(ctx, cfg)
}

// statusConnMaxAge is how long Status keeps using one connection before it
// opens a new one. A query on an open connection proves only that its
// backend answers: a frozen or hung postmaster (SIGSTOP, a stuck system
// call) accepts no new connection while the old ones go on working, and
// an agent that never reconnected reported such a primary healthy while
// every new client waited (18.5 s in the fault suite, as long as the
// freeze). Reconnecting this often costs one backend start per member
// every few seconds.
const statusConnMaxAge = 5 * time.Second

// serverAnswered reports whether a failed connection attempt got an answer
// from the server (an ErrorResponse: too many connections, a password
// refused, pg_hba): the postmaster is alive and forked a backend, so it
// is not frozen. Only an attempt that got no answer (a timeout, a refused
// TCP connection) means the postmaster accepts no new client — a
// connection storm or a rotated password must not fail the primary over.
func serverAnswered(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr)
}

// renewConn replaces a Status connection older than statusConnMaxAge with
// a new one. The old one is dropped only once the new one is open: when
// the postmaster accepts no new connection, the old one still answers the
// status query and the failure is returned (Status.RefusesConnections).
func (e *Engine) renewConn(ctx context.Context) error {
	if e.conn == nil || e.conn.IsClosed() || time.Since(e.connAt) < statusConnMaxAge {
		return nil
	}
	c, err := e.dial(ctx)
	if err != nil {
		return fmt.Errorf("open a new connection: %w", err)
	}
	e.closeConn()
	e.conn, e.connAt = c, time.Now()
	return nil
}

// closeConn drops the connection (after a failure, or when PostgreSQL is
// being stopped or restarted).
func (e *Engine) closeConn() {
	if e.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = e.conn.Close(ctx)
	e.conn = nil
}

// Close closes the SQL connection. It does not stop PostgreSQL.
func (e *Engine) Close() { e.closeConn() }

// withConn runs f on the connection. A failure that is not an error the
// server reported (the connection broke, e.g. because PostgreSQL restarted
// its backends after a crash) drops the connection; the call is then tried
// once more on a fresh connection only when idempotent is set, so a write
// is never applied twice. (pgx's SafeToRetry is not trusted for that: pgx
// 5.x reports a statement the server received, on a connection the server
// then closed without answering, as safe to retry.)
func (e *Engine) withConn(ctx context.Context, idempotent bool, f func(*pgx.Conn) error) error {
	for attempt := 0; ; attempt++ {
		c, err := e.connect(ctx)
		if err != nil {
			return err
		}
		err = f(c)
		if err == nil {
			return nil
		}
		var pgErr *pgconn.PgError
		serverSaid := errors.As(err, &pgErr)
		if !serverSaid || c.IsClosed() || isShutdownCode(pgErr) {
			e.closeConn()
		}
		if serverSaid || attempt > 0 || ctx.Err() != nil || !idempotent {
			return err
		}
	}
}

func isShutdownCode(pgErr *pgconn.PgError) bool {
	if pgErr == nil {
		return false
	}
	switch pgErr.Code {
	case sqlstateCannotConnectNow, sqlstateAdminShutdown, sqlstateCrashShutdown:
		return true
	}
	return false
}

// notReady reports whether err means PostgreSQL is up (or coming up, or
// going down) but cannot answer yet: the server said so (57P0x), or it
// refuses TCP connections while the postmaster we started runs (it has not
// opened its socket yet).
func (e *Engine) notReady(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return isShutdownCode(pgErr)
	}
	return errors.Is(err, syscall.ECONNREFUSED) && e.Running()
}

const statusQuery = `
SELECT pg_is_in_recovery(),
       (SELECT system_identifier::text FROM pg_control_system()),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END,
       pg_last_wal_receive_lsn()::text,
       pg_last_wal_replay_lsn()::text,
       (SELECT timeline_id FROM pg_control_checkpoint())::int8,
       (SELECT min_recovery_end_timeline FROM pg_control_recovery())::int8,
       r.received_tli::int8,
       r.status,
       r.sender_host,
       r.sender_port::int8,
       current_setting('synchronous_standby_names'),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END,
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE
         (SELECT json_agg(json_build_object('name', application_name, 'state', state, 'sync_state', sync_state, 'flush', flush_lsn::text,
                  'reply_us', (extract(epoch FROM reply_time) * 1000000)::bigint))::text
          FROM pg_stat_replication) END
FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true`

// Status asks PostgreSQL where it stands, in one SQL round trip as the
// superuser over TCP (one connection is kept open, reopened on failure and
// replaced every statusConnMaxAge — a postmaster that stopped accepting
// connections shows as RefusesConnections within that; connect timeout
// 1 s; ctx bounds the whole call). When PostgreSQL is up but
// not accepting connections yet (starting, recovering to consistency,
// shutting down) it returns Ready=false and no error. An error means the
// connection or query failed unexpectedly (wrong password, timeout,
// PostgreSQL not running, ...).
func (e *Engine) Status(ctx context.Context) (Status, error) {
	// The probe gets at most half of ctx: the query on the old connection
	// must still have its share when the postmaster does not answer.
	probeErr := func() error {
		pctx, cancel := ctx, context.CancelFunc(func() {})
		if dl, ok := ctx.Deadline(); ok {
			pctx, cancel = context.WithTimeout(ctx, time.Until(dl)/2)
		}
		defer cancel()
		return e.renewConn(pctx)
	}()
	var (
		st                            Status
		sysid                         string
		writeLSN, walFile, recv, repl *string
		ckptTLI, minRecTLI, recvTLI   *int64
		wrStatus, senderHost          *string
		senderPort                    *int64
		flushLSN, replicas            *string
	)
	err := e.withConn(ctx, true, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, statusQuery).Scan(&st.InRecovery, &sysid, &writeLSN, &walFile, &recv, &repl,
			&ckptTLI, &minRecTLI, &recvTLI, &wrStatus, &senderHost, &senderPort,
			&st.SyncStandbyNames, &flushLSN, &replicas)
	})
	if err != nil {
		if e.notReady(err) {
			return Status{}, nil
		}
		return Status{}, fmt.Errorf("query PostgreSQL status: %w", err)
	}
	st.Ready = true
	st.SystemID = sysid
	if probeErr != nil && !serverAnswered(probeErr) {
		st.RefusesConnections = true
		e.log.Warn("PostgreSQL answers on an open connection but accepts no new one", "err", probeErr)
	} else if probeErr != nil {
		e.log.Warn("a new connection to PostgreSQL was refused by the server (it answers: not a frozen postmaster)", "err", probeErr)
	}
	lsn := func(p *string) (cluster.LSN, error) {
		if p == nil {
			return 0, nil
		}
		return cluster.ParseLSN(*p)
	}
	if st.WriteLSN, err = lsn(writeLSN); err != nil {
		return Status{}, fmt.Errorf("query PostgreSQL status: %w", err)
	}
	if st.ReceiveLSN, err = lsn(recv); err != nil {
		return Status{}, fmt.Errorf("query PostgreSQL status: %w", err)
	}
	if st.ReplayLSN, err = lsn(repl); err != nil {
		return Status{}, fmt.Errorf("query PostgreSQL status: %w", err)
	}
	if st.FlushLSN, err = lsn(flushLSN); err != nil {
		return Status{}, fmt.Errorf("query PostgreSQL status: %w", err)
	}
	if replicas != nil {
		if st.Replicas, err = parseReplicas(*replicas); err != nil {
			return Status{}, fmt.Errorf("query PostgreSQL status: %w", err)
		}
	}
	st.Streaming = wrStatus != nil && *wrStatus == "streaming"
	if walFile != nil {
		if st.Timeline, err = timelineFromWALFile(*walFile); err != nil {
			return Status{}, fmt.Errorf("query PostgreSQL status: %w", err)
		}
	} else {
		// A standby: pg_control's timelines are durable but lag a timeline
		// switch; received_tli is current only while the WAL receiver runs
		// (its row vanishes when the primary dies, exactly when the leader
		// race needs the answer).
		var control uint32
		for _, p := range []*int64{ckptTLI, minRecTLI} {
			if p != nil && *p > 0 && uint32(*p) > control {
				control = uint32(*p)
			}
		}
		st.Timeline = control
		if recvTLI != nil && uint32(*recvTLI) > st.Timeline {
			st.Timeline = uint32(*recvTLI)
		}
		if st.Streaming {
			// Only a streaming standby's history files can be trusted: one
			// that fetched a newer timeline's history but forked off before
			// it cannot stream.
			if t := e.replayTimeline(max(st.ReplayLSN, st.ReceiveLSN)); t > st.Timeline {
				st.Timeline = t
			}
			// Record the timeline in pg_control with a restartpoint, so it
			// is still known after the primary is gone.
			if control < st.Timeline {
				e.restartpoint(ctx)
			}
		}
	}
	if senderHost != nil {
		st.UpstreamHost = *senderHost
	}
	if senderPort != nil {
		st.UpstreamPort = int(*senderPort)
	}
	return st, nil
}

// Promote ends recovery: SELECT pg_promote(true, n) (waiting up to n =
// min(60 s, ctx's remaining time) for PostgreSQL to leave recovery), then
// checks pg_is_in_recovery() until false or ctx is done, then runs a
// CHECKPOINT so pg_control (which pg_rewind and pg_controldata read) shows
// the new timeline at once: until that checkpoint completes, pg_rewind
// against this server may wrongly report "no rewind required". An error
// means the server may not be promoted (check Status); standby.signal is
// removed by PostgreSQL itself.
func (e *Engine) Promote(ctx context.Context) error {
	const op = "promote"
	wait := 60
	if dl, ok := ctx.Deadline(); ok {
		if s := int(time.Until(dl).Seconds()); s < wait {
			wait = max(s, 1)
		}
	}
	var promoted bool
	err := e.withConn(ctx, true, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT pg_promote(true, $1)", wait).Scan(&promoted)
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == sqlstateNotInPrereq {
		// Not in recovery: already promoted (perhaps by an earlier attempt
		// whose connection broke); the check below confirms it.
		err = nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	for {
		var inRecovery bool
		err := e.withConn(ctx, true, func(c *pgx.Conn) error {
			return c.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
		})
		if err != nil {
			return fmt.Errorf("%s: check recovery: %w", op, err)
		}
		if !inRecovery {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: still in recovery (pg_promote returned %v): %w", op, promoted, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if e.pm != nil {
		e.pm.standby = false
	}
	e.proxyAuthDone = false
	e.log.Info("promoted")
	if err := e.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("%s: promoted, but the checkpoint after promotion failed: %w", op, err)
	}
	return nil
}

// EnsureReplicationUser creates the replication role, or fixes it, so that
// it has LOGIN REPLICATION and the configured password. Call it on the
// primary only. It is idempotent and writes nothing when the role is
// already right.
func (e *Engine) EnsureReplicationUser(ctx context.Context) error {
	return e.ensureLoginRole(ctx, "ensure replication role", e.o.Replication.Username, e.o.Replication.Password,
		"LOGIN REPLICATION", "rolcanlogin AND rolreplication")
}

// ensureLoginRole creates role name, or fixes it, so that it has the
// attributes attrs (CREATE/ALTER ROLE syntax) and password pw; has is the
// pg_authid condition that holds when the attributes are right. It writes
// nothing when the role is already right. For printable-ASCII passwords
// holdfast sends a SCRAM verifier it computed, never the password itself
// (which would show in logs); other passwords are sent with statement
// logging off for the transaction.
func (e *Engine) ensureLoginRole(ctx context.Context, op, name, pw, attrs, has string) error {
	ident, err := QuoteIdent(name)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	var (
		exists, right bool
		stored        *string
	)
	err = e.withConn(ctx, true, func(c *pgx.Conn) error {
		err := c.QueryRow(ctx, "SELECT "+has+", rolpassword FROM pg_authid WHERE rolname = $1", name).
			Scan(&right, &stored)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		exists = err == nil
		return err
	})
	if err != nil {
		return fmt.Errorf("%s %s: %w", op, name, err)
	}
	if exists && right && stored != nil && scramMatches(*stored, pw) {
		return nil
	}
	secret := pw
	if scramEncodable(pw) {
		salt := make([]byte, 16)
		if _, err := rand.Read(salt); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		if secret, err = scramVerifier(pw, salt, scramIterations); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	lit, err := QuoteLiteral(secret)
	if err != nil {
		return fmt.Errorf("%s: password: %w", op, err)
	}
	verb := "CREATE"
	if exists {
		verb = "ALTER"
	}
	stmt := verb + " ROLE " + ident + " WITH " + attrs + " PASSWORD " + lit
	err = e.withConn(ctx, false, func(c *pgx.Conn) error {
		return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL log_statement = 'none'; SET LOCAL log_min_duration_statement = -1"); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, stmt)
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("%s %s: %s ROLE: %w", op, name, verb, err)
	}
	e.log.Info("role ensured", "role", name, "action", verb)
	return nil
}

// EnsureSlots creates the physical replication slots in names that do not
// exist yet, reserving WAL at once (immediately_reserve), so a standby that
// has not connected yet already holds back the WAL it will need. Existing
// slots, listed or not, are left alone. Call it on the primary only. Names
// must be valid slot names (lower-case letters, digits, '_').
func (e *Engine) EnsureSlots(ctx context.Context, names []string) error {
	const op = "ensure replication slots"
	for _, n := range names {
		if !slotNameRe.MatchString(n) {
			return fmt.Errorf("%s: %q is not a valid slot name", op, n)
		}
	}
	have := map[string]bool{}
	err := e.withConn(ctx, true, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, "SELECT slot_name::text FROM pg_replication_slots")
		if err != nil {
			return err
		}
		existing, err := pgx.CollectRows(rows, pgx.RowTo[string])
		for _, s := range existing {
			have[s] = true
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: list: %w", op, err)
	}
	for _, n := range names {
		if have[n] {
			continue
		}
		err := e.withConn(ctx, true, func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, "SELECT pg_create_physical_replication_slot($1, true)", n)
			return err
		})
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == sqlstateDuplicateObject {
			err = nil
		}
		if err != nil {
			return fmt.Errorf("%s: create %s: %w", op, n, err)
		}
		have[n] = true
		e.log.Info("replication slot created", "slot", n)
	}
	return nil
}

// TimelineHistory reads timeline tli's history file from the server's
// pg_wal (pg_read_file, superuser) and parses it. Timeline 1 has no history:
// nil. Works on a primary and on a standby that has the file.
func (e *Engine) TimelineHistory(ctx context.Context, tli uint32) ([]TimelineSwitch, error) {
	if tli <= 1 {
		return nil, nil
	}
	name := "pg_wal/" + historyFileName(tli)
	var content string
	err := e.withConn(ctx, true, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT pg_read_file($1)", name).Scan(&content)
	})
	if err != nil {
		return nil, fmt.Errorf("read timeline %d history (%s): %w", tli, name, err)
	}
	h, err := ParseHistory(content)
	if err != nil {
		return nil, fmt.Errorf("read timeline %d history: %w", tli, err)
	}
	return h, nil
}

// Query runs sql and returns all rows as values (a helper for tests and
// diagnostics). It is retried on a fresh connection only when nothing
// reached the server.
func (e *Engine) Query(ctx context.Context, sql string, args ...any) ([][]any, error) {
	var out [][]any
	err := e.withConn(ctx, false, func(c *pgx.Conn) error {
		out = nil
		rows, err := c.Query(ctx, sql, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			v, err := rows.Values()
			if err != nil {
				return err
			}
			out = append(out, v)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	return out, nil
}

// Exec runs one statement without results.
func (e *Engine) Exec(ctx context.Context, sql string, args ...any) error {
	err := e.withConn(ctx, false, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, sql, args...)
		return err
	})
	if err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	return nil
}

// checkpointIfBehind connects to the server described by ci (as the
// superuser) and, if it is a primary whose last checkpoint is on an older
// timeline than the one it writes (it was promoted and has not checkpointed
// since), runs CHECKPOINT there, so pg_control and therefore pg_rewind see
// the new timeline. A standby source is left alone.
func (e *Engine) checkpointIfBehind(ctx context.Context, ci string) error {
	cfg, err := pgx.ParseConfig(ci)
	if err != nil {
		return fmt.Errorf("check the source's checkpoint timeline: %w", err)
	}
	cfg.Password = e.o.Superuser.Password
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("check the source's checkpoint timeline: %w", err)
	}
	defer c.Close(context.Background())
	var walFile *string
	var ckptTLI int64
	err = c.QueryRow(ctx, `SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END,
		(SELECT timeline_id FROM pg_control_checkpoint())::int8`).Scan(&walFile, &ckptTLI)
	if err != nil {
		return fmt.Errorf("check the source's checkpoint timeline: %w", err)
	}
	if walFile == nil {
		return nil
	}
	tli, err := timelineFromWALFile(*walFile)
	if err != nil {
		return fmt.Errorf("check the source's checkpoint timeline: %w", err)
	}
	if int64(tli) <= ckptTLI {
		return nil
	}
	e.log.Info("source has not checkpointed since its promotion; requesting a checkpoint", "timeline", tli, "checkpoint_timeline", ckptTLI)
	if _, err := c.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpoint on the source: %w", err)
	}
	return nil
}

// replayTimeline is the newest timeline a standby has reached: recovery
// (recovery_target_timeline = latest) switches to timeline N once it has
// passed N's switch point, which the history file N.history in its own
// pg_wal records. received_tli and the checkpoint timelines lag behind
// (received_tli stays on the old timeline until WAL of the new one is
// flushed), and a standby reporting an older timeline than the cluster's
// would be barred from the leader race for no reason. Returns 0 when no
// history file applies; reading errors count as "no information".
func (e *Engine) replayTimeline(pos cluster.LSN) uint32 {
	entries, err := os.ReadDir(filepath.Join(e.o.DataDir, "pg_wal"))
	if err != nil {
		return 0
	}
	var best uint32
	for _, ent := range entries {
		name := ent.Name()
		if !strings.HasSuffix(name, ".history") || len(name) != 16 {
			continue
		}
		tli64, err := strconv.ParseUint(strings.TrimSuffix(name, ".history"), 16, 32)
		if err != nil || uint32(tli64) <= best {
			continue
		}
		b, err := os.ReadFile(filepath.Join(e.o.DataDir, "pg_wal", name))
		if err != nil {
			continue
		}
		hist, err := ParseHistory(string(b))
		if err != nil || len(hist) == 0 {
			continue
		}
		if pos >= hist[len(hist)-1].SwitchPoint {
			best = uint32(tli64)
		}
	}
	return best
}

// restartpoint asks a standby for a restartpoint (CHECKPOINT in recovery),
// which writes the replayed timeline into pg_control. Best effort: a
// failure only means the timeline is learnt later.
func (e *Engine) restartpoint(ctx context.Context) {
	if err := e.Exec(ctx, "CHECKPOINT"); err != nil {
		e.log.Debug("restartpoint on the standby", "err", err)
	}
}
