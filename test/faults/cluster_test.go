package faults

// A holdfast cluster whose members each run on their own host (network
// namespace) of a Net: `holdfast agent --config FILE` under
// `ip netns exec`, PostgreSQL on <host>:5432, the API on <host>:8008, the
// embedded etcd member on <host>:2379/2380 (or a three-member external
// etcd cluster on hosts of its own), and `holdfast proxy` plus the clients
// in the root namespace, reaching the members over the bridge.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/config"
	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/store"
	"github.com/holdfast/holdfast/internal/testutil"
)

// Ports inside every member's namespace (each host has its own address).
const (
	pgPort     = 5432
	apiPort    = 8008
	clientPort = 2379
	peerPort   = 2380
	clusterNm  = "pg"
)

// ClusterOptions shape a test cluster.
type ClusterOptions struct {
	Members int // database members (default 3)
	// ExternalEtcd runs a three-member etcd cluster (Debian's etcd) on
	// three hosts of its own; the members use store mode etcd.
	ExternalEtcd bool
	// VolumeBytes > 0 gives every member's data_dir a tmpfs of that size
	// (its etcd directory stays on the disk, bind-mounted), so one member's
	// data volume can be filled.
	VolumeBytes int64
	// Tag distinguishes the hosts of several clusters on one Net.
	Tag string
}

// Node is one database member.
type Node struct {
	Name       string
	Host       *Host
	DataDir    string
	ConfigFile string
	LogFile    string

	mu    sync.Mutex
	agent *Proc
}

// Agent returns the member's current agent process (nil if never started).
func (n *Node) Agent() *Proc {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.agent
}

// EtcdNode is one member of the external etcd cluster.
type EtcdNode struct {
	Name string
	Host *Host
	proc *Proc
}

// Cluster is one running holdfast cluster on the Net.
type Cluster struct {
	Net     *Net
	Dir     string
	Opts    ClusterOptions
	Layout  local.Layout // names and passwords (the ports in it are unused)
	Nodes   []*Node
	Etcd    []*EtcdNode
	ProxyRW string // the proxy's read-write listener, in the root namespace

	proxy     *Proc
	proxyLog  string
	st        *store.Etcd
	endpoints []string
	hosts     []*Host
	mounts    []string
	closed    bool
	mode      string // the synchronous_mode last set ("" = never)
}

// NewCluster builds and starts a cluster and waits until it is healthy. It
// is closed when t ends (or earlier with Close).
func NewCluster(t *testing.T, n *Net, o ClusterOptions) *Cluster {
	t.Helper()
	if o.Members == 0 {
		o.Members = 3
	}
	var etcdBin string
	if o.ExternalEtcd {
		var err error
		if etcdBin, err = exec.LookPath("etcd"); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatal("etcd is not installed: CI must run scripts/install-deps.sh first")
			}
			t.Skip("etcd is not installed: run scripts/install-deps.sh")
		}
	}
	c := &Cluster{Net: n, Dir: testutil.Dir(t), Opts: o}
	t.Cleanup(func() {
		if t.Failed() {
			c.DumpLogs(t)
		}
		c.Close(t)
	})
	for _, d := range []string{"conf", "logs"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if o.ExternalEtcd {
		var initial []string
		for i := 0; i < 3; i++ {
			h := n.AddHost(t, fmt.Sprintf("%se%d", o.Tag, i), n.nextOctet())
			c.hosts = append(c.hosts, h)
			e := &EtcdNode{Name: fmt.Sprintf("e%d", i), Host: h}
			c.Etcd = append(c.Etcd, e)
			initial = append(initial, fmt.Sprintf("%s=http://%s:%d", e.Name, h.IP, peerPort))
			c.endpoints = append(c.endpoints, fmt.Sprintf("http://%s:%d", h.IP, clientPort))
		}
		for _, e := range c.Etcd {
			client := fmt.Sprintf("http://%s:%d", e.Host.IP, clientPort)
			peer := fmt.Sprintf("http://%s:%d", e.Host.IP, peerPort)
			p, err := startProc(e.Name, filepath.Join(c.Dir, "logs", e.Name+".log"), "ip", "netns", "exec", e.Host.NS,
				etcdBin, "--name", e.Name, "--data-dir", filepath.Join(c.Dir, e.Name),
				"--listen-client-urls", client, "--advertise-client-urls", client,
				"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
				"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
				"--initial-cluster-token", "hf-"+n.ID+o.Tag)
			if err != nil {
				t.Fatal(err)
			}
			e.proc = p
		}
	}
	l, err := local.NewLayout(clusterNm, o.Members, 0, c.endpoints)
	if err != nil {
		t.Fatal(err)
	}
	c.Layout = l
	for _, m := range l.Members {
		h := n.AddHost(t, o.Tag+m.Name, n.nextOctet())
		c.hosts = append(c.hosts, h)
		c.Nodes = append(c.Nodes, &Node{Name: m.Name, Host: h, DataDir: local.MemberDir(c.Dir, m.Name),
			ConfigFile: filepath.Join(c.Dir, "conf", m.Name+".yaml"), LogFile: filepath.Join(c.Dir, "logs", m.Name+".agent.log")})
	}
	if !o.ExternalEtcd {
		for _, nd := range c.Nodes {
			c.endpoints = append(c.endpoints, fmt.Sprintf("http://%s:%d", nd.Host.IP, clientPort))
		}
	}
	for i, m := range l.Members {
		nd := c.Nodes[i]
		if o.VolumeBytes > 0 {
			c.mountVolume(t, nd)
		}
		b, err := config.Marshal(c.memberConfig(m))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(nd.ConfigFile, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c.st, err = store.Open(context.Background(), store.Options{Endpoints: c.endpoints, Prefix: "/holdfast", Cluster: clusterNm,
		Member: "faults", TTL: 5 * time.Second, DialTimeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for _, nd := range c.Nodes {
		if err := c.StartAgent(nd); err != nil {
			t.Fatal(err)
		}
	}
	port := testutil.FreePort(t)
	c.ProxyRW = fmt.Sprintf("127.0.0.1:%d", port)
	c.proxyLog = filepath.Join(c.Dir, "logs", "proxy.log")
	if c.proxy, err = startProc("proxy", c.proxyLog, holdfastBin(), "proxy", "--endpoints", strings.Join(c.endpoints, ","),
		"--cluster", clusterNm, "--rw-listen", c.ProxyRW, "--ro-listen", "", "--log-level", logLevel()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		ok, why := c.Healthy(context.Background())
		if ok {
			return c
		}
		for _, nd := range c.Nodes {
			if a := nd.Agent(); a.Exited() {
				t.Fatalf("new cluster: the agent of %s exited (%s); its log ends:\n%s", nd.Name, a.ExitStatus(), fileTail(nd.LogFile, 20))
			}
		}
		if time.Now().After(deadline) {
			l, _, err := c.List()
			b, _ := json.MarshalIndent(l, "", "  ")
			t.Fatalf("new cluster: not healthy after 3m: %s; members: %s (list error: %v)", why, b, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// nextOctet is the next free host address on the Net.
func (n *Net) nextOctet() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return 10 + len(n.hosts)
}

// memberConfig is local.Layout.MemberConfig with every address moved to
// the member's own host.
func (c *Cluster) memberConfig(m local.Member) config.Config {
	cfg := c.Layout.MemberConfig(c.Dir, m)
	ip := c.node(m.Name).Host.IP
	cfg.API.Listen = fmt.Sprintf("%s:%d", ip, apiPort)
	cfg.Log.Level = logLevel()
	cfg.PostgreSQL.Listen = fmt.Sprintf("%s:%d", ip, pgPort)
	if !c.Opts.ExternalEtcd {
		cfg.Store.Embedded.ListenPeer = fmt.Sprintf("%s:%d", ip, peerPort)
		cfg.Store.Embedded.ListenClient = fmt.Sprintf("%s:%d", ip, clientPort)
		for _, nd := range c.Nodes {
			cfg.Store.Embedded.Peers[nd.Name] = fmt.Sprintf("http://%s:%d", nd.Host.IP, peerPort)
			cfg.Store.Embedded.Clients[nd.Name] = fmt.Sprintf("http://%s:%d", nd.Host.IP, clientPort)
		}
	}
	return cfg
}

// mountVolume mounts a tmpfs of VolumeBytes as the member's data_dir, with
// its etcd directory bind-mounted from the disk: filling the volume then
// fills PostgreSQL's disk only.
func (c *Cluster) mountVolume(t *testing.T, nd *Node) {
	t.Helper()
	if err := os.MkdirAll(nd.DataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	c.Net.AddMount(t, nd.DataDir)
	if err := syscall.Mount("tmpfs", nd.DataDir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", c.Opts.VolumeBytes)); err != nil {
		t.Fatalf("mount a tmpfs on %s: %v", nd.DataDir, err)
	}
	c.mounts = append(c.mounts, nd.DataDir)
	src, dst := nd.DataDir+".etcd", filepath.Join(nd.DataDir, "etcd")
	for _, d := range []string{src, dst} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	c.Net.AddMount(t, dst)
	if err := syscall.Mount(src, dst, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mount %s on %s: %v", src, dst, err)
	}
	c.mounts = append(c.mounts, dst)
}

func (c *Cluster) node(name string) *Node {
	for _, nd := range c.Nodes {
		if nd.Name == name {
			return nd
		}
	}
	return nil
}

// Node returns the member called name, or nil.
func (c *Cluster) Node(name string) *Node { return c.node(name) }

// StartAgent starts the member's agent in its namespace (as a supervisor
// such as systemd would after a crash).
func (c *Cluster) StartAgent(nd *Node) error {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.agent != nil && !nd.agent.Exited() {
		return fmt.Errorf("agent of %s is still running (pid %d)", nd.Name, nd.agent.PID())
	}
	p, err := startProc(nd.Name, nd.LogFile, "ip", "netns", "exec", nd.Host.NS, holdfastBin(), "agent", "--config", nd.ConfigFile)
	if err != nil {
		return err
	}
	nd.agent = p
	return nil
}

// PostmasterPID reads the member's postmaster.pid.
func (c *Cluster) PostmasterPID(nd *Node) (int, error) {
	b, err := os.ReadFile(filepath.Join(nd.DataDir, "pgdata", "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return 0, fmt.Errorf("postmaster.pid of %s: %w", nd.Name, err)
	}
	return pid, nil
}

// Endpoints are the store's client URLs.
func (c *Cluster) Endpoints() []string { return c.endpoints }

// DSN reaches a member's PostgreSQL directly as the superuser.
func (c *Cluster) DSN(nd *Node) string {
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=postgres sslmode=disable connect_timeout=2",
		nd.Host.IP, pgPort, c.Layout.Superuser.Username, c.Layout.Superuser.Password)
}

// ProxyDSN reaches the primary through the proxy.
func (c *Cluster) ProxyDSN() string {
	host, port, _ := strings.Cut(c.ProxyRW, ":")
	return fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=postgres sslmode=disable connect_timeout=2",
		host, port, c.Layout.Superuser.Username, c.Layout.Superuser.Password)
}

// APIURL is a member's API.
func (c *Cluster) APIURL(nd *Node) string { return fmt.Sprintf("http://%s:%d", nd.Host.IP, apiPort) }

// View reads the cluster from its store.
func (c *Cluster) View(ctx context.Context) (cluster.View, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return c.st.Load(ctx)
}

// List is `holdfast ctl list -o json` computed from one store read.
func (c *Cluster) List() (ctl.ClusterList, cluster.View, error) {
	v, err := c.View(context.Background())
	if err != nil {
		return ctl.ClusterList{}, v, err
	}
	return ctl.List(clusterNm, v, c.Layout.Superuser.Username), v, nil
}

// Healthy says whether the cluster is healthy, and if not why: every
// agent running, one running primary holding the leader key, every other
// member streaming from it (local.Healthy), and a write acknowledged both
// on the primary directly and through the proxy.
func (c *Cluster) Healthy(ctx context.Context) (bool, string) {
	for _, nd := range c.Nodes {
		if a := nd.Agent(); a == nil || a.Exited() {
			return false, fmt.Sprintf("the agent of %s is not running", nd.Name)
		}
	}
	v, err := c.View(ctx)
	if err != nil {
		return false, "store: " + err.Error()
	}
	if ok, why := local.Healthy(c.Layout, v); !ok {
		return false, why
	}
	leader := c.node(v.Leader.Name)
	for _, t := range []struct{ what, dsn string }{{"on " + leader.Name, c.DSN(leader)}, {"through the proxy", c.ProxyDSN()}} {
		if err := probeWrite(ctx, t.dsn); err != nil {
			return false, fmt.Sprintf("a write %s failed: %v", t.what, err)
		}
	}
	return true, ""
}

// probeWrite commits one row in a table of its own.
func probeWrite(ctx context.Context, dsn string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS holdfast_faults_probe (at timestamptz DEFAULT now()); INSERT INTO holdfast_faults_probe DEFAULT VALUES")
	return err
}

// WaitHealthy polls Healthy until it holds or timeout passes; the error
// says what was missing and shows the last member list.
func (c *Cluster) WaitHealthy(timeout time.Duration) (ctl.ClusterList, error) {
	deadline := time.Now().Add(timeout)
	why := ""
	for {
		ok, w := c.Healthy(context.Background())
		if ok {
			// The member list is for the caller's information only: a
			// store read failing right after a healthy one is no reason to
			// call the cluster unhealthy.
			l, _, _ := c.List()
			return l, nil
		}
		why = w
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	l, _, err := c.List()
	b, _ := json.MarshalIndent(l, "", "  ")
	return l, fmt.Errorf("not healthy after %s: %s; members: %s (list error: %v)", timeout, why, b, err)
}

// Leader returns the member holding the leader key and running as primary,
// retrying for up to 30 s.
func (c *Cluster) Leader() (*Node, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, _, err := c.List()
		if err == nil {
			for _, m := range l.Members {
				if m.Leader && m.Role == cluster.RolePrimary && m.State == cluster.StateRunning {
					return c.node(m.Name), nil
				}
			}
			err = fmt.Errorf("no running primary holds the leader key (leader %q)", l.Leader)
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// Replicas are the members other than nd.
func (c *Cluster) Others(nd *Node) []*Node {
	var out []*Node
	for _, o := range c.Nodes {
		if o != nd {
			out = append(out, o)
		}
	}
	return out
}

// InRecovery asks a member whether it is in recovery (false: it is a
// primary and would accept writes).
func InRecovery(ctx context.Context, dsn string) (bool, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	var rec bool
	err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec)
	return rec, err
}

// unsupported is a setting PATCH /config does not know (a constant error,
// comparable with errors.Is).
type unsupported string

func (u unsupported) Error() string { return string(u) }

const (
	// errSyncUnsupported: PATCH /config does not know synchronous_mode.
	errSyncUnsupported = unsupported("this holdfast does not accept synchronous_mode in PATCH /config")
	// errFailsafeUnsupported: PATCH /config does not know failsafe_mode.
	errFailsafeUnsupported = unsupported("this holdfast does not accept failsafe_mode in PATCH /config")
)

// PatchConfig sends a JSON merge patch to PATCH /config on a live member
// (the leader's API first). An unknown key comes back as unsupported.
func (c *Cluster) PatchConfig(patch map[string]any, unknownKey error) error {
	body, _ := json.Marshal(patch)
	order := c.Nodes
	if ld, err := c.Leader(); err == nil {
		order = append([]*Node{ld}, c.Others(ld)...)
	}
	var errs []error
	for _, nd := range order {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPatch, c.APIURL(nd)+"/config", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			errs = append(errs, err)
			continue
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		cancel()
		switch {
		case resp.StatusCode == http.StatusOK:
			return nil
		case resp.StatusCode == http.StatusBadRequest && bytes.Contains(msg, []byte("unknown key")):
			return fmt.Errorf("%w: %s", unknownKey, bytes.TrimSpace(msg))
		default:
			return fmt.Errorf("PATCH /config %s on %s: %d %s", body, nd.Name, resp.StatusCode, bytes.TrimSpace(msg))
		}
	}
	return fmt.Errorf("PATCH /config %s: no member answered: %w", body, errors.Join(errs...))
}

// SetMode sets synchronous_mode (and synchronous_node_count 1 for the
// synchronous modes) and waits until the primary has a synchronous standby
// (or, for off, none).
func (c *Cluster) SetMode(mode string) error {
	patch := map[string]any{"synchronous_mode": mode}
	if mode != cluster.SyncOff {
		patch["synchronous_node_count"] = 1
	}
	if err := c.PatchConfig(patch, errSyncUnsupported); err != nil {
		return err
	}
	deadline := time.Now().Add(90 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		ld, err := c.Leader()
		if err == nil {
			n, err := syncStandbys(c.DSN(ld))
			switch {
			case err != nil:
				last = err.Error()
			case mode == cluster.SyncOff && n == 0, mode != cluster.SyncOff && n > 0:
				return nil
			default:
				last = fmt.Sprintf("%s has %d synchronous standbys", ld.Name, n)
			}
		} else {
			last = err.Error()
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("synchronous_mode %s set, but the primary did not follow within 90s: %s", mode, last)
}

// syncStandbys counts the primary's standbys in state sync or quorum.
func syncStandbys(dsn string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')").Scan(&n)
	return n, err
}

// Close stops the proxy, the agents (SIGTERM, SIGKILL after a minute) and
// the etcd members, unmounts the volumes and removes the hosts.
func (c *Cluster) Close(t testing.TB) {
	if c.closed {
		return
	}
	c.closed = true
	if c.proxy != nil {
		c.proxy.Stop(10 * time.Second)
	}
	var wg sync.WaitGroup
	for _, nd := range c.Nodes {
		if a := nd.Agent(); a != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if a.Stop(60 * time.Second) {
					t.Logf("the agent of %s did not stop within 60s of SIGTERM; killed", nd.Name)
				}
			}()
		}
	}
	wg.Wait()
	for _, e := range c.Etcd {
		if e.proc != nil {
			e.proc.Stop(10 * time.Second)
		}
	}
	if c.st != nil {
		c.st.Close()
	}
	for _, h := range c.hosts {
		killNamespace(h.NS)
	}
	c.keepLogs(t)
	for i := len(c.mounts) - 1; i >= 0; i-- {
		if err := syscall.Unmount(c.mounts[i], syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", c.mounts[i], err)
		}
	}
	for _, h := range c.hosts {
		if err := c.Net.RemoveHost(t, h); err != nil {
			t.Errorf("remove host %s: %v", h.Name, err)
		}
	}
}

// Timeline returns the agents' and the proxy's log lines stamped between
// from and to, merged in time order: what holdfast did during a fault.
func (c *Cluster) Timeline(from, to time.Time, events ...Event) string {
	type line struct {
		at   time.Time
		text string
	}
	var lines []line
	for _, e := range events {
		lines = append(lines, line{e.At, e.At.UTC().Format("15:04:05.000") + " HARNESS " + e.What})
	}
	files := map[string]string{"proxy": c.proxyLog}
	for _, nd := range c.Nodes {
		files[nd.Name] = nd.LogFile
	}
	for who, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			ts, rest, ok := strings.Cut(strings.TrimPrefix(l, "time="), " ")
			if !ok || !strings.HasPrefix(l, "time=") {
				continue
			}
			at, err := time.Parse(time.RFC3339Nano, ts)
			if err != nil || at.Before(from) || at.After(to) {
				continue
			}
			if who != "proxy" && strings.Contains(rest, "msg=\"api request\"") {
				continue
			}
			lines = append(lines, line{at, at.UTC().Format("15:04:05.000") + " " + who + " " + rest})
		}
	}
	slices.SortStableFunc(lines, func(a, b line) int { return a.at.Compare(b.at) })
	var out strings.Builder
	for _, l := range lines {
		out.WriteString(l.text)
		out.WriteByte('\n')
	}
	return out.String()
}

// Event is something the harness did, for the timeline.
type Event struct {
	At   time.Time
	What string
}

// keepLogs copies the cluster's logs to $HOLDFAST_FAULTS_LOGS/<net>-<tag>/
// when that is set.
func (c *Cluster) keepLogs(t testing.TB) {
	base := os.Getenv("HOLDFAST_FAULTS_LOGS")
	if base == "" {
		return
	}
	dst := filepath.Join(base, c.Net.ID+"-"+c.Opts.Tag)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Logf("keep logs: %v", err)
		return
	}
	copyFile := func(src, name string) {
		if b, err := os.ReadFile(src); err == nil {
			_ = os.WriteFile(filepath.Join(dst, name), b, 0o644)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(c.Dir, "logs"))
	for _, e := range entries {
		copyFile(filepath.Join(c.Dir, "logs", e.Name()), e.Name())
	}
	for _, nd := range c.Nodes {
		copyFile(filepath.Join(nd.DataDir, "postgresql.log"), nd.Name+".postgresql.log")
		copyFile(filepath.Join(nd.DataDir, "etcd.log"), nd.Name+".etcd.log")
	}
	t.Logf("logs of cluster %s kept in %s", c.Opts.Tag, dst)
}

// DumpLogs prints the tail of every log of the cluster.
func (c *Cluster) DumpLogs(t testing.TB) {
	for _, nd := range c.Nodes {
		t.Logf("==== %s agent log (tail)\n%s", nd.Name, fileTail(nd.LogFile, 80))
		t.Logf("==== %s postgresql.log (tail, without the workload's refused writes)\n%s", nd.Name, pgLogTail(filepath.Join(nd.DataDir, "postgresql.log"), 40))
	}
	for _, e := range c.Etcd {
		t.Logf("==== %s log (tail)\n%s", e.Name, fileTail(e.proc.Log, 30))
	}
	if c.proxyLog != "" {
		t.Logf("==== proxy log (tail)\n%s", fileTail(c.proxyLog, 40))
	}
}

// pgLogTail is the end of a postgresql.log without the noise of the
// workload's writes refused by replicas.
func pgLogTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	var keep []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if strings.Contains(l, "STATEMENT:") || strings.Contains(l, "read-only transaction") {
			continue
		}
		keep = append(keep, l)
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "\n")
}

// RaftLeader names the member whose embedded etcd is the raft leader ("" if
// unknown or the store is external).
func (c *Cluster) RaftLeader() string {
	if c.Opts.ExternalEtcd {
		return ""
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.endpoints, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return ""
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ml, err := cli.MemberList(ctx)
	if err != nil {
		return ""
	}
	for _, ep := range c.endpoints {
		st, err := cli.Status(ctx, ep)
		if err != nil {
			continue
		}
		for _, m := range ml.Members {
			if m.ID == st.Leader {
				return m.Name
			}
		}
	}
	return ""
}

// SyncStandby names a synchronous standby of the primary nd ("" if none).
func (c *Cluster) SyncStandby(nd *Node) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN(nd))
	if err != nil {
		return ""
	}
	defer conn.Close(context.Background())
	var name string
	_ = conn.QueryRow(ctx, "SELECT application_name FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum') ORDER BY application_name LIMIT 1").Scan(&name)
	return name
}

// WaitSyncRecord waits until the store's synchronous record names primary
// and at least one synchronous standby (what `ctl list` marks sync): only
// then may a replica be promoted in a synchronous mode.
func (c *Cluster) WaitSyncRecord(primary *Node, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := "no store read"
	for {
		v, err := c.View(context.Background())
		switch {
		case err != nil:
			last = err.Error()
		case v.Sync == nil:
			last = "no synchronous record"
		case v.Sync.Leader == primary.Name && v.Sync.Quorum > 0 && len(v.Sync.Members) > 0:
			return nil
		default:
			last = fmt.Sprintf("the record names leader %s, standbys %v, quorum %d", v.Sync.Leader, v.Sync.Members, v.Sync.Quorum)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for the store to record a synchronous standby of %s: none within %s (%s)", primary.Name, timeout, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
