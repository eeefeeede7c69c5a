package workload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

type retryable struct{ safe bool }

func (e retryable) Error() string     { return "io" }
func (e retryable) SafeToRetry() bool { return e.safe }

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		sent bool
		want Outcome
	}{
		{nil, true, Acked},
		{fmt.Errorf("insert 1: %w", &pgconn.PgError{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: "25006"}), true, Failed},
		{&pgconn.PgError{Severity: "ERREUR", SeverityUnlocalized: "ERROR", Code: "23505"}, true, Failed},
		{&pgconn.PgError{Severity: "ERROR", Code: "40001"}, true, Failed},
		{&pgconn.PgError{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "57P01"}, true, Unknown},
		{&pgconn.PgError{Severity: "PANIC", SeverityUnlocalized: "PANIC", Code: "XX000"}, true, Unknown},
		// pgx's SafeToRetry is not trusted once bytes were written.
		{fmt.Errorf("x: %w", retryable{safe: true}), true, Unknown},
		{pgconn.ErrConnClosed, true, Unknown},
		{retryable{safe: false}, false, Failed},
		{io.ErrUnexpectedEOF, true, Unknown},
		{io.ErrUnexpectedEOF, false, Failed},
		{context.DeadlineExceeded, true, Unknown},
		{context.Canceled, false, Failed},
		{errors.New("anything else"), true, Unknown},
	} {
		if got := classify(c.err, c.sent); got != c.want {
			t.Errorf("classify(%v, sent=%v) = %s, want %s", c.err, c.sent, got, c.want)
		}
	}
}

func TestStartWritersOptions(t *testing.T) {
	ctx := context.Background()
	for _, o := range []WriterOptions{
		{},
		{Targets: []Target{{Name: "x", DSN: "host=127.0.0.1"}}, Table: "Bad-Name"},
		{Targets: []Target{{Name: "x", DSN: "host=127.0.0.1"}}, ClientsPerTarget: -1},
		{Targets: []Target{{Name: "x", DSN: "port=notaport"}}},
	} {
		if w, err := StartWriters(ctx, o); err == nil {
			w.Stop()
			t.Errorf("StartWriters(%+v) accepted", o)
		} else if !strings.HasPrefix(err.Error(), "workload start writers") {
			t.Errorf("error does not name the operation: %v", err)
		}
	}
	if err := Setup(ctx, "host=127.0.0.1", "x;drop"); err == nil {
		t.Error("Setup accepted a bad table name")
	}
}

// A server that accepts connections and never answers (a stopped or
// partitioned member): connection attempts time out as Failed, and Stop
// returns promptly even with a long connect timeout.
func TestWritersStopPromptly(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	// A port with nothing listening: refused at once.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().(*net.TCPAddr)
	closed.Close()

	silent := l.Addr().(*net.TCPAddr)
	w, err := StartWriters(context.Background(), WriterOptions{
		Targets: []Target{
			{Name: "silent", DSN: fmt.Sprintf("host=127.0.0.1 port=%d user=u password=p dbname=d sslmode=disable", silent.Port)},
			{Name: "refused", DSN: fmt.Sprintf("host=127.0.0.1 port=%d user=u password=p dbname=d sslmode=disable", closedAddr.Port)},
		},
		ClientsPerTarget: 2,
		ConnectTimeout:   time.Minute,
		RetryDelay:       10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Wait for a refused attempt (a state), not a time.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, other := w.Progress(); other > 0 {
			break
		}
	}
	start := time.Now()
	writes := w.Stop()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Stop took %s", d)
	}
	seen := map[int64]bool{}
	for _, wr := range writes {
		if wr.Target == "silent" {
			t.Errorf("an attempt on the silent server was recorded though nothing was sent before Stop: %+v", wr)
		}
		if wr.Outcome != Failed || wr.Err == "" {
			t.Errorf("refused connection: %+v", wr)
		}
		if seen[wr.ID] {
			t.Errorf("id %d used twice", wr.ID)
		}
		seen[wr.ID] = true
	}
	if len(writes) == 0 {
		t.Error("no refused attempt recorded")
	}
	if acked, other := w.Progress(); acked != 0 || other != int64(len(writes)) {
		t.Errorf("progress %d/%d, %d writes", acked, other, len(writes))
	}
}
