package proxy

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

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
