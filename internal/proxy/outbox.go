package proxy

import (
	"fmt"
	"net"
	"sync"
	"syscall"
)

// outboxLimit is how many bytes a session's outbox may hold (queued and
// being written) before the session stops taking messages bound for that
// peer: the backpressure of one direction, which leaves the other
// direction running.
const outboxLimit = 4 * flushThreshold

// outboxKeep bounds the buffer capacity an outbox keeps between bursts
// (a larger one, grown by a long result set, is let go after use).
const outboxKeep = 2 * outboxLimit

// outbox is where session mode writes to one peer (the client, or a server
// connection). Until start it writes straight to the connection, as the
// startup and the login do. Once started, Write (pgproto3's Flush) only
// copies the bytes and returns: a goroutine of the outbox's own writes
// them out. So the session goroutine never blocks on a peer that does not
// read: a client that pipelines without reading its answers until its own
// writes would block (libpq, pgx) had the session goroutine blocked
// writing to the server while the server waited for the session to read
// its answers — a deadlock once the socket buffers were full both ways.
// The session asks blocked before it takes another message bound for this
// peer, and waits on ready when it is: one direction's backpressure never
// stops the other.
//
// On a plain TCP connection, bytes handed over while nothing is queued
// are first offered to the socket without waiting (one non-blocking
// write): when it has room, as it mostly does, they are written at once,
// and the writer goroutine is woken only for what the socket did not
// take.
//
// Write is called by the session goroutine only; close and blocked may be
// called from any goroutine.
type outbox struct {
	conn net.Conn
	raw  syscall.RawConn       // conn's socket, for the non-blocking first try; nil: none (TLS)
	try  func(fd uintptr) bool // tryFD, made once (a closure per write would allocate)
	tryB []byte                // tryFD's bytes to write, under mu
	tryN int                   // what tryFD wrote

	mu      sync.Mutex
	fd      int    // >= 0: loop mode (see toFD): the socket Write tries; no writer runs
	suspend bool   // toFD: the writer ends once the queue is empty
	queued  []byte // handed over and not yet taken by the writer
	writing int    // bytes the writer is writing now
	err     error  // the first write error: every later Write returns it
	running bool   // the writer goroutine runs (Write queues)
	closing bool   // the writer ends once the queue is empty
	want    bool   // blocked said yes: signal ready when there is room
	kick    chan struct{}
	ready   chan struct{} // room again (or a write failed) after blocked said yes
	done    chan struct{} // closed when the writer has ended
}

func newOutbox(c net.Conn) *outbox {
	o := &outbox{conn: c, fd: -1, kick: make(chan struct{}, 1), ready: make(chan struct{}, 1), done: make(chan struct{})}
	if tc, ok := c.(*net.TCPConn); ok {
		if raw, err := tc.SyscallConn(); err == nil {
			o.raw, o.try = raw, o.tryFD
		}
	}
	return o
}

// start begins writing on the outbox's own goroutine.
func (o *outbox) start() {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.running || o.closing {
		return
	}
	o.running = true
	go o.write()
}

// Write queues b (it is copied) once the outbox is started, else writes
// it to the connection. It returns the first write error the writer met.
func (o *outbox) Write(b []byte) (int, error) {
	o.mu.Lock()
	if o.err != nil {
		err := o.err
		o.mu.Unlock()
		return 0, err
	}
	total := len(b)
	if o.fd >= 0 {
		o.writeFD(b)
		err := o.err
		o.mu.Unlock()
		if err != nil {
			return 0, err
		}
		return total, nil
	}
	if !o.running {
		o.mu.Unlock()
		return o.conn.Write(b)
	}
	if len(b) > 0 && len(o.queued) == 0 && o.writing == 0 && !o.closing && o.raw != nil {
		// Nothing queued or being written: the socket may take b now. The
		// writer cannot start meanwhile (it takes o.mu to see a queue).
		n := o.tryWrite(b)
		if n == len(b) {
			o.mu.Unlock()
			return total, nil
		}
		b = b[n:]
	}
	if len(b) > 0 {
		o.queued = append(o.queued, b...)
		select {
		case o.kick <- struct{}{}:
		default:
		}
	}
	o.mu.Unlock()
	return total, nil
}

// writeFD is Write in loop mode: b goes to the socket at once if nothing
// is queued, else (and whatever the socket does not take) it is queued,
// for the writer that starts when the session leaves the loop (toConn):
// the loop sees the queue (pending) and hands the session back. A write
// error is kept as the outbox's error. o.mu must be held.
func (o *outbox) writeFD(b []byte) {
	if len(o.queued) == 0 && len(b) > 0 {
		for len(b) > 0 {
			w, errno := sysSend(o.fd, b)
			if errno == syscall.EINTR {
				continue
			}
			if errno == syscall.EAGAIN {
				break
			}
			if errno != 0 {
				o.err = fmt.Errorf("write: %w", errno)
				return
			}
			b = b[w:]
		}
	}
	o.queued = append(o.queued, b...)
}

// pending is how many bytes the outbox holds that are not written yet.
func (o *outbox) pending() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.queued) + o.writing
}

// toFD puts the outbox in loop mode: its writer goroutine (if running)
// ends, and from now on Write sends to fd (a duplicate of the
// connection's socket, owned by the session's event loop) without
// waiting. It refuses (false) while anything is queued or being written:
// those bytes belong before any the loop would send. Only the session's
// lock holder calls it (no Write runs meanwhile).
func (o *outbox) toFD(fd int) bool {
	o.mu.Lock()
	if len(o.queued) > 0 || o.writing > 0 || o.err != nil || o.closing {
		o.mu.Unlock()
		return false
	}
	running := o.running
	o.suspend = true
	select {
	case o.kick <- struct{}{}:
	default:
	}
	o.mu.Unlock()
	if running {
		<-o.done
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.suspend = false
	o.done = make(chan struct{})
	if len(o.queued) > 0 || o.err != nil {
		// Cannot happen (no Write ran), but bytes must never be reordered.
		o.running = true
		go o.write()
		return false
	}
	o.fd = fd
	return true
}

// toConn ends loop mode: the outbox writes to conn (the connection made
// again from the loop's socket) through its writer goroutine, which starts
// with whatever the loop could not send. Only the session's lock holder
// calls it.
func (o *outbox) toConn(c net.Conn) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.fd = -1
	o.conn, o.raw, o.try = c, nil, nil
	if tc, ok := c.(*net.TCPConn); ok {
		if raw, err := tc.SyscallConn(); err == nil {
			o.raw, o.try = raw, o.tryFD
		}
	}
	if o.closing && len(o.queued) == 0 {
		return
	}
	o.running = true
	go o.write()
}

// tryWrite writes what of b the socket takes without waiting. Any
// failure counts as nothing taken: the writer meets it again and records
// it.
// o.mu must be held.
func (o *outbox) tryWrite(b []byte) int {
	o.tryB, o.tryN = b, 0
	err := o.raw.Write(o.try)
	n := o.tryN
	o.tryB = nil
	if err != nil {
		return 0
	}
	return n
}

// tryFD is tryWrite's one attempt on the socket: it never waits for it.
func (o *outbox) tryFD(fd uintptr) bool {
	if w, err := syscall.Write(int(fd), o.tryB); err == nil && w > 0 {
		o.tryN = w
	}
	return true
}

// blocked says whether the outbox holds outboxLimit bytes or more (a
// write error frees it: the session then meets the error on its next
// write). When it does, ready is signalled once there is room.
func (o *outbox) blocked() bool {
	if o == nil {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil || len(o.queued)+o.writing < outboxLimit {
		return false
	}
	o.want = true
	return true
}

// readyChan is ready, or nil (never ready) for a nil outbox.
func (o *outbox) readyChan() <-chan struct{} {
	if o == nil {
		return nil
	}
	return o.ready
}

// close ends the writer once what is queued is written (or a write
// failed); with wait, it waits for that. The caller bounds the wait with
// a write deadline on the connection. Later writes go straight to the
// connection.
func (o *outbox) close(wait bool) {
	if o == nil {
		return
	}
	o.mu.Lock()
	running := o.running
	o.closing = true
	select {
	case o.kick <- struct{}{}:
	default:
	}
	o.mu.Unlock()
	if running && wait {
		<-o.done
	}
}

// write is the writer goroutine.
func (o *outbox) write() {
	defer close(o.done)
	var buf []byte
	o.mu.Lock()
	defer o.mu.Unlock()
	for {
		for len(o.queued) == 0 && !o.closing && !o.suspend && o.err == nil {
			o.mu.Unlock()
			<-o.kick
			o.mu.Lock()
		}
		if o.err != nil || len(o.queued) == 0 {
			o.running = false
			return
		}
		buf, o.queued = o.queued, buf[:0]
		o.writing = len(buf)
		o.mu.Unlock()
		_, err := o.conn.Write(buf)
		o.mu.Lock()
		o.writing = 0
		if err != nil && o.err == nil {
			o.err = err
		}
		if cap(buf) > outboxKeep {
			buf = nil
		}
		if o.want && (o.err != nil || len(o.queued) < outboxLimit) {
			o.want = false
			select {
			case o.ready <- struct{}{}:
			default:
			}
		}
	}
}
