package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/quote"
)

// defaultClientTimeout bounds one request of the client; a switchover may
// wait for a promotion, so it is longer than a health check needs.
const defaultClientTimeout = 90 * time.Second

// maxResponseBytes bounds what the client reads of a response.
const maxResponseBytes = 8 << 20

// ClientOptions configure a Client.
type ClientOptions struct {
	// Token is sent as "Authorization: Bearer <token>" on requests that
	// change something (the server's api.auth_token).
	Token string
	// CAFile (PEM) verifies the server's certificate; "" uses the system's
	// roots.
	CAFile string
	// CertFile and KeyFile (PEM) are the client certificate, for servers
	// with a client CA; set both or neither.
	CertFile, KeyFile string
	// Timeout bounds each request; default 90 s. A context deadline, when
	// shorter, wins.
	Timeout time.Duration
}

// Client calls one member's API. It is safe for concurrent use.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// NewClient returns a client of the API at baseURL ("http://host:port" or
// "https://host:port"; a path prefix is kept). It reads the TLS files now,
// so a wrong path is reported before any request.
func NewClient(baseURL string, o ClientOptions) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("api: new client: %q is not an http(s)://host:port URL", baseURL)
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("api: new client: a client certificate needs both a certificate file and a key file")
	}
	if o.Timeout <= 0 {
		o.Timeout = defaultClientTimeout
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CAFile != "" {
		pem, err := os.ReadFile(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("api: new client: reading CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("api: new client: CA file %s holds no PEM certificate", o.CAFile)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("api: new client: loading client certificate: %w", err)
		}
		tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
	}
	return &Client{
		base:  u,
		token: o.Token,
		http: &http.Client{
			Transport: tr,
			Timeout:   o.Timeout,
			// A redirect would replay an operation somewhere the operator did
			// not name; report it instead.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Health calls a health check (path with its query, e.g.
// "/replica?lag=16MB") and returns its status: 200 or 503 with a nil error.
// Any other status is returned with an *Error carrying the server's
// message (a 400 for a malformed query, a 404 for an unknown path).
func (c *Client) Health(ctx context.Context, path string) (int, error) {
	code, err := c.do(ctx, http.MethodGet, path, nil, nil, http.StatusOK, http.StatusServiceUnavailable)
	if err != nil {
		return code, fmt.Errorf("health %s: %w", path, err)
	}
	return code, nil
}

// Primary asks the member whether it is the writable primary (GET
// /primary): ok reports a 200, and h is its view of itself, with
// WritableSeconds saying for how long it may still accept writes.
func (c *Client) Primary(ctx context.Context) (h MemberHealth, ok bool, err error) {
	code, err := c.do(ctx, http.MethodGet, "/primary", nil, &h, http.StatusOK, http.StatusServiceUnavailable)
	if err != nil {
		return MemberHealth{}, false, fmt.Errorf("primary check: %w", err)
	}
	return h, code == http.StatusOK, nil
}

// Member returns the member's own view of itself (the body of GET /health).
func (c *Client) Member(ctx context.Context) (MemberHealth, error) {
	var h MemberHealth
	_, err := c.do(ctx, http.MethodGet, "/health", nil, &h, http.StatusOK, http.StatusServiceUnavailable)
	if err != nil {
		return MemberHealth{}, fmt.Errorf("member status: %w", err)
	}
	return h, nil
}

// Cluster returns the cluster as the member last read it from the store.
func (c *Client) Cluster(ctx context.Context) (ClusterStatus, error) {
	var s ClusterStatus
	if _, err := c.do(ctx, http.MethodGet, "/cluster", nil, &s, http.StatusOK); err != nil {
		return ClusterStatus{}, fmt.Errorf("cluster: %w", err)
	}
	return s, nil
}

// History returns the cluster's timeline history.
func (c *Client) History(ctx context.Context) ([]cluster.HistoryEntry, error) {
	var h []cluster.HistoryEntry
	if _, err := c.do(ctx, http.MethodGet, "/history", nil, &h, http.StatusOK); err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	return h, nil
}

// Config returns the cluster's dynamic configuration.
func (c *Client) Config(ctx context.Context) (cluster.Config, error) {
	var d configDoc
	if _, err := c.do(ctx, http.MethodGet, "/config", nil, &d, http.StatusOK); err != nil {
		return cluster.Config{}, fmt.Errorf("config: %w", err)
	}
	cfg, err := d.config()
	if err != nil {
		return cluster.Config{}, fmt.Errorf("config: %w", err)
	}
	return cfg, nil
}

// PatchConfig changes the cluster's dynamic configuration and returns the
// result.
func (c *Client) PatchConfig(ctx context.Context, p ConfigPatch) (cluster.Config, error) {
	var d configDoc
	if _, err := c.do(ctx, http.MethodPatch, "/config", p, &d, http.StatusOK); err != nil {
		return cluster.Config{}, fmt.Errorf("patch config: %w", err)
	}
	cfg, err := d.config()
	if err != nil {
		return cluster.Config{}, fmt.Errorf("patch config: %w", err)
	}
	return cfg, nil
}

// Switchover asks for a switchover; Result.Scheduled is set when the server
// scheduled it (202) rather than did it.
func (c *Client) Switchover(ctx context.Context, r SwitchoverRequest) (Result, error) {
	return c.mutate(ctx, "switchover", http.MethodPost, "/switchover", r)
}

// CancelSwitchover cancels a scheduled switchover.
func (c *Client) CancelSwitchover(ctx context.Context) error {
	_, err := c.mutate(ctx, "cancel switchover", http.MethodDelete, "/switchover", nil)
	return err
}

// Failover promotes r.Candidate.
func (c *Client) Failover(ctx context.Context, r FailoverRequest) (Result, error) {
	return c.mutate(ctx, "failover", http.MethodPost, "/failover", r)
}

// Failsafe asks the member to promise not to take the leader key for a
// TTL while leader, which cannot reach the consensus store, keeps serving.
// An error means no promise was given.
//
// The request is marked idempotent (a repeated promise only extends it), so
// when it meets a kept-alive connection the member had already closed, the
// HTTP client sends it again on a new one instead of failing the round.
func (c *Client) Failsafe(ctx context.Context, leader string) error {
	hdr := http.Header{"Idempotency-Key": {"failsafe"}}
	if _, err := c.doWith(ctx, hdr, http.MethodPost, "/failsafe", FailsafeRequest{Leader: leader}, nil, http.StatusOK, http.StatusAccepted); err != nil {
		return fmt.Errorf("failsafe: %w", err)
	}
	return nil
}

// Restart restarts the member's PostgreSQL, now or as scheduled.
func (c *Client) Restart(ctx context.Context, r RestartRequest) (Result, error) {
	return c.mutate(ctx, "restart", http.MethodPost, "/restart", r)
}

// Reinitialize re-clones the member from the primary.
func (c *Client) Reinitialize(ctx context.Context) (Result, error) {
	return c.mutate(ctx, "reinitialize", http.MethodPost, "/reinitialize", struct{}{})
}

// Pause turns maintenance mode on for the cluster.
func (c *Client) Pause(ctx context.Context) (Result, error) {
	return c.mutate(ctx, "pause", http.MethodPost, "/pause", struct{}{})
}

// Resume turns maintenance mode off.
func (c *Client) Resume(ctx context.Context) (Result, error) {
	return c.mutate(ctx, "resume", http.MethodPost, "/resume", struct{}{})
}

func (c *Client) mutate(ctx context.Context, op, method, path string, body any) (Result, error) {
	var res Result
	code, err := c.do(ctx, method, path, body, &res, http.StatusOK, http.StatusAccepted)
	if err != nil {
		return Result{}, fmt.Errorf("%s: %w", op, err)
	}
	res.Scheduled = res.Scheduled || code == http.StatusAccepted
	return res, nil
}

// do sends one request and decodes a response whose status is one of ok
// into out. Another status is an *Error with the server's message.
func (c *Client) do(ctx context.Context, method, path string, body, out any, ok ...int) (int, error) {
	return c.doWith(ctx, nil, method, path, body, out, ok...)
}

// doWith is do with extra request headers.
func (c *Client) doWith(ctx context.Context, hdr http.Header, method, path string, body, out any, ok ...int) (int, error) {
	ref, err := url.Parse(path)
	if err != nil || ref.Scheme != "" || ref.Host != "" || !strings.HasPrefix(ref.Path, "/") {
		return 0, fmt.Errorf("%s is not a path such as /replica?lag=16MB", quote.Value(path))
	}
	u := *c.base
	u.Path = strings.TrimRight(c.base.Path, "/") + ref.Path
	u.RawPath = ""
	u.RawQuery = ref.RawQuery

	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, fmt.Errorf("encoding the request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return 0, fmt.Errorf("building the request: %w", err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" && !safeMethod(method) {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("%s %s: reading the response: %w", method, u.Redacted(), err)
	}
	for _, code := range ok {
		if resp.StatusCode != code {
			continue
		}
		if out != nil && len(bytes.TrimSpace(data)) > 0 {
			if err := json.Unmarshal(data, out); err != nil {
				return resp.StatusCode, fmt.Errorf("%s %s: decoding the response: %w", method, u.Redacted(), err)
			}
		}
		return resp.StatusCode, nil
	}
	var eb errorBody
	msg := strings.TrimSpace(string(data))
	if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
		msg = eb.Error
	}
	if len(msg) > 500 {
		msg = msg[:500] + "..."
	}
	return resp.StatusCode, &Error{Status: resp.StatusCode, Message: msg}
}

// config reads a configDoc back.
func (d configDoc) config() (cluster.Config, error) {
	c := cluster.Config{MaximumLagOnFailover: d.MaximumLagOnFailover, Paused: d.Paused,
		SynchronousMode: d.SynchronousMode, SynchronousNodeCount: d.SynchronousNodeCount, BackupSchedule: d.BackupSchedule}
	for _, f := range []struct {
		key, val string
		dst      *time.Duration
	}{{"ttl", d.TTL, &c.TTL}, {"loop_interval", d.LoopInterval, &c.LoopInterval}, {"primary_start_timeout", d.PrimaryStartTimeout, &c.PrimaryStartTimeout}} {
		v, err := time.ParseDuration(f.val)
		if err != nil {
			return cluster.Config{}, fmt.Errorf("%s: %q is not a duration", f.key, f.val)
		}
		*f.dst = v
	}
	return c, nil
}
