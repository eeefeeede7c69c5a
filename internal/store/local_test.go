package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// freezer is a TCP proxy in front of an etcd member that can freeze: it
// keeps its connections open but passes nothing on, as a SIGSTOPped
// process's member does (its kernel still accepts the bytes).
type freezer struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	frozen bool
	thaw   chan struct{}
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	return newFreezerAt(t, "127.0.0.1:0", target)
}

// newFreezerAt is newFreezer listening on addr.
func newFreezerAt(t *testing.T, addr, target string) *freezer {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{l: l, target: target, thaw: make(chan struct{})}
	t.Cleanup(func() { f.unfreeze(); l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return f
}

func (f *freezer) url() string { return "http://" + f.l.Addr().String() }

func (f *freezer) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.frozen {
		f.frozen, f.thaw = true, make(chan struct{})
	}
}

func (f *freezer) unfreeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.frozen {
		f.frozen = false
		close(f.thaw)
	}
}

// wait blocks while the proxy is frozen.
func (f *freezer) wait() {
	f.mu.Lock()
	frozen, thaw := f.frozen, f.thaw
	f.mu.Unlock()
	if frozen {
		<-thaw
	}
}

func (f *freezer) serve(c net.Conn) {
	defer c.Close()
	u, err := net.Dial("tcp", f.target)
	if err != nil {
		return
	}
	defer u.Close()
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				f.wait()
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				if err != io.EOF {
					return
				}
				return
			}
		}
	}
	done := make(chan struct{}, 2)
	go func() { pipe(u, c); done <- struct{}{} }()
	go func() { pipe(c, u); done <- struct{}{} }()
	<-done
}

// With Local set, every request goes to the local member: another member
// that freezes (behind a proxy that stops passing bytes, as a SIGSTOPped
// agent's embedded member does) costs nothing, while a client that spread
// requests over every endpoint hung on its share of them until its context
// ended.
func TestLocalMemberOnly(t *testing.T) {
	c := startCluster(t, 3)
	fr1, fr2 := newFreezer(t, c.opts[1].AdvertiseClient), newFreezer(t, c.opts[2].AdvertiseClient)
	s, err := Open(context.Background(), Options{
		Endpoints: []string{fr1.url(), c.url(0), fr2.url()}, Local: c.url(0),
		Prefix: "/holdfast", Cluster: "local", Member: "m", TTL: testTTL, DialTimeout: 2 * time.Second, Logger: testLogger(),
	})
	must(t, err)
	defer s.Close()
	_, err = s.Lease(ctxT(t, 5*time.Second))
	must(t, err)
	fr1.freeze()
	fr2.freeze()
	requestsServed(t, s, "with the other members frozen")
}

// A local member that is not serving yet when the client opens (an agent
// starts before its embedded member listens) must not send the client to
// another member for good: the client that fell back to one stayed on it,
// and when that member froze two healthy members had no store for 10 s.
// Requests fail until the local member serves, then go to it alone.
func TestLocalMemberOnlyWhenLateToServe(t *testing.T) {
	c := startCluster(t, 3)
	fr1, fr2 := newFreezer(t, c.opts[1].AdvertiseClient), newFreezer(t, c.opts[2].AdvertiseClient)
	local := fmt.Sprintf("127.0.0.1:%d", uniquePorts(t, 1)[0])
	s, err := Open(context.Background(), Options{
		Endpoints: []string{fr1.url(), "http://" + local, fr2.url()}, Local: "http://" + local,
		Prefix: "/holdfast", Cluster: "local", Member: "m", TTL: testTTL, DialTimeout: 2 * time.Second, Logger: testLogger(),
	})
	must(t, err)
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err = s.Load(ctx)
	cancel()
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("load before the local member serves: %v, want ErrUnavailable (the other members must not be used)", err)
	}
	fr1.freeze()
	fr2.freeze()
	newFreezerAt(t, local, c.opts[0].AdvertiseClient) // the local member starts serving
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := s.Load(ctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("load once the local member serves: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, err = s.Lease(ctxT(t, 5*time.Second))
	must(t, err)
	requestsServed(t, s, "once the local member serves, with the others frozen")
}

// servedRound bounds one round of requestsServed: a request sent to a
// frozen member never returns, so any bound proves it was not used; this
// one leaves a loaded machine room.
const servedRound = 10 * time.Second

// requestsServed fails the test unless ten rounds of a read, a lease
// renewal and a write each succeed within servedRound.
func requestsServed(t *testing.T, s *Etcd, when string) {
	t.Helper()
	for i := range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), servedRound)
		_, lerr := s.Load(ctx)
		_, kerr := s.KeepAlive(ctx)
		perr := s.PutStatus(ctx, cluster.MemberStatus{Role: cluster.RoleReplica})
		cancel()
		if lerr != nil || kerr != nil || perr != nil {
			t.Fatalf("request %d %s: load %v, keepalive %v, put status %v", i, when, lerr, kerr, perr)
		}
	}
}
