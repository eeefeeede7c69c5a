package pgsession

import (
	"slices"
	"strings"
	"testing"
)

func TestSplitStatements(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sql   string
		off   bool // standard_conforming_strings off
		want  []string
		error bool
	}{
		{"empty", "", false, nil, false},
		{"only semicolons and comments", " ;; -- x\n ; /* y */ ;", false, nil, false},
		{"two", "SELECT 1; SELECT 2", false, []string{"SELECT 1", "SELECT 2"}, false},
		{"trailing semicolon", "SELECT 1;", false, []string{"SELECT 1"}, false},
		{"semicolon in string", "SELECT ';'; SELECT 2", false, []string{"SELECT ';'", "SELECT 2"}, false},
		{"doubled quote", "SELECT 'it''s;'; SELECT 2", false, []string{"SELECT 'it''s;'", "SELECT 2"}, false},
		{"E string backslash quote", `SELECT E'it\'s;'; SELECT 2`, false, []string{`SELECT E'it\'s;'`, "SELECT 2"}, false},
		{"backslash in standard string", `SELECT 'a\'; SELECT 2`, false, []string{`SELECT 'a\'`, "SELECT 2"}, false},
		{"backslash escapes with scs off", `SELECT 'a\'; SELECT 2'; SELECT 3`, true, []string{`SELECT 'a\'; SELECT 2'`, "SELECT 3"}, false},
		{"dollar quote", "SELECT $$a;b$$; SELECT 2", false, []string{"SELECT $$a;b$$", "SELECT 2"}, false},
		{"tagged dollar quote with inner $$", "SELECT $f$ $$ ; $f$; SELECT 2", false, []string{"SELECT $f$ $$ ; $f$", "SELECT 2"}, false},
		{"param is not a dollar quote", "SELECT $1; SELECT $2", false, []string{"SELECT $1", "SELECT $2"}, false},
		{"dollar inside identifier", "SELECT a$b; SELECT 2", false, []string{"SELECT a$b", "SELECT 2"}, false},
		{"quoted identifier", `SELECT "a;""b"; SELECT 2`, false, []string{`SELECT "a;""b"`, "SELECT 2"}, false},
		{"line comment", "SELECT 1 -- no; split\n; SELECT 2", false, []string{"SELECT 1 -- no; split", "SELECT 2"}, false},
		{"nested block comment", "/* a; /* b; */ c; */ SELECT 1; SELECT 2", false, []string{"/* a; /* b; */ c; */ SELECT 1", "SELECT 2"}, false},
		{"operator then comment", "SELECT 1+-- c;\n2; SELECT 3", false, []string{"SELECT 1+-- c;\n2", "SELECT 3"}, false},
		{"rule with parenthesised actions", "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)); SELECT 1",
			false, []string{"CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))", "SELECT 1"}, false},
		{"begin atomic body", "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END; SELECT 3",
			false, []string{"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END", "SELECT 3"}, false},
		{"BEGIN is a transaction outside CREATE", "BEGIN; SELECT 1; END", false, []string{"BEGIN", "SELECT 1", "END"}, false},
		{"unicode string", `SELECT U&'d\0061t;a'; SELECT 2`, false, []string{`SELECT U&'d\0061t;a'`, "SELECT 2"}, false},
		{"unterminated comment", "SELECT 1 /* x", false, nil, true},
		{"unterminated string", "SELECT 'abc", false, nil, true},
		{"unterminated identifier", `SELECT "abc`, false, nil, true},
		{"unterminated dollar", "SELECT $a$ x", false, nil, true},
		{"lone dollar", "SELECT $; SELECT 2", false, []string{"SELECT $", "SELECT 2"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sts, err := splitStatements(tc.sql, scanOptions{backslashQuote: tc.off})
			if (err != nil) != tc.error {
				t.Fatalf("error %v, want error %v", err, tc.error)
			}
			var got []string
			for _, s := range sts {
				got = append(got, s.text)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("statements\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestTokens(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want string // kind:value per token, space separated
	}{
		{`SET Search_Path TO "MySchema", public`, `w:set w:search_path w:to q:MySchema o:, w:public`},
		{`'a''b' E'c\nd\\' $x$e'f$x$ B'101' N'n'`, "s:a'b s:c\nd\\ s:e'f s!:101 s:n"},
		{`E'\x41'`, `s!:x41`},
		{`ÄBC x`, "w:Äbc w:x"},
		{`1.5e-3 .5 1_000 $3`, `n:1.5e-3 n:.5 n:1_000 p:$3`},
		{`a::int >= b`, `w:a o::: w:int o:>= w:b`},
		{`x-- comment` + "\n" + `/* c */y`, `w:x w:y`},
	} {
		sts, err := splitStatements(tc.sql, scanOptions{})
		if err != nil || len(sts) != 1 {
			t.Errorf("%q: %v %d statements", tc.sql, err, len(sts))
			continue
		}
		var parts []string
		for _, tok := range sts[0].toks {
			k := map[tokKind]string{tokWord: "w", tokQIdent: "q", tokString: "s", tokNumber: "n", tokParam: "p", tokOp: "o"}[tok.kind]
			if tok.inexact {
				k += "!"
			}
			parts = append(parts, k+":"+tok.val)
		}
		if got := strings.Join(parts, " "); got != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.sql, got, tc.want)
		}
	}
}
