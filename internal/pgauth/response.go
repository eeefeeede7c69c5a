package pgauth

import (
	"errors"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/holdfast/holdfast/internal/quote"
)

// SQLSTATEs of the errors a client sees, as PostgreSQL sends them.
const (
	sqlstateInvalidPassword    = "28P01" // invalid_password
	sqlstateProtocolViolation  = "08P01" // protocol_violation
	sqlstateInternalError      = "XX000" // internal_error
	severityFatal              = "FATAL"
	internalAuthFailureMessage = "could not authenticate: internal error in the proxy"
)

// ErrorResponse is the message to send a client whose exchange failed
// with err, worded as PostgreSQL words it: a wrong password and a user
// without a verifier both give FATAL 28P01 `password authentication
// failed for user "U"`, so the answer does not reveal whether U exists;
// a malformed message gives FATAL 08P01 "malformed SCRAM message" with a
// detail that quotes no secret; anything else (a failed random source)
// gives an internal error that says nothing more (log err instead).
func ErrorResponse(username string, err error) *pgproto3.ErrorResponse {
	r := &pgproto3.ErrorResponse{Severity: severityFatal, SeverityUnlocalized: severityFatal}
	var pe *ProtocolError
	switch {
	case errors.Is(err, ErrAuthFailed):
		r.Code = sqlstateInvalidPassword
		r.Message = `password authentication failed for user "` + username + `"`
	case errors.As(err, &pe):
		r.Code = sqlstateProtocolViolation
		r.Message = ErrProtocol.Error()
		r.Detail = pe.Message + ": " + pe.Detail
	default:
		r.Code = sqlstateInternalError
		r.Message = internalAuthFailureMessage
	}
	return r
}

// quoteUser quotes a user name for the proxy's own errors and logs.
func quoteUser(u string) string { return quote.Value(u) }
