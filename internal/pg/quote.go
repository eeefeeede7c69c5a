package pg

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// QuoteIdent quotes s as an SQL identifier ("role", with '"' doubled), so a
// role or object name taken from configuration can never end the identifier
// and inject SQL. It refuses the empty string and NUL, which PostgreSQL
// cannot store (pgx's Sanitize would silently drop NUL and so name a
// different object).
func QuoteIdent(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("quote identifier: empty name")
	}
	if strings.IndexByte(s, 0) >= 0 {
		return "", fmt.Errorf("quote identifier %q: contains a NUL byte", s)
	}
	return pgx.Identifier{s}.Sanitize(), nil
}

// QuoteLiteral quotes s as an SQL string literal: single quotes are doubled;
// a string containing a backslash is written in the E” form with the
// backslashes doubled, so the literal means the same whatever
// standard_conforming_strings is (this is what PostgreSQL's quote_literal
// does). It refuses NUL, which PostgreSQL text cannot hold.
func QuoteLiteral(s string) (string, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return "", fmt.Errorf("quote literal: contains a NUL byte")
	}
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		q = "E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q, nil
}

// quoteConfValue quotes a value for postgresql.conf syntax. The lexer of
// that format accepts ” and backslash escapes inside a quoted string
// but no raw newline, so backslash, quote, newline and carriage return are
// escaped; NUL (which would end the C string) is refused.
func quoteConfValue(v string) (string, error) {
	if strings.IndexByte(v, 0) >= 0 {
		return "", fmt.Errorf("value contains a NUL byte")
	}
	var b strings.Builder
	b.Grow(len(v) + 2)
	b.WriteByte('\'')
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\'':
			b.WriteString("''")
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String(), nil
}

// conninfo renders libpq keyword/value pairs, every value single-quoted
// with backslash and quote escaped by a backslash, so a password or host
// can never add a keyword. NUL is refused (libpq strings are C strings).
func conninfo(pairs ...[2]string) (string, error) {
	parts := make([]string, 0, len(pairs))
	for _, p := range pairs {
		if strings.IndexByte(p[1], 0) >= 0 {
			return "", fmt.Errorf("connection parameter %s contains a NUL byte", p[0])
		}
		v := strings.ReplaceAll(p[1], `\`, `\\`)
		v = strings.ReplaceAll(v, `'`, `\'`)
		parts = append(parts, p[0]+"='"+v+"'")
	}
	return strings.Join(parts, " "), nil
}

// quoteHBAToken double-quotes a pg_hba.conf token (a role or database
// name): quoting makes keywords such as "all" or "replication" and the
// "+group" and "@file" forms literal; '"' is doubled.
func quoteHBAToken(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
