package pgsession

import (
	"strings"
)

// txnOp is a statement's effect on the transaction.
type txnOp int

const (
	txnNone       txnOp = iota
	txnBegin            // BEGIN, START TRANSACTION
	txnCommit           // COMMIT, END (its tag says whether it committed)
	txnRollback         // ROLLBACK, ABORT
	txnSavepoint        // SAVEPOINT
	txnRelease          // RELEASE [SAVEPOINT]
	txnRollbackTo       // ROLLBACK TO [SAVEPOINT]
	txnPrepare          // PREPARE TRANSACTION
)

// gucKind is the kind of a settings change.
type gucKind int

const (
	gucSet      gucKind = iota + 1 // SET name TO value (session level)
	gucReset                       // RESET name, SET name TO DEFAULT
	gucResetAll                    // RESET ALL
)

// gucChange is one session-level settings change a statement makes when it
// completes and its transaction commits.
type gucChange struct {
	kind gucKind
	name string // lower case; "" for gucResetAll
	// replay is the statement that reproduces the change on a fresh
	// connection (gucSet only), rendered with quoting of its own.
	replay string
}

// effect is what one statement does to session state, as far as the
// tracker can tell from its text.
type effect struct {
	// tag, when set, is the CommandComplete tag the statement must answer
	// with (its first word or words, separated by one space); a different
	// tag means the tracker misread the query, and the session's settings
	// become unknown.
	tag string
	txn txnOp
	// gucs apply when the statement completes, and stay when its
	// transaction commits.
	gucs []gucChange
	// unknownSettings, when set, says why the statement may have changed
	// settings in a way the tracker cannot follow (applied on completion).
	unknownSettings string
	// opaque, when set, says why the statement's effects cannot be known at
	// all (applied when it is sent).
	opaque string
	// hazards are unmovable states the statement may create; they apply
	// when it is sent (a failing statement may already have taken an
	// advisory lock).
	temp, advisory bool
	listen         []string // channels
	holdCursor     string   // DECLARE name ... WITH HOLD
	// Clearing effects apply when the statement completes and its
	// transaction commits.
	discardTemp, discardAll, unlockAll, unlistenAll, closeAll bool
	unlisten                                                  []string
	closeCursor                                               string
	// SQL-level prepared statements: PREPARE adds (when it completes; not
	// transactional), DEALLOCATE removes.
	prepareName   string
	prepareText   string
	deallocate    string
	deallocateAll bool
	// prepareHazard, for a PREPARE, says why running its statement may
	// create unmovable state or change settings (empty: it cannot). The
	// statement's effects happen at each EXECUTE, not at PREPARE.
	prepareHazard string
	// executes are the SQL-level prepared statements the statement runs
	// (EXECUTE name, also inside EXPLAIN or CREATE TABLE AS).
	executes []string
	// contextChange: the statement may change search_path or
	// standard_conforming_strings, which decide what a prepared statement
	// means; statements not yet prepared again after a move must be
	// prepared before it runs.
	contextChange bool
	// localContext: SET LOCAL of search_path or standard_conforming_strings;
	// statements prepared before the transaction ends have a context that
	// never matches a boundary's.
	localContext bool
	// unknownIdentity: unknownSettings concerns ROLE or SESSION
	// AUTHORIZATION, which RESET ALL does not reset.
	unknownIdentity bool
}

// opaqueEffect is the effect of a query the scanner could not read.
func opaqueEffect(why string) effect {
	return effect{unknownSettings: why, contextChange: true}
}

// isAdvisoryLockFunc says whether a function takes session-level advisory
// locks (the _xact_ variants end with the transaction and are harmless).
func isAdvisoryLockFunc(name string) bool {
	switch name {
	case "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared":
		return true
	}
	return false
}

// classify reads one statement.
func classify(st statement) effect {
	var e effect
	classifyInto(st, &e)
	return e
}

// classifyInto is classify into *e, which must be zero: the caller's
// room, so that the effect is not copied.
func classifyInto(st statement, e *effect) {
	toks := st.toks
	w := words(toks)
	isPrepare := w.at(0) == "prepare" && w.at(1) != "transaction"
	args, plainSetConfig := plainSetConfigArgs(toks)
	switch {
	case isPrepare:
		// The prepared statement does nothing until EXECUTE (classifyPrepare).
	case plainSetConfig:
		e.tag = "SELECT"
		classifySetConfig(args, e)
	default:
		scanHazards(toks, e, 0)
	}
	for i, t := range toks {
		if !isPrepare && t.kind == tokWord && t.val == "execute" && i+1 < len(toks) &&
			(toks[i+1].kind == tokWord || toks[i+1].kind == tokQIdent) {
			e.executes = append(e.executes, toks[i+1].val)
		}
	}
	if len(toks) == 0 || toks[0].kind != tokWord || plainSetConfig {
		return
	}
	switch toks[0].val {
	case "begin":
		e.tag, e.txn = "BEGIN", txnBegin
	case "start":
		if w.at(1) == "transaction" {
			e.tag, e.txn = "BEGIN", txnBegin
		}
	case "commit", "end":
		if w.at(1) == "prepared" {
			e.tag = "COMMIT PREPARED"
			break
		}
		e.tag, e.txn = "", txnCommit // COMMIT or ROLLBACK
	case "abort":
		e.tag, e.txn = "ROLLBACK", txnRollback
	case "rollback":
		switch {
		case w.at(1) == "prepared":
			e.tag = "ROLLBACK PREPARED"
		case w.at(1) == "to" || w.at(2) == "to":
			e.tag, e.txn = "ROLLBACK", txnRollbackTo
		default:
			e.tag, e.txn = "ROLLBACK", txnRollback
		}
	case "savepoint":
		e.tag, e.txn = "SAVEPOINT", txnSavepoint
	case "release":
		e.tag, e.txn = "RELEASE", txnRelease
	case "prepare":
		if w.at(1) == "transaction" {
			e.tag, e.txn = "PREPARE TRANSACTION", txnPrepare
			break
		}
		classifyPrepare(st, e)
	case "deallocate":
		e.tag = "DEALLOCATE"
		i := 1
		if w.at(i) == "prepare" {
			i++
		}
		switch {
		case len(toks) == i+1 && toks[i].kind == tokWord && toks[i].val == "all":
			e.deallocateAll = true
		case len(toks) == i+1 && (toks[i].kind == tokWord || toks[i].kind == tokQIdent) && !toks[i].inexact:
			e.deallocate = toks[i].val
		default:
			e.unknownSettings = "a DEALLOCATE the proxy could not read"
		}
	case "set":
		classifySet(toks, e)
	case "reset":
		classifyReset(toks, e)
	case "discard":
		e.tag = "DISCARD"
		switch w.at(1) {
		case "all":
			e.discardAll = true
			e.gucs = []gucChange{{kind: gucResetAll}}
			e.contextChange = true
		case "temp", "temporary":
			e.discardTemp = true
		case "plans", "sequences":
		default:
			e.unknownSettings = "a DISCARD the proxy could not read"
		}
	case "listen":
		e.tag = "LISTEN"
		if len(toks) == 2 && (toks[1].kind == tokWord || toks[1].kind == tokQIdent) {
			e.listen = []string{toks[1].val}
		} else {
			e.listen = []string{"?"}
		}
	case "unlisten":
		e.tag = "UNLISTEN"
		switch {
		case len(toks) == 2 && toks[1].kind == tokOp && toks[1].val == "*":
			e.unlistenAll = true
		case len(toks) == 2 && (toks[1].kind == tokWord || toks[1].kind == tokQIdent):
			e.unlisten = []string{toks[1].val}
		}
	case "declare":
		e.tag = "DECLARE CURSOR"
		if len(toks) > 1 && (toks[1].kind == tokWord || toks[1].kind == tokQIdent) && declaresHold(toks) {
			e.holdCursor = toks[1].val
		}
	case "close":
		e.tag = "CLOSE CURSOR"
		switch {
		case len(toks) == 2 && toks[1].kind == tokWord && toks[1].val == "all":
			e.closeAll = true
		case len(toks) == 2 && (toks[1].kind == tokWord || toks[1].kind == tokQIdent):
			e.closeCursor = toks[1].val
		}
	case "load":
		e.opaque = "LOAD"
	case "do":
		e.tag = "DO"
		// The body is code the tracker cannot follow; look inside it for
		// the hazards it can name, and assume settings may change.
		for _, t := range toks[1:] {
			if t.kind == tokString {
				inner, err := splitStatements(t.val, scanOptions{})
				if err != nil {
					e.unknownSettings = "a DO block the proxy could not read"
					continue
				}
				for _, s := range inner {
					scanHazards(s.toks, e, 1)
					if doChangesSettings(s.toks) {
						e.unknownSettings = "a DO block that may change settings"
						e.contextChange = true
					}
				}
			}
		}
	}
}

// plainSetConfigArgs recognizes the one statement whose set_config call
// the tracker follows: exactly SELECT [pg_catalog.]set_config(a, b, c),
// nothing before or after (classifySetConfig then checks the arguments).
// It returns the tokens after the function name. set_config anywhere else
// (a view, a CTE, a WHERE clause, a larger select list) may run any number
// of times, or not at all, so scanHazards makes the settings unknown.
func plainSetConfigArgs(toks []token) ([]token, bool) {
	w := words(toks)
	if w.at(0) != "select" {
		return nil, false
	}
	i := 1
	if w.at(1) == "pg_catalog" && len(toks) > 2 && toks[2].kind == tokOp && toks[2].val == "." {
		i = 3
	}
	if w.at(i) != "set_config" || len(toks) != i+8 {
		return nil, false
	}
	return toks[i+1:], true
}

// doChangesSettings says whether a statement of a DO body may change
// settings: SET, RESET or DISCARD as a statement, set_config, or dynamic SQL
// (EXECUTE).
func doChangesSettings(toks []token) bool {
	for i, t := range toks {
		if t.kind != tokWord {
			continue
		}
		switch t.val {
		case "set_config", "execute", "discard":
			return true
		case "set", "reset":
			if i == 0 {
				return true
			}
			if p := toks[i-1]; p.kind == tokWord {
				switch p.val {
				case "begin", "then", "else", "loop", "declare":
					return true
				}
			}
		}
	}
	return false
}

// wordList gives the lower-cased word at an index, or "".
type wordList []token

func words(t []token) wordList { return wordList(t) }

func (w wordList) at(i int) string {
	if i < len(w) && w[i].kind == tokWord {
		return w[i].val
	}
	return ""
}

// appendNames appends the identifiers a statement mentions to names (for
// lazily re-prepared statements: EXECUTE name, DEALLOCATE name, ...).
func appendNames(names []string, toks []token) []string {
	for _, t := range toks {
		if t.kind == tokWord || t.kind == tokQIdent {
			names = append(names, t.val)
		}
	}
	return names
}

// scanHazards marks what any statement can do anywhere in its text: take
// session advisory locks, create or use temporary objects, call set_config.
// depth > 0 scans code inside a DO body, where string literals may be
// dynamic SQL: it looks one level into those too.
func scanHazards(toks []token, e *effect, depth int) {
	for i, t := range toks {
		switch t.kind {
		case tokWord, tokQIdent:
			v := t.val
			if v == "" {
				continue
			}
			// Every word below starts with p, t or s: most words need no
			// more look.
			switch v[0] {
			case 'p':
				// A quoted name ("pg_advisory_lock"(1)) calls the same function.
				if isAdvisoryLockFunc(v) {
					e.advisory = true
				}
				if t.kind == tokWord && v == "pg_advisory_unlock_all" {
					e.unlockAll = true
				}
				if v == "pg_temp" || strings.HasPrefix(v, "pg_temp_") {
					e.temp = true
				}
			case 't':
				if t.kind == tokWord && (v == "temp" || v == "temporary") && createsTemp(toks[:i]) && !onCommitDrop(toks[i:]) {
					e.temp = true
				}
			case 's':
				if v == "set_config" {
					// Not the plain statement classify reads (plainSetConfigArgs).
					e.unknownSettings = "set_config() in a statement other than SELECT set_config(<literal>, <literal>, false)"
					e.contextChange = true
				}
			}
		case tokString:
			if depth > 0 && depth < 3 {
				if inner, err := splitStatements(t.val, scanOptions{}); err == nil {
					for _, s := range inner {
						scanHazards(s.toks, e, depth+1)
					}
				}
			}
		}
	}
	if e.advisory {
		e.unlockAll = false
	}
}

// createsTemp says whether a TEMP/TEMPORARY keyword after prev creates a
// temporary object: CREATE [GLOBAL|LOCAL] TEMP, CREATE OR REPLACE TEMP,
// SELECT ... INTO [LOCAL] TEMP.
func createsTemp(prev []token) bool {
	for j := len(prev) - 1; j >= 0; j-- {
		if prev[j].kind != tokWord {
			return false
		}
		switch prev[j].val {
		case "global", "local":
			continue
		case "create", "replace", "into":
			return true
		}
		return false
	}
	return false
}

// onCommitDrop: CREATE TEMP TABLE ... ON COMMIT DROP is gone when its
// transaction ends, so by the next boundary.
func onCommitDrop(rest []token) bool {
	for j := 0; j+2 < len(rest); j++ {
		if rest[j].kind == tokWord && rest[j].val == "on" && rest[j+1].kind == tokWord && rest[j+1].val == "commit" &&
			rest[j+2].kind == tokWord && rest[j+2].val == "drop" {
			return true
		}
	}
	return false
}

// declaresHold: DECLARE name ... CURSOR WITH HOLD FOR ... (WITH HOLD before
// the FOR that starts the query).
func declaresHold(toks []token) bool {
	for j := 2; j+1 < len(toks); j++ {
		if toks[j].kind == tokWord && toks[j].val == "for" {
			return false
		}
		if toks[j].kind == tokWord && toks[j].val == "with" && toks[j+1].kind == tokWord && toks[j+1].val == "hold" {
			return true
		}
	}
	return false
}

// classifyPrepare reads PREPARE name [(types)] AS statement.
func classifyPrepare(st statement, e *effect) {
	e.tag = "PREPARE"
	toks := st.toks
	if len(toks) < 3 || (toks[1].kind != tokWord && toks[1].kind != tokQIdent) || toks[1].inexact {
		e.unknownSettings = "a PREPARE the proxy could not read"
		return
	}
	e.prepareName = toks[1].val
	e.prepareText = st.text
	inner := toks[2:]
	for i, t := range inner {
		if t.kind == tokWord && t.val == "as" {
			inner = inner[i+1:]
			break
		}
	}
	in := classify(statement{toks: inner})
	switch {
	case in.opaque != "":
		e.prepareHazard = "runs " + in.opaque
	case in.advisory:
		e.prepareHazard = "may take a session-level advisory lock"
	case in.temp:
		e.prepareHazard = "may create or use a temporary object"
	case len(in.listen) > 0 || in.holdCursor != "":
		e.prepareHazard = "creates session state that cannot move"
	case in.unknownSettings != "" || len(in.gucs) > 0 || in.contextChange:
		e.prepareHazard = "may change settings"
	case len(in.executes) > 0:
		e.prepareHazard = "runs EXECUTE"
	}
}

// classifySet reads SET statements. Only session-level changes matter:
// SET LOCAL, SET TRANSACTION and SET CONSTRAINTS end with the transaction,
// and the tracker only moves sessions between transactions.
func classifySet(toks []token, e *effect) {
	e.tag = "SET"
	i := 1
	local := false
	w := words(toks)
	switch w.at(i) {
	case "local":
		local = true
		i++
	case "session":
		if n := w.at(i + 1); n != "authorization" && n != "characteristics" {
			i++
		}
	}
	var name string
	var items []token
	switch w.at(i) {
	case "transaction":
		return
	case "constraints":
		e.tag = "SET CONSTRAINTS"
		return
	case "session":
		switch w.at(i + 1) {
		case "characteristics":
			if !local {
				e.unknownSettings = "SET SESSION CHARACTERISTICS"
			}
			return
		case "authorization":
			name, items = "session_authorization", toks[i+2:]
		default:
			e.unknownSettings = "a SET the proxy could not read"
			e.unknownIdentity = true
			return
		}
	case "time":
		if w.at(i+1) != "zone" {
			e.unknownSettings = "a SET the proxy could not read"
			return
		}
		name, items = "timezone", toks[i+2:]
		if len(items) == 1 && items[0].kind == tokWord && items[0].val == "local" {
			items[0].val = "default"
		}
	case "schema":
		name, items = "search_path", toks[i+1:]
	case "names":
		name, items = "client_encoding", toks[i+1:]
		if len(items) == 0 {
			items = []token{{kind: tokWord, val: "default"}}
		}
	case "role":
		name, items = "role", toks[i+1:]
	case "xml":
		if w.at(i+1) != "option" {
			e.unknownSettings = "a SET the proxy could not read"
			return
		}
		name, items = "xmloption", toks[i+2:]
	default:
		n, rest, ok := varName(toks[i:])
		if !ok || len(rest) == 0 {
			e.unknownSettings = "a SET the proxy could not read"
			return
		}
		switch {
		case rest[0].kind == tokOp && rest[0].val == "=", rest[0].kind == tokWord && rest[0].val == "to":
			name, items = n, rest[1:]
		case rest[0].kind == tokWord && rest[0].val == "from":
			if !local {
				e.unknownSettings = "SET " + n + " FROM CURRENT"
			}
			return
		default:
			e.unknownSettings = "a SET the proxy could not read"
			return
		}
	}
	if name == "search_path" || name == "standard_conforming_strings" {
		e.contextChange = true
		e.localContext = local
	}
	if local {
		return
	}
	if len(items) == 1 && items[0].kind == tokWord && items[0].val == "default" {
		e.gucs = append(e.gucs, gucChange{kind: gucReset, name: name})
		return
	}
	vals, ok := renderValues(items)
	if !ok {
		e.unknownSettings = "SET " + name + " to a value the proxy could not read"
		e.unknownIdentity = name == "role" || name == "session_authorization"
		return
	}
	var replay string
	switch name {
	case "role":
		replay = "SET ROLE " + vals
	case "session_authorization":
		replay = "SET SESSION AUTHORIZATION " + vals
	default:
		replay = "SET " + quoteName(name) + " TO " + vals
	}
	e.gucs = append(e.gucs, gucChange{kind: gucSet, name: name, replay: replay})
}

// classifyReset reads RESET name | ALL | TIME ZONE | ROLE | SESSION
// AUTHORIZATION | TRANSACTION ISOLATION LEVEL.
func classifyReset(toks []token, e *effect) {
	e.tag = "RESET"
	w := words(toks)
	var name string
	switch {
	case len(toks) == 2 && w.at(1) == "all":
		e.gucs = append(e.gucs, gucChange{kind: gucResetAll})
		e.contextChange = true
		return
	case w.at(1) == "time" && w.at(2) == "zone" && len(toks) == 3:
		name = "timezone"
	case w.at(1) == "session" && w.at(2) == "authorization" && len(toks) == 3:
		name = "session_authorization"
	case w.at(1) == "transaction":
		return
	default:
		n, rest, ok := varName(toks[1:])
		if !ok || len(rest) != 0 {
			e.unknownSettings = "a RESET the proxy could not read"
			return
		}
		name = n
	}
	if name == "search_path" || name == "standard_conforming_strings" {
		e.contextChange = true
	}
	e.gucs = append(e.gucs, gucChange{kind: gucReset, name: name})
}

// classifySetConfig reads set_config('name', 'value', is_local) with
// literal arguments; anything else makes the settings unknown. toks start
// after the function name.
func classifySetConfig(toks []token, e *effect) {
	e.contextChange = true
	lit := func(i int) (string, bool) {
		return toks[i].val, toks[i].kind == tokString && !toks[i].inexact
	}
	if len(toks) < 7 || toks[0].val != "(" || toks[2].val != "," || toks[4].val != "," || toks[6].val != ")" || toks[0].kind != tokOp {
		e.unknownSettings = "set_config() with arguments the proxy could not read"
		return
	}
	name, ok1 := lit(1)
	value, ok2 := lit(3)
	isLocal := toks[5]
	if !ok1 || !ok2 || isLocal.kind != tokWord || (isLocal.val != "true" && isLocal.val != "false") {
		e.unknownSettings = "set_config() with arguments the proxy could not read"
		return
	}
	if isLocal.val == "true" {
		return
	}
	name = asciiLower(name)
	e.gucs = append(e.gucs, gucChange{kind: gucSet, name: name, replay: setConfigSQL(name, value)})
}

// setConfigSQL renders a session-level set_config call.
func setConfigSQL(name, value string) string {
	return "SELECT pg_catalog.set_config(" + quoteLiteral(name) + ", " + quoteLiteral(value) + ", false)"
}

// varName reads a setting name: word or "quoted", optionally dotted
// (custom settings: myapp.tenant). It returns the lower-cased name (quoted
// parts kept as written) and the tokens after it.
func varName(toks []token) (string, []token, bool) {
	var parts []string
	i := 0
	for {
		if i >= len(toks) || (toks[i].kind != tokWord && toks[i].kind != tokQIdent) || toks[i].inexact {
			return "", nil, false
		}
		parts = append(parts, toks[i].val)
		i++
		if i < len(toks) && toks[i].kind == tokOp && toks[i].val == "." {
			i++
			continue
		}
		return asciiLower(strings.Join(parts, ".")), toks[i:], true
	}
}

// renderValues renders a SET value list — words, quoted identifiers,
// string literals, signed numbers separated by commas — with quoting of its
// own. ok is false for anything else (INTERVAL '...', expressions, inexact
// literals).
func renderValues(items []token) (string, bool) {
	if len(items) == 0 {
		return "", false
	}
	var out []string
	for i := 0; i < len(items); {
		t := items[i]
		sign := ""
		if t.kind == tokOp && (t.val == "-" || t.val == "+") && i+1 < len(items) && items[i+1].kind == tokNumber {
			sign = t.val
			i++
			t = items[i]
		}
		switch {
		case t.inexact:
			return "", false
		case t.kind == tokWord:
			if t.val == "default" {
				return "", false
			}
			out = append(out, quoteName(t.val))
		case t.kind == tokQIdent:
			out = append(out, quoteIdent(t.val))
		case t.kind == tokString:
			out = append(out, quoteLiteral(t.val))
		case t.kind == tokNumber:
			out = append(out, sign+t.val)
		default:
			return "", false
		}
		i++
		if i < len(items) {
			if items[i].kind != tokOp || items[i].val != "," || i+1 == len(items) {
				return "", false
			}
			i++
		}
	}
	return strings.Join(out, ", "), true
}

// quoteLiteral renders s as a string literal that means s whatever
// standard_conforming_strings is: '...' when s has no backslash, E'...'
// with backslashes doubled when it has.
func quoteLiteral(s string) string {
	q := strings.ReplaceAll(s, "'", "''")
	if strings.Contains(s, `\`) {
		return `E'` + strings.ReplaceAll(q, `\`, `\\`) + `'`
	}
	return "'" + q + "'"
}

// quoteIdent renders s as a quoted identifier.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// quoteName renders a lower-case word or dotted setting name unquoted when
// that reads back the same (so keywords like on, true and local keep their
// meaning as SET values), quoted otherwise.
func quoteName(s string) string {
	parts := strings.Split(s, ".")
	for i, p := range parts {
		if !plainWord(p) {
			parts[i] = quoteIdent(p)
		}
	}
	return strings.Join(parts, ".")
}

// plainWord: s reads back as itself unquoted.
func plainWord(s string) bool {
	if s == "" || !(s[0] >= 'a' && s[0] <= 'z' || s[0] == '_') {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '$') {
			return false
		}
	}
	return true
}
