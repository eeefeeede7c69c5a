package pgsession

import (
	"bytes"
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Transaction status bytes of ReadyForQuery.
const (
	TxIdle     byte = 'I'
	TxInBlock  byte = 'T'
	TxFailed   byte = 'E'
	txUnknown  byte = 0
	objStmt    byte = 'S' // Close/Describe of a prepared statement
	objPortal  byte = 'P'
	severityPn      = "PANIC"
)

// Verdict says what the proxy does with a server message.
type Verdict int

const (
	// Forward: pass the message to the client.
	Forward Verdict = iota
	// Swallow: the message answers something the proxy injected (a
	// statement prepared again after a move); the client must not see it.
	Swallow
)

// opKind is the kind of a frontend message awaiting its answer.
type opKind int

const (
	opQuery opKind = iota + 1
	opParse
	opBind
	opDescribe
	opExecute
	opClose
	opSync
	opFunctionCall
)

// op is a frontend message the server has not finished answering. The
// server answers in order, so the head of Session.ops is what the next
// answer is about.
type op struct {
	kind     opKind
	injected bool // sent by the proxy, answers are swallowed
	// effs are the effects of a Query's statements still to complete.
	effs []effect
	// effsRoom is effs as made, before statements completed: room the
	// next Query reuses once this op is done.
	effsRoom []effect
	// unscanned: the Query could not be scanned; why.
	unscanned string
	name      string          // Parse, Close: statement or portal name
	objType   byte            // Close, Describe
	parse     *pgproto3.Parse // Parse: a copy of the message
	eff       effect          // Parse: the statement's effect; Execute: the portal's
}

// prepared is a named prepared statement that exists on the server (or
// existed on the previous one, see Session.unprepared).
type prepared struct {
	parse *pgproto3.Parse // protocol-level (Parse message); nil for SQL PREPARE
	sql   string          // SQL PREPARE statement text
	eff   effect          // what executing it does
	// context is search_path and standard_conforming_strings when it was
	// prepared: preparing it again under another would change its meaning.
	context stmtContext
}

// stmtContext is what decides the meaning of a statement's text besides
// the catalog (see Session.context). Comparable: equal contexts are ==.
type stmtContext struct {
	local      bool   // inside a transaction that SET LOCAL (never a boundary's context)
	searchPath string // as tracked from SET
	reportedSP string // search_path as the server reported it
	scs        string // standard_conforming_strings as reported
}

// gucEntry is a committed session-level setting change.
type gucEntry struct {
	replay string
	seq    int
}

// Session tracks the state of one client session from the messages that
// pass through the proxy, so that, between transactions, the session can be
// moved to a new server connection by replaying that state (Plan).
//
// The proxy feeds it every message: Frontend for each message from the
// client, in order, before sending it to the server; Backend for each
// message from the server, in order, before passing it to the client. A
// Session does no I/O and never blocks. It is not safe for concurrent use:
// the goroutine (or event loop) relaying the session owns it, and the
// messages must be fed in the order they cross the wire in each direction.
// Messages are not retained: what the Session keeps it copies.
//
// The Session never rejects a message: what it does not understand makes
// the session unmovable (Movable says why) rather than guessed at. State
// changed by server-side code it cannot see — functions, procedures,
// triggers — is invisible to it, except what the server reports with
// ParameterStatus (see Plan). Sequence state (currval, lastval) is not
// carried over.
type Session struct {
	startup  map[string]string // the client's startup parameters
	reported map[string]string // the last ParameterStatus value per name
	// scanOpts and reportedVer follow reported (setReported, Moved):
	// every Query is scanned with scanOpts; reportedVer counts the
	// changes.
	scanOpts    scanOptions
	reportedVer int
	reportedSP  string            // search_path as reported, whatever the case of its name (see reportedFold)
	initial     map[string]string // the values reported during startup
	key         *pgproto3.BackendKeyData

	ready           bool // the startup's ReadyForQuery arrived
	tx              byte // status of the last ReadyForQuery
	failed          bool // the current transaction (explicit or implicit) failed
	dirty           bool // a client message since the last ReadyForQuery that answered everything
	ops             []op
	copyIn, copyOut bool
	ignoredSyncs    int  // client Syncs the server ignored in COPY IN, not yet taken (TakeIgnoredSyncs)
	ended           bool // Terminate sent, or the server sent FATAL
	lostBlock       bool // the current failed block was lost with a server (BlockLost)

	// Settings: committed session-level changes, and the completed
	// statements of the current transaction whose effects apply when it
	// commits.
	gucs            map[string]gucEntry
	seq             int
	pending         []effect
	localContext    int // > 0: a SET LOCAL of search_path or scs in this transaction
	unknownSettings string
	unknownIdentity string
	opaque          string

	// Unmovable state.
	temp, advisory bool
	listen         map[string]bool
	holdCursors    map[string]bool

	// Statements and portals. parsedEff and portalEff follow what was
	// sent (a Bind must find the effect of a Parse not yet answered);
	// stmts follows what the server confirmed.
	stmts      map[string]*prepared
	parsedEff  map[string]effect
	portalEff  map[string]effect
	unprepared map[string]bool // in stmts, not yet prepared on this server
	// sqlHazards: SQL-level prepared statements (PREPARE) whose statement
	// may create unmovable state or change settings, and why; an EXECUTE
	// of one makes the session opaque. Set when the PREPARE is sent (an
	// EXECUTE may follow in the same query), cleared only when a PREPARE
	// of the name without hazards completes: a stale entry errs towards
	// not moving.
	sqlHazards map[string]string

	// Scratch room reused from message to message, so that tracking a
	// transaction allocates nothing in the common case: the scanner's
	// statements and tokens, the ops queue's array, and a done Query's
	// effects array.
	scan      scanBuf
	opsRoom   []op
	spareEffs []effect
}

// maxSpareOps and maxSpareEffs bound the scratch arrays a Session keeps
// once they are empty: a burst of pipelined messages, or a query of many
// statements, must not pin its memory for the session's life.
const (
	maxSpareOps  = 32
	maxSpareEffs = 16
)

// New starts tracking a session whose client sent startup.
func New(startup *pgproto3.StartupMessage) *Session {
	s := &Session{
		startup:     maps.Clone(startup.Parameters),
		reported:    map[string]string{},
		initial:     map[string]string{},
		tx:          txUnknown,
		gucs:        map[string]gucEntry{},
		listen:      map[string]bool{},
		holdCursors: map[string]bool{},
		stmts:       map[string]*prepared{},
		parsedEff:   map[string]effect{},
		portalEff:   map[string]effect{},
		unprepared:  map[string]bool{},
		sqlHazards:  map[string]string{},
	}
	if s.startup == nil {
		s.startup = map[string]string{}
	}
	if v, ok := s.startup["replication"]; ok && v != "" && !strings.EqualFold(v, "false") && !strings.EqualFold(v, "off") && v != "0" {
		s.opaque = "a replication connection"
	}
	return s
}

// TxStatus is the status of the last ReadyForQuery ('I', 'T', 'E'), or 0
// before the first.
func (s *Session) TxStatus() byte { return s.tx }

// InCopyIn says whether the server is in COPY IN as far as the tracker
// knows (it sent CopyInResponse, and neither the client's CopyDone or
// CopyFail nor an error ended it): a Sync sent now is ignored by the
// server and answers nothing.
func (s *Session) InCopyIn() bool { return s.copyIn }

// TakeIgnoredSyncs returns how many of the client's Syncs, sent before
// the server's CopyInResponse arrived but after the statement that began
// the COPY, the server ignores (as PostgreSQL ignores Sync in COPY IN; a
// client such as libpq sends Sync right after Execute and another after
// CopyDone), and forgets them. The proxy must not wait for their
// ReadyForQuery, or the session would never be at rest.
func (s *Session) TakeIgnoredSyncs() int {
	n := s.ignoredSyncs
	s.ignoredSyncs = 0
	return n
}

// AtBoundary says whether the session is between transactions: the server
// answered everything the client sent with a ReadyForQuery 'I' and the
// client sent nothing since. Only then can a session move; a planned
// switchover can hold the client's next message here.
func (s *Session) AtBoundary() bool {
	return s.ready && !s.dirty && len(s.ops) == 0 && s.tx == TxIdle && !s.copyIn && !s.copyOut && !s.ended
}

// Frontend records m, a message from the client, before the proxy sends it
// to the server, and returns the messages the proxy must send to the server
// before it. Those are nil except after a move (Moved) with lazily
// re-prepared statements: a message that uses a statement the session had
// on its old server, not yet prepared on this one, is preceded by its
// Parse (and a Sync, before a simple Query); their answers come back
// before m's and Backend marks them Swallow. A message that may change
// search_path is preceded by every statement still unprepared, so each is
// prepared under the settings it was first prepared under.
//
// An error means a statement cannot be prepared again as it was (its
// search_path differs now): the proxy must close the session with
// CloseError(err) instead of sending m.
func (s *Session) Frontend(m pgproto3.FrontendMessage) ([]pgproto3.FrontendMessage, error) {
	// What the scans below hand out refers to the message's text; an idle
	// session must not keep a large one alive.
	defer s.scan.release()
	before, err := s.injections(m)
	if err != nil {
		return nil, err
	}
	switch m := m.(type) {
	case *pgproto3.Query:
		s.dirty = true
		delete(s.parsedEff, "")
		s.forget("")
		o := s.push(op{kind: opQuery})
		sts, err := s.scan.split(m.String, s.scanOptions())
		if err != nil {
			o.unscanned = fmt.Sprintf("a query the proxy could not scan (%v)", err)
		}
		effs := s.spareEffs[:0]
		s.spareEffs = nil
		for _, st := range sts {
			effs = append(effs, effect{})
			e := &effs[len(effs)-1]
			classifyInto(st, e)
			s.sent(e)
		}
		if len(effs) > 0 {
			o.effs, o.effsRoom = effs, effs
		} else {
			s.spareEffs = effs
		}
	case *pgproto3.Parse:
		s.dirty = true
		e := s.scan.parseEffect(m.Query, s.scanOptions())
		s.parsedEff[m.Name] = e
		cp := &pgproto3.Parse{Name: m.Name, Query: m.Query, ParameterOIDs: slices.Clone(m.ParameterOIDs)}
		s.push(op{kind: opParse, name: m.Name, parse: cp, eff: e})
	case *pgproto3.Bind:
		s.dirty = true
		s.portalEff[m.DestinationPortal] = s.parsedEff[m.PreparedStatement]
		s.push(op{kind: opBind})
	case *pgproto3.Describe:
		s.dirty = true
		s.push(op{kind: opDescribe, objType: m.ObjectType, name: m.Name})
	case *pgproto3.Execute:
		s.dirty = true
		o := op{kind: opExecute, eff: s.portalEff[m.Portal]}
		s.sent(&o.eff)
		s.push(o)
	case *pgproto3.Close:
		s.dirty = true
		if m.ObjectType == objStmt {
			delete(s.unprepared, m.Name)
		}
		s.push(op{kind: opClose, objType: m.ObjectType, name: m.Name})
	case *pgproto3.Sync:
		s.dirty = true
		if s.copyIn {
			break // PostgreSQL ignores Sync in COPY IN
		}
		s.push(op{kind: opSync})
	case *pgproto3.Flush:
		s.dirty = true
	case *pgproto3.FunctionCall:
		s.dirty = true
		s.opaque = "a fast-path function call"
		s.push(op{kind: opFunctionCall})
	case *pgproto3.CopyData:
	case *pgproto3.CopyDone, *pgproto3.CopyFail:
		s.copyIn = false
	case *pgproto3.Terminate:
		s.ended = true
	}
	return before, nil
}

// parseEffect classifies the one statement of a Parse.
func parseEffect(query string, o scanOptions) effect {
	var b scanBuf
	return b.parseEffect(query, o)
}

// parseEffect is parseEffect scanning in b's room.
func (b *scanBuf) parseEffect(query string, o scanOptions) effect {
	sts, err := b.split(query, o)
	switch {
	case err != nil:
		return opaqueEffect(fmt.Sprintf("a statement the proxy could not scan (%v)", err))
	case len(sts) > 1:
		return opaqueEffect("a Parse of several statements")
	case len(sts) == 0:
		return effect{}
	}
	return classify(sts[0])
}

// sent applies what a statement does as soon as it is sent: the unmovable
// states it may create.
func (s *Session) sent(e *effect) {
	if e.temp {
		s.temp = true
	}
	if e.advisory {
		s.advisory = true
	}
	for _, c := range e.listen {
		s.listen[strings.Clone(c)] = true
	}
	if e.holdCursor != "" {
		s.holdCursors[strings.Clone(e.holdCursor)] = true
	}
	if e.opaque != "" {
		s.opaque = e.opaque
	}
	if e.prepareName != "" && e.prepareHazard != "" {
		s.sqlHazards[strings.Clone(e.prepareName)] = e.prepareHazard
	}
	for _, n := range e.executes {
		if why := s.sqlHazards[n]; why != "" {
			s.opaque = fmt.Sprintf("EXECUTE of prepared statement %q, which %s", n, why)
		}
	}
}

// Backend records m, a message from the server, and says whether the
// client must see it. An error means the server rejected something the
// proxy injected (a statement prepared again after a move): the proxy must
// close the session with CloseError(err); retrying cannot help.
func (s *Session) Backend(m pgproto3.BackendMessage) (Verdict, error) {
	switch m := m.(type) {
	case *pgproto3.ParameterStatus:
		s.setReported(m.Name, m.Value)
		if !s.ready {
			s.initial[m.Name] = m.Value
		}
	case *pgproto3.BackendKeyData:
		s.key = &pgproto3.BackendKeyData{ProcessID: m.ProcessID, SecretKey: slices.Clone(m.SecretKey)}
	case *pgproto3.ReadyForQuery:
		return s.readyForQuery(m.TxStatus), nil
	case *pgproto3.ParseComplete:
		if o := s.head(); o != nil && o.kind == opParse {
			v := Forward
			if o.injected {
				v = Swallow
			}
			s.parsed(o)
			s.pop()
			return v, nil
		}
		s.confused("ParseComplete")
	case *pgproto3.BindComplete:
		s.popIf(opBind, "BindComplete")
	case *pgproto3.ParameterDescription:
	case *pgproto3.RowDescription:
		if o := s.head(); o != nil && o.kind == opDescribe {
			s.pop()
		}
	case *pgproto3.NoData:
		s.popIf(opDescribe, "NoData")
	case *pgproto3.CommandComplete:
		o := s.head()
		switch {
		case o != nil && o.kind == opExecute:
			s.completed(&o.eff, m.CommandTag)
			s.pop()
		case o != nil && o.kind == opQuery && len(o.effs) > 0:
			e := &o.effs[0]
			o.effs = o.effs[1:]
			s.completed(e, m.CommandTag)
		case o != nil && o.kind == opQuery && o.unscanned != "":
			s.setUnknown(o.unscanned, false)
		default:
			s.confused("CommandComplete " + string(m.CommandTag))
		}
	case *pgproto3.EmptyQueryResponse:
		if o := s.head(); o != nil && o.kind == opExecute {
			s.pop()
		}
	case *pgproto3.PortalSuspended:
		s.popIf(opExecute, "PortalSuspended")
	case *pgproto3.CloseComplete:
		if o := s.head(); o != nil && o.kind == opClose {
			if o.objType == objStmt {
				s.forget(o.name)
			}
			s.pop()
		} else {
			s.confused("CloseComplete")
		}
	case *pgproto3.CopyInResponse:
		s.copyIn = true
		// The client's Syncs right after the statement now in COPY IN
		// reached the server in COPY IN: it ignores them.
		for len(s.ops) > 1 && s.ops[1].kind == opSync && !s.ops[1].injected {
			s.ops = slices.Delete(s.ops, 1, 2)
			s.ignoredSyncs++
		}
	case *pgproto3.CopyOutResponse:
		s.copyOut = true
	case *pgproto3.CopyDone:
		s.copyOut = false
	case *pgproto3.CopyBothResponse:
		s.copyIn, s.copyOut = true, true
		s.opaque = "COPY BOTH (streaming replication)"
	case *pgproto3.NotificationResponse:
		s.listen[m.Channel] = true
	case *pgproto3.ErrorResponse:
		return s.errorResponse(m)
	}
	return Forward, nil
}

// head is the op the server's next answer is about, or nil.
func (s *Session) head() *op {
	if len(s.ops) == 0 {
		return nil
	}
	return &s.ops[0]
}

// push queues o, keeping the ops array for reuse (pop). It returns the
// queued op, valid until the next push or pop.
func (s *Session) push(o op) *op {
	if len(s.ops) == 0 && s.opsRoom != nil {
		s.ops = s.opsRoom[:0]
	}
	s.ops = append(s.ops, o)
	if cap(s.ops) > cap(s.opsRoom) {
		// A new array, the ops at its start.
		s.opsRoom = s.ops[:0]
	}
	return &s.ops[len(s.ops)-1]
}

// readyForQuery ends a Query, a Sync'd batch or a function call, and
// settles the transaction's effects when it ended.
func (s *Session) readyForQuery(status byte) Verdict {
	v := Forward
	if len(s.ops) == 0 {
		if s.ready {
			s.confused("ReadyForQuery")
		}
	} else {
		o := &s.ops[0]
		switch o.kind {
		case opQuery, opSync, opFunctionCall:
		default:
			s.confused("ReadyForQuery")
		}
		if o.injected {
			v = Swallow
		}
		s.pop()
	}
	s.ready = true
	s.tx = status
	if status != TxFailed {
		s.lostBlock = false
	}
	s.copyIn, s.copyOut = false, false
	switch status {
	case TxIdle:
		if s.failed {
			s.rollback()
		} else {
			s.commit()
		}
		s.failed = false
	case TxInBlock:
		s.failed = false
	case TxFailed:
		s.failed = true
	default:
		s.confused(fmt.Sprintf("ReadyForQuery %q", status))
	}
	if len(s.ops) == 0 && v == Forward {
		s.dirty = false
	}
	return v
}

// errorResponse: the server skips the rest of a Query, or every extended
// message up to the next Sync; the current transaction failed.
func (s *Session) errorResponse(m *pgproto3.ErrorResponse) (Verdict, error) {
	if sev := cmp.Or(m.SeverityUnlocalized, m.Severity); sev == severityFatal || sev == severityPn {
		s.ended = true
	}
	if len(s.ops) == 0 {
		return Forward, nil // asynchronous: the server is ending the session
	}
	s.failed = true
	s.copyIn, s.copyOut = false, false
	o := s.ops[0]
	if o.kind == opQuery || o.kind == opFunctionCall {
		s.ops[0].effs = nil
		s.ops[0].unscanned = ""
	} else {
		for len(s.ops) > 0 && s.ops[0].kind != opSync {
			s.pop()
		}
	}
	if o.injected {
		what := "a statement"
		if o.kind == opParse {
			what = fmt.Sprintf("prepared statement %q", o.name)
		}
		return Swallow, fmt.Errorf("prepare %s again on the new server: %s (SQLSTATE %s)", what, m.Message, m.Code)
	}
	return Forward, nil
}

// pop drops the head op. Its effects array becomes the next Query's room,
// and once the queue is empty its array is reused from the start (push).
func (s *Session) pop() {
	o := &s.ops[0]
	if o.effsRoom != nil && cap(o.effsRoom) <= maxSpareEffs {
		clear(o.effsRoom)
		s.spareEffs = o.effsRoom[:0]
	}
	*o = op{}
	s.ops = s.ops[1:]
	if len(s.ops) == 0 {
		if cap(s.opsRoom) > maxSpareOps {
			s.opsRoom = nil
		}
		s.ops = nil
	}
}

func (s *Session) popIf(k opKind, what string) {
	if len(s.ops) > 0 && s.ops[0].kind == k {
		s.pop()
		return
	}
	s.confused(what)
}

// confused: an answer the tracker did not expect. Its picture of the
// session may be wrong from here on.
func (s *Session) confused(what string) {
	s.setUnknown("an unexpected "+what+" from the server", true)
}

func (s *Session) setUnknown(why string, identity bool) {
	if identity {
		s.unknownIdentity = why
	} else if s.unknownSettings == "" {
		s.unknownSettings = why
	}
}

// parsed: a Parse succeeded.
func (s *Session) parsed(o *op) {
	delete(s.unprepared, o.name)
	s.stmts[o.name] = &prepared{parse: o.parse, eff: o.eff, context: s.context()}
}

// forget drops a statement (Close, DEALLOCATE, a Query replacing the
// unnamed one).
func (s *Session) forget(name string) {
	delete(s.stmts, name)
	delete(s.unprepared, name)
}

// completed: a statement finished with tag.
func (s *Session) completed(e *effect, tag []byte) {
	if e.tag != "" && !tagIs(tag, e.tag) {
		s.setUnknown(fmt.Sprintf("the server answered %q to a statement the proxy read as %s", tag, e.tag), true)
		return
	}
	if e.unknownSettings != "" {
		s.setUnknown(e.unknownSettings, e.unknownIdentity)
	}
	if e.localContext {
		s.localContext++
	}
	// Not transactional: prepared statements, advisory unlock.
	if e.prepareName != "" {
		if e.prepareHazard == "" {
			delete(s.sqlHazards, e.prepareName)
		}
		s.forget(e.prepareName)
		s.stmts[strings.Clone(e.prepareName)] = &prepared{sql: strings.Clone(e.prepareText), context: s.context()}
	}
	if e.deallocate != "" {
		s.forget(e.deallocate)
	}
	if e.deallocateAll || e.discardAll {
		for n := range s.stmts {
			s.forget(n)
		}
	}
	if e.unlockAll || e.discardAll {
		s.advisory = false
	}
	switch e.txn {
	case txnCommit:
		switch {
		case bytes.Equal(tag, []byte("COMMIT")):
			s.commit()
		case bytes.Equal(tag, []byte("ROLLBACK")):
			s.rollback()
		default:
			s.setUnknown(fmt.Sprintf("the server answered %q to COMMIT", tag), true)
		}
		return
	case txnRollback:
		s.rollback()
		return
	case txnRollbackTo:
		if len(s.pending) > 0 {
			s.setUnknown("settings changed in a transaction that rolled back to a savepoint", true)
		}
		s.failed = false
		return
	case txnPrepare:
		if len(s.pending) > 0 {
			s.setUnknown("settings changed in a transaction that was prepared (PREPARE TRANSACTION)", true)
		}
		s.rollback()
		return
	}
	if e.settles() {
		s.pending = append(s.pending, *e)
	}
}

// settles says whether e has effects that wait for its transaction's end.
func (e effect) settles() bool {
	return len(e.gucs) > 0 || e.discardTemp || e.discardAll || e.unlistenAll || len(e.unlisten) > 0 || e.closeAll || e.closeCursor != ""
}

// tagIs says whether a CommandComplete tag's words (separated by white
// space) start with want's (separated by one space).
func tagIs(tag []byte, want string) bool {
	for _, c := range tag {
		if c >= utf8.RuneSelf {
			return tagIsFields(tag, want) // Unicode white space
		}
	}
	i := 0
	for want != "" {
		w, rest, _ := strings.Cut(want, " ")
		for i < len(tag) && asciiSpace(tag[i]) {
			i++
		}
		j := i
		for j < len(tag) && !asciiSpace(tag[j]) {
			j++
		}
		if string(tag[i:j]) != w {
			return false
		}
		i, want = j, rest
	}
	return true
}

// tagIsFields is tagIs for any text.
func tagIsFields(tag []byte, want string) bool {
	if want == "" {
		return true
	}
	f := strings.Fields(string(tag))
	ws := strings.Split(want, " ")
	if len(f) < len(ws) {
		return false
	}
	for i, w := range ws {
		if f[i] != w {
			return false
		}
	}
	return true
}

// asciiSpace: the ASCII white space strings.Fields splits at.
func asciiSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// commit applies the current transaction's completed effects.
func (s *Session) commit() {
	for _, e := range s.pending {
		for _, c := range e.gucs {
			switch c.kind {
			case gucSet:
				s.seq++
				s.gucs[strings.Clone(c.name)] = gucEntry{replay: strings.Clone(c.replay), seq: s.seq}
			case gucReset:
				delete(s.gucs, c.name)
			case gucResetAll:
				for n := range s.gucs {
					if !identityGUC(n) {
						delete(s.gucs, n)
					}
				}
				s.unknownSettings = ""
			}
		}
		if e.discardTemp || e.discardAll {
			s.temp = false
		}
		if e.unlistenAll || e.discardAll {
			clear(s.listen)
		}
		for _, c := range e.unlisten {
			delete(s.listen, c)
		}
		if e.closeAll || e.discardAll {
			clear(s.holdCursors)
		}
		if e.closeCursor != "" {
			delete(s.holdCursors, e.closeCursor)
		}
		if e.discardAll {
			clear(s.gucs)
			s.unknownSettings, s.unknownIdentity = "", ""
		}
	}
	s.pending = nil
	s.localContext = 0
}

// rollback drops the current transaction's effects.
func (s *Session) rollback() {
	s.pending = nil
	s.localContext = 0
}

// identityGUC: settings RESET ALL leaves alone.
func identityGUC(name string) bool { return name == "role" || name == "session_authorization" }

// setReported records a parameter the server reported.
func (s *Session) setReported(name, value string) {
	s.reported[name] = value
	s.reportedVer++
	if strings.EqualFold(name, "search_path") {
		s.reportedSP = value
	}
	if name == "standard_conforming_strings" {
		s.scanOpts = scanOptionsOf(s.reported)
	}
}

// scanOptionsOf are the scan options reported parameters call for.
func scanOptionsOf(reported map[string]string) scanOptions {
	v, ok := reported["standard_conforming_strings"]
	return scanOptions{backslashQuote: ok && v == "off"}
}

// scanOptions are the scan options the session's reported parameters
// call for.
func (s *Session) scanOptions() scanOptions { return s.scanOpts }

// context is what decides the meaning of a statement's text besides the
// catalog: search_path (as tracked from SET and as reported) and
// standard_conforming_strings, including the current transaction's
// changes. Inside a transaction that SET LOCAL either, it never matches a
// boundary's.
func (s *Session) context() stmtContext {
	if s.localContext > 0 {
		return stmtContext{local: true}
	}
	sp := ""
	if g, ok := s.gucs["search_path"]; ok {
		sp = g.replay
	}
	for _, e := range s.pending {
		for _, c := range e.gucs {
			switch {
			case c.kind == gucResetAll, c.name == "search_path" && c.kind == gucReset:
				sp = ""
			case c.name == "search_path":
				sp = c.replay
			}
		}
		if e.discardAll {
			sp = ""
		}
	}
	return stmtContext{searchPath: sp, reportedSP: s.reportedSP, scs: s.reported["standard_conforming_strings"]}
}

// reportedFold looks a reported parameter up by its lower-case name.
func (s *Session) reportedFold(name string) string {
	for n, v := range s.reported {
		if strings.EqualFold(n, name) {
			return v
		}
	}
	return ""
}

// Movable says whether the session can be moved to a new server now: nil,
// or an *UnmovableError with the first Reason that stops it.
func (s *Session) Movable() error {
	fail := func(r Reason, detail string) error { return &UnmovableError{Reason: r, Detail: detail} }
	switch {
	case !s.ready || s.ended:
		return fail(ReasonStarting, "")
	case s.copyIn || s.copyOut:
		return fail(ReasonCopy, "")
	case s.dirty || len(s.ops) > 0:
		return fail(ReasonPending, "")
	case s.tx != TxIdle && !s.InLostBlock():
		return fail(ReasonTransaction, fmt.Sprintf("transaction status %q", s.tx))
	case s.temp:
		return fail(ReasonTempTable, "")
	case s.advisory:
		return fail(ReasonAdvisoryLock, "")
	case len(s.listen) > 0:
		return fail(ReasonListen, "channels: "+strings.Join(slices.Sorted(maps.Keys(s.listen)), ", "))
	case len(s.holdCursors) > 0:
		return fail(ReasonHoldCursor, "cursors: "+strings.Join(slices.Sorted(maps.Keys(s.holdCursors)), ", "))
	case s.unknownIdentity != "":
		return fail(ReasonSettings, s.unknownIdentity)
	case s.unknownSettings != "":
		return fail(ReasonSettings, s.unknownSettings)
	case s.opaque != "":
		return fail(ReasonOpaque, s.opaque)
	}
	// Asked at every transaction's end under transaction pooling: the
	// context is worked out only when there is a named statement, and
	// the names are sorted (for the first, in the detail) only when one
	// differs.
	var ctx stmtContext
	known := false
	for n, st := range s.stmts {
		if n == "" {
			continue
		}
		if !known {
			ctx, known = s.context(), true
		}
		if st.context != ctx {
			for _, n := range slices.Sorted(maps.Keys(s.stmts)) {
				if n != "" && s.stmts[n].context != ctx {
					return fail(ReasonStatementContext, fmt.Sprintf("statement %q", n))
				}
			}
		}
	}
	return nil
}

// injections returns the Parses to send before m (see Frontend) and
// records them as injected ops.
func (s *Session) injections(m pgproto3.FrontendMessage) ([]pgproto3.FrontendMessage, error) {
	if len(s.unprepared) == 0 || s.tx == TxFailed {
		// In a failed transaction a Parse fails too; the client's own
		// message fails there anyway, and the statement waits.
		return nil, nil
	}
	var names []string
	all := false
	simple := false
	switch m := m.(type) {
	case *pgproto3.Parse:
		if m.Name == "" {
			// A new unnamed statement replaces the old one: no need to
			// prepare that first.
			delete(s.unprepared, "")
			return nil, nil
		}
		names = []string{m.Name}
	case *pgproto3.Bind:
		names = []string{m.PreparedStatement}
	case *pgproto3.Describe:
		if m.ObjectType == objStmt {
			names = []string{m.Name}
		}
	case *pgproto3.Execute:
		all = s.portalEff[m.Portal].contextChange
	case *pgproto3.Query:
		simple = true
		sts, err := s.scan.split(m.String, s.scanOptions())
		if err != nil {
			all = true
		}
		for _, st := range sts {
			e := classify(st)
			all = all || e.contextChange
			names = appendNames(names, st.toks)
		}
	}
	if all {
		names = slices.Sorted(maps.Keys(s.unprepared))
	}
	var out []pgproto3.FrontendMessage
	ctx := s.context()
	seen := map[string]bool{}
	for _, n := range names {
		if !s.unprepared[n] || seen[n] {
			continue
		}
		seen[n] = true
		p := s.stmts[n]
		if p.context != ctx {
			if n == "" {
				// The unnamed statement is replaced more often than
				// reused: let it go; a Bind of it fails as on a new
				// connection.
				s.forget(n)
				continue
			}
			return nil, &UnmovableError{Reason: ReasonStatementContext, Detail: fmt.Sprintf("statement %q", n)}
		}
		cp := &pgproto3.Parse{Name: p.parse.Name, Query: p.parse.Query, ParameterOIDs: slices.Clone(p.parse.ParameterOIDs)}
		out = append(out, cp)
		s.push(op{kind: opParse, injected: true, name: n, parse: cp, eff: p.eff})
	}
	if len(out) > 0 && simple {
		out = append(out, &pgproto3.Sync{})
		s.push(op{kind: opSync, injected: true})
	}
	return out, nil
}
