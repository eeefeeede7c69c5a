package pgsession

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// serverDetermined are reported parameters that follow from the server or
// from other settings, not from the client: they are never replayed, and
// when the new server reports another value the client is told with a
// ParameterStatus (a newer minor version, in_hot_standby after a
// promotion).
var serverDetermined = map[string]bool{
	"server_version":    true,
	"server_encoding":   true,
	"integer_datetimes": true,
	"in_hot_standby":    true,
	"is_superuser":      true,
}

// forcedReported are reported parameters the replay always sets to the
// value the client last saw, changed or not: they shape what the client
// parses and sends (client_encoding, standard_conforming_strings, the date
// styles), and a new server configured differently must not change them
// under it.
var forcedReported = map[string]bool{
	"application_name":              true,
	"client_encoding":               true,
	"datestyle":                     true,
	"intervalstyle":                 true,
	"timezone":                      true,
	"standard_conforming_strings":   true,
	"search_path":                   true,
	"default_transaction_read_only": true,
}

// Plan reproduces a session's state on a fresh server connection.
//
// The proxy opens a connection to the new server with a StartupMessage
// carrying Startup, authenticates it, and sends Messages(lazy) — right after
// AuthenticationOk or after the startup's ReadyForQuery, either works: the
// server reads them once its startup is done. It feeds every server message
// after AuthenticationOk to the ReplayResponses from Responses(lazy) until
// that reports done; none of them reaches the client. Then it calls
// Session.Moved with the result and relays the session over the new
// connection. A Plan is immutable and holds no connection.
type Plan struct {
	// Startup are the client's startup parameters, for the new server's
	// StartupMessage.
	Startup map[string]string
	// Setup are the statements that reproduce settings and SQL-level
	// prepared statements, in order: SET SESSION AUTHORIZATION, SET ROLE,
	// reported parameters (set_config), other settings the client SET, then
	// PREPARE. They run as one simple Query.
	Setup []string
	// Statements are the protocol-level prepared statements (including the
	// unnamed one), sorted by name. With lazy replay they are prepared
	// before first use (Session.Frontend); otherwise Messages prepares them
	// all.
	Statements []*pgproto3.Parse

	clientView map[string]string // the parameter values the client last saw
}

// Plan returns the replay plan for the session at its boundary, or an
// *UnmovableError from Movable.
func (s *Session) Plan() (*Plan, error) {
	if err := s.Movable(); err != nil {
		return nil, err
	}
	p := &Plan{Startup: maps.Clone(s.startup), clientView: maps.Clone(s.reported)}
	reportedLower := map[string]bool{}
	for n := range s.reported {
		reportedLower[asciiLower(n)] = true
	}
	// Identity first: what a role may SET depends on it.
	if v, ok := s.reported["session_authorization"]; ok && v != s.initial["session_authorization"] {
		p.Setup = append(p.Setup, "SET SESSION AUTHORIZATION "+quoteLiteral(v))
	} else if g, ok := s.gucs["session_authorization"]; ok && !reportedLower["session_authorization"] {
		p.Setup = append(p.Setup, g.replay)
	}
	if g, ok := s.gucs["role"]; ok {
		p.Setup = append(p.Setup, g.replay)
	}
	for _, n := range slices.Sorted(maps.Keys(s.reported)) {
		l := asciiLower(n)
		if serverDetermined[l] || identityGUC(l) {
			continue
		}
		if v := s.reported[n]; forcedReported[l] || v != s.initial[n] {
			p.Setup = append(p.Setup, setConfigSQL(n, v))
		}
	}
	var tracked []string
	for n := range s.gucs {
		if !reportedLower[n] && !identityGUC(n) {
			tracked = append(tracked, n)
		}
	}
	slices.SortFunc(tracked, func(a, b string) int { return s.gucs[a].seq - s.gucs[b].seq })
	for _, n := range tracked {
		p.Setup = append(p.Setup, s.gucs[n].replay)
	}
	ctx := s.context()
	for _, n := range slices.Sorted(maps.Keys(s.stmts)) {
		st := s.stmts[n]
		switch {
		case st.parse == nil:
			p.Setup = append(p.Setup, st.sql)
		case n == "" && st.context != ctx:
			// The unnamed statement cannot be prepared as it was; it is
			// dropped (see Session.injections).
		default:
			p.Statements = append(p.Statements, &pgproto3.Parse{Name: st.parse.Name, Query: st.parse.Query, ParameterOIDs: slices.Clone(st.parse.ParameterOIDs)})
		}
	}
	return p, nil
}

// SetupQuery is the Setup statements as one simple Query string ("" when
// there are none). Each statement ends on its own line, so a trailing
// comment in a replayed PREPARE cannot swallow the next.
func (p *Plan) SetupQuery() string {
	if len(p.Setup) == 0 {
		return ""
	}
	return strings.Join(p.Setup, ";\n") + ";\n"
}

// Messages are the frontend messages that reproduce the session after
// startup: the Setup Query, then (unless lazy) a Parse per statement and a
// Sync.
func (p *Plan) Messages(lazy bool) []pgproto3.FrontendMessage {
	var out []pgproto3.FrontendMessage
	if q := p.SetupQuery(); q != "" {
		out = append(out, &pgproto3.Query{String: q})
	}
	if !lazy && len(p.Statements) > 0 {
		for _, st := range p.Statements {
			out = append(out, st)
		}
		out = append(out, &pgproto3.Sync{})
	}
	return out
}

// replayPhase is where a ReplayResponses is.
type replayPhase int

const (
	phaseStartup replayPhase = iota // until the startup's ReadyForQuery
	phaseSetup                      // the Setup Query's answers
	phaseParse                      // the eager Parses' answers
	phaseDone
)

// ReplayResponses checks the new server's answers to a Plan's startup and
// Messages. It is used by one goroutine; it does no I/O.
type ReplayResponses struct {
	plan      *Plan
	lazy      bool
	phase     replayPhase
	completes int // CommandCompletes of the Setup Query so far
	parsed    int // ParseCompletes so far
	reported  map[string]string
	key       *pgproto3.BackendKeyData
	err       error
}

// Responses returns the checker for the answers to Messages(lazy).
func (p *Plan) Responses(lazy bool) *ReplayResponses {
	return &ReplayResponses{plan: p, lazy: lazy, reported: map[string]string{}}
}

// Errors of a replay. They wrap into the error Receive returns, with the
// server's message when there is one; none is worth retrying on the same
// server.
var (
	ErrReplayRejected   = errors.New("the new server rejected the replayed session state")
	ErrReplayUnexpected = errors.New("unexpected answer from the new server")
	ErrReplayMismatch   = errors.New("the new server's settings differ from the session's")
)

// Receive takes the next server message after AuthenticationOk. done is
// true once every answer arrived and matched; an error means the session
// cannot be restored on this server: close it with CloseError(err). After
// done or an error, Receive must not be called again.
func (r *ReplayResponses) Receive(m pgproto3.BackendMessage) (done bool, err error) {
	if r.err != nil || r.phase == phaseDone {
		return r.phase == phaseDone, r.err
	}
	fail := func(err error) (bool, error) {
		r.err = err
		return false, err
	}
	switch m := m.(type) {
	case *pgproto3.ParameterStatus:
		r.reported[m.Name] = m.Value
		return false, nil
	case *pgproto3.NoticeResponse, *pgproto3.AuthenticationOk, *pgproto3.NegotiateProtocolVersion:
		return false, nil
	case *pgproto3.BackendKeyData:
		if r.phase != phaseStartup {
			return fail(fmt.Errorf("%w: BackendKeyData after startup", ErrReplayUnexpected))
		}
		r.key = &pgproto3.BackendKeyData{ProcessID: m.ProcessID, SecretKey: slices.Clone(m.SecretKey)}
		return false, nil
	case *pgproto3.ErrorResponse:
		return fail(fmt.Errorf("%w: %s (SQLSTATE %s)", ErrReplayRejected, m.Message, m.Code))
	case *pgproto3.RowDescription, *pgproto3.DataRow:
		if r.phase != phaseSetup {
			return fail(fmt.Errorf("%w: %T", ErrReplayUnexpected, m))
		}
		return false, nil
	case *pgproto3.CommandComplete:
		if r.phase != phaseSetup || r.completes >= len(r.plan.Setup) {
			return fail(fmt.Errorf("%w: CommandComplete %q", ErrReplayUnexpected, m.CommandTag))
		}
		r.completes++
		return false, nil
	case *pgproto3.ParseComplete:
		if r.phase != phaseParse || r.parsed >= len(r.plan.Statements) {
			return fail(fmt.Errorf("%w: ParseComplete", ErrReplayUnexpected))
		}
		r.parsed++
		return false, nil
	case *pgproto3.ReadyForQuery:
		if m.TxStatus != TxIdle {
			return fail(fmt.Errorf("%w: ReadyForQuery %q", ErrReplayUnexpected, m.TxStatus))
		}
		switch r.phase {
		case phaseSetup:
			if r.completes != len(r.plan.Setup) {
				return fail(fmt.Errorf("%w: %d of %d setup statements answered", ErrReplayUnexpected, r.completes, len(r.plan.Setup)))
			}
		case phaseParse:
			if r.parsed != len(r.plan.Statements) {
				return fail(fmt.Errorf("%w: %d of %d statements prepared", ErrReplayUnexpected, r.parsed, len(r.plan.Statements)))
			}
		}
		r.advance()
		if r.phase == phaseDone {
			if err := r.compare(); err != nil {
				return fail(err)
			}
			return true, nil
		}
		return false, nil
	}
	return fail(fmt.Errorf("%w: %T", ErrReplayUnexpected, m))
}

// advance moves past a ReadyForQuery to the next phase that has answers to
// wait for.
func (r *ReplayResponses) advance() {
	switch r.phase {
	case phaseStartup:
		r.phase = phaseSetup
		if len(r.plan.Setup) > 0 {
			return
		}
		fallthrough
	case phaseSetup:
		r.phase = phaseParse
		if !r.lazy && len(r.plan.Statements) > 0 {
			return
		}
		fallthrough
	default:
		r.phase = phaseDone
	}
}

// compare checks the new server's final parameters against what the
// client last saw.
func (r *ReplayResponses) compare() error {
	for _, n := range slices.Sorted(maps.Keys(r.plan.clientView)) {
		want := r.plan.clientView[n]
		got, ok := r.reported[n]
		if serverDetermined[asciiLower(n)] || got == want {
			continue
		}
		if !ok {
			return fmt.Errorf("%w: it does not report %s (the session had %q)", ErrReplayMismatch, n, want)
		}
		return fmt.Errorf("%w: %s is %q there, the session had %q", ErrReplayMismatch, n, got, want)
	}
	return nil
}

// ReplayResult is what the proxy needs once a replay succeeded.
type ReplayResult struct {
	// ToClient are ParameterStatus messages for parameters whose value the
	// client has not seen (the new server's version, in_hot_standby):
	// send them to the client, as a server would when a value changes.
	ToClient []*pgproto3.ParameterStatus
	// Key is the new server's cancel key; the proxy must translate the
	// client's CancelRequests to it.
	Key *pgproto3.BackendKeyData

	reported   map[string]string
	planned    map[string]bool   // the plan's protocol-level statements
	statements []*pgproto3.Parse // prepared lazily
}

// Result returns the outcome of a replay Receive reported done for.
func (r *ReplayResponses) Result() *ReplayResult {
	res := &ReplayResult{Key: r.key, reported: maps.Clone(r.reported), planned: map[string]bool{}}
	for _, st := range r.plan.Statements {
		res.planned[st.Name] = true
	}
	for _, n := range slices.Sorted(maps.Keys(r.reported)) {
		if v, ok := r.plan.clientView[n]; !ok || v != r.reported[n] {
			res.ToClient = append(res.ToClient, &pgproto3.ParameterStatus{Name: n, Value: r.reported[n]})
		}
	}
	if r.lazy {
		res.statements = r.plan.Statements
	}
	return res
}

// Moved tells the session it now runs on the new server its replay
// succeeded on: the server's parameters are res's, and the statements left
// to prepare lazily are prepared before first use (Frontend).
func (s *Session) Moved(res *ReplayResult) {
	s.reported = maps.Clone(res.reported)
	s.reportedVer++
	s.reportedSP = s.reportedFold("search_path")
	s.scanOpts = scanOptionsOf(s.reported)
	if res.Key != nil {
		s.key = res.Key
	}
	for n, st := range s.stmts {
		if st.parse != nil && !res.planned[n] {
			s.forget(n) // the unnamed statement the plan dropped
		}
	}
	clear(s.unprepared)
	for _, st := range res.statements {
		s.unprepared[st.Name] = true
	}
	clear(s.portalEff) // portals end with their transaction
	for n := range s.parsedEff {
		if _, ok := s.stmts[n]; !ok {
			delete(s.parsedEff, n)
		}
	}
}

// Key is the cancel key of the server the session runs on (nil before
// BackendKeyData).
func (s *Session) Key() *pgproto3.BackendKeyData { return s.key }

// Reported is the parameters the server last reported to the session
// (every ParameterStatus so far, the startup's included), which is also
// what the client has seen. The proxy's transaction pooling records it
// when it takes a server connection back, as that connection's reported
// state, so that the next client's replay there is checked against it.
func (s *Session) Reported() map[string]string { return maps.Clone(s.reported) }

// ReportedVersion changes whenever what Reported returns may have
// changed: a caller that keeps a copy need not copy again while it
// stays the same.
func (s *Session) ReportedVersion() int { return s.reportedVer }
