package proxy

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
)

// The data path. Once a session is routed, its two sockets leave Go's
// network poller and are served by an event loop: one epoll instance and
// one goroutine that waits on it (level-triggered) and, for every socket
// that is readable, reads once into the loop's buffer and writes the bytes
// straight to the other socket. This is the structure of HAProxy's and
// pgbouncer's data path, and it is what makes the proxy cheap for a
// request/response protocol: a query and its answer cost one epoll wait
// (shared by every session that is ready), one read and one write per
// direction — no goroutine wake-up, no scheduler hand-off between threads,
// no futex, no extra read to find the socket empty. The copy through Go's
// net.Conn (two goroutines per session) cost 1.5–2 times the CPU per
// transaction, the difference spent in the Go scheduler.
//
// Backpressure: when the destination does not take everything, the rest is
// kept in a per-flow buffer (taken from the loop's free list), the source
// stops being read and the destination is watched for writability until
// the buffer is written; so no more than one buffer per direction is held.
//
// Ownership: the loop goroutine alone reads, writes and closes a session's
// file descriptors, so a descriptor number can never be reused under it.
// Other goroutines (fencing, shutdown) end a session with session.close,
// which shuts both sockets down at once (the peers see the connection end
// immediately, and no more bytes pass) and asks the loop to close them.

const (
	bufSize     = 32 << 10 // bytes read per system call
	maxFreeBufs = 64       // idle backpressure buffers a loop keeps
	maxEvents   = 128      // events taken per epoll wait

	// bytesFlushInterval bounds how long bytes counted by a loop wait
	// before they are added to holdfast_proxy_bytes_total. Bytes are
	// counted in plain integers on the data path and published at most
	// this much later (and whenever a session ends).
	bytesFlushInterval = time.Second

	// yieldInterval is how often a busy loop yields to the Go scheduler.
	// The runtime's monitor thread takes the processor (P) away from a
	// goroutine that has not been rescheduled for 10 ms when it is in a
	// system call, which a loop nearly always is: the loop then pays for
	// getting a P back, and the monitor, having had work, polls every
	// 20 µs again. A loop that yields more often than that is never
	// treated as long-running.
	yieldInterval = 5 * time.Millisecond

	wakeToken = 0 // epoll token of the loop's wake-up pipe
)

// Indexes into loop.counts.
const (
	dirToBackend = 0
	dirToClient  = 1
)

// end is one socket of a session, as the loop sees it.
type end struct {
	s     *session
	fd    int
	token uint64
	want  uint32 // the epoll events wanted now; 0: not registered
	out   *flow  // the flow that reads from this socket
	in    *flow  // the flow that writes to this socket
}

// flow is one direction of a session: bytes read from src, written to dst.
type flow struct {
	src, dst *end
	count    *uint64 // the loop's count of bytes written in this flow's listener and direction
	pending  []byte  // read from src, not yet written to dst; nil when none
	eof      bool    // src ended; dst is shut for writing once pending is written
	done     bool    // the end of src was passed on to dst
}

// epoller is an event loop's epoll instance and the pipe that wakes it:
// the part the pass-through loop (loop) and session mode's (sessLoop)
// share.
type epoller struct {
	epfd         int
	wakeR, wakeW int // a non-blocking pipe; its read end is registered under wakeToken
}

// newEpoller creates the epoll instance and registers the wake-up pipe.
func newEpoller() (epoller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return epoller{}, fmt.Errorf("create epoll instance: %w", err)
	}
	var pipe [2]int
	if err := syscall.Pipe2(pipe[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		_ = syscall.Close(epfd)
		return epoller{}, fmt.Errorf("create wake-up pipe: %w", err)
	}
	ep := epoller{epfd: epfd, wakeR: pipe[0], wakeW: pipe[1]}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setToken(&ev, wakeToken)
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, ep.wakeR, &ev); err != nil {
		ep.release()
		return epoller{}, fmt.Errorf("register wake-up pipe: %w", err)
	}
	return ep, nil
}

// release closes the epoll instance and the pipe.
func (ep epoller) release() {
	_ = syscall.Close(ep.epfd)
	_ = syscall.Close(ep.wakeR)
	_ = syscall.Close(ep.wakeW)
}

// wake makes the loop's wait return.
func (ep epoller) wake() {
	one := [1]byte{1}
	// EAGAIN: the pipe is full, the loop will wake anyway.
	_, _ = syscall.Write(ep.wakeW, one[:])
}

// drainWake empties the wake-up pipe.
func (ep epoller) drainWake() {
	var b [64]byte
	for {
		n, _ := syscall.Read(ep.wakeR, b[:])
		if n < len(b) {
			return
		}
	}
}

// waitFor blocks until sockets are ready, or timeout milliseconds (-1:
// no limit), and returns how many events it got.
//
// (Polling first without blocking, to skip the runtime's bookkeeping for
// a blocking system call when events are already there, showed no clear
// gain under pgbench: when the poll finds nothing, which is often with a
// request/response load, it costs a second system call.)
func (ep epoller) waitFor(events []syscall.EpollEvent, timeout int) int {
	for {
		r, _, e := syscall.Syscall6(syscall.SYS_EPOLL_PWAIT, uintptr(ep.epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(timeout), 0, 0)
		if e == 0 {
			return int(r)
		}
		// EINTR; nothing else can happen with a valid epoll descriptor and
		// buffer, so retrying is the only sensible answer.
	}
}

// loop is one event loop of the data path; see the comment above.
type loop struct {
	epoller
	bytes   [2][2]prometheus.Counter
	stopped chan struct{} // closed when the loop goroutine has returned

	// Only the loop goroutine uses these.
	buf       []byte
	free      [][]byte
	counts    [2][2]uint64 // bytes not yet added to the counters, [listener][direction]
	flushedAt time.Time

	ends  map[uint64]*end // the sockets of the loop's sessions, by epoll token
	token uint64          // the last token handed out

	mu       sync.Mutex
	adding   []*session // sessions handed over, not yet registered
	closing  []*session // sessions other goroutines asked to close
	stopping bool
}

// listenerIndex maps a listener name to the first index of loop.counts.
func listenerIndex(listener string) int {
	if listener == ListenerRO {
		return 1
	}
	return 0
}

// newLoop creates an event loop; start runs it. bytes are the byte
// counters by listener index and direction.
func newLoop(bytes [2][2]prometheus.Counter) (*loop, error) {
	ep, err := newEpoller()
	if err != nil {
		return nil, err
	}
	return &loop{
		epoller: ep, bytes: bytes,
		stopped: make(chan struct{}),
		buf:     make([]byte, bufSize),
		ends:    map[uint64]*end{},
	}, nil
}

// start runs the loop in its own goroutine until stop.
func (l *loop) start() { go l.run() }

// stop ends the loop and releases its descriptors once it has returned.
// Every session given to it must have ended first.
func (l *loop) stop() {
	l.mu.Lock()
	l.stopping = true
	l.mu.Unlock()
	l.wake()
	<-l.stopped
	l.release()
}

var errSessionClosed = errors.New("session closed before it was handed to the data path")

// add hands a session's connections to the loop: from now on the loop owns
// their sockets (the net.Conns are closed; the sockets live on in
// descriptors of the loop's own). When the session ends the loop closes
// s.ended. An error leaves the session closed (s.ended closed too).
func (l *loop) add(s *session) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.phase != phaseConns {
		return errSessionClosed
	}
	cfd, err := takeFD(s.client)
	if err != nil {
		s.closeConnsLocked()
		return fmt.Errorf("take over the client connection: %w", err)
	}
	bfd, err := takeFD(s.backend)
	if err != nil {
		_ = syscall.Close(cfd)
		s.closeConnsLocked()
		return fmt.Errorf("take over the backend connection: %w", err)
	}
	_ = s.client.Close()
	_ = s.backend.Close()
	c, b := &end{s: s, fd: cfd}, &end{s: s, fd: bfd}
	li := listenerIndex(s.listener)
	s.toBackend = flow{src: c, dst: b, count: &l.counts[li][dirToBackend]}
	s.toClient = flow{src: b, dst: c, count: &l.counts[li][dirToClient]}
	c.out, c.in = &s.toBackend, &s.toClient
	b.out, b.in = &s.toClient, &s.toBackend
	s.ends = [2]*end{c, b}
	s.loop = l
	s.phase = phaseLoop
	// The loop registers the sockets itself: epoll registrations and the
	// token map are the loop goroutine's alone.
	l.mu.Lock()
	l.adding = append(l.adding, s)
	l.mu.Unlock()
	l.wake()
	return nil
}

// takeFD duplicates a TCP connection's socket into a descriptor that Go's
// poller does not know (still non-blocking, close-on-exec).
func takeFD(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%T is not a socket", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(s uintptr) {
		r, _, e := syscall.Syscall(syscall.SYS_FCNTL, s, syscall.F_DUPFD_CLOEXEC, 0)
		if e != 0 {
			dupErr = e
			return
		}
		fd = int(r)
	}); err != nil {
		return -1, err
	}
	if dupErr != nil {
		return -1, fmt.Errorf("duplicate socket: %w", dupErr)
	}
	return fd, nil
}

// requestClose asks the loop to close s (from any goroutine).
func (l *loop) requestClose(s *session) {
	l.mu.Lock()
	l.closing = append(l.closing, s)
	l.mu.Unlock()
	l.wake()
}

// setWant registers, re-registers or unregisters e for the events in want.
// A socket that wants nothing is not registered at all, so a hang-up or
// error on it cannot make the loop spin.
func (l *loop) setWant(e *end, want uint32) error {
	if want == e.want {
		return nil
	}
	var err error
	switch {
	case want == 0:
		err = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, e.fd, nil)
	default:
		op := syscall.EPOLL_CTL_MOD
		if e.want == 0 {
			op = syscall.EPOLL_CTL_ADD
		}
		ev := syscall.EpollEvent{Events: want}
		setToken(&ev, e.token)
		err = syscall.EpollCtl(l.epfd, op, e.fd, &ev)
	}
	if err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	e.want = want
	return nil
}

func setToken(ev *syscall.EpollEvent, t uint64) {
	ev.Fd, ev.Pad = int32(uint32(t)), int32(uint32(t>>32))
}

func token(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// run is the loop goroutine.
func (l *loop) run() {
	defer close(l.stopped)
	events := make([]syscall.EpollEvent, maxEvents)
	l.flushedAt = time.Now()
	yielded := l.flushedAt
	for {
		n := l.wait(events)
		for i := range n {
			ev := &events[i]
			t := token(ev)
			if t == wakeToken {
				if l.woken() {
					l.flush()
					return
				}
				continue
			}
			if e := l.ends[t]; e != nil { // nil: its session was closed earlier in this batch
				l.handle(e, ev.Events)
			}
		}
		now := time.Now()
		if now.Sub(l.flushedAt) >= bytesFlushInterval {
			l.flush()
		}
		if now.Sub(yielded) >= yieldInterval {
			// See yieldInterval.
			runtime.Gosched()
			yielded = now
		}
	}
}

// wait blocks until sockets are ready and returns how many events it
// got; while bytes wait to be published, at most until they are due.
func (l *loop) wait(events []syscall.EpollEvent) int {
	timeout := -1
	if l.counts != ([2][2]uint64{}) {
		timeout = int(max(time.Until(l.flushedAt.Add(bytesFlushInterval)).Milliseconds()+1, 0))
	}
	return l.waitFor(events, timeout)
}

// woken drains the wake-up pipe, registers the sessions handed over,
// closes the sessions others asked to close and reports whether the loop
// is to stop.
func (l *loop) woken() bool {
	l.drainWake()
	l.mu.Lock()
	adding, closing, stopping := l.adding, l.closing, l.stopping
	l.adding, l.closing = nil, nil
	l.mu.Unlock()
	for _, s := range adding {
		for _, e := range s.ends {
			l.token++
			e.token = l.token
			l.ends[e.token] = e
		}
		l.update(s)
	}
	for _, s := range closing {
		l.closeSession(s)
	}
	return stopping
}

// handle serves one ready socket.
func (l *loop) handle(e *end, events uint32) {
	s := e.s
	const errs = syscall.EPOLLERR | syscall.EPOLLHUP
	if e.want&syscall.EPOLLOUT != 0 && events&(syscall.EPOLLOUT|errs) != 0 {
		if !l.writePending(e.in) {
			return
		}
	}
	if e.want&syscall.EPOLLIN != 0 && events&(syscall.EPOLLIN|errs) != 0 {
		if !l.pump(e.out) {
			return
		}
	}
	l.update(s)
}

// pump reads once from f's source and writes what it got to f's
// destination, keeping what the destination did not take. It reports
// false if the session was closed.
func (l *loop) pump(f *flow) bool {
	n, errno := sysRead(f.src.fd, l.buf)
	switch {
	case errno == syscall.EAGAIN || errno == syscall.EINTR:
		return true
	case errno != 0:
		l.closeSession(f.src.s)
		return false
	case n == 0:
		f.eof = true
		return l.passEOF(f)
	}
	w, errno := sysSend(f.dst.fd, l.buf[:n])
	if errno != 0 && errno != syscall.EAGAIN && errno != syscall.EINTR {
		l.closeSession(f.src.s)
		return false
	}
	*f.count += uint64(w)
	if w < n {
		f.pending = append(l.getBuf(), l.buf[w:n]...)
	}
	return true
}

// writePending writes f's kept bytes to its destination. It reports false
// if the session was closed.
func (l *loop) writePending(f *flow) bool {
	w, errno := sysSend(f.dst.fd, f.pending)
	if errno != 0 && errno != syscall.EAGAIN && errno != syscall.EINTR {
		l.closeSession(f.src.s)
		return false
	}
	*f.count += uint64(w)
	if w < len(f.pending) {
		f.pending = f.pending[:copy(f.pending, f.pending[w:])]
		return true
	}
	l.putBuf(f.pending)
	f.pending = nil
	if f.eof {
		return l.passEOF(f)
	}
	return true
}

// passEOF passes the end of f's source on as a half-close of its
// destination once everything read was written, as a plain TCP connection
// would behave; when both directions have ended, the session is closed.
// It reports false if the session was closed.
func (l *loop) passEOF(f *flow) bool {
	if f.pending != nil || f.done {
		return true
	}
	f.done = true
	s := f.src.s
	if err := syscall.Shutdown(f.dst.fd, syscall.SHUT_WR); err != nil || (s.toBackend.done && s.toClient.done) {
		l.closeSession(s)
		return false
	}
	return true
}

// update brings the epoll registration of both of s's sockets in line
// with what its flows need: read a source whose flow is neither ended nor
// holding unwritten bytes; watch a destination that has unwritten bytes.
func (l *loop) update(s *session) {
	for _, e := range s.ends {
		var want uint32
		if f := e.out; !f.eof && f.pending == nil {
			want |= syscall.EPOLLIN
		}
		if e.in.pending != nil {
			want |= syscall.EPOLLOUT
		}
		if err := l.setWant(e, want); err != nil {
			l.closeSession(s)
			return
		}
	}
}

// closeSession closes s's sockets (on the loop goroutine only) and
// signals its end.
func (l *loop) closeSession(s *session) {
	s.mu.Lock()
	if s.phase == phaseClosed {
		s.mu.Unlock()
		return
	}
	s.phase = phaseClosed
	for _, e := range s.ends {
		delete(l.ends, e.token)
		_ = syscall.Close(e.fd) // also removes it from the epoll set
	}
	s.mu.Unlock()
	for _, f := range []*flow{&s.toBackend, &s.toClient} {
		if f.pending != nil {
			l.putBuf(f.pending)
			f.pending = nil
		}
	}
	l.flush()
	close(s.ended)
}

// flush adds the counted bytes to the Prometheus counters.
func (l *loop) flush() {
	for i := range l.counts {
		for d, n := range l.counts[i] {
			if n > 0 {
				l.bytes[i][d].Add(float64(n))
				l.counts[i][d] = 0
			}
		}
	}
	l.flushedAt = time.Now()
}

// getBuf returns an empty buffer with room for bufSize bytes.
func (l *loop) getBuf() []byte {
	if n := len(l.free); n > 0 {
		b := l.free[n-1]
		l.free = l.free[:n-1]
		return b
	}
	return make([]byte, 0, bufSize)
}

func (l *loop) putBuf(b []byte) {
	if len(l.free) < maxFreeBufs && cap(b) == bufSize {
		l.free = append(l.free, b[:0])
	}
}

// sysRead is recv(2) on a non-blocking socket, without the runtime's
// bookkeeping for a system call that may block (it cannot). recvfrom, not
// read: read goes through the file layer (a position lock check, the
// iterator wrapper) before it reaches the socket, which cost measurably
// more per call under pgbench.
func sysRead(fd int, b []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), 0
}

// sysSend is send(2) on a non-blocking socket, with MSG_NOSIGNAL: a peer
// that is gone is an EPIPE, not a SIGPIPE.
func sysSend(fd int, b []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), syscall.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), 0
}
