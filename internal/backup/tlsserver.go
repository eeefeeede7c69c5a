package backup

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Timeouts of the TLS server's supervision.
const (
	// tlsServerRestart is how long after the TLS server exited the agent
	// starts it again.
	tlsServerRestart = 5 * time.Second
	// tlsServerStopGrace is how long a stopped TLS server has, after
	// SIGTERM, before it is killed.
	tlsServerStopGrace = 10 * time.Second
)

// tlsServerOutputKept is how much of the TLS server's output (its
// warnings and errors) is kept for the log line when it exits.
const tlsServerOutputKept = 2000

// tailBuffer keeps the last max bytes written to it. Safe for concurrent
// use (the command's stdout and stderr share it).
type tailBuffer struct {
	max int
	mu  sync.Mutex
	b   []byte
	cut bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
		t.cut = true
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cut {
		return "..." + string(t.b)
	}
	return string(t.b)
}

// tlsServerConfName is the TLS server's pgbackrest.conf in the work
// directory.
const tlsServerConfName = "pgbackrest-server.conf"

// TLSOptions configure pgBackRest's TLS server on a member and how the
// member reaches the others' (mutual TLS with one CA).
type TLSOptions struct {
	// CertFile and KeyFile are this member's certificate (for the server
	// and as the client's) and key; CAFile the CA of every member's.
	CertFile, KeyFile, CAFile string
	// Port is where this member's server listens.
	Port int
	// ClientCN are the client common names the server accepts (empty:
	// the common name of CertFile, read by CheckTLS).
	ClientCN []string
}

// CheckTLS reads the TLS files — the certificate and its key must load as
// a pair, the CA file must hold at least one certificate — and returns o
// with ClientCN defaulted to the certificate's common name. An error names
// the file and how to fix it. It reads only: the member refuses a bad
// configuration before it writes anything.
func CheckTLS(o TLSOptions) (TLSOptions, error) {
	const op = "backup.tls"
	pair, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return o, fmt.Errorf("%s: load the certificate %s and key %s (both PEM, readable by the agent, the key matching the certificate): %w", op, o.CertFile, o.KeyFile, err)
	}
	caPEM, err := os.ReadFile(o.CAFile)
	if err != nil {
		return o, fmt.Errorf("%s: read the CA file %s: %w", op, o.CAFile, err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(caPEM) {
		return o, fmt.Errorf("%s: the CA file %s holds no PEM certificate", op, o.CAFile)
	}
	if len(o.ClientCN) == 0 {
		leaf := pair.Leaf
		if leaf == nil {
			if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
				return o, fmt.Errorf("%s: parse the certificate %s: %w", op, o.CertFile, err)
			}
		}
		cn := leaf.Subject.CommonName
		if cn == "" || strings.ContainsAny(cn, "=,\n\r\x00") {
			return o, fmt.Errorf("%s: the certificate %s has no common name pgBackRest can authorize (%q): set backup.tls.client_cn", op, o.CertFile, cn)
		}
		o.ClientCN = []string{cn}
	}
	return o, nil
}

// serverConfFile is the TLS server's pgbackrest.conf.
func (m *Member) serverConfFile() string { return filepath.Join(m.workDir, tlsServerConfName) }

// writeServerConf writes the TLS server's configuration (NewMember, with
// TLS set).
func (m *Member) writeServerConf() error {
	t := m.o.TLS
	conf, err := RenderServerConf(ServerSettings{WorkDir: m.workDir, Port: t.Port, CertFile: t.CertFile, KeyFile: t.KeyFile,
		CAFile: t.CAFile, ClientCN: t.ClientCN, Stanza: m.o.Stanza})
	if err != nil {
		return err
	}
	return m.writeOwned(m.serverConfFile(), conf, 0o600)
}

// clientTLS is how this member's pgBackRest reaches a server listening
// on port (nil when this member has no TLS configured).
func (m *Member) clientTLS(port int) *ClientTLS {
	if m.o.TLS == nil {
		return nil
	}
	return &ClientTLS{Port: port, CertFile: m.o.TLS.CertFile, KeyFile: m.o.TLS.KeyFile, CAFile: m.o.TLS.CAFile}
}

// runTLSServer runs `pgbackrest server` as the PostgreSQL account until ctx
// ends, starting it again tlsServerRestart after every exit: the primary's
// server is what a replica's backup reaches it through, on whichever
// member leads, so every member runs it all the time. Its remote commands
// reach the local PostgreSQL with the member's own libpq environment
// (PGHOST, the password file), as the member's own pgBackRest does.
func (m *Member) runTLSServer(ctx context.Context) {
	for {
		start := time.Now()
		err := m.serveTLS(ctx)
		if ctx.Err() != nil {
			return
		}
		m.log.Error("pgBackRest TLS server exited; replicas cannot take backups until it runs again", "err", err,
			"ran", time.Since(start).Round(time.Millisecond), "restart_in", tlsServerRestart)
		select {
		case <-ctx.Done():
			return
		case <-time.After(tlsServerRestart):
		}
	}
}

// serveTLS runs the TLS server once, until it exits or ctx ends.
func (m *Member) serveTLS(ctx context.Context) error {
	bin := m.tool.Binary
	if bin == "" {
		var err error
		if bin, err = FindBinary(); err != nil {
			return err
		}
	}
	cmd := exec.CommandContext(ctx, bin, "--config="+m.serverConfFile(), "server")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = tlsServerStopGrace
	cmd.Env = append(cmd.Environ(), m.tool.Env...)
	if cred := m.o.Account.Credential(); cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Dir = "/"
	}
	// The server runs for the agent's lifetime: only the end of its
	// output is kept, for the error when it exits.
	errb := &tailBuffer{max: tlsServerOutputKept}
	cmd.Stdout, cmd.Stderr = errb, errb
	m.log.Info("pgBackRest TLS server starting", "port", m.o.TLS.Port, "clients", strings.Join(m.o.TLS.ClientCN, ","))
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start pgbackrest server: %w", err)
	}
	m.mu.Lock()
	m.tlsServer = cmd.Process
	m.mu.Unlock()
	err := cmd.Wait()
	m.mu.Lock()
	m.tlsServer = nil
	m.mu.Unlock()
	msg := strings.TrimSpace(errb.String())
	if err == nil {
		return fmt.Errorf("pgbackrest server stopped: %s", msg)
	}
	return fmt.Errorf("pgbackrest server: %w: %s", err, msg)
}
