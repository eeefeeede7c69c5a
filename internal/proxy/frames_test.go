package proxy

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// frameStream encodes msgs as a server would send them.
func frameStream(t *testing.T, msgs ...pgproto3.BackendMessage) (stream []byte, each [][]byte) {
	t.Helper()
	for _, m := range msgs {
		b, err := m.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		each = append(each, b)
		stream = append(stream, b...)
	}
	return stream, each
}

// feed reads stream into f in reads of the sizes chunk picks, taking
// every whole message as soon as it is there, and returns them (copied:
// a message is valid only until the next read).
func feed(t *testing.T, f *frameBuffer, stream []byte, chunk func(room int) int) [][]byte {
	t.Helper()
	var got [][]byte
	for len(stream) > 0 {
		sp := f.space()
		if len(sp) == 0 {
			t.Fatal("space returned no room")
		}
		n := min(chunk(len(sp)), len(sp), len(stream))
		copy(sp, stream[:n])
		f.wrote(n)
		stream = stream[n:]
		for {
			m, err := f.next()
			if err != nil {
				t.Fatal(err)
			}
			if m == nil {
				break
			}
			got = append(got, bytes.Clone(m))
		}
	}
	return got
}

func TestFrameBufferSplitsWholeMessagesAcrossReads(t *testing.T) {
	stream, want := frameStream(t,
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("abalance"), DataTypeOID: 23, DataTypeSize: 4, Format: 0}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("42")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
		&pgproto3.ParseComplete{}, // an empty body
		&pgproto3.ReadyForQuery{TxStatus: 'T'},
	)
	for name, chunk := range map[string]func(int) int{
		"one byte per read": func(int) int { return 1 },
		"all at once":       func(room int) int { return room },
		"random":            func(room int) int { return 1 + rand.IntN(min(room, 13)) },
		"header split":      func(int) int { return 3 },
	} {
		t.Run(name, func(t *testing.T) {
			f := newFrameBuffer(maxClientMessageLen)
			got := feed(t, f, stream, chunk)
			if len(got) != len(want) {
				t.Fatalf("got %d messages, want %d", len(got), len(want))
			}
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Errorf("message %d: got % x, want % x", i, got[i], want[i])
				}
			}
			if f.buffered() != 0 {
				t.Errorf("%d bytes left over", f.buffered())
			}
		})
	}
}

func TestFrameBufferLargeMessage(t *testing.T) {
	big := strings.Repeat("x", 3<<20) // larger than frameKeep: the buffer grows for it, then shrinks
	stream, want := frameStream(t,
		&pgproto3.CommandComplete{CommandTag: []byte("BEGIN")},
		&pgproto3.DataRow{Values: [][]byte{[]byte(big)}},
		&pgproto3.ReadyForQuery{TxStatus: 'I'},
	)
	f := newFrameBuffer(maxClientMessageLen)
	reads := 0
	got := feed(t, f, stream, func(room int) int { reads++; return min(room, 100<<10) })
	if len(got) != 3 || !bytes.Equal(got[1], want[1]) || !bytes.Equal(got[2], want[2]) {
		t.Fatalf("the large message did not come through whole: %d messages", len(got))
	}
	if cap(f.buf) > len(want[1])+frameReadSize {
		t.Errorf("buffer grew to %d bytes for a message of %d", cap(f.buf), len(want[1]))
	}
	// Once read, the buffer a large message needed is let go.
	if f.space(); cap(f.buf) > frameKeep {
		t.Errorf("buffer of %d bytes kept after the large message (at most %d)", cap(f.buf), frameKeep)
	}
	// Whole reads: the rest of the large message is asked for in one read
	// when the peer has it (here, reads of up to 100 KiB).
	if limit := len(stream)/(100<<10) + 3; reads > limit {
		t.Errorf("%d reads for %d bytes in reads of up to 100 KiB", reads, len(stream))
	}
}

func TestFrameBufferRejectsCorruptLengths(t *testing.T) {
	for name, c := range map[string]struct {
		length  uint32
		maxBody int
	}{
		"below its own size": {3, 1 << 10},
		"above the limit":    {1<<10 + 5, 1 << 10},
		"negative as int32":  {0xffffffff, maxClientMessageLen},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFrameBuffer(c.maxBody)
			sp := f.space()
			sp[0] = 'Q'
			binary.BigEndian.PutUint32(sp[1:], c.length)
			f.wrote(frameHeaderLen)
			if m, err := f.next(); err == nil {
				t.Fatalf("next accepted length %d: %q", c.length, m)
			}
		})
	}
	// At the limit is fine.
	f := newFrameBuffer(8)
	sp := f.space()
	copy(sp, []byte{'d', 0, 0, 0, 12, 1, 2, 3, 4, 5, 6, 7, 8})
	f.wrote(13)
	if m, err := f.next(); err != nil || len(m) != 13 {
		t.Fatalf("next at the limit: %q, %v", m, err)
	}
}

// wholeType reports a message only when it is buffered whole and the
// decoder holds nothing of it; takeWhole hands it out as it arrived, and
// the decoder then goes on with the message after it.
func TestFrameSourceTakesWholeMessagesRaw(t *testing.T) {
	stream, each := frameStream(t,
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("a"), DataTypeOID: 23, DataTypeSize: 4, Format: 0}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("1"), nil, {}}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	src := newFrameSource(nil, nil, 1<<20)
	fe := pgproto3.NewFrontend(src, nil)
	if got := src.wholeType(); got != 0 {
		t.Fatalf("before toFrames: wholeType %q, want none", got)
	}
	src.toFrames()
	// Half of the row description: not whole yet.
	half := len(each[0]) / 2
	src.fb.wrote(copy(src.fb.space(), stream[:half]))
	if got := src.wholeType(); got != 0 {
		t.Fatalf("half a message buffered: wholeType %q, want none", got)
	}
	src.fb.wrote(copy(src.fb.space(), stream[half:]))
	for i, want := range []byte{'T', 'D'} {
		if got := src.wholeType(); got != want {
			t.Fatalf("message %d: wholeType %q, want %q", i, got, want)
		}
		if got := src.takeWhole(); !bytes.Equal(got, each[i]) {
			t.Fatalf("message %d: takeWhole %q, want %q", i, got, each[i])
		}
	}
	// The decoder takes the next one; part-way through it (its header
	// read, say), nothing is whole for the raw path.
	m, err := fe.Receive()
	if cc, ok := m.(*pgproto3.CommandComplete); err != nil || !ok || string(cc.CommandTag) != "SELECT 1" {
		t.Fatalf("after the raw messages the decoder got %#v, %v; want CommandComplete SELECT 1", m, err)
	}
	src.cur = []byte{1} // as if the decoder held part of a message
	if got := src.wholeType(); got != 0 {
		t.Fatalf("decoder mid-message: wholeType %q, want none", got)
	}
	src.cur = nil
	if got := src.wholeType(); got != 'Z' {
		t.Fatalf("wholeType %q, want Z", got)
	}
}
