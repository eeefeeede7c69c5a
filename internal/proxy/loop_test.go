package proxy

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(ents)
}

// Many concurrent sessions on few loops: every byte reaches its own
// client, in order, and nothing else does.
func TestDataPathManySessionsNoCrossTalk(t *testing.T) {
	a := startBackend(t, "pg-0")
	src := newFakeSource(mkView("pg-0", primary(a)))
	p := startProxy(t, src, func(o *Options) { o.Loops = 2 })
	const sessions, rounds = 40, 20
	var wg sync.WaitGroup
	errs := make(chan error, sessions)
	for i := range sessions {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", p.RWAddr(), 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			greeting := make([]byte, len("pg-0\n"))
			if _, err := io.ReadFull(c, greeting); err != nil {
				errs <- fmt.Errorf("session %d: greeting: %w", i, err)
				return
			}
			for r := range rounds {
				msg := fmt.Appendf(nil, "session %d round %d %s", i, r, bytes.Repeat([]byte{byte(i)}, 100*r))
				if _, err := c.Write(msg); err != nil {
					errs <- fmt.Errorf("session %d: write: %w", i, err)
					return
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(c, got); err != nil {
					errs <- fmt.Errorf("session %d: read: %w", i, err)
					return
				}
				if !bytes.Equal(got, msg) {
					errs <- fmt.Errorf("session %d round %d: got %q", i, r, got[:min(len(got), 40)])
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	eventually(t, "sessions gone", func() bool { return len(p.Status().Connections) == 0 })
}

// A client that sends much more than it reads for a while: the proxy holds
// back (the backend's echo fills the buffers on the way back, so the
// proxy keeps unwritten bytes and stops reading), and everything arrives,
// in order, once the client reads.
func TestDataPathBackpressure(t *testing.T) {
	a := startBackend(t, "pg-0")
	src := newFakeSource(mkView("pg-0", primary(a)))
	p := startProxy(t, src, nil)
	c := dial(t, p.RWAddr())
	if got := c.banner(); got != "pg-0" {
		t.Fatalf("reached %s", got)
	}
	big := make([]byte, 32<<20) // more than the socket buffers on the way
	_, _ = rand.Read(big)
	_ = c.c.SetDeadline(time.Now().Add(60 * time.Second))
	wrote := make(chan error, 1)
	go func() { _, err := c.c.Write(big); wrote <- err }()
	time.Sleep(300 * time.Millisecond)
	got := make([]byte, len(big))
	if _, err := io.ReadFull(c.r, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-wrote; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("echo differs")
	}
	c.stillOpen()
}

// The backend ending the connection reaches the client, and ended
// sessions leave no descriptor behind.
func TestDataPathBackendCloseAndNoLeak(t *testing.T) {
	// A backend that greets and hangs up.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, "bye\n")
			_ = c.Close()
		}
	})
	b := &backend{name: "pg-0", ln: ln, port: ln.Addr().(*net.TCPAddr).Port}
	src := newFakeSource(mkView("pg-0", primary(b)))
	p := startProxy(t, src, nil)

	// Warm up (the first session creates lazily allocated descriptors).
	warm := dial(t, p.RWAddr())
	warm.banner()
	warm.closedWithin(5 * time.Second)
	_ = warm.c.Close() // ends the other direction too
	eventually(t, "sessions gone", func() bool { return len(p.Status().Connections) == 0 })
	before := openFDs(t)
	for range 20 {
		c := dial(t, p.RWAddr())
		if got := c.banner(); got != "bye" {
			t.Fatalf("got %q", got)
		}
		if !c.closedWithin(5 * time.Second) {
			t.Fatal("the backend's close did not reach the client")
		}
		_ = c.c.Close() // until then the session is half-open, as TCP allows
	}
	eventually(t, "sessions gone", func() bool { return len(p.Status().Connections) == 0 })
	eventually(t, "descriptors released", func() bool { return openFDs(t) <= before })
}

// Fencing cuts a session even while it is streaming in both directions.
func TestDataPathFenceWhileBusy(t *testing.T) {
	a, b := startBackend(t, "pg-0"), startBackend(t, "pg-1")
	src := newFakeSource(mkView("pg-0", primary(a), replica(b, 0x3000000)))
	p := startProxy(t, src, nil)
	c := dial(t, p.RWAddr())
	c.banner()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // keep writing until the connection breaks
		chunk := make([]byte, 64<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := c.c.Write(chunk); err != nil {
				return
			}
		}
	})
	defer func() { close(stop); _ = c.c.Close(); wg.Wait() }()
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c.r, make([]byte, 1<<20)); err != nil {
		t.Fatalf("streaming: %v", err)
	}
	src.set(mkView("pg-1", primary(a), primary(b)), true)
	// The client sees its connection end: reads drain to EOF or a reset.
	done := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, c.r); done <- err }()
	select {
	case err := <-done:
		if err != nil && !isReset(err) {
			t.Fatalf("read after fencing: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("busy connection to the demoted primary not cut")
	}
	eventually(t, "session gone", func() bool { return p.Status().Connections[ListenerRW]["pg-0"] == 0 })
}
