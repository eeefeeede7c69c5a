package proxy

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Session mode's steady state on an event loop. A session-mode session
// is served by goroutines (protosession.go: run and one reader per
// connection), which costs about two goroutine wake-ups — two context
// switches — per transaction: the client's reader wakes for the request,
// the server's for the answer. A session in its steady state (see
// loopFacts) is handed to an event loop instead, as the L4 path's
// sessions are (loop.go): one goroutine per loop waits on epoll for the
// sockets of all its sessions and, for a readable one, reads once, splits
// the bytes into whole messages (frameSource) and hands each message to
// the very code a reader would (handle and stepWith, under the session's
// lock). The messages are decoded by the connection's own pgproto3
// decoder, and written through the session's outboxes, whose writes in
// loop mode go straight to the socket without waiting (outbox.toFD).
//
// The loop serves only what needs no waiting: anything that would make
// run act (a message held, an outbox that did not take everything, a
// change of the routes that moves the session, an error, the end) hands
// the session back (leaveLoop) — its connections become net.Conns again,
// its readers start again (waiting for the acknowledgement of a message
// the loop left held) and run is kicked. run itself takes the session
// back whenever it wakes (a change of the routes, the proxy stopping)
// before it touches anything.
//
// Hand-over (enterLoop) happens only between requests: after a
// ReadyForQuery that leaves the session steady, both readers are stopped
// by a read deadline in the past (they park, see readerTimeout) and the
// last to park moves the session to the loop; a message that arrives
// meanwhile is handled by its reader as usual and the parking is given
// up. Go's poller must be out of the path, or every message would wake
// a thread in it too: the loop takes duplicates of both sockets and the
// net.Conns are closed (which removes them from Go's poller).
//
// Locking: every change of loop state (inLoop, the descriptors, the
// readers' parking) is made under the session's lock. The loop only
// tries the lock (a session whose lock is busy is being taken back by
// run; level-triggered epoll reports the socket again), so it never
// waits for one session's work.

// Directions of a session's connections, as the loop indexes them.
const (
	loopClient  = 0
	loopBackend = 1
)

// sessLoop is one event loop of session mode.
type sessLoop struct {
	epoller
	stopped chan struct{}

	mu       sync.Mutex
	ends     map[uint64]loopEnd // registered sockets by epoll token
	token    uint64             // the last token handed out
	stopping bool
}

// loopEnd is one registered socket: a session's client (ps), or a server
// connection (bc), whose events go to the session it is served for
// (bc.lowner) or, while it is idle in its pool, to serveIdle.
type loopEnd struct {
	ps *protoSession
	bc *backendConn
}

func newSessLoop() (*sessLoop, error) {
	ep, err := newEpoller()
	if err != nil {
		return nil, err
	}
	return &sessLoop{epoller: ep, stopped: make(chan struct{}), ends: map[uint64]loopEnd{}}, nil
}

func (l *sessLoop) start() { go l.run() }

// stop ends the loop once it has returned. Every session must have left
// it (they have, once they ended: a session ends off the loop).
func (l *sessLoop) stop() {
	l.mu.Lock()
	l.stopping = true
	l.mu.Unlock()
	l.wake()
	<-l.stopped
	// Pooled connections let go while idle whose end the loop did not
	// see before it stopped: nothing else closes their descriptors. One
	// whose release is still under way (enforce closes stale idle
	// connections on a goroutine of its own) may still write to its
	// descriptor: with no loop left (lp nil), that release closes it.
	l.mu.Lock()
	ends := slices.Collect(maps.Values(l.ends))
	l.mu.Unlock()
	for _, e := range ends {
		if bc := e.bc; bc != nil {
			bc.lmu.Lock()
			if bc.lowner == nil && bc.lfd >= 0 && bc.lp == l {
				if bc.released {
					_ = syscall.Close(bc.lfd)
					bc.lfd = -1
				}
				bc.lp = nil
			}
			bc.lmu.Unlock()
		}
	}
	l.release()
}

// serveServer serves a readable server connection: for the session the
// loop serves it for, or, idle in its pool, serveIdle.
func (l *sessLoop) serveServer(bc *backendConn, tok uint64) {
	bc.lmu.Lock()
	// Tokens count per loop: an event taken before the connection left
	// this loop is not one for the token it may have on another since.
	owner, ours := bc.lowner, bc.lfd >= 0 && bc.lp == l && bc.ltok == tok
	bc.lmu.Unlock()
	switch {
	case !ours:
	case owner != nil:
		owner.loopServe(loopBackend, tok)
	default:
		l.serveIdle(bc, tok)
	}
}

// serveIdle handles a pooled connection idle in its pool whose socket
// became readable: the server ended it, or sent something no request
// asked for — either way it cannot serve another transaction, and it is
// let go. A connection let go meanwhile (release, by whoever took it
// from the pool) is the loop's to close: no session will take it from
// the loop — but only once that release is done (released): until then
// it may still write to the descriptor (a graceful release's Terminate
// goes through the outbox, which writes to it), and a descriptor closed
// under it could be another socket's by then; the loop then only takes it
// out of epoll and leaves the descriptor to the release (lp nil), as when
// the loop stops. One that a session is taking from the pool meanwhile is
// left to it (level-triggered epoll reports it again until it is taken
// out of the loop or served for its session).
func (l *sessLoop) serveIdle(bc *backendConn, tok uint64) {
	if !bc.cut() {
		if !bc.pl.cp.takeIdleConn(bc) {
			return
		}
		bc.release(false)
	}
	bc.lmu.Lock()
	defer bc.lmu.Unlock()
	if bc.lowner != nil || bc.lfd < 0 || bc.lp != l || bc.ltok != tok {
		return
	}
	// Out of the loop at once, so that it does not spin on the socket
	// while a release under way (closeConns works through a list)
	// finishes; that release closes the descriptor itself (lp nil).
	l.remove(tok, bc.lfd)
	bc.lp = nil
	if bc.released {
		_ = syscall.Close(bc.lfd)
		bc.lfd = -1
	}
}

// add registers fd, a session's client socket (e.ps) or a server
// connection's (e.bc), and returns its token.
func (l *sessLoop) add(e loopEnd, fd int) (uint64, error) {
	l.mu.Lock()
	l.token++
	tok := l.token
	l.ends[tok] = e
	l.mu.Unlock()
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setToken(&ev, tok)
	if err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.forget(tok)
		return 0, fmt.Errorf("epoll_ctl: %w", err)
	}
	return tok, nil
}

// remove unregisters fd (tok); an event for it the loop took already
// finds it forgotten.
func (l *sessLoop) remove(tok uint64, fd int) {
	_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, fd, nil)
	l.forget(tok)
}

func (l *sessLoop) forget(tok uint64) {
	l.mu.Lock()
	delete(l.ends, tok)
	l.mu.Unlock()
}

// run is the loop goroutine.
func (l *sessLoop) run() {
	defer close(l.stopped)
	events := make([]syscall.EpollEvent, maxEvents)
	yielded := time.Now()
	for {
		n := l.waitFor(events, -1)
		for i := range n {
			t := token(&events[i])
			if t == wakeToken {
				l.drainWake()
				l.mu.Lock()
				stopping := l.stopping
				l.mu.Unlock()
				if stopping {
					return
				}
				continue
			}
			l.mu.Lock()
			e, ok := l.ends[t]
			l.mu.Unlock()
			switch {
			case !ok:
			case e.bc != nil:
				l.serveServer(e.bc, t)
			default:
				e.ps.loopServe(loopClient, t)
			}
		}
		if now := time.Now(); now.Sub(yielded) >= yieldInterval {
			runtime.Gosched() // see yieldInterval
			yielded = now
		}
	}
}

// loopFacts are what decides whether a session may go to its loop: the
// steady state, in which every message the loop can get is one handle and
// stepWith deal with without waiting, and in which the readers can stop
// at a message boundary.
type loopFacts struct {
	hasLoop      bool // the session has a loop (not switched off)
	plain        bool // both connections are plain TCP (no TLS: the loop reads the sockets)
	frames       bool // both decoders read whole messages from their frameSource, with nothing read ahead
	attached     bool // a server connection, not let go — or, transaction-pooled, none (between transactions)
	pooledBC     bool // transaction-pooled, with a server connection (in a transaction, or pinned)
	routesStay   bool // the session stays on that server (no move due)
	over         bool
	pending      bool // a client message not passed on
	heldAck      bool // a server message's acknowledgement held
	toFull       bool
	discard      bool
	lostBlock    bool // a block lost with a server (idle-in-transaction grace, or failed block recreated)
	awaiting     int
	injected     int
	unsynced     bool
	outboxBytes  int  // bytes not yet written to either peer
	timerPending bool // run has a timer to act on (nextWake)
}

// steady says whether the session may be handed to its loop, and if not,
// the first reason why not (for tests and debugging).
func (f loopFacts) steady() (bool, string) {
	switch {
	case !f.hasLoop:
		return false, "no loop"
	case !f.plain:
		return false, "TLS"
	case !f.frames:
		return false, "decoder not on frames"
	case f.pooledBC:
		return false, "pooled session holding a server connection"
	case !f.attached:
		return false, "no server connection"
	case !f.routesStay:
		return false, "routes move the session"
	case f.over:
		return false, "over"
	case f.pending:
		return false, "client message pending"
	case f.heldAck:
		return false, "server message held"
	case f.toFull:
		return false, "server outbox full"
	case f.discard:
		return false, "discarding a lost batch"
	case f.lostBlock:
		return false, "lost block"
	case f.awaiting > 0 || f.injected > 0 || f.unsynced:
		return false, "requests in flight"
	case f.outboxBytes > 0:
		return false, "outbox not empty"
	case f.timerPending:
		return false, "timer pending"
	}
	return true, ""
}

// loopFacts gathers the facts of the session now (its lock held, and on
// its server connection's reader or with that reader parked: the
// decoder's state is the reader's).
func (ps *protoSession) loopFacts() loopFacts {
	f := loopFacts{
		hasLoop: ps.sl != nil, over: ps.over, pending: ps.pending != nil, heldAck: ps.heldAck != nil,
		toFull: ps.toFull, discard: ps.discard, lostBlock: !ps.idleTxLost.IsZero() || ps.st.InLostBlock(),
		awaiting: ps.awaiting, injected: ps.injected, unsynced: ps.unsynced, timerPending: !ps.nextWake().IsZero(),
	}
	if !f.hasLoop {
		return f
	}
	bc := ps.bc
	_, clientPlain := ps.client.(*net.TCPConn)
	if ps.pooled() {
		// Between transactions a pooled session has no server connection:
		// the loop serves its client alone, and takes a connection from
		// the pool for its next transaction (loopAttachPooled).
		f.pooledBC = bc != nil
		f.plain = clientPlain && ps.pool.onLoop
		f.frames = ps.csrc != nil && ps.csrc.frames
		f.attached, f.routesStay = bc == nil, true
		f.outboxBytes = ps.out.pending()
		return f
	}
	if bc != nil {
		_, serverPlain := bc.netConn().(*net.TCPConn)
		f.plain = clientPlain && serverPlain
		// The decoders are between messages (their reader either parked or
		// is the caller); csrc.frames is set before the session starts, and
		// bc's decoder is its reader's.
		f.frames = ps.csrc != nil && ps.csrc.frames && bc.src != nil && bc.src.frames && bc.fe.ReadBufferLen() == 0
		select {
		case <-bc.stop:
		default:
			f.attached = bc.pl == nil
		}
		r, _ := ps.routes()
		f.routesStay = ps.place.stays(r, bc.t, bc.fallback) && !ps.place.leaves(r, bc.t, bc.fallback)
		f.outboxBytes = ps.out.pending() + bc.out.pending()
	}
	return f
}

// maybeToLoop begins handing the session to its loop when it is steady
// (its lock held; after a server's ReadyForQuery): both readers are made
// to stop at their next read (a deadline in the past) and park
// (readerTimeout).
func (ps *protoSession) maybeToLoop() {
	if ps.parking || ps.inLoop || ps.sl == nil {
		return
	}
	if ok, _ := ps.loopFacts().steady(); !ok {
		return
	}
	ps.parking = true
	_ = ps.client.SetReadDeadline(longAgo)
	ps.cPast = true
	if ps.bc != nil {
		_ = ps.bc.netConn().SetReadDeadline(longAgo)
		ps.bc.past = true
	}
}

// What a reader does after a read that timed out (readerTimeout).
type parkOutcome int

const (
	parkError parkOutcome = iota // not the proxy's deadline: an error as any other
	parkStop                     // the reader has parked (or was replaced): it returns
	parkGoOn                     // the parking was given up: read again
)

// readerTimeout handles a read of the client (bc nil) or of bc that ended
// with a deadline: when the deadline is the parking's, the reader parks
// and the last to park finishes the hand-over (finishPark); when the
// parking was given up meanwhile, the deadline is cleared and the reader
// goes on.
func (ps *protoSession) readerTimeout(bc *backendConn) parkOutcome {
	var stop <-chan struct{}
	if bc != nil {
		stop = bc.stop
	}
	if !ps.lockOr(stop) {
		return parkStop
	}
	defer ps.unlock()
	if ps.over {
		return parkStop // the session ends (end may be releasing it without the lock)
	}
	if bc == nil {
		if !ps.cPast {
			return parkError
		}
		if ps.parking {
			ps.cParked = true
			ps.finishPark()
			return parkStop
		}
		_ = ps.client.SetReadDeadline(time.Time{})
		ps.cPast = false
		return parkGoOn
	}
	if !bc.past {
		return parkError
	}
	if bc != ps.bc {
		return parkStop // let go already
	}
	if ps.parking {
		ps.parkedBC = bc
		ps.finishPark()
		return parkStop
	}
	_ = bc.netConn().SetReadDeadline(time.Time{})
	bc.past = false
	return parkGoOn
}

// finishPark completes a hand-over once both readers have parked: the
// session goes to its loop if it is still steady, else its readers start
// again. (Its lock held.)
func (ps *protoSession) finishPark() {
	if !ps.cParked || ps.parkedBC != ps.bc {
		return // a reader has not parked yet
	}
	ps.parking = false
	if ok, _ := ps.loopFacts().steady(); ok && ps.enterLoop() {
		ps.cParked, ps.parkedBC = false, nil
		return
	}
	ps.restartParked()
}

// abortPark gives up a hand-over under way (its lock held): a reader that
// parked already starts again; one that has not clears its deadline
// itself when it meets it (readerTimeout).
func (ps *protoSession) abortPark() {
	if !ps.parking {
		return
	}
	ps.parking = false
	ps.restartParked()
}

// restartParked starts again the readers that parked.
func (ps *protoSession) restartParked() {
	if ps.cParked {
		ps.cParked = false
		_ = ps.client.SetReadDeadline(time.Time{})
		ps.cPast = false
		go ps.readClient(false)
	}
	if bc := ps.parkedBC; bc != nil {
		ps.parkedBC = nil
		if bc == ps.bc {
			_ = bc.netConn().SetReadDeadline(time.Time{})
			bc.past = false
			go ps.readBackend(bc, false)
		}
	}
}

// enterLoop hands the session's connections to its loop (its lock held,
// both readers parked; a pooled session between transactions has no
// server connection). False: nothing changed (the readers are to start
// again).
func (ps *protoSession) enterLoop() bool {
	bc := ps.bc
	client := ps.client
	cfd, err := takeFD(client)
	if err != nil {
		ps.log.Debug("hand the session to its loop", "err", err)
		return false
	}
	if !ps.out.toFD(cfd) {
		_ = syscall.Close(cfd)
		return false
	}
	ctok, err := ps.sl.add(loopEnd{ps: ps}, cfd)
	if err != nil {
		ps.out.toConn(client)
		_ = syscall.Close(cfd)
		ps.log.Debug("hand the session to its loop", "err", err)
		return false
	}
	if bc != nil {
		if err := bc.toLoop(ps.sl, ps); err != nil {
			ps.sl.remove(ctok, cfd)
			ps.out.toConn(client)
			_ = syscall.Close(cfd)
			ps.log.Debug("hand the session to its loop", "err", err)
			return false
		}
		bc.past = false
	}
	// From here on the loop owns the client's socket; its net.Conn is
	// closed, which takes it out of Go's poller.
	_ = client.Close()
	ps.csrc.conn = nil
	ps.cfd, ps.ctok, ps.loopBC = cfd, ctok, bc
	ps.cPast = false
	ps.keptUnder = nil
	ps.inLoop = true
	ps.p.sessLoopEntries.Add(1)
	return true
}

// toLoop hands the server connection's socket to loop l, served there for
// owner (nil: idle in its pool): a duplicate of the socket is registered
// with l, the outbox writes to it without waiting, and the net.Conn is
// closed (out of Go's poller). Its reader must not run (parked, or none),
// and its decoder must hold nothing read ahead (frames). An error:
// nothing changed.
func (bc *backendConn) toLoop(l *sessLoop, owner *protoSession) error {
	server := bc.netConn()
	fd, err := takeFD(server)
	if err != nil {
		return err
	}
	if !bc.out.toFD(fd) {
		_ = syscall.Close(fd)
		return errors.New("the server connection's outbox is not empty")
	}
	tok, err := l.add(loopEnd{bc: bc}, fd)
	if err != nil {
		bc.out.toConn(server)
		_ = syscall.Close(fd)
		return err
	}
	bc.src.conn = nil
	bc.lmu.Lock()
	bc.lfd, bc.lp, bc.ltok, bc.lowner = fd, l, tok, owner
	if bc.released {
		_ = syscall.Shutdown(fd, syscall.SHUT_RDWR) // cut meanwhile: the loop sees the end
	}
	bc.lmu.Unlock()
	_ = server.Close()
	return nil
}

// fromLoop takes the server connection's socket back from its loop (by
// its owner session, under its lock, or by a session that took it idle
// from its pool): it becomes a net.Conn again and its outbox writes
// through its goroutine. A connection let go meanwhile — its release
// begun (cut), not only done — keeps its closed net.Conn, so that its
// reads and writes fail and never reach the closed descriptor, whose
// number may be another socket's by then: a release under way read the
// net.Conn it closes before it marks the connection released, and a new
// one made here would stay open, and the server's backend with it. An
// error: the socket could not be made a net.Conn again (the caller lets bc
// go).
func (bc *backendConn) fromLoop() error {
	bc.lmu.Lock()
	fd := bc.lfd
	if fd < 0 {
		bc.lmu.Unlock()
		return nil
	}
	if bc.lp != nil { // nil: its loop stopped
		bc.lp.remove(bc.ltok, fd)
	}
	bc.lfd, bc.lp, bc.ltok, bc.lowner = -1, nil, 0, nil
	var server net.Conn
	var err error
	if !bc.cut() {
		// A release that begins from here on reads (netConn, under lmu)
		// and closes the net.Conn made here.
		server, err = fdConn(fd)
		if err == nil {
			bc.conn = server
		}
	}
	if server == nil {
		server = bc.conn
	}
	bc.lmu.Unlock()
	bc.out.toConn(server)
	bc.src.conn = server
	_ = syscall.Close(fd)
	return err
}

// leaveLoop takes the session back from its loop (its lock held): the
// sockets become net.Conns again, the outboxes write through their
// goroutines again, and — unless the session is over — the readers start
// again, cWait/bWait saying whether each waits first for the
// acknowledgement of a message the loop left held.
func (ps *protoSession) leaveLoop(cWait, bWait bool) {
	if !ps.inLoop {
		return
	}
	ps.inLoop = false
	bc := ps.loopBC
	ps.loopBC = nil
	var serr error
	if bc != nil {
		serr = bc.fromLoop()
	}
	ps.sl.remove(ps.ctok, ps.cfd)
	client, cerr := fdConn(ps.cfd)
	_ = syscall.Close(ps.cfd)
	ps.cfd, ps.ctok = -1, 0
	if cerr != nil {
		ps.log.Warn("take the session back from its loop", "err", cerr)
		ps.out.toConn(ps.client) // closed: writes fail, never reach the closed descriptor
		ps.csrc.conn = ps.client
		ps.over = true
		if bc != nil && bc == ps.bc {
			ps.detach(false)
		}
		return
	}
	ps.p.mu.Lock()
	ps.client = client
	ps.p.mu.Unlock()
	ps.out.toConn(client)
	ps.csrc.conn = client
	if serr != nil && bc == ps.bc {
		ps.log.Debug("take the server connection back from the loop", "err", serr)
		bc.release(false)
	}
	if ps.over {
		return
	}
	go ps.readClient(cWait)
	if bc != nil && bc == ps.bc {
		ps.restartReader(bc, bWait)
	}
}

// fdConn makes a net.Conn of a duplicate of fd (fd stays the caller's).
func fdConn(fd int) (net.Conn, error) {
	// Close-on-exec in the same call (as takeFD): a fork between a dup and
	// a later CloseOnExec would let a child keep the socket open, and the
	// peer would not see the end of the session while it lives.
	nfd, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if e != 0 {
		return nil, fmt.Errorf("duplicate socket: %w", e)
	}
	f := os.NewFile(nfd, "session socket")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("make a connection of the socket: %w", err)
	}
	return c, nil
}

// loopServe serves one readable socket of the session on a loop's
// goroutine: one read, and every whole message it completed, each handled
// as its reader would (loopStep). A session whose lock is busy is skipped
// (run is taking it back; epoll reports the socket again if it is still
// registered). A server connection's token is its own (backendConn.ltok):
// a pooled one keeps it while idle in its pool.
func (ps *protoSession) loopServe(dir int, tok uint64) {
	select {
	case ps.lock <- struct{}{}:
	default:
		return
	}
	defer ps.unlock()
	if !ps.inLoop {
		return
	}
	bc := ps.loopBC
	src, fd := ps.csrc, ps.cfd
	if dir == loopBackend {
		if bc == nil || bc.ltok != tok {
			return // parked, or let go, meanwhile
		}
		src, fd = bc.src, bc.lfd // lfd changes only under this lock
	} else if ps.ctok != tok {
		return
	}
	n, errno := sysRead(fd, src.fb.space())
	var rerr error
	switch {
	case errno == syscall.EAGAIN || errno == syscall.EINTR:
		return
	case errno != 0:
		rerr = fmt.Errorf("read: %w", errno)
	case n == 0:
		rerr = io.EOF
	default:
		src.fb.wrote(n)
	}
	for src.fb.ready() {
		var ev event
		if dir == loopClient {
			m, err := ps.be.Receive()
			ev = event{fromClient: true, msg: m, err: err, ack: ps.cack}
		} else if rawServerType(src.wholeType()) {
			ps.raw.b = src.takeWhole()
			ev = event{gen: bc.gen, msg: &ps.raw, more: src.buffered() > 0, ack: bc.ack}
		} else {
			m, err := bc.fe.Receive()
			ev = event{gen: bc.gen, msg: m, more: err == nil && src.buffered() > 0, err: err, ack: bc.ack}
		}
		ok := ps.loopStep(ev, dir)
		ps.raw.b = nil // sent by now (or dropped): let a large row's buffer go
		if !ok || ev.err != nil {
			return
		}
		if dir == loopBackend && ps.loopBC != bc {
			// Its transaction over, the connection went back to its pool:
			// whatever else it sent, or its end, is not this session's
			// (the next session to take it finds it, see
			// loopAttachPooled; the loop sees its end, see serveIdle).
			// What the client's socket did not take of the answer still
			// is: below.
			rerr = nil
			break
		}
	}
	if rerr != nil {
		if dir == loopClient {
			ps.loopStep(event{fromClient: true, err: rerr, ack: ps.cack}, dir)
		} else {
			ps.loopStep(event{gen: bc.gen, err: rerr, ack: bc.ack}, dir)
		}
		return
	}
	if ps.inLoop && (ps.out.pending() > 0 || ps.loopBC != nil && ps.loopBC.out.pending() > 0) {
		// Backpressure: an outbox's writer takes over what the socket did
		// not take, and the readers, not the loop, wait for it.
		ps.leaveLoop(false, false)
		ps.kickRun()
	}
}

// loopStep handles one event on the loop (the session's lock held), as
// inlineLocked does on a reader: the event, then a step — but a step only
// when it cannot wait (the session keeps its server connection and
// stays on it, or, transaction-pooled, takes one from its pool at once);
// whatever else is left to run, and the session leaves the loop. False
// when the session left the loop.
func (ps *protoSession) loopStep(ev event, dir int) bool {
	if ps.over {
		ps.leaveLoop(false, false)
		ps.kickRun()
		return false
	}
	ps.loopAck, ps.loopAcked = ev.ack, false
	over := ps.handle(ev)
	needRun := false
	if !over {
		switch {
		case dir == loopClient && ps.bc == nil && ps.pooled() && ps.wantsServer() && !ps.loopAttachPooled():
			needRun = true // a connection to wait for, log in, or reset: run's
		case !ps.loopKeeps():
			needRun = true
		case dir == loopBackend && ps.pending == nil:
			// Nothing of the client's waits, and loopKeeps checked what
			// stepWith would about the routes: a server message needs no
			// step — but for a pooled session's last answer of its
			// transaction, after which its connection goes back to the
			// pool. (A connection the proxy cut ends in the loop's next
			// read; the client's next request meets the cut in stepWith.)
			ps.maybePark()
		default:
			over = ps.stepWith(ps.ctx, ps.rt)
		}
	}
	if over {
		ps.over = true
	}
	needRun = needRun || over || ps.pending != nil || ps.heldAck != nil || ps.toFull || !ps.nextWake().IsZero() ||
		ps.bc != ps.loopBC || ev.err != nil
	// The message's acknowledgement, given (loopAcked), needs nothing
	// more: no reader waits for it while the session is on the loop. One
	// held, or left pending, is given for real after the session leaves
	// the loop, to the reader leaveLoop restarts waiting for it. A server
	// connection the step gave back to its pool (park) is no longer this
	// session's: whatever became of its acknowledgement is not either.
	acked := ps.loopAcked || dir == loopBackend && (ps.bc == nil || ps.bc.ack != ev.ack)
	ps.loopAck = nil
	if !needRun && acked {
		return true
	}
	ps.leaveLoop(dir == loopClient && !acked, dir == loopBackend && !acked)
	ps.kickRun()
	return false
}

// loopKeeps says whether the session the loop serves may stay there under
// the current routes (its lock held): on the server connection the loop
// serves, which it stays on — or, transaction-pooled between
// transactions, with none.
//
// The placement is worked out once per version of the routes (keptUnder):
// the loop asks for every message, and the routes change seldom.
func (ps *protoSession) loopKeeps() bool {
	bc := ps.bc
	if !ps.idleTxLost.IsZero() || bc != ps.loopBC {
		return false
	}
	if bc == nil {
		return ps.pooled()
	}
	r, changed := ps.routes()
	if changed != nil && changed == ps.keptUnder {
		return true
	}
	if !ps.place.stays(r, bc.t, bc.fallback) || ps.place.leaves(r, bc.t, bc.fallback) {
		return false
	}
	ps.keptUnder = changed
	return true
}

// loopAttachPooled gives a pooled session on its loop, whose client began
// a transaction, the server connection it used last, if that one is idle
// in its pool on the primary (most transactions: then its state is there
// and nothing is replayed): it is served on the loop from here on
// (handed to a loop first if it was not on one). False: nothing changed;
// run takes the session and waits, logs in, resets or replays as needed
// (attachPooled).
func (ps *protoSession) loopAttachPooled() bool {
	if ps.discard || !ps.retryAt.IsZero() && time.Now().Before(ps.retryAt) || ps.st.InLostBlock() {
		return false
	}
	r, _ := ps.routes()
	if r.RWAction != ActRoute || r.RW == nil {
		return false // pooled sessions are the read-write listener's (see pooled)
	}
	cp := ps.p.pool
	bc := cp.takeHeld(ps.pool.pl, *r.RW, ps)
	if bc == nil {
		return false
	}
	if bc.src.buffered() > 0 || bc.fe.ReadBufferLen() > 0 || !bc.src.frames {
		// Sent something while idle (or not on whole messages): not
		// usable for a transaction as it is.
		bc.release(false)
		return false
	}
	bc.lmu.Lock()
	onLoop := bc.lfd >= 0
	if onLoop {
		bc.lowner = ps
	}
	bc.lmu.Unlock()
	if !onLoop {
		if err := bc.toLoop(ps.sl, ps); err != nil {
			ps.log.Debug("hand a pooled server connection to the loop", "err", err)
			cp.put(bc, ps.rt, ps.rtChanged)
			return false
		}
	}
	if !ps.claim(bc) {
		bc.lmu.Lock()
		bc.lowner = nil
		bc.lmu.Unlock()
		cp.put(bc, ps.rt, ps.rtChanged)
		return false
	}
	ps.loopBC = bc
	ps.pool.parked = false
	ps.p.poolLoopTakes.Add(1)
	return true
}

func (ps *protoSession) kickRun() {
	select {
	case ps.kick <- struct{}{}:
	default:
	}
}

// isDeadline says whether err is a read deadline's.
func isDeadline(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
