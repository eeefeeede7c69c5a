package faults

// The network: one Linux bridge in the root namespace and one network
// namespace per host (a PostgreSQL member or an external etcd member), each
// joined to the bridge by a veth pair. A partition is the host's veth set
// down: the host is cut from everyone, the clients and the proxy in the
// root namespace included, without a reset, exactly like a pulled cable.
//
// Every run has a short random id in every name it creates (namespaces
// hf-<id>-<host>, links hf<id>-<n>, bridge hf<id>br) and a registry file in
// registryDir naming its process, its subnet and what it created, written
// before anything is created. A run removes what it created when the test
// ends; a new run first sweeps what crashed runs (registry pid no longer
// alive) left behind.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
)

// registryDir holds one file per live (or crashed) run.
const registryDir = "/run/holdfast-faults"

// Net is one run's bridge and namespaces.
type Net struct {
	ID     string // 4 hex digits
	Subnet string // "10.77.N": hosts are Subnet.<octet>
	Bridge string

	mu    sync.Mutex
	hosts []*Host
	reg   registry
}

// Host is one network namespace on the bridge.
type Host struct {
	Name string // e.g. pg-0
	NS   string // hf-<id>-pg-0
	Veth string // the root-side end of its veth pair
	IP   string
}

// registry is what a run created, persisted so a later run can sweep it
// when this one crashed.
type registry struct {
	PID        int      `json:"pid"`
	Start      string   `json:"start"` // /proc/<pid>/stat start time: pid reuse guard
	ID         string   `json:"id"`
	Subnet     string   `json:"subnet"`
	Bridge     string   `json:"bridge"`
	Namespaces []string `json:"namespaces"`
	Links      []string `json:"links"`
	Mounts     []string `json:"mounts"`
}

// netUnavailable says why this machine cannot run the suite, or "".
func netUnavailable() string {
	if os.Geteuid() != 0 {
		return "the fault suite needs root (network namespaces, veth pairs, tmpfs mounts); run it as root, e.g. sudo -E go test ./test/faults"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "the fault suite needs `ip` from iproute2: run scripts/install-deps.sh"
	}
	probe := fmt.Sprintf("hf-probe-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		return fmt.Sprintf("the fault suite needs network namespaces, and `ip netns add` fails here: %v: %s", err, bytes.TrimSpace(out))
	}
	_ = exec.Command("ip", "netns", "del", probe).Run()
	return ""
}

// ip runs `ip args...` and returns its error with the output.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// runCmd runs a command and returns its error with the output.
func runCmd(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// procStart is a process's start time from /proc (field 22 of stat), to
// tell a live run from a reused pid.
func procStart(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

// NewNet sweeps crashed runs' leftovers, then creates this run's bridge on
// a subnet no other live run uses. Everything is removed when t ends.
func NewNet(t *testing.T) *Net {
	t.Helper()
	if err := os.MkdirAll(registryDir, 0o755); err != nil {
		t.Fatal(err)
	}
	sweep(t)
	b := make([]byte, 2)
	n := &Net{}
	for attempt := 0; ; attempt++ {
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		n.ID = hex.EncodeToString(b)
		octet := 1 + int(b[0])%250
		n.Subnet = fmt.Sprintf("10.77.%d", octet)
		// The subnet is claimed by an exclusive lock file, so two live runs
		// never share one; an address already on this machine also rules
		// it out.
		lock := filepath.Join(registryDir, "subnet-"+strconv.Itoa(octet))
		f, err := os.OpenFile(lock, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintf(f, "%s\n", n.ID)
			f.Close()
			if out, _ := exec.Command("ip", "-4", "-o", "addr").Output(); !bytes.Contains(out, []byte(" "+n.Subnet+".")) {
				break
			}
			os.Remove(lock)
		}
		if attempt > 50 {
			t.Fatalf("no free subnet 10.77.N.0/24 (see %s)", registryDir)
		}
	}
	n.Bridge = "hf" + n.ID + "br"
	n.reg = registry{PID: os.Getpid(), Start: procStart(os.Getpid()), ID: n.ID, Subnet: n.Subnet, Bridge: n.Bridge}
	n.save(t)
	t.Cleanup(func() { n.Close(t) })
	for _, args := range [][]string{
		{"link", "add", n.Bridge, "type", "bridge"},
		{"addr", "add", n.Subnet + ".1/24", "dev", n.Bridge},
		{"link", "set", n.Bridge, "up"},
	} {
		if err := ip(args...); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

func (n *Net) regFile() string { return filepath.Join(registryDir, n.ID+".json") }

func (n *Net) save(t testing.TB) {
	n.mu.Lock()
	b, _ := json.MarshalIndent(n.reg, "", "  ")
	n.mu.Unlock()
	if err := os.WriteFile(n.regFile(), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// AddMount records a mount so that a crashed run's sweep unmounts it.
func (n *Net) AddMount(t testing.TB, path string) {
	n.mu.Lock()
	n.reg.Mounts = append(n.reg.Mounts, path)
	n.mu.Unlock()
	n.save(t)
}

// AddHost creates a namespace joined to the bridge with address
// Subnet.<octet>, loopback up.
func (n *Net) AddHost(t testing.TB, name string, octet int) *Host {
	t.Helper()
	n.mu.Lock()
	k := len(n.hosts)
	h := &Host{Name: name, NS: "hf-" + n.ID + "-" + name, Veth: fmt.Sprintf("hf%s-%d", n.ID, k), IP: fmt.Sprintf("%s.%d", n.Subnet, octet)}
	n.hosts = append(n.hosts, h)
	n.reg.Namespaces = append(n.reg.Namespaces, h.NS)
	n.reg.Links = append(n.reg.Links, h.Veth)
	n.mu.Unlock()
	n.save(t)
	peer := fmt.Sprintf("hf%s-%dp", n.ID, k)
	for _, args := range [][]string{
		{"netns", "add", h.NS},
		{"link", "add", h.Veth, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", h.NS},
		{"-n", h.NS, "link", "set", peer, "name", "eth0"},
		{"-n", h.NS, "addr", "add", h.IP + "/24", "dev", "eth0"},
		{"-n", h.NS, "link", "set", "eth0", "up"},
		{"-n", h.NS, "link", "set", "lo", "up"},
		{"link", "set", h.Veth, "master", n.Bridge},
		{"link", "set", h.Veth, "up"},
	} {
		if err := ip(args...); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// Cut takes the host off the network (its veth down): no packet in or out,
// no reset; established connections hang until their timeouts.
func (n *Net) Cut(h *Host) error { return ip("link", "set", h.Veth, "down") }

// Heal puts the host back on the network.
func (n *Net) Heal(h *Host) error { return ip("link", "set", h.Veth, "up") }

// Close kills whatever still runs in the run's namespaces, deletes them
// and the bridge, unmounts the run's mounts and removes its registry.
func (n *Net) Close(t testing.TB) {
	n.mu.Lock()
	reg := n.reg
	n.mu.Unlock()
	if err := teardown(reg); err != nil {
		t.Errorf("clean up the fault network %s: %v", n.ID, err)
	}
}

// teardown removes everything a registry names. Processes still running in
// its namespaces are killed (by pid, from `ip netns pids`).
func teardown(reg registry) error {
	var errs []error
	for _, ns := range reg.Namespaces {
		killNamespace(ns)
	}
	for i := len(reg.Mounts) - 1; i >= 0; i-- {
		m := reg.Mounts[i]
		if mounted(m) {
			if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
			}
		}
	}
	for _, ns := range reg.Namespaces {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			if err := ip("netns", "del", ns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, l := range append(append([]string(nil), reg.Links...), reg.Bridge) {
		if l == "" {
			continue
		}
		if _, err := os.Stat(filepath.Join("/sys/class/net", l)); err == nil {
			if err := ip("link", "del", l); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
				errs = append(errs, err)
			}
		}
	}
	if reg.Subnet != "" {
		octet := strings.TrimPrefix(reg.Subnet, "10.77.")
		os.Remove(filepath.Join(registryDir, "subnet-"+octet))
	}
	if len(errs) == 0 && reg.ID != "" {
		os.Remove(filepath.Join(registryDir, reg.ID+".json"))
	}
	return errors.Join(errs...)
}

// killNamespace SIGCONTs and SIGKILLs every process in a namespace and
// waits (up to 20 s) until none is left.
func killNamespace(ns string) {
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := exec.Command("ip", "netns", "pids", ns).Output()
		if err != nil {
			return
		}
		pids := strings.Fields(string(out))
		if len(pids) == 0 || time.Now().After(deadline) {
			return
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGCONT)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// mounted reports whether path is a mount point (in /proc/self/mounts).
func mounted(path string) bool {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && f[1] == path {
			return true
		}
	}
	return false
}

// sweep tears down what crashed runs left: registries whose process is
// gone, and hf-<id>-* namespaces or hf<id>* links whose id has no live
// registry (a run writes its registry before it creates anything).
func sweep(t testing.TB) {
	live := map[string]bool{}
	files, _ := filepath.Glob(filepath.Join(registryDir, "*.json"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var reg registry
		if json.Unmarshal(b, &reg) != nil || reg.ID == "" {
			continue
		}
		if reg.PID > 0 && procStart(reg.PID) == reg.Start && reg.Start != "" {
			live[reg.ID] = true
			continue
		}
		t.Logf("sweeping what crashed fault run %s (pid %d) left behind", reg.ID, reg.PID)
		if err := teardown(reg); err != nil {
			t.Logf("sweep %s: %v", reg.ID, err)
		}
	}
	// Orphans without a registry.
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		id, ok := runID(e.Name(), "hf-", "-")
		if ok && !live[id] {
			t.Logf("sweeping orphaned namespace %s", e.Name())
			killNamespace(e.Name())
			_ = ip("netns", "del", e.Name())
		}
	}
	links, _ := os.ReadDir("/sys/class/net")
	for _, e := range links {
		name := e.Name()
		if !strings.HasPrefix(name, "hf") || len(name) < 6 {
			continue
		}
		id := name[2:6]
		if _, err := hex.DecodeString(id); err == nil && !live[id] && (strings.HasSuffix(name, "br") || strings.Contains(name, "-")) {
			t.Logf("sweeping orphaned link %s", name)
			_ = ip("link", "del", name)
		}
	}
	locks, _ := filepath.Glob(filepath.Join(registryDir, "subnet-*"))
	for _, l := range locks {
		b, _ := os.ReadFile(l)
		// A lock younger than a minute may belong to a run that has not
		// written its registry yet.
		if fi, err := os.Stat(l); err != nil || time.Since(fi.ModTime()) < time.Minute {
			continue
		}
		if id := strings.TrimSpace(string(b)); !live[id] {
			os.Remove(l)
		}
	}
}

// runID extracts the run id from "hf-<id>-rest".
func runID(name, prefix, sep string) (string, bool) {
	if !strings.HasPrefix(name, prefix) {
		return "", false
	}
	rest := name[len(prefix):]
	id, _, ok := strings.Cut(rest, sep)
	if !ok || len(id) != 4 {
		return "", false
	}
	if _, err := hex.DecodeString(id); err != nil {
		return "", false
	}
	return id, true
}

// iptablesLoss drops a random fraction of the packets entering a host from
// the network (statistic match on eth0; loopback stays lossless), or
// returns an error when iptables cannot.
func iptablesLoss(h *Host, p float64) error {
	if _, err := exec.LookPath("iptables"); err != nil {
		return err
	}
	_, err := runCmd("ip", "netns", "exec", h.NS, "iptables", "-w", "-A", "INPUT", "-i", "eth0", "-m", "statistic", "--mode", "random",
		"--probability", strconv.FormatFloat(p, 'f', 3, 64), "-j", "DROP")
	return err
}

// iptablesClear removes a host's packet-loss rules.
func iptablesClear(h *Host) error {
	_, err := runCmd("ip", "netns", "exec", h.NS, "iptables", "-w", "-F", "INPUT")
	return err
}

// netem adds loss and delay on the host's own end of its link, or returns
// tc's error (e.g. no sch_netem in the kernel).
func netem(h *Host, loss float64, delay time.Duration) error {
	_, err := runCmd("ip", "netns", "exec", h.NS, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
		"delay", fmt.Sprintf("%dms", delay.Milliseconds()), fmt.Sprintf("%dms", delay.Milliseconds()/2),
		"loss", fmt.Sprintf("%.0f%%", loss*100))
	return err
}

// tcClear removes the host's root qdisc.
func tcClear(h *Host) error {
	_, err := runCmd("ip", "netns", "exec", h.NS, "tc", "qdisc", "del", "dev", "eth0", "root")
	return err
}

// RemoveHost deletes a host's namespace (and with it its veth pair) after
// killing what still runs in it.
func (n *Net) RemoveHost(t testing.TB, h *Host) error {
	killNamespace(h.NS)
	var errs []error
	if _, err := os.Stat(filepath.Join("/run/netns", h.NS)); err == nil {
		if err := ip("netns", "del", h.NS); err != nil {
			errs = append(errs, err)
		}
	}
	// Deleting the namespace deletes the pair, asynchronously.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join("/sys/class/net", h.Veth)); err != nil {
			break
		}
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", h.Veth)); err == nil {
		if err := ip("link", "del", h.Veth); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	n.mu.Lock()
	n.reg.Namespaces = slices.DeleteFunc(n.reg.Namespaces, func(s string) bool { return s == h.NS })
	n.reg.Links = slices.DeleteFunc(n.reg.Links, func(s string) bool { return s == h.Veth })
	n.mu.Unlock()
	n.save(t)
	return nil
}
