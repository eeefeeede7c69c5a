package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/holdfast/holdfast/internal/certfile"
	"github.com/holdfast/holdfast/internal/cluster"
)

// Server timeouts. Health checks answer from memory in microseconds; the
// limits are there so a slow or malicious client cannot hold connections
// (and file descriptors) of the agent forever.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10
	// shutdownGrace is how long Serve waits for requests in flight once its
	// context ends, before cancelling them.
	shutdownGrace = 5 * time.Second
	// defaultBackendTimeout bounds a call into the backend (a switchover
	// waits for the candidate's promotion: a few loops).
	defaultBackendTimeout = time.Minute
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// Backend is the member the API serves. Required.
	Backend Backend
	// Listen is host:port to bind ("127.0.0.1:0" picks a free port).
	Listen string
	// CertFile and KeyFile (PEM) turn on HTTPS, TLS 1.2 or later. The pair
	// is reloaded when the files change on disk (checked at most every 10 s
	// on new connections), so a renewed certificate does not require
	// restarting the agent — which would restart PostgreSQL.
	CertFile, KeyFile string
	// ClientCAFile (PEM), with HTTPS, makes every request that changes
	// something (any method but GET, HEAD and OPTIONS) present a client
	// certificate signed by one of these CAs. Clients may connect without
	// one, so health checks and probes need none; a certificate that is
	// presented must verify, or the handshake fails.
	ClientCAFile string
	// AuthToken, when set, is required as "Authorization: Bearer <token>" on
	// every request that changes something: 401 without it, 403 when wrong.
	AuthToken string
	// Logger receives one line per request that changes something (info)
	// and per other request (debug). nil discards.
	Logger *slog.Logger
	// BackendTimeout bounds each call into the backend other than State.
	// Default 1 minute.
	BackendTimeout time.Duration
	// Now is the clock health checks and metrics judge the snapshot by, and
	// that a scheduled operation's time must be after; nil means time.Now.
	// Tests set it.
	Now func() time.Time
	// Backups serves POST /backup and GET /backups; nil: not configured.
	Backups BackupService
	// Collectors are extra metrics served on /metrics (e.g. archiving).
	Collectors []prometheus.Collector
}

// Server is a member's HTTP API server.
type Server struct {
	o         ServerOptions
	log       *slog.Logger
	now       func() time.Time
	ln        net.Listener
	srv       *http.Server
	handler   http.Handler
	scheme    string
	tokenHash *[sha256.Size]byte // nil: no token required
	needCert  bool               // mutations need a verified client certificate
	certs     *certfile.Pair     // nil without TLS

	baseCtx    context.Context // parent of every request's context
	cancelBase context.CancelFunc
	served     atomic.Bool
}

// NewServer checks the options, loads the TLS files and binds the listener,
// so a bad certificate or a port in use is reported at startup, and Addr is
// known before Serve. Call Serve to answer requests, or Close to release
// the port without serving.
func NewServer(o ServerOptions) (*Server, error) {
	if o.Backend == nil {
		return nil, errors.New("api: new server: no backend")
	}
	if o.Listen == "" {
		return nil, errors.New("api: new server: no listen address")
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("api: new server: TLS needs both a certificate file and a key file")
	}
	if o.ClientCAFile != "" && o.CertFile == "" {
		return nil, errors.New("api: new server: a client CA needs TLS (a certificate and key file)")
	}
	if o.BackendTimeout <= 0 {
		o.BackendTimeout = defaultBackendTimeout
	}
	s := &Server{o: o, log: o.Logger, now: o.Now, scheme: "http", needCert: o.ClientCAFile != ""}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if o.AuthToken != "" {
		h := sha256.Sum256([]byte(o.AuthToken))
		s.tokenHash = &h
	}

	var tlsConfig *tls.Config
	if o.CertFile != "" {
		certs, err := certfile.Load(o.CertFile, o.KeyFile, "api", s.log)
		if err != nil {
			return nil, fmt.Errorf("api: new server: %w", err)
		}
		s.certs = certs
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate}
		if o.ClientCAFile != "" {
			pem, err := os.ReadFile(o.ClientCAFile)
			if err != nil {
				return nil, fmt.Errorf("api: new server: reading client CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("api: new server: client CA %s holds no PEM certificate", o.ClientCAFile)
			}
			tlsConfig.ClientCAs = pool
			tlsConfig.ClientAuth = tls.VerifyClientCertIfGiven
		}
		s.scheme = "https"
	}

	reg, err := newRegistry(o.Backend.State, s.now)
	if err != nil {
		return nil, fmt.Errorf("api: new server: metrics: %w", err)
	}
	for _, c := range o.Collectors {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("api: new server: metrics: %w", err)
		}
	}
	s.handler = s.routes(promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	s.baseCtx, s.cancelBase = context.WithCancel(context.Background())
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      o.BackendTimeout + 10*time.Second,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// Probes that hang up mid-handshake are routine: not worth a warning.
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext: func(net.Listener) context.Context { return s.baseCtx },
	}

	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		s.cancelBase()
		return nil, fmt.Errorf("api: new server: listen on %s: %w", o.Listen, err)
	}
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	s.ln = ln
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is the server's base URL on its listening address, e.g.
// "https://127.0.0.1:8008".
func (s *Server) URL() string { return s.scheme + "://" + s.ln.Addr().String() }

// Handler is the server's request handler (authentication included), for
// tests that drive it without a network.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve answers requests until ctx ends, then stops gracefully: it stops
// accepting connections, lets requests in flight finish for up to 5 s,
// then cancels their contexts and closes the connections. It returns nil
// after a graceful stop and an error if serving failed. It may be called
// once.
func (s *Server) Serve(ctx context.Context) error {
	if !s.served.CompareAndSwap(false, true) {
		return errors.New("api: serve: already called")
	}
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	s.log.Info("api serving", "url", s.URL())
	select {
	case err := <-errc:
		s.cancelBase()
		return fmt.Errorf("api: serving on %s: %w", s.ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	s.cancelBase()
	if err != nil {
		s.log.Warn("api: requests still running at shutdown; cancelled", "err", err)
		_ = s.srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("api: serving on %s: %w", s.ln.Addr(), err)
	}
	return nil
}

// Close stops the server at once: it releases the port (also when Serve was
// never called) and cancels requests in flight.
func (s *Server) Close() error {
	s.cancelBase()
	err := s.srv.Close()
	if lerr := s.ln.Close(); lerr != nil && !errors.Is(lerr, net.ErrClosed) && err == nil {
		err = lerr
	}
	if err != nil {
		return fmt.Errorf("api: close: %w", err)
	}
	return nil
}

// routes builds the handler: the mux behind authentication and logging.
func (s *Server) routes(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	for _, p := range HealthPaths() {
		pattern := p
		if p == "/" {
			pattern = "/{$}"
		}
		h := s.health(p)
		mux.Handle("GET "+pattern, h) // GET patterns also answer HEAD
		mux.Handle("OPTIONS "+pattern, h)
	}
	mux.HandleFunc("GET /cluster", s.getCluster)
	mux.HandleFunc("GET /history", s.getHistory)
	mux.HandleFunc("GET /config", s.getConfig)
	mux.HandleFunc("PATCH /config", s.patchConfig)
	mux.Handle("GET /metrics", metrics)

	mux.HandleFunc("POST /switchover", s.switchover)
	mux.HandleFunc("DELETE /switchover", s.cancelSwitchover)
	mux.HandleFunc("POST /failover", s.failover)
	mux.HandleFunc("POST /failsafe", s.failsafe)
	mux.HandleFunc("POST /restart", s.restart)
	mux.HandleFunc("POST /reinitialize", s.reinitialize)
	mux.HandleFunc("POST /pause", s.setPaused(true))
	mux.HandleFunc("POST /resume", s.setPaused(false))
	mux.HandleFunc("POST /backup", s.startBackup)
	mux.HandleFunc("GET /backups", s.listBackups)
	return s.middleware(s.notFound(mux))
}

// notFound answers requests no route takes with a JSON error like every
// other: 405 with Allow when the path exists for other methods, else 404.
func (s *Server) notFound(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		var allowed []string
		for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPost, http.MethodPatch, http.MethodDelete} {
			probe := r.Clone(r.Context())
			probe.Method = m
			if _, pattern := mux.Handler(probe); pattern != "" {
				allowed = append(allowed, m)
			}
		}
		if len(allowed) == 0 {
			s.writeError(w, r, Errorf(http.StatusNotFound, "%s: no such endpoint", r.URL.Path))
			return
		}
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		s.writeError(w, r, Errorf(http.StatusMethodNotAllowed, "%s %s: method not allowed (allowed: %s)", r.Method, r.URL.Path, strings.Join(allowed, ", ")))
	})
}

// safeMethod: the method changes nothing, so it needs no credentials.
func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// middleware authorizes requests that change something, before their body
// is read, and logs every request.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		mutating := !safeMethod(r.Method)
		if mutating {
			if err := s.authorize(r); err != nil {
				s.writeError(rec, r, err)
				s.logRequest(r, rec.status, start, true)
				return
			}
		}
		next.ServeHTTP(rec, r)
		s.logRequest(r, rec.status, start, mutating)
	})
}

func (s *Server) logRequest(r *http.Request, status int, start time.Time, mutating bool) {
	level := slog.LevelDebug
	if mutating {
		level = slog.LevelInfo
	}
	attrs := []any{"method", r.Method, "path", r.URL.Path, "status", status,
		"duration", time.Since(start).Round(time.Microsecond), "remote", r.RemoteAddr}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		attrs = append(attrs, "client_cert", r.TLS.PeerCertificates[0].Subject.CommonName)
	}
	s.log.Log(r.Context(), level, "api request", attrs...)
}

// authorize checks the credentials a request that changes something needs:
// a verified client certificate when a client CA is configured, and the
// bearer token when one is. It compares token digests in constant time, so
// the time to refuse a guess says nothing about how close it was.
func (s *Server) authorize(r *http.Request) error {
	if s.needCert && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		return Errorf(http.StatusForbidden, "%s %s needs a client certificate signed by the API's client CA (api.tls.client_ca_file)", r.Method, r.URL.Path)
	}
	if s.tokenHash == nil {
		return nil
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		return Errorf(http.StatusUnauthorized, "%s %s needs a token: send Authorization: Bearer <api.auth_token>", r.Method, r.URL.Path)
	}
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return Errorf(http.StatusUnauthorized, "Authorization must be Bearer <token>")
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(token)))
	if subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) != 1 {
		return Errorf(http.StatusForbidden, "wrong token")
	}
	return nil
}

// health answers one health-check path from the member's snapshot: 200 or
// 503, with the member as JSON for GET and no body for HEAD and OPTIONS
// (what HAProxy's checks send).
func (s *Server) health(path string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil {
			s.writeError(w, r, Errorf(http.StatusBadRequest, "malformed query string: %v", err))
			return
		}
		st, now := s.o.Backend.State(), s.now()
		ok, err := Check(path, q, st, now)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		code := http.StatusServiceUnavailable
		if ok {
			code = http.StatusOK
		}
		if r.Method != http.MethodGet {
			w.WriteHeader(code)
			return
		}
		writeJSON(w, code, Health(st, now))
	}
}

func (s *Server) getCluster(w http.ResponseWriter, r *http.Request) {
	st := s.o.Backend.State()
	if st.ViewAt.IsZero() {
		s.writeError(w, r, Errorf(http.StatusServiceUnavailable, "%s has not read the store yet; ask another member", st.Name))
		return
	}
	writeJSON(w, http.StatusOK, ClusterView(st))
}

func (s *Server) getConfig(w http.ResponseWriter, r *http.Request) {
	st := s.o.Backend.State()
	if st.View.Config == nil {
		s.writeError(w, r, Errorf(http.StatusServiceUnavailable, "the cluster's dynamic configuration is not in the store yet (bootstrap has not finished), or %s has not read the store yet", st.Name))
		return
	}
	writeJSON(w, http.StatusOK, renderConfig(*st.View.Config))
}

func (s *Server) getHistory(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.backendContext(r)
	defer cancel()
	h, err := s.o.Backend.History(ctx)
	if err != nil {
		s.writeError(w, r, fmt.Errorf("history: %w", err))
		return
	}
	if h == nil {
		h = []cluster.HistoryEntry{}
	}
	writeJSON(w, http.StatusOK, h)
}

func (s *Server) patchConfig(w http.ResponseWriter, r *http.Request) {
	var p ConfigPatch
	if err := readBody(w, r, &p); err != nil {
		s.writeError(w, r, err)
		return
	}
	if p.Empty() {
		s.writeError(w, r, badRequest("no settings to change (send a JSON object with some of: %s)", strings.Join(configKeys(), ", ")))
		return
	}
	ctx, cancel := s.backendContext(r)
	defer cancel()
	c, err := s.o.Backend.PatchConfig(ctx, p)
	if err != nil {
		s.writeError(w, r, fmt.Errorf("patch config: %w", err))
		return
	}
	s.log.Info("api: dynamic configuration changed", "change", p.String())
	writeJSON(w, http.StatusOK, renderConfig(c))
}

func (s *Server) switchover(w http.ResponseWriter, r *http.Request) {
	var b switchoverBody
	if err := readBody(w, r, &b); err != nil {
		s.writeError(w, r, err)
		return
	}
	req, err := b.request(s.now())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := s.backendContext(r)
	defer cancel()
	res, err := s.o.Backend.Switchover(ctx, req)
	s.writeResult(w, r, "switchover", res, err)
}

func (s *Server) cancelSwitchover(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.backendContext(r)
	defer cancel()
	err := s.o.Backend.CancelSwitchover(ctx)
	s.writeResult(w, r, "cancel switchover", Result{Message: "scheduled switchover cancelled"}, err)
}

func (s *Server) failsafe(w http.ResponseWriter, r *http.Request) {
	var b FailsafeRequest
	if err := readBody(w, r, &b); err != nil {
		s.writeError(w, r, err)
		return
	}
	if b.Leader == "" {
		s.writeError(w, r, badRequest("leader: required (the member asking to keep serving)"))
		return
	}
	ctx, cancel := s.backendContext(r)
	defer cancel()
	res, err := s.o.Backend.Failsafe(ctx, b)
	s.writeResult(w, r, "failsafe", res, err)
}

func (s *Server) failover(w http.ResponseWriter, r *http.Request) {
	var b failoverBody
	if err := readBody(w, r, &b); err != nil {
		s.writeError(w, r, err)
		return
	}
	req, err := b.request()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := s.backendContext(r)
	defer cancel()
	res, err := s.o.Backend.Failover(ctx, req)
	s.writeResult(w, r, "failover", res, err)
}

func (s *Server) restart(w http.ResponseWriter, r *http.Request) {
	var b restartBody
	if err := readBody(w, r, &b); err != nil {
		s.writeError(w, r, err)
		return
	}
	req, err := b.request(s.now())
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := s.backendContext(r)
	defer cancel()
	res, err := s.o.Backend.Restart(ctx, req)
	s.writeResult(w, r, "restart", res, err)
}

func (s *Server) reinitialize(w http.ResponseWriter, r *http.Request) {
	if err := readBody(w, r, &emptyBody{}); err != nil {
		s.writeError(w, r, err)
		return
	}
	ctx, cancel := s.backendContext(r)
	defer cancel()
	res, err := s.o.Backend.Reinitialize(ctx)
	s.writeResult(w, r, "reinitialize", res, err)
}

func (s *Server) setPaused(paused bool) http.HandlerFunc {
	op := "resume"
	if paused {
		op = "pause"
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if err := readBody(w, r, &emptyBody{}); err != nil {
			s.writeError(w, r, err)
			return
		}
		ctx, cancel := s.backendContext(r)
		defer cancel()
		res, err := s.o.Backend.SetPaused(ctx, paused)
		s.writeResult(w, r, op, res, err)
	}
}

// backendContext is the context of a call into the backend: the request's
// (cancelled when the client goes away or the server shuts down), bounded
// by BackendTimeout.
func (s *Server) backendContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.o.BackendTimeout)
}

// writeResult answers a mutation: 200 when done, 202 when scheduled, the
// error's status otherwise.
func (s *Server) writeResult(w http.ResponseWriter, r *http.Request, op string, res Result, err error) {
	if err != nil {
		s.writeError(w, r, fmt.Errorf("%s: %w", op, err))
		return
	}
	code := http.StatusOK
	if res.Scheduled {
		code = http.StatusAccepted
	}
	writeJSON(w, code, res)
}

// writeError answers err as {"error": message} with StatusOf(err); for HEAD
// and OPTIONS only the status. The message of an *Error is the backend's
// words for the client, as they are; other errors keep their wrapping,
// which names the operation.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	code := StatusOf(err)
	msg := err.Error()
	var e *Error
	if errors.As(err, &e) {
		msg = e.Message
	}
	if code >= 500 {
		s.log.Warn("api request failed", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	}
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="holdfast"`)
	}
	if r.Method == http.MethodHead || r.Method == http.MethodOptions {
		w.WriteHeader(code)
		return
	}
	writeJSON(w, code, errorBody{Error: msg})
}

// writeJSON answers v as JSON, one line, without HTML escaping (messages
// such as "Bearer <token>" stay readable).
func writeJSON(w http.ResponseWriter, code int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil { // only unsupported values (NaN): a bug, but answer it
		code = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":"encoding the response failed"}` + "\n")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// statusRecorder remembers the status a handler wrote, for the log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
