//go:build linux

package kubeenv

// Cluster: a real multi-node Kubernetes (control plane, N kubelets with their
// own containerd, kube-proxy, CNI bridge, CoreDNS, local PersistentVolumes)
// started by scripts/kube/cluster.sh for one test. Every process, mount,
// cgroup and network namespace of it is named from its own run id, so two
// test binaries can each run one at the same time.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

const (
	// clusterUpTimeout bounds `cluster.sh up` (about 30 s with cached
	// binaries on two cores).
	clusterUpTimeout = 5 * time.Minute
	// clusterDownTimeout bounds `cluster.sh down`.
	clusterDownTimeout = 2 * time.Minute
	// clusterVerbTimeout bounds the other cluster.sh verbs.
	clusterVerbTimeout = 2 * time.Minute
	// clusterKubectlTimeout bounds one kubectl run.
	clusterKubectlTimeout = 2 * time.Minute
	// clusterLogTail is how many lines of each component log a failed test
	// prints.
	clusterLogTail = 40
	// clusterKeepEnv, when "1", leaves a failed test's cluster running (its
	// directory is logged) instead of tearing it down.
	clusterKeepEnv = "HOLDFAST_KUBE_KEEP"
)

// Cluster is a running multi-node Kubernetes owned by one test.
//
// Addresses (X is 10.160–10.191, one per concurrent run): the API server
// is APIServer (https://X.0.2:6443), reachable from the test process; from
// the nodes and pods it is https://X.1.1:6443 (also the kubernetes Service,
// X.64.1:443). The test process reaches node IPs (X.1.10+K) and pod IPs
// (X.128+K.0/24 on node-K) directly; Service IPs (X.64.0/20) only from
// nodes and pods. Cluster DNS is DNS (X.1.1:53, domain cluster.local).
type Cluster struct {
	// Dir holds everything of the cluster: logs (Dir/logs), certificates,
	// node directories, kubeconfig, env. Removed after a clean teardown.
	Dir string
	// Kubeconfig is an administrator's kubeconfig (system:masters).
	Kubeconfig string
	// Nodes are the node names: node-1 … node-N, labelled
	// topology.kubernetes.io/zone zone-a, zone-b, zone-c round robin.
	Nodes []string
	// APIServer is the API server URL as the test process reaches it.
	APIServer string
	// DNS is the cluster DNS server's address (CoreDNS).
	DNS string
	// KubectlBin is the path of the kubectl binary.
	KubectlBin string
	// Env is DIR/env: every address and name of the run (see cluster.sh).
	Env map[string]string

	t      testing.TB
	script string
}

// Start brings up a cluster of nodes nodes (scripts/kube/cluster.sh up)
// and tears it down when the test ends. It needs root and the binaries of
// scripts/kube/build.sh: without them the test is skipped, or fails when
// HOLDFAST_KUBE_REQUIRED=1.
//
// cluster.sh reads its settings from the environment, so a test can set
// them with t.Setenv before Start: HOLDFAST_KUBE_NODE_GRACE (e.g. "20s",
// how long a node whose kubelet stopped stays Ready), HOLDFAST_KUBE_PV_PER_NODE
// (local PersistentVolumes per node, default 8). HOLDFAST_KUBE_KEEP=1 leaves
// a failed test's cluster running for a look.
func Start(t testing.TB, nodes int) *Cluster {
	t.Helper()
	root, err := repoRoot()
	if err == nil {
		err = clusterPrereqs(root)
	}
	if err != nil {
		msg := fmt.Sprintf("kubeenv: cannot run a Kubernetes cluster here: %v\n"+
			"Build the binaries once per machine (as root, ~15 min cold; it also installs containerd, runc, "+
			"CNI plugins and iptables from Debian): scripts/kube/build.sh; run the tests as root.", err)
		if os.Getenv(envRequired) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir, err := os.MkdirTemp("", "hkube-")
	if err != nil {
		t.Fatalf("kubeenv: %v", err)
	}
	c := &Cluster{t: t, Dir: dir, script: filepath.Join(root, "scripts", "kube", "cluster.sh")}
	t.Cleanup(c.cleanup)
	start := time.Now()
	out, err := c.run(clusterUpTimeout, "up", dir, "--nodes", fmt.Sprint(nodes))
	if err != nil {
		c.logTails()
		t.Fatalf("kubeenv: cluster.sh up: %v\n%s", err, out)
	}
	if err := c.loadEnv(); err != nil {
		t.Fatalf("kubeenv: %v", err)
	}
	t.Logf("kubeenv: %d-node cluster up in %v: dir %s, apiserver %s", nodes, time.Since(start).Round(100*time.Millisecond), dir, c.APIServer)
	return c
}

// clusterPrereqs says why this machine cannot run a cluster, or nil.
func clusterPrereqs(root string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("not root (network namespaces, mounts, cgroups and containerd need it)")
	}
	bin := os.Getenv(envBinDir)
	if bin == "" {
		ctx, cancel := context.WithTimeout(context.Background(), printDirTimeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, "bash", filepath.Join(root, "scripts", "kube", "build.sh"), "--print-dir", "--no-build").Output()
		if err != nil {
			return fmt.Errorf("the Kubernetes binaries are not built (scripts/kube/build.sh --print-dir --no-build: %v)", err)
		}
		bin = strings.TrimSpace(string(out))
	}
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl", "etcd", "coredns"} {
		if fi, err := os.Stat(filepath.Join(bin, b)); err != nil || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("no executable %s in %s", b, bin)
		}
	}
	if _, err := os.Stat(filepath.Join(bin, "..", "images", "pause.tar")); err != nil {
		return fmt.Errorf("no pause image beside %s: %v", bin, err)
	}
	for _, p := range []string{"containerd", "ctr", "runc", "iptables", "ip", "nsenter", "unshare", "openssl"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s is not installed", p)
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback", "portmap"} {
		if _, err := os.Stat(filepath.Join("/usr/lib/cni", p)); err != nil {
			return fmt.Errorf("CNI plugin %s missing in /usr/lib/cni (Debian package containernetworking-plugins)", p)
		}
	}
	if _, err := os.Stat("/sys/fs/cgroup/freezer"); err != nil {
		return fmt.Errorf("no cgroup v1 freezer hierarchy at /sys/fs/cgroup/freezer (the cluster needs a cgroup v1 host)")
	}
	return nil
}

// run runs `bash cluster.sh VERB ARGS...` and returns its combined output.
func (c *Cluster) run(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{c.script}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// A later run tears this cluster down if this process dies without
	// doing it (a test binary killed by its timeout runs no cleanups).
	cmd.Env = append(os.Environ(), fmt.Sprintf("HOLDFAST_KUBE_OWNER_PID=%d", os.Getpid()))
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (timed out after %v)", err, timeout)
	}
	return out.String(), err
}

func (c *Cluster) loadEnv() error {
	f, err := os.Open(filepath.Join(c.Dir, "env"))
	if err != nil {
		return fmt.Errorf("read the cluster env: %w", err)
	}
	defer f.Close()
	c.Env = map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			c.Env[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	c.Kubeconfig = c.Env["KUBECONFIG"]
	c.Nodes = strings.Fields(c.Env["HOLDFAST_KUBE_NODES"])
	c.APIServer = c.Env["HOLDFAST_KUBE_APISERVER"]
	c.DNS = c.Env["HOLDFAST_KUBE_DNS"]
	c.KubectlBin = c.Env["HOLDFAST_KUBE_KUBECTL"]
	if c.Kubeconfig == "" || len(c.Nodes) == 0 || c.KubectlBin == "" {
		return fmt.Errorf("incomplete cluster env in %s", c.Dir)
	}
	return nil
}

// cleanup prints the component logs' tails when the test failed, then
// tears the cluster down and removes Dir if the teardown was clean.
func (c *Cluster) cleanup() {
	if c.t.Failed() {
		if c.KubectlBin != "" {
			if out, err := c.Kubectl("get", "nodes,pods,pvc", "-A", "-o", "wide"); err == nil {
				c.t.Logf("kubeenv: cluster state:\n%s", out)
			}
		}
		c.logTails()
		if os.Getenv(clusterKeepEnv) == "1" {
			c.t.Logf("kubeenv: %s=1: leaving the cluster running in %s; tear it down with: bash %s down %s --purge",
				clusterKeepEnv, c.Dir, c.script, c.Dir)
			return
		}
	}
	start := time.Now()
	out, err := c.run(clusterDownTimeout, "down", c.Dir)
	if err != nil {
		c.t.Errorf("kubeenv: cluster.sh down %s: %v\n%s\n(the directory is left in place)", c.Dir, err, out)
		return
	}
	c.t.Logf("kubeenv: cluster down in %v", time.Since(start).Round(100*time.Millisecond))
	if err := os.RemoveAll(c.Dir); err != nil {
		c.t.Errorf("kubeenv: remove %s: %v", c.Dir, err)
	}
}

// logTails logs the end of every component's log.
func (c *Cluster) logTails() {
	logs, _ := filepath.Glob(filepath.Join(c.Dir, "logs", "*.log"))
	sort.Strings(logs)
	for _, path := range logs {
		if tail, err := lastLines(path, clusterLogTail); err == nil && tail != "" {
			c.t.Logf("kubeenv: last %d lines of %s:\n%s", clusterLogTail, path, tail)
		}
	}
}

// Kubectl runs kubectl with the administrator's kubeconfig and returns its
// standard output; the error carries standard error.
func (c *Cluster) Kubectl(args ...string) (string, error) {
	return c.KubectlInput("", args...)
}

// KubectlInput is Kubectl with stdin (e.g. `apply -f -`).
func (c *Cluster) KubectlInput(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), clusterKubectlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.KubectlBin, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

// MustKubectl is Kubectl that fails the test on error (test goroutine only).
func (c *Cluster) MustKubectl(args ...string) string {
	c.t.Helper()
	out, err := c.Kubectl(args...)
	if err != nil {
		c.t.Fatalf("kubeenv: %v", err)
	}
	return out
}

// Apply applies a manifest (kubectl apply -f -), failing the test on error.
func (c *Cluster) Apply(manifest string) {
	c.t.Helper()
	if out, err := c.KubectlInput(manifest, "apply", "-f", "-"); err != nil {
		c.t.Fatalf("kubeenv: %v\n%s", err, out)
	}
}

// verb runs a cluster.sh verb and fails the test on error.
func (c *Cluster) verb(args ...string) {
	c.t.Helper()
	if out, err := c.run(clusterVerbTimeout, args...); err != nil {
		c.t.Fatalf("kubeenv: cluster.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// LoadImage imports an image archive (OCI or docker format) into every
// node's containerd; pods use it with imagePullPolicy: Never. Names
// without a registry are also tagged docker.io/library/<name>.
func (c *Cluster) LoadImage(path string) { c.t.Helper(); c.verb("load-image", c.Dir, path) }

// StopKubelet stops node's kubelet (SIGTERM); its pods keep running. The
// node turns Ready=Unknown after the node monitor grace period (~40-50 s).
func (c *Cluster) StopKubelet(node string) { c.t.Helper(); c.verb("kubelet-stop", c.Dir, node) }

// StartKubelet starts node's kubelet again.
func (c *Cluster) StartKubelet(node string) { c.t.Helper(); c.verb("kubelet-start", c.Dir, node) }

// StopRuntime stops node's containerd (its containers keep running).
func (c *Cluster) StopRuntime(node string) { c.t.Helper(); c.verb("runtime-stop", c.Dir, node) }

// StartRuntime starts node's containerd again and waits until it answers.
func (c *Cluster) StartRuntime(node string) { c.t.Helper(); c.verb("runtime-start", c.Dir, node) }

// Freeze freezes everything on node with the cgroup freezer: its pods,
// kubelet, containerd and kube-proxy. Connections to it hang.
func (c *Cluster) Freeze(node string) { c.t.Helper(); c.verb("node-freeze", c.Dir, node) }

// Thaw resumes a frozen node.
func (c *Cluster) Thaw(node string) { c.t.Helper(); c.verb("node-thaw", c.Dir, node) }

// Partition cuts node's network link: it and its pods reach nothing (API
// server, DNS, other nodes, the test process) and nothing reaches them.
func (c *Cluster) Partition(node string) { c.t.Helper(); c.verb("node-partition", c.Dir, node) }

// Heal restores a partitioned node's link.
func (c *Cluster) Heal(node string) { c.t.Helper(); c.verb("node-heal", c.Dir, node) }

// StopAPIServer stops the cluster's API server: unreachable for nodes,
// pods and the test alike.
func (c *Cluster) StopAPIServer() { c.t.Helper(); c.verb("apiserver-stop", c.Dir) }

// StartAPIServer starts it again on the same address and waits until it
// is ready.
func (c *Cluster) StartAPIServer() { c.t.Helper(); c.verb("apiserver-start", c.Dir) }

// NodeReady returns node's Ready condition status: "True", "False" or
// "Unknown".
func (c *Cluster) NodeReady(node string) (string, error) {
	out, err := c.Kubectl("get", "node", node, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
	return strings.TrimSpace(out), err
}

// WaitNodeReady waits until node's Ready condition is want ("True",
// "False", "Unknown"; "!True" means anything but True) and returns how
// long that took.
func (c *Cluster) WaitNodeReady(node, want string, timeout time.Duration) time.Duration {
	c.t.Helper()
	start := time.Now()
	var got string
	var err error
	for time.Since(start) < timeout {
		got, err = c.NodeReady(node)
		if err == nil && (got == want || (want == "!True" && got != "True" && got != "")) {
			return time.Since(start)
		}
		time.Sleep(500 * time.Millisecond)
	}
	c.t.Fatalf("kubeenv: node %s Ready=%q after %v, want %q (last error %v)", node, got, timeout, want, err)
	return 0
}

// ImageFile is one file of an image built by WriteImage.
type ImageFile struct {
	Data []byte
	Mode int64 // e.g. 0o755
}

// WriteImage writes a single-layer OCI image archive at path, named ref
// (e.g. "docker.io/library/kubesmoke:dev"), whose layer holds files (paths
// relative to /, parent directories created) and the empty directories
// dirs, with entrypoint as its entry point. The archive imports with
// `ctr images import` (LoadImage).
func WriteImage(path, ref string, files map[string]ImageFile, dirs []string, entrypoint []string) error {
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	seen := map[string]bool{}
	addDir := func(d string) error {
		d = strings.Trim(filepath.Clean("/"+d), "/")
		var parts []string
		for _, p := range strings.Split(d, "/") {
			if p == "" {
				continue
			}
			parts = append(parts, p)
			name := strings.Join(parts, "/") + "/"
			if seen[name] {
				continue
			}
			seen[name] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
				return err
			}
		}
		return nil
	}
	for _, d := range dirs {
		if err := addDir(d); err != nil {
			return err
		}
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f := files[n]
		clean := strings.Trim(filepath.Clean("/"+n), "/")
		if err := addDir(filepath.Dir(clean)); err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: clean, Mode: f.Mode, Size: int64(len(f.Data)), ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	diffID := sha256.Sum256(layer.Bytes())
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	if _, err := zw.Write(layer.Bytes()); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	blobs := map[string][]byte{}
	blob := func(b []byte) (string, int) {
		sum := sha256.Sum256(b)
		d := hex.EncodeToString(sum[:])
		blobs[d] = b
		return "sha256:" + d, len(b)
	}
	layerDigest, layerSize := blob(gz.Bytes())
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config":       map[string]any{"Entrypoint": entrypoint, "WorkingDir": "/"},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(diffID[:])}},
	})
	configDigest, configSize := blob(config)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": configSize},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layerDigest, "size": layerSize}},
	})
	manifestDigest, manifestSize := blob(manifest)
	tag := ref
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		tag = ref[i+1:]
	}
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest, "size": manifestSize,
			"platform":    map[string]string{"architecture": "amd64", "os": "linux"},
			"annotations": map[string]string{"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag},
		}},
	})

	out, err := os.Create(path)
	if err != nil {
		return err
	}
	aw := tar.NewWriter(out)
	write := func(name string, b []byte) error {
		if err := aw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(0, 0)}); err != nil {
			return err
		}
		_, err := aw.Write(b)
		return err
	}
	err = write("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	if err == nil {
		err = write("index.json", index)
	}
	digests := make([]string, 0, len(blobs))
	for d := range blobs {
		digests = append(digests, d)
	}
	sort.Strings(digests)
	for _, d := range digests {
		if err == nil {
			err = write("blobs/sha256/"+d, blobs[d])
		}
	}
	if err == nil {
		err = aw.Close()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
