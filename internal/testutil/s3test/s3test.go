// Package s3test runs the local S3-compatible server the backup tests use
// (versitygw's POSIX backend, built by scripts/s3/build.sh and cached per
// machine), speaking TLS with a certificate of the test's own CA. The e2e
// tests reach it on loopback; the Kubernetes tests from pods, on the
// host's address on the cluster's link.
package s3test

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/testutil"
)

// Bounds of the server's start and stop.
const (
	// StartTimeout bounds the wait for the server to answer TLS.
	StartTimeout = 30 * time.Second
	// StopTimeout bounds its exit after SIGTERM, before SIGKILL.
	StopTimeout = 10 * time.Second
)

// Binary finds the server (HOLDFAST_S3_SERVER, or the one
// scripts/s3/build.sh cached), or skips the test saying how to build it —
// fails it with HOLDFAST_S3_REQUIRED=1 (the README's test command sets it).
func Binary(t testing.TB) string {
	t.Helper()
	skip := func(why string) {
		t.Helper()
		if os.Getenv("HOLDFAST_S3_REQUIRED") == "1" {
			t.Fatalf("%s (HOLDFAST_S3_REQUIRED=1)", why)
		}
		t.Skip(why)
	}
	if p := os.Getenv("HOLDFAST_S3_SERVER"); p != "" {
		if _, err := os.Stat(p); err != nil {
			skip("HOLDFAST_S3_SERVER: " + err.Error())
		}
		return p
	}
	script := filepath.Join(testutil.RepoRoot(t), "scripts", "s3", "build.sh")
	out, err := exec.Command("bash", script, "--no-install").Output()
	if err != nil {
		skip("the S3 server is not built (run: bash scripts/s3/build.sh, about 3 minutes once; or set HOLDFAST_S3_SERVER)")
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// Options are one server's.
type Options struct {
	// Bin is the server (Binary).
	Bin string
	// Host is the address it listens on (a free port is picked).
	Host string
	// ServerName is a name its certificate holds, to check it answers.
	ServerName string
	// CertFile and KeyFile are its TLS certificate and key; CAPEM the CA
	// that signed it.
	CertFile, KeyFile string
	CAPEM             []byte
	// Root is the backend directory: Root/<bucket>/<object key>.
	Root string
	// LogFile receives its output.
	LogFile string
	// AccessKey and SecretKey are the root credentials.
	AccessKey, SecretKey string
}

// Start starts the server and waits until it answers TLS; it stops when
// the test ends. It returns the port.
func Start(t testing.TB, o Options) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(o.Host, "0"))
	if err != nil {
		t.Fatalf("find a free port on %s: %v", o.Host, err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	addr := net.JoinHostPort(o.Host, strconv.Itoa(port))
	logf, err := os.Create(o.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(o.Bin, "--port", addr, "--cert", o.CertFile, "--key", o.KeyFile,
		"--region", "us-east-1", "--quiet", "posix", o.Root)
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+o.AccessKey, "ROOT_SECRET_KEY="+o.SecretKey)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start the S3 server: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(StopTimeout):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(o.CAPEM)
	deadline := time.Now().Add(StartTimeout)
	for {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr,
			&tls.Config{RootCAs: pool, ServerName: o.ServerName})
		if err == nil {
			conn.Close()
			return port
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(o.LogFile)
			t.Fatalf("the S3 server exited:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the S3 server does not answer TLS on %s within %s: %v", addr, StartTimeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
