package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// maxReplay bounds the client bytes an opening keeps for replay.
// PostgreSQL's startup packet is at most 10000 bytes, an SSLRequest 8.
const maxReplay = 16 << 10

// startupChunk is the most read at once while a connection starts.
const startupChunk = 4 << 10

// longAgo is a deadline in the past: it interrupts a blocked Read.
var longAgo = time.Unix(1, 0)

// errClientGone: the client closed (or failed) before a backend answered.
var errClientGone = errors.New("the client left")

// errUnanswered: the backend accepted the TCP connection but did not answer
// the client's bytes within StartupTimeout.
var errUnanswered = errors.New("no answer")

// opening is a client connection that no backend has answered yet. Every
// byte the client sent is kept (up to maxReplay) and replayed to the next
// backend tried: nothing has reached the client yet, so a backend that
// accepted the TCP connection but never answered (a frozen postmaster) is
// replaced by another attempt without the client noticing. It is used by
// one goroutine at a time.
type opening struct {
	c        net.Conn
	sent     []byte // the client's bytes so far (nil after overflow)
	overflow bool   // the client sent more than maxReplay: no replay possible
	// deadline, when set, bounds every wait for a backend (dial, answer).
	deadline time.Time
	// toBackend and toClient count the bytes passed to the backend that
	// answered and back, for holdfast_proxy_bytes_total.
	toBackend, toClient int
}

// keep records bytes the client sent.
func (o *opening) keep(b []byte) {
	if o.overflow {
		return
	}
	if len(o.sent)+len(b) > maxReplay {
		o.overflow, o.sent = true, nil
		return
	}
	o.sent = append(o.sent, b...)
}

// startup relays the client's bytes to bc — first the ones earlier
// backends did not answer — until bc answers, then writes bc's first bytes
// to the client: the two sockets are then ready for the data path, and the
// bytes still unread stay in the sockets. The protocol is not parsed: a
// server that speaks first answers at once; PostgreSQL answers the
// client's first message (SSLRequest, GSSENCRequest, startup packet)
// within milliseconds, or closes (a cancel request), and closing counts as
// an answer.
//
// It fails with errUnanswered when bc has not answered StartupTimeout after
// the client's latest bytes, or by o.deadline (a client that sends nothing
// waits as long as the backend lets it), errClientGone when the client closes first, and
// ctx's cause when ctx ends (the grant was revoked, the proxy stops). On
// failure bc is the caller's to close and the client has received nothing.
func (p *Proxy) startup(ctx context.Context, o *opening, bc net.Conn) error {
	timeout := p.o.StartupTimeout
	// Read deadlines of bc are set by the relay (on each client chunk) and
	// by interrupt; once interrupted they stay in the past.
	var mu sync.Mutex
	interrupted := false
	extend := func() {
		mu.Lock()
		defer mu.Unlock()
		if !interrupted {
			d := time.Now().Add(timeout)
			if !o.deadline.IsZero() && o.deadline.Before(d) {
				d = o.deadline
			}
			_ = bc.SetReadDeadline(d)
		}
	}
	interrupt := func() {
		mu.Lock()
		defer mu.Unlock()
		interrupted = true
		_ = bc.SetReadDeadline(longAgo)
	}
	defer func() { _ = bc.SetDeadline(time.Time{}) }()
	o.toBackend, o.toClient = 0, 0
	if len(o.sent) > 0 {
		extend()
		_ = bc.SetWriteDeadline(time.Now().Add(timeout))
		if _, err := bc.Write(o.sent); err != nil {
			return fmt.Errorf("replay the client's first %d bytes: %w", len(o.sent), err)
		}
		o.toBackend = len(o.sent)
		extend()
	}
	stop := context.AfterFunc(ctx, interrupt)
	defer stop()

	relayed := make(chan error, 1)
	go func() { relayed <- relayFirst(o, bc, timeout, extend, interrupt) }()
	buf := make([]byte, startupChunk)
	n, rerr := bc.Read(buf)
	// Stop the relay. A Read cut short by its deadline returns no bytes,
	// so nothing the client sent is lost: it stays in the socket.
	_ = o.c.SetReadDeadline(longAgo)
	cerr := <-relayed
	_ = o.c.SetReadDeadline(time.Time{})

	switch {
	case n > 0:
		_ = o.c.SetWriteDeadline(time.Now().Add(timeout))
		_, err := o.c.Write(buf[:n])
		_ = o.c.SetWriteDeadline(time.Time{})
		if err != nil {
			return fmt.Errorf("%w: pass the backend's answer on: %v", errClientGone, err)
		}
		o.toClient = n
		return nil
	case errors.Is(rerr, io.EOF):
		return nil // the backend closed: the data path passes that on
	case ctx.Err() != nil:
		return context.Cause(ctx)
	case cerr != nil && !errors.Is(cerr, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w: %v", errClientGone, cerr)
	case errors.Is(rerr, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w within %s of the client's first bytes", errUnanswered, timeout)
	}
	return fmt.Errorf("read the backend's answer: %w", rerr)
}

// relayFirst copies the client's bytes to bc, keeping them in o, until a
// read fails: the client closed, or startup stopped it with a deadline.
// Each chunk gives bc StartupTimeout (extend) to answer. When the client
// or bc fails, it interrupts startup's wait for bc.
func relayFirst(o *opening, bc net.Conn, timeout time.Duration, extend, interrupt func()) error {
	buf := make([]byte, startupChunk)
	for {
		n, err := o.c.Read(buf)
		if n > 0 {
			o.keep(buf[:n])
			_ = bc.SetWriteDeadline(time.Now().Add(timeout))
			if _, werr := bc.Write(buf[:n]); werr != nil {
				interrupt()
				return nil // bc failed: startup reads its error
			}
			o.toBackend += n
			extend()
		}
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				interrupt()
			}
			return err
		}
	}
}
