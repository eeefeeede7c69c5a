package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// Frame splitting on raw bytes: the first piece of serving session mode's
// steady state from an event loop instead of goroutines. A frameBuffer holds the bytes read from one peer of a session
// and hands them out as whole protocol messages — a type byte, an int32
// length that counts itself, the body — without decoding them, so that a
// message the session tracker does not change can be written through as
// the bytes it arrived as. It is one buffer per connection whoever reads
// into it (a goroutine blocked in Read, or a loop after a non-blocking
// read), so that a session can move between the two without losing the
// bytes one of them read ahead.
//
// A frameSource puts a frameBuffer under a connection's pgproto3 decoder
// (see frameSource), so that the decoding stays pgproto3's whichever side
// reads.

const (
	// frameHeaderLen is a message's type byte and length.
	frameHeaderLen = 5
	// frameReadSize is the room offered for each read: enough for a
	// typical answer (a few rows) in one system call.
	frameReadSize = 16 << 10
	// frameKeep bounds the buffer a frameBuffer keeps once it is empty: a
	// larger one, grown for a large message, is let go.
	frameKeep = 4 * frameReadSize
)

// frameBuffer splits the bytes of one connection into whole messages.
// Use: space, read into it, wrote; then next until it returns nil. The
// message next returns is valid until the following call to space.
type frameBuffer struct {
	buf     []byte
	r, w    int // buf[r:w] is read and not yet handed out
	maxBody int // the largest body accepted (a length above it is an error)
}

func newFrameBuffer(maxBody int) *frameBuffer {
	return &frameBuffer{maxBody: maxBody}
}

// buffered is how many bytes were read and not yet handed out (a partial
// message counts).
func (f *frameBuffer) buffered() int { return f.w - f.r }

// ready says whether a whole message is buffered (or the stream is
// corrupt: next then returns the error).
func (f *frameBuffer) ready() bool {
	n, err := f.pendingLen()
	return err != nil || (n > 0 && f.w-f.r >= n)
}

// next returns the next whole message (type byte, length, body), or nil
// when the bytes buffered do not hold one yet. An error means the stream
// is corrupt (a length below 4, or a body above maxBody): the connection
// cannot be read further.
func (f *frameBuffer) next() ([]byte, error) {
	n, err := f.wholeLen()
	if n == 0 {
		return nil, err
	}
	m := f.buf[f.r : f.r+n : f.r+n]
	f.r += n
	return m, nil
}

// wholeLen is the whole size of the message at f.r if all of it is
// buffered; 0 otherwise (or with the error of a corrupt length).
func (f *frameBuffer) wholeLen() (int, error) {
	n, err := f.pendingLen()
	if err != nil || f.w-f.r < n {
		return 0, err
	}
	return n, nil
}

// pendingLen is the whole size of the message at f.r, or 0 while its
// header is not complete.
func (f *frameBuffer) pendingLen() (int, error) {
	if f.w-f.r < frameHeaderLen {
		return 0, nil
	}
	l := int64(binary.BigEndian.Uint32(f.buf[f.r+1:]))
	if l < 4 || l-4 > int64(f.maxBody) {
		return 0, fmt.Errorf("split the stream into messages: message %q has length %d (at most %d allowed)", f.buf[f.r], l, f.maxBody+4)
	}
	return 1 + int(l), nil
}

// space returns where the next read goes: never empty, and large enough
// for the whole of a message whose header is buffered. The bytes not yet
// handed out are kept (moved to the front when that makes room); what
// next returned before is no longer valid.
func (f *frameBuffer) space() []byte {
	if f.r == f.w {
		f.r, f.w = 0, 0
		if cap(f.buf) > frameKeep {
			f.buf = nil
		}
	}
	need := frameReadSize
	if n, err := f.pendingLen(); err == nil && n > f.w-f.r {
		need = max(need, n-(f.w-f.r)) // the rest of a large message in one read
	}
	if len(f.buf)-f.w < need {
		if f.r > 0 && len(f.buf)-(f.w-f.r) >= need {
			f.w = copy(f.buf, f.buf[f.r:f.w])
			f.r = 0
		} else {
			nb := make([]byte, max(2*len(f.buf), f.w-f.r+need))
			f.w = copy(nb, f.buf[f.r:f.w])
			f.r = 0
			f.buf = nb
		}
	}
	return f.buf[f.w:]
}

// wrote records that n bytes were read into what space returned.
func (f *frameBuffer) wrote(n int) { f.w += n }

// errNoFrame is a frameSource's answer to a read in loop mode with no
// whole message buffered: the loop decodes only what ready says is there,
// so it means a broken invariant of the caller, not of the stream.
var errNoFrame = errors.New("no whole message buffered")

// frameSource is the io.Reader a session connection's pgproto3 decoder
// (Backend for the client, Frontend for a server) reads from. It starts
// as a pass-through (raw: the startup packet and login are read as
// before); once switched to frames (toFrames, at a message boundary with
// nothing read ahead) it hands the decoder one whole message at a time
// out of its frameBuffer, so the decoder never holds bytes of a message
// it has not returned: everything read ahead is in fb, where the session's
// event loop (protoloop.go) and the reader goroutine both find it. That
// is what lets a session move between the two at any message boundary
// without losing or reordering a byte.
//
// While conn is set (goroutine mode) a read with no whole message buffered
// blocks in conn.Read; with conn nil (loop mode, where the loop fills fb)
// it returns errNoFrame. A frameSource is used by one goroutine at a time:
// the session's reader, or its loop (the hand-over is under the session's
// lock).
type frameSource struct {
	conn   net.Conn
	raw    io.Reader // non-nil: pass-through, before toFrames
	rawN   int       // bytes passed through
	fb     *frameBuffer
	cur    []byte // the rest of the message being handed to the decoder
	frames bool
}

func newFrameSource(conn net.Conn, raw io.Reader, maxBody int) *frameSource {
	return &frameSource{conn: conn, raw: raw, fb: newFrameBuffer(maxBody)}
}

// toFrames switches s from pass-through to whole messages. The caller
// guarantees that the decoder holds no byte read ahead (the next byte on
// the connection starts a message).
func (s *frameSource) toFrames() {
	s.raw, s.frames = nil, true
}

// Read implements io.Reader for the decoder.
func (s *frameSource) Read(p []byte) (int, error) {
	if s.raw != nil {
		n, err := s.raw.Read(p)
		s.rawN += n
		return n, err
	}
	for len(s.cur) == 0 {
		m, err := s.fb.next()
		if err != nil {
			return 0, err
		}
		if m != nil {
			s.cur = m
			break
		}
		if s.conn == nil {
			return 0, errNoFrame
		}
		n, err := s.conn.Read(s.fb.space())
		s.fb.wrote(n)
		if n == 0 && err != nil {
			return 0, err
		}
	}
	n := copy(p, s.cur)
	s.cur = s.cur[n:]
	return n, nil
}

// wholeType is the type byte of the next message, if it is buffered whole
// and the decoder holds nothing of it (s is at a message boundary in
// frames mode); 0 otherwise.
func (s *frameSource) wholeType() byte {
	if !s.frames || len(s.cur) > 0 {
		return 0
	}
	if n, _ := s.fb.wholeLen(); n == 0 {
		return 0
	}
	return s.fb.buf[s.fb.r]
}

// takeWhole takes the message wholeType reported off s, as the bytes it
// arrived as, without decoding it; valid until the next read into s.
func (s *frameSource) takeWhole() []byte {
	m, _ := s.fb.next()
	return m
}

// buffered is how many bytes s holds that the decoder has not taken.
func (s *frameSource) buffered() int { return len(s.cur) + s.fb.buffered() }
