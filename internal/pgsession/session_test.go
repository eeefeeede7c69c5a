package pgsession

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// step is one message crossing the proxy: from the client (f) or the
// server (b).
type step struct {
	f pgproto3.FrontendMessage
	b pgproto3.BackendMessage
}

func fe(m pgproto3.FrontendMessage) step { return step{f: m} }
func be(m pgproto3.BackendMessage) step  { return step{b: m} }

// query is a simple Query and the server's answers.
func query(sql string, answers ...pgproto3.BackendMessage) []step {
	out := []step{fe(&pgproto3.Query{String: sql})}
	for _, a := range answers {
		out = append(out, be(a))
	}
	return out
}

func cc(tag string) *pgproto3.CommandComplete {
	return &pgproto3.CommandComplete{CommandTag: []byte(tag)}
}
func rfq(s byte) *pgproto3.ReadyForQuery { return &pgproto3.ReadyForQuery{TxStatus: s} }
func ps(n, v string) *pgproto3.ParameterStatus {
	return &pgproto3.ParameterStatus{Name: n, Value: v}
}
func fail(code string) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: "ERROR", Code: code, Message: "boom"}
}

// startupParams is what a server reports at startup in these tests.
var startupParams = [][2]string{
	{"application_name", "app"}, {"client_encoding", "UTF8"}, {"DateStyle", "ISO, MDY"},
	{"integer_datetimes", "on"}, {"IntervalStyle", "postgres"}, {"is_superuser", "on"},
	{"server_encoding", "UTF8"}, {"server_version", "15.18"}, {"session_authorization", "alice"},
	{"standard_conforming_strings", "on"}, {"TimeZone", "UTC"},
}

func startupSteps() []step {
	var out []step
	out = append(out, be(&pgproto3.AuthenticationOk{}))
	for _, p := range startupParams {
		out = append(out, be(ps(p[0], p[1])))
	}
	out = append(out, be(&pgproto3.BackendKeyData{ProcessID: 7, SecretKey: []byte{1, 2, 3, 4}}), be(rfq('I')))
	return out
}

func newSession() *Session {
	return New(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "alice", "database": "db", "application_name": "app"}})
}

// feed plays steps through s, failing on errors and on swallowed answers
// (nothing is injected in these scripts).
func feed(t *testing.T, s *Session, steps []step) {
	t.Helper()
	for i, st := range steps {
		if st.f != nil {
			before, err := s.Frontend(st.f)
			if err != nil || len(before) > 0 {
				t.Fatalf("step %d %T: inject %v, %v", i, st.f, before, err)
			}
			continue
		}
		v, err := s.Backend(st.b)
		if err != nil || v != Forward {
			t.Fatalf("step %d %T: verdict %v, %v", i, st.b, v, err)
		}
	}
}

// baseline is the Setup of a session that changed nothing: the forced
// reported parameters.
func baseline(t *testing.T) []string {
	s := newSession()
	feed(t, s, startupSteps())
	p, err := s.Plan()
	if err != nil {
		t.Fatal(err)
	}
	return p.Setup
}

// extra is p's Setup without the baseline lines.
func extra(p *Plan, base []string) []string {
	var out []string
	for _, l := range p.Setup {
		if !slices.Contains(base, l) {
			out = append(out, l)
		}
	}
	return out
}

func cat(parts ...[]step) []step { return slices.Concat(parts...) }

func TestBaselinePlan(t *testing.T) {
	want := []string{
		"SELECT pg_catalog.set_config('DateStyle', 'ISO, MDY', false)",
		"SELECT pg_catalog.set_config('IntervalStyle', 'postgres', false)",
		"SELECT pg_catalog.set_config('TimeZone', 'UTC', false)",
		"SELECT pg_catalog.set_config('application_name', 'app', false)",
		"SELECT pg_catalog.set_config('client_encoding', 'UTF8', false)",
		"SELECT pg_catalog.set_config('standard_conforming_strings', 'on', false)",
	}
	if got := baseline(t); !slices.Equal(got, want) {
		t.Errorf("baseline setup\n got %q\nwant %q", got, want)
	}
}

func TestSession(t *testing.T) {
	base := baseline(t)
	const (
		parseS1 = "SELECT $1::int"
	)
	extended := func(sql string, answers ...pgproto3.BackendMessage) []step {
		out := []step{
			fe(&pgproto3.Parse{Query: sql}), fe(&pgproto3.Bind{}), fe(&pgproto3.Describe{ObjectType: 'P'}),
			fe(&pgproto3.Execute{}), fe(&pgproto3.Sync{}),
		}
		for _, a := range answers {
			out = append(out, be(a))
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		steps  []step
		reason Reason   // 0: movable
		setup  []string // beyond the baseline, when movable
		stmts  []string // Plan.Statements names
	}{
		{name: "fresh", steps: nil},
		{name: "starting", steps: []step{be(&pgproto3.AuthenticationOk{}), be(ps("a", "b"))}, reason: ReasonStarting},
		{name: "SET committed", steps: query("SET search_path TO app, public", cc("SET"), rfq('I')),
			setup: []string{"SET search_path TO app, public"}},
		{name: "SET then failure in the same implicit transaction",
			steps: query("SET work_mem = '64MB'; SELECT 1/0", cc("SET"), fail("22012"), rfq('I'))},
		{name: "SET, COMMIT, failure: the committed SET stays",
			steps: query("BEGIN; SET work_mem = '64MB'; COMMIT; SET statement_timeout = 5; SELECT 1/0",
				cc("BEGIN"), cc("SET"), cc("COMMIT"), cc("SET"), fail("22012"), rfq('I')),
			setup: []string{"SET work_mem TO '64MB'"}},
		{name: "SET in a rolled back transaction",
			steps: cat(query("BEGIN", cc("BEGIN"), rfq('T')), query("SET work_mem = '1MB'", cc("SET"), rfq('T')),
				query("ROLLBACK", cc("ROLLBACK"), rfq('I')))},
		{name: "SET in a committed transaction",
			steps: cat(query("BEGIN", cc("BEGIN"), rfq('T')), query("SET work_mem = '1MB'", cc("SET"), rfq('T')),
				query("COMMIT", cc("COMMIT"), rfq('I'))),
			setup: []string{"SET work_mem TO '1MB'"}},
		{name: "SET in a failed transaction whose COMMIT rolls back",
			steps: cat(query("BEGIN; SET work_mem = '1MB'", cc("BEGIN"), cc("SET"), rfq('T')),
				query("SELECT 1/0", fail("22012"), rfq('E')), query("COMMIT", cc("ROLLBACK"), rfq('I')))},
		{name: "open transaction", steps: query("BEGIN", cc("BEGIN"), rfq('T')), reason: ReasonTransaction},
		{name: "failed transaction", steps: cat(query("BEGIN", cc("BEGIN"), rfq('T')), query("x", fail("42601"), rfq('E'))),
			reason: ReasonTransaction},
		{name: "query in flight", steps: []step{fe(&pgproto3.Query{String: "SELECT pg_sleep(10)"})}, reason: ReasonPending},
		{name: "extended batch not synced", steps: []step{fe(&pgproto3.Parse{Name: "a", Query: "SELECT 1"}), fe(&pgproto3.Flush{}), be(&pgproto3.ParseComplete{})},
			reason: ReasonPending},
		{name: "SET LOCAL", steps: query("BEGIN; SET LOCAL work_mem = '1MB'; COMMIT", cc("BEGIN"), cc("SET"), cc("COMMIT"), rfq('I'))},
		{name: "SET then RESET", steps: query("SET work_mem = '1MB'; RESET work_mem", cc("SET"), cc("RESET"), rfq('I'))},
		{name: "SET TO DEFAULT", steps: query("SET work_mem = '1MB'; SET work_mem TO DEFAULT", cc("SET"), cc("SET"), rfq('I'))},
		{name: "RESET ALL keeps ROLE", steps: query("SET ROLE reader; SET work_mem = '1MB'; RESET ALL", cc("SET"), cc("SET"), cc("RESET"), rfq('I')),
			setup: []string{"SET ROLE reader"}},
		{name: "DISCARD ALL resets everything",
			steps: cat(query("SET ROLE reader; SET work_mem = '1MB'", cc("SET"), cc("SET"), rfq('I')),
				query("DISCARD ALL", cc("DISCARD ALL"), rfq('I')))},
		{name: "settings replay in the order last set",
			steps: query("SET b.x = 1; SET a.x = 2; SET b.x = 3", cc("SET"), cc("SET"), cc("SET"), rfq('I')),
			setup: []string{"SET a.x TO 2", "SET b.x TO 3"}},
		{name: "reported parameter changed", steps: query("SET application_name = 'batch'", cc("SET"), ps("application_name", "batch"), rfq('I')),
			setup: []string{"SELECT pg_catalog.set_config('application_name', 'batch', false)"}},
		{name: "reported change rolled back is reported back",
			steps: query("SET TimeZone = 'Europe/Paris'; SELECT 1/0", cc("SET"), fail("22012"), ps("TimeZone", "UTC"), rfq('I'))},
		{name: "SET SESSION AUTHORIZATION (reported)",
			steps: query("SET SESSION AUTHORIZATION bob", cc("SET"), ps("session_authorization", "bob"), ps("is_superuser", "off"), rfq('I')),
			setup: []string{"SET SESSION AUTHORIZATION 'bob'"}},
		{name: "set_config with literals", steps: query("SELECT set_config('work_mem', '32MB', false)", cc("SELECT 1"), rfq('I')),
			setup: []string{"SELECT pg_catalog.set_config('work_mem', '32MB', false)"}},
		{name: "set_config computed", steps: query("SELECT set_config(k, v, false) FROM conf", cc("SELECT 2"), rfq('I')), reason: ReasonSettings},
		{name: "unreadable SET", steps: query("SET TIME ZONE INTERVAL '+1' HOUR", cc("SET"), rfq('I')), reason: ReasonSettings},
		{name: "unreadable SET cleared by RESET ALL",
			steps: cat(query("SET TIME ZONE INTERVAL '+1' HOUR", cc("SET"), rfq('I')), query("RESET ALL", cc("RESET"), rfq('I')))},
		{name: "unreadable SET ROLE survives RESET ALL",
			steps: cat(query("SET ROLE a b", cc("SET"), rfq('I')), query("RESET ALL", cc("RESET"), rfq('I'))), reason: ReasonSettings},
		{name: "unreadable SET that failed", steps: query("SET TIME ZONE INTERVAL '+1' HOUR", fail("42601"), rfq('I'))},
		{name: "tag mismatch", steps: query("SET work_mem = 1", cc("SELECT 1"), rfq('I')), reason: ReasonSettings},
		{name: "more results than statements", steps: query("SELECT 1", cc("SELECT 1"), cc("SELECT 1"), rfq('I')), reason: ReasonSettings},
		{name: "unscannable query that completed", steps: query("SELECT 'x", cc("SELECT 1"), rfq('I')), reason: ReasonSettings},
		{name: "unscannable query that failed", steps: query("SELECT 'x", fail("42601"), rfq('I'))},
		{name: "savepoint rollback after SET",
			steps: cat(query("BEGIN; SAVEPOINT a; SET work_mem = '1MB'; ROLLBACK TO a; COMMIT",
				cc("BEGIN"), cc("SAVEPOINT"), cc("SET"), cc("ROLLBACK"), cc("COMMIT"), rfq('I'))),
			reason: ReasonSettings},
		{name: "savepoints without SET", steps: query("BEGIN; SAVEPOINT a; ROLLBACK TO a; RELEASE a; COMMIT",
			cc("BEGIN"), cc("SAVEPOINT"), cc("ROLLBACK"), cc("RELEASE"), cc("COMMIT"), rfq('I'))},
		{name: "temp table", steps: query("CREATE TEMP TABLE t (x int)", cc("CREATE TABLE"), rfq('I')), reason: ReasonTempTable},
		{name: "temp table that failed to create", steps: query("CREATE TEMP TABLE t (x nosuchtype)", fail("42704"), rfq('I')), reason: ReasonTempTable},
		{name: "temp table discarded",
			steps: cat(query("CREATE TEMP TABLE t (x int)", cc("CREATE TABLE"), rfq('I')), query("DISCARD TEMP", cc("DISCARD TEMP"), rfq('I')))},
		{name: "DISCARD TEMP rolled back",
			steps: cat(query("CREATE TEMP TABLE t (x int)", cc("CREATE TABLE"), rfq('I')),
				query("BEGIN; DISCARD TEMP; ROLLBACK", cc("BEGIN"), cc("DISCARD TEMP"), cc("ROLLBACK"), rfq('I'))),
			reason: ReasonTempTable},
		{name: "temp table dropped on commit", steps: query("CREATE TEMP TABLE t (x int) ON COMMIT DROP", cc("CREATE TABLE"), rfq('I'))},
		{name: "pg_temp use", steps: query("SELECT * FROM pg_temp.t", fail("42P01"), rfq('I')), reason: ReasonTempTable},
		{name: "advisory lock even when the query fails", steps: query("SELECT pg_advisory_lock(1), 1/0", fail("22012"), rfq('I')),
			reason: ReasonAdvisoryLock},
		{name: "advisory lock released",
			steps: cat(query("SELECT pg_advisory_lock(1)", cc("SELECT 1"), rfq('I')), query("SELECT pg_advisory_unlock_all()", cc("SELECT 1"), rfq('I')))},
		{name: "xact advisory lock", steps: query("BEGIN; SELECT pg_advisory_xact_lock(1); COMMIT", cc("BEGIN"), cc("SELECT 1"), cc("COMMIT"), rfq('I'))},
		{name: "LISTEN", steps: query("LISTEN jobs", cc("LISTEN"), rfq('I')), reason: ReasonListen},
		{name: "LISTEN then UNLISTEN",
			steps: cat(query("LISTEN jobs; LISTEN other", cc("LISTEN"), cc("LISTEN"), rfq('I')), query("UNLISTEN jobs; UNLISTEN other", cc("UNLISTEN"), cc("UNLISTEN"), rfq('I')))},
		{name: "LISTEN, UNLISTEN one of two",
			steps:  cat(query("LISTEN jobs; LISTEN other", cc("LISTEN"), cc("LISTEN"), rfq('I')), query("UNLISTEN jobs", cc("UNLISTEN"), rfq('I'))),
			reason: ReasonListen},
		{name: "UNLISTEN *", steps: cat(query("LISTEN jobs", cc("LISTEN"), rfq('I')), query("UNLISTEN *", cc("UNLISTEN"), rfq('I')))},
		{name: "notification", steps: []step{be(&pgproto3.NotificationResponse{PID: 1, Channel: "c", Payload: "p"})}, reason: ReasonListen},
		{name: "WITH HOLD cursor",
			steps: query("DECLARE c CURSOR WITH HOLD FOR SELECT 1", cc("DECLARE CURSOR"), rfq('I')), reason: ReasonHoldCursor},
		{name: "WITH HOLD cursor closed",
			steps: cat(query("DECLARE c CURSOR WITH HOLD FOR SELECT 1", cc("DECLARE CURSOR"), rfq('I')), query("CLOSE c", cc("CLOSE CURSOR"), rfq('I')))},
		{name: "WITH HOLD cursors closed all",
			steps: cat(query("DECLARE c CURSOR WITH HOLD FOR SELECT 1", cc("DECLARE CURSOR"), rfq('I')), query("CLOSE ALL", cc("CLOSE CURSOR ALL"), rfq('I')))},
		{name: "plain cursor ends with its transaction",
			steps: query("BEGIN; DECLARE c CURSOR FOR SELECT 1; COMMIT", cc("BEGIN"), cc("DECLARE CURSOR"), cc("COMMIT"), rfq('I'))},
		{name: "COPY in progress", steps: query("COPY t FROM STDIN", &pgproto3.CopyInResponse{}), reason: ReasonCopy},
		{name: "COPY done",
			steps: cat(query("COPY t FROM STDIN", &pgproto3.CopyInResponse{}),
				[]step{fe(&pgproto3.CopyData{Data: []byte("1\n")}), fe(&pgproto3.CopyDone{}), be(cc("COPY 1")), be(rfq('I'))})},
		{name: "COPY out in progress", steps: query("COPY t TO STDOUT", &pgproto3.CopyOutResponse{}, &pgproto3.CopyData{Data: []byte("1\n")}), reason: ReasonCopy},
		{name: "COPY out done", steps: query("COPY t TO STDOUT", &pgproto3.CopyOutResponse{}, &pgproto3.CopyData{}, &pgproto3.CopyDone{}, cc("COPY 1"), rfq('I'))},
		{name: "fast-path function call", steps: []step{fe(&pgproto3.FunctionCall{Function: 1}), be(&pgproto3.FunctionCallResponse{}), be(rfq('I'))},
			reason: ReasonOpaque},
		{name: "LOAD", steps: query("LOAD 'auto_explain'", cc("LOAD"), rfq('I')), reason: ReasonOpaque},
		{name: "COPY BOTH", steps: query("START_REPLICATION 0/0", &pgproto3.CopyBothResponse{}), reason: ReasonCopy},
		{name: "DO that may SET", steps: query("DO $$BEGIN SET work_mem = '1MB'; END$$", cc("DO"), rfq('I')), reason: ReasonSettings},
		{name: "harmless DO", steps: query("DO $$BEGIN PERFORM 1; END$$", cc("DO"), rfq('I'))},
		// Prepared statements.
		{name: "named Parse",
			steps: []step{fe(&pgproto3.Parse{Name: "s1", Query: parseS1, ParameterOIDs: []uint32{23}}), fe(&pgproto3.Sync{}), be(&pgproto3.ParseComplete{}), be(rfq('I'))},
			stmts: []string{"s1"}},
		{name: "named Parse closed",
			steps: []step{fe(&pgproto3.Parse{Name: "s1", Query: parseS1}), fe(&pgproto3.Close{ObjectType: 'S', Name: "s1"}), fe(&pgproto3.Sync{}),
				be(&pgproto3.ParseComplete{}), be(&pgproto3.CloseComplete{}), be(rfq('I'))}},
		{name: "named Parse that failed, and the batch after it",
			steps: []step{fe(&pgproto3.Parse{Name: "s2", Query: "SELEC 1"}), fe(&pgproto3.Bind{PreparedStatement: "s2"}), fe(&pgproto3.Execute{}), fe(&pgproto3.Sync{}),
				be(fail("42601")), be(rfq('I'))}},
		{name: "unnamed statement replaced by a Query",
			steps: cat([]step{fe(&pgproto3.Parse{Query: "SELECT 1"}), fe(&pgproto3.Sync{}), be(&pgproto3.ParseComplete{}), be(rfq('I'))},
				query("SELECT 2", cc("SELECT 1"), rfq('I')))},
		{name: "unnamed statement kept",
			steps: []step{fe(&pgproto3.Parse{Query: "SELECT 1"}), fe(&pgproto3.Sync{}), be(&pgproto3.ParseComplete{}), be(rfq('I'))},
			stmts: []string{""}},
		{name: "Describe statement and portal",
			steps: []step{fe(&pgproto3.Parse{Name: "s1", Query: parseS1}), fe(&pgproto3.Describe{ObjectType: 'S', Name: "s1"}),
				fe(&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s1"}), fe(&pgproto3.Describe{ObjectType: 'P', Name: "p"}),
				fe(&pgproto3.Execute{Portal: "p", MaxRows: 1}), fe(&pgproto3.Execute{Portal: "p"}), fe(&pgproto3.Close{ObjectType: 'P', Name: "p"}), fe(&pgproto3.Sync{}),
				be(&pgproto3.ParseComplete{}), be(&pgproto3.ParameterDescription{ParameterOIDs: []uint32{23}}), be(&pgproto3.RowDescription{}),
				be(&pgproto3.BindComplete{}), be(&pgproto3.RowDescription{}),
				be(&pgproto3.DataRow{}), be(&pgproto3.PortalSuspended{}), be(cc("SELECT 0")), be(&pgproto3.CloseComplete{}), be(rfq('I'))},
			stmts: []string{"s1"}},
		{name: "SQL PREPARE", steps: query("PREPARE p(int) AS SELECT $1", cc("PREPARE"), rfq('I')),
			setup: []string{"PREPARE p(int) AS SELECT $1"}},
		{name: "SQL PREPARE survives ROLLBACK", steps: query("BEGIN; PREPARE p AS SELECT 1; ROLLBACK", cc("BEGIN"), cc("PREPARE"), cc("ROLLBACK"), rfq('I')),
			setup: []string{"PREPARE p AS SELECT 1"}},
		{name: "SQL PREPARE deallocated",
			steps: cat(query("PREPARE p AS SELECT 1", cc("PREPARE"), rfq('I')), query("DEALLOCATE p", cc("DEALLOCATE"), rfq('I')))},
		{name: "DEALLOCATE ALL",
			steps: cat(query("PREPARE p AS SELECT 1", cc("PREPARE"), rfq('I')),
				[]step{fe(&pgproto3.Parse{Name: "s1", Query: parseS1}), fe(&pgproto3.Sync{}), be(&pgproto3.ParseComplete{}), be(rfq('I'))},
				query("DEALLOCATE ALL", cc("DEALLOCATE ALL"), rfq('I')))},
		{name: "SET search_path then PREPARE",
			steps: query("SET search_path = app; PREPARE p AS SELECT 1", cc("SET"), cc("PREPARE"), rfq('I')),
			setup: []string{"SET search_path TO app", "PREPARE p AS SELECT 1"}},
		{name: "PREPARE then SET search_path",
			steps: query("PREPARE p AS SELECT 1; SET search_path = app", cc("PREPARE"), cc("SET"), rfq('I')), reason: ReasonStatementContext},
		{name: "Parse then SET search_path",
			steps: cat([]step{fe(&pgproto3.Parse{Name: "s1", Query: parseS1}), fe(&pgproto3.Sync{}), be(&pgproto3.ParseComplete{}), be(rfq('I'))},
				query("SET search_path = app", cc("SET"), rfq('I'))),
			reason: ReasonStatementContext},
		{name: "Parse under SET LOCAL search_path",
			steps: cat(query("BEGIN; SET LOCAL search_path = app", cc("BEGIN"), cc("SET"), rfq('T')),
				[]step{fe(&pgproto3.Parse{Name: "s1", Query: parseS1}), fe(&pgproto3.Sync{}), be(&pgproto3.ParseComplete{}), be(rfq('T'))},
				query("COMMIT", cc("COMMIT"), rfq('I'))),
			reason: ReasonStatementContext},
		{name: "Parse, SET search_path back and forth",
			steps: cat([]step{fe(&pgproto3.Parse{Name: "s1", Query: parseS1}), fe(&pgproto3.Sync{}), be(&pgproto3.ParseComplete{}), be(rfq('I'))},
				query("SET search_path = app; RESET search_path", cc("SET"), cc("RESET"), rfq('I'))),
			stmts: []string{"s1"}},
		// Extended protocol.
		{name: "extended SET", steps: extended("SET work_mem = '2MB'", &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.NoData{}, cc("SET"), rfq('I')),
			setup: []string{"SET work_mem TO '2MB'"}, stmts: []string{""}},
		{name: "extended SET then failure before Sync",
			steps: []step{fe(&pgproto3.Parse{Query: "SET work_mem = '2MB'"}), fe(&pgproto3.Bind{}), fe(&pgproto3.Execute{}),
				fe(&pgproto3.Parse{Query: "SELECT 1/0"}), fe(&pgproto3.Bind{}), fe(&pgproto3.Execute{}), fe(&pgproto3.Sync{}),
				be(&pgproto3.ParseComplete{}), be(&pgproto3.BindComplete{}), be(cc("SET")),
				be(&pgproto3.ParseComplete{}), be(&pgproto3.BindComplete{}), be(fail("22012")), be(rfq('I'))},
			stmts: []string{""}},
		{name: "extended advisory lock", steps: extended("SELECT pg_advisory_lock($1)", &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.RowDescription{}, &pgproto3.DataRow{}, cc("SELECT 1"), rfq('I')),
			reason: ReasonAdvisoryLock},
		{name: "extended empty query", steps: extended("", &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.NoData{}, &pgproto3.EmptyQueryResponse{}, rfq('I')), stmts: []string{""}},
		{name: "empty simple query", steps: query("", &pgproto3.EmptyQueryResponse{}, rfq('I'))},
		{name: "server ended the session", steps: []step{be(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "57P01"})}, reason: ReasonStarting},
		{name: "notices, and unexpected answers", steps: []step{be(&pgproto3.NoticeResponse{}), be(&pgproto3.BindComplete{})}, reason: ReasonSettings},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSession()
			steps := tc.steps
			if tc.name != "starting" {
				steps = cat(startupSteps(), steps)
			}
			feed(t, s, steps)
			err := s.Movable()
			p, perr := s.Plan()
			if tc.reason != 0 {
				var ue *UnmovableError
				if !errors.As(err, &ue) || ue.Reason != tc.reason {
					t.Fatalf("Movable: %v, want reason %s", err, tc.reason)
				}
				if perr == nil || perr.Error() != err.Error() {
					t.Errorf("Plan: %v, want %v", perr, err)
				}
				if s.AtBoundary() && tc.reason <= ReasonTransaction {
					t.Errorf("AtBoundary with reason %s", tc.reason)
				}
				return
			}
			if err != nil || perr != nil {
				t.Fatalf("Movable: %v; Plan: %v", err, perr)
			}
			if !s.AtBoundary() {
				t.Error("movable but not at a boundary")
			}
			if got := extra(p, base); !slices.Equal(got, tc.setup) {
				t.Errorf("setup\n got %q\nwant %q", got, tc.setup)
			}
			var names []string
			for _, st := range p.Statements {
				names = append(names, st.Name)
			}
			if !slices.Equal(names, tc.stmts) {
				t.Errorf("statements %q, want %q", names, tc.stmts)
			}
		})
	}
}

func TestReplicationConnection(t *testing.T) {
	s := New(&pgproto3.StartupMessage{Parameters: map[string]string{"user": "u", "replication": "database"}})
	feed(t, s, startupSteps())
	var ue *UnmovableError
	if err := s.Movable(); !errors.As(err, &ue) || ue.Reason != ReasonOpaque {
		t.Errorf("replication connection: %v", err)
	}
	s = New(&pgproto3.StartupMessage{Parameters: map[string]string{"user": "u", "replication": "false"}})
	feed(t, s, startupSteps())
	if err := s.Movable(); err != nil {
		t.Errorf("replication=false: %v", err)
	}
}

func TestBackslashLiteralsFollowStandardConformingStrings(t *testing.T) {
	s := newSession()
	feed(t, s, cat(startupSteps(),
		query("SET standard_conforming_strings = off", cc("SET"), ps("standard_conforming_strings", "off"), rfq('I')),
		query(`SET myapp.x = 'a\'b'`, cc("SET"), rfq('I'))))
	p, err := s.Plan()
	if err != nil {
		t.Fatal(err)
	}
	want := "SET myapp.x TO 'a''b'"
	if !slices.Contains(p.Setup, want) {
		t.Errorf("setup %q lacks %q", p.Setup, want)
	}
	if !slices.Contains(p.Setup, "SELECT pg_catalog.set_config('standard_conforming_strings', 'off', false)") {
		t.Errorf("setup %q does not keep standard_conforming_strings off", p.Setup)
	}
}

func TestCloseError(t *testing.T) {
	e := CloseError(&UnmovableError{Reason: ReasonTempTable})
	if e.Code != "57P01" || e.Severity != "FATAL" ||
		e.Message != "holdfast proxy: the primary changed while this session held a temporary table; the session cannot be moved — reconnect" {
		t.Errorf("temp table: %+v", e)
	}
	e = CloseError(&UnmovableError{Reason: ReasonListen, Detail: "channels: a"})
	if e.Detail != "channels: a" || !strings.Contains(e.Message, "LISTEN") {
		t.Errorf("listen: %+v", e)
	}
	e = CloseError(errors.New("x"))
	if e.Code != "57P01" || !strings.Contains(e.Message, "could not be restored") || e.Detail != "x" {
		t.Errorf("replay failure: %+v", e)
	}
	e = CloseErrorReadOnly(&UnmovableError{Reason: ReasonHoldCursor, Detail: "cursor c"})
	if e.Code != "57P01" || e.Severity != "FATAL" || e.Detail != "cursor c" ||
		e.Message != "holdfast proxy: the session's read-only server left the pool while this session had an open WITH HOLD cursor; the session cannot be moved — reconnect" ||
		!strings.Contains(e.Hint, "another read-only server") {
		t.Errorf("read-only hold cursor: %+v", e)
	}
	e = CloseErrorReadOnly(errors.New("x"))
	if !strings.Contains(e.Message, "could not be restored on another read-only server") || e.Detail != "x" {
		t.Errorf("read-only replay failure: %+v", e)
	}
	for r := ReasonStarting; r <= ReasonStatementContext; r++ {
		if r.Label() == "unknown" || strings.Contains(r.Phrase(), "does not know") {
			t.Errorf("reason %d has no text", r)
		}
	}
	if Reason(0).Label() != "unknown" || Reason(99).Label() != "unknown" {
		t.Error("out-of-range reasons")
	}
	if _, err := (&pgproto3.ErrorResponse{}).Encode(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Encode(nil); err != nil {
		t.Errorf("encode: %v", err)
	}
}

// A SQL-level PREPARE has its statement's effects at each EXECUTE, not at
// PREPARE: preparing a hazardous statement leaves the session movable,
// executing it makes the session opaque (it cannot tell what ran).
func TestSQLPreparedStatementHazards(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []step
		want  Reason // 0: movable
	}{
		{"prepare an advisory lock", query("PREPARE p AS SELECT pg_advisory_lock(1)", cc("PREPARE"), rfq('I')), 0},
		{"prepare set_config", query("PREPARE p AS SELECT set_config('a.b', 'c', false)", cc("PREPARE"), rfq('I')), 0},
		{"execute an advisory lock", cat(
			query("PREPARE p AS SELECT pg_advisory_lock(1)", cc("PREPARE"), rfq('I')),
			query("EXECUTE p", cc("SELECT 1"), rfq('I'))), ReasonOpaque},
		{"execute set_config", cat(
			query("PREPARE p(text) AS SELECT set_config('a.b', $1, false)", cc("PREPARE"), rfq('I')),
			query("EXECUTE p('x')", cc("SELECT 1"), rfq('I'))), ReasonOpaque},
		{"prepare and execute in one query", query("PREPARE p AS SELECT pg_advisory_lock(1); EXPLAIN ANALYZE EXECUTE p",
			cc("PREPARE"), cc("EXPLAIN"), rfq('I')), ReasonOpaque},
		{"execute a harmless statement", cat(
			query("PREPARE p AS SELECT 1", cc("PREPARE"), rfq('I')),
			query("EXECUTE p", cc("SELECT 1"), rfq('I'))), 0},
		{"re-prepared without the hazard", cat(
			query("PREPARE p AS SELECT pg_advisory_lock(1)", cc("PREPARE"), rfq('I')),
			query("DEALLOCATE p", cc("DEALLOCATE"), rfq('I')),
			query("PREPARE p AS SELECT 1", cc("PREPARE"), rfq('I')),
			query("EXECUTE p", cc("SELECT 1"), rfq('I'))), 0},
		{"quoted advisory lock function", query(`SELECT "pg_advisory_lock"(1)`, cc("SELECT 1"), rfq('I')), ReasonAdvisoryLock},
		{"set_config in a larger query", query("SELECT set_config('a.b', 'c', false) FROM t", cc("SELECT 1"), rfq('I')), ReasonSettings},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSession()
			feed(t, s, cat(startupSteps(), tc.steps))
			err := s.Movable()
			var ue *UnmovableError
			switch {
			case tc.want == 0 && err != nil:
				t.Fatalf("Movable: %v, want nil", err)
			case tc.want != 0 && (!errors.As(err, &ue) || ue.Reason != tc.want):
				t.Fatalf("Movable: %v, want reason %v", err, tc.want)
			}
		})
	}
}

// PostgreSQL ignores Sync in COPY IN: a Sync sent right after the Execute
// that began the COPY (libpq sends one before it knows), or while the
// COPY runs, answers nothing; the Sync after CopyDone ends the batch.
func TestSyncIgnoredInCopyIn(t *testing.T) {
	s := newSession()
	feed(t, s, cat(startupSteps(), []step{
		fe(&pgproto3.Parse{Query: "COPY t FROM STDIN"}), fe(&pgproto3.Bind{}), fe(&pgproto3.Describe{ObjectType: 'P'}),
		fe(&pgproto3.Execute{}), fe(&pgproto3.Sync{}),
		be(&pgproto3.ParseComplete{}), be(&pgproto3.BindComplete{}), be(&pgproto3.NoData{}),
		be(&pgproto3.CopyInResponse{}),
	}))
	if n := s.TakeIgnoredSyncs(); n != 1 || !s.InCopyIn() {
		t.Fatalf("after CopyInResponse: %d ignored Syncs, in COPY IN %v; want 1, true", n, s.InCopyIn())
	}
	if n := s.TakeIgnoredSyncs(); n != 0 {
		t.Fatalf("TakeIgnoredSyncs again: %d, want 0", n)
	}
	feed(t, s, []step{
		fe(&pgproto3.CopyData{Data: []byte("1\n")}), fe(&pgproto3.Sync{}), fe(&pgproto3.CopyDone{}), fe(&pgproto3.Sync{}),
		be(cc("COPY 1")), be(rfq('I')),
	})
	if s.InCopyIn() || !s.AtBoundary() {
		t.Fatalf("after the COPY: in COPY IN %v, at a boundary %v; want false, true", s.InCopyIn(), s.AtBoundary())
	}
	if err := s.Movable(); err != nil {
		t.Fatalf("after the COPY: %v", err)
	}
}
