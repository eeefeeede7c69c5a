package store

import (
	"context"
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
	l, err := net.Listen("tcp", "127.0.0.1:0")
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
// ended. When the local member refuses connections, the others serve.
func TestLocalMemberFirst(t *testing.T) {
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
	for i := range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, lerr := s.Load(ctx)
		_, kerr := s.KeepAlive(ctx)
		perr := s.PutStatus(ctx, cluster.MemberStatus{Role: cluster.RoleReplica})
		cancel()
		if lerr != nil || kerr != nil || perr != nil {
			t.Fatalf("request %d with the other members frozen: load %v, keepalive %v, put status %v", i, lerr, kerr, perr)
		}
	}
	fr1.unfreeze()
	fr2.unfreeze()

	// The local member refuses connections: the others serve.
	ports := uniquePorts(t, 1)
	dead := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	s2, err := Open(context.Background(), Options{
		Endpoints: []string{c.url(1), c.url(2)}, Local: dead,
		Prefix: "/holdfast", Cluster: "local", Member: "m2", TTL: testTTL, DialTimeout: 2 * time.Second, Logger: testLogger(),
	})
	must(t, err)
	defer s2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s2.Load(ctx); err != nil {
		t.Fatalf("load with the local member down: %v", err)
	}
}

func TestLocalFirst(t *testing.T) {
	got := localFirst("http://a:1", []string{"http://b:2", "http://a:1/", "http://c:3"})
	want := []string{"http://a:1", "http://b:2", "http://c:3"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("localFirst = %v, want %v", got, want)
	}
}
