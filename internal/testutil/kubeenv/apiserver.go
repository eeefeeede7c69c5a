//go:build linux

// Package kubeenv starts real Kubernetes control-plane processes for tests:
// APIServer runs an etcd and a kube-apiserver built by
// scripts/kube/build.sh, with client-certificate authentication and RBAC,
// so a test can talk to the API as an administrator or as any user.
//
// It uses only the standard library; tests talk to the API server over
// plain HTTPS or hand the kubeconfig files it writes to the code under test.
package kubeenv

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/testutil/testca"
)

const (
	// readyTimeout bounds the wait for kube-apiserver's /readyz after it
	// starts (about 3–5 s on two cores; generous for a loaded machine).
	readyTimeout = 60 * time.Second
	// etcdReadyTimeout bounds the wait for etcd's /health.
	etcdReadyTimeout = 20 * time.Second
	// pollInterval is how often readiness is polled.
	pollInterval = 100 * time.Millisecond
	// probeTimeout bounds one readiness request.
	probeTimeout = 2 * time.Second
	// stopTimeout is how long a process gets after SIGTERM before SIGKILL.
	stopTimeout = 10 * time.Second
	// printDirTimeout bounds `scripts/kube/build.sh --print-dir --no-build`.
	printDirTimeout = 30 * time.Second
	// certValidity is the lifetime of every certificate the env makes.
	certValidity = 7 * 24 * time.Hour
	// startAttempts is how often a start is tried with fresh ports: a port
	// that was free when picked can be taken before the process binds it.
	startAttempts = 3
	// logTailLines is how much of a process log a failed test prints.
	logTailLines = 50

	// modulePath identifies the repository root's go.mod.
	modulePath = "github.com/holdfast/holdfast"
	// adminUser is the administrator's user name (group system:masters).
	adminUser = "kubeenv-admin"
	// serviceCIDR is the Service IP range; the API server's own Service
	// (kubernetes.default) gets its first address.
	serviceCIDR = "10.0.0.0/24"
	// serviceIP is the first address of serviceCIDR.
	serviceIP = "10.0.0.1"

	envBinDir   = "HOLDFAST_KUBE_BIN"
	envRequired = "HOLDFAST_KUBE_REQUIRED"
)

// APIServerEnv is a running etcd and kube-apiserver owned by one test.
type APIServerEnv struct {
	// Kubeconfig is the path of an administrator's kubeconfig file
	// (group system:masters).
	Kubeconfig string
	// Host is the API server's URL, https://127.0.0.1:<port>.
	Host string
	// CAData is the PEM CA certificate that signed the API server's serving
	// certificate and every client certificate.
	CAData []byte
	// CertData and KeyData are the administrator's PEM client certificate
	// and key.
	CertData, KeyData []byte
	// Dir is the env's own directory: etcd data, certificates, logs,
	// kubeconfig files. It is removed when the test ends.
	Dir string
	// EtcdURL is the etcd client URL the API server stores into.
	EtcdURL string

	t       testing.TB
	bin     string
	ca      *testca.CA
	apiArgs []string
	apiLog  string
	etcdLog string

	mu        sync.Mutex
	apiserver *process // nil while stopped
	etcd      *process
	frozen    bool
	configs   int // kubeconfig files written, for unique names
}

// APIServer starts etcd and kube-apiserver for the test and stops them when
// it ends. It skips the test when the binaries are not built, or fails it
// when HOLDFAST_KUBE_REQUIRED=1. Binaries come from HOLDFAST_KUBE_BIN or
// from `scripts/kube/build.sh --print-dir --no-build` in the repository.
func APIServer(t testing.TB) *APIServerEnv {
	t.Helper()
	bin, err := binDir()
	if err != nil {
		msg := fmt.Sprintf("kubeenv: no Kubernetes binaries: %v\n"+
			"Build them once per machine with scripts/kube/build.sh (~15 min cold, seconds when cached), "+
			"or set %s to a directory holding kube-apiserver and etcd.", err, envBinDir)
		if os.Getenv(envRequired) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}

	e := &APIServerEnv{t: t, bin: bin, Dir: t.TempDir()}
	e.apiLog = filepath.Join(e.Dir, "kube-apiserver.log")
	e.etcdLog = filepath.Join(e.Dir, "etcd.log")
	t.Cleanup(e.cleanup)

	if err := e.writeCredentials(); err != nil {
		t.Fatalf("kubeenv: %v", err)
	}
	for attempt := 1; ; attempt++ {
		err := e.startAll()
		if err == nil {
			return e
		}
		e.stopAll()
		if attempt == startAttempts || !e.portTaken() {
			t.Fatalf("kubeenv: cannot start etcd and kube-apiserver: %v", err)
		}
		t.Logf("kubeenv: start attempt %d of %d lost a port race, trying other ports: %v", attempt, startAttempts, err)
	}
}

// portTaken reports whether the last start failed because a port picked as
// free was taken by someone else first.
func (e *APIServerEnv) portTaken() bool {
	for _, path := range []string{e.apiLog, e.etcdLog} {
		if tail, err := lastLines(path, logTailLines); err == nil && strings.Contains(tail, "address already in use") {
			return true
		}
	}
	return false
}

// ClientCert returns a PEM client certificate and key for user in groups,
// signed by the CA the API server trusts. RBAC decides what it may do.
func (e *APIServerEnv) ClientCert(user string, groups ...string) (certPEM, keyPEM []byte) {
	e.t.Helper()
	certPEM, keyPEM, err := e.ca.Issue(user, groups, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	if err != nil {
		e.t.Fatalf("kubeenv: client certificate for %q: %v", user, err)
	}
	return certPEM, keyPEM
}

// KubeconfigFor writes a kubeconfig file for user in groups and returns its
// path.
func (e *APIServerEnv) KubeconfigFor(user string, groups ...string) string {
	e.t.Helper()
	certPEM, keyPEM := e.ClientCert(user, groups...)
	e.mu.Lock()
	e.configs++
	path := filepath.Join(e.Dir, fmt.Sprintf("kubeconfig-%d", e.configs))
	e.mu.Unlock()
	if err := writeKubeconfig(path, e.Host, user, e.CAData, certPEM, keyPEM); err != nil {
		e.t.Fatalf("kubeenv: %v", err)
	}
	return path
}

// StopAPIServer stops kube-apiserver (etcd keeps running), so the API is
// unreachable until StartAPIServer.
func (e *APIServerEnv) StopAPIServer() {
	e.t.Helper()
	e.mu.Lock()
	p := e.apiserver
	e.apiserver, e.frozen = nil, false
	e.mu.Unlock()
	if p == nil {
		e.t.Fatal("kubeenv: StopAPIServer: the API server is not running")
	}
	if err := p.stop(); err != nil {
		e.t.Fatalf("kubeenv: stop kube-apiserver: %v", err)
	}
}

// StartAPIServer starts kube-apiserver again after StopAPIServer, on the same
// port and etcd, and waits until it is ready.
func (e *APIServerEnv) StartAPIServer() {
	e.t.Helper()
	e.mu.Lock()
	running := e.apiserver != nil
	e.mu.Unlock()
	if running {
		e.t.Fatal("kubeenv: StartAPIServer: the API server is already running")
	}
	if err := e.startAPIServer(); err != nil {
		e.t.Fatalf("kubeenv: restart kube-apiserver: %v", err)
	}
}

// Freeze stops the kube-apiserver process with SIGSTOP: connections are
// accepted by the kernel but nothing answers, until Thaw.
func (e *APIServerEnv) Freeze() { e.signalAPIServer(syscall.SIGSTOP, true) }

// Thaw resumes a frozen kube-apiserver with SIGCONT.
func (e *APIServerEnv) Thaw() { e.signalAPIServer(syscall.SIGCONT, false) }

func (e *APIServerEnv) signalAPIServer(sig syscall.Signal, frozen bool) {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.apiserver == nil {
		e.t.Fatalf("kubeenv: send %v: the API server is not running", sig)
	}
	if err := e.apiserver.signal(sig); err != nil {
		e.t.Fatalf("kubeenv: send %v to kube-apiserver: %v", sig, err)
	}
	if sig == syscall.SIGSTOP {
		// kill(2) returns before every thread has stopped: wait until the
		// kernel reports the process stopped, or a request sent right
		// after Freeze may still be answered.
		pid := e.apiserver.cmd.Process.Pid
		deadline := time.Now().Add(stopWaitTimeout)
		for !processStopped(pid) {
			if time.Now().After(deadline) {
				e.t.Fatalf("kubeenv: kube-apiserver (pid %d) not stopped %v after SIGSTOP", pid, stopWaitTimeout)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	e.frozen = frozen
}

// stopWaitTimeout bounds the wait for a SIGSTOPped process to stop.
const stopWaitTimeout = 5 * time.Second

// processStopped reports whether every thread of pid is stopped (state T).
func processStopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			return false
		}
		// The state follows the command name in parentheses.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 || i+2 >= len(b) || (b[i+2] != 'T' && b[i+2] != 't') {
			return false
		}
	}
	return true
}

// writeCredentials makes the CA, the API server's serving certificate, the
// service-account key pair and the administrator's kubeconfig.
func (e *APIServerEnv) writeCredentials() error {
	ca, err := testca.New("kubeenv-ca", certValidity)
	if err != nil {
		return err
	}
	e.ca = ca
	e.CAData = ca.CertPEM
	servingCert, servingKey, err := ca.Issue("kube-apiserver", nil,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local", "127.0.0.1", "::1", serviceIP},
		[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	e.CertData, e.KeyData, err = ca.Issue(adminUser, []string{"system:masters"}, nil,
		[]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	if err != nil {
		return fmt.Errorf("administrator certificate: %w", err)
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate the service-account key: %w", err)
	}
	saKeyDER, err := x509.MarshalPKCS8PrivateKey(saKey)
	if err != nil {
		return fmt.Errorf("encode the service-account key: %w", err)
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return fmt.Errorf("encode the service-account public key: %w", err)
	}
	for name, data := range map[string][]byte{
		"ca.crt":        ca.CertPEM,
		"apiserver.crt": servingCert,
		"apiserver.key": servingKey,
		"sa.key":        pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: saKeyDER}),
		"sa.pub":        pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPubDER}),
		"admin.crt":     e.CertData,
		"admin.key":     e.KeyData,
	} {
		path := filepath.Join(e.Dir, "pki", name)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	return nil
}

// startAll picks free ports and starts etcd, then kube-apiserver.
func (e *APIServerEnv) startAll() error {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	apiPort, etcdClient, etcdPeer := ports[0], ports[1], ports[2]
	e.Host = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	e.EtcdURL = "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)

	dataDir := filepath.Join(e.Dir, "etcd")
	if err := os.RemoveAll(dataDir); err != nil { // a failed attempt's data
		return fmt.Errorf("clear etcd data directory: %w", err)
	}
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		return fmt.Errorf("create etcd data directory: %w", err)
	}
	etcd, err := startProcess("etcd", filepath.Join(e.bin, "etcd"), []string{
		"--name=kubeenv",
		"--data-dir=" + dataDir,
		"--listen-client-urls=" + e.EtcdURL,
		"--advertise-client-urls=" + e.EtcdURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=kubeenv=" + peerURL,
		"--initial-cluster-state=new",
		"--unsafe-no-fsync", // test data: no fsync, far faster on a busy disk
		"--log-level=warn",
	}, e.etcdLog)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.etcd = etcd
	e.mu.Unlock()
	if err := waitReady(etcd, etcdReadyTimeout, func(ctx context.Context) error {
		return probe(ctx, http.DefaultClient, e.EtcdURL+"/health", `"health":"true"`)
	}); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}

	pki := filepath.Join(e.Dir, "pki")
	e.apiArgs = []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--etcd-servers=" + e.EtcdURL,
		"--cert-dir=" + pki,
		"--tls-cert-file=" + filepath.Join(pki, "apiserver.crt"),
		"--tls-private-key-file=" + filepath.Join(pki, "apiserver.key"),
		"--client-ca-file=" + filepath.Join(pki, "ca.crt"),
		"--service-account-key-file=" + filepath.Join(pki, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(pki, "sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=" + serviceCIDR,
		// The endpoint reconciler refuses a loopback advertise address; no
		// pod reaches this API server through the kubernetes Service anyway.
		"--endpoint-reconciler-type=none",
		"--authorization-mode=RBAC",
		"--allow-privileged=true",
		// No controller-manager makes the default ServiceAccount, so Pods
		// could not be created with ServiceAccount admission on.
		"--disable-admission-plugins=ServiceAccount",
		"--profiling=false",
	}
	if err := writeKubeconfig(filepath.Join(e.Dir, "admin.kubeconfig"), e.Host, adminUser,
		e.CAData, e.CertData, e.KeyData); err != nil {
		return err
	}
	e.Kubeconfig = filepath.Join(e.Dir, "admin.kubeconfig")
	return e.startAPIServer()
}

// startAPIServer starts kube-apiserver with e.apiArgs and waits for /readyz.
func (e *APIServerEnv) startAPIServer() error {
	p, err := startProcess("kube-apiserver", filepath.Join(e.bin, "kube-apiserver"), e.apiArgs, e.apiLog)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.apiserver, e.frozen = p, false
	e.mu.Unlock()
	client, err := e.adminClient()
	if err != nil {
		return err
	}
	defer client.CloseIdleConnections()
	if err := waitReady(p, readyTimeout, func(ctx context.Context) error {
		return probe(ctx, client, e.Host+"/readyz", "ok")
	}); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	return nil
}

// adminClient is an HTTPS client with the administrator's certificate.
func (e *APIServerEnv) adminClient() (*http.Client, error) {
	cert, err := tls.X509KeyPair(e.CertData, e.KeyData)
	if err != nil {
		return nil, fmt.Errorf("load the administrator certificate: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(e.CAData)
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}}, nil
}

// stopAll stops kube-apiserver and etcd, if running.
func (e *APIServerEnv) stopAll() {
	e.mu.Lock()
	api, etcd := e.apiserver, e.etcd
	e.apiserver, e.etcd, e.frozen = nil, nil, false
	e.mu.Unlock()
	for _, p := range []*process{api, etcd} {
		if p == nil {
			continue
		}
		if err := p.stop(); err != nil {
			e.t.Errorf("kubeenv: stop %s: %v", p.name, err)
		}
	}
}

// cleanup stops the processes and, when the test failed, prints the end of
// their logs. The directory itself is t.TempDir's to remove.
func (e *APIServerEnv) cleanup() {
	e.stopAll()
	if !e.t.Failed() {
		return
	}
	for _, path := range []string{e.apiLog, e.etcdLog} {
		if tail, err := lastLines(path, logTailLines); err == nil && tail != "" {
			e.t.Logf("kubeenv: last %d lines of %s:\n%s", logTailLines, filepath.Base(path), tail)
		}
	}
}

// process is one child process (etcd or kube-apiserver).
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // its Wait error, set before done is closed
}

// startProcess starts bin with args, appending its output to logPath. The
// child gets SIGKILL if the test binary dies (Pdeathsig).
func startProcess(name, bin string, args []string, logPath string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s log: %w", name, err)
	}
	fmt.Fprintf(logFile, "kubeenv %s: %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}

	// Pdeathsig fires when the OS thread that started the child exits, so
	// start and wait on a thread locked for the purpose.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer logFile.Close()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the process (by its PID only).
func (p *process) signal(sig syscall.Signal) error {
	if p.exited() {
		return fmt.Errorf("%s has exited: %v", p.name, p.err)
	}
	return p.cmd.Process.Signal(sig)
}

// stop ends the process: SIGCONT (in case it is frozen) and SIGTERM, then
// SIGKILL after stopTimeout. It waits until the process has exited.
func (p *process) stop() error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !p.exited() {
		return fmt.Errorf("SIGTERM pid %d: %w", p.cmd.Process.Pid, err)
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	}
	if err := p.cmd.Process.Kill(); err != nil && !p.exited() {
		return fmt.Errorf("SIGKILL pid %d: %w", p.cmd.Process.Pid, err)
	}
	<-p.done
	return nil
}

// waitReady polls check until it succeeds, the process exits or timeout
// passes.
func waitReady(p *process, timeout time.Duration, check func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		last = check(ctx)
		cancel()
		if last == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("exited before it was ready (%v); last probe: %w", p.err, last)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %w", timeout, last)
		}
		select {
		case <-p.done:
		case <-time.After(pollInterval):
		}
	}
}

// probe GETs url and wants status 200 with want in the body.
func probe(ctx context.Context, client *http.Client, url, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("probe %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("probe %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("probe %s: read body: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(want)) {
		return fmt.Errorf("probe %s: %s: %.200s", url, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

// freePorts returns n distinct loopback TCP ports that were free a moment
// ago (all listened on at once, so they differ).
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// writeKubeconfig writes a kubeconfig (JSON, which is YAML too) with the
// certificates inline.
func writeKubeconfig(path, host, user string, caPEM, certPEM, keyPEM []byte) error {
	type named struct {
		Name    string `json:"name"`
		Cluster any    `json:"cluster,omitempty"`
		User    any    `json:"user,omitempty"`
		Context any    `json:"context,omitempty"`
	}
	cfg := map[string]any{
		"apiVersion": "v1",
		"kind":       "Config",
		"clusters": []named{{Name: "kubeenv", Cluster: map[string]any{
			"server": host, "certificate-authority-data": caPEM,
		}}},
		"users": []named{{Name: user, User: map[string]any{
			"client-certificate-data": certPEM, "client-key-data": keyPEM,
		}}},
		"contexts":        []named{{Name: "kubeenv", Context: map[string]string{"cluster": "kubeenv", "user": user}}},
		"current-context": "kubeenv",
	}
	data, err := json.MarshalIndent(cfg, "", "  ") // []byte fields become base64, as kubeconfig wants
	if err != nil {
		return fmt.Errorf("encode kubeconfig for %q: %w", user, err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// binDir finds the directory with kube-apiserver and etcd: HOLDFAST_KUBE_BIN,
// or what scripts/kube/build.sh has built and cached.
func binDir() (string, error) {
	dir := os.Getenv(envBinDir)
	if dir == "" {
		root, err := repoRoot()
		if err != nil {
			return "", err
		}
		script := filepath.Join(root, "scripts", "kube", "build.sh")
		ctx, cancel := context.WithTimeout(context.Background(), printDirTimeout)
		defer cancel()
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, "bash", script, "--print-dir", "--no-build")
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("%s --print-dir --no-build: %w: %s", script, err, bytes.TrimSpace(stderr.Bytes()))
		}
		dir = strings.TrimSpace(string(out))
	}
	for _, name := range []string{"kube-apiserver", "etcd"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("no executable %s in %s", name, dir)
		}
	}
	return dir, nil
}

// repoRoot walks up from the working directory to the go.mod of
// github.com/holdfast/holdfast.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find the repository root: %w", err)
	}
	for {
		if isRepoRoot(dir) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find the repository root: no go.mod of " + modulePath + " above the working directory")
		}
		dir = parent
	}
}

func isRepoRoot(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) == 2 && fields[0] == "module" {
			return strings.Trim(fields[1], `"`) == modulePath
		}
	}
	return false
}

// lastLines returns the last n lines of the file at path.
func lastLines(path string, n int) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n"), nil
}
