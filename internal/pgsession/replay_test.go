package pgsession

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// movedSession is a session with a named statement s1, a SQL-prepared p,
// search_path and work_mem set.
func movedSession(t *testing.T) *Session {
	t.Helper()
	s := newSession()
	feed(t, s, cat(startupSteps(),
		query("SET search_path = app, public; SET work_mem = '8MB'; PREPARE p(int) AS SELECT $1", cc("SET"), cc("SET"), cc("PREPARE"), rfq('I')),
		[]step{fe(&pgproto3.Parse{Name: "s1", Query: "SELECT $1::int", ParameterOIDs: []uint32{23}}), fe(&pgproto3.Parse{Name: "S2", Query: "SELECT 2"}),
			fe(&pgproto3.Sync{}), be(&pgproto3.ParseComplete{}), be(&pgproto3.ParseComplete{}), be(rfq('I'))}))
	return s
}

// newServerStartup is a new server's startup: a newer minor version.
func newServerStartup() []pgproto3.BackendMessage {
	var out []pgproto3.BackendMessage
	out = append(out, &pgproto3.AuthenticationOk{})
	for _, p := range startupParams {
		v := p[1]
		if p[0] == "server_version" {
			v = "15.19"
		}
		out = append(out, ps(p[0], v))
	}
	return append(out, &pgproto3.BackendKeyData{ProcessID: 99, SecretKey: []byte{9, 9, 9, 9}}, rfq('I'))
}

// setupAnswers answers each Setup statement as a server would.
func setupAnswers(p *Plan) []pgproto3.BackendMessage {
	var out []pgproto3.BackendMessage
	for _, st := range p.Setup {
		switch {
		case strings.HasPrefix(st, "SELECT"):
			out = append(out, &pgproto3.RowDescription{}, &pgproto3.DataRow{}, cc("SELECT 1"))
		case strings.HasPrefix(st, "PREPARE"):
			out = append(out, cc("PREPARE"))
		default:
			out = append(out, cc("SET"))
		}
	}
	return append(out, rfq('I'))
}

func replay(t *testing.T, r *ReplayResponses, msgs []pgproto3.BackendMessage) (bool, error) {
	t.Helper()
	for i, m := range msgs {
		done, err := r.Receive(m)
		if err != nil {
			return false, err
		}
		if done && i != len(msgs)-1 {
			t.Fatalf("done at message %d of %d", i+1, len(msgs))
		}
		if done {
			return true, nil
		}
	}
	return false, nil
}

func TestPlanContents(t *testing.T) {
	s := movedSession(t)
	p, err := s.Plan()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"SELECT pg_catalog.set_config('DateStyle', 'ISO, MDY', false)",
		"SELECT pg_catalog.set_config('IntervalStyle', 'postgres', false)",
		"SELECT pg_catalog.set_config('TimeZone', 'UTC', false)",
		"SELECT pg_catalog.set_config('application_name', 'app', false)",
		"SELECT pg_catalog.set_config('client_encoding', 'UTF8', false)",
		"SELECT pg_catalog.set_config('standard_conforming_strings', 'on', false)",
		"SET search_path TO app, public",
		"SET work_mem TO '8MB'",
		"PREPARE p(int) AS SELECT $1",
	}
	if !slices.Equal(p.Setup, want) {
		t.Errorf("setup\n got %q\nwant %q", p.Setup, want)
	}
	if q := p.SetupQuery(); q != strings.Join(want, ";\n")+";\n" {
		t.Errorf("setup query %q", q)
	}
	if len(p.Statements) != 2 || p.Statements[0].Name != "S2" || p.Statements[1].Name != "s1" ||
		p.Statements[1].Query != "SELECT $1::int" || !slices.Equal(p.Statements[1].ParameterOIDs, []uint32{23}) {
		t.Errorf("statements %+v", p.Statements)
	}
	if p.Startup["user"] != "alice" || p.Startup["database"] != "db" || p.Startup["application_name"] != "app" {
		t.Errorf("startup %v", p.Startup)
	}
	lazy := p.Messages(true)
	if len(lazy) != 1 {
		t.Fatalf("lazy messages %d", len(lazy))
	}
	eager := p.Messages(false)
	if len(eager) != 4 {
		t.Fatalf("eager messages: %d", len(eager))
	}
	if _, ok := eager[3].(*pgproto3.Sync); !ok {
		t.Errorf("eager messages end with %T", eager[3])
	}
	// The plan is a copy: the session going on does not change it.
	feed(t, s, query("SET work_mem = '1MB'", cc("SET"), rfq('I')))
	if !slices.Equal(p.Setup, want) {
		t.Error("the plan changed with the session")
	}
	var empty Plan
	if empty.SetupQuery() != "" || len(empty.Messages(false)) != 0 {
		t.Error("an empty plan sends something")
	}
}

func TestReplayResponses(t *testing.T) {
	s := movedSession(t)
	p, err := s.Plan()
	if err != nil {
		t.Fatal(err)
	}
	t.Run("eager", func(t *testing.T) {
		r := p.Responses(false)
		msgs := slices.Concat(newServerStartup(), []pgproto3.BackendMessage{&pgproto3.NoticeResponse{}}, setupAnswers(p),
			[]pgproto3.BackendMessage{&pgproto3.ParseComplete{}, &pgproto3.ParseComplete{}, rfq('I')})
		done, err := replay(t, r, msgs)
		if !done || err != nil {
			t.Fatalf("done %v, err %v", done, err)
		}
		res := r.Result()
		if len(res.ToClient) != 1 || res.ToClient[0].Name != "server_version" || res.ToClient[0].Value != "15.19" {
			t.Errorf("to client %+v", res.ToClient)
		}
		if res.Key == nil || res.Key.ProcessID != 99 {
			t.Errorf("key %+v", res.Key)
		}
		if again, err := r.Receive(rfq('I')); !again || err != nil {
			t.Errorf("after done: %v %v", again, err)
		}
		s2 := movedSession(t)
		s2.Moved(res)
		if s2.Key().ProcessID != 99 || len(s2.unprepared) != 0 {
			t.Errorf("moved: key %+v, unprepared %v", s2.Key(), s2.unprepared)
		}
		// A statement prepared eagerly needs no injection.
		if before, err := s2.Frontend(&pgproto3.Bind{PreparedStatement: "s1"}); len(before) != 0 || err != nil {
			t.Errorf("injected %v %v", before, err)
		}
	})
	t.Run("lazy", func(t *testing.T) {
		r := p.Responses(true)
		done, err := replay(t, r, slices.Concat(newServerStartup(), setupAnswers(p)))
		if !done || err != nil {
			t.Fatalf("done %v, err %v", done, err)
		}
	})
	t.Run("nothing to replay", func(t *testing.T) {
		r := (&Plan{}).Responses(false)
		done, err := replay(t, r, []pgproto3.BackendMessage{&pgproto3.AuthenticationOk{}, rfq('I')})
		if !done || err != nil {
			t.Fatalf("done %v, err %v", done, err)
		}
	})
	for _, tc := range []struct {
		name string
		msgs []pgproto3.BackendMessage
		want error
	}{
		{"setup rejected", slices.Concat(newServerStartup(), []pgproto3.BackendMessage{fail("42704")}), ErrReplayRejected},
		{"transaction left open", slices.Concat(newServerStartup(), []pgproto3.BackendMessage{rfq('T')}), ErrReplayUnexpected},
		{"setup answered short", slices.Concat(newServerStartup(), []pgproto3.BackendMessage{cc("SET"), rfq('I')}), ErrReplayUnexpected},
		{"setup answered long", slices.Concat(newServerStartup(), setupAnswers(p)[:len(setupAnswers(p))-1], []pgproto3.BackendMessage{cc("SET")}), ErrReplayUnexpected},
		{"Parse answered short", slices.Concat(newServerStartup(), setupAnswers(p), []pgproto3.BackendMessage{&pgproto3.ParseComplete{}, rfq('I')}), ErrReplayUnexpected},
		{"ParseComplete during setup", slices.Concat(newServerStartup(), []pgproto3.BackendMessage{&pgproto3.ParseComplete{}}), ErrReplayUnexpected},
		{"rows during startup", []pgproto3.BackendMessage{&pgproto3.DataRow{}}, ErrReplayUnexpected},
		{"key after startup", slices.Concat(newServerStartup(), []pgproto3.BackendMessage{&pgproto3.BackendKeyData{}}), ErrReplayUnexpected},
		{"unknown message", []pgproto3.BackendMessage{&pgproto3.CopyInResponse{}}, ErrReplayUnexpected},
		{"a setting the server reverted", slices.Concat(newServerStartup(), setupAnswers(p)[:len(setupAnswers(p))-1],
			[]pgproto3.BackendMessage{ps("TimeZone", "Europe/Paris"), rfq('I'), &pgproto3.ParseComplete{}, &pgproto3.ParseComplete{}, rfq('I')}), ErrReplayMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := p.Responses(false)
			_, err := replay(t, r, tc.msgs)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if _, again := r.Receive(rfq('I')); again == nil {
				t.Error("Receive after an error forgot it")
			}
			if e := CloseError(err); !strings.Contains(e.Message, "could not be restored") {
				t.Errorf("close error %+v", e)
			}
		})
	}
	t.Run("a parameter the new server does not report", func(t *testing.T) {
		s := newSession()
		feed(t, s, cat(startupSteps(), []step{be(ps("custom_reported", "x"))}))
		p, err := s.Plan()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(p.Setup, "SELECT pg_catalog.set_config('custom_reported', 'x', false)") {
			t.Errorf("a changed unknown parameter is not replayed: %q", p.Setup)
		}
		_, err = replay(t, p.Responses(false), slices.Concat(newServerStartup(), setupAnswers(p)))
		if !errors.Is(err, ErrReplayMismatch) || !strings.Contains(err.Error(), "does not report custom_reported") {
			t.Errorf("err %v", err)
		}
	})
}

// lazySession is movedSession after a lazy replay.
func lazySession(t *testing.T) *Session {
	t.Helper()
	s := movedSession(t)
	p, err := s.Plan()
	if err != nil {
		t.Fatal(err)
	}
	r := p.Responses(true)
	if done, err := replay(t, r, slices.Concat(newServerStartup(), setupAnswers(p))); !done || err != nil {
		t.Fatalf("replay: %v %v", done, err)
	}
	s.Moved(r.Result())
	return s
}

// parses lists the names of the Parse messages in msgs, and "sync".
func parses(msgs []pgproto3.FrontendMessage) []string {
	var out []string
	for _, m := range msgs {
		switch m := m.(type) {
		case *pgproto3.Parse:
			out = append(out, m.Name)
		case *pgproto3.Sync:
			out = append(out, "sync")
		default:
			out = append(out, "?")
		}
	}
	return out
}

func TestLazyPrepare(t *testing.T) {
	t.Run("Bind prepares first", func(t *testing.T) {
		s := lazySession(t)
		if s.Key().ProcessID != 99 {
			t.Errorf("key %+v", s.Key())
		}
		before, err := s.Frontend(&pgproto3.Bind{PreparedStatement: "s1"})
		if err != nil || !slices.Equal(parses(before), []string{"s1"}) {
			t.Fatalf("before Bind: %q %v", parses(before), err)
		}
		if p := before[0].(*pgproto3.Parse); p.Query != "SELECT $1::int" || !slices.Equal(p.ParameterOIDs, []uint32{23}) {
			t.Errorf("injected %+v", p)
		}
		for _, st := range []*pgproto3.Execute{{}} {
			if b, _ := s.Frontend(st); len(b) != 0 {
				t.Error("Execute injected")
			}
		}
		s.Frontend(&pgproto3.Sync{})
		for i, tc := range []struct {
			m    pgproto3.BackendMessage
			want Verdict
		}{
			{&pgproto3.ParseComplete{}, Swallow}, {&pgproto3.BindComplete{}, Forward}, {&pgproto3.DataRow{}, Forward},
			{cc("SELECT 1"), Forward}, {rfq('I'), Forward},
		} {
			if v, err := s.Backend(tc.m); v != tc.want || err != nil {
				t.Errorf("answer %d %T: %v %v, want %v", i, tc.m, v, err, tc.want)
			}
		}
		// Prepared now: no second injection.
		if before, _ := s.Frontend(&pgproto3.Describe{ObjectType: 'S', Name: "s1"}); len(before) != 0 {
			t.Errorf("second injection %q", parses(before))
		}
		if err := func() error { s.Frontend(&pgproto3.Sync{}); return nil }(); err != nil {
			t.Fatal(err)
		}
		s.Backend(&pgproto3.ParameterDescription{})
		s.Backend(&pgproto3.NoData{})
		s.Backend(rfq('I'))
		if err := s.Movable(); err != nil {
			t.Errorf("after first use: %v", err)
		}
	})
	t.Run("EXECUTE in a Query prepares and syncs first", func(t *testing.T) {
		s := lazySession(t)
		before, err := s.Frontend(&pgproto3.Query{String: `EXECUTE "S2"; SELECT 1`})
		if err != nil || !slices.Equal(parses(before), []string{"S2", "sync"}) {
			t.Fatalf("before Query: %q %v", parses(before), err)
		}
		for i, tc := range []struct {
			m    pgproto3.BackendMessage
			want Verdict
		}{
			{&pgproto3.ParseComplete{}, Swallow}, {rfq('I'), Swallow}, {cc("SELECT 1"), Forward}, {cc("SELECT 1"), Forward}, {rfq('I'), Forward},
		} {
			if v, err := s.Backend(tc.m); v != tc.want || err != nil {
				t.Errorf("answer %d %T: %v %v, want %v", i, tc.m, v, err, tc.want)
			}
		}
		if !s.AtBoundary() || s.Movable() != nil {
			t.Errorf("not back at a boundary: %v", s.Movable())
		}
	})
	t.Run("unquoted names fold", func(t *testing.T) {
		s := lazySession(t)
		if before, _ := s.Frontend(&pgproto3.Query{String: "EXECUTE S1(1)"}); !slices.Equal(parses(before), []string{"s1", "sync"}) {
			t.Errorf("before Query: %q", parses(before))
		}
	})
	t.Run("search_path change prepares everything first", func(t *testing.T) {
		s := lazySession(t)
		before, err := s.Frontend(&pgproto3.Query{String: "SET search_path = other"})
		if err != nil || !slices.Equal(parses(before), []string{"S2", "s1", "sync"}) {
			t.Fatalf("before SET: %q %v", parses(before), err)
		}
	})
	t.Run("extended search_path change", func(t *testing.T) {
		s := lazySession(t)
		s.Frontend(&pgproto3.Parse{Query: "SET search_path = other"})
		s.Frontend(&pgproto3.Bind{})
		before, err := s.Frontend(&pgproto3.Execute{})
		if err != nil || !slices.Equal(parses(before), []string{"S2", "s1"}) {
			t.Fatalf("before Execute: %q %v", parses(before), err)
		}
	})
	t.Run("Close forgets without preparing", func(t *testing.T) {
		s := lazySession(t)
		if before, _ := s.Frontend(&pgproto3.Close{ObjectType: 'S', Name: "s1"}); len(before) != 0 {
			t.Errorf("Close injected %q", parses(before))
		}
		if before, _ := s.Frontend(&pgproto3.Bind{PreparedStatement: "s1"}); len(before) != 0 {
			t.Errorf("Bind after Close injected %q", parses(before))
		}
	})
	t.Run("injected Parse rejected", func(t *testing.T) {
		s := lazySession(t)
		s.Frontend(&pgproto3.Bind{PreparedStatement: "s1"})
		s.Frontend(&pgproto3.Execute{})
		s.Frontend(&pgproto3.Sync{})
		v, err := s.Backend(fail("42P01"))
		if err == nil || v != Swallow || !strings.Contains(err.Error(), `prepared statement "s1"`) {
			t.Fatalf("rejected injection: %v %v", v, err)
		}
		if e := CloseError(err); !strings.Contains(e.Detail, "42P01") {
			t.Errorf("close error %+v", e)
		}
	})
	t.Run("failed transaction waits", func(t *testing.T) {
		s := lazySession(t)
		feed(t, s, cat(query("BEGIN", cc("BEGIN"), rfq('T')), query("SELECT 1/0", fail("22012"), rfq('E'))))
		if before, err := s.Frontend(&pgproto3.Bind{PreparedStatement: "s1"}); len(before) != 0 || err != nil {
			t.Errorf("injected in a failed transaction: %q %v", parses(before), err)
		}
	})
	t.Run("context changed before first use", func(t *testing.T) {
		s := lazySession(t)
		// Smuggle a context change past injection: a SET LOCAL inside a
		// transaction, then first use.
		before, _ := s.Frontend(&pgproto3.Query{String: "BEGIN"})
		if len(before) != 0 {
			t.Fatalf("BEGIN injected %q", parses(before))
		}
		feed(t, s, []step{be(cc("BEGIN")), be(rfq('T'))})
		s.localContext = 1
		_, err := s.Frontend(&pgproto3.Bind{PreparedStatement: "s1"})
		var ue *UnmovableError
		if !errors.As(err, &ue) || ue.Reason != ReasonStatementContext {
			t.Errorf("err %v", err)
		}
	})
}

func TestLazyUnnamedStatement(t *testing.T) {
	moved := func() *Session {
		s := newSession()
		feed(t, s, cat(startupSteps(), []step{fe(&pgproto3.Parse{Query: "SELECT 1"}), fe(&pgproto3.Sync{}), be(&pgproto3.ParseComplete{}), be(rfq('I'))}))
		p, err := s.Plan()
		if err != nil {
			t.Fatal(err)
		}
		r := p.Responses(true)
		if done, err := replay(t, r, slices.Concat(newServerStartup(), setupAnswers(p))); !done || err != nil {
			t.Fatalf("replay: %v %v", done, err)
		}
		s.Moved(r.Result())
		return s
	}
	s := moved()
	if before, _ := s.Frontend(&pgproto3.Bind{}); !slices.Equal(parses(before), []string{""}) {
		t.Errorf("Bind of the unnamed statement: %q", parses(before))
	}
	s = moved()
	if before, _ := s.Frontend(&pgproto3.Parse{Query: "SELECT 2"}); len(before) != 0 {
		t.Errorf("a new unnamed statement injected %q", parses(before))
	}
	if before, _ := s.Frontend(&pgproto3.Bind{}); len(before) != 0 {
		t.Errorf("Bind of the replaced unnamed statement injected %q", parses(before))
	}
}
