package pgsession

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// scanFragments are pieces of SQL that exercise every path of the lexer:
// quoting of each kind, escapes, comments, dollar quoting, operators,
// numbers, keywords in any case, and the statements the tracker looks for.
var scanFragments = []string{
	"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
	"UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5678;",
	"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, -1234, CURRENT_TIMESTAMP);",
	"BEGIN;", "END;", "Commit", "ROLLBACK", "begin", "BeGiN", "eNd", "SELECT 1; SELECT 2",
	"SELECT set_config('a', 'b', false)", "SELECT pg_catalog.set_config('Search_Path', 'x', false)",
	"SELECT pg_advisory_lock(1)", `SELECT "pg_advisory_lock"(1)`, "SELECT PG_ADVISORY_LOCK(1)", `SELECT "PG_ADVISORY_LOCK"(1)`,
	"SELECT pg_try_advisory_lock_shared(1)", "SELECT pg_advisory_unlock_all()",
	"SELECT * INTO TEMP t FROM x", "SELECT * INTO LOCAL TEMPORARY t FROM x", "CREATE TEMP TABLE t (x int) ON COMMIT DROP",
	"CREATE GLOBAL TEMPORARY TABLE t (x int)", "SELECT * FROM pg_temp.t", "SELECT * FROM PG_TEMP_3.t", `SELECT * FROM "pg_temp".t`,
	"LISTEN c", `LISTEN "Chan"`, "UNLISTEN *", "PREPARE p AS SELECT 1", "PREPARE p (int) AS SELECT pg_advisory_lock($1)",
	"EXECUTE p", "EXECUTE \"P\"(1)", "DEALLOCATE p", "DEALLOCATE ALL",
	"DECLARE c CURSOR WITH HOLD FOR SELECT 1", "DECLARE c CURSOR FOR SELECT 1 WITH HOLD", "CLOSE ALL",
	"SET search_path = a, 'b', \"C\"", "SET LOCAL search_path TO x", "SET TIME ZONE LOCAL", "RESET ALL", "DISCARD ALL",
	"DO $$BEGIN EXECUTE 'SET x = 1'; END$$", "DO $body$ BEGIN PERFORM pg_advisory_lock(1); END $body$",
	"CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 1 END; END",
	"'plain'", "'it''s'", "''", "''''", "'a\\'b'", "'a\\\\'", "'\\n\\t\\x41'", "E'\\''", "e'\\\\'", "E'\\101'",
	"B'1010'", "x'ff'", "N'nat'", "n'it''s'", "U&'\\0041'", "U&\"d\\0061t\\+000061\"", "u&'x' UESCAPE '!'",
	`"Quoted Ident"`, `"a""b"`, `""`, `"unterminated`, "'unterminated", "$$unterminated", "$a$ x $b$ y $a$",
	"$1", "$12::int", "$", "$a", "$_x$ $_x$", "$1$", "$a$$a$",
	"/* c */", "/* /* nested */ */", "/* unterminated", "-- line\n", "--", "a--b\nc", "a/*b*/c", "x +-- comment\n 1",
	"1", "1.5", ".5", "1e10", "1e+5", "1E-5", "0x1F", "1_000", "1e", "1abc",
	"a::text", "a := 1", "a => b", "a <> b", "a != b", "@-@ x", "a||b", "#>>", "`", "?", ";;", "; ;",
	"(a; b)", "[1;2]", ")(", "]", "ÄÖÜ", "café", "CAFÉ", "naïve_Name", "\x80\xff", "\t\r\n\f\v",
	"SELECT current_timestamp, Current_Timestamp, NOW()", "ORDER BY x DESC LIMIT 1 OFFSET 2",
	"Returning", "a.b.c", "SELECT 'a' 'b'", "ABCDEFGHIJKLMNOPQRSTUVWXYZ_ABCDEFGHIJKLMNOPQRSTUVWXYZ",
}

// sameStatements compares two scans, token by token.
func sameStatements(got, want []statement, gotErr, wantErr error) error {
	if gotErr != nil || wantErr != nil {
		if !errors.Is(gotErr, wantErr) || !errors.Is(wantErr, gotErr) {
			return fmt.Errorf("error %v, reference %v", gotErr, wantErr)
		}
		return nil
	}
	if len(got) != len(want) {
		return fmt.Errorf("%d statements, reference %d", len(got), len(want))
	}
	for i := range got {
		if got[i].text != want[i].text {
			return fmt.Errorf("statement %d text %q, reference %q", i, got[i].text, want[i].text)
		}
		if len(got[i].toks) != len(want[i].toks) {
			return fmt.Errorf("statement %d: %d tokens, reference %d", i, len(got[i].toks), len(want[i].toks))
		}
		for j := range got[i].toks {
			if got[i].toks[j] != want[i].toks[j] {
				return fmt.Errorf("statement %d token %d: %+v, reference %+v", i, j, got[i].toks[j], want[i].toks[j])
			}
		}
	}
	return nil
}

// checkScan compares splitStatements, and a split in reused room, with
// the reference scanner, and the classification of each statement with
// that of the reference's.
func checkScan(t *testing.T, b *scanBuf, sql string) {
	t.Helper()
	for _, o := range []scanOptions{{}, {backslashQuote: true}} {
		want, wantErr := refSplitStatements(sql, o)
		got, gotErr := splitStatements(sql, o)
		if err := sameStatements(got, want, gotErr, wantErr); err != nil {
			t.Fatalf("%q %+v: %v", sql, o, err)
		}
		got, gotErr = b.split(sql, o)
		if err := sameStatements(got, want, gotErr, wantErr); err != nil {
			t.Fatalf("%q %+v, reused room: %v", sql, o, err)
		}
		for i := range got {
			if g, w := summary(classify(got[i])), summary(classify(want[i])); g != w {
				t.Fatalf("%q: statement %d reads as %s, reference %s", sql, i, g, w)
			}
		}
	}
}

// TestScannerMatchesReference: the allocation-free scanner reads every
// fragment, and every pair and triple of fragments in sequence, exactly
// as the reference scanner does, also when its room is reused from query
// to query.
func TestScannerMatchesReference(t *testing.T) {
	var b scanBuf
	for _, a := range scanFragments {
		checkScan(t, &b, a)
		for _, c := range scanFragments {
			checkScan(t, &b, a+" "+c)
			checkScan(t, &b, a+c)
			checkScan(t, &b, a+";"+c)
		}
	}
	for i, a := range scanFragments {
		for j, c := range scanFragments {
			d := scanFragments[(i*7+j*13)%len(scanFragments)]
			checkScan(t, &b, a+" "+c+" "+d)
			checkScan(t, &b, strings.ToUpper(a+";"+c+";"+d))
		}
	}
	// A query larger than the room kept between queries.
	checkScan(t, &b, strings.Repeat("SELECT a, 'b', \"C\" FROM t; ", 400))
	checkScan(t, &b, "SELECT 1")
}

// FuzzScannerMatchesReference: the scanner agrees with the reference on
// any input.
func FuzzScannerMatchesReference(f *testing.F) {
	for _, s := range scanFragments {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		var b scanBuf
		checkScan(t, &b, sql)
		checkScan(t, &b, sql+";"+sql)
	})
}

// TestASCIILowerMatchesReference: folding with the keyword table gives
// the same text as folding byte by byte.
func TestASCIILowerMatchesReference(t *testing.T) {
	words := []string{"", "a", "A", "select", "SELECT", "Select", "sElEcT", "SELECTS", "SELEC", "FROM", "Current_Timestamp",
		"CURRENT_TIMESTAMP", "CURRENT_TIMESTAMPS", "ÄBC", "ABC\x80", "pg_Advisory_Lock", "END", "eNd", "ENDS",
		strings.Repeat("X", 31), strings.Repeat("X", 32), strings.Repeat("X", 33), strings.Repeat("Ab", 100)}
	for _, w := range words {
		if got, want := asciiLower(w), refASCIILower(w); got != want {
			t.Errorf("asciiLower(%q) = %q, reference %q", w, got, want)
		}
	}
}

// TestTagIs: tagIs agrees with splitting the tag at white space
// (tagIsFields) on every tag and expectation pair.
func TestTagIs(t *testing.T) {
	tags := []string{"", " ", "SELECT 1", "SELECT", "SELECTED 1", "SELEC", "BEGIN", " BEGIN ", "BEGIN\t", "COMMIT",
		"COMMIT PREPARED", "COMMIT  PREPARED", "COMMIT\tPREPARED x", "COMMIT\nPREPARE", "ROLLBACK", "DECLARE CURSOR",
		"DECLARE", "CLOSE CURSOR ALL", "PREPARE TRANSACTION", "SET CONSTRAINTS", "SET", "\u00a0SET", "SET\u00a0CONSTRAINTS",
		"SÉT", "INSERT 0 1", "\vSET\f", "\rSET\r"}
	wants := []string{"", "SELECT", "BEGIN", "COMMIT PREPARED", "ROLLBACK", "ROLLBACK PREPARED", "DECLARE CURSOR",
		"CLOSE CURSOR", "PREPARE TRANSACTION", "SET", "SET CONSTRAINTS", "INSERT"}
	for _, tag := range tags {
		for _, w := range wants {
			if got, want := tagIs([]byte(tag), w), tagIsFields([]byte(tag), w); got != want {
				t.Errorf("tagIs(%q, %q) = %v, by fields %v", tag, w, got, want)
			}
		}
	}
}

// TestIsOpChar: the switch and the character list agree on every byte.
func TestIsOpChar(t *testing.T) {
	for c := 0; c < 256; c++ {
		if got, want := isOpChar(byte(c)), strings.IndexByte(opChars, byte(c)) >= 0; got != want {
			t.Errorf("isOpChar(%q) = %v, want %v", byte(c), got, want)
		}
	}
}

// TestScanOptionsFollowReported: the scan options the session keeps are
// those its reported parameters call for, after every ParameterStatus and
// after a move.
func TestScanOptionsFollowReported(t *testing.T) {
	s := newSession()
	check := func(when string) {
		t.Helper()
		if got, want := s.scanOptions(), scanOptionsOf(s.reported); got != want {
			t.Fatalf("%s: scan options %+v, reported parameters call for %+v", when, got, want)
		}
	}
	check("new")
	for _, p := range [][2]string{
		{"standard_conforming_strings", "off"}, {"TimeZone", "UTC"}, {"Standard_Conforming_Strings", "on"},
		{"standard_conforming_strings", "on"}, {"standard_conforming_strings", "off"}, {"application_name", "x"},
	} {
		if _, err := s.Backend(ps(p[0], p[1])); err != nil {
			t.Fatal(err)
		}
		check(p[0] + "=" + p[1])
	}
	if !s.scanOptions().backslashQuote {
		t.Fatal("standard_conforming_strings off does not make quotes take backslashes")
	}
	s.Moved(&ReplayResult{reported: map[string]string{"standard_conforming_strings": "on"}})
	check("moved to a server with standard_conforming_strings on")
	s.Moved(&ReplayResult{reported: map[string]string{"standard_conforming_strings": "off"}})
	check("moved to a server with standard_conforming_strings off")
}

// An idle session keeps nothing of a query it scanned that refers to the
// query's text beyond the bounds: not the tokens of a huge one (which
// point into its text), nor, through a statement slot, the token list of
// an earlier query whose token array was let go.
func TestIdleSessionKeepsNoScanOfLargeQueries(t *testing.T) {
	kept := func(t *testing.T, s *Session, after string) {
		t.Helper()
		for i, st := range s.scan.sts[:cap(s.scan.sts)] {
			if st.text != "" || st.toks != nil {
				t.Errorf("after %s: statement slot %d still holds %q (%d tokens)", after, i, st.text[:min(len(st.text), 40)], len(st.toks))
			}
		}
		if c := cap(s.scan.toks); c > maxScratchTokens {
			t.Errorf("after %s: token room of %d kept, bound %d", after, c, maxScratchTokens)
		}
		if s.scan.srcLen != 0 {
			t.Errorf("after %s: the last query's length %d is still counted", after, s.scan.srcLen)
		}
	}
	run := func(t *testing.T, s *Session, sql, tag string) {
		t.Helper()
		feed(t, s, []step{
			{f: &pgproto3.Query{String: sql}},
			{b: &pgproto3.CommandComplete{CommandTag: []byte(tag)}},
			{b: &pgproto3.ReadyForQuery{TxStatus: TxIdle}},
		})
	}

	t.Run("a huge query", func(t *testing.T) {
		s := newSession()
		feed(t, s, startupSteps())
		var b strings.Builder
		b.WriteString("INSERT INTO t VALUES ")
		for i := range 20000 {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString("(1, 'some text here')")
		}
		run(t, s, b.String(), "INSERT 0 20000")
		kept(t, s, "a huge INSERT")
		for i, tok := range s.scan.toks[:cap(s.scan.toks)] {
			if tok.val != "" {
				t.Fatalf("token slot %d still holds %q", i, tok.val)
			}
		}
	})
	t.Run("a short query of many tokens, then a small one", func(t *testing.T) {
		s := newSession()
		feed(t, s, startupSteps())
		// Two statements under maxPinnedText bytes, the second of more
		// tokens than the room keeps.
		sql := "SELECT 1; SELECT 1" + strings.Repeat(",1", 600)
		if len(sql) > maxPinnedText {
			t.Fatalf("test query of %d bytes, want at most %d", len(sql), maxPinnedText)
		}
		feed(t, s, []step{
			{f: &pgproto3.Query{String: sql}},
			{b: &pgproto3.RowDescription{}}, {b: &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}},
			{b: &pgproto3.RowDescription{}}, {b: &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}},
			{b: &pgproto3.ReadyForQuery{TxStatus: TxIdle}},
		})
		kept(t, s, "a query of many tokens")
		run(t, s, "SELECT 1", "SELECT 1")
		kept(t, s, "a small query after it")
	})
}
