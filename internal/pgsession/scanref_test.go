package pgsession

import "strings"

// The scanner as it was before it was made allocation-free, kept as the
// reference for TestScannerMatchesReference and FuzzScannerMatchesReference.

// refSplitStatements is splitStatements as it was before the scanner
// learned to scan without allocating: the reference the faster scanner
// must agree with.
func refSplitStatements(sql string, o scanOptions) ([]statement, error) {
	var (
		out   []statement
		cur   []token
		start = 0
		depth = 0 // ( and [
		// atomic > 0 inside CREATE ... BEGIN ATOMIC ... END: semicolons
		// there belong to the body.
		atomic = 0
	)
	flush := func(end int) {
		if len(cur) > 0 {
			out = append(out, statement{text: strings.TrimSpace(sql[start:end]), toks: cur})
		}
		cur, start, depth, atomic = nil, end+1, 0, 0
	}
	l := refLexer{src: sql, o: o}
	for {
		t, pos, ok, err := l.next()
		if err != nil {
			return nil, err
		}
		if !ok {
			flush(len(sql))
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
		if t.kind == tokWord && len(cur) > 0 && cur[0].kind == tokWord && cur[0].val == "create" {
			switch {
			case t.val == "atomic" && cur[len(cur)-1].kind == tokWord && cur[len(cur)-1].val == "begin":
				atomic++
			case atomic > 0 && t.val == "case":
				atomic++
			case atomic > 0 && t.val == "end":
				atomic--
			}
		}
		if cur == nil {
			cur = make([]token, 0, 16)
		}
		cur = append(cur, t)
	}
}

// refLexer walks src one token at a time.
type refLexer struct {
	src string
	i   int
	o   scanOptions
}

// next returns the next token and its start offset; ok is false at the end.
func (l *refLexer) next() (t token, pos int, ok bool, err error) {
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
		t = token{kind: tokWord, val: refASCIILower(l.src[s:l.i])}
	case isDigit(c) || c == '.' && isDigit(l.peek(1)):
		t = l.number()
	default:
		t = l.operator()
	}
	return t, pos, err == nil, err
}

func (l *refLexer) peek(k int) byte {
	if l.i+k < len(l.src) {
		return l.src[l.i+k]
	}
	return 0
}

func (l *refLexer) skipSpaceAndComments() error {
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
func (l *refLexer) quoted(backslash bool) (token, error) {
	l.i++ // opening quote
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

func (l *refLexer) quotedIdent() (token, error) {
	l.i++
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
func (l *refLexer) dollar() (token, error) {
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

func (l *refLexer) number() token {
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

func (l *refLexer) operator() token {
	c := l.src[l.i]
	if strings.IndexByte(opChars, c) < 0 {
		// Punctuation ( ) [ ] , ; : . and anything else: one character.
		if c == ':' && l.peek(1) == ':' {
			l.i += 2
			return token{kind: tokOp, val: "::"}
		}
		l.i++
		return token{kind: tokOp, val: string(c)}
	}
	s := l.i
	for l.i < len(l.src) && strings.IndexByte(opChars, l.src[l.i]) >= 0 {
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

// refASCIILower folds an unquoted identifier as PostgreSQL does: ASCII
// letters only.
func refASCIILower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
