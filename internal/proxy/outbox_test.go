package proxy

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// tcpPair is a connected pair of loopback TCP connections.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return a, b
}

// An outbox never blocks its writer on a peer that does not read: it
// says it is blocked once outboxLimit bytes wait, signals ready once the
// peer has read, and the peer gets every byte in order (the ones the
// socket took at once and the ones queued alike).
func TestOutboxNeverBlocksAndKeepsOrder(t *testing.T) {
	a, b := tcpPair(t)
	o := newOutbox(a)
	o.start()
	var sent bytes.Buffer
	chunk := make([]byte, 8<<10)
	for i := 0; !o.blocked(); i++ {
		if i > 1<<16 {
			t.Fatal("the outbox never said blocked with a peer that does not read")
		}
		for j := range chunk {
			chunk[j] = byte(i + j/256)
		}
		sent.Write(chunk)
		if n, err := o.Write(chunk); err != nil || n != len(chunk) {
			t.Fatalf("Write: %d, %v", n, err)
		}
	}
	got := make(chan []byte, 1)
	go func() {
		_ = b.SetReadDeadline(time.Now().Add(time.Minute))
		buf, _ := io.ReadAll(io.LimitReader(b, int64(sent.Len())))
		got <- buf
	}()
	select {
	case <-o.readyChan():
	case <-time.After(time.Minute):
		t.Fatal("no ready signal after the peer read")
	}
	if buf := <-got; !bytes.Equal(buf, sent.Bytes()) {
		t.Fatalf("the peer got %d bytes, not the %d sent in order", len(buf), sent.Len())
	}
	o.close(true)
	if _, err := o.Write([]byte("after close")); err != nil {
		t.Fatalf("a write after close goes straight to the connection: %v", err)
	}
}

// The outbox's hot path — bytes the socket takes at once — allocates
// nothing.
func TestOutboxWriteAllocs(t *testing.T) {
	a, b := tcpPair(t)
	go func() { _, _ = io.Copy(io.Discard, b) }()
	o := newOutbox(a)
	o.start()
	defer o.close(false)
	msg := make([]byte, 200)
	if n := testing.AllocsPerRun(1000, func() {
		if _, err := o.Write(msg); err != nil {
			t.Fatal(err)
		}
	}); n > 0.01 {
		t.Errorf("%.2f allocations per write", n)
	}
}
