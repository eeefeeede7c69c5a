package pgauth

import (
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/holdfast/holdfast/internal/quote"
)

// MaxSASLMessageLen is the longest SASL message PostgreSQL accepts
// (PG_MAX_AUTH_TOKEN_LENGTH); SCRAM's are about 100 bytes.
const MaxSASLMessageLen = 65535

// ServeSCRAM runs the server side of SCRAM-SHA-256 with a client on be,
// whose StartupMessage the caller has read (its "user" is
// ServerOptions.Username): AuthenticationSASL, the client's
// SASLInitialResponse, AuthenticationSASLContinue, its SASLResponse and,
// when the proof is right, AuthenticationSASLFinal. It returns the
// client's credentials and leaves AuthenticationOk to the caller, which
// may first log in to a member with them (PostgreSQL, too, may still
// refuse a client after SASLFinal, e.g. for a database that does not
// exist).
//
// When the exchange fails (ErrAuthFailed, ErrProtocol, an unexpected
// message) ServeSCRAM has sent the client ErrorResponse's FATAL answer
// and the caller should close the connection. I/O errors are returned as
// they are: the client is gone. It blocks on be's reads and writes; set a
// deadline on the connection to bound a client that stops talking, and a
// maximum body length on be (be.SetMaxBodyLen; SCRAM messages are well
// under MaxSASLMessageLen) to bound one that sends a huge message.
func ServeSCRAM(be *pgproto3.Backend, o ServerOptions) (Credentials, error) {
	s, err := NewServer(o)
	if err != nil {
		return Credentials{}, err
	}
	fail := func(err error) (Credentials, error) {
		be.Send(ErrorResponse(o.Username, err))
		if ferr := be.Flush(); ferr != nil {
			return Credentials{}, fmt.Errorf("%w (and sending the error failed: %v)", err, ferr)
		}
		return Credentials{}, err
	}
	if err := send(be, &pgproto3.AuthenticationSASL{AuthMechanisms: []string{Mechanism}}, pgproto3.AuthTypeSASL); err != nil {
		return Credentials{}, fmt.Errorf("SCRAM: send AuthenticationSASL: %w", err)
	}
	msg, err := be.Receive()
	if err != nil {
		return Credentials{}, fmt.Errorf("SCRAM: receive SASLInitialResponse: %w", err)
	}
	initial, ok := msg.(*pgproto3.SASLInitialResponse)
	if !ok {
		return fail(protocolErr("SASLInitialResponse", "expected it, got %T", msg))
	}
	if initial.AuthMechanism != Mechanism {
		return fail(protocolErr("SASLInitialResponse", "the client selected the mechanism %s; this server offers only %s", quote.Value(initial.AuthMechanism), Mechanism))
	}
	first, err := s.ClientFirst(initial.Data)
	if err != nil {
		return fail(err)
	}
	if err := send(be, &pgproto3.AuthenticationSASLContinue{Data: first}, pgproto3.AuthTypeSASLContinue); err != nil {
		return Credentials{}, fmt.Errorf("SCRAM: send AuthenticationSASLContinue: %w", err)
	}
	if msg, err = be.Receive(); err != nil {
		return Credentials{}, fmt.Errorf("SCRAM: receive SASLResponse: %w", err)
	}
	resp, ok := msg.(*pgproto3.SASLResponse)
	if !ok {
		return fail(protocolErr("SASLResponse", "expected it, got %T", msg))
	}
	final, cred, err := s.ClientFinal(resp.Data)
	if err != nil {
		return fail(err)
	}
	if err := send(be, &pgproto3.AuthenticationSASLFinal{Data: final}, pgproto3.AuthTypeSASLFinal); err != nil {
		return Credentials{}, fmt.Errorf("SCRAM: send AuthenticationSASLFinal: %w", err)
	}
	return cred, nil
}

// send sends an authentication request and tells be which response it
// asked for (the 'p' messages are told apart by context).
func send(be *pgproto3.Backend, msg pgproto3.BackendMessage, authType uint32) error {
	if err := be.SetAuthType(authType); err != nil {
		return err
	}
	be.Send(msg)
	return be.Flush()
}

// BackendError is a server's ErrorResponse during login: the proxy may
// pass it on to its client as it is (e.g. "database does not exist",
// "role is not permitted to log in", "too many connections").
type BackendError struct {
	Response pgproto3.ErrorResponse
}

func (e *BackendError) Error() string {
	return fmt.Sprintf("server refused the login: %s: %s (SQLSTATE %s)", e.Response.Severity, e.Response.Message, e.Response.Code)
}

// LoginSCRAM logs in to a PostgreSQL server as cred.Username with only
// the credentials Server recovered, on fe, after the caller has sent the
// StartupMessage (user = cred.Username): it answers AuthenticationSASL,
// AuthenticationSASLContinue and AuthenticationSASLFinal, checks the
// server's signature, and returns once AuthenticationOk has arrived. The
// messages that follow (ParameterStatus, BackendKeyData, ReadyForQuery)
// are left for the caller to read with fe — fe may already have buffered
// them, so the caller must keep reading through fe (not the raw
// connection) at least until ReadyForQuery.
//
// Errors: *BackendError when the server sent an ErrorResponse;
// ErrServerSignature, ErrStaleCredentials or ErrProtocol (see Client); an
// error naming the method when the server asks for anything but
// SCRAM-SHA-256 (trust included: a server that lets anyone in has not
// proven it is the user's database); otherwise an I/O error. It blocks on
// fe's reads and writes; set a deadline on the connection.
func LoginSCRAM(fe *pgproto3.Frontend, c *Client) error {
	const op = "SCRAM login"
	msg, err := receiveAuth(fe)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	sasl, ok := msg.(*pgproto3.AuthenticationSASL)
	if !ok {
		return fmt.Errorf("%s: the server asked for %s, not %s", op, authName(msg), Mechanism)
	}
	if !slices.Contains(sasl.AuthMechanisms, Mechanism) {
		return fmt.Errorf("%s: the server offers SASL mechanisms %q, not %s", op, sasl.AuthMechanisms, Mechanism)
	}
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: Mechanism, Data: c.First()})
	if err := fe.Flush(); err != nil {
		return fmt.Errorf("%s: send SASLInitialResponse: %w", op, err)
	}
	if msg, err = receiveAuth(fe); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		return fmt.Errorf("%s: expected AuthenticationSASLContinue, got %s", op, authName(msg))
	}
	final, err := c.ServerFirst(cont.Data)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	fe.Send(&pgproto3.SASLResponse{Data: final})
	if err := fe.Flush(); err != nil {
		return fmt.Errorf("%s: send SASLResponse: %w", op, err)
	}
	if msg, err = receiveAuth(fe); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	fin, ok := msg.(*pgproto3.AuthenticationSASLFinal)
	if !ok {
		return fmt.Errorf("%s: expected AuthenticationSASLFinal, got %s", op, authName(msg))
	}
	if err := c.ServerFinal(fin.Data); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if msg, err = receiveAuth(fe); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if _, ok := msg.(*pgproto3.AuthenticationOk); !ok {
		return fmt.Errorf("%s: expected AuthenticationOk, got %s", op, authName(msg))
	}
	return nil
}

// receiveAuth receives the next message; an ErrorResponse becomes a
// *BackendError (copied: fe reuses its messages).
func receiveAuth(fe *pgproto3.Frontend) (pgproto3.BackendMessage, error) {
	msg, err := fe.Receive()
	if err != nil {
		return nil, fmt.Errorf("receive: %w", err)
	}
	if e, ok := msg.(*pgproto3.ErrorResponse); ok {
		return nil, &BackendError{Response: *e}
	}
	return msg, nil
}

// authName names a message a server sent during login.
func authName(msg pgproto3.BackendMessage) string {
	switch msg.(type) {
	case *pgproto3.AuthenticationOk:
		return "no authentication (AuthenticationOk: trust)"
	case *pgproto3.AuthenticationCleartextPassword:
		return "a cleartext password"
	case *pgproto3.AuthenticationMD5Password:
		return "an md5 password"
	case *pgproto3.AuthenticationGSS, *pgproto3.AuthenticationGSSContinue:
		return "GSSAPI"
	default:
		return fmt.Sprintf("%T", msg)
	}
}
