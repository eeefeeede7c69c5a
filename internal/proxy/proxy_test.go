package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/store"
)

// The store adapter is a ViewSource.
var _ ViewSource = (*store.Etcd)(nil)

// fakeSource is a ViewSource the test drives: set replaces the view (and,
// like the store's watch, signals only when asked to: status-only changes
// do not signal), fail makes Load return an error.
type fakeSource struct {
	mu    sync.Mutex
	view  cluster.View
	err   error
	watch chan struct{}
}

func newFakeSource(v cluster.View) *fakeSource {
	return &fakeSource{view: v, watch: make(chan struct{}, 1)}
}

func (f *fakeSource) Load(ctx context.Context) (cluster.View, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return cluster.View{}, f.err
	}
	return f.view, nil
}

func (f *fakeSource) Watch(ctx context.Context) <-chan struct{} {
	out := make(chan struct{}, 1)
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case <-f.watch:
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out
}

// set installs v (a freshly built view: the proxy keeps it) and signals
// the watch when signal is set (a leader/failover change).
func (f *fakeSource) set(v cluster.View, signal bool) {
	f.mu.Lock()
	f.view, f.err = v, nil
	f.mu.Unlock()
	if signal {
		select {
		case f.watch <- struct{}{}:
		default:
		}
	}
}

func (f *fakeSource) fail(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

// backend is a stand-in PostgreSQL: it greets every connection with its
// name on a line, then echoes.
type backend struct {
	name string
	ln   net.Listener
	port int
}

func startBackend(t *testing.T, name string) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, ln: ln, port: ln.Addr().(*net.TCPAddr).Port}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				if _, err := io.WriteString(c, name+"\n"); err != nil {
					return
				}
				_, _ = io.Copy(c, c)
			})
		}
	})
	return b
}

// member describes one member of a test view.
type member struct {
	b     *backend
	role  cluster.Role
	state cluster.State
	lsn   cluster.LSN
}

func primary(b *backend) member {
	return member{b, cluster.RolePrimary, cluster.StateRunning, 0x3000000}
}
func replica(b *backend, lsn cluster.LSN) member {
	return member{b, cluster.RoleReplica, cluster.StateStreaming, lsn}
}

// mkView builds a view on timeline 1 with leader holding the key ("" =
// none) and the given members.
func mkView(leader string, ms ...member) cluster.View {
	v := cluster.View{
		Members:  map[string]cluster.MemberInfo{},
		Statuses: map[string]cluster.MemberStatus{},
		Optime:   &cluster.Optime{Position: pos(1, 0x3000000)},
	}
	if leader != "" {
		v.Leader = &cluster.Leader{Name: leader}
	}
	for _, m := range ms {
		v.Members[m.b.name] = cluster.MemberInfo{Name: m.b.name, Host: "127.0.0.1", Port: m.b.port}
		v.Statuses[m.b.name] = cluster.MemberStatus{Name: m.b.name, Role: m.role, State: m.state,
			Streaming: m.state == cluster.StateStreaming, Position: pos(1, m.lsn)}
	}
	return v
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startProxy runs a proxy on loopback until the test ends and waits for
// its first view.
func startProxy(t *testing.T, src ViewSource, mod func(*Options)) *Proxy {
	t.Helper()
	o := Options{
		RWListen: "127.0.0.1:0", ROListen: "127.0.0.1:0", Source: src,
		TTL: 2 * time.Second, HoldTimeout: 10 * time.Second, DialTimeout: time.Second,
		Logger: testLogger(t),
	}
	if mod != nil {
		mod(&o)
	}
	p, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	eventually(t, "first view loaded", func() bool { return p.Status().Loaded })
	return p
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// client is one client connection through the proxy.
type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &client{t: t, c: c, r: bufio.NewReader(c)}
}

// banner returns the name of the backend the connection reached.
func (c *client) banner() string {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read banner: %v", err)
	}
	return strings.TrimSuffix(line, "\n")
}

// echo sends msg and expects it back.
func (c *client) echo(msg []byte) {
	c.t.Helper()
	_ = c.c.SetDeadline(time.Now().Add(10 * time.Second))
	errc := make(chan error, 1)
	go func() { _, err := c.c.Write(msg); errc <- err }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c.r, got); err != nil {
		c.t.Fatalf("read echo: %v", err)
	}
	if err := <-errc; err != nil {
		c.t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, msg) {
		c.t.Fatalf("echo differs (%d bytes)", len(msg))
	}
}

// closedWithin reports whether the proxy closed the connection within d,
// without sending anything first.
func (c *client) closedWithin(d time.Duration) bool {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(d))
	b, err := c.r.ReadByte()
	switch {
	case err == nil:
		c.t.Fatalf("got byte %q, want the connection closed", b)
	case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err):
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	c.t.Fatalf("read: %v", err)
	return false
}

func isReset(err error) bool { return strings.Contains(err.Error(), "connection reset") }

// stillOpen checks the connection is usable.
func (c *client) stillOpen() {
	c.t.Helper()
	c.echo([]byte("still there?"))
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestRoutesReadWriteToPrimaryBothWays(t *testing.T) {
	a, b := startBackend(t, "pg-0"), startBackend(t, "pg-1")
	src := newFakeSource(mkView("pg-0", primary(a), replica(b, 0x3000000)))
	p := startProxy(t, src, nil)

	if st := p.Status(); st.RWAction != ActRoute || st.RW.Name != "pg-0" {
		t.Fatalf("status: %+v", st.Routes)
	}
	c := dial(t, p.RWAddr())
	if got := c.banner(); got != "pg-0" {
		t.Fatalf("read-write connection reached %s, want pg-0", got)
	}
	c.echo([]byte("SELECT 1"))
	big := make([]byte, 1<<20)
	_, _ = rand.Read(big)
	c.echo(big) // larger than any buffer: both directions stream concurrently

	eventually(t, "bytes counted", func() bool {
		return counter(t, p.m.bytes.WithLabelValues(ListenerRW, DirToBackend)) == float64(len(big)+8) &&
			counter(t, p.m.bytes.WithLabelValues(ListenerRW, DirToClient)) == float64(len(big)+8+len("pg-0\n"))
	})
	if got := counter(t, p.m.routed.WithLabelValues(ListenerRW, "pg-0")); got != 1 {
		t.Errorf("routed_total = %v, want 1", got)
	}
	if got := p.Status().Connections[ListenerRW]["pg-0"]; got != 1 {
		t.Errorf("status connections = %d, want 1", got)
	}

	// The client's half-close reaches the backend, whose close reaches the client.
	if err := c.c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if !c.closedWithin(5 * time.Second) {
		t.Fatal("half-close was not passed through")
	}
	eventually(t, "session gone", func() bool { return len(p.Status().Connections) == 0 })
}

func TestLeaderChangeClosesOldConnections(t *testing.T) {
	a, b := startBackend(t, "pg-0"), startBackend(t, "pg-1")
	src := newFakeSource(mkView("pg-0", primary(a), replica(b, 0x3000000)))
	ttl := 2 * time.Second
	p := startProxy(t, src, func(o *Options) { o.TTL = ttl })

	old := dial(t, p.RWAddr())
	if got := old.banner(); got != "pg-0" {
		t.Fatalf("reached %s, want pg-0", got)
	}
	old.stillOpen()
	// A read-only connection on the replica that will be promoted stays.
	ro := dial(t, p.ROAddr())
	if got := ro.banner(); got != "pg-1" {
		t.Fatalf("read-only reached %s, want pg-1", got)
	}

	// Failover: pg-1 holds the key and is primary; pg-0 still claims to be
	// primary (it has not fenced yet) — exactly the case to guard against.
	changed := time.Now()
	src.set(mkView("pg-1", primary(a), primary(b)), true)
	if !old.closedWithin(ttl) {
		t.Fatal("connection to the demoted primary still open a full TTL after the leader changed")
	}
	t.Logf("old primary's connection closed %s after the leader change", time.Since(changed).Round(time.Millisecond))

	c := dial(t, p.RWAddr())
	if got := c.banner(); got != "pg-1" {
		t.Fatalf("new read-write connection reached %s, want pg-1", got)
	}
	c.stillOpen()
	ro.stillOpen()
}

func TestStatusOnlyChangeIsPickedUpByRefresh(t *testing.T) {
	a := startBackend(t, "pg-0")
	src := newFakeSource(mkView("pg-0", primary(a)))
	ttl := time.Second
	p := startProxy(t, src, func(o *Options) { o.TTL = ttl })
	c := dial(t, p.RWAddr())
	if got := c.banner(); got != "pg-0" {
		t.Fatalf("reached %s", got)
	}
	// The leader key stays, but pg-0 reports it is fenced: no watch event.
	fenced := primary(a)
	fenced.state = cluster.StateFenced
	src.set(mkView("pg-0", fenced), false)
	if !c.closedWithin(ttl) {
		t.Fatal("connection to a fenced primary survived a TTL")
	}
}

func TestStaleViewFailsClosed(t *testing.T) {
	a := startBackend(t, "pg-0")
	src := newFakeSource(mkView("pg-0", primary(a)))
	ttl := 800 * time.Millisecond
	p := startProxy(t, src, func(o *Options) { o.TTL = ttl })

	c := dial(t, p.RWAddr())
	if got := c.banner(); got != "pg-0" {
		t.Fatalf("reached %s", got)
	}
	failed := time.Now()
	src.fail(errors.New("etcdserver: request timed out"))
	// The view's age counts from the start of the last successful read,
	// which began before failed: the cut comes at most a TTL later (plus
	// scheduling slack on a loaded machine).
	if !c.closedWithin(ttl + time.Second) {
		t.Fatal("read-write connection still open a TTL after the store became unreachable")
	}
	t.Logf("closed %s after the store failed (TTL %s)", time.Since(failed).Round(time.Millisecond), ttl)
	st := p.Status()
	if st.RWAction != ActRefuse || st.RWReason != ReasonStaleView || st.Primary != nil {
		t.Fatalf("status with a stale view: %+v", st.Routes)
	}

	// New read-write connections are closed at once, not held.
	n := dial(t, p.RWAddr())
	if !n.closedWithin(2 * time.Second) {
		t.Fatal("new read-write connection not refused with a stale view")
	}
	ro := dial(t, p.ROAddr())
	if !ro.closedWithin(2 * time.Second) {
		t.Fatal("new read-only connection not refused with a stale view")
	}
	if got := counter(t, p.m.refused.WithLabelValues(ListenerRW, ReasonStaleView)); got != 1 {
		t.Errorf("refused_total{rw,stale_view} = %v, want 1", got)
	}
	if got := counter(t, p.m.held); got != 0 {
		t.Errorf("held_total = %v, want 0", got)
	}

	// The store comes back: routing resumes.
	src.set(mkView("pg-0", primary(a)), false)
	eventually(t, "fresh view", func() bool { return p.Status().RWAction == ActRoute })
	if got := dial(t, p.RWAddr()).banner(); got != "pg-0" {
		t.Fatalf("reached %s", got)
	}
}

func TestNoViewYetRefuses(t *testing.T) {
	src := newFakeSource(cluster.View{})
	src.fail(errors.New("no quorum"))
	p, err := New(Options{RWListen: "127.0.0.1:0", Source: src, TTL: time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if st := p.Status(); st.Loaded || st.RWReason != ReasonStaleView {
		t.Fatalf("status before any view: %+v", st)
	}
	if !dial(t, p.RWAddr()).closedWithin(2 * time.Second) {
		t.Fatal("connection not refused before the first view")
	}
}

func TestSwitchoverHoldsThenHandsOver(t *testing.T) {
	a, b := startBackend(t, "pg-0"), startBackend(t, "pg-1")
	src := newFakeSource(mkView("pg-0", primary(a), replica(b, 0x3000000)))
	p := startProxy(t, src, nil)

	// A client opening one connection per transaction, all along.
	var txErrs, txOK atomic.Int64
	var lastErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := transaction(p.RWAddr(), "tx "+strconv.Itoa(i)); err != nil {
				txErrs.Add(1)
				lastErr.Store(err)
			} else {
				txOK.Add(1)
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()

	existing := dial(t, p.RWAddr())
	if got := existing.banner(); got != "pg-0" {
		t.Fatalf("reached %s", got)
	}

	// 1. The switchover becomes due: new connections are held, the old
	//    primary keeps its connections while it still takes writes.
	withSw := mkView("pg-0", primary(a), replica(b, 0x3000000))
	withSw.Switchover = &cluster.Switchover{Kind: cluster.KindSwitchover, Leader: "pg-0", Candidate: "pg-1"}
	src.set(withSw, true)
	eventually(t, "hold", func() bool { return p.Status().RWAction == ActHold })
	// Transactions routed before the hold finish: only existing is left
	// on the old primary (one in flight at the release would fail).
	eventually(t, "only the existing connection on pg-0", func() bool { return p.Status().Connections[ListenerRW]["pg-0"] == 1 })
	held := dial(t, p.RWAddr())
	if _, err := held.c.Write([]byte("startup")); err != nil { // buffered while held
		t.Fatal(err)
	}
	existing.stillOpen()

	// 2. The old primary stops and releases the key: its connections go.
	released := mkView("", member{a, cluster.RolePrimary, cluster.StateStopped, 0x3000000}, replica(b, 0x3000000))
	released.Switchover = withSw.Switchover
	src.set(released, true)
	if !existing.closedWithin(2 * time.Second) {
		t.Fatal("connection to the stopped old primary not closed")
	}
	if held.closedWithin(300 * time.Millisecond) {
		t.Fatal("held connection was closed")
	}

	// 3. The candidate promotes: held connections are handed to it.
	src.set(mkView("pg-1", member{a, cluster.RoleStopped, cluster.StateStopped, 0x3000000}, primary(b)), true)
	if got := held.banner(); got != "pg-1" {
		t.Fatalf("held connection reached %s, want the new primary pg-1", got)
	}
	got := make([]byte, len("startup"))
	if _, err := io.ReadFull(held.r, got); err != nil || string(got) != "startup" {
		t.Fatalf("bytes sent while held: got %q, %v", got, err)
	}
	held.stillOpen()
	before := txOK.Load()
	eventually(t, "transactions on the new primary", func() bool { return txOK.Load() > before+5 })

	if n := txErrs.Load(); n > 0 {
		t.Errorf("%d of %d per-transaction clients saw an error during the switchover; last: %v", n, n+txOK.Load(), lastErr.Load())
	}
	if got := counter(t, p.m.held); got < 1 {
		t.Errorf("held_total = %v, want at least 1", got)
	}
	t.Logf("%d transactions, %d held connections, no errors", txOK.Load(), int(counter(t, p.m.held)))
}

// transaction opens a connection, does one round trip and closes it, as a
// client without a pool does.
func transaction(addr, msg string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return err
	}
	if _, err := r.ReadString('\n'); err != nil { // banner
		return err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if line != msg+"\n" {
		return errors.New("echo mismatch: " + line)
	}
	return nil
}

func TestHoldTimeout(t *testing.T) {
	a := startBackend(t, "pg-0")
	src := newFakeSource(mkView("", replica(a, 0x3000000)))
	hold := 300 * time.Millisecond
	p := startProxy(t, src, func(o *Options) { o.HoldTimeout = hold })

	start := time.Now()
	c := dial(t, p.RWAddr())
	if !c.closedWithin(5 * time.Second) {
		t.Fatal("held connection not closed after the hold timeout")
	}
	if d := time.Since(start); d < hold-50*time.Millisecond {
		t.Fatalf("closed after %s, before the hold timeout %s", d, hold)
	}
	if got := counter(t, p.m.held); got != 1 {
		t.Errorf("held_total = %v, want 1", got)
	}
	if got := counter(t, p.m.refused.WithLabelValues(ListenerRW, ReasonHoldTimeout)); got != 1 {
		t.Errorf("refused_total{rw,hold_timeout} = %v, want 1", got)
	}
}

func TestReadOnlyBalancingLagAndFallback(t *testing.T) {
	a, r1, r2 := startBackend(t, "pg-0"), startBackend(t, "pg-1"), startBackend(t, "pg-2")
	src := newFakeSource(mkView("pg-0", primary(a), replica(r1, 0x3000000), replica(r2, 0x3000000)))
	ttl := time.Second
	p := startProxy(t, src, func(o *Options) { o.TTL = ttl; o.ROFallbackToPrimary = true; o.MaxReplicaLag = 1 << 20 })

	seen := map[string]int{}
	var onR2 *client
	for range 4 {
		c := dial(t, p.ROAddr())
		name := c.banner()
		seen[name]++
		if name == "pg-2" {
			onR2 = c
		}
	}
	if seen["pg-1"] != 2 || seen["pg-2"] != 2 {
		t.Fatalf("round-robin over two replicas gave %v", seen)
	}

	// pg-2 falls 2 MiB behind (a status change: no watch event).
	src.set(mkView("pg-0", primary(a), replica(r1, 0x3000000), replica(r2, 0x3000000-2<<20)), false)
	eventually(t, "lagging replica excluded", func() bool {
		ro := p.Status().ROTargets
		return len(ro) == 1 && ro[0].Name == "pg-1"
	})
	for range 3 {
		if got := dial(t, p.ROAddr()).banner(); got != "pg-1" {
			t.Fatalf("read-only connection reached %s, want pg-1 (pg-2 lags)", got)
		}
	}
	onR2.stillOpen() // existing connections to a dropped replica stay

	// No replica qualifies (pg-1 stops streaming, pg-2 lags): fallback to the primary.
	src.set(mkView("pg-0", primary(a), member{r1, cluster.RoleReplica, cluster.StateRunning, 0x3000000},
		replica(r2, 0x3000000-2<<20)), false)
	eventually(t, "fallback", func() bool { return p.Status().ROFallback })
	fb := dial(t, p.ROAddr())
	if got := fb.banner(); got != "pg-0" {
		t.Fatalf("fallback reached %s, want the primary pg-0", got)
	}
	// A fallback connection rides on the primary grant: it is cut when
	// pg-0 stops being the primary.
	src.set(mkView("", primary(a), replica(r1, 0x3000000)), true)
	if !fb.closedWithin(2 * time.Second) {
		t.Fatal("read-only fallback connection to a former primary not closed")
	}
}

func TestReadOnlyRefusedWithoutFallback(t *testing.T) {
	a, r1 := startBackend(t, "pg-0"), startBackend(t, "pg-1")
	src := newFakeSource(mkView("pg-0", primary(a), replica(r1, 0x3000000-2<<20)))
	p := startProxy(t, src, nil)
	if !dial(t, p.ROAddr()).closedWithin(2 * time.Second) {
		t.Fatal("read-only connection not refused without a qualifying replica")
	}
	if got := counter(t, p.m.refused.WithLabelValues(ListenerRO, ReasonNoReplica)); got != 1 {
		t.Errorf("refused_total{ro,no_replica} = %v, want 1", got)
	}
}

func TestReadOnlyDialFailureTriesNextReplica(t *testing.T) {
	a, r1 := startBackend(t, "pg-0"), startBackend(t, "pg-1")
	dead := startBackend(t, "pg-2")
	_ = dead.ln.Close() // registered and reporting, but not listening
	src := newFakeSource(mkView("pg-0", primary(a), replica(r1, 0x3000000), replica(dead, 0x3000000)))
	p := startProxy(t, src, nil)
	for range 4 {
		if got := dial(t, p.ROAddr()).banner(); got != "pg-1" {
			t.Fatalf("reached %s, want pg-1", got)
		}
	}
}

func TestLeastConnections(t *testing.T) {
	a, r1, r2 := startBackend(t, "pg-0"), startBackend(t, "pg-1"), startBackend(t, "pg-2")
	src := newFakeSource(mkView("pg-0", primary(a), replica(r1, 0x3000000), replica(r2, 0x3000000)))
	p := startProxy(t, src, func(o *Options) { o.Balance = BalanceLeastConnections })

	// The backend's banner can reach the client before the proxy counts
	// the connection: wait for the count before the next dial, whose
	// choice depends on it.
	counted := func(n int) {
		t.Helper()
		eventually(t, fmt.Sprintf("%d read-only connections counted", n), func() bool {
			c := p.Status().Connections[ListenerRO]
			return c["pg-1"]+c["pg-2"] == n
		})
	}
	var onR1 []*client
	for i := range 3 {
		c := dial(t, p.ROAddr())
		if c.banner() == "pg-1" {
			onR1 = append(onR1, c)
		}
		counted(i + 1)
	}
	// Three connections over two replicas: 2+1. Close the pair's
	// connections and the next ones go to the emptier replica.
	counts := p.Status().Connections[ListenerRO]
	if counts["pg-1"]+counts["pg-2"] != 3 || max(counts["pg-1"], counts["pg-2"]) != 2 {
		t.Fatalf("connections %v, want 2+1", counts)
	}
	for _, c := range onR1 {
		_ = c.c.Close()
	}
	eventually(t, "closed sessions forgotten", func() bool { return p.Status().Connections[ListenerRO]["pg-1"] == 0 })
	left := p.Status().Connections[ListenerRO]["pg-2"]
	for i := range left {
		if got := dial(t, p.ROAddr()).banner(); got != "pg-1" {
			t.Fatalf("connection %d reached %s, want pg-1 (it has fewer connections)", i, got)
		}
		counted(left + i + 1)
	}
}

func TestMetricsExposed(t *testing.T) {
	a := startBackend(t, "pg-0")
	src := newFakeSource(mkView("pg-0", primary(a)))
	p := startProxy(t, src, func(o *Options) { o.HoldTimeout = 50 * time.Millisecond })
	c := dial(t, p.RWAddr())
	c.banner()
	c.stillOpen()
	_ = dial(t, p.ROAddr()).closedWithin(2 * time.Second) // refused: no replica

	rec := httptest.NewRecorder()
	p.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`holdfast_proxy_connections{backend="pg-0",listener="rw"} 1`,
		`holdfast_proxy_routed_total{backend="pg-0",listener="rw"} 1`,
		`holdfast_proxy_refused_total{listener="ro",reason="no_replica"} 1`,
		`holdfast_proxy_held_total 0`,
		`holdfast_proxy_bytes_total{direction="to_backend",listener="rw"}`,
		`holdfast_proxy_bytes_total{direction="to_client",listener="rw"}`,
		`holdfast_proxy_view_age_seconds `,
		`go_goroutines `,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if t.Failed() {
		t.Log(body)
	}
}

func TestSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	src := newFakeSource(cluster.View{})
	p1, err := New(Options{RWListen: "127.0.0.1:0", Source: src, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer p1.Close()
	if _, err := New(Options{RWListen: "127.0.0.1:0", Source: src, Registry: reg}); err == nil {
		t.Fatal("two proxies registered the same metrics in one registry")
	}
	rec := httptest.NewRecorder()
	p1.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), "holdfast_proxy_held_total") {
		t.Error("Handler does not serve the shared registry")
	}
}

func TestNewValidates(t *testing.T) {
	src := newFakeSource(cluster.View{})
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	cases := []struct {
		name string
		o    Options
		want string
	}{
		{"no source", Options{RWListen: "127.0.0.1:0"}, "view source"},
		{"no listener", Options{Source: src}, "listen address"},
		{"bad balance", Options{RWListen: "127.0.0.1:0", Source: src, Balance: "random"}, `balance "random"`},
		{"negative lag", Options{RWListen: "127.0.0.1:0", Source: src, MaxReplicaLag: -1}, "negative"},
		{"negative loops", Options{RWListen: "127.0.0.1:0", Source: src, Loops: -1}, "negative"},
		{"rw port taken", Options{RWListen: taken.Addr().String(), Source: src}, "listen for read-write"},
		{"ro port taken", Options{RWListen: "127.0.0.1:0", ROListen: taken.Addr().String(), Source: src}, "listen for read-only"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := New(c.o)
			if err == nil {
				p.Close()
				t.Fatal("New accepted invalid options")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

func TestRunOnceAndClose(t *testing.T) {
	src := newFakeSource(cluster.View{})
	p, err := New(Options{RWListen: "127.0.0.1:0", ROListen: "127.0.0.1:0", Source: src})
	if err != nil {
		t.Fatal(err)
	}
	addr := p.RWAddr()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Run(context.Background()); err == nil {
		t.Fatal("Run after Close succeeded")
	}
	// The port is free again.
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listener not released: %v", err)
	}
	_ = l.Close()

	// Close stops a running proxy.
	p2, err := New(Options{RWListen: "127.0.0.1:0", Source: src})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p2.Run(context.Background()) }()
	eventually(t, "running", func() bool { p2.mu.Lock(); defer p2.mu.Unlock(); return p2.state == stateRunning })
	_ = p2.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not stop Run")
	}
}
