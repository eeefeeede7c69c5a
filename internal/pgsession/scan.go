package pgsession

import (
	"errors"
	"strings"
)

// The scanner splits a simple Query into statements and each statement into
// tokens, the way PostgreSQL's lexer would for everything that matters to
// session tracking: comments (nested /* */ too), string literals ('...',
// E'...', B/X/N'...', U&'...', $tag$...$tag$), quoted identifiers, and the
// semicolons that end statements (not inside parentheses, brackets or a
// BEGIN ATOMIC body). It is not a parser: classify reads the tokens and
// treats everything it does not recognise conservatively.

// tokKind is the kind of a token.
type tokKind int

const (
	tokWord   tokKind = iota + 1 // unquoted identifier or keyword; val is lower-cased
	tokQIdent                    // "quoted identifier"; val is its content
	tokString                    // string literal; val is its value when exact
	tokNumber                    // numeric literal; val is its text
	tokParam                     // $1
	tokOp                        // operator or punctuation; val is its text
)

// token is one lexical token of a statement.
type token struct {
	kind tokKind
	val  string
	// inexact: a string literal or quoted identifier whose value the
	// scanner did not decode exactly (U&, escapes other than the simple
	// ones); classify must not trust val.
	inexact bool
}

// statement is one statement of a Query: its source text (without the
// terminating semicolon, trimmed) and its tokens.
type statement struct {
	text string
	toks []token
}

// Scan errors. The server rejects such text too, but classify does not
// rely on that: a query that cannot be scanned is opaque.
var (
	errUnterminatedComment = errors.New("unterminated /* comment")
	errUnterminatedString  = errors.New("unterminated quoted string")
	errUnterminatedIdent   = errors.New("unterminated quoted identifier")
	errUnterminatedDollar  = errors.New("unterminated dollar-quoted string")
)

// scanOptions carry the session settings the lexer depends on.
type scanOptions struct {
	// backslashQuote: standard_conforming_strings is off, so '...' takes
	// backslash escapes like E'...'.
	backslashQuote bool
}

// splitStatements scans sql into its non-empty statements.
func splitStatements(sql string, o scanOptions) ([]statement, error) {
	var b scanBuf
	return b.split(sql, o)
}

// scanBuf is scratch room for scanning queries, kept by a Session so that
// scanning a query allocates nothing once the room is large enough. The
// statements and tokens split returns are valid until its next call.
type scanBuf struct {
	sts  []statement
	toks []token
	// srcLen is the length of the last split's text.
	srcLen int
}

// maxScratchTokens bounds the token room a scanBuf keeps between queries,
// and maxPinnedText the length of a query whose text its tokens may keep
// alive until the next: a rare huge query must not pin its memory for the
// session's life.
const (
	maxScratchTokens = 256
	maxPinnedText    = 4096
)

// split is splitStatements into b's room. The statements' token lists
// share one array, each capped at its own end.
func (b *scanBuf) split(sql string, o scanOptions) ([]statement, error) {
	b.release()
	b.srcLen = len(sql)
	if b.toks == nil {
		b.toks = make([]token, 0, tokensPerStatement)
	}
	var (
		out   = b.sts[:0]
		toks  = b.toks[:0]
		first = 0 // index in toks of the current statement's first token
		start = 0
		depth = 0 // ( and [
		// atomic > 0 inside CREATE ... BEGIN ATOMIC ... END: semicolons
		// there belong to the body.
		atomic = 0
	)
	flush := func(end int) {
		if len(toks) > first {
			out = append(out, statement{text: strings.TrimSpace(sql[start:end]), toks: toks[first:len(toks):len(toks)]})
		}
		first, start, depth, atomic = len(toks), end+1, 0, 0
	}
	l := lexer{src: sql, o: o}
	for {
		t, pos, ok, err := l.next()
		if err != nil {
			b.sts, b.toks = out, toks
			return nil, err
		}
		if !ok {
			flush(len(sql))
			b.sts, b.toks = out, toks
			return out, nil
		}
		if t.kind == tokOp {
			switch t.val {
			case ";":
				if depth == 0 && atomic == 0 {
					flush(pos)
					continue
				}
			case "(", "[":
				depth++
			case ")", "]":
				if depth > 0 {
					depth--
				}
			}
		}
		if cur := toks[first:]; t.kind == tokWord && len(cur) > 0 && cur[0].kind == tokWord && cur[0].val == "create" {
			switch {
			case t.val == "atomic" && cur[len(cur)-1].kind == tokWord && cur[len(cur)-1].val == "begin":
				atomic++
			case atomic > 0 && t.val == "case":
				atomic++
			case atomic > 0 && t.val == "end":
				atomic--
			}
		}
		toks = append(toks, t)
	}
}

// release forgets the last split's statements and tokens. Tokens refer
// to the query's text: unless it was short, the room must not keep them.
// Statement slots beyond the last split's hold earlier splits' token
// lists (perhaps of an array since let go): they are always cleared.
func (b *scanBuf) release() {
	clear(b.sts[:cap(b.sts)])
	if b.srcLen > maxPinnedText {
		clear(b.toks[:cap(b.toks)])
	}
	b.srcLen = 0
	b.sts = b.sts[:0]
	b.toks = b.toks[:0]
	if cap(b.toks) > maxScratchTokens {
		b.toks = nil
	}
	if cap(b.sts) > maxScratchTokens {
		b.sts = nil
	}
}

// tokensPerStatement is the room a token list starts with: enough for a
// typical OLTP statement, so that scanning one costs one allocation
// instead of one per doubling.
const tokensPerStatement = 16

// lexer walks src one token at a time.
type lexer struct {
	src string
	i   int
	o   scanOptions
}

// next returns the next token and its start offset; ok is false at the end.
func (l *lexer) next() (t token, pos int, ok bool, err error) {
	if err := l.skipSpaceAndComments(); err != nil {
		return token{}, 0, false, err
	}
	if l.i >= len(l.src) {
		return token{}, l.i, false, nil
	}
	pos = l.i
	c := l.src[l.i]
	switch {
	case c == '\'':
		t, err = l.quoted(l.o.backslashQuote)
	case (c == 'e' || c == 'E') && l.peek(1) == '\'':
		l.i++
		t, err = l.quoted(true)
	case (c == 'b' || c == 'B' || c == 'x' || c == 'X' || c == 'n' || c == 'N') && l.peek(1) == '\'':
		l.i++
		t, err = l.quoted(l.o.backslashQuote)
		// A bit string's value is not the text; N'...' is.
		t.inexact = t.inexact || c != 'n' && c != 'N'
	case (c == 'u' || c == 'U') && l.peek(1) == '&' && (l.peek(2) == '\'' || l.peek(2) == '"'):
		l.i += 2
		if l.src[l.i] == '\'' {
			t, err = l.quoted(false)
		} else {
			t, err = l.quotedIdent()
		}
		t.inexact = true // U& escapes and UESCAPE are not decoded
	case c == '"':
		t, err = l.quotedIdent()
	case c == '$':
		t, err = l.dollar()
	case isIdentStart(c):
		s := l.i
		for l.i < len(l.src) && isIdentCont(l.src[l.i]) {
			l.i++
		}
		t = token{kind: tokWord, val: asciiLower(l.src[s:l.i])}
	case isDigit(c) || c == '.' && isDigit(l.peek(1)):
		t = l.number()
	default:
		t = l.operator()
	}
	return t, pos, err == nil, err
}

func (l *lexer) peek(k int) byte {
	if l.i+k < len(l.src) {
		return l.src[l.i+k]
	}
	return 0
}

func (l *lexer) skipSpaceAndComments() error {
	for l.i < len(l.src) {
		c := l.src[l.i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			l.i++
		case c == '-' && l.peek(1) == '-':
			for l.i < len(l.src) && l.src[l.i] != '\n' && l.src[l.i] != '\r' {
				l.i++
			}
		case c == '/' && l.peek(1) == '*':
			depth := 0
			for {
				if l.i >= len(l.src) {
					return errUnterminatedComment
				}
				if l.src[l.i] == '/' && l.peek(1) == '*' {
					depth++
					l.i += 2
					continue
				}
				if l.src[l.i] == '*' && l.peek(1) == '/' {
					depth--
					l.i += 2
					if depth == 0 {
						break
					}
					continue
				}
				l.i++
			}
		default:
			return nil
		}
	}
	return nil
}

// quoted reads a '...' literal starting at l.i. With backslash, \x escapes
// apply (E'...', or '...' when standard_conforming_strings is off); only
// \\, \' and the common letters are decoded exactly.
func (l *lexer) quoted(backslash bool) (token, error) {
	l.i++ // opening quote
	// Most literals have no doubled quote or backslash: their value is
	// their text.
	for j := l.i; j < len(l.src); j++ {
		c := l.src[j]
		if c == '\\' && backslash || c == '\'' && j+1 < len(l.src) && l.src[j+1] == '\'' {
			break
		}
		if c == '\'' {
			v := l.src[l.i:j]
			l.i = j + 1
			return token{kind: tokString, val: v}, nil
		}
	}
	var b strings.Builder
	inexact := false
	for l.i < len(l.src) {
		c := l.src[l.i]
		switch {
		case c == '\'' && l.peek(1) == '\'':
			b.WriteByte('\'')
			l.i += 2
		case c == '\'':
			l.i++
			return token{kind: tokString, val: b.String(), inexact: inexact}, nil
		case c == '\\' && backslash:
			if l.i+1 >= len(l.src) {
				return token{}, errUnterminatedString
			}
			switch e := l.src[l.i+1]; e {
			case '\\', '\'', '"':
				b.WriteByte(e)
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			default: // octal, hex, unicode escapes: not decoded
				inexact = true
				b.WriteByte(e)
			}
			l.i += 2
		default:
			b.WriteByte(c)
			l.i++
		}
	}
	return token{}, errUnterminatedString
}

func (l *lexer) quotedIdent() (token, error) {
	l.i++
	// Most quoted names have no doubled quote: their value is their text.
	for j := l.i; j < len(l.src); j++ {
		if l.src[j] != '"' {
			continue
		}
		if j+1 < len(l.src) && l.src[j+1] == '"' {
			break
		}
		v := l.src[l.i:j]
		l.i = j + 1
		return token{kind: tokQIdent, val: v}, nil
	}
	var b strings.Builder
	for l.i < len(l.src) {
		c := l.src[l.i]
		if c == '"' {
			if l.peek(1) == '"' {
				b.WriteByte('"')
				l.i += 2
				continue
			}
			l.i++
			return token{kind: tokQIdent, val: b.String()}, nil
		}
		b.WriteByte(c)
		l.i++
	}
	return token{}, errUnterminatedIdent
}

// dollar reads $n, a $tag$...$tag$ string, or a lone $ (an operator
// character in no valid statement; the server rejects it).
func (l *lexer) dollar() (token, error) {
	s := l.i
	if isDigit(l.peek(1)) {
		l.i++
		for l.i < len(l.src) && isDigit(l.src[l.i]) {
			l.i++
		}
		return token{kind: tokParam, val: l.src[s:l.i]}, nil
	}
	j := l.i + 1
	for j < len(l.src) && l.src[j] != '$' && isIdentCont(l.src[j]) && (j > l.i+1 || isIdentStart(l.src[j])) {
		j++
	}
	if j >= len(l.src) || l.src[j] != '$' {
		l.i++
		return token{kind: tokOp, val: "$"}, nil
	}
	delim := l.src[s : j+1]
	body := j + 1
	end := strings.Index(l.src[body:], delim)
	if end < 0 {
		return token{}, errUnterminatedDollar
	}
	l.i = body + end + len(delim)
	return token{kind: tokString, val: l.src[body : body+end]}, nil
}

func (l *lexer) number() token {
	s := l.i
	for l.i < len(l.src) {
		c := l.src[l.i]
		switch {
		case isDigit(c) || c == '.' || c == '_' || isIdentStart(c) && c != 'e' && c != 'E':
			// digits, a decimal point, PG16 separators, and the trailing
			// junk or 0x/0o/0b prefixes the server would reject or read:
			// one token either way.
			l.i++
		case c == 'e' || c == 'E':
			l.i++
			if p := l.peek(0); p == '+' || p == '-' {
				l.i++
			}
		default:
			return token{kind: tokNumber, val: l.src[s:l.i]}
		}
	}
	return token{kind: tokNumber, val: l.src[s:l.i]}
}

// opChars are the characters PostgreSQL operators are made of.
const opChars = "+-*/<>=~!@#%^&|`?"

// isOpChar says whether c is one of opChars.
func isOpChar(c byte) bool {
	switch c {
	case '+', '-', '*', '/', '<', '>', '=', '~', '!', '@', '#', '%', '^', '&', '|', '`', '?':
		return true
	}
	return false
}

func (l *lexer) operator() token {
	c := l.src[l.i]
	if !isOpChar(c) {
		// Punctuation ( ) [ ] , ; : . and anything else: one character.
		if c == ':' && l.peek(1) == ':' {
			l.i += 2
			return token{kind: tokOp, val: "::"}
		}
		// The text itself, not string(c), which allocates; c is ASCII
		// (bytes from 0x80 start identifiers), so they are the same.
		l.i++
		return token{kind: tokOp, val: l.src[l.i-1 : l.i]}
	}
	s := l.i
	for l.i < len(l.src) && isOpChar(l.src[l.i]) {
		// A comment start ends the operator.
		if (l.src[l.i] == '-' && l.peek(1) == '-') || (l.src[l.i] == '/' && l.peek(1) == '*') {
			break
		}
		l.i++
	}
	if l.i == s { // the operator begins with a comment: cannot happen, skipSpace ran
		l.i++
	}
	return token{kind: tokOp, val: l.src[s:l.i]}
}

// asciiLower folds an unquoted identifier as PostgreSQL does: ASCII
// letters only. It allocates only for a name with upper-case letters that
// is not a common keyword.
func asciiLower(s string) string {
	i := 0
	for i < len(s) && !(s[i] >= 'A' && s[i] <= 'Z') {
		i++
	}
	if i == len(s) {
		return s
	}
	var room [32]byte
	var b []byte
	if len(s) <= len(room) {
		b = room[:len(s)]
	} else {
		b = make([]byte, len(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	if k, ok := keyword(b); ok {
		return k
	}
	return string(b)
}

// keyword returns the common SQL keyword w spells, without allocating:
// statements written in upper case are mostly keywords.
func keyword(w []byte) (string, bool) {
	switch string(w) {
	case "select":
		return "select", true
	case "from":
		return "from", true
	case "where":
		return "where", true
	case "and":
		return "and", true
	case "or":
		return "or", true
	case "not":
		return "not", true
	case "in":
		return "in", true
	case "is":
		return "is", true
	case "null":
		return "null", true
	case "as":
		return "as", true
	case "on":
		return "on", true
	case "join":
		return "join", true
	case "left":
		return "left", true
	case "inner":
		return "inner", true
	case "order":
		return "order", true
	case "group":
		return "group", true
	case "by":
		return "by", true
	case "limit":
		return "limit", true
	case "offset":
		return "offset", true
	case "desc":
		return "desc", true
	case "asc":
		return "asc", true
	case "for":
		return "for", true
	case "insert":
		return "insert", true
	case "into":
		return "into", true
	case "values":
		return "values", true
	case "returning":
		return "returning", true
	case "update":
		return "update", true
	case "set":
		return "set", true
	case "delete":
		return "delete", true
	case "begin":
		return "begin", true
	case "end":
		return "end", true
	case "commit":
		return "commit", true
	case "rollback":
		return "rollback", true
	case "true":
		return "true", true
	case "false":
		return "false", true
	case "count":
		return "count", true
	case "now":
		return "now", true
	case "current_timestamp":
		return "current_timestamp", true
	}
	return "", false
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}

func isIdentCont(c byte) bool { return isIdentStart(c) || isDigit(c) || c == '$' }
