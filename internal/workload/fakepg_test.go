package workload

import (
	"context"
	"fmt"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/jackc/pgx/v5/pgproto3"
)

// fakePG is a PostgreSQL wire-protocol server that accepts any startup and
// answers each simple query with respond(n, query), n counting queries from 1
// across connections. respond returns the messages to send and whether to
// drop the connection afterwards; with hang set it never answers.
type fakePG struct {
	l       net.Listener
	mu      sync.Mutex
	n       int
	respond func(n int, query string) (msgs []pgproto3.BackendMessage, drop, hang bool)
	wg      sync.WaitGroup
	conns   []net.Conn
}

func startFakePG(t *testing.T, respond func(n int, query string) ([]pgproto3.BackendMessage, bool, bool)) *fakePG {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakePG{l: l, respond: respond}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.conns = append(f.conns, c)
			f.mu.Unlock()
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				f.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *fakePG) dsn() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=u password=p dbname=d sslmode=disable", f.l.Addr().(*net.TCPAddr).Port)
}

func (f *fakePG) serve(c net.Conn) {
	defer c.Close()
	be := pgproto3.NewBackend(c, c)
	if _, err := be.ReceiveStartupMessage(); err != nil {
		return
	}
	be.Send(&pgproto3.AuthenticationOk{})
	be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"})
	be.Send(&pgproto3.ParameterStatus{Name: "standard_conforming_strings", Value: "on"})
	be.Send(&pgproto3.ParameterStatus{Name: "client_encoding", Value: "UTF8"})
	be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 1}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if be.Flush() != nil {
		return
	}
	for {
		msg, err := be.Receive()
		if err != nil {
			return
		}
		q, ok := msg.(*pgproto3.Query)
		if !ok {
			return
		}
		f.mu.Lock()
		f.n++
		n := f.n
		f.mu.Unlock()
		msgs, drop, hang := f.respond(n, q.String)
		if hang {
			var b [1]byte
			c.Read(b[:]) // until the client or the cleanup closes it
			return
		}
		for _, m := range msgs {
			be.Send(m)
		}
		if be.Flush() != nil || drop {
			return
		}
	}
}

func insertRow(member, tl, lsn string) []pgproto3.BackendMessage {
	return []pgproto3.BackendMessage{
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
			{Name: []byte("member"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1},
			{Name: []byte("tl"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1},
			{Name: []byte("pg_current_wal_insert_lsn"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1},
		}},
		&pgproto3.DataRow{Values: [][]byte{[]byte(member), []byte(tl), []byte(lsn)}},
		&pgproto3.CommandComplete{CommandTag: []byte("INSERT 0 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
	}
}

func pgErr(sev, code, msg string) []pgproto3.BackendMessage {
	m := []pgproto3.BackendMessage{&pgproto3.ErrorResponse{Severity: sev, SeverityUnlocalized: sev, Code: code, Message: msg}}
	if sev == "ERROR" {
		m = append(m, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	}
	return m
}

// runOne runs one writer client against f until it recorded want writes.
func runOne(t *testing.T, f *fakePG, want int) []Write {
	t.Helper()
	w, err := StartWriters(context.Background(), WriterOptions{
		Targets: []Target{{Name: "fake", DSN: f.dsn()}}, RetryDelay: time.Millisecond, StatementTimeout: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		a, o := w.Progress()
		if int(a+o) >= want || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return w.Stop()
}

func TestOutcomesOverTheWire(t *testing.T) {
	// Query 1 acked, 2 read-only ERROR, 3 FATAL admin shutdown, 4 dropped
	// after sending, 5 a timeout (no answer within the statement timeout),
	// then acks.
	f := startFakePG(t, func(n int, _ string) ([]pgproto3.BackendMessage, bool, bool) {
		switch n {
		case 2:
			return pgErr("ERROR", "25006", "cannot execute INSERT in a read-only transaction"), false, false
		case 3:
			return pgErr("FATAL", "57P01", "terminating connection due to administrator command"), true, false
		case 4:
			return nil, true, false
		case 5:
			return nil, false, true
		}
		return insertRow("pg-7", "3", "0/3000148"), false, false
	})
	writes := runOne(t, f, 6)
	if len(writes) < 6 {
		t.Fatalf("%d writes: %+v", len(writes), writes)
	}
	want := []Outcome{Acked, Failed, Unknown, Unknown, Unknown, Acked}
	for i, o := range want {
		if writes[i].Outcome != o {
			t.Errorf("write %d (id %d): %s (%s), want %s", i, writes[i].ID, writes[i].Outcome, writes[i].Err, o)
		}
	}
	if w := writes[0]; w.Member != "pg-7" || w.Timeline != 3 || w.LSN != 0x3000148 || w.Err != "" || w.End.Before(w.Start) {
		t.Errorf("acked write %+v", w)
	}
	if !strings.Contains(writes[1].Err, "25006") || !strings.Contains(writes[2].Err, "57P01") {
		t.Errorf("errors: %q, %q", writes[1].Err, writes[2].Err)
	}
	if writes[1].Member != "" {
		t.Errorf("failed write has a member: %+v", writes[1])
	}
}

// A statement in flight when Stop is called is Unknown, and Stop does not
// wait for the statement timeout.
func TestStopInFlightIsUnknown(t *testing.T) {
	inFlight := make(chan struct{}, 1)
	f := startFakePG(t, func(n int, _ string) ([]pgproto3.BackendMessage, bool, bool) {
		if n >= 2 {
			select {
			case inFlight <- struct{}{}:
			default:
			}
			return nil, false, true
		}
		return insertRow("pg-0", "1", "0/100"), false, false
	})
	w, err := StartWriters(context.Background(), WriterOptions{Targets: []Target{{Name: "fake", DSN: f.dsn()}}, StatementTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	select { // the second statement reached the server and hangs there
	case <-inFlight:
	case <-time.After(30 * time.Second):
		t.Fatal("the second statement never reached the server")
	}
	start := time.Now()
	writes := w.Stop()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Stop took %s", d)
	}
	if len(writes) != 2 || writes[0].Outcome != Acked || writes[1].Outcome != Unknown {
		t.Fatalf("writes %+v", writes)
	}
}

// A register write dropped after sending is Unknown with an infinite
// Return, and its client continues under a new porcupine ClientId.
func TestRegisterOverTheWire(t *testing.T) {
	f := startFakePG(t, func(n int, q string) ([]pgproto3.BackendMessage, bool, bool) {
		switch {
		case strings.HasPrefix(q, "UPDATE") && n == 3: // the first operation
			return nil, true, false
		case strings.HasPrefix(q, "UPDATE"):
			return []pgproto3.BackendMessage{
				&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("current_setting"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}}},
				&pgproto3.DataRow{Values: [][]byte{[]byte("pg-0")}},
				&pgproto3.CommandComplete{CommandTag: []byte("UPDATE 1")},
				&pgproto3.ReadyForQuery{TxStatus: 'I'},
			}, false, false
		}
		// CREATE TABLE and the reset to 0.
		return []pgproto3.BackendMessage{&pgproto3.CommandComplete{CommandTag: []byte("OK")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}}, false, false
	})
	r, err := StartRegister(context.Background(), RegisterOptions{DSN: f.dsn(), Clients: 1, ReadFraction: -1, RetryDelay: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// Wait for the state, not a time: under load the second operation can
	// take far longer than on an idle machine.
	for deadline := time.Now().Add(30 * time.Second); r.Recorded() < 2 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	h := r.Stop()
	if len(h.Ops) < 2 {
		t.Fatalf("ops %+v", h.Ops)
	}
	first, second := h.Ops[0], h.Ops[1]
	if first.Outcome != Unknown || first.Kind != WriteValue || first.Return != math.MaxInt64 || first.Value != 1 {
		t.Errorf("first op %+v", first)
	}
	if second.Outcome != Acked || second.Member != "pg-0" || second.Client == first.Client || second.Value != 2 {
		t.Errorf("second op %+v (first %+v)", second, first)
	}
	if res, _ := CheckLinearizable(h, 10*time.Second); res != porcupine.Ok {
		t.Errorf("writes-only history is %s", res)
	}
}
