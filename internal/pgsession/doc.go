// Package pgsession tracks the state of a PostgreSQL client session from the
// protocol messages a proxy relays, so that the proxy can move the session to
// a new server — the new primary after a switchover or failover — without
// the client noticing, or close it with a clear error when it cannot.
//
// It is pure: no network, no clock, no goroutines. The proxy feeds a Session
// every message in each direction (Frontend, Backend); the Session follows
//
//   - the startup parameters;
//   - settings: what the server reports with ParameterStatus, and the
//     session-level SET, RESET, DISCARD and set_config() the client sends in
//     simple and extended queries (SET LOCAL ends with its transaction and is
//     ignored), applied only when their transaction commits — an implicit
//     transaction (a multi-statement Query, an extended batch up to Sync)
//     that fails drops them;
//   - named prepared statements, protocol-level (Parse, confirmed by
//     ParseComplete; Close) and SQL-level (PREPARE, DEALLOCATE), with the
//     search_path they were prepared under;
//   - the transaction status of each ReadyForQuery, and whether the session
//     is at a boundary (AtBoundary);
//   - what makes a session unmovable (Movable): an open transaction, a COPY,
//     a request in flight, temporary tables, session advisory locks, LISTEN,
//     WITH HOLD cursors, and anything the tracker could not follow.
//
// Statements are read by a small scanner (comments, quoted identifiers,
// string and dollar-quoted literals, statement splitting) and a classifier
// that recognises the few statement forms that change session state. It is
// not a SQL parser and does not try to be one: whatever it cannot read
// exactly makes the session unmovable (with a Reason) rather than guessed at,
// and each CommandComplete tag is checked against what the classifier
// expected, so a misread statement is caught.
//
// A movable session's Plan lists what reproduces it on a fresh connection:
// the startup parameters, a setup Query (SET SESSION AUTHORIZATION, SET
// ROLE, set_config for reported parameters, the SETs the client made, the
// SQL PREPAREs), and the protocol-level statements, prepared at once or
// lazily before first use (Session.Frontend returns the Parse to inject;
// Session.Backend marks its answers Swallow). ReplayResponses checks the new
// server's answers and reports which ParameterStatus values the client must
// be told. CloseError renders the error the client receives when its session
// cannot be moved.
//
// Not tracked, and documented as such to users: state changed inside
// functions, procedures or triggers that the server does not report
// (set_config inside a function is caught only for reported parameters;
// temporary tables or advisory locks taken inside a function are not seen),
// sequence state for currval/lastval, and prepared transactions.
package pgsession
