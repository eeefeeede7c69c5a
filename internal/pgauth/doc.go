// Package pgauth authenticates PostgreSQL clients at the proxy with
// SCRAM-SHA-256 (RFC 5802, RFC 7677) and logs in to PostgreSQL members on
// their behalf, without the proxy ever storing or seeing a password.
//
// The flow, for a client that connects to the proxy as user U:
//
//  1. The proxy reads U's SCRAM verifier from the primary with the auth
//     query (FetchVerifier), as a dedicated low-privilege role that may
//     only call a SECURITY DEFINER function installed by SetupSQL. A role
//     that does not exist, cannot log in, has no SCRAM secret or whose
//     password expired yields no verifier.
//  2. The proxy runs the server side of SCRAM (Server, or ServeSCRAM on a
//     pgproto3.Backend) against that verifier — or, when there is none,
//     against a mock verifier derived from the user name and a secret
//     (MockVerifier), exactly as PostgreSQL does, so the client cannot
//     tell from the messages whether the role exists; that exchange always
//     fails at the end with the same error as a wrong password.
//  3. A correct proof gives the proxy the client's ClientKey
//     (ClientProof XOR ClientSignature). ClientKey is what the client
//     derived from its password; with it and the verifier's salt,
//     iteration count and ServerKey the proxy logs in to any member as U
//     (Client, or LoginSCRAM on a pgproto3.Frontend), and checks each
//     member's ServerSignature, so it only talks to servers that hold U's
//     verifier. This is how PgBouncer passes SCRAM through.
//
// What the proxy holds: verifiers (what pg_authid holds, read per
// connection) and, for the life of a client session, that client's
// ClientKey in memory. The ClientKey logs in as the user but is not the
// password: it cannot be turned back into the password, and it stops
// working when the password changes (the salt changes with it).
//
// The pure core (ParseVerifier, MockVerifier, Server, Client,
// ErrorResponse) does no I/O and reads no clock; randomness (nonces) comes
// from an io.Reader the caller passes. The effects (ServeSCRAM,
// LoginSCRAM, FetchVerifier) are thin loops around it. Nothing here is
// safe for concurrent use by several goroutines: one Server or Client
// belongs to one connection's goroutine.
//
// Not here: TLS (the proxy terminates it, internal/proxy/prototls.go) and
// SCRAM-SHA-256-PLUS (channel binding; a client that insists on it is
// refused with a clear error), md5 and trust (only where explicitly
// configured, by the proxy).
package pgauth
