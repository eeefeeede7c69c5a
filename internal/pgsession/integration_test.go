package pgsession_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/holdfast/holdfast/internal/pgsession"
	"github.com/holdfast/holdfast/internal/testutil/pgtest"
)

const itestPassword = "itest-secret"

// startPostgres runs a throwaway PostgreSQL (as the postgres account when
// the test runs as root) and returns its port.
func startPostgres(ctx context.Context, t *testing.T) int {
	t.Helper()
	_, port := pgtest.Start(ctx, t, "pg-0", itestPassword)
	return port
}

// conn is a raw protocol connection, as the proxy holds one.
type conn struct {
	fe  *pgproto3.Frontend
	hc  *pgconn.HijackedConn
	key *pgproto3.BackendKeyData
}

// dial logs in with pgconn (it does the authentication the proxy will do
// in its own way) and takes the raw connection over.
func dial(ctx context.Context, t *testing.T, port int, startup map[string]string) *conn {
	t.Helper()
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d sslmode=disable", port))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = itestPassword
	cfg.RuntimeParams = map[string]string{}
	for k, v := range startup {
		switch k {
		case "user":
			cfg.User = v
		case "database":
			cfg.Database = v
		default:
			cfg.RuntimeParams[k] = v
		}
	}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hc.Conn.Close() })
	_ = hc.Conn.SetDeadline(time.Now().Add(30 * time.Second))
	return &conn{fe: hc.Frontend, hc: hc, key: &pgproto3.BackendKeyData{ProcessID: hc.PID, SecretKey: hc.SecretKey}}
}

// startupMessages replays what the server sent after AuthenticationOk
// (pgconn consumed it): its parameters, its key, ReadyForQuery.
func (c *conn) startupMessages() []pgproto3.BackendMessage {
	var out []pgproto3.BackendMessage
	for k, v := range c.hc.ParameterStatuses {
		out = append(out, &pgproto3.ParameterStatus{Name: k, Value: v})
	}
	return append(out, c.key, &pgproto3.ReadyForQuery{TxStatus: c.hc.TxStatus})
}

// result is what the client saw of one exchange.
type result struct {
	rows   []string // first column of each DataRow
	errors []string
}

// exchange relays msgs from the client through s to c's server and the
// answers back, as the proxy will: injected messages go first, swallowed
// answers stay hidden. It reads until every Query and Sync is answered.
func exchange(t *testing.T, s *pgsession.Session, c *conn, msgs ...pgproto3.FrontendMessage) result {
	t.Helper()
	waits := 0
	for _, m := range msgs {
		before, err := s.Frontend(m)
		if err != nil {
			t.Fatalf("frontend %T: %v", m, err)
		}
		for _, b := range append(before, m) {
			switch b.(type) {
			case *pgproto3.Query, *pgproto3.Sync:
				waits++
			}
			c.fe.Send(b)
		}
	}
	if err := c.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var r result
	for waits > 0 {
		m, err := c.fe.Receive()
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			waits--
		}
		v, err := s.Backend(m)
		if err != nil {
			t.Fatalf("backend %T: %v", m, err)
		}
		if v == pgsession.Swallow {
			continue
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			r.rows = append(r.rows, string(m.Values[0]))
		case *pgproto3.ErrorResponse:
			r.errors = append(r.errors, m.Code+" "+m.Message)
		}
	}
	return r
}

func one(t *testing.T, r result, want string) {
	t.Helper()
	if len(r.errors) > 0 || len(r.rows) != 1 || r.rows[0] != want {
		t.Errorf("got rows %q errors %q, want %q", r.rows, r.errors, want)
	}
}

// TestMoveToAnotherConnection runs a session on one connection, builds its
// replay plan, replays it on a fresh connection (the same server stands in
// for the new primary) and checks the client's state is all there.
func TestMoveToAnotherConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	port := startPostgres(ctx, t)

	startup := map[string]string{"user": "postgres", "database": "postgres", "application_name": "itest"}
	a := dial(ctx, t, port, startup)
	s := pgsession.New(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: startup})
	for _, m := range a.startupMessages() {
		if _, err := s.Backend(m); err != nil {
			t.Fatal(err)
		}
	}
	if r := exchange(t, s, a, &pgproto3.Query{String: `CREATE SCHEMA itest; CREATE TABLE itest.t (x int); INSERT INTO itest.t VALUES (41);
		SET search_path TO itest, public; SET work_mem = '3MB'; SET application_name = 'itest-moved';
		PREPARE twice(int) AS SELECT $1 * 2`}); len(r.errors) > 0 {
		t.Fatalf("setup: %q", r.errors)
	}
	if r := exchange(t, s, a, &pgproto3.Parse{Name: "get", Query: "SELECT x + $1 FROM t", ParameterOIDs: []uint32{23}}, &pgproto3.Sync{}); len(r.errors) > 0 {
		t.Fatalf("parse: %q", r.errors)
	}
	one(t, exchange(t, s, a, &pgproto3.Bind{PreparedStatement: "get", Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{}, &pgproto3.Sync{}), "42")

	plan, err := s.Plan()
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	t.Logf("setup query:\n%s", plan.SetupQuery())

	b := dial(ctx, t, port, plan.Startup)
	if b.key.ProcessID == a.key.ProcessID {
		t.Fatal("the new connection is the old one")
	}
	check := plan.Responses(true)
	done := false
	for _, m := range b.startupMessages() {
		if done, err = check.Receive(m); err != nil {
			t.Fatalf("replay startup: %v", err)
		}
	}
	for _, m := range plan.Messages(true) {
		b.fe.Send(m)
	}
	if err := b.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for !done {
		m, err := b.fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if done, err = check.Receive(m); err != nil {
			t.Fatalf("replay: %v", err)
		}
	}
	res := check.Result()
	if len(res.ToClient) != 0 {
		t.Errorf("same server, yet the client must be told %v", res.ToClient)
	}
	s.Moved(res)
	if s.Key().ProcessID != b.key.ProcessID {
		t.Errorf("session key %d, new server's %d", s.Key().ProcessID, b.key.ProcessID)
	}
	_ = a.hc.Conn.Close() // the old primary is gone

	one(t, exchange(t, s, b, &pgproto3.Query{String: "SHOW search_path"}), "itest, public")
	one(t, exchange(t, s, b, &pgproto3.Query{String: "SHOW application_name"}), "itest-moved")
	one(t, exchange(t, s, b, &pgproto3.Query{String: "SHOW work_mem"}), "3MB")
	one(t, exchange(t, s, b, &pgproto3.Query{String: "EXECUTE twice(21)"}), "42")
	// The protocol-level statement is prepared on first use, unseen.
	one(t, exchange(t, s, b, &pgproto3.Bind{PreparedStatement: "get", Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{}, &pgproto3.Sync{}), "42")
	one(t, exchange(t, s, b, &pgproto3.Query{String: "SELECT count(*) FROM pg_prepared_statements WHERE name IN ('get', 'twice')"}), "2")
	if err := s.Movable(); err != nil {
		t.Errorf("after the move: %v", err)
	}

	// And a session holding a temporary table is refused with a clear
	// error.
	if r := exchange(t, s, b, &pgproto3.Query{String: "CREATE TEMP TABLE scratch (x int)"}); len(r.errors) > 0 {
		t.Fatal(r.errors)
	}
	_, err = s.Plan()
	e := pgsession.CloseError(err)
	if e.Code != pgsession.CodeSessionNotMoved || e.Message != "holdfast proxy: the primary changed while this session held a temporary table; the session cannot be moved — reconnect" {
		t.Errorf("close error %+v", e)
	}
}
