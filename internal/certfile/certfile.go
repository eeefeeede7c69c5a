// Package certfile serves a TLS certificate from its PEM files and picks up
// a renewal without a restart. The agents' REST API and the proxy's
// session mode both use it: a certificate renewed on disk (cert-manager,
// a rotated Kubernetes Secret) is served on the next handshakes, and a
// half-replaced pair never takes the listener down.
package certfile

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"
)

// CheckInterval is how often, at most, a handshake makes a Pair look at
// its files again.
const CheckInterval = 10 * time.Second

// Pair serves the certificate in a certificate (chain) file and its key
// file. On a handshake at least its check interval after its last look, it
// compares the files' modification times and sizes with those of the pair
// it serves and loads them again if they changed. A pair that does not
// load (the certificate renewed, its key not yet) leaves the previous one
// in service and is tried again at the next look. Safe for concurrent use.
type Pair struct {
	certFile, keyFile string
	what              string // names the listener in log lines
	log               *slog.Logger

	mu       sync.Mutex
	interval time.Duration
	cert     *tls.Certificate
	stamp    string    // the files' versions the served pair was loaded from
	checked  time.Time // the last look
}

// Load loads the pair now (an error names both files) and returns it,
// checking for renewals every CheckInterval. what names the listener in
// the log lines of a reload ("api", "proxy clients").
func Load(certFile, keyFile, what string, log *slog.Logger) (*Pair, error) {
	p := &Pair{certFile: certFile, keyFile: keyFile, what: what, log: log, interval: CheckInterval}
	p.stamp = p.fileStamp()
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load the TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	p.cert, p.checked = &cert, time.Now()
	return p, nil
}

// SetCheckInterval changes how often, at most, the files are looked at (0:
// on every handshake — for tests).
func (p *Pair) SetCheckInterval(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.interval = d
}

// fileStamp identifies the files' current versions; "" when one cannot be
// read.
func (p *Pair) fileStamp() string {
	var parts []string
	for _, f := range []string{p.certFile, p.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return ""
		}
		parts = append(parts, fmt.Sprintf("%d:%d", fi.ModTime().UnixNano(), fi.Size()))
	}
	return strings.Join(parts, "/")
}

// GetCertificate is tls.Config.GetCertificate.
func (p *Pair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if now.Sub(p.checked) < p.interval {
		return p.cert, nil
	}
	p.checked = now
	st := p.fileStamp()
	if st == "" || st == p.stamp {
		return p.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(p.certFile, p.keyFile)
	if err != nil {
		p.log.Warn("reloading the TLS certificate failed; keeping the previous one", "listener", p.what, "cert_file", p.certFile, "err", err)
		return p.cert, nil
	}
	p.cert, p.stamp = &cert, st
	p.log.Info("TLS certificate reloaded", "listener", p.what, "cert_file", p.certFile)
	return p.cert, nil
}
