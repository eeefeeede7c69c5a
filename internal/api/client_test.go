package api

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// TestClient drives every Client method against a real Server.
func TestClient(t *testing.T) {
	f := newFake(primaryState())
	srv := startServer(t, f, ServerOptions{AuthToken: "tok"})
	c := newTestClient(t, srv.URL(), ClientOptions{Token: "tok"})
	ctx := context.Background()

	for path, want := range map[string]int{"/primary": 200, "/": 200, "/replica": 503, "/read-only?lag=0": 200, "/liveness": 200} {
		if code, err := c.Health(ctx, path); err != nil || code != want {
			t.Errorf("Health(%s) = %d, %v; want %d", path, code, err, want)
		}
	}
	var e *Error
	code, err := c.Health(ctx, "/replica?lag=abc")
	if code != 400 || !errors.As(err, &e) || e.Status != 400 || !strings.Contains(e.Message, `query parameter lag: "abc" is not a size`) {
		t.Errorf("Health with a bad lag = %d, %v", code, err)
	}
	if code, err := c.Health(ctx, "/nope"); code != 404 || !errors.As(err, &e) || e.Message != "/nope: no such endpoint" {
		t.Errorf("Health of an unknown path = %d, %v", code, err)
	}
	if _, err := c.Health(ctx, "http://elsewhere/primary"); err == nil {
		t.Errorf("Health took a URL for a path")
	}

	m, err := c.Member(ctx)
	if err != nil || m.Name != "pg-0" || m.Role != cluster.RolePrimary || m.State != "running" {
		t.Errorf("Member = %+v, %v", m, err)
	}
	cs, err := c.Cluster(ctx)
	if err != nil || cs.Leader != "pg-0" || len(cs.Members) != 4 || cs.Members[1].APIURL != "http://10.0.0.2:8008" {
		t.Errorf("Cluster = %+v, %v", cs, err)
	}
	h, err := c.History(ctx)
	if err != nil || len(h) != 1 || h[0].Timeline != 2 || !h[0].At.Equal(t0) {
		t.Errorf("History = %+v, %v", h, err)
	}
	cfg, err := c.Config(ctx)
	if err != nil || cfg != *testView().Config {
		t.Errorf("Config = %+v, %v; want %+v", cfg, err, *testView().Config)
	}
	f.called()

	// PatchConfig: what the client sends is exactly what the backend gets.
	ttl, lag, paused := 6*time.Second, int64(16*mib), true
	patch := ConfigPatch{TTL: &ttl, MaximumLagOnFailover: &lag, Paused: &paused}
	cfg, err = c.PatchConfig(ctx, patch)
	if err != nil || cfg.TTL != ttl || cfg.MaximumLagOnFailover != lag || !cfg.Paused || cfg.LoopInterval != time.Second {
		t.Errorf("PatchConfig = %+v, %v", cfg, err)
	}
	if calls, args := f.called(); len(calls) != 1 || !reflect.DeepEqual(args[0], patch) {
		t.Errorf("backend got %v %+v, want %+v", calls, args, patch)
	}

	at := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	f.set(func(f *fakeBackend) { f.result = Result{Scheduled: true, Message: "switchover to pg-1 at 12:00"} })
	res, err := c.Switchover(ctx, SwitchoverRequest{Leader: "pg-0", Candidate: "pg-1", ScheduledAt: &at})
	if err != nil || !res.Scheduled || res.Message != "switchover to pg-1 at 12:00" {
		t.Errorf("Switchover = %+v, %v", res, err)
	}
	_, args := f.called()
	if got := args[0].(SwitchoverRequest); got.Leader != "pg-0" || got.Candidate != "pg-1" || got.ScheduledAt == nil || !got.ScheduledAt.Equal(at) {
		t.Errorf("backend got %+v", got)
	}
	f.set(func(f *fakeBackend) { f.result = Result{Message: "done"} })

	for _, tc := range []struct {
		name string
		do   func() error
		call string
		arg  any
	}{
		{"CancelSwitchover", func() error { return c.CancelSwitchover(ctx) }, "CancelSwitchover", nil},
		{"Failover", func() error { _, err := c.Failover(ctx, FailoverRequest{Candidate: "pg-2"}); return err }, "Failover", FailoverRequest{Candidate: "pg-2"}},
		{"Restart", func() error { _, err := c.Restart(ctx, RestartRequest{Role: RestartReplica}); return err }, "Restart", RestartRequest{Role: RestartReplica}},
		{"Reinitialize", func() error { _, err := c.Reinitialize(ctx); return err }, "Reinitialize", nil},
		{"Failsafe", func() error { return c.Failsafe(ctx, "pg-0") }, "Failsafe", FailsafeRequest{Leader: "pg-0"}},
		{"Pause", func() error { _, err := c.Pause(ctx); return err }, "SetPaused", true},
		{"Resume", func() error { _, err := c.Resume(ctx); return err }, "SetPaused", false},
	} {
		if err := tc.do(); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if calls, args := f.called(); len(calls) != 1 || calls[0] != tc.call || !reflect.DeepEqual(args[0], tc.arg) {
			t.Errorf("%s: backend got %v %v, want %s %v", tc.name, calls, args, tc.call, tc.arg)
		}
	}

	// Refusals come back as *Error with the server's status and message,
	// named by the operation.
	f.set(func(f *fakeBackend) { f.err = Errorf(http.StatusConflict, "pg-9 is not a member") })
	_, err = c.Failover(ctx, FailoverRequest{Candidate: "pg-9"})
	if !errors.As(err, &e) || e.Status != 409 || e.Message != "pg-9 is not a member" || err.Error() != "failover: pg-9 is not a member (HTTP 409)" {
		t.Errorf("refused failover: %v", err)
	}
	f.set(func(f *fakeBackend) { f.err = nil })
	f.called()
	// Bad requests are refused by the server before the backend.
	if _, err := c.Failover(ctx, FailoverRequest{}); !errors.As(err, &e) || e.Status != 400 || e.Message != "candidate: required (the member to promote)" {
		t.Errorf("failover without candidate: %v", err)
	}
	if _, err := c.Restart(ctx, RestartRequest{Role: "leader"}); !errors.As(err, &e) || e.Status != 400 {
		t.Errorf("restart with a bad role: %v", err)
	}
	if calls, _ := f.called(); len(calls) != 0 {
		t.Errorf("backend called for bad requests: %v", calls)
	}

	// Credentials.
	wrong := newTestClient(t, srv.URL(), ClientOptions{Token: "nope"})
	if _, err := wrong.Pause(ctx); !errors.As(err, &e) || e.Status != 403 || e.Message != "wrong token" {
		t.Errorf("wrong token: %v", err)
	}
	none := newTestClient(t, srv.URL(), ClientOptions{})
	if _, err := none.Resume(ctx); !errors.As(err, &e) || e.Status != 401 {
		t.Errorf("no token: %v", err)
	}
	if _, err := none.Cluster(ctx); err != nil {
		t.Errorf("reading needs no token: %v", err)
	}
}

func TestClientTimeout(t *testing.T) {
	f := newFake(primaryState())
	f.block = make(chan struct{})
	defer close(f.block)
	srv := startServer(t, f, ServerOptions{})
	c := newTestClient(t, srv.URL(), ClientOptions{Timeout: 50 * time.Millisecond})
	start := time.Now()
	if _, err := c.Pause(context.Background()); err == nil || !strings.HasPrefix(err.Error(), "pause: ") {
		t.Errorf("blocked pause: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("timeout took %v", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := newTestClient(t, srv.URL(), ClientOptions{}).Pause(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("context deadline: %v", err)
	}
}

func TestClientTransport(t *testing.T) {
	var gotPath, gotAuth, gotMethod string
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath, gotAuth, gotMethod = r.URL.RequestURI(), r.Header.Get("Authorization"), r.Method
		switch r.URL.Path {
		case "/prefix/redirect":
			http.Redirect(w, r, "http://elsewhere.invalid/pause", http.StatusTemporaryRedirect)
		case "/prefix/plain":
			http.Error(w, "upstream proxy says no", http.StatusBadGateway)
		default:
			writeJSON(w, 200, Result{Message: "ok"})
		}
	}))
	defer ts.Close()
	c := newTestClient(t, ts.URL+"/prefix/", ClientOptions{Token: "tok"})
	ctx := context.Background()

	// A path prefix of the base URL is kept; the query is passed on.
	if _, err := c.Health(ctx, "/replica?lag=16MB&tag_zone=a"); err != nil || gotPath != "/prefix/replica?lag=16MB&tag_zone=a" {
		t.Errorf("health request went to %s: %v", gotPath, err)
	}
	// The token is sent only with changes.
	if gotAuth != "" {
		t.Errorf("token sent with a read: %q", gotAuth)
	}
	if _, err := c.Reinitialize(ctx); err != nil || gotAuth != "Bearer tok" || gotMethod != "POST" {
		t.Errorf("reinitialize: auth %q method %s: %v", gotAuth, gotMethod, err)
	}
	// Redirects are not followed: an operation goes only where it was sent.
	var e *Error
	if code, err := c.Health(ctx, "/redirect"); code != 307 || !errors.As(err, &e) {
		t.Errorf("redirect = %d, %v", code, err)
	}
	// A non-JSON error body is passed on as the message.
	if _, err := c.Health(ctx, "/plain"); !errors.As(err, &e) || e.Status != 502 || e.Message != "upstream proxy says no" {
		t.Errorf("plain error = %v", err)
	}
}

func TestNewClientErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		url  string
		o    ClientOptions
		want string
	}{
		{"10.0.0.1:8008", ClientOptions{}, "is not an http(s)://host:port URL"},
		{"ftp://h:1", ClientOptions{}, "is not an http(s)://host:port URL"},
		{"http://", ClientOptions{}, "is not an http(s)://host:port URL"},
		{"https://h:8008", ClientOptions{CertFile: "/c"}, "needs both a certificate file and a key file"},
		{"https://h:8008", ClientOptions{CAFile: filepath.Join(dir, "none")}, "reading CA"},
		{"https://h:8008", ClientOptions{CertFile: filepath.Join(dir, "c"), KeyFile: filepath.Join(dir, "k")}, "loading client certificate"},
	} {
		if _, err := NewClient(tc.url, tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewClient(%q, %+v) = %v, want %q", tc.url, tc.o, err, tc.want)
		}
	}
}

func TestConfigPatchJSON(t *testing.T) {
	d, n, b := 90*time.Second, int64(3<<30), false
	p := ConfigPatch{TTL: &d, LoopInterval: &d, MaximumLagOnFailover: &n, PrimaryStartTimeout: &d, Paused: &b}
	js, err := p.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"loop_interval":"1m30s","maximum_lag_on_failover":3221225472,"paused":false,"primary_start_timeout":"1m30s","ttl":"1m30s"}`
	if string(js) != want {
		t.Errorf("MarshalJSON = %s, want %s", js, want)
	}
	var back ConfigPatch
	if err := back.UnmarshalJSON(js); err != nil || !reflect.DeepEqual(back, p) {
		t.Errorf("round trip = %+v, %v", back, err)
	}
	if got := p.String(); got != "ttl=1m30s loop_interval=1m30s maximum_lag_on_failover=3221225472 primary_start_timeout=1m30s paused=false" {
		t.Errorf("String = %q", got)
	}
	if empty, _ := (ConfigPatch{}).MarshalJSON(); string(empty) != "{}" || !(ConfigPatch{}).Empty() || p.Empty() {
		t.Errorf("empty patch: %s", empty)
	}
	for d, want := range map[time.Duration]string{4 * time.Second: "4s", time.Minute: "1m", 2 * time.Hour: "2h", 500 * time.Millisecond: "500ms", time.Hour + 30*time.Second: "1h0m30s"} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
