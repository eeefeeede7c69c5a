package pgsession

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Reason says why a session cannot be moved to a new server. Its Label is a
// short stable name for metrics (holdfast counts closed sessions by it); its
// Phrase completes "the primary changed while this session ..." in the
// error the client receives.
type Reason int

// Reasons a session cannot be moved. A session can hold several at once;
// Movable reports the first in this order. The first four pass at the
// session's next boundary; the rest stay until the client undoes them.
const (
	// ReasonStarting: the session has not finished its startup (no
	// ReadyForQuery yet), so there is nothing consistent to replay.
	ReasonStarting Reason = iota + 1
	// ReasonCopy: a COPY is in progress.
	ReasonCopy
	// ReasonPending: the client sent messages the server has not finished
	// with a ReadyForQuery (a query or an extended-protocol batch in
	// flight, or one not yet ended by Sync).
	ReasonPending
	// ReasonTransaction: the last ReadyForQuery said 'T' or 'E'. The
	// transaction's work lives only on the old server.
	ReasonTransaction
	// ReasonTempTable: CREATE TEMP..., SELECT ... INTO TEMP, or any use
	// of the pg_temp schema. Cleared by a committed DISCARD TEMP or
	// DISCARD ALL.
	ReasonTempTable
	// ReasonAdvisoryLock: pg_advisory_lock and friends (the session-level
	// ones; the _xact_ variants end with their transaction). Cleared by a
	// completed pg_advisory_unlock_all() or DISCARD ALL.
	ReasonAdvisoryLock
	// ReasonListen: LISTEN (or a notification arrived). Cleared by UNLISTEN
	// of every channel, UNLISTEN * or DISCARD ALL, once committed.
	ReasonListen
	// ReasonHoldCursor: DECLARE ... WITH HOLD. Cleared by CLOSE of every
	// such cursor, CLOSE ALL or DISCARD ALL, once committed.
	ReasonHoldCursor
	// ReasonSettings: a setting changed in a way the tracker cannot follow
	// (set_config with computed arguments, a SET form it does not parse, a
	// SET rolled back to a savepoint, a DO block that may SET, a statement
	// it could not scan that completed). Cleared by a committed RESET ALL
	// or DISCARD ALL — only DISCARD ALL when it concerns ROLE or SESSION
	// AUTHORIZATION, which RESET ALL leaves alone.
	ReasonSettings
	// ReasonOpaque: the session ran something whose effects on the session
	// cannot be known at all (a fast-path FunctionCall, LOAD, COPY BOTH).
	// Never cleared.
	ReasonOpaque
	// ReasonStatementContext: a named prepared statement was prepared under
	// a different search_path or standard_conforming_strings than the
	// session has now; preparing it again would resolve names (or read
	// literals) differently. Cleared by deallocating it.
	ReasonStatementContext
)

// reasonText is the constant lookup table behind Label and Phrase.
var reasonText = [...]struct{ label, phrase string }{
	ReasonStarting:         {"starting", "had not finished starting"},
	ReasonCopy:             {"copy", "was in the middle of a COPY"},
	ReasonPending:          {"in_flight", "had a request in flight"},
	ReasonTransaction:      {"transaction", "was inside a transaction"},
	ReasonTempTable:        {"temp_table", "held a temporary table"},
	ReasonAdvisoryLock:     {"advisory_lock", "held a session-level advisory lock"},
	ReasonListen:           {"listen", "was listening for notifications (LISTEN)"},
	ReasonHoldCursor:       {"hold_cursor", "had an open WITH HOLD cursor"},
	ReasonSettings:         {"settings", "had changed a setting in a way the proxy could not follow"},
	ReasonOpaque:           {"opaque", "had run something whose effects on the session cannot be tracked"},
	ReasonStatementContext: {"statement_context", "had a prepared statement that cannot be prepared again as it was"},
}

// Label is a short, stable name for metrics and logs.
func (r Reason) Label() string {
	if r <= 0 || int(r) >= len(reasonText) {
		return "unknown"
	}
	return reasonText[r].label
}

// Phrase completes "the primary changed while this session ...".
func (r Reason) Phrase() string {
	if r <= 0 || int(r) >= len(reasonText) {
		return "was in a state the proxy does not know"
	}
	return reasonText[r].phrase
}

func (r Reason) String() string { return r.Label() }

// UnmovableError says why a session cannot be moved to a new server now.
// Detail names what the tracker saw (the statement kind, the setting, the
// cursor) for logs and the client's error detail. Whether a retry helps
// depends on the reason: ReasonTransaction, ReasonPending and ReasonCopy
// pass at the session's next boundary; the others stay until the client
// undoes them.
type UnmovableError struct {
	Reason Reason
	Detail string
}

func (e *UnmovableError) Error() string {
	if e.Detail == "" {
		return "session cannot be moved: it " + e.Reason.Phrase()
	}
	return "session cannot be moved: it " + e.Reason.Phrase() + " (" + e.Detail + ")"
}

// SQLSTATE the proxy sends when it closes a session.
//
// 57P01 (admin_shutdown, "terminating connection due to administrator
// command") is what a server sends when it ends a session on purpose; drivers
// and pools (pgx, libpq users, JDBC/HikariCP, PgBouncer) treat it as "this
// connection is gone, open a new one", which is what the client must do.
// 08006 (connection_failure) would be more literal, but class 08 codes are
// generated by client libraries for broken sockets, not sent by servers, and
// some clients mishandle them in an ErrorResponse.
const CodeSessionNotMoved = "57P01"

// Severity of the closing error: the connection ends after it.
const severityFatal = "FATAL"

// messagePrefix starts every message the proxy writes to clients, so a user
// can tell the proxy's errors from the server's.
const messagePrefix = "holdfast proxy: "

// CloseError renders err — an *UnmovableError from Movable or Plan, or a
// failure from ReplayResponses or Session.Backend — as the ErrorResponse
// the proxy sends to the client before closing its connection, e.g.
//
//	FATAL 57P01 holdfast proxy: the primary changed while this session held
//	a temporary table; the session cannot be moved — reconnect
func CloseError(err error) *pgproto3.ErrorResponse {
	return closeError(err, "the primary changed", "the new primary")
}

// CloseErrorReadOnly is CloseError for a session of the proxy's
// read-only listener, whose server left the read-only pool (stopped,
// promoted, lagging, excluded), e.g.
//
//	FATAL 57P01 holdfast proxy: the session's read-only server left the
//	pool while this session had an open WITH HOLD cursor; the session
//	cannot be moved — reconnect
func CloseErrorReadOnly(err error) *pgproto3.ErrorResponse {
	return closeError(err, "the session's read-only server left the pool", "another read-only server")
}

// closeError is CloseError with what changed and where the session would
// have gone.
func closeError(err error, changed, next string) *pgproto3.ErrorResponse {
	e := &pgproto3.ErrorResponse{
		Severity:            severityFatal,
		SeverityUnlocalized: severityFatal,
		Code:                CodeSessionNotMoved,
		Hint:                "Open a new connection; the proxy routes it to " + next + ".",
	}
	var ue *UnmovableError
	if errors.As(err, &ue) {
		e.Message = fmt.Sprintf("%s%s while this session %s; the session cannot be moved — reconnect", messagePrefix, changed, ue.Reason.Phrase())
		e.Detail = ue.Detail
		return e
	}
	e.Message = messagePrefix + changed + " and this session could not be restored on " + next + " — reconnect"
	if err != nil {
		e.Detail = err.Error()
	}
	return e
}
