package pgsession

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// FuzzScan: the scanner and classifier never panic; statements are pieces
// of the input, at most one more than its semicolons.
func FuzzScan(f *testing.F) {
	for _, s := range []string{
		"SELECT 1; SELECT 2", "SET search_path = a, 'b', \"C\"", `SELECT E'\'' ; $x$ ; $x$`, "/* /* */ */;",
		"CREATE FUNCTION f() BEGIN ATOMIC SELECT 1; END", "DO $$BEGIN EXECUTE 'SET x = 1'; END$$",
		"SELECT set_config('a', 'b', false)", "SET TIME ZONE LOCAL", "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
		"PREPARE p AS SELECT 1", "U&'\\0041'", "$1$", "$a", "1e", "'", "\"", "--", "/*", "SET", "RESET", "SET x TO",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		for _, o := range []scanOptions{{}, {backslashQuote: true}} {
			sts, err := splitStatements(sql, o)
			if err != nil {
				continue
			}
			if len(sts) > strings.Count(sql, ";")+1 {
				t.Fatalf("%d statements from %d semicolons", len(sts), strings.Count(sql, ";"))
			}
			for _, st := range sts {
				if !strings.Contains(sql, st.text) || len(st.toks) == 0 {
					t.Fatalf("statement %q is not a piece of the input", st.text)
				}
				e := classify(st)
				for _, c := range e.gucs {
					if c.kind == gucSet && c.replay == "" {
						t.Fatalf("SET without replay text: %q", st.text)
					}
				}
			}
			_ = parseEffect(sql, o)
		}
	})
}

// fuzzSQL are the statements random sessions send.
var fuzzSQL = []string{
	"SELECT 1", "SET search_path = app", "SET work_mem = '1MB'", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT a",
	"ROLLBACK TO a", "RESET ALL", "DISCARD ALL", "CREATE TEMP TABLE t (x int)", "SELECT pg_advisory_lock(1)",
	"SELECT pg_advisory_unlock_all()", "LISTEN c", "UNLISTEN *", "DECLARE c CURSOR WITH HOLD FOR SELECT 1", "CLOSE ALL",
	"PREPARE p AS SELECT 1", "DEALLOCATE p", "DEALLOCATE ALL", "EXECUTE p", "SET LOCAL search_path = x",
	"SET ROLE r", "SELECT 'x", "SET a.b = 1; SELECT 1/0", "",
}

var fuzzTags = []string{"SET", "BEGIN", "COMMIT", "ROLLBACK", "SELECT 1", "PREPARE", "DEALLOCATE", "RESET", "DISCARD ALL", "LISTEN", "garbage"}

var fuzzNames = []string{"", "s1", "s2", "S1"}

// FuzzSession feeds random message sequences, in both directions, with
// plans, replays and moves along the way: nothing panics, and a session
// Movable accepts has a Plan.
func FuzzSession(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25})
	f.Add([]byte{30, 0, 31, 1, 32, 33, 34, 35, 36, 37, 38, 39})
	f.Add([]byte{0, 3, 41, 40, 42, 43, 44, 45})
	f.Fuzz(func(t *testing.T, data []byte) {
		s := New(&pgproto3.StartupMessage{Parameters: map[string]string{"user": "u"}})
		var plan *Plan
		var rr *ReplayResponses
		for i := 0; i < len(data); i++ {
			b := data[i]
			arg := 0
			if i+1 < len(data) {
				arg = int(data[i+1])
			}
			name := fuzzNames[arg%len(fuzzNames)]
			switch b % 48 {
			case 0:
				s.Frontend(&pgproto3.Query{String: fuzzSQL[arg%len(fuzzSQL)]})
				i++
			case 1:
				s.Frontend(&pgproto3.Parse{Name: name, Query: fuzzSQL[(arg/4)%len(fuzzSQL)]})
				i++
			case 2:
				s.Frontend(&pgproto3.Bind{PreparedStatement: name, DestinationPortal: name})
				i++
			case 3:
				s.Frontend(&pgproto3.Execute{Portal: name})
				i++
			case 4:
				s.Frontend(&pgproto3.Sync{})
			case 5:
				s.Frontend(&pgproto3.Describe{ObjectType: "SP"[arg%2], Name: name})
				i++
			case 6:
				s.Frontend(&pgproto3.Close{ObjectType: "SP"[arg%2], Name: name})
				i++
			case 7:
				s.Frontend(&pgproto3.Flush{})
			case 8:
				s.Frontend(&pgproto3.CopyData{})
			case 9:
				s.Frontend(&pgproto3.CopyDone{})
			case 10:
				s.Frontend(&pgproto3.FunctionCall{})
			case 11:
				s.Frontend(&pgproto3.Terminate{})
			case 12:
				s.Backend(rfq("ITEX"[arg%4]))
				i++
			case 13:
				s.Backend(cc(fuzzTags[arg%len(fuzzTags)]))
				i++
			case 14:
				s.Backend(&pgproto3.ParseComplete{})
			case 15:
				s.Backend(&pgproto3.BindComplete{})
			case 16:
				s.Backend(&pgproto3.CloseComplete{})
			case 17:
				s.Backend(&pgproto3.ErrorResponse{Severity: []string{"ERROR", "FATAL"}[arg%2], Code: "XX000"})
				i++
			case 18:
				s.Backend(ps([]string{"search_path", "standard_conforming_strings", "TimeZone", "x"}[arg%4], []string{"on", "off", "a"}[arg%3]))
				i++
			case 19:
				s.Backend(&pgproto3.RowDescription{})
			case 20:
				s.Backend(&pgproto3.NoData{})
			case 21:
				s.Backend(&pgproto3.ParameterDescription{})
			case 22:
				s.Backend(&pgproto3.PortalSuspended{})
			case 23:
				s.Backend(&pgproto3.EmptyQueryResponse{})
			case 24:
				s.Backend(&pgproto3.CopyInResponse{})
			case 25:
				s.Backend(&pgproto3.CopyOutResponse{})
			case 26:
				s.Backend(&pgproto3.CopyDone{})
			case 27:
				s.Backend(&pgproto3.CopyBothResponse{})
			case 28:
				s.Backend(&pgproto3.NotificationResponse{Channel: name})
				i++
			case 29:
				s.Backend(&pgproto3.BackendKeyData{SecretKey: []byte{1}})
			case 30:
				s.Backend(&pgproto3.DataRow{})
			case 31, 32, 33:
				// Plan, and move when movable.
				err := s.Movable()
				p, perr := s.Plan()
				if (err == nil) != (perr == nil) {
					t.Fatalf("Movable %v but Plan %v", err, perr)
				}
				if p != nil {
					plan = p
					rr = p.Responses(b%2 == 0)
					_ = p.Messages(b%2 == 0)
				}
			case 34, 35, 36, 37, 38, 39:
				if rr != nil {
					msgs := []pgproto3.BackendMessage{rfq('I'), cc("SET"), &pgproto3.ParseComplete{}, ps("TimeZone", "UTC"), &pgproto3.DataRow{}, fail("1")}
					if done, err := rr.Receive(msgs[int(b)%len(msgs)]); done && err == nil {
						s.Moved(rr.Result())
						rr = nil
					}
				}
			case 40:
				_ = s.AtBoundary()
				_ = s.TxStatus()
			default:
				if plan != nil {
					_ = plan.SetupQuery()
				}
			}
		}
	})
}
