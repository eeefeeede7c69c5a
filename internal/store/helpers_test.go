package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/testutil"
)

const testTTL = 2 * time.Second

// Slack for a loaded machine in the tests' time bounds.
const (
	// returnLate is how late past its deadline a call may return (the
	// fault guarded against is blocking for a dial timeout,
	// DefaultDialTimeout, or for ever).
	returnLate = 3 * time.Second
	// expiryLate is how late past its TTL an unrenewed lease may be
	// seen gone (etcd checks for expired leases every 500 ms and revokes
	// them through raft).
	expiryLate = 10 * time.Second
)

// testCluster is a set of embedded etcd members running in the test process.
type testCluster struct {
	t       *testing.T
	opts    []EmbeddedOptions
	members []*Embedded // nil while stopped
}

// uniquePorts returns n distinct free loopback ports.
func uniquePorts(t *testing.T, n int) []int {
	t.Helper()
	seen := map[int]bool{}
	var ports []int
	for len(ports) < n {
		p := testutil.FreePort(t)
		if !seen[p] {
			seen[p] = true
			ports = append(ports, p)
		}
	}
	return ports
}

// startCluster starts n members and waits until all are ready.
func startCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	dir := testutil.Dir(t)
	ports := uniquePorts(t, 2*n)
	peers := map[string]string{}
	c := &testCluster{t: t}
	for i := range n {
		name := fmt.Sprintf("etcd-%d", i)
		peer := fmt.Sprintf("127.0.0.1:%d", ports[2*i])
		client := fmt.Sprintf("127.0.0.1:%d", ports[2*i+1])
		peers[name] = "http://" + peer
		c.opts = append(c.opts, EmbeddedOptions{
			Name: name, Dir: filepath.Join(dir, name),
			ListenPeer: peer, AdvertisePeer: peer,
			ListenClient: client, AdvertiseClient: client,
			ClusterToken: "test-" + t.Name(),
			LogFile:      filepath.Join(dir, name+".log"),
		})
	}
	for i := range c.opts {
		c.opts[i].Peers = peers
	}
	c.members = make([]*Embedded, n)
	t.Cleanup(func() {
		for i := range c.members {
			c.stop(i)
		}
		if t.Failed() {
			for _, o := range c.opts {
				if b, err := os.ReadFile(o.LogFile); err == nil && len(b) > 0 {
					t.Logf("%s log:\n%s", o.Name, b)
				}
			}
		}
	})
	for i := range n {
		c.start(i)
	}
	for i := range n {
		c.waitReady(i)
	}
	return c
}

func (c *testCluster) start(i int) {
	c.t.Helper()
	m, err := StartEmbedded(c.opts[i])
	if err != nil {
		c.t.Fatalf("start %s: %v", c.opts[i].Name, err)
	}
	c.members[i] = m
}

func (c *testCluster) waitReady(i int) {
	c.t.Helper()
	select {
	case <-c.members[i].Ready():
	case <-time.After(15 * time.Second):
		c.t.Fatalf("%s not ready after 15s", c.opts[i].Name)
	}
}

func (c *testCluster) stop(i int) time.Duration {
	c.t.Helper()
	if c.members[i] == nil {
		return 0
	}
	start := time.Now()
	if err := c.members[i].Close(); err != nil {
		c.t.Errorf("stop %s: %v", c.opts[i].Name, err)
	}
	c.members[i] = nil
	return time.Since(start)
}

func (c *testCluster) url(i int) string { return "http://" + c.opts[i].AdvertiseClient }

func (c *testCluster) endpoints() []string {
	var eps []string
	for i := range c.opts {
		eps = append(eps, c.url(i))
	}
	return eps
}

// raw returns a plain etcd client for inspecting and sabotaging keys.
func (c *testCluster) raw(eps ...string) *clientv3.Client {
	c.t.Helper()
	if len(eps) == 0 {
		eps = c.endpoints()
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cli.Close() })
	return cli
}

func testLogger() *slog.Logger {
	if testing.Verbose() && os.Getenv("HOLDFAST_TEST_STORE_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// openStore opens a store handle for member in clusterName.
func openStore(t *testing.T, eps []string, clusterName, member string) *Etcd {
	t.Helper()
	s, err := Open(context.Background(), Options{
		Endpoints: eps, Prefix: "/holdfast", Cluster: clusterName, Member: member,
		TTL: testTTL, DialTimeout: 2 * time.Second, Logger: testLogger(),
	})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// must fails the test on err.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mustBool(t *testing.T, got bool, err error, want bool, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if got != want {
		t.Fatalf("%s = %v, want %v", what, got, want)
	}
}

func load(t *testing.T, s *Etcd) cluster.View {
	t.Helper()
	v, err := s.Load(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return v
}

// expectSignal waits up to d for a watch signal.
func expectSignal(t *testing.T, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case _, ok := <-ch:
		if !ok {
			t.Fatalf("%s: watch channel closed", what)
		}
	case <-time.After(d):
		t.Fatalf("%s: no watch signal within %v", what, d)
	}
}

// expectQuiet fails if a signal arrives within d.
func expectQuiet(t *testing.T, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("%s: unexpected watch signal", what)
	case <-time.After(d):
	}
}

// drain empties a pending signal.
func drain(ch <-chan struct{}) {
	select {
	case <-ch:
	default:
	}
}

func clusterMemberInfo() cluster.MemberInfo {
	return cluster.MemberInfo{Host: "127.0.0.1", Port: 5432}
}

func isUnavailable(err error) bool { return errors.Is(err, ErrUnavailable) }
