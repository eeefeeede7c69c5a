package pgauth

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// AuthRole is the role the proxy runs the auth query as. It can log in
// and call AuthFunction, and nothing else of note.
const AuthRole = "holdfast_auth"

// AuthFunction returns the SCRAM secret of a login role; SetupSQL
// installs it.
const AuthFunction = "holdfast.get_auth"

// SetupSQL is what an operator runs once, as a superuser, on the primary
// (in the database the proxy's auth query connects to; pg_authid is
// shared by all databases, so one is enough) to let the proxy read
// verifiers without being a superuser. It is idempotent and replicates to
// the standbys like any DDL.
//
//   - AuthRole (holdfast_auth) can log in and does not inherit any
//     other role's privileges; give it a password afterwards
//     (ALTER ROLE holdfast_auth PASSWORD '...', or \password) and a
//     pg_hba rule like any role.
//   - AuthFunction (holdfast.get_auth(username)) is SECURITY DEFINER: it
//     runs with its owner's right to read pg_authid (its owner is the
//     superuser who ran this), with a fixed search_path so that nobody can
//     put their own operators in front of it. It returns one row for a
//     role that can log in — its secret (NULL without a password) and its
//     VALID UNTIL — and no row otherwise.
//   - Only AuthRole may execute it: PUBLIC's default EXECUTE is revoked,
//     and the schema is closed to PUBLIC.
//
// The proxy thus learns verifiers, never passwords: what a verifier
// allows is an offline guess at a weak password, so AuthRole's password
// and the proxy's connection deserve the care a replication role's do.
// An operator who wants superusers to bypass the proxy can add
// "AND NOT rolsuper" to the function.
const SetupSQL = `
DO $setup$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'holdfast_auth') THEN
        CREATE ROLE holdfast_auth LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    END IF;
END
$setup$;
CREATE SCHEMA IF NOT EXISTS holdfast;
REVOKE ALL ON SCHEMA holdfast FROM PUBLIC;
GRANT USAGE ON SCHEMA holdfast TO holdfast_auth;
CREATE OR REPLACE FUNCTION holdfast.get_auth(username text)
    RETURNS TABLE (verifier text, valid_until timestamptz)
    LANGUAGE sql STABLE STRICT SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $get_auth$
    SELECT rolpassword, rolvaliduntil
    FROM pg_catalog.pg_authid
    WHERE rolname = username AND rolcanlogin
$get_auth$;
REVOKE ALL ON FUNCTION holdfast.get_auth(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION holdfast.get_auth(text) TO holdfast_auth;
`

// authQuery asks AuthFunction for a role's secret and whether it expired,
// judged by the database's clock as PostgreSQL judges it at login (the
// proxy reads no clock of its own for this).
const authQuery = `SELECT verifier, valid_until IS NOT NULL AND valid_until <= pg_catalog.now() FROM holdfast.get_auth($1)`

// Querier is what FetchVerifier needs of a connection (a *pgx.Conn or a
// pool) logged in as AuthRole.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Lookup is the outcome of the auth query for one user.
type Lookup struct {
	// Verifier is the user's verifier, or nil when the user cannot log in
	// with SCRAM: then the server side runs the mock exchange (ServerOptions
	// with a nil Verifier), as PostgreSQL does.
	Verifier *Verifier
	// Reason says why Verifier is nil, for the proxy's log only — never
	// tell the client (PostgreSQL logs it as the DETAIL of the failure).
	Reason string
}

// FetchVerifier runs the auth query for username on q. A user without a
// usable verifier — no such role, a role that cannot log in, no password,
// a secret that is not SCRAM-SHA-256 (md5), an expired password — is not
// an error but a Lookup without a verifier. The error means the query
// itself failed (no AuthFunction, no permission, the connection broke):
// retrying on a fresh connection to the primary may help, and the client
// must not be told anything about the user.
func FetchVerifier(ctx context.Context, q Querier, username string) (Lookup, error) {
	var secret *string
	var expired bool
	err := q.QueryRow(ctx, authQuery, username).Scan(&secret, &expired)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return Lookup{Reason: "no role of that name can log in"}, nil
	case err != nil:
		return Lookup{}, fmt.Errorf("auth query for user %s: %w", quoteUser(username), err)
	case secret == nil:
		return Lookup{Reason: "the role has no password"}, nil
	case expired:
		return Lookup{Reason: "the role's password has expired (VALID UNTIL)"}, nil
	}
	v, err := ParseVerifier(*secret)
	if errors.Is(err, ErrNotSCRAM) {
		return Lookup{Reason: "the role's password is not a SCRAM-SHA-256 secret (md5?): set it again with password_encryption = scram-sha-256"}, nil
	}
	if err != nil {
		return Lookup{Reason: err.Error()}, nil
	}
	return Lookup{Verifier: &v}, nil
}
