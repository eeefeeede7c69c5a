// Package local runs a whole holdfast cluster on one machine: one agent
// process per member, each with a stable name (<cluster>-<ordinal>), its own
// data directory under one root directory, and loopback ports chosen once
// and then kept. It is what `holdfast up` and `holdfast down` drive.
//
// The root directory holds cluster.json (names, ports, credentials; mode
// 0600), pgpass (for psql), and one directory per member with its
// holdfast.yaml, agent.pid, agent.log, PostgreSQL data and etcd data.
package local

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/config"
	"github.com/holdfast/holdfast/internal/procstat"
)

// Layout is the persisted description of a local cluster.
type Layout struct {
	Cluster string   `json:"cluster"`
	Members []Member `json:"members"`
	// External lists the endpoints of an external etcd cluster; empty means
	// every member runs an embedded etcd member (the default).
	External []string `json:"external_etcd,omitempty"`
	// ProxyRWPort and ProxyROPort are the local proxy's listeners (0: no
	// proxy, in a directory created before the proxy existed).
	ProxyRWPort int `json:"proxy_rw_port,omitempty"`
	ProxyROPort int `json:"proxy_ro_port,omitempty"`
	// ProxyMode is the mode up runs the proxy in (proxy.ModePassThrough or
	// proxy.ModeSession; "" in a directory created before it existed:
	// passthrough).
	ProxyMode string `json:"proxy_mode,omitempty"`
	// ProxyAuthPassword is the session proxy's auth role's password
	// (pgauth.AuthRole): the primary keeps that role (postgresql.proxy_auth)
	// and `holdfast proxy --dir` logs in with it. "" in a directory created
	// before it existed: no session mode there.
	ProxyAuthPassword string `json:"proxy_auth_password,omitempty"`
	// Backup is where the cluster archives and keeps backups (nil: no
	// backups).
	Backup    *Backup `json:"backup,omitempty"`
	Superuser struct {
		Username string `json:"username"`
		Password string `json:"password"`
	} `json:"superuser"`
	Replication struct {
		Username string `json:"username"`
		Password string `json:"password"`
	} `json:"replication"`
}

// Backup is a local cluster's pgBackRest repository and stanza. The
// stanza carries a random suffix chosen when the cluster is created: a
// cluster restored from this one gets another, so it never archives into
// its source's stanza, whatever the clusters are named.
//
// An S3 repository's settings and an encrypted repository's passphrase
// come from holdfast up --backup-config (the file's backup section); the
// secrets are best given as files (key_file, secret_file,
// cipher_pass_file), which the members read: a value given inline is
// copied into the cluster's files, all mode 0600.
type Backup struct {
	Repository     string          `json:"repository"`
	Stanza         string          `json:"stanza"`
	S3             config.BackupS3 `json:"s3,omitzero"`
	CipherPass     string          `json:"cipher_pass,omitempty"`
	CipherPassFile string          `json:"cipher_pass_file,omitempty"`
	// RetentionFull is --backup-config's retention_full (0: the default).
	RetentionFull int `json:"retention_full,omitempty"`
}

// Config is the members' backup section, over c (the defaults).
func (b Backup) Config(c config.Backup) config.Backup {
	c.Repository, c.Stanza, c.S3 = b.Repository, b.Stanza, b.S3
	c.CipherPass, c.CipherPassFile = b.CipherPass, b.CipherPassFile
	if b.RetentionFull > 0 {
		c.RetentionFull = b.RetentionFull
	}
	return c
}

// NewStanza returns a fresh stanza name for a cluster.
func NewStanza(clusterName string) (string, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate a stanza name: %w", err)
	}
	return clusterName + "-" + hex.EncodeToString(b), nil
}

// Member is one member's stable name and ports.
type Member struct {
	Name       string `json:"name"`
	PGPort     int    `json:"pg_port"`
	PeerPort   int    `json:"peer_port"`
	ClientPort int    `json:"client_port"`
	APIPort    int    `json:"api_port,omitempty"`
	Witness    bool   `json:"witness,omitempty"`
}

const host = "127.0.0.1"

// LayoutFile is where a cluster's layout lives inside its root directory.
func LayoutFile(dir string) string { return filepath.Join(dir, "cluster.json") }

// MemberDir is a member's directory.
func MemberDir(dir, name string) string { return filepath.Join(dir, name) }

// ConfigFile is a member's configuration file.
func ConfigFile(dir, name string) string { return filepath.Join(MemberDir(dir, name), "holdfast.yaml") }

// PIDFile holds the agent's process id while it runs.
func PIDFile(dir, name string) string { return filepath.Join(MemberDir(dir, name), "agent.pid") }

// LogFile is where the agent's output goes.
func LogFile(dir, name string) string { return filepath.Join(MemberDir(dir, name), "agent.log") }

// ReadLayout loads an existing cluster's layout. The error wraps
// os.ErrNotExist when dir holds no cluster.
func ReadLayout(dir string) (Layout, error) {
	var l Layout
	b, err := os.ReadFile(LayoutFile(dir))
	if err != nil {
		return l, fmt.Errorf("read local cluster in %s: %w", dir, err)
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return l, fmt.Errorf("read local cluster in %s: %s is damaged: %w", dir, LayoutFile(dir), err)
	}
	return l, nil
}

// NewLayout chooses names, free loopback ports and passwords for a new
// cluster of n database members plus witnesses.
//
// With external etcd endpoints, members run no embedded etcd, and witnesses
// (which only vote in the embedded store) make no sense.
func NewLayout(clusterName string, n, witnesses int, external []string) (Layout, error) {
	if err := cluster.ValidName(clusterName); err != nil {
		return Layout{}, fmt.Errorf("cluster name: %w", err)
	}
	if n < 1 || n > 9 {
		return Layout{}, fmt.Errorf("--members %d: a local cluster has 1 to 9 database members", n)
	}
	if witnesses < 0 || witnesses > 2 {
		return Layout{}, fmt.Errorf("--witnesses %d: use 0 to 2", witnesses)
	}
	if len(external) > 0 && witnesses > 0 {
		return Layout{}, fmt.Errorf("--witnesses: a witness votes in the embedded store; with --endpoints (external etcd) it has nothing to do")
	}
	l := Layout{Cluster: clusterName, External: external}
	ports, err := freePorts(4*(n+witnesses) + 2)
	if err != nil {
		return l, err
	}
	l.ProxyRWPort, l.ProxyROPort = ports[len(ports)-2], ports[len(ports)-1]
	for i := 0; i < n+witnesses; i++ {
		l.Members = append(l.Members, Member{
			Name:       fmt.Sprintf("%s-%d", clusterName, i),
			PGPort:     ports[4*i],
			PeerPort:   ports[4*i+1],
			ClientPort: ports[4*i+2],
			APIPort:    ports[4*i+3],
			Witness:    i >= n,
		})
	}
	l.Superuser.Username = "postgres"
	l.Replication.Username = "replicator"
	if l.Superuser.Password, err = password(); err != nil {
		return l, err
	}
	if l.Replication.Password, err = password(); err != nil {
		return l, err
	}
	if l.ProxyAuthPassword, err = password(); err != nil {
		return l, err
	}
	return l, nil
}

// Endpoints are the store's client URLs: the external etcd cluster's, or
// every member's embedded etcd.
func (l Layout) Endpoints() []string {
	if len(l.External) > 0 {
		return l.External
	}
	var out []string
	for _, m := range l.Members {
		out = append(out, fmt.Sprintf("http://%s:%d", host, m.ClientPort))
	}
	return out
}

// MemberConfig renders the configuration of one member.
func (l Layout) MemberConfig(dir string, m Member) config.Config {
	c := config.Defaults()
	c.Cluster = l.Cluster
	c.Name = m.Name
	c.DataDir = MemberDir(dir, m.Name)
	c.Witness = m.Witness
	c.API.Listen = net.JoinHostPort(host, strconv.Itoa(m.APIPort))
	if l.Backup != nil {
		c.Backup = l.Backup.Config(c.Backup)
	}
	c.PostgreSQL.Listen = net.JoinHostPort(host, strconv.Itoa(m.PGPort))
	c.PostgreSQL.Superuser = config.Credentials{Username: l.Superuser.Username, Password: l.Superuser.Password}
	c.PostgreSQL.Replication = config.Credentials{Username: l.Replication.Username, Password: l.Replication.Password}
	c.PostgreSQL.ProxyAuth.Password = l.ProxyAuthPassword
	if len(l.External) > 0 {
		c.Store.Mode = config.StoreEtcd
		c.Store.Endpoints = l.External
		c.Store.Embedded = config.Embedded{}
		return c
	}
	c.Store.Embedded.ListenPeer = net.JoinHostPort(host, strconv.Itoa(m.PeerPort))
	c.Store.Embedded.ListenClient = net.JoinHostPort(host, strconv.Itoa(m.ClientPort))
	c.Store.Embedded.Peers = map[string]string{}
	c.Store.Embedded.Clients = map[string]string{}
	for _, p := range l.Members {
		c.Store.Embedded.Peers[p.Name] = fmt.Sprintf("http://%s:%d", host, p.PeerPort)
		c.Store.Embedded.Clients[p.Name] = fmt.Sprintf("http://%s:%d", host, p.ClientPort)
	}
	return c
}

// DSN is a libpq connection string for a member (password from PGPASSFILE).
func (l Layout) DSN(m Member) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=postgres", host, m.PGPort, l.Superuser.Username)
}

// SuperuserDSN is a connection string, with the superuser's password, to a
// port on this machine: a member, the proxy, or a load balancer in front of
// them. For tests and benchmarks; people use DSN and pgpass.
// connectTimeout is rounded up to whole seconds (libpq's unit); 0 = none.
func (l Layout) SuperuserDSN(port int, connectTimeout time.Duration) string {
	dsn := fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=postgres sslmode=disable", host, port, l.Superuser.Username, l.Superuser.Password)
	if connectTimeout > 0 {
		dsn += fmt.Sprintf(" connect_timeout=%d", int((connectTimeout+time.Second-1)/time.Second))
	}
	return dsn
}

// Write creates dir and writes the layout, the pgpass file and every
// member's configuration. Files are written to a temporary name and renamed,
// so an interrupted write never leaves a half-written cluster.
func (l Layout) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	// PostgreSQL runs as an unprivileged user that must traverse dir.
	if err := os.Chmod(dir, 0o755); err != nil {
		return fmt.Errorf("make %s traversable: %w", dir, err)
	}
	for _, m := range l.Members {
		md := MemberDir(dir, m.Name)
		if err := os.MkdirAll(md, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", md, err)
		}
		b, err := config.Marshal(l.MemberConfig(dir, m))
		if err != nil {
			return fmt.Errorf("render configuration of %s: %w", m.Name, err)
		}
		if err := writeAtomic(ConfigFile(dir, m.Name), b, 0o600); err != nil {
			return err
		}
	}
	var pgpass strings.Builder
	for _, m := range l.Members {
		if !m.Witness {
			fmt.Fprintf(&pgpass, "%s:%d:*:%s:%s\n", host, m.PGPort, l.Superuser.Username, l.Superuser.Password)
		}
	}
	for _, port := range []int{l.ProxyRWPort, l.ProxyROPort} {
		if port != 0 {
			fmt.Fprintf(&pgpass, "%s:%d:*:%s:%s\n", host, port, l.Superuser.Username, l.Superuser.Password)
		}
	}
	if err := writeAtomic(filepath.Join(dir, "pgpass"), []byte(pgpass.String()), 0o600); err != nil {
		return err
	}
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return fmt.Errorf("encode layout: %w", err)
	}
	return writeAtomic(LayoutFile(dir), append(b, '\n'), 0o600)
}

func writeAtomic(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// RunningPID returns the pid of the member's agent if it is running.
func RunningPID(dir, name string) (int, bool) {
	return runningPID(PIDFile(dir, name), ConfigFile(dir, name))
}

// runningPID reads a pid file and checks that the process is alive and is
// the one we started: its command line must contain marker, because after
// a crash the pid may have been reused by an unrelated process.
func runningPID(pidFile, marker string) (int, bool) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), marker) {
		return 0, false
	}
	return pid, syscall.Kill(pid, 0) == nil
}

// Stop sends SIGTERM to a member's agent and waits for it to exit, then
// SIGKILLs it after timeout. It reports whether the agent was running.
func Stop(dir, name string, timeout time.Duration) (bool, error) {
	return stopProcess(name, PIDFile(dir, name), ConfigFile(dir, name), timeout)
}

func stopProcess(name, pidFile, marker string, timeout time.Duration) (bool, error) {
	pid, ok := runningPID(pidFile, marker)
	if !ok {
		return false, nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return true, fmt.Errorf("stop %s (pid %d): %w", name, pid, err)
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, ok := runningPID(pidFile, marker); !ok {
			return true, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	return true, fmt.Errorf("stop %s (pid %d): did not exit within %s; killed", name, pid, timeout)
}

// Proxy files and addresses of a local cluster.
func proxyPIDFile(dir string) string { return filepath.Join(dir, "proxy.pid") }

// ProxyLogFile is where the local proxy's output goes.
func ProxyLogFile(dir string) string { return filepath.Join(dir, "proxy.log") }

// proxyMarker is what the local proxy's command line contains.
func proxyMarker(dir string) string { return "proxy\x00--dir\x00" + dir + "\x00" }

// ProxyRW and ProxyRO are the local proxy's listen addresses ("" = none).
func (l Layout) ProxyRW() string { return hostPort(l.ProxyRWPort) }

// ProxyRO is the read-only listener; see ProxyRW.
func (l Layout) ProxyRO() string { return hostPort(l.ProxyROPort) }

func hostPort(p int) string {
	if p == 0 {
		return ""
	}
	return net.JoinHostPort(host, strconv.Itoa(p))
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("find free loopback ports: %w", err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

func password() (string, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate password: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// APIURL is a member's API address.
func (l Layout) APIURL(m Member) string { return fmt.Sprintf("http://%s:%d", host, m.APIPort) }

// PostmasterPID reads the pid in a member's postmaster.pid.
func PostmasterPID(dir, name string) (int, error) {
	b, err := os.ReadFile(filepath.Join(MemberDir(dir, name), "pgdata", "postmaster.pid"))
	if err != nil {
		return 0, fmt.Errorf("read postmaster.pid of %s: %w", name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return 0, fmt.Errorf("parse postmaster.pid of %s: %w", name, err)
	}
	return pid, nil
}

// KillHard sends SIGKILL to a member's agent and to all of its PostgreSQL
// processes together — the crash of a whole host, as tests and benchmarks
// inject it — and returns the agent's and the postmaster's pids. It does
// not wait for them to exit.
//
// A postmaster killed alone leaves its backends running until they next
// wait: one that finds its client's next statement already there goes on,
// and may acknowledge a commit after the "host" died — a transaction then
// lost with the old primary, which no host crash could have acknowledged.
// So the postmaster is stopped first (it forks nothing more), then its
// children (each leads a process group of its own, with whatever it runs)
// are killed, then the postmaster.
func KillHard(dir, name string) (agent, postmaster int, err error) {
	postmaster, err = PostmasterPID(dir, name)
	if err != nil {
		return 0, 0, err
	}
	agent, ok := RunningPID(dir, name)
	if !ok {
		return 0, 0, fmt.Errorf("agent of %s is not running", name)
	}
	_ = syscall.Kill(postmaster, syscall.SIGSTOP)
	_ = syscall.Kill(agent, syscall.SIGKILL)
	waitStopped(postmaster)
	for _, c := range childrenOf(postmaster) {
		_ = syscall.Kill(-c, syscall.SIGKILL)
		_ = syscall.Kill(c, syscall.SIGKILL)
	}
	_ = syscall.Kill(postmaster, syscall.SIGKILL)
	return agent, postmaster, nil
}

// killStopWait bounds KillHard's wait for the postmaster to stop before
// it lists its children.
const killStopWait = time.Second

// waitStopped waits (at most killStopWait) until pid is stopped or gone,
// so that no child it forks is missed.
func waitStopped(pid int) {
	deadline := time.Now().Add(killStopWait)
	for time.Now().Before(deadline) {
		st, err := procstat.Read(pid)
		if err != nil || st.State == 'T' || st.State == 't' || st.State == 'Z' {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := procstat.Read(c); err == nil && st.PPID == pid {
			out = append(out, c)
		}
	}
	return out
}
