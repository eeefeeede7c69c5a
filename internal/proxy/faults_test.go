package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// fakeConfirmer answers ConfirmWritable as the test sets it.
type fakeConfirmer struct {
	mu    sync.Mutex
	left  time.Duration
	err   error
	asked int
}

func (f *fakeConfirmer) ConfirmWritable(_ context.Context, m cluster.MemberInfo) (time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked++
	return f.left, f.err
}

func (f *fakeConfirmer) set(left time.Duration, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.left, f.err = left, err
}

func (f *fakeConfirmer) questions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.asked
}

// withAPI gives every member of v an API address, so the proxy can ask.
func withAPI(v cluster.View) cluster.View {
	for n, m := range v.Members {
		m.APIURL = "http://" + n + ":8008"
		v.Members[n] = m
	}
	return v
}

// While the store is out of reach (a quorum loss: the primary serves under
// the failsafe), the proxy keeps routing to the primary the last view
// named for as long as that member confirms it may accept writes, and
// fails closed as soon as it no longer does.
func TestStaleViewRoutesOnThePrimarysWord(t *testing.T) {
	a := startBackend(t, "pg-0")
	src := newFakeSource(withAPI(mkView("pg-0", primary(a))))
	conf := &fakeConfirmer{left: 2 * time.Second}
	ttl := 800 * time.Millisecond
	p := startProxy(t, src, func(o *Options) { o.TTL = ttl; o.Confirm = conf })

	c := dial(t, p.RWAddr())
	if got := c.banner(); got != "pg-0" {
		t.Fatalf("reached %s", got)
	}
	src.fail(errors.New("etcdserver: request timed out"))
	eventually(t, "the view turns stale", func() bool { return p.Status().ViewAge >= ttl })
	if st := p.Status(); st.RWAction != ActRoute || !st.Confirmed || st.Primary == nil || st.Primary.Name != "pg-0" {
		t.Fatalf("status with a stale view and a confirming primary: %+v", st.Routes)
	}
	if c.closedWithin(200 * time.Millisecond) {
		t.Fatal("the connection to a confirming primary was closed")
	}
	c.stillOpen()
	if got := dial(t, p.RWAddr()).banner(); got != "pg-0" {
		t.Fatalf("new connection reached %s", got)
	}
	if conf.questions() == 0 {
		t.Fatal("the primary was never asked")
	}

	// The primary no longer confirms (it fenced, or its failsafe ended).
	conf.set(0, &notWritableError{why: "pg-0 is not a writable primary now"})
	if !c.closedWithin(5 * time.Second) {
		t.Fatal("the connection stayed open after the primary stopped confirming")
	}
	if st := p.Status(); st.RWAction != ActRefuse || st.Primary != nil {
		t.Fatalf("status once the primary no longer confirms: %+v", st.Routes)
	}
	if !dial(t, p.RWAddr()).closedWithin(2 * time.Second) {
		t.Fatal("new read-write connection not refused")
	}
}

// A primary that cannot be asked (its API does not answer) gets no grant:
// the proxy fails closed once the view is stale, as without the question.
func TestStaleViewUnansweredQuestionFailsClosed(t *testing.T) {
	a := startBackend(t, "pg-0")
	src := newFakeSource(withAPI(mkView("pg-0", primary(a))))
	conf := &fakeConfirmer{err: errors.New("dial tcp: connection refused")}
	ttl := 800 * time.Millisecond
	p := startProxy(t, src, func(o *Options) { o.TTL = ttl; o.Confirm = conf })
	c := dial(t, p.RWAddr())
	if got := c.banner(); got != "pg-0" {
		t.Fatalf("reached %s", got)
	}
	src.fail(errors.New("etcdserver: request timed out"))
	if !c.closedWithin(ttl + 5*time.Second) {
		t.Fatal("read-write connection still open with a stale view and no confirmation")
	}
}

// silentBackend is a PostgreSQL whose postmaster is frozen: the kernel
// completes TCP connections into its accept queue, and nothing ever
// answers them.
func silentBackend(t *testing.T, name string) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return &backend{name: name, ln: ln, port: ln.Addr().(*net.TCPAddr).Port}
}

// A held client whose primary accepts connections but never answers is
// tried again while the view names that primary, then handed — its first
// bytes replayed — to the next primary.
func TestUnansweringPrimaryHandsOverWithReplay(t *testing.T) {
	frozen, b := silentBackend(t, "pg-0"), startBackend(t, "pg-1")
	src := newFakeSource(mkView("pg-0", primary(frozen), replica(b, 0x3000000)))
	p := startProxy(t, src, func(o *Options) { o.TTL = time.Minute; o.StartupTimeout = 50 * time.Millisecond })
	c := dial(t, p.RWAddr())
	if _, err := c.c.Write([]byte("startup\n")); err != nil {
		t.Fatal(err)
	}
	if c.closedWithin(300 * time.Millisecond) {
		t.Fatal("connection closed while the primary did not answer")
	}
	src.set(mkView("pg-1", primary(b)), true)
	if got := c.banner(); got != "pg-1" {
		t.Fatalf("reached %s, want pg-1", got)
	}
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len("startup\n"))
	if _, err := io.ReadFull(c.r, got); err != nil || string(got) != "startup\n" {
		t.Fatalf("the client's first bytes were not replayed to pg-1: %q, %v", got, err)
	}
	c.stillOpen()
}

// A primary the view keeps naming that does not answer is not being
// failed over: the client is refused after UnresponsiveFactor×TTL instead
// of hanging.
func TestUnansweringPrimaryRefusedAfterLimit(t *testing.T) {
	frozen := silentBackend(t, "pg-0")
	src := newFakeSource(mkView("pg-0", primary(frozen)))
	p := startProxy(t, src, func(o *Options) { o.TTL = 500 * time.Millisecond; o.StartupTimeout = 50 * time.Millisecond })
	c := dial(t, p.RWAddr())
	if _, err := c.c.Write([]byte("startup\n")); err != nil {
		t.Fatal(err)
	}
	if !c.closedWithin(10 * time.Second) {
		t.Fatal("client left hanging on a primary that never answers")
	}
	if got := counter(t, p.m.refused.WithLabelValues(ListenerRW, ReasonUnresponsive)); got != 1 {
		t.Errorf("refused_total{rw,%s} = %v, want 1", ReasonUnresponsive, got)
	}
}

// A client that sends nothing is not cut by the startup timeout: a
// backend that speaks first answers it, and one that waits for the client
// keeps waiting with it.
func TestStartupTimeoutCountsFromTheClientsBytes(t *testing.T) {
	frozen := silentBackend(t, "pg-0")
	src := newFakeSource(mkView("pg-0", primary(frozen)))
	p := startProxy(t, src, func(o *Options) { o.TTL = 500 * time.Millisecond; o.StartupTimeout = 50 * time.Millisecond })
	c := dial(t, p.RWAddr())
	if c.closedWithin(1500 * time.Millisecond) {
		t.Fatal("an idle client was cut although it sent nothing")
	}
	if got := counter(t, p.m.refused.WithLabelValues(ListenerRW, ReasonUnresponsive)); got != 0 {
		t.Errorf("refused_total{rw,%s} = %v, want 0", ReasonUnresponsive, got)
	}
}
