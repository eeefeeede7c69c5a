package workload

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/jackc/pgx/v5"
)

// DefaultRegisterTable is the table used when RegisterOptions.Table is empty.
const DefaultRegisterTable = "holdfast_register"

// RegisterOptions configures StartRegister.
type RegisterOptions struct {
	DSN     string // where every client connects (the proxy's read-write port)
	Clients int    // 0 means 3
	Table   string // "" means DefaultRegisterTable; a plain lower-case identifier
	Key     string // the register's key; "" means "r"
	// ReadFraction of operations are reads (0 means 0.5; negative: none).
	ReadFraction float64
	// ConnectTimeout, StatementTimeout, Pause, RetryDelay as in
	// WriterOptions (same defaults).
	ConnectTimeout, StatementTimeout, Pause, RetryDelay time.Duration
	Seed                                                int64 // for the read/write choice; 0: time-based
}

// RegisterKind is a register operation's kind.
type RegisterKind int

const (
	// Read returns the register's value.
	Read RegisterKind = iota + 1
	// WriteValue sets the register to a value.
	WriteValue
)

// RegisterOp is one register operation as a client saw it.
type RegisterOp struct {
	Client int // porcupine ClientId (a client changes id after an Unknown)
	Kind   RegisterKind
	// Value written (WriteValue) or read (Read, when Acked). A read of a
	// missing row reads Missing.
	Value int64
	// Call and Return are nanoseconds since the history's start on the
	// monotonic clock; Return is math.MaxInt64 for an Unknown write.
	Call, Return int64
	Outcome      Outcome
	Member       string // the member that answered (Acked only)
	// NoRow: an acknowledged write found no row to update (never
	// linearizable: the row is created before the history starts).
	NoRow bool
	Err   string
}

// Missing is the value of a read that found no row: never a valid value,
// so such a read is never linearizable.
const Missing int64 = -1

// RegisterHistory is a register run.
type RegisterHistory struct {
	Start time.Time // the zero of Call and Return
	Ops   []RegisterOp
}

// Register is a running register workload.
type Register struct {
	cancel  context.CancelFunc
	done    chan struct{}
	start   time.Time
	values  atomic.Int64 // the last value handed out
	clients atomic.Int64 // the last porcupine ClientId handed out

	mu  sync.Mutex
	ops []RegisterOp

	stopOnce sync.Once
	result   RegisterHistory
}

// StartRegister creates the table if needed, sets the register to 0
// (acknowledged before any recorded operation), and starts the clients.
// Values written are unique and positive. It fails on invalid options or
// when the register cannot be initialised.
func StartRegister(ctx context.Context, o RegisterOptions) (*Register, error) {
	if o.Clients < 0 {
		return nil, fmt.Errorf("workload start register: %d clients", o.Clients)
	}
	if o.Clients == 0 {
		o.Clients = 3
	}
	if o.Table == "" {
		o.Table = DefaultRegisterTable
	}
	if err := checkIdentifier("workload start register: table", o.Table); err != nil {
		return nil, err
	}
	if o.Key == "" {
		o.Key = "r"
	}
	switch {
	case o.ReadFraction == 0:
		o.ReadFraction = 0.5
	case o.ReadFraction < 0:
		o.ReadFraction = 0
	}
	o.ConnectTimeout = orDefault(o.ConnectTimeout, defaultConnectTimeout)
	o.StatementTimeout = orDefault(o.StatementTimeout, defaultStatementTimeout)
	o.RetryDelay = orDefault(o.RetryDelay, defaultRetryDelay)
	cfg, err := connConfig(o.DSN, o.ConnectTimeout)
	if err != nil {
		return nil, fmt.Errorf("workload start register: %w", err)
	}
	if err := initRegister(ctx, cfg, o); err != nil {
		return nil, fmt.Errorf("workload start register: %w", err)
	}
	seed := uint64(o.Seed)
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &Register{cancel: cancel, done: make(chan struct{}), start: time.Now()}
	r.clients.Store(int64(o.Clients - 1))
	var wg sync.WaitGroup
	for i := 0; i < o.Clients; i++ {
		wg.Add(1)
		cl := &registerClient{
			r: r, o: &o, cfg: cfg, id: i,
			rnd:   rand.New(rand.NewPCG(seed, uint64(i))),
			read:  "SELECT value, current_setting('cluster_name') FROM " + o.Table + " WHERE key = $1",
			write: "UPDATE " + o.Table + " SET value = $2 WHERE key = $1 RETURNING current_setting('cluster_name')",
		}
		go func() {
			defer wg.Done()
			cl.run(ctx)
		}()
	}
	go func() {
		wg.Wait()
		close(r.done)
	}()
	return r, nil
}

// initRegister creates the table and sets the key to 0.
func initRegister(ctx context.Context, cfg *pgx.ConnConfig, o RegisterOptions) error {
	c, err := connectForSetup(ctx, cfg)
	if err != nil {
		return err
	}
	defer closeConn(c)
	ctx, cancel := context.WithTimeout(ctx, o.StatementTimeout)
	defer cancel()
	if _, err := c.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+o.Table+" (key text PRIMARY KEY, value bigint NOT NULL)"); err != nil {
		return fmt.Errorf("create table %s: %w", o.Table, err)
	}
	if _, err := c.Exec(ctx, "INSERT INTO "+o.Table+" (key, value) VALUES ($1, 0) ON CONFLICT (key) DO UPDATE SET value = 0", o.Key); err != nil {
		return fmt.Errorf("set %s[%s] to 0: %w", o.Table, o.Key, err)
	}
	return nil
}

// Stop cancels the clients, waits for them, and returns the history, its
// operations ordered by Call. It may be called more than once.
func (r *Register) Stop() RegisterHistory {
	r.stopOnce.Do(func() {
		r.cancel()
		<-r.done
		r.mu.Lock()
		ops := r.ops
		r.ops = nil
		r.mu.Unlock()
		sort.SliceStable(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
		r.result = RegisterHistory{Start: r.start, Ops: ops}
	})
	return r.result
}

// Recorded is how many operations have completed (or been given up as
// unknown) so far.
func (r *Register) Recorded() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ops)
}

func (r *Register) record(op RegisterOp) {
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// since is the monotonic time since the history's start in nanoseconds.
func (r *Register) since() int64 { return int64(time.Since(r.start)) }

// registerClient is one register client: its loop, connection and
// porcupine identity.
type registerClient struct {
	r           *Register
	o           *RegisterOptions
	cfg         *pgx.ConnConfig
	id          int // current porcupine ClientId
	rnd         *rand.Rand
	read, write string
}

func (cl *registerClient) run(ctx context.Context) {
	var conn *pgx.Conn
	defer func() { closeConn(conn) }()
	for ctx.Err() == nil {
		op := RegisterOp{Client: cl.id, Kind: Read}
		if cl.rnd.Float64() >= cl.o.ReadFraction {
			op.Kind, op.Value = WriteValue, cl.r.values.Add(1)
		}
		op.Call = cl.r.since()
		var err error
		if conn == nil {
			conn, err = connect(ctx, cl.cfg)
			if err != nil {
				conn = nil
				op.Outcome = Failed
			}
		}
		if conn != nil {
			before := written(conn)
			err = cl.do(ctx, conn, &op)
			op.Outcome = classify(err, sent(conn, before))
			if err != nil {
				closeConn(conn)
				conn = nil
			}
		}
		op.Return = cl.r.since()
		if err != nil {
			op.Err = err.Error()
		}
		if op.Outcome == Unknown && op.Kind == WriteValue {
			// It may take effect at any time from now on, or never; this
			// client continues under a new identity.
			op.Return = math.MaxInt64
			cl.id = int(cl.r.clients.Add(1))
		}
		if ctx.Err() != nil && op.Outcome == Failed {
			return // cut short by the stop before anything was sent
		}
		cl.r.record(op)
		pause := cl.o.Pause
		if op.Outcome != Acked {
			pause = cl.o.RetryDelay
		}
		sleep(ctx, pause)
	}
}

// do runs one operation; for an acknowledged one it fills the value read,
// the member and NoRow.
func (cl *registerClient) do(ctx context.Context, conn *pgx.Conn, op *RegisterOp) error {
	ctx, cancel := context.WithTimeout(ctx, cl.o.StatementTimeout)
	defer cancel()
	var err error
	switch op.Kind {
	case Read:
		err = conn.QueryRow(ctx, cl.read, cl.o.Key).Scan(&op.Value, &op.Member)
		if errors.Is(err, pgx.ErrNoRows) {
			op.Value, err = Missing, nil
		}
	default:
		err = conn.QueryRow(ctx, cl.write, cl.o.Key, op.Value).Scan(&op.Member)
		if errors.Is(err, pgx.ErrNoRows) {
			op.NoRow, err = true, nil
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", op.describe(), err)
	}
	return nil
}

func (op RegisterOp) describe() string {
	if op.Kind == Read {
		return "read"
	}
	return fmt.Sprintf("write %d", op.Value)
}

// registerInput and registerOutput are the porcupine input and output.
type registerInput struct {
	Kind  RegisterKind
	Value int64 // the value written
}

type registerOutput struct {
	Value   int64 // the value read
	NoRow   bool  // a write found no row
	Unknown bool  // a write whose outcome is unknown
}

// Operations converts the history for porcupine: failed operations and
// reads without a verdict are dropped, Unknown writes kept with an infinite
// Return.
func (h RegisterHistory) Operations() []porcupine.Operation {
	ops := make([]porcupine.Operation, 0, len(h.Ops))
	for _, op := range h.Ops {
		if op.Outcome == Failed || op.Outcome == Unknown && op.Kind == Read || op.Outcome == 0 {
			continue
		}
		in := registerInput{Kind: op.Kind}
		var out registerOutput
		switch {
		case op.Kind == Read:
			out.Value = op.Value
		case op.Outcome == Unknown:
			in.Value, out.Unknown = op.Value, true
		default:
			in.Value, out.NoRow = op.Value, op.NoRow
		}
		ret := op.Return
		if op.Outcome == Unknown {
			ret = math.MaxInt64
		}
		ops = append(ops, porcupine.Operation{ClientId: op.Client, Input: in, Call: op.Call, Output: out, Return: ret, Metadata: op.Member})
	}
	return ops
}

// RegisterModel is the sequential specification of a register holding an
// int64, initially 0: a read returns the current value; a write sets it (a
// write that found no row, or a read of Missing, is never legal).
func RegisterModel() porcupine.Model {
	return porcupine.Model{
		Init: func() interface{} { return int64(0) },
		Step: func(state, input, output interface{}) (bool, interface{}) {
			st := state.(int64)
			in := input.(registerInput)
			out := output.(registerOutput)
			if in.Kind == Read {
				return out.Value == st, st
			}
			if out.NoRow {
				return false, st
			}
			return true, in.Value
		},
		Equal: func(a, b interface{}) bool { return a.(int64) == b.(int64) },
		Hash:  func(s interface{}) uint64 { return uint64(s.(int64)) },
		DescribeOperation: func(input, output interface{}) string {
			in := input.(registerInput)
			out := output.(registerOutput)
			switch {
			case in.Kind == Read:
				return fmt.Sprintf("read() → %d", out.Value)
			case out.Unknown:
				return fmt.Sprintf("write(%d) → ?", in.Value)
			case out.NoRow:
				return fmt.Sprintf("write(%d) → no row", in.Value)
			}
			return fmt.Sprintf("write(%d)", in.Value)
		},
		DescribeState: func(s interface{}) string { return fmt.Sprint(s.(int64)) },
		DescribeOperationMetadata: func(info interface{}) string {
			if m, ok := info.(string); ok && m != "" {
				return "answered by " + m
			}
			return ""
		},
	}
}

// CheckLinearizable checks the history against RegisterModel, giving up
// after timeout (0: no limit; result porcupine.Unknown when it gave up).
// The LinearizationInfo can be rendered with VisualizeRegister.
func CheckLinearizable(h RegisterHistory, timeout time.Duration) (porcupine.CheckResult, porcupine.LinearizationInfo) {
	return porcupine.CheckOperationsVerbose(RegisterModel(), h.Operations(), timeout)
}

// VisualizeRegister writes porcupine's HTML visualization of a check to path.
func VisualizeRegister(info porcupine.LinearizationInfo, path string) error {
	if err := porcupine.VisualizePath(RegisterModel(), info, path); err != nil {
		return fmt.Errorf("workload visualize register history to %s: %w", path, err)
	}
	return nil
}
