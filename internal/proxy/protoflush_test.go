package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/holdfast/holdfast/internal/pgsession"
)

// wireLen is exact for the messages that may be large.
func TestWireLen(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 1000)
	for _, m := range []interface {
		Encode([]byte) ([]byte, error)
	}{
		&pgproto3.DataRow{Values: [][]byte{big, nil, []byte("ab")}},
		&pgproto3.CopyData{Data: big},
		&pgproto3.Query{String: string(big)},
		&pgproto3.Parse{Name: "s1", Query: string(big), ParameterOIDs: []uint32{23, 25}},
		&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s1", ParameterFormatCodes: []int16{1},
			Parameters: [][]byte{big, nil}, ResultFormatCodes: []int16{0, 1}},
		&pgproto3.FunctionCall{Function: 1, ArgFormatCodes: []uint16{1}, Arguments: [][]byte{big, nil}, ResultFormatCode: 1},
	} {
		b, err := m.Encode(nil)
		if err != nil {
			t.Fatalf("encode %T: %v", m, err)
		}
		if got := wireLen(m); got != len(b) {
			t.Errorf("wireLen(%T) = %d, encoded %d bytes", m, got, len(b))
		}
	}
	if got := wireLen(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}); got != smallMessageLen {
		t.Errorf("wireLen(CommandComplete) = %d, want %d", got, smallMessageLen)
	}
}

// countingWriter counts the writes (flushes) and bytes it is given.
type countingWriter struct{ writes, bytes int }

func (w *countingWriter) Write(b []byte) (int, error) {
	w.writes++
	w.bytes += len(b)
	return len(b), nil
}

// A long result set whose reader always has more buffered (ev.more) is
// written to the client every flushThreshold bytes, not held until
// ReadyForQuery.
func TestHandleFlushesLongResultSet(t *testing.T) {
	w := &countingWriter{}
	st := pgsession.New(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "u", "database": "d"}})
	ps := &protoSession{p: &Proxy{}, log: slog.New(slog.DiscardHandler), be: pgproto3.NewBackend(bytes.NewReader(nil), w),
		st: st, bc: &backendConn{gen: 1, t: Target{Name: "m1"}, stop: make(chan struct{})}}
	if _, err := st.Frontend(&pgproto3.Query{String: "SELECT x FROM t"}); err != nil {
		t.Fatal(err)
	}
	ps.awaiting = 1
	ack := make(chan struct{}, 1)
	deliver := func(m pgproto3.BackendMessage, more bool) {
		t.Helper()
		if ps.handle(event{gen: 1, msg: m, more: more, ack: ack}) {
			t.Fatalf("handle(%T) ended the session", m)
		}
		<-ack
	}
	deliver(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("x"), DataTypeOID: 25, Format: 0}}}, true)
	row := &pgproto3.DataRow{Values: [][]byte{bytes.Repeat([]byte("r"), 1000)}}
	const rows = 1000 // about 1 MB
	for range rows {
		deliver(row, true)
		if ps.toClient >= flushThreshold {
			t.Fatalf("%d bytes queued for the client, threshold %d", ps.toClient, flushThreshold)
		}
	}
	if min := rows * wireLen(row) / flushThreshold; w.writes < min {
		t.Fatalf("%d writes to the client during the result set, want at least %d", w.writes, min)
	}
	deliver(&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1000")}, true)
	deliver(&pgproto3.ReadyForQuery{TxStatus: pgsession.TxIdle}, false)
	if ps.toClient != 0 || ps.awaiting != 0 {
		t.Fatalf("after ReadyForQuery: toClient %d, awaiting %d; want 0, 0", ps.toClient, ps.awaiting)
	}
}

// A long pipeline of extended-protocol messages (no Sync or Flush yet) is
// written to the server every flushThreshold bytes.
func TestForwardFlushesLongPipeline(t *testing.T) {
	w := &countingWriter{}
	st := pgsession.New(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "u", "database": "d"}})
	bc := &backendConn{gen: 1, t: Target{Name: "m1"}, stop: make(chan struct{}),
		fe: pgproto3.NewFrontend(bytes.NewReader(nil), w)}
	ps := &protoSession{p: &Proxy{}, log: slog.New(slog.DiscardHandler), st: st, bc: bc}
	ack := make(chan struct{}, 1)
	pass := func(m pgproto3.FrontendMessage) {
		t.Helper()
		ps.pending = &event{fromClient: true, msg: m, ack: ack}
		if ps.forward() {
			t.Fatalf("forward(%T) ended the session", m)
		}
		<-ack
	}
	pass(&pgproto3.Parse{Query: "INSERT INTO t VALUES ($1)"})
	bind := &pgproto3.Bind{Parameters: [][]byte{bytes.Repeat([]byte("v"), 1000)}}
	const n = 1000
	for range n {
		pass(bind)
		pass(&pgproto3.Execute{})
		if ps.toBackend >= flushThreshold {
			t.Fatalf("%d bytes queued for the server, threshold %d", ps.toBackend, flushThreshold)
		}
	}
	if min := n * wireLen(bind) / flushThreshold; w.writes < min {
		t.Fatalf("%d writes to the server before Sync, want at least %d", w.writes, min)
	}
}

// A client message longer than PostgreSQL accepts is refused before the
// proxy reads (allocates) its body.
func TestMaxClientMessageLen(t *testing.T) {
	hdr := func(bodyLen uint32) []byte {
		return []byte{'Q', byte((bodyLen + 4) >> 24), byte((bodyLen + 4) >> 16), byte((bodyLen + 4) >> 8), byte(bodyLen + 4)}
	}
	be := pgproto3.NewBackend(bytes.NewReader(hdr(maxClientMessageLen+1)), &countingWriter{})
	be.SetMaxBodyLen(maxClientMessageLen)
	if _, err := be.Receive(); err == nil {
		t.Fatal("a message over maxClientMessageLen was accepted")
	}
	be = pgproto3.NewBackend(bytes.NewReader(append(hdr(9), "SELECT 1\x00"...)), &countingWriter{})
	be.SetMaxBodyLen(maxClientMessageLen)
	if m, err := be.Receive(); err != nil {
		t.Fatalf("a small message: %v", err)
	} else if q, ok := m.(*pgproto3.Query); !ok || q.String != "SELECT 1" {
		t.Fatalf("a small message: got %#v", m)
	}
}

// lostSession is a session on m1 that has started (the tracker saw the
// startup), writing to the client into w.
func lostSession(t *testing.T, w *bytes.Buffer) *protoSession {
	t.Helper()
	sm, err := newSessionMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	st := pgsession.New(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "u", "database": "d"}})
	if _, err := st.Backend(&pgproto3.ReadyForQuery{TxStatus: pgsession.TxIdle}); err != nil {
		t.Fatal(err)
	}
	return &protoSession{p: &Proxy{sm: sm}, log: slog.New(slog.DiscardHandler), be: pgproto3.NewBackend(bytes.NewReader(nil), w),
		client: nopConn{}, st: st, bc: &backendConn{gen: 1, t: Target{Name: "m1"}, conn: nopConn{}, stop: make(chan struct{})}}
}

// nopConn is a net.Conn that does nothing.
type nopConn struct{ net.Conn }

func (nopConn) SetWriteDeadline(time.Time) error { return nil }
func (nopConn) SetDeadline(time.Time) error      { return nil }
func (nopConn) Close() error                     { return nil }

// run feeds the tracker a client message and the server's answers.
func runQuery(t *testing.T, ps *protoSession, sql string, answers ...pgproto3.BackendMessage) {
	t.Helper()
	if _, err := ps.st.Frontend(&pgproto3.Query{String: sql}); err != nil {
		t.Fatal(err)
	}
	for _, a := range answers {
		if _, err := ps.st.Backend(a); err != nil {
			t.Fatal(err)
		}
	}
}

// errorsTo decodes the ErrorResponses written to the client.
func errorsTo(t *testing.T, w *bytes.Buffer) []*pgproto3.ErrorResponse {
	t.Helper()
	fe := pgproto3.NewFrontend(bytes.NewReader(w.Bytes()), io.Discard)
	var out []*pgproto3.ErrorResponse
	for {
		m, err := fe.Receive()
		if err != nil {
			return out
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			c := *e
			out = append(out, &c)
		}
	}
}

// A connection lost while a COMMIT of an open transaction is in flight:
// the client hears 40003 (whether it took effect is unknown) — never an
// answer that says it did not commit — and the session lives on. Lost
// while a statement before the COMMIT is in flight: 40001 (rolled back),
// the block left failed. Idle inside the transaction: nothing is said yet
// (the proxy waits lostBlockGrace for a request on its way, then closes
// the session with 57P01).
func TestLostInFlightInTransaction(t *testing.T) {
	for _, tc := range []struct {
		name     string
		inFlight string // "" = nothing in flight
		code     string
		over     bool
	}{
		{"COMMIT in flight", "COMMIT", codeUnknownCompletion, false},
		{"statement in flight", "UPDATE t SET x = 1", codeRolledBack, false},
		{"idle in the block", "", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var w bytes.Buffer
			ps := lostSession(t, &w)
			runQuery(t, ps, "BEGIN", &pgproto3.CommandComplete{CommandTag: []byte("BEGIN")}, &pgproto3.ReadyForQuery{TxStatus: pgsession.TxInBlock})
			if tc.inFlight != "" {
				if _, err := ps.st.Frontend(&pgproto3.Query{String: tc.inFlight}); err != nil {
					t.Fatal(err)
				}
				ps.awaiting = 1
			}
			if over := ps.lost(errors.New("connection reset")); over != tc.over {
				t.Fatalf("lost: session over %v, want %v", over, tc.over)
			}
			es := errorsTo(t, &w)
			if tc.code == "" && len(es) > 0 || tc.code != "" && (len(es) == 0 || es[0].Code != tc.code) {
				t.Fatalf("errors to the client: %+v; want %q first", es, tc.code)
			}
		})
	}
}

// Auth lookups beyond authPoolSize wait for a free slot (bounded by their
// timeout) instead of opening more connections to the primary.
func TestAuthLookupsBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
			select {
			case accepted <- struct{}{}:
			default:
			}
		}
	}()
	a := newAuthPool(SessionOptions{AuthUser: "a", AuthPassword: "p", AuthDatabase: "d"}, serverTLS{mode: SSLDisable})
	for range authPoolSize {
		a.slots <- struct{}{} // lookups in progress
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = a.lookup(ctx, Target{Name: "m1", Addr: ln.Addr().String()}, "alice")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("lookup with every slot taken: %v, want a deadline error", err)
	}
	select {
	case <-accepted:
		t.Fatal("a lookup over the bound connected to the primary")
	case <-time.After(50 * time.Millisecond):
	}
	<-a.slots // one lookup ends: the next may connect
	if _, err := a.lookup(context.Background(), Target{Name: "m1", Addr: ln.Addr().String()}, "alice"); err == nil {
		t.Fatal("lookup against a server that closes: no error")
	}
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("a lookup with a free slot did not connect")
	}
	if len(a.slots) != authPoolSize-1 {
		t.Fatalf("%d slots taken after the lookups, want %d", len(a.slots), authPoolSize-1)
	}
}

// A Sync the server ignores in COPY IN is not awaited: after the COPY's
// ReadyForQuery the session is at rest.
func TestSyncInCopyInNotAwaited(t *testing.T) {
	var w bytes.Buffer
	ps := lostSession(t, &w)
	ps.bc.fe = pgproto3.NewFrontend(bytes.NewReader(nil), &countingWriter{})
	ack := make(chan struct{}, 1)
	pass := func(m pgproto3.FrontendMessage) {
		t.Helper()
		ps.pending = &event{fromClient: true, msg: m, ack: ack}
		if ps.forward() {
			t.Fatalf("forward(%T) ended the session", m)
		}
		<-ack
	}
	deliver := func(m pgproto3.BackendMessage) {
		t.Helper()
		if ps.handle(event{gen: 1, msg: m, ack: ack}) {
			t.Fatalf("handle(%T) ended the session", m)
		}
		<-ack
	}
	pass(&pgproto3.Parse{Query: "COPY t FROM STDIN"})
	pass(&pgproto3.Bind{})
	pass(&pgproto3.Execute{})
	pass(&pgproto3.Sync{}) // libpq's, before it knows this is a COPY
	deliver(&pgproto3.ParseComplete{})
	deliver(&pgproto3.BindComplete{})
	deliver(&pgproto3.CopyInResponse{})
	pass(&pgproto3.CopyData{Data: []byte("1\n")})
	pass(&pgproto3.Sync{}) // ignored in COPY IN
	pass(&pgproto3.CopyDone{})
	pass(&pgproto3.Sync{})
	if ps.awaiting != 1 {
		t.Fatalf("awaiting %d after the COPY's Sync, want 1", ps.awaiting)
	}
	deliver(&pgproto3.CommandComplete{CommandTag: []byte("COPY 1")})
	deliver(&pgproto3.ReadyForQuery{TxStatus: pgsession.TxIdle})
	if !ps.atRest() {
		t.Fatalf("not at rest after the COPY: awaiting %d, unsynced %v, movable %v", ps.awaiting, ps.unsynced, ps.st.Movable())
	}
}
