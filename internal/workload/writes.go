package workload

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/internal/cluster"
)

// DefaultTable is the table the writers use when WriterOptions.Table is empty.
const DefaultTable = "holdfast_workload"

// Target is one place clients connect to.
type Target struct {
	// Name identifies the target in Write.Target: "proxy" or a member name
	// such as "pg-1".
	Name string
	// DSN is a libpq/pgx connection string (see local.Layout.SuperuserDSN).
	DSN string
}

// Outcome is what a client knows about one write.
type Outcome int

const (
	// Acked: the statement returned success; the commit was acknowledged.
	Acked Outcome = iota + 1
	// Failed: certainly not committed (no connection, nothing sent, or the
	// server answered with an ERROR).
	Failed
	// Unknown: sent, and no verdict came back (connection lost after
	// sending, timeout, cancellation, FATAL from the server). It may or may
	// not have been committed.
	Unknown
)

// String returns "acked", "failed" or "unknown".
func (o Outcome) String() string {
	switch o {
	case Acked:
		return "acked"
	case Failed:
		return "failed"
	case Unknown:
		return "unknown"
	}
	return "outcome(?)"
}

// Write is one attempted insert.
type Write struct {
	ID     int64
	Target string // Target.Name the client used
	Client int    // the client's index, 0-based, unique across targets
	// Start is taken before connecting (when a new connection was needed)
	// or before sending; End after the verdict. Both carry Go's monotonic
	// clock reading, so comparisons between Writes of one process are
	// safe against wall-clock steps.
	Start, End time.Time
	Outcome    Outcome
	Err        string // the error, for Failed and Unknown
	// Member, Timeline and LSN are set for Acked writes only, from the
	// statement's RETURNING clause: current_setting('cluster_name') (holdfast
	// sets it to the member name), the timeline of the WAL insert position,
	// and pg_current_wal_insert_lsn() just after the row was inserted (the
	// commit record follows it).
	Member   string
	Timeline uint32
	LSN      uint64
}

// WriterOptions configures StartWriters.
type WriterOptions struct {
	// Targets: each gets ClientsPerTarget clients. At least one.
	Targets          []Target
	ClientsPerTarget int    // 0 means 1
	Table            string // "" means DefaultTable; a plain lower-case identifier
	// ConnectTimeout bounds each connection attempt (0 means 2s).
	ConnectTimeout time.Duration
	// StatementTimeout bounds each insert on the client side (0 means 5s);
	// on expiry the connection is dropped and the outcome is Unknown.
	StatementTimeout time.Duration
	// Pause between one client's writes (0: none).
	Pause time.Duration
	// RetryDelay after a write that was not acknowledged, before the next
	// attempt (0 means 50ms); keeps a refused connection from spinning.
	RetryDelay time.Duration
}

// Writers is a running set of write clients.
type Writers struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when every client has returned
	next   atomic.Int64  // the last id handed out
	acked  atomic.Int64
	other  atomic.Int64

	mu     sync.Mutex
	writes []Write // appended by the clients as they finish, under mu

	stopOnce sync.Once
	result   []Write
}

// Setup drops and recreates table (id bigint primary key, member text,
// tl int, at timestamptz default now()) through dsn, which must reach the
// primary. The table is empty afterwards. A replica sees it once it has
// replayed the change: before writing to replicas directly, wait until
// Present succeeds on them, or their writes fail as a missing table
// (42P01) instead of read-only (25006).
func Setup(ctx context.Context, dsn, table string) error {
	if err := checkIdentifier("workload setup: table", table); err != nil {
		return err
	}
	cfg, err := connConfig(dsn, defaultConnectTimeout)
	if err != nil {
		return fmt.Errorf("workload setup: %w", err)
	}
	c, err := connectForSetup(ctx, cfg)
	if err != nil {
		return fmt.Errorf("workload setup: %w", err)
	}
	defer closeConn(c)
	sql := "DROP TABLE IF EXISTS " + table + "; CREATE TABLE " + table +
		" (id bigint PRIMARY KEY, member text NOT NULL, tl int NOT NULL, at timestamptz NOT NULL DEFAULT now())"
	if _, err := c.Exec(ctx, sql); err != nil {
		return fmt.Errorf("workload setup: create table %s: %w", table, err)
	}
	return nil
}

// insertSQL inserts one id and returns the member, the timeline and the
// WAL insert position just after the row. The timeline is the first eight
// hex digits of the WAL file name of the insert position (the insertion
// timeline); a standby rejects the INSERT (25006) before evaluating it.
func insertSQL(table string) string {
	return "INSERT INTO " + table + " (id, member, tl) VALUES ($1, current_setting('cluster_name'), " +
		"('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::int) " +
		"RETURNING member, tl, pg_current_wal_insert_lsn()::text"
}

// StartWriters starts the clients and returns at once. Each client inserts
// ids taken from one counter shared by all clients (unique within this
// Writers, starting at 1), opens a new connection after any error, and stops
// when Stop is called or ctx is done. Attempts cut short by the stop before
// anything was sent are not recorded. It fails only on invalid options.
func StartWriters(ctx context.Context, o WriterOptions) (*Writers, error) {
	if len(o.Targets) == 0 {
		return nil, errors.New("workload start writers: no targets")
	}
	if o.ClientsPerTarget < 0 {
		return nil, fmt.Errorf("workload start writers: %d clients per target", o.ClientsPerTarget)
	}
	if o.ClientsPerTarget == 0 {
		o.ClientsPerTarget = 1
	}
	if o.Table == "" {
		o.Table = DefaultTable
	}
	if err := checkIdentifier("workload start writers: table", o.Table); err != nil {
		return nil, err
	}
	o.ConnectTimeout = orDefault(o.ConnectTimeout, defaultConnectTimeout)
	o.StatementTimeout = orDefault(o.StatementTimeout, defaultStatementTimeout)
	o.RetryDelay = orDefault(o.RetryDelay, defaultRetryDelay)
	cfgs := make([]*pgx.ConnConfig, len(o.Targets))
	for i, t := range o.Targets {
		cfg, err := connConfig(t.DSN, o.ConnectTimeout)
		if err != nil {
			return nil, fmt.Errorf("workload start writers: target %q: %w", t.Name, err)
		}
		cfgs[i] = cfg
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &Writers{cancel: cancel, done: make(chan struct{})}
	sql := insertSQL(o.Table)
	var wg sync.WaitGroup
	for i, t := range o.Targets {
		for k := 0; k < o.ClientsPerTarget; k++ {
			wg.Add(1)
			cl := writeClient{w: w, o: &o, cfg: cfgs[i], target: t.Name, client: i*o.ClientsPerTarget + k, sql: sql}
			go func() {
				defer wg.Done()
				cl.run(ctx)
			}()
		}
	}
	go func() {
		wg.Wait()
		close(w.done)
	}()
	return w, nil
}

// Progress returns how many writes were acknowledged and how many were not
// (failed or unknown) so far; safe to call while the clients run.
func (w *Writers) Progress() (acked, notAcked int64) {
	return w.acked.Load(), w.other.Load()
}

// Outcomes counts the writes finished so far by target and outcome.
func (w *Writers) Outcomes() map[string]map[Outcome]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return CountOutcomes(w.writes)
}

// CountOutcomes counts writes by target and outcome.
func CountOutcomes(writes []Write) map[string]map[Outcome]int {
	out := map[string]map[Outcome]int{}
	for _, wr := range writes {
		if out[wr.Target] == nil {
			out[wr.Target] = map[Outcome]int{}
		}
		out[wr.Target][wr.Outcome]++
	}
	return out
}

// Stop cancels every client (an in-flight statement becomes Unknown unless
// nothing was sent), waits for them, closes their connections and returns
// every recorded write ordered by Start (then ID). It may be called more
// than once; later calls return the same writes.
func (w *Writers) Stop() []Write {
	w.stopOnce.Do(func() {
		w.cancel()
		<-w.done
		w.mu.Lock()
		out := w.writes
		w.writes = nil
		w.mu.Unlock()
		sort.SliceStable(out, func(i, j int) bool {
			if !out[i].Start.Equal(out[j].Start) {
				return out[i].Start.Before(out[j].Start)
			}
			return out[i].ID < out[j].ID
		})
		w.result = out
	})
	return w.result
}

func (w *Writers) record(wr Write) {
	if wr.Outcome == Acked {
		w.acked.Add(1)
	} else {
		w.other.Add(1)
	}
	w.mu.Lock()
	w.writes = append(w.writes, wr)
	w.mu.Unlock()
}

// writeClient is one client's loop and its connection.
type writeClient struct {
	w      *Writers
	o      *WriterOptions
	cfg    *pgx.ConnConfig
	target string
	client int
	sql    string
}

func (cl *writeClient) run(ctx context.Context) {
	var conn *pgx.Conn
	defer func() { closeConn(conn) }()
	for ctx.Err() == nil {
		wr := Write{ID: cl.w.next.Add(1), Target: cl.target, Client: cl.client, Start: time.Now()}
		var err error
		if conn == nil {
			conn, err = connect(ctx, cl.cfg)
			if err != nil {
				conn = nil
				wr.End, wr.Outcome, wr.Err = time.Now(), Failed, err.Error()
			}
		}
		if conn != nil {
			wr.Outcome, err = cl.insert(ctx, conn, &wr)
			wr.End = time.Now()
			if err != nil {
				wr.Err = err.Error()
				closeConn(conn)
				conn = nil
			}
		}
		if ctx.Err() != nil && wr.Outcome == Failed {
			return // cut short by the stop before anything was sent
		}
		cl.w.record(wr)
		pause := cl.o.Pause
		if wr.Outcome != Acked {
			pause = cl.o.RetryDelay
		}
		sleep(ctx, pause)
	}
}

// insert runs the statement on conn and fills the acknowledged fields.
func (cl *writeClient) insert(ctx context.Context, conn *pgx.Conn, wr *Write) (Outcome, error) {
	sctx, cancel := context.WithTimeout(ctx, cl.o.StatementTimeout)
	defer cancel()
	var member, lsn string
	var tl int64
	before := written(conn)
	err := conn.QueryRow(sctx, cl.sql, wr.ID).Scan(&member, &tl, &lsn)
	out := classify(err, sent(conn, before))
	if err != nil {
		return out, fmt.Errorf("insert %d: %w", wr.ID, err)
	}
	wr.Member = member
	wr.Timeline = uint32(tl)
	l, perr := cluster.ParseLSN(lsn)
	if perr != nil {
		// Committed all the same; keep the write acknowledged.
		wr.Err = perr.Error()
		return Acked, nil
	}
	wr.LSN = uint64(l)
	return Acked, nil
}

// Present returns the ids in table, read through dsn (read it on the final
// primary after the cluster healed).
func Present(ctx context.Context, dsn, table string) (map[int64]bool, error) {
	if err := checkIdentifier("workload present: table", table); err != nil {
		return nil, err
	}
	cfg, err := connConfig(dsn, defaultConnectTimeout)
	if err != nil {
		return nil, fmt.Errorf("workload present: %w", err)
	}
	c, err := connect(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("workload present: %w", err)
	}
	defer closeConn(c)
	rows, err := c.Query(ctx, "SELECT id FROM "+table)
	if err != nil {
		return nil, fmt.Errorf("workload present: read %s: %w", table, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("workload present: read %s: %w", table, err)
	}
	out := make(map[int64]bool, len(ids))
	for _, id := range ids {
		out[id] = true
	}
	return out, nil
}
