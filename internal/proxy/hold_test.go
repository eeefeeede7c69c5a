package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/store"
)

// The store adapter reports role changes.
var _ RoleWatcher = (*store.Etcd)(nil)

// roleSource is a fakeSource that is also a RoleWatcher: setRoles installs
// a view and signals the role watch only, as a status-only change does.
type roleSource struct {
	*fakeSource
	roles chan struct{}
}

func newRoleSource(v cluster.View) *roleSource {
	return &roleSource{fakeSource: newFakeSource(v), roles: make(chan struct{}, 1)}
}

func (r *roleSource) WatchRoles(ctx context.Context) <-chan struct{} {
	out := make(chan struct{}, 1)
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case <-r.roles:
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out
}

func (r *roleSource) setRoles(v cluster.View) {
	r.set(v, false)
	select {
	case r.roles <- struct{}{}:
	default:
	}
}

// deadBackend is a member whose PostgreSQL is gone: its port refuses
// connections.
func deadBackend(t *testing.T, name string) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return &backend{name: name, port: port}
}

// A primary that died keeps its leader key and its status until its lease
// expires. Read-write connections arriving meanwhile are held — the dead
// primary is dialed again while the view names it, nothing else is dialed
// without permission — and reach the new primary as soon as it reports
// itself writable: through the role watch when the source has one, by
// re-reading the store while connections are held when it has not.
func TestDeadPrimaryHoldsUntilNewPrimary(t *testing.T) {
	for _, tc := range []struct {
		name      string
		roleWatch bool
	}{{"role watch", true}, {"no role watch", false}} {
		t.Run(tc.name, func(t *testing.T) {
			dead, b := deadBackend(t, "pg-0"), startBackend(t, "pg-1")
			rs := newRoleSource(mkView("pg-0", primary(dead), replica(b, 0x3000000)))
			var src ViewSource = rs.fakeSource
			if tc.roleWatch {
				src = rs
			}
			// A long TTL: the periodic refresh (TTL/4) plays no part.
			p := startProxy(t, src, func(o *Options) { o.TTL = time.Minute })

			c := dial(t, p.RWAddr())
			if _, err := c.c.Write([]byte("startup")); err != nil { // buffered while held
				t.Fatal(err)
			}
			eventually(t, "the connection held", func() bool { return counter(t, p.m.held) == 1 })
			if c.closedWithin(300 * time.Millisecond) {
				t.Fatal("connection closed while the dead primary still held the leader key")
			}

			// The lease expires: no leader. Then pg-1 wins the race but
			// has not promoted yet: still held, pg-1 not dialed.
			rs.set(mkView("", replica(b, 0x3000000)), true)
			eventually(t, "no leader", func() bool { return p.Status().RWReason == ReasonNoLeader })
			rs.set(mkView("pg-1", replica(b, 0x3000000)), true)
			eventually(t, "leader not up", func() bool { return p.Status().RWReason == ReasonLeaderNotUp })
			if c.closedWithin(300 * time.Millisecond) {
				t.Fatal("held connection closed while the new leader promotes")
			}

			// pg-1 reports primary/running: a status change, which the
			// store's watch does not signal.
			next := mkView("pg-1", primary(b))
			if tc.roleWatch {
				rs.setRoles(next)
			} else {
				rs.set(next, false)
			}
			if got := c.banner(); got != "pg-1" {
				t.Fatalf("held connection reached %s, want pg-1", got)
			}
			got := make([]byte, len("startup"))
			if _, err := io.ReadFull(c.r, got); err != nil || string(got) != "startup" {
				t.Fatalf("bytes sent while held: got %q, %v", got, err)
			}
			c.stillOpen()
			if n := counter(t, p.m.refused.WithLabelValues(ListenerRW, ReasonDialFailed)); n != 0 {
				t.Errorf("refused_total{rw,dial_failed} = %v, want 0", n)
			}
			if n := counter(t, p.m.routed.WithLabelValues(ListenerRW, "pg-1")); n != 1 {
				t.Errorf("routed_total{rw,pg-1} = %v, want 1", n)
			}
		})
	}
}

// A held connection dialing a dead primary again and again is refused at
// the hold timeout, like any held connection.
func TestDeadPrimaryHoldTimeout(t *testing.T) {
	dead := deadBackend(t, "pg-0")
	src := newFakeSource(mkView("pg-0", primary(dead)))
	hold := 300 * time.Millisecond
	p := startProxy(t, src, func(o *Options) { o.TTL = time.Minute; o.HoldTimeout = hold })
	c := dial(t, p.RWAddr())
	if !c.closedWithin(5 * time.Second) {
		t.Fatal("held connection not closed after the hold timeout")
	}
	if got := counter(t, p.m.refused.WithLabelValues(ListenerRW, ReasonHoldTimeout)); got != 1 {
		t.Errorf("refused_total{rw,hold_timeout} = %v, want 1", got)
	}
	eventually(t, "the hold released", func() bool { return p.heldNow() == 0 })
}

// While connections are held waiting for a dead primary's successor,
// another client's session on a reachable primary is unaffected, and each
// held connection is routed on its own once a primary is reachable.
func TestHeldConnectionsAreIndependent(t *testing.T) {
	dead, b := deadBackend(t, "pg-0"), startBackend(t, "pg-1")
	src := newFakeSource(mkView("pg-0", primary(dead)))
	p := startProxy(t, src, func(o *Options) { o.TTL = time.Minute })
	var held []*client
	for range 5 {
		held = append(held, dial(t, p.RWAddr()))
	}
	eventually(t, "five connections held", func() bool { return p.heldNow() == 5 })
	held[2].c.Close() // one client gives up

	src.set(mkView("pg-1", primary(b)), true)
	for i, c := range held {
		if i == 2 {
			continue
		}
		if got := c.banner(); got != "pg-1" {
			t.Fatalf("held connection %d reached %s", i, got)
		}
	}
	// A new session opens, works and ends while the others stay open.
	c := dial(t, p.RWAddr())
	if got := c.banner(); got != "pg-1" {
		t.Fatalf("new connection reached %s", got)
	}
	c.stillOpen()
	c.c.Close()
	for i, c := range held {
		if i != 2 {
			c.stillOpen()
		}
	}
	eventually(t, "no connection held", func() bool { return p.heldNow() == 0 })
}

// unansweringBackend is a member whose host does not answer: a listening
// socket whose accept queue is full, so the kernel drops further SYNs and
// a connect hangs until its timeout.
func unansweringBackend(t *testing.T, name string) *backend {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, port: sa.(*syscall.SockaddrInet4).Port}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port))
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return b // the queue is full
			}
			t.Fatalf("fill the accept queue: %v", err)
		}
		t.Cleanup(func() { _ = c.Close() })
		if i > 100 {
			t.Fatal("the accept queue never filled")
		}
	}
}

// A dial to a primary whose host does not answer is abandoned as soon as
// another member is primary: the held client does not wait out the
// connect timeout.
func TestDialAbandonedWhenPrimaryChanges(t *testing.T) {
	gone, b := unansweringBackend(t, "pg-0"), startBackend(t, "pg-1")
	src := newFakeSource(mkView("pg-0", primary(gone), replica(b, 0x3000000)))
	// A connect timeout far beyond the client's patience (banner: 10s).
	p := startProxy(t, src, func(o *Options) { o.TTL = time.Minute; o.DialTimeout = time.Minute })
	c := dial(t, p.RWAddr())
	if c.closedWithin(300 * time.Millisecond) {
		t.Fatal("connection closed while dialing the primary")
	}
	src.set(mkView("pg-1", primary(b)), true)
	if got := c.banner(); got != "pg-1" {
		t.Fatalf("reached %s, want pg-1", got)
	}
	c.stillOpen()
}
