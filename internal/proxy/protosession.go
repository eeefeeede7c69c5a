package proxy

// Session mode (ModeSession) on the read-write listener: the proxy speaks
// the PostgreSQL protocol to the client and to the primary, authenticates
// the client itself (internal/pgauth), follows the session's state
// (internal/pgsession) and, when the primary changes, moves the session to
// a new connection on the new primary at its next boundary instead of
// closing it.
//
// Each session is served by one goroutine (run) plus one reader goroutine
// per connection (client, current backend). The session's state is
// guarded by its lock; a reader handles each message it reads itself,
// under that lock (inline), so that a request and its answer cost no
// hand-off between goroutines, and run does what no message brings
// (route changes, timers, room in an outbox). A reader waits until its
// message is acknowledged before it reads the next (pgproto3 reuses its
// message values). A client message that cannot be passed on yet — no
// primary, a switchover due — is simply not acknowledged: the client's
// next message stays unread, held, until a primary takes it.
// Writes go through an outbox per connection, written out by a goroutine
// of its own: the session goroutine never blocks on a write, so the two
// directions never wait for each other (a client pipelining without
// reading, with the server waiting for its answers to be read, stalled
// the session before). A message bound for a peer whose outbox is full
// is not acknowledged until the outbox has room: each direction's
// backpressure is its own.
//
// Fail-closed rules are those of the pass-through path: a backend
// connection is made visible to enforce under Proxy.mu at the moment its
// member is checked to be Primary, and enforce cuts (closes) every
// session's backend connection to a member that is no longer Primary; the
// session then moves, or closes, on its own goroutine.

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/holdfast/holdfast/internal/pgauth"
	"github.com/holdfast/holdfast/internal/pgsession"
)

// SQLSTATEs and texts of the errors session mode sends clients.
const (
	// codeUnknownCompletion (40003, statement_completion_unknown) answers a
	// request that was in flight when the connection to the primary was
	// lost: it may or may not have taken effect.
	codeUnknownCompletion = "40003"
	// codeRolledBack (40001, serialization_failure) answers a request that
	// was in flight inside a transaction block, before its COMMIT, when the
	// connection to the primary was lost: the transaction is known not to
	// have committed. Of the codes that say "the transaction was rolled
	// back; running it again is safe", it is the one clients and pgbench
	// retry (or count as failed) instead of giving up on the connection;
	// the message says what happened. See docs/architecture.md.
	codeRolledBack = "40001"
	// codeInFailedBlock (25P02) answers a later request of a block that
	// was lost, as a server answers one in a failed block.
	codeInFailedBlock = "25P02"
	// codeCannotConnectNow (57P03) refuses a new client while there is no
	// primary to log in to.
	codeCannotConnectNow = "57P03"
	codeFeatureNotSupp   = "0A000"
	codeProtocolViol     = "08P01"
	codeInvalidAuthSpec  = "28000"
	codeInternal         = "XX000"
	sevError             = "ERROR"
	sevFatal             = "FATAL"
	msgPrefix            = "holdfast proxy: "
)

// flushThreshold bounds the bytes session mode queues for one peer
// before it writes them out. Messages are batched while more of the same
// burst is already buffered (or, client to server, until Sync or Flush);
// without this bound a long result set (pg_dump, a large SELECT, COPY OUT)
// or a long pipeline of extended-protocol messages would accumulate in
// the proxy's memory up to its full size, with no backpressure on the
// sender.
const flushThreshold = 64 << 10

// maxClientMessageLen bounds the body of one message from an
// authenticated client: PostgreSQL's own limit (PQ_LARGE_MESSAGE_LIMIT,
// 1 GB - 1), so that every message a server would accept (a large Bind
// or CopyData) still passes, while a corrupt or hostile length cannot make
// the proxy allocate without limit. (pgproto3 reads a whole message into
// memory before it is passed on.)
const maxClientMessageLen = 0x3fffffff

// maxServerMessageLen bounds the body of one message from a server the
// proxy logged in to (frameSource's split): the same limit.
const maxServerMessageLen = maxClientMessageLen

// smallMessageLen is what wireLen counts for a message whose size is not
// worth computing (a few fields; it is at most a few hundred bytes).
const smallMessageLen = 64

// wireLen is about the encoded size of m (a protocol message), for
// flushThreshold: exact for the messages that may be large — rows, COPY
// data, queries, Parse, Bind —, smallMessageLen for the others.
func wireLen(m any) int {
	const header = 5 // type byte and length
	switch m := m.(type) {
	case *rawServerMsg:
		return len(m.b)
	case *pgproto3.DataRow:
		n := header + 2
		for _, v := range m.Values {
			n += 4 + len(v)
		}
		return n
	case *pgproto3.CopyData:
		return header + len(m.Data)
	case *pgproto3.Query:
		return header + len(m.String) + 1
	case *pgproto3.Parse:
		return header + len(m.Name) + len(m.Query) + 4 + 4*len(m.ParameterOIDs)
	case *pgproto3.Bind:
		n := header + len(m.DestinationPortal) + len(m.PreparedStatement) + 8 +
			2*len(m.ParameterFormatCodes) + 2*len(m.ResultFormatCodes)
		for _, v := range m.Parameters {
			n += 4 + len(v)
		}
		return n
	case *pgproto3.FunctionCall:
		n := header + 10 + 2*len(m.ArgFormatCodes)
		for _, v := range m.Arguments {
			n += 4 + len(v)
		}
		return n
	}
	return smallMessageLen
}

// rawServerMsg is a server message the loop hands on as the bytes it
// arrived as (type byte, length, body), not decoded and encoded again: a
// row or a row description, whose content neither the tracker nor the
// session reads (rawServerType). The tracker is shown an empty message of
// the same type (tracked). One per session, reused: b is valid until the
// loop's next read from the server.
type rawServerMsg struct {
	b    []byte
	row  pgproto3.DataRow
	desc pgproto3.RowDescription
}

// rawServerType says whether the loop hands a server message of type t on
// as raw bytes (see rawServerMsg).
func rawServerType(t byte) bool { return t == 'D' || t == 'T' }

func (m *rawServerMsg) Backend() {}

// Decode is not used: a rawServerMsg is made from bytes already split.
func (m *rawServerMsg) Decode([]byte) error {
	return errors.New("decode a raw server message: not supported")
}

// Encode appends the message's bytes as they arrived.
func (m *rawServerMsg) Encode(dst []byte) ([]byte, error) { return append(dst, m.b...), nil }

// tracked is the message of m's type the tracker is shown.
func (m *rawServerMsg) tracked() pgproto3.BackendMessage {
	if m.b[0] == 'D' {
		return &m.row
	}
	return &m.desc
}

// lostBlockGrace is how long after losing the server connection of a
// session idle inside a transaction block the proxy waits for the
// client's next request before closing the session. The proxy cannot tell
// a client that is idle in its transaction from one whose next statement
// is on its way (sent just before the loss, not read yet): a request that
// arrives within the grace fails with the block (40001) and the session
// survives; a session silent for longer is closed with the FATAL 57P01
// of an open transaction. Found by TestSessionProxyPgbench: pgbench sends
// each statement of its transaction the moment the previous one is
// answered, and a kill -9 caught a client in that gap.
const lostBlockGrace = 250 * time.Millisecond

// shutdownCodes are the FATAL errors a server sends when it ends every
// session because it is stopping (admin_shutdown, also for a fast
// shutdown and after the postmaster died; crash_shutdown;
// cannot_connect_now). A session that gets one moves to the next primary
// instead of being closed. pg_terminate_backend() also sends 57P01: an
// idle session ended that way is moved too (see docs/architecture.md).
var shutdownCodes = map[string]bool{"57P01": true, "57P02": true, "57P03": true}

// event is a message (or the end) of one of a session's connections.
type event struct {
	fromClient bool
	gen        int // backend events: the backendConn's gen
	msg        any // pgproto3.FrontendMessage or pgproto3.BackendMessage
	more       bool
	err        error
	ack        chan struct{} // capacity 1: lets the reader read the next message
}

// protoSession is one client session in session mode. All fields but bc
// are used only by whoever holds the session's lock (run, or a reader
// handling its message: see inline); bc is also written under Proxy.mu
// (enforce, Status and cancel requests read it there).
type protoSession struct {
	p      *Proxy
	place  placement // the members the session may run on (primary, or the read-only pool)
	log    *slog.Logger
	client net.Conn // written under the lock and Proxy.mu (the loop makes it again when it hands the session back)
	out    *outbox  // be's writer
	be     *pgproto3.Backend
	csrc   *frameSource  // be's reader (see frameSource)
	cack   chan struct{} // the client reader's acknowledgements (capacity 1), kept across hand-overs to the loop
	st     *pgsession.Session
	cred   pgauth.Credentials
	key    pgproto3.BackendKeyData // the cancel key the client knows (the proxy's)

	bc   *backendConn // nil while detached
	gens int          // backend connections so far

	done chan struct{} // closed when the session ends

	// lock guards the session's state between the goroutines that act on
	// it: run, and the readers that handle their own messages (inline).
	// It is a channel of capacity 1 (full: held) so that a reader can
	// give up waiting for it when its connection is let go or the session
	// ends. The session goroutine holds it from the start until run first
	// waits.
	lock    chan struct{}
	kick    chan struct{}   // capacity 1: a reader left run something to do (see inline)
	over    bool            // the session is over: run returns, readers stop (under lock)
	ctx     context.Context // run's, for the readers' inline steps
	client1 event           // the client's message pending refers to (reused: no allocation per message)
	raw     rawServerMsg    // the loop's undecoded server message (see rawServerMsg)
	parker  *lease          // the pooled connection's lease whose reader holds the lock now (see readPooled)

	pending *event        // a client message not passed on yet
	toFull  bool          // pending waits for room in bc's outbox
	heldAck chan struct{} // a server message's acknowledgement, held while the client's outbox is full
	// loopAck is the acknowledgement of the message the loop is handling
	// (loopStep; nil otherwise): give does not send it but notes it in
	// loopAcked, which loopStep reads — the same outcome as a send and
	// the loop's taking it back, without two channel operations per
	// message. An acknowledgement held or left pending is the channel
	// itself, given for real once the session has left the loop.
	loopAck   chan struct{}
	loopAcked bool
	afterStep func()    // tests: called between step and the wait (a change may come in between)
	heldSince time.Time // when pending began to be held; zero when not held
	holding   bool      // counted in Proxy.holding
	awaiting  int       // Query, Sync and FunctionCall passed on and not answered by ReadyForQuery yet
	injected  int       // Syncs the tracker injected (lazy re-prepare) not answered yet
	unsynced  bool      // extended-protocol messages passed on since the last Sync
	discard   bool      // a lost batch: drop the client's messages up to its Sync, as a server does after an error
	toClient  int       // bytes (wireLen) sent to the client since its last flush (flushClient)
	toBackend int       // bytes (wireLen) sent to bc since its last flush
	discardTx byte      // the transaction status to answer that Sync with
	retryAt   time.Time // no attach attempt before this (backoff)
	retry     time.Duration

	// idleTxLost: when the server connection was lost while the session
	// sat in a transaction block with nothing in flight (zero: not so);
	// idleTxCause why. See lostBlockGrace.
	idleTxLost  time.Time
	idleTxCause error

	rt        Routes          // the routes as of rtChanged (see routes)
	rtChanged <-chan struct{} // closed when rt may be out of date; nil: never computed

	pool sessionPool // transaction pooling (pool.go)

	// The session's event loop (protoloop.go); all under lock.
	sl       *sessLoop    // where the session goes when steady; nil: never (switched off)
	parking  bool         // the readers are stopping to hand the session to sl
	cParked  bool         // the client's reader has parked
	parkedBC *backendConn // the server connection whose reader has parked
	cPast    bool         // the client's read deadline is in the past (set by parking)
	inLoop   bool         // sl serves the session's sockets
	cfd      int          // the loop's duplicate of the client's socket (inLoop)
	loopBC   *backendConn // the server connection sl serves (inLoop; nil: a pooled session between transactions)
	ctok     uint64       // the client socket's epoll token (inLoop)
	// keptUnder is the routes' change channel (rtChanged) under which
	// loopKeeps last found loopBC's member to be where the session stays
	// (nil: not found so since the session entered the loop). Until it
	// is closed the routes, and so that finding, stand.
	keptUnder <-chan struct{}
}

// serveSession serves one client of listener (ListenerRW or ListenerRO)
// in session mode: the startup (TLS when the proxy has a certificate, see
// receiveStartup; a CancelRequest passed on), a wait for a member to run
// on (the primary, or for the read-only listener a replica of the pool or
// the primary by fallback; at most HoldTimeout), the auth query there,
// the SCRAM exchange with the client, the login to that member as the
// client, and then the session (run) until either side ends it. A
// read-only session logs in with default_transaction_read_only=on (see
// placement.stays).
func (p *Proxy) serveSession(ctx context.Context, raw net.Conn, listener string) {
	defer raw.Close()
	place := placement{listener: listener, fallback: p.o.ROFallbackToPrimary}
	log := p.log.With("client", raw.RemoteAddr().String(), "listener", listener)
	// A client silent during its startup must not delay the proxy's stop.
	stopStartup := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(longAgo) })
	defer stopStartup()
	_ = raw.SetDeadline(time.Now().Add(clientStartupTimeout))
	// c is the client's connection from here on: raw, or TLS over it.
	c, out, be, csrc, startup, err := p.receiveStartup(ctx, raw, listener)
	if err != nil || startup == nil {
		if err != nil {
			log.Debug("session startup", "err", err)
		}
		return
	}
	user := startup.Parameters["user"]
	fatal := func(code, msg string) {
		be.Send(&pgproto3.ErrorResponse{Severity: sevFatal, SeverityUnlocalized: sevFatal, Code: code, Message: msgPrefix + msg})
		_ = be.Flush()
	}
	if user == "" {
		fatal(codeInvalidAuthSpec, "no PostgreSQL user name specified in startup packet")
		return
	}
	if _, ok := startup.Parameters["replication"]; ok {
		fatal(codeFeatureNotSupp, "replication connections are not supported by the session-mode proxy; connect to a member")
		return
	}
	if _, ok := startup.Parameters["database"]; !ok {
		startup.Parameters["database"] = user
	}
	log = log.With("user", user)
	if place.readOnly() {
		// Whatever member a read-only session runs on — a replica promoted
		// under it, the primary by fallback — it writes nothing unless
		// the client itself turns this off.
		startup.Parameters[roSetting] = "on"
	}

	// Wait for a member: the client waits for its authentication request.
	_ = c.SetDeadline(time.Time{})
	holdUntil := time.Now().Add(p.o.HoldTimeout)
	t, why := p.awaitTarget(ctx, place, holdUntil)
	if t == nil {
		p.m.refused.WithLabelValues(listener, ReasonHoldTimeout).Inc()
		fatal(codeCannotConnectNow, "no "+place.server()+" to connect to: "+why)
		return
	}
	auth := p.auth
	if place.readOnly() {
		auth = p.authRO
	}
	lookup, err := auth.lookup(ctx, *t, user)
	if err != nil {
		log.Warn("auth query failed; refusing the client", "backend", t.Name, "err", err)
		p.m.refused.WithLabelValues(listener, ReasonAuthQuery).Inc()
		be.Send(pgauth.ErrorResponse(user, err))
		_ = be.Flush()
		return
	}
	_ = c.SetDeadline(time.Now().Add(clientStartupTimeout))
	be.SetMaxBodyLen(pgauth.MaxSASLMessageLen)
	csrc.fb.maxBody = pgauth.MaxSASLMessageLen
	so := p.o.Session
	cred, err := pgauth.ServeSCRAM(be, pgauth.ServerOptions{Username: user, Verifier: lookup.Verifier,
		MockSecret: so.MockSecret, MockIterations: so.MockIterations, Rand: so.Rand})
	if err != nil {
		p.m.refused.WithLabelValues(listener, ReasonAuthFailed).Inc()
		log.Info("client authentication failed", "err", err, "detail", lookup.Reason)
		return
	}
	be.SetMaxBodyLen(maxClientMessageLen)
	csrc.fb.maxBody = maxClientMessageLen
	_ = c.SetDeadline(time.Time{})

	ps := &protoSession{p: p, place: place, log: log, client: c, out: out, be: be, csrc: csrc, cack: make(chan struct{}, 1),
		st: pgsession.New(startup), cred: cred, done: make(chan struct{}), retry: dialRetryMin, lock: heldLock(), cfd: -1}
	ps.sl = p.sessLoop()
	if !p.registerProto(ps) {
		fatal(codeCannotConnectNow, "the proxy is stopping")
		return
	}
	defer ps.end()
	login := ps.firstLogin
	if ps.pooled() {
		login = ps.firstLoginPooled
	}
	if !login(ctx, *t, startup.Parameters, holdUntil) {
		return
	}
	stopStartup()
	ps.run(ctx)
}

// receiveStartup reads the client's startup packet on c. An SSLRequest
// is answered per the client TLS policy: 'S' and the TLS handshake, after
// which the rest is read over TLS, or 'N'; a GSSENCRequest is answered
// 'N'. A CancelRequest is passed on (then the startup is nil). A protocol
// version above 3.0, or _pq_ options, are answered with
// NegotiateProtocolVersion; a startup packet in clear when TLS is
// required is answered with FATAL 28000 (and an error). It returns the
// connection to go on with (c, or a TLS server over it), the outbox that
// writes to it (not started), its Backend and the Backend's reader (on
// whole messages from the first after the startup packet when the client
// is in clear and sent nothing past its startup packet; else a
// pass-through).
//
// Each packet's first 8 bytes (length, code) are read from the
// connection itself, not through a buffer: nothing a client sends after
// its SSLRequest and before the 'S' can be taken for part of the
// encrypted stream (CVE-2021-23214's buffer stuffing).
func (p *Proxy) receiveStartup(ctx context.Context, c net.Conn, listener string) (net.Conn, *outbox, *pgproto3.Backend, *frameSource, *pgproto3.StartupMessage, error) {
	onTLS := false
	for {
		var head [encRequestLen]byte
		if _, err := io.ReadFull(c, head[:]); err != nil {
			return c, nil, nil, nil, nil, fmt.Errorf("receive startup packet: %w", err)
		}
		if binary.BigEndian.Uint32(head[:4]) == encRequestLen {
			var answer byte
			var err error
			switch binary.BigEndian.Uint32(head[4:]) {
			case sslRequestCode:
				answer, err = p.tls.policy.onSSLRequest(onTLS)
			case gssEncRequestCode:
				answer, err = p.tls.policy.onGSSENCRequest(onTLS)
			}
			if err != nil {
				return c, nil, nil, nil, nil, fmt.Errorf("receive startup packet: %w", err)
			}
			if answer != 0 {
				if _, err := c.Write([]byte{answer}); err != nil {
					return c, nil, nil, nil, nil, fmt.Errorf("answer encryption request: %w", err)
				}
				if answer == 'S' {
					tc := tls.Server(c, p.tls.client)
					if err := tc.HandshakeContext(ctx); err != nil {
						return c, nil, nil, nil, nil, fmt.Errorf("client TLS handshake: %w", err)
					}
					c, onTLS = tc, true
				}
				continue
			}
		}
		out := newOutbox(c)
		src := newFrameSource(c, io.MultiReader(bytes.NewReader(head[:]), c), maxClientMessageLen)
		be := pgproto3.NewBackend(src, out)
		m, err := be.ReceiveStartupMessage()
		if err != nil {
			return c, nil, nil, nil, nil, fmt.Errorf("receive startup packet: %w", err)
		}
		if !onTLS && src.rawN == int(binary.BigEndian.Uint32(head[:4])) {
			// Exactly the startup packet was read: the decoder holds
			// nothing more, and the next byte starts a message.
			src.toFrames()
		}
		switch m := m.(type) {
		case *pgproto3.CancelRequest:
			p.passCancel(ctx, m)
			return c, out, be, src, nil, nil
		case *pgproto3.StartupMessage:
			if err := p.tls.policy.admitStartup(onTLS); err != nil {
				p.m.refused.WithLabelValues(listener, ReasonTLSRequired).Inc()
				be.Send(&pgproto3.ErrorResponse{Severity: sevFatal, SeverityUnlocalized: sevFatal, Code: codeInvalidAuthSpec, Message: msgPrefix + err.Error()})
				_ = be.Flush()
				return c, out, be, src, nil, fmt.Errorf("refuse a clear-text client: %w", err)
			}
			params := map[string]string{}
			var unknown []string
			for k, v := range m.Parameters {
				if strings.HasPrefix(k, "_pq_.") {
					unknown = append(unknown, k)
					continue
				}
				params[k] = v
			}
			if m.ProtocolVersion != pgproto3.ProtocolVersion30 || len(unknown) > 0 {
				be.Send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unknown})
			}
			return c, out, be, src, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params}, nil
		default:
			return c, nil, nil, nil, nil, fmt.Errorf("receive startup packet: unexpected %T", m)
		}
	}
}

// awaitPrimary waits until Route names a primary to route new read-write
// connections to, or until deadline: it returns the primary, or nil and
// why there is none (see awaitTarget).
func (p *Proxy) awaitPrimary(ctx context.Context, deadline time.Time) (*Target, string) {
	return p.awaitTarget(ctx, placement{listener: ListenerRW}, deadline)
}

// addHolding counts a connection or session that waits for a primary (so
// that control re-reads the store every HeldPoll without a role watch).
func (p *Proxy) addHolding(d int) {
	p.mu.Lock()
	p.holding += d
	p.mu.Unlock()
	if d > 0 {
		select {
		case p.heldStart <- struct{}{}:
		default:
		}
	}
}

// registerProto gives ps its cancel key and makes it known; false when the
// proxy is stopping.
func (p *Proxy) registerProto(ps *protoSession) bool {
	var b [8]byte
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != stateRunning {
		return false
	}
	for {
		if _, err := io.ReadFull(p.o.Session.Rand, b[:]); err != nil {
			return false
		}
		pid := binary.BigEndian.Uint32(b[:4]) & 0x7fffffff
		if _, taken := p.cancelKey[pid]; pid != 0 && !taken {
			ps.key = pgproto3.BackendKeyData{ProcessID: pid, SecretKey: append([]byte(nil), b[4:]...)}
			p.cancelKey[pid] = ps
			p.protos[ps] = struct{}{}
			return true
		}
	}
}

// passCancel passes a client's cancel request to the server its session
// runs on, with that server's key — only while the session may stay on
// that member (a read-write session: while it is the primary). Nothing is
// answered to the client (nor does PostgreSQL).
func (p *Proxy) passCancel(ctx context.Context, m *pgproto3.CancelRequest) {
	p.mu.Lock()
	ps := p.cancelKey[m.ProcessID]
	var bc *backendConn
	if ps != nil && subtle.ConstantTimeCompare(ps.key.SecretKey, m.SecretKey) == 1 && ps.bc != nil &&
		ps.place.stays(p.routesLocked(time.Now()), ps.bc.t, ps.bc.fallback) {
		bc = ps.bc
	}
	p.mu.Unlock()
	if bc == nil || bc.key == nil {
		p.log.Debug("cancel request for no session on a member it may stay on; ignored")
		return
	}
	cctx, cancel := context.WithTimeout(ctx, cancelTimeout)
	defer cancel()
	conn, err := p.dialer.DialContext(cctx, "tcp", bc.t.Addr)
	if err != nil {
		p.log.Debug("pass a cancel request on", "backend", bc.t.Name, "err", err)
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(cancelTimeout))
	// The cancel request travels like the session's own connection: a
	// member that requires TLS (hostssl) takes it over TLS as well.
	if conn, err = p.negotiateTLS(cctx, conn, bc.t); err != nil {
		p.log.Debug("pass a cancel request on", "backend", bc.t.Name, "err", err)
		return
	}
	b, err := (&pgproto3.CancelRequest{ProcessID: bc.key.ProcessID, SecretKey: bc.key.SecretKey}).Encode(nil)
	if err == nil {
		_, err = conn.Write(b)
	}
	if err == nil {
		// The server closes the connection once it has read the request.
		_, _ = conn.Read(make([]byte, 1))
	}
	p.log.Debug("passed a cancel request on", "backend", bc.t.Name, "err", err)
}

// fenceProtosLocked cuts every session's backend connection to a member
// it may not stay on (placement.stays: for a read-write session, one that
// is not r's Primary); the sessions notice on their own goroutines
// (woken by p.changed) and move or close. p.mu must be held. It returns
// how many it cut.
func (p *Proxy) fenceProtosLocked(r Routes) int {
	n := 0
	for ps := range p.protos {
		if ps.bc != nil && !ps.place.stays(r, ps.bc.t, ps.bc.fallback) {
			ps.bc.release(false)
			n++
		}
	}
	p.pool.closeIdleLocked(r)
	return n
}

// routes is the current routing decision and the channel closed at its
// next change. The decision is computed again only after that channel
// closed: the routes change only when enforce re-evaluates them (a new
// view, the view turning stale, a grant ending — enforce is scheduled
// for each), and enforce closes the channel. Computing Route for every
// message cost about a sixth of the session path's CPU under pgbench -S.
func (ps *protoSession) routes() (Routes, <-chan struct{}) {
	if ps.rtChanged != nil {
		select {
		case <-ps.rtChanged:
		default:
			return ps.rt, ps.rtChanged
		}
	}
	ps.p.mu.Lock()
	defer ps.p.mu.Unlock()
	ps.rt, ps.rtChanged = ps.p.routesLocked(time.Now()), ps.p.changed
	return ps.rt, ps.rtChanged
}

// routedTo says whether r sends new read-write connections to t.
func routedTo(r Routes, t Target) bool { return r.RWAction == ActRoute && r.RW != nil && *r.RW == t }

// firstLogin logs in to t as the client (trying again, on the member
// the routes name then, until holdUntil), tells the client AuthenticationOk,
// and relays the rest of the server's startup with the proxy's cancel key
// in place of the server's. False when the session is over.
func (ps *protoSession) firstLogin(ctx context.Context, t Target, startup map[string]string, holdUntil time.Time) bool {
	p := ps.p
	var bc *backendConn
	for {
		var err error
		bc, err = ps.loginWatched(ctx, t, startup)
		if err == nil {
			break
		}
		var be *pgauth.BackendError
		switch {
		case errors.As(err, &be) && !errors.Is(err, errLoginRetry):
			ps.log.Info("the member refused the client's login", "backend", t.Name, "err", err)
			ps.be.Send(&be.Response)
			_ = ps.flushClient()
			return false
		case !errors.Is(err, errLoginRetry):
			ps.log.Warn("log in to the member as the client", "backend", t.Name, "err", err)
			ps.fatal(codeInternal, "could not log in to the "+ps.place.server()+": "+err.Error())
			return false
		}
		ps.log.Debug("log in to the member as the client; trying again", "backend", t.Name, "err", err)
		select {
		case <-time.After(ps.retry):
		case <-ctx.Done():
			return false
		}
		ps.retry = min(2*ps.retry, dialRetryMax)
		next, why := p.awaitTarget(ctx, ps.place, holdUntil)
		if next == nil || time.Now().After(holdUntil) {
			ps.fatal(codeCannotConnectNow, "no "+ps.place.server()+" took the connection: "+why)
			return false
		}
		t = *next
	}
	ps.retry = dialRetryMin
	ps.be.Send(&pgproto3.AuthenticationOk{})
	for {
		m, err := bc.fe.Receive()
		if err != nil {
			bc.release(false)
			ps.fatal(codeCannotConnectNow, "the "+ps.place.server()+" broke the connection during its startup — reconnect")
			return false
		}
		_, _ = ps.st.Backend(m)
		switch m := m.(type) {
		case *pgproto3.BackendKeyData:
			bc.key = &pgproto3.BackendKeyData{ProcessID: m.ProcessID, SecretKey: append([]byte(nil), m.SecretKey...)}
			ps.be.Send(&ps.key)
			continue
		case *pgproto3.ErrorResponse:
			ps.be.Send(m)
			_ = ps.flushClient()
			bc.release(false)
			return false
		default:
			ps.be.Send(m)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if err := ps.flushClient(); err != nil {
		bc.release(true)
		return false
	}
	_ = bc.conn.SetDeadline(time.Time{})
	if !ps.publish(bc) {
		// The routes changed meanwhile: the session starts detached and
		// moves at once.
		bc.release(true)
	}
	p.m.routed.WithLabelValues(ps.place.listener, t.Name).Inc()
	ps.log.Debug("session started", "backend", t.Name)
	return true
}

// loginWatched is Proxy.login abandoned (errLoginRetry) as soon as t stops
// being the primary (read-only: leaves the pool).
func (ps *protoSession) loginWatched(ctx context.Context, t Target, startup map[string]string) (*backendConn, error) {
	lctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if ps.place.readOnly() {
		go ps.p.watchPool(lctx, cancel, ps.place, t)
	} else {
		go ps.p.watchGrant(lctx, cancel, t)
	}
	bc, err := ps.p.login(lctx, t, ps.cred, startup)
	if err != nil && errors.Is(context.Cause(lctx), errGrantRevoked) {
		return nil, fmt.Errorf("log in to %s: %w: %w", t.Name, errLoginRetry, errGrantRevoked)
	}
	if err == nil {
		ps.adoptLogin(bc)
	}
	return bc, err
}

// publish makes bc the session's backend connection, visible to enforce,
// if its member is still the primary (read-only: still a target of the
// pool; checked under the lock enforce holds, so that no connection to a
// demoted member, or one that left the pool, slips through), and starts
// its reader. False: bc is not used.
func (ps *protoSession) publish(bc *backendConn) bool {
	if !ps.claim(bc) {
		return false
	}
	bc.out.start()
	ps.startReader(bc)
	return true
}

// claim is publish but for the reader and writer: the loop serves a
// connection it claims (loopAttachPooled).
func (ps *protoSession) claim(bc *backendConn) bool {
	p := ps.p
	p.mu.Lock()
	r := p.routesAsOfLocked(ps.rt, ps.rtChanged)
	ok := samePrimary(r.Primary, bc.t)
	if ps.place.readOnly() {
		var ts []Target
		ts, bc.fallback = ps.place.targets(r)
		ok = slices.Contains(ts, bc.t)
	}
	if ok {
		ps.gens++
		bc.gen = ps.gens
		ps.bc = bc
		ps.toBackend = 0
		p.perBackend[bc.t.Name]++
	}
	p.mu.Unlock()
	if ok {
		if bc.ack == nil {
			bc.ack = make(chan struct{}, 1)
		}
		// A pooled connection's last reader may have left an
		// acknowledgement nobody took: it must not stand for one of this
		// session's messages.
		select {
		case <-bc.ack:
		default:
		}
	}
	return ok
}

// detach lets the backend connection go (gracefully: Terminate, or not:
// it broke or was cut).
func (ps *protoSession) detach(graceful bool) *backendConn {
	bc := ps.unpublish()
	if bc == nil {
		return nil
	}
	ps.releaseEnd(bc, graceful)
	ps.toFull = false
	ps.releaseAck() // the reader it belongs to has stopped
	return bc
}

// unpublish undoes publish: the session has no server connection any
// more (it returns the one it had, nil if none).
func (ps *protoSession) unpublish() *backendConn {
	bc := ps.bc
	if bc == nil {
		return nil
	}
	ps.p.mu.Lock()
	ps.bc = nil
	if n, ok := ps.p.perBackend[bc.t.Name]; ok && n > 1 {
		ps.p.perBackend[bc.t.Name] = n - 1
	} else if ok {
		delete(ps.p.perBackend, bc.t.Name)
	}
	ps.p.mu.Unlock()
	return bc
}

// heldLock is a session lock (protoSession.lock) held by its creator.
func heldLock() chan struct{} {
	l := make(chan struct{}, 1)
	l <- struct{}{}
	return l
}

// lockOr takes the session's lock, unless stop is closed or the session
// ends first (false: the lock is not held).
func (ps *protoSession) lockOr(stop <-chan struct{}) bool {
	select {
	case ps.lock <- struct{}{}:
		return true
	case <-stop:
		return false
	case <-ps.done:
		return false
	}
}

func (ps *protoSession) unlock() { <-ps.lock }

// inline handles ev on its reader's goroutine, as run would: the
// event, then a step. In the steady state (a request passed on, an answer
// passed back) that is all, and the message costs no hand-off between
// goroutines: each direction's reader, woken by the network poller, does
// its message's work itself, under the session's lock. What only run
// waits for — a held message's timeout or a primary for it, room in an
// outbox, a backoff — and the end of the session are left to run, which
// is kicked. stop: the reader's connection was let go. False when the
// reader stops (the event was not handled, or the session is over).
func (ps *protoSession) inline(ev event, stop <-chan struct{}) bool {
	if !ps.lockOr(stop) {
		return false
	}
	return ps.inlineLocked(ev)
}

// inlineLocked is inline with the lock held; it releases it.
func (ps *protoSession) inlineLocked(ev event) bool {
	if ps.over {
		ps.parker = nil
		ps.unlock()
		return false
	}
	ps.abortPark()
	over := ps.handle(ev)
	if !over {
		over, _ = ps.step(ps.ctx)
	}
	if over {
		ps.over = true
	}
	needRun := over || ps.pending != nil || ps.heldAck != nil || ps.toFull || !ps.nextWake().IsZero()
	if _, rfq := ev.msg.(*pgproto3.ReadyForQuery); rfq && !needRun && !ev.fromClient && ev.err == nil &&
		(ps.bc != nil && ev.gen == ps.bc.gen || ps.bc == nil && ps.pooled()) {
		// Between requests (a pooled session's connection went back to
		// its pool with that answer): steady, perhaps.
		ps.maybeToLoop()
	}
	ps.parker = nil
	ps.unlock()
	if needRun {
		select {
		case ps.kick <- struct{}{}:
		default:
		}
	}
	return !over
}

// readClient handles the client's messages (inline), one at a time,
// until the client's connection ends or the session does, or it parks
// for the session's loop (readerTimeout). The next message is read only
// once this one is acknowledged (passed on): a held one keeps the
// client's next request unread. wait: first wait for the acknowledgement
// of a message the loop left held.
func (ps *protoSession) readClient(wait bool) {
	ack := ps.cack
	if wait {
		select {
		case <-ack:
		case <-ps.done:
			return
		}
	}
	for {
		m, err := ps.be.Receive()
		if err != nil && isDeadline(err) {
			switch ps.readerTimeout(nil) {
			case parkStop:
				return
			case parkGoOn:
				continue
			}
		}
		if !ps.inline(event{fromClient: true, msg: m, err: err, ack: ack}, nil) || err != nil {
			return
		}
		select {
		case <-ack:
		case <-ps.done:
			return
		}
	}
}

// readBackend handles bc's messages (inline), one at a time, until bc
// ends or is let go, or it parks for the session's loop (readerTimeout).
// The next message is read once this one is acknowledged (the
// acknowledgement is held while the client's outbox is full). wait:
// first wait for the acknowledgement of a message the loop left held.
func (ps *protoSession) readBackend(bc *backendConn, wait bool) {
	ack := bc.ack
	if wait && !ps.awaitAck(bc, nil) {
		return
	}
	for {
		if bc.src != nil && !bc.src.frames && bc.fe.ReadBufferLen() == 0 {
			// Between messages with nothing read ahead (the login's
			// last answer taken): from here on the decoder reads whole
			// messages (frameSource).
			bc.src.toFrames()
		}
		m, err := bc.fe.Receive()
		if err != nil && isDeadline(err) {
			switch ps.readerTimeout(bc) {
			case parkStop:
				return
			case parkGoOn:
				continue
			}
		}
		more := err == nil && (bc.fe.ReadBufferLen() > 0 || bc.src != nil && bc.src.buffered() > 0)
		if !ps.inline(event{gen: bc.gen, msg: m, more: more, err: err, ack: ack}, bc.stop) || err != nil {
			return
		}
		if !ps.awaitAck(bc, nil) {
			return
		}
	}
}

// awaitAck waits for the acknowledgement of bc's reader's last message;
// false when the reader is to stop instead: bc let go, the session over,
// or stop (a pooled connection's lease; nil: none) closed.
func (ps *protoSession) awaitAck(bc *backendConn, stop <-chan struct{}) bool {
	select {
	case <-bc.ack:
		return true
	case <-bc.stop:
	case <-ps.done:
	case <-stop:
	}
	return false
}

// run serves the session until it ends: relays messages both ways,
// feeding the tracker, and moves the session when the primary changes.
// The readers handle their own messages (inline); run steps the session
// whenever something else may let it go on — a change of the routes, a
// timer, room in an outbox, a reader's kick.
func (ps *protoSession) run(ctx context.Context) {
	if ps.lock == nil {
		ps.lock = heldLock()
	}
	if ps.kick == nil {
		ps.kick = make(chan struct{}, 1)
	}
	if ps.cack == nil {
		ps.cack = make(chan struct{}, 1)
	}
	ps.ctx = ctx
	// When the proxy stops, a write blocked on a peer that does not read
	// gives up within a second, so that Run returns.
	stop := context.AfterFunc(ctx, func() {
		ps.p.mu.Lock()
		bc, client := ps.bc, ps.client
		ps.p.mu.Unlock()
		if bc != nil {
			_ = bc.netConn().SetDeadline(time.Now().Add(stopWriteTimeout))
		}
		_ = client.SetWriteDeadline(time.Now().Add(stopWriteTimeout))
	})
	defer stop()
	ps.out.start()
	go ps.readClient(false)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	// The lock is held from here to each wait: the session goroutine has
	// held it since the session was made.
	room := false
	for {
		if ps.over {
			// Nothing ends a session its loop serves today (the loop hands
			// it back first); should anything, its descriptors and epoll
			// registrations must not outlive it, nor the client wait for
			// an end it never sees.
			ps.leaveLoop(false, false)
			ps.unlock()
			return
		}
		if room && !ps.out.blocked() {
			ps.releaseAck()
		}
		room = false
		over, changed := ps.step(ctx)
		if over {
			ps.over = true
			continue
		}
		if ps.afterStep != nil {
			ps.afterStep()
		}
		var wake <-chan time.Time
		if at := ps.nextWake(); !at.IsZero() {
			if timer == nil {
				timer = time.NewTimer(time.Until(at))
			} else {
				timer.Reset(time.Until(at))
			}
			wake = timer.C
		}
		// Room again in an outbox the session waits on: the held
		// acknowledgement (server to client) goes out when the client's
		// has room; the pending message (client to server) is tried
		// again by step.
		var clientRoom, serverRoom <-chan struct{}
		if ps.heldAck != nil {
			clientRoom = ps.out.readyChan()
		}
		if ps.toFull && ps.bc != nil {
			serverRoom = ps.bc.out.readyChan()
		}
		ps.unlock()
		select {
		case <-clientRoom:
			room = true
		case <-serverRoom:
		case <-ps.kick:
		case <-changed:
		case <-wake:
		case <-ctx.Done():
			ps.relock(true)
			if !ps.over {
				ps.fatal(pgsession.CodeSessionNotMoved, "the proxy is stopping")
				ps.over = true
			}
			ps.unlock()
			return
		}
		ps.relock(false)
	}
}

// relock is run taking the session's lock after a wait: a session its
// loop serves is taken back first — unless it stays on its server
// (a change of the routes that does not concern it; not with force) —,
// and a hand-over under way is given up, so that nothing run does meets
// the loop: step does nothing to a steady session that stays.
func (ps *protoSession) relock(force bool) {
	ps.lock <- struct{}{}
	if ps.inLoop && (force || !ps.loopKeeps()) {
		ps.leaveLoop(false, false)
	}
	ps.abortPark()
}

// nextWake is when step has something to do without an event: a held
// message's hold timeout, or the next attempt to attach.
func (ps *protoSession) nextWake() time.Time {
	var at time.Time
	if ps.pending != nil && !ps.heldSince.IsZero() {
		at = ps.heldSince.Add(ps.p.o.HoldTimeout)
	}
	if ps.bc == nil && !ps.retryAt.IsZero() && (at.IsZero() || ps.retryAt.Before(at)) {
		at = ps.retryAt
	}
	if !ps.idleTxLost.IsZero() {
		if g := ps.idleTxLost.Add(lostBlockGrace); at.IsZero() || g.Before(at) {
			at = g
		}
	}
	return at
}

// atRest says whether the session may leave its server now: at a
// boundary with nothing in flight, and movable.
func (ps *protoSession) atRest() bool {
	return ps.awaiting == 0 && !ps.unsynced && ps.st.AtBoundary() && ps.st.Movable() == nil
}

// step brings the session in line with the routes and passes a held
// message on when it can. over: the session is over. changed is the
// channel closed when the routes step acted on change: the session waits
// on that one, not on a newer one, or a change that came in between would
// never be acted on (a held message would wait for its hold timeout with
// a primary there to take it).
func (ps *protoSession) step(ctx context.Context) (over bool, changed <-chan struct{}) {
	r, changed := ps.routes()
	return ps.stepWith(ctx, r), changed
}

// stepWith is step with the routes r.
func (ps *protoSession) stepWith(ctx context.Context, r Routes) bool {
	ps.maybePark()
	if ps.bc != nil && ps.bc.cut() {
		// The proxy cut the connection (enforce: its member stopped being
		// the primary), and the routes may name that member again by now
		// (a flap): nothing more may be sent on it. Its loss is handled
		// before the client's next request is forwarded, so that request
		// is not taken for one in flight on the cut connection.
		if ps.lost(fmt.Errorf("the proxy cut the connection to %s", ps.bc.t.Name)) {
			return true
		}
	}
	if ps.bc != nil && !ps.place.stays(r, ps.bc.t, ps.bc.fallback) {
		if ps.lost(fmt.Errorf("%s is no longer the primary", ps.bc.t.Name)) {
			return true
		}
	}
	if ps.bc != nil && ps.place.leaves(r, ps.bc.t, ps.bc.fallback) {
		switch {
		case ps.atRest():
			// A switchover is due (or the primary is not routable now),
			// or the read-only member left the pool: leave it at the
			// boundary (so that an old primary can stop) and hold the
			// next transaction until the next member takes it.
			ps.log.Debug("session left its server at a boundary; holding its next transaction", "backend", ps.bc.t.Name, "reason", ps.place.why(r))
			ps.detach(true)
		case ps.place.readOnly() && ps.awaiting == 0 && !ps.unsynced && ps.st.AtBoundary():
			// Between transactions but unmovable: a member that left
			// the read-only pool does not end its sessions itself (an old
			// primary does), and one promoted would keep serving this
			// session as a primary's. It is closed with the reason.
			if err := ps.st.Movable(); err != nil {
				ps.closeUnmovable(err)
				return true
			}
		}
	}
	if !ps.idleTxLost.IsZero() {
		switch {
		case ps.pending != nil:
			// The client's request after the loss: it fails with the
			// block, and the session lives on.
			if ps.lost(ps.idleTxCause) {
				return true
			}
		case time.Since(ps.idleTxLost) >= lostBlockGrace:
			ps.closeUnmovable(&pgsession.UnmovableError{Reason: pgsession.ReasonTransaction, Detail: ps.idleTxCause.Error()})
			return true
		default:
			return false
		}
	}
	if ps.bc == nil && !ps.discard && !time.Now().Before(ps.retryAt) && ps.wantsServer() {
		if t := ps.p.pick(ps.place, r); t != nil && ps.attach(ctx, *t) {
			return true
		}
	}
	if ps.pending != nil {
		if ps.forward() {
			return true
		}
	}
	if ps.pending != nil && !ps.heldSince.IsZero() && time.Since(ps.heldSince) >= ps.p.o.HoldTimeout {
		why := r.RWDetail
		if ps.place.readOnly() {
			why = ps.place.why(r)
		}
		ps.log.Warn("closing a session whose request waited the hold timeout for a member", "hold_timeout", ps.p.o.HoldTimeout, "reason", ps.place.why(r))
		ps.fatal(pgsession.CodeSessionNotMoved, fmt.Sprintf("no %s took this session within the hold timeout %s (%s) — reconnect", ps.place.server(), ps.p.o.HoldTimeout, why))
		return true
	}
	ps.setHolding(ps.pending != nil && ps.bc == nil)
	return false
}

// setHolding keeps the session counted in Proxy.holding while it holds a
// message for want of a primary.
func (ps *protoSession) setHolding(h bool) {
	if h != ps.holding {
		ps.holding = h
		if h {
			ps.p.addHolding(1)
		} else {
			ps.p.addHolding(-1)
		}
	}
}

// forward passes the pending client message on, or keeps holding it.
// True when the session is over.
func (ps *protoSession) forward() bool {
	ev := ps.pending
	if ps.discard {
		// The batch this message belongs to failed with the lost
		// connection: a server skips everything up to Sync, then answers
		// ReadyForQuery.
		if _, ok := ev.msg.(*pgproto3.Sync); ok {
			_, _ = ps.st.Frontend(&pgproto3.Sync{})
			rfq := &pgproto3.ReadyForQuery{TxStatus: ps.discardTx}
			_, _ = ps.st.Backend(rfq)
			ps.be.Send(rfq)
			ps.discard = false
			if err := ps.flushClient(); err != nil {
				return true
			}
		}
		ps.ackPending()
		return false
	}
	if _, ok := ev.msg.(*pgproto3.Terminate); ok {
		ps.detach(true)
		return true
	}
	if ps.bc == nil {
		if ps.heldSince.IsZero() {
			ps.heldSince = time.Now()
		}
		return false
	}
	// The server has not read what the session sent it: the message
	// waits (unacknowledged, so the client's next one stays unread) while
	// the server's answers keep going to the client.
	if ps.toFull = ps.bc.out.blocked(); ps.toFull {
		return false
	}
	m := ev.msg.(pgproto3.FrontendMessage)
	inCopyIn := ps.st.InCopyIn()
	before, err := ps.st.Frontend(m)
	if err != nil {
		ps.closeUnmovable(err)
		return true
	}
	for _, b := range before {
		if _, ok := b.(*pgproto3.Sync); ok {
			ps.injected++
		}
		ps.bc.fe.Send(b)
		ps.toBackend += wireLen(b)
	}
	ps.bc.fe.Send(m)
	ps.toBackend += wireLen(m)
	flush := true
	switch m.(type) {
	case *pgproto3.Query, *pgproto3.FunctionCall:
		ps.awaiting++
	case *pgproto3.Sync:
		if inCopyIn {
			break // ignored by the server: no ReadyForQuery answers it
		}
		ps.awaiting++
		ps.unsynced = false
	case *pgproto3.Parse, *pgproto3.Bind, *pgproto3.Describe, *pgproto3.Execute, *pgproto3.Close:
		ps.unsynced = true
		flush = false // the client sends Sync or Flush before it waits
	}
	if !ps.heldSince.IsZero() {
		ps.p.sm.held.Observe(time.Since(ps.heldSince).Seconds())
		ps.heldSince = time.Time{}
	}
	ps.ackPending()
	if flush || len(before) > 0 || ps.toBackend >= flushThreshold {
		ps.toBackend = 0
		if err := ps.bc.fe.Flush(); err != nil {
			return ps.lost(fmt.Errorf("send to %s: %w", ps.bc.t.Name, err))
		}
	}
	return false
}

// flushClient writes out what was sent to the client (ps.be.Send).
func (ps *protoSession) flushClient() error {
	ps.toClient = 0
	if err := ps.be.Flush(); err != nil {
		return fmt.Errorf("send to the client: %w", err)
	}
	return nil
}

func (ps *protoSession) ackPending() {
	ps.give(ps.pending.ack)
	ps.pending = nil
}

// give sends an acknowledgement to the reader it belongs to — or, for the
// message the loop is handling, notes it (see loopAck).
func (ps *protoSession) give(ack chan struct{}) {
	if ack == ps.loopAck && ack != nil {
		ps.loopAcked = true
		return
	}
	ack <- struct{}{}
}

// handle takes one event of the session's connections. True when the
// session is over.
func (ps *protoSession) handle(ev event) bool {
	if ev.fromClient {
		if ev.err != nil {
			ps.log.Debug("the client left", "err", ev.err)
			ps.detach(true)
			return true
		}
		ps.client1 = ev
		ps.pending = &ps.client1
		return false
	}
	if ps.bc == nil || ev.gen != ps.bc.gen {
		ps.give(ev.ack) // a connection let go already
		return false
	}
	if ev.err != nil {
		return ps.lost(fmt.Errorf("receive from %s: %w", ps.bc.t.Name, ev.err))
	}
	if e, ok := ev.msg.(*pgproto3.ErrorResponse); ok && (e.SeverityUnlocalized == sevFatal || e.Severity == sevFatal) {
		if shutdownCodes[e.Code] {
			return ps.lost(fmt.Errorf("%s ended the connection: %s (SQLSTATE %s)", ps.bc.t.Name, e.Message, e.Code))
		}
		ps.be.Send(e)
		_ = ps.flushClient()
		ps.detach(false)
		return true
	}
	m := ev.msg.(pgproto3.BackendMessage)
	tm := m
	if r, ok := m.(*rawServerMsg); ok {
		tm = r.tracked()
	}
	v, err := ps.st.Backend(tm)
	if err != nil {
		ps.closeUnmovable(err)
		return true
	}
	if v == pgsession.Swallow {
		_, rfq := m.(*pgproto3.ReadyForQuery)
		if rfq && ps.injected > 0 {
			ps.injected--
		}
		// What the client was sent before must not wait behind a message
		// it is not sent.
		if ps.toClient > 0 && (rfq || !ev.more || ps.toClient >= flushThreshold) {
			if err := ps.flushClient(); err != nil {
				ps.log.Debug("the client left", "err", err)
				ps.detach(true)
				return true
			}
		}
		ps.ackBackend(ev.ack)
		return false
	}
	_, rfq := m.(*pgproto3.ReadyForQuery)
	switch m.(type) {
	case *pgproto3.CopyInResponse:
		// Syncs the client sent after the statement now in COPY reached
		// the server in COPY IN, which ignores them: no ReadyForQuery
		// answers them. (Until the client's next Sync the tracker is not
		// at a boundary, so the session does not move meanwhile.)
		ps.awaiting = max(ps.awaiting-ps.st.TakeIgnoredSyncs(), 0)
	case *pgproto3.ReadyForQuery:
		if ps.awaiting > 0 {
			ps.awaiting--
		}
	case *pgproto3.BackendKeyData:
		ps.give(ev.ack)
		return false
	}
	ps.be.Send(m)
	ps.toClient += wireLen(m)
	// ev.more (bytes already buffered from the server) also counts a
	// partly received message, so it may stay true for a whole result
	// set: flushThreshold bounds what waits meanwhile.
	if rfq || !ev.more || ps.toClient >= flushThreshold {
		if err := ps.flushClient(); err != nil {
			ps.log.Debug("the client left", "err", err)
			ps.detach(true)
			return true
		}
	}
	ps.ackBackend(ev.ack)
	return false
}

// ackBackend lets the server's reader read its next message — unless the
// client's outbox is full: then the acknowledgement is held (the server's
// next answers stay unread) until it has room (run), while the client's
// requests still go to the server.
func (ps *protoSession) ackBackend(ack chan struct{}) {
	if ps.out.blocked() {
		ps.heldAck = ack
		return
	}
	ps.give(ack)
}

// releaseAck gives the held acknowledgement, if any.
func (ps *protoSession) releaseAck() {
	if ps.heldAck != nil {
		ps.give(ps.heldAck)
		ps.heldAck = nil
	}
}

// inFlightError answers a request the lost connection to member was
// carrying that may have committed (pgsession.LostRequests).
func inFlightError(server, member string) *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: sevError, SeverityUnlocalized: sevError, Code: codeUnknownCompletion,
		Message: msgPrefix + "the connection to the " + server + " (" + member + ") was lost while this request was in flight; whether it took effect is unknown",
		Hint:    "Check whether the request took effect before repeating it."}
}

// rolledBackError answers requests the lost connection to member (a
// server: "primary", "read-only server") was carrying that cannot have
// committed: inside a transaction block before its COMMIT (inBlock: the
// client must now end the failed block), or a BEGIN.
func rolledBackError(server, member string, inBlock bool) *pgproto3.ErrorResponse {
	detail := "The session continues on the next " + server + " with its settings and prepared statements."
	if inBlock {
		detail = "The session continues on the next " + server + " with its settings and prepared statements, in a failed transaction block until the client ends it (ROLLBACK)."
	}
	return &pgproto3.ErrorResponse{Severity: sevError, SeverityUnlocalized: sevError, Code: codeRolledBack,
		Message: msgPrefix + "the connection to the " + server + " (" + member + ") was lost inside this transaction before its COMMIT; the transaction did not commit (it was rolled back)",
		Detail:  detail,
		Hint:    "The transaction can be run again."}
}

// failedBlockError answers a request sent after the one that failed, in
// the same lost block.
func failedBlockError() *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: sevError, SeverityUnlocalized: sevError, Code: codeInFailedBlock,
		Message: "current transaction is aborted, commands ignored until end of transaction block"}
}

// lost handles the end of the backend connection (it broke, the server
// ended it, or enforce cut it). A session at a boundary just waits for the
// next primary. Requests in flight are answered by the proxy, as far as
// the tracker can tell what they did (pgsession.Session.InFlight): with
// inFlightError (40003) when one may have committed (a COMMIT, a statement
// outside a transaction block), else with rolledBackError (40001) — and a
// block they ran in is left failed (ReadyForQuery 'E'), to be recreated
// failed on the next primary until the client ends it. Either way the
// session survives. A session idle inside a transaction block (nothing in
// flight, the block not failed), in a COPY, or holding state that cannot
// move is closed with pgsession.CloseError. True when the session is over.
func (ps *protoSession) lost(cause error) bool {
	bc := ps.detach(false)
	member := ""
	if bc != nil {
		member = bc.t.Name
	}
	ps.log.Info("lost the connection to the "+ps.place.server(), "backend", member, "cause", cause)
	tx := ps.st.TxStatus()
	// What reached the server decides what may have committed.
	sent := ps.st.InFlight()
	if (tx == pgsession.TxInBlock || tx == pgsession.TxFailed) && !ps.unsynced {
		// A request the client sent in its block that the proxy read but
		// had not passed on yet (the loss won the race) never reached the
		// server: from the client's side it is in flight, and it fails
		// with the block. Found by TestSessionProxyPgbench: a pgbench
		// client whose UPDATE right after BEGIN lost that race was closed
		// as idle in a transaction. (A client message its reader read
		// and that waits for the session's lock is not pending yet: it
		// comes right after, within lostBlockGrace, and fails alike.)
		if ps.pending != nil {
			if ps.forwardLost() {
				return true
			}
		}
	}
	inFlight := ps.awaiting > 0 || ps.unsynced
	if !inFlight && tx == pgsession.TxInBlock {
		// Wait lostBlockGrace for the client's next request (step).
		ps.idleTxLost, ps.idleTxCause = time.Now(), cause
		return false
	}
	ps.idleTxLost, ps.idleTxCause = time.Time{}, nil
	if err := ps.st.Movable(); err != nil {
		var ue *pgsession.UnmovableError
		if errors.As(err, &ue) && ue.Reason == pgsession.ReasonCopy {
			ps.closeUnmovable(err)
			return true
		}
	}
	if !inFlight && tx == pgsession.TxFailed {
		// Idle in a failed block: all it can still do is end, which the
		// same failed block on the next primary answers alike.
		ps.st.BlockLost()
	}
	if inFlight {
		ps.p.sm.failed.WithLabelValues(ps.place.listener).Inc()
		lr := ps.st.InFlight()
		lr.MayHaveCommitted = sent.MayHaveCommitted
		status, first := pgsession.TxIdle, inFlightError(ps.place.server(), member)
		if lr.InBlock {
			status = pgsession.TxFailed
		}
		if !lr.MayHaveCommitted {
			first = rolledBackError(ps.place.server(), member, lr.InBlock)
		}
		next := first
		if lr.InBlock {
			next = failedBlockError()
		}
		rfq := &pgproto3.ReadyForQuery{TxStatus: status}
		// The tracker is answered for every sync point in flight, its own
		// injected ones (which come first) included; the client for its
		// own: the first with the error that says what happened, the
		// next ones as a server answers them after it.
		for i := range ps.awaiting + ps.injected {
			e := next
			if i == 0 {
				e = first
			}
			_, _ = ps.st.Backend(e)
			_, _ = ps.st.Backend(rfq)
		}
		for i := range ps.awaiting {
			e := next
			if i == 0 {
				e = first
			}
			ps.be.Send(e)
			ps.be.Send(rfq)
		}
		if ps.unsynced {
			e := next
			if ps.awaiting == 0 {
				e = first
			}
			_, _ = ps.st.Backend(e)
			ps.be.Send(e)
			ps.unsynced, ps.discard, ps.discardTx = false, true, status
		}
		ps.awaiting, ps.injected = 0, 0
		if lr.InBlock {
			ps.st.BlockLost()
		}
		if err := ps.flushClient(); err != nil {
			return true
		}
	}
	if !ps.discard {
		if err := ps.st.Movable(); err != nil {
			ps.closeUnmovable(err)
			return true
		}
	}
	ps.retryAt = time.Time{}
	return false
}

// forwardLost does for the pending client message what forward does,
// except sending it: the backend connection is gone (lost), and the
// message is answered with the requests that were in flight. True when
// the session is over.
func (ps *protoSession) forwardLost() bool {
	m := ps.pending.msg.(pgproto3.FrontendMessage)
	if _, ok := m.(*pgproto3.Terminate); ok {
		return true
	}
	before, err := ps.st.Frontend(m)
	if err != nil {
		ps.closeUnmovable(err)
		return true
	}
	for _, b := range before {
		if _, ok := b.(*pgproto3.Sync); ok {
			ps.injected++
		}
	}
	switch m.(type) {
	case *pgproto3.Query, *pgproto3.FunctionCall:
		ps.awaiting++
	case *pgproto3.Sync:
		ps.awaiting++
		ps.unsynced = false
	case *pgproto3.Parse, *pgproto3.Bind, *pgproto3.Describe, *pgproto3.Execute, *pgproto3.Close:
		ps.unsynced = true
	}
	ps.heldSince = time.Time{}
	ps.ackPending()
	return false
}

// attach moves the session to a new connection on t: logs in as the
// client, replays its state (pgsession.Plan: settings at once, protocol
// prepared statements before first use), checks the answers, and tells
// the client of parameters that changed. A failure another attempt may
// not have is retried with backoff; any other closes the session (true).
func (ps *protoSession) attach(ctx context.Context, t Target) bool {
	if ps.pooled() {
		return ps.attachPooled(ctx, t)
	}
	plan, err := ps.st.Plan()
	if err != nil {
		ps.closeUnmovable(err)
		return true
	}
	again := ps.backOff("move the session", t)
	bc, err := ps.loginWatched(ctx, t, plan.Startup)
	if err != nil {
		if errors.Is(err, errLoginRetry) {
			return again(err)
		}
		ps.closeUnmovable(err)
		return true
	}
	for _, m := range plan.Messages(true) {
		bc.fe.Send(m)
	}
	if err := bc.fe.Flush(); err != nil {
		bc.release(false)
		return again(fmt.Errorf("replay the session on %s: %w", t.Name, err))
	}
	over, attached := ps.finishReplay(bc, t, plan.Responses(true), again)
	if attached {
		ps.p.sm.migrated.WithLabelValues(ps.place.listener).Inc()
		ps.log.Info("session moved to the "+ps.place.server(), "backend", t.Name, "setup_statements", len(plan.Setup), "prepared_statements", len(plan.Statements))
	}
	return over
}

// backOff returns the handler of a failure of what on t that another
// attempt may not have: it logs it and sets the session's next attempt
// after a backoff that doubles up to dialRetryMax. It returns false (the
// session goes on).
func (ps *protoSession) backOff(what string, t Target) func(error) bool {
	return func(err error) bool {
		ps.log.Debug(what+"; trying again", "backend", t.Name, "err", err, "retry_in", ps.retry)
		ps.retryAt = time.Now().Add(ps.retry)
		ps.retry = min(2*ps.retry, dialRetryMax)
		return false
	}
}

// finishReplay completes a replay of the session's state on bc, a new
// server connection on t whose answers check is reading: it reads them
// (a refused replay closes the session as unmovable), recreates a block
// lost with the old server, attaches bc to the session (unless the routes
// changed meanwhile) and tells the client of the parameters that changed.
// again handles a failure another attempt may not have. over: the session
// is over (the caller returns true); attached: bc now serves the session.
func (ps *protoSession) finishReplay(bc *backendConn, t Target, check *pgsession.ReplayResponses, again func(error) bool) (over, attached bool) {
	for {
		m, err := bc.fe.Receive()
		if err != nil {
			bc.release(false)
			return again(fmt.Errorf("replay the session on %s: %w", t.Name, err)), false
		}
		done, err := check.Receive(m)
		if err != nil {
			bc.release(false)
			ps.closeUnmovable(fmt.Errorf("replay the session on %s: %w", t.Name, err))
			return true, false
		}
		if done {
			break
		}
	}
	if ps.st.InLostBlock() {
		if err := openFailedBlock(bc); err != nil {
			bc.release(false)
			return again(fmt.Errorf("recreate the failed transaction block on %s: %w", t.Name, err)), false
		}
	}
	_ = bc.conn.SetDeadline(time.Time{})
	res := check.Result()
	bc.key = res.Key
	if !ps.publish(bc) {
		bc.release(true)
		return false, false // the routes changed meanwhile: decide again
	}
	ps.st.Moved(res)
	for _, m := range res.ToClient {
		ps.be.Send(m)
	}
	ps.retry, ps.retryAt = dialRetryMin, time.Time{}
	if len(res.ToClient) > 0 {
		if err := ps.flushClient(); err != nil {
			return true, true
		}
	}
	return false, true
}

// openFailedBlock opens a transaction block on bc and makes it fail
// (pgsession.LostBlockQuery): the session's block was lost with the old
// primary while the client was told it failed, and the client's next
// statements must be answered as in that failed block.
func openFailedBlock(bc *backendConn) error {
	bc.fe.Send(&pgproto3.Query{String: pgsession.LostBlockQuery})
	if err := bc.fe.Flush(); err != nil {
		return err
	}
	begun, failed := false, false
	for {
		m, err := bc.fe.Receive()
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *pgproto3.CommandComplete:
			begun = string(m.CommandTag) == "BEGIN"
		case *pgproto3.ErrorResponse:
			failed = true
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		case *pgproto3.ReadyForQuery:
			if !begun || !failed || m.TxStatus != pgsession.TxFailed {
				return fmt.Errorf("unexpected answer to the failed block: BEGIN %v, error %v, status %q", begun, failed, m.TxStatus)
			}
			return nil
		default:
			return fmt.Errorf("unexpected %T in answer to the failed block", m)
		}
	}
}

// closeUnmovable closes the session with pgsession.CloseError(err),
// counted by reason.
func (ps *protoSession) closeUnmovable(err error) {
	reason := "restore_failed"
	var ue *pgsession.UnmovableError
	if errors.As(err, &ue) {
		reason = ue.Reason.Label()
	}
	ps.p.sm.unmovable.WithLabelValues(ps.place.listener, reason).Inc()
	ps.log.Info("closing a session that cannot move to the next "+ps.place.server(), "reason", reason, "err", err)
	if ps.place.readOnly() {
		ps.send(pgsession.CloseErrorReadOnly(err))
		return
	}
	ps.send(pgsession.CloseError(err))
}

// fatal sends the client a FATAL error of the proxy's own.
func (ps *protoSession) fatal(code, msg string) {
	ps.send(&pgproto3.ErrorResponse{Severity: sevFatal, SeverityUnlocalized: sevFatal, Code: code, Message: msgPrefix + msg})
}

func (ps *protoSession) send(e *pgproto3.ErrorResponse) {
	_ = ps.client.SetWriteDeadline(time.Now().Add(stopWriteTimeout))
	ps.be.Send(e)
	_ = ps.flushClient()
}

// end releases everything the session holds; the caller closes the
// client's connection. What was queued for the client (a closing error)
// is written first, within stopWriteTimeout.
func (ps *protoSession) end() {
	close(ps.done)
	ps.setHolding(false)
	ps.detach(true)
	_ = ps.client.SetWriteDeadline(time.Now().Add(stopWriteTimeout))
	ps.out.close(true)
	p := ps.p
	p.mu.Lock()
	delete(p.protos, ps)
	if p.cancelKey[ps.key.ProcessID] == ps {
		delete(p.cancelKey, ps.key.ProcessID)
	}
	p.mu.Unlock()
	_ = ps.client.Close()
}
