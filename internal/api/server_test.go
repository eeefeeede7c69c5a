package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/quote"
)

// fakeBackend records the calls the API makes and answers what the test
// set. State never takes the lock a mutation holds, like the agent's.
type fakeBackend struct {
	state func() MemberState

	mu      sync.Mutex
	calls   []string
	args    []any
	result  Result
	err     error
	config  cluster.Config
	history []cluster.HistoryEntry
	// block, when set, makes mutations wait for it (or their context).
	block chan struct{}
}

func newFake(state MemberState) *fakeBackend {
	return &fakeBackend{
		state:  func() MemberState { return state },
		result: Result{Message: "done"},
		config: *testView().Config,
		history: []cluster.HistoryEntry{
			{Timeline: 2, SwitchLSN: 0x3000000, Leader: "pg-0", Reason: "failover", At: t0},
		},
	}
}

func (f *fakeBackend) State() MemberState { return f.state() }

func (f *fakeBackend) record(ctx context.Context, name string, arg any) error {
	f.mu.Lock()
	f.calls = append(f.calls, name)
	f.args = append(f.args, arg)
	block, err := f.block, f.err
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

func (f *fakeBackend) Switchover(ctx context.Context, r SwitchoverRequest) (Result, error) {
	return f.res(f.record(ctx, "Switchover", r))
}
func (f *fakeBackend) CancelSwitchover(ctx context.Context) error {
	return f.record(ctx, "CancelSwitchover", nil)
}
func (f *fakeBackend) Failover(ctx context.Context, r FailoverRequest) (Result, error) {
	return f.res(f.record(ctx, "Failover", r))
}
func (f *fakeBackend) Restart(ctx context.Context, r RestartRequest) (Result, error) {
	return f.res(f.record(ctx, "Restart", r))
}
func (f *fakeBackend) Failsafe(ctx context.Context, r FailsafeRequest) (Result, error) {
	return f.res(f.record(ctx, "Failsafe", r))
}
func (f *fakeBackend) Reinitialize(ctx context.Context) (Result, error) {
	return f.res(f.record(ctx, "Reinitialize", nil))
}
func (f *fakeBackend) SetPaused(ctx context.Context, paused bool) (Result, error) {
	return f.res(f.record(ctx, "SetPaused", paused))
}
func (f *fakeBackend) PatchConfig(ctx context.Context, p ConfigPatch) (cluster.Config, error) {
	if err := f.record(ctx, "PatchConfig", p); err != nil {
		return cluster.Config{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.config = p.Apply(f.config)
	return f.config, nil
}
func (f *fakeBackend) History(ctx context.Context) ([]cluster.HistoryEntry, error) {
	if err := f.record(ctx, "History", nil); err != nil {
		return nil, err
	}
	return f.history, nil
}

func (f *fakeBackend) res(err error) (Result, error) {
	if err != nil {
		return Result{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.result, nil
}

func (f *fakeBackend) set(fn func(*fakeBackend)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// called returns the calls so far and forgets them.
func (f *fakeBackend) called() ([]string, []any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, a := f.calls, f.args
	f.calls, f.args = nil, nil
	return c, a
}

// startServer serves b on a free loopback port until the test ends, judging
// snapshots at t0 + 100ms.
func startServer(t *testing.T, b Backend, o ServerOptions) *Server {
	t.Helper()
	o.Backend, o.Listen = b, "127.0.0.1:0"
	if o.Now == nil {
		o.Now = func() time.Time { return t0.Add(100 * time.Millisecond) }
	}
	s, err := NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

type response struct {
	code   int
	header http.Header
	body   string
}

// call sends one request with an optional body and headers ("Key: value").
func call(t *testing.T, c *http.Client, method, url, body string, headers ...string) response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, string(b)}
}

func TestHealthMethods(t *testing.T) {
	primary := startServer(t, newFake(primaryState()), ServerOptions{})
	replica := startServer(t, newFake(replicaState()), ServerOptions{})
	for _, tc := range []struct {
		srv  *Server
		path string
		code int
	}{
		{primary, "/", 200}, {primary, "/primary", 200}, {primary, "/read-write", 200}, {primary, "/leader", 200},
		{primary, "/replica", 503}, {primary, "/read-only", 200}, {primary, "/health", 200}, {primary, "/sync", 503},
		{primary, "/liveness", 200}, {primary, "/readiness", 200}, {primary, "/async", 503},
		{replica, "/", 503}, {replica, "/primary", 503}, {replica, "/leader", 503}, {replica, "/replica", 200},
		{replica, "/replica?lag=1MB", 200}, {replica, "/replica?lag=512kB", 503}, {replica, "/replica?tag_zone=a", 200},
		{replica, "/replica?tag_zone=b", 503}, {replica, "/read-only", 200}, {replica, "/synchronous", 503},
		{replica, "/asynchronous", 200}, {replica, "/health", 200}, {replica, "/readiness", 200}, {replica, "/liveness", 200},
		{replica, "/replica?lag=abc", 400}, {replica, "/replica?%zz", 400}, {replica, "/nope", 404},
	} {
		for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodOptions} {
			r := call(t, nil, method, tc.srv.URL()+tc.path, "")
			if r.code != tc.code {
				t.Errorf("%s %s on %s = %d, want %d (%s)", method, tc.path, tc.srv.o.Backend.State().Name, r.code, tc.code, r.body)
			}
			switch {
			case method != http.MethodGet && r.body != "":
				t.Errorf("%s %s has a body: %q", method, tc.path, r.body)
			case method == http.MethodGet && (tc.code == 200 || tc.code == 503):
				var h MemberHealth
				if err := json.Unmarshal([]byte(r.body), &h); err != nil || h.Name == "" {
					t.Errorf("GET %s: body is not a member description: %v %q", tc.path, err, r.body)
				}
			case method == http.MethodGet:
				var e errorBody
				if err := json.Unmarshal([]byte(r.body), &e); err != nil || e.Error == "" {
					t.Errorf("GET %s: %d without an error message: %q", tc.path, r.code, r.body)
				}
			}
		}
	}
	// The query error names the parameter.
	if r := call(t, nil, "GET", replica.URL()+"/replica?lag=abc", ""); !strings.Contains(r.body, `lag: \"abc\" is not a size`) {
		t.Errorf("bad lag: %s", r.body)
	}
	// Health checks take no other methods.
	if r := call(t, nil, "POST", replica.URL()+"/replica", ""); r.code != http.StatusMethodNotAllowed || r.header.Get("Allow") != "GET, HEAD, OPTIONS" {
		t.Errorf("POST /replica = %d (Allow %q), want 405", r.code, r.header.Get("Allow"))
	}
}

func TestHealthBody(t *testing.T) {
	p := startServer(t, newFake(primaryState()), ServerOptions{})
	var h map[string]any
	r := call(t, nil, "GET", p.URL()+"/primary", "")
	if err := json.Unmarshal([]byte(r.body), &h); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]any{
		"name": "pg-0", "cluster": "prod", "state": "running", "member_state": "running", "role": "primary",
		"timeline": 2.0, "lsn": "0/6400000", "leader": "pg-0", "lag": 0.0, "lease_valid_seconds": 2.9,
		"dcs_last_seen": float64(t0.Unix()),
	} {
		if h[key] != want {
			t.Errorf("primary %s = %#v, want %#v", key, h[key], want)
		}
	}
	if x, _ := h["xlog"].(map[string]any); x["location"] != float64(leaderLSN) || x["received_location"] != nil {
		t.Errorf("primary xlog = %v, want location %d only", h["xlog"], leaderLSN)
	}
	if _, ok := h["cluster_unlocked"]; ok {
		t.Errorf("cluster_unlocked reported with a leader")
	}

	s := replicaState()
	s.View.Leader = nil
	s.Paused = true
	s.PGReady = false
	s.PendingRestart = &RestartRequest{Role: RestartReplica}
	r2 := startServer(t, newFake(s), ServerOptions{})
	h = nil
	r = call(t, nil, "GET", r2.URL()+"/replica", "")
	if r.code != 503 {
		t.Errorf("replica not ready: %d", r.code)
	}
	if err := json.Unmarshal([]byte(r.body), &h); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]any{
		"state": "starting", "role": "replica", "replication_state": "streaming", "cluster_unlocked": true,
		"pause": true, "pending_restart": true, "lag": 0.0, // ahead of the optime, the only position without a leader
	} {
		if h[key] != want {
			t.Errorf("replica %s = %#v, want %#v", key, h[key], want)
		}
	}
	if x, _ := h["xlog"].(map[string]any); x["received_location"] != float64(leaderLSN-mib) {
		t.Errorf("replica xlog = %v", h["xlog"])
	}
	if tags, _ := h["tags"].(map[string]any); tags["zone"] != "a" {
		t.Errorf("replica tags = %v", h["tags"])
	}
	if sr, _ := h["scheduled_restart"].(map[string]any); sr["role"] != "replica" {
		t.Errorf("scheduled_restart = %v", h["scheduled_restart"])
	}
}

// TestLivenessIndependent: /liveness follows the loop alone — not
// PostgreSQL, not the store, not the lease, not a mutation in progress.
func TestLivenessIndependent(t *testing.T) {
	var mu sync.Mutex
	s := primaryState()
	f := newFake(s)
	f.state = func() MemberState { mu.Lock(); defer mu.Unlock(); return s }
	update := func(fn func(*MemberState)) { mu.Lock(); defer mu.Unlock(); fn(&s) }
	srv := startServer(t, f, ServerOptions{})
	live := func() int { return call(t, nil, "GET", srv.URL()+"/liveness", "").code }

	if c := live(); c != 200 {
		t.Fatalf("healthy: %d", c)
	}
	// A mutation hangs in the backend (say, on the store).
	block := make(chan struct{})
	f.set(func(f *fakeBackend) { f.block = block })
	go func() { _, _ = http.Post(srv.URL()+"/switchover", "application/json", strings.NewReader("{}")) }()
	for deadline := time.Now().Add(5 * time.Second); ; {
		if calls, _ := f.called(); len(calls) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the switchover never reached the backend")
		}
		time.Sleep(time.Millisecond)
	}
	for _, step := range []struct {
		what string
		fn   func(*MemberState)
	}{
		{"PostgreSQL crashed", func(s *MemberState) { s.PGRunning, s.PGReady, s.State = false, false, cluster.StateCrashed }},
		{"store unreachable for an hour", func(s *MemberState) { s.ViewAt = t0.Add(-time.Hour) }},
		{"store never read", func(s *MemberState) { s.View, s.ViewAt = cluster.View{}, time.Time{} }},
		{"lease lost", func(s *MemberState) { s.HoldsLeaderKey, s.LeaseValidFor = false, 0 }},
		{"fenced", func(s *MemberState) { s.Role, s.State = cluster.RoleStopped, cluster.StateFenced }},
	} {
		update(step.fn)
		if c := live(); c != 200 {
			t.Errorf("after %s: /liveness = %d, want 200", step.what, c)
		}
	}
	if c := call(t, nil, "GET", srv.URL()+"/health", "").code; c != 503 {
		t.Errorf("/health with PostgreSQL down = %d, want 503", c)
	}
	// Only a loop that stopped completing fails it.
	update(func(s *MemberState) { s.LoopHeartbeat = t0.Add(-5 * time.Second) })
	if c := live(); c != 503 {
		t.Errorf("stuck loop: /liveness = %d, want 503", c)
	}
	close(block)
}

func TestClusterRoute(t *testing.T) {
	s := replicaState()
	at := t0.Add(time.Hour)
	s.ScheduledSwitchover = &ScheduledSwitchover{At: at, Leader: "pg-0", Candidate: "pg-1"}
	s.View.Config.Paused = true
	srv := startServer(t, newFake(s), ServerOptions{})
	r := call(t, nil, "GET", srv.URL()+"/cluster", "")
	if r.code != 200 {
		t.Fatalf("GET /cluster = %d %s", r.code, r.body)
	}
	var cs ClusterStatus
	if err := json.Unmarshal([]byte(r.body), &cs); err != nil {
		t.Fatal(err)
	}
	if cs.Cluster != "prod" || cs.Leader != "pg-0" || cs.Timeline != 2 || !cs.Paused || cs.ReportedBy != "pg-1" || !cs.ViewAt.Equal(t0) {
		t.Errorf("cluster = %+v", cs)
	}
	if cs.ScheduledSwitchover == nil || !cs.ScheduledSwitchover.At.Equal(at) || cs.ScheduledSwitchover.Candidate != "pg-1" {
		t.Errorf("scheduled switchover = %+v", cs.ScheduledSwitchover)
	}
	var names []string
	for _, m := range cs.Members {
		names = append(names, m.Name)
	}
	if strings.Join(names, ",") != "pg-0,pg-1,pg-2,w-0" {
		t.Fatalf("members %v, want ctl list's order", names)
	}
	m0, m1, m2 := cs.Members[0], cs.Members[1], cs.Members[2]
	if m0.Role != cluster.RolePrimary || !m0.Leader || m0.APIURL != "http://10.0.0.1:8008" || m0.Lag == nil || *m0.Lag != 0 || m0.Host != "10.0.0.1" || m0.Port != 5432 {
		t.Errorf("pg-0 = %+v", m0)
	}
	if m1.Role != cluster.RoleReplica || m1.Leader || m1.Lag == nil || *m1.Lag != mib || m1.Following != "pg-0" || m1.Tags["zone"] != "a" || m1.Timeline != 2 {
		t.Errorf("pg-1 = %+v", m1)
	}
	if m2.Role != cluster.RoleStopped || m2.Lag != nil {
		t.Errorf("pg-2 (down) = %+v", m2)
	}
	if !strings.Contains(r.body, `"lag":null`) || !strings.Contains(r.body, `"api_url":"http://10.0.0.2:8008"`) {
		t.Errorf("JSON lacks a null lag or api_url: %s", r.body)
	}

	s.ViewAt = time.Time{}
	early := startServer(t, newFake(s), ServerOptions{})
	if r := call(t, nil, "GET", early.URL()+"/cluster", ""); r.code != 503 || !strings.Contains(r.body, "pg-1 has not read the store yet") {
		t.Errorf("before the first store read: %d %s", r.code, r.body)
	}
}

func TestHistoryRoute(t *testing.T) {
	f := newFake(replicaState())
	srv := startServer(t, f, ServerOptions{})
	r := call(t, nil, "GET", srv.URL()+"/history", "")
	var h []cluster.HistoryEntry
	if err := json.Unmarshal([]byte(r.body), &h); err != nil || r.code != 200 || len(h) != 1 || h[0].Timeline != 2 || h[0].SwitchLSN != 0x3000000 {
		t.Errorf("GET /history = %d %s (%v)", r.code, r.body, err)
	}
	f.set(func(f *fakeBackend) { f.err = Errorf(http.StatusServiceUnavailable, "store unreachable") })
	if r := call(t, nil, "GET", srv.URL()+"/history", ""); r.code != 503 || r.body != `{"error":"store unreachable"}`+"\n" {
		t.Errorf("history with the store down = %d %s", r.code, r.body)
	}
	f.set(func(f *fakeBackend) { f.err, f.history = nil, nil })
	if r := call(t, nil, "GET", srv.URL()+"/history", ""); r.code != 200 || strings.TrimSpace(r.body) != "[]" {
		t.Errorf("empty history = %d %s, want []", r.code, r.body)
	}
}

func TestConfigRoutes(t *testing.T) {
	f := newFake(primaryState())
	srv := startServer(t, f, ServerOptions{})
	r := call(t, nil, "GET", srv.URL()+"/config", "")
	want := `{"ttl":"4s","loop_interval":"1s","maximum_lag_on_failover":1048576,"primary_start_timeout":"10s","paused":false,"synchronous_mode":"off","synchronous_node_count":1}` + "\n"
	if r.code != 200 || r.body != want {
		t.Errorf("GET /config = %d %s, want %s", r.code, r.body, want)
	}

	for _, tc := range []struct {
		name, body string
		code       int
		want       string // in the body
		check      func(ConfigPatch) bool
	}{
		{"ttl and paused", `{"ttl": "6s", "paused": true}`, 200, `"ttl":"6s"`, func(p ConfigPatch) bool {
			return *p.TTL == 6*time.Second && *p.Paused && p.LoopInterval == nil && p.MaximumLagOnFailover == nil
		}},
		{"every key", `{"ttl":"1m30s","loop_interval":"500ms","maximum_lag_on_failover":"16MB","primary_start_timeout":"0s","paused":false}`, 200, `"loop_interval":"500ms"`,
			func(p ConfigPatch) bool {
				return *p.TTL == 90*time.Second && *p.LoopInterval == 500*time.Millisecond && *p.MaximumLagOnFailover == 16*mib &&
					*p.PrimaryStartTimeout == 0 && !*p.Paused
			}},
		{"size as bytes", `{"maximum_lag_on_failover": 2048}`, 200, `"maximum_lag_on_failover":2048`, func(p ConfigPatch) bool { return *p.MaximumLagOnFailover == 2048 }},
		{"unknown key", `{"ttl":"5s","tll":"5s"}`, 400, `unknown key \"tll\" (known keys: ttl, loop_interval, maximum_lag_on_failover, primary_start_timeout, paused, synchronous_mode, synchronous_node_count, backup_schedule)`, nil},
		{"ttl not a duration", `{"ttl":"four"}`, 400, `ttl: \"four\" is not a duration`, nil},
		{"ttl a number", `{"ttl":4}`, 400, `ttl: expected a duration string such as \"4s\" or \"500ms\", found 4`, nil},
		{"loop_interval a bool", `{"loop_interval":true}`, 400, "loop_interval: expected a duration string", nil},
		{"size not a size", `{"maximum_lag_on_failover":"lots"}`, 400, `maximum_lag_on_failover: \"lots\" is not a size`, nil},
		{"size a fraction", `{"maximum_lag_on_failover":1.5}`, 400, "maximum_lag_on_failover: expected a number of bytes", nil},
		{"paused a string", `{"paused":"yes"}`, 400, `paused: expected true or false, found \"yes\"`, nil},
		{"null removes nothing", `{"ttl":null}`, 400, "ttl: null would remove the setting", nil},
		{"empty patch", `{}`, 400, "no settings to change", nil},
		{"empty body", ``, 400, "no settings to change", nil},
		{"not an object", `["ttl"]`, 400, "request body: expected a JSON object, found an array", nil},
		{"null body", `null`, 400, "expected a JSON object of settings", nil},
		{"malformed", `{"ttl":`, 400, "not valid JSON", nil},
		{"trailing data", `{"ttl":"5s"} x`, 400, "unexpected data after the JSON object", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.called()
			r := call(t, nil, "PATCH", srv.URL()+"/config", tc.body, "Content-Type: application/merge-patch+json")
			if r.code != tc.code || !strings.Contains(r.body, tc.want) {
				t.Errorf("PATCH /config %s = %d %s; want %d containing %s", tc.body, r.code, r.body, tc.code, tc.want)
			}
			calls, args := f.called()
			if tc.check == nil {
				if len(calls) != 0 {
					t.Errorf("backend called for a refused patch: %v", calls)
				}
				return
			}
			if len(calls) != 1 || calls[0] != "PatchConfig" || !tc.check(args[0].(ConfigPatch)) {
				t.Errorf("backend got %v %+v", calls, args)
			}
		})
	}

	// The backend judges semantics; its *Error sets the status.
	f.set(func(f *fakeBackend) {
		f.err = Errorf(http.StatusUnprocessableEntity, "ttl: 2s is too short for loop_interval 1s")
	})
	if r := call(t, nil, "PATCH", srv.URL()+"/config", `{"ttl":"2s"}`); r.code != 422 || !strings.Contains(r.body, "too short") {
		t.Errorf("semantic refusal = %d %s", r.code, r.body)
	}

	s := primaryState()
	s.View.Config = nil
	early := startServer(t, newFake(s), ServerOptions{})
	if r := call(t, nil, "GET", early.URL()+"/config", ""); r.code != 503 || !strings.Contains(r.body, "not in the store yet") {
		t.Errorf("GET /config before bootstrap = %d %s", r.code, r.body)
	}
}

func TestMutations(t *testing.T) {
	f := newFake(primaryState())
	srv := startServer(t, f, ServerOptions{})
	// The server's clock reads t0 + 100ms (10:00:00.1Z); noon at +02:00 is
	// two hours later.
	noon := time.Date(2026, 5, 1, 14, 0, 0, 0, time.FixedZone("", 2*3600))
	for _, tc := range []struct {
		name, method, path, body string
		code                     int
		want                     string // in the response body
		call                     string // the backend call expected; "" for none
		arg                      any
	}{
		{"switchover now", "POST", "/switchover", `{"leader":"pg-0","candidate":"pg-1"}`, 200, `"message":"done"`, "Switchover",
			SwitchoverRequest{Leader: "pg-0", Candidate: "pg-1"}},
		{"switchover empty body", "POST", "/switchover", ``, 200, "done", "Switchover", SwitchoverRequest{}},
		{"switchover scheduled", "POST", "/switchover", `{"scheduled_at":"2026-05-01T14:00:00+02:00"}`, 200, "done", "Switchover",
			SwitchoverRequest{ScheduledAt: &noon}},
		{"switchover bad time", "POST", "/switchover", `{"candidate":"pg-1","scheduled_at":"tomorrow"}`, 400,
			`scheduled_at: \"tomorrow\" is not an RFC 3339 time with a time zone`, "", nil},
		{"switchover in the past", "POST", "/switchover", `{"candidate":"pg-1","scheduled_at":"2026-05-01T11:00:00+02:00"}`, 400,
			`scheduled_at: \"2026-05-01T11:00:00+02:00\" is in the past (it is 2026-05-01T10:00:00Z on this member): give a future time, or leave scheduled_at out to act now`, "", nil},
		{"switchover at this very instant", "POST", "/switchover", `{"scheduled_at":"2026-05-01T10:00:00.1Z"}`, 400, "is in the past", "", nil},
		{"switchover time without zone", "POST", "/switchover", `{"scheduled_at":"2026-05-01T12:00:00"}`, 400, "scheduled_at:", "", nil},
		{"switchover time not a string", "POST", "/switchover", `{"scheduled_at":1714557600}`, 400, "scheduled_at: expected a string, found a number", "", nil},
		{"switchover candidate a number", "POST", "/switchover", `{"candidate":5}`, 400, "candidate: expected a string, found a number", "", nil},
		{"switchover bad name", "POST", "/switchover", `{"candidate":"PG_1"}`, 400, `candidate: \"PG_1\" is not a valid name`, "", nil},
		{"switchover unknown field", "POST", "/switchover", `{"candiate":"pg-1"}`, 400,
			`unknown field \"candiate\" (known fields: leader, candidate, scheduled_at)`, "", nil},
		{"switchover malformed", "POST", "/switchover", `{"candidate":`, 400, "request body is not valid JSON", "", nil},
		{"switchover syntax", "POST", "/switchover", `{candidate}`, 400, "request body is not valid JSON (at byte 2)", "", nil},
		{"switchover two objects", "POST", "/switchover", `{} {}`, 400, "unexpected data after the JSON object", "", nil},
		{"switchover array", "POST", "/switchover", `[]`, 400, "request body: expected a JSON object, found an array", "", nil},
		{"switchover string", "POST", "/switchover", `"pg-1"`, 400, "expected a JSON object, found a string", "", nil},
		{"switchover too big", "POST", "/switchover", `{"leader":"` + strings.Repeat("a", maxBodyBytes) + `"}`, 413, "larger than", "", nil},
		{"cancel switchover", "DELETE", "/switchover", ``, 200, "scheduled switchover cancelled", "CancelSwitchover", nil},
		{"failover", "POST", "/failover", `{"candidate":"pg-2"}`, 200, "done", "Failover", FailoverRequest{Candidate: "pg-2"}},
		{"failover forced", "POST", "/failover", `{"candidate":"pg-2","force":true}`, 200, "done", "Failover", FailoverRequest{Candidate: "pg-2", Force: true}},
		{"failover force not a boolean", "POST", "/failover", `{"candidate":"pg-2","force":"yes"}`, 400, "force: expected true or false, found a string", "", nil},
		{"failover needs a candidate", "POST", "/failover", `{}`, 400, "candidate: required", "", nil},
		{"failover empty body", "POST", "/failover", ``, 400, "candidate: required", "", nil},
		{"failover unknown field", "POST", "/failover", `{"candidate":"pg-2","forced":true}`, 400, `unknown field \"forced\" (known fields: candidate, force)`, "", nil},
		{"restart", "POST", "/restart", `{}`, 200, "done", "Restart", RestartRequest{}},
		{"restart replica scheduled", "POST", "/restart", `{"role":"replica","scheduled_at":"2026-05-01T14:00:00+02:00"}`, 200, "done", "Restart",
			RestartRequest{Role: RestartReplica, ScheduledAt: &noon}},
		{"restart bad role", "POST", "/restart", `{"role":"master"}`, 400, `role: \"master\" is not a role (write primary or replica`, "", nil},
		{"restart in the past", "POST", "/restart", `{"scheduled_at":"2026-04-30T23:00:00Z"}`, 400, `scheduled_at: \"2026-04-30T23:00:00Z\" is in the past`, "", nil},
		{"restart bad time", "POST", "/restart", `{"scheduled_at":"12:00"}`, 400, "scheduled_at:", "", nil},
		{"reinitialize", "POST", "/reinitialize", ``, 200, "done", "Reinitialize", nil},
		{"reinitialize empty object", "POST", "/reinitialize", `{}`, 200, "done", "Reinitialize", nil},
		{"reinitialize unknown field", "POST", "/reinitialize", `{"force":true}`, 400, `unknown field \"force\" (known fields: none)`, "", nil},
		{"pause", "POST", "/pause", ``, 200, "done", "SetPaused", true},
		{"resume", "POST", "/resume", `{}`, 200, "done", "SetPaused", false},
		{"pause with a body", "POST", "/pause", `{"paused":false}`, 400, `unknown field \"paused\"`, "", nil},
		{"GET switchover", "GET", "/switchover", ``, 405, `{"error":"GET /switchover: method not allowed (allowed: POST, DELETE)"}`, "", nil},
		{"PUT config", "PUT", "/config", `{}`, 405, "method not allowed (allowed: GET, HEAD, PATCH)", "", nil},
		{"unknown path", "POST", "/promote", `{}`, 404, `{"error":"/promote: no such endpoint"}`, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.called()
			r := call(t, nil, tc.method, srv.URL()+tc.path, tc.body)
			if r.code != tc.code || !strings.Contains(r.body, tc.want) {
				t.Errorf("%s %s %s = %d %s; want %d containing %s", tc.method, tc.path, tc.body, r.code, r.body, tc.code, tc.want)
			}
			calls, args := f.called()
			if tc.call == "" {
				if len(calls) != 0 {
					t.Errorf("backend called for a refused request: %v", calls)
				}
				return
			}
			if len(calls) != 1 || calls[0] != tc.call || fmt.Sprint(args[0]) != fmt.Sprint(tc.arg) {
				t.Errorf("backend got %v %v, want %s %v", calls, args, tc.call, tc.arg)
			}
			if req, ok := args[0].(SwitchoverRequest); ok && req.ScheduledAt != nil && !req.ScheduledAt.Equal(noon) {
				t.Errorf("scheduled_at = %v, want %v", req.ScheduledAt, noon)
			}
		})
	}
}

func TestMutationResults(t *testing.T) {
	f := newFake(primaryState())
	srv := startServer(t, f, ServerOptions{BackendTimeout: 50 * time.Millisecond})
	for _, tc := range []struct {
		name  string
		setup func(*fakeBackend)
		code  int
		body  string
	}{
		{"scheduled is 202", func(f *fakeBackend) { f.result = Result{Scheduled: true, Message: "switchover scheduled for 12:00"} }, 202,
			`{"scheduled":true,"message":"switchover scheduled for 12:00"}`},
		{"backend refusal", func(f *fakeBackend) { f.err = Errorf(http.StatusConflict, "pg-9 is not a member") }, 409, `{"error":"pg-9 is not a member"}`},
		{"wrapped refusal keeps its status", func(f *fakeBackend) {
			f.err = fmt.Errorf("checking candidate: %w", Errorf(http.StatusPreconditionFailed, "pg-1 lags 20MB"))
		}, 412, `{"error":"pg-1 lags 20MB"}`},
		{"no healthy candidate", func(f *fakeBackend) {
			f.err = Errorf(http.StatusServiceUnavailable, "no candidate within maximum_lag_on_failover")
		}, 503,
			`{"error":"no candidate within maximum_lag_on_failover"}`},
		{"other error names the operation", func(f *fakeBackend) { f.err = errors.New("etcd: boom") }, 500, `{"error":"switchover: etcd: boom"}`},
		{"deadline", func(f *fakeBackend) { f.block = make(chan struct{}) }, 503, `{"error":"switchover: context deadline exceeded"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.set(func(f *fakeBackend) { f.result, f.err, f.block = Result{Message: "done"}, nil, nil })
			f.set(tc.setup)
			r := call(t, nil, "POST", srv.URL()+"/switchover", `{}`)
			if r.code != tc.code || strings.TrimSpace(r.body) != tc.body {
				t.Errorf("= %d %s; want %d %s", r.code, r.body, tc.code, tc.body)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
		})
	}
}

func TestAuthToken(t *testing.T) {
	f := newFake(primaryState())
	srv := startServer(t, f, ServerOptions{AuthToken: "s3cret"})
	for _, tc := range []struct {
		method, path, body, auth string
		code                     int
		want                     string
		reaches                  bool
	}{
		{"POST", "/switchover", `{}`, "", 401, "needs a token", false},
		{"POST", "/switchover", `{}`, "Basic czNjcmV0", 401, "Authorization must be Bearer <token>", false},
		{"POST", "/switchover", `{}`, "Bearer", 401, "Authorization must be Bearer", false},
		{"POST", "/switchover", `{}`, "Bearer s3cre", 403, "wrong token", false},
		{"POST", "/switchover", `{}`, "Bearer s3cret-and-more", 403, "wrong token", false},
		{"POST", "/switchover", `{}`, "Bearer s3cret", 200, "done", true},
		{"POST", "/switchover", `{}`, "bearer s3cret", 200, "done", true},
		{"POST", "/switchover", `{not json`, "", 401, "needs a token", false}, // refused before the body is read
		{"POST", "/switchover", `{not json`, "Bearer s3cret", 400, "not valid JSON", false},
		{"DELETE", "/switchover", ``, "", 401, "", false},
		{"DELETE", "/switchover", ``, "Bearer s3cret", 200, "cancelled", true},
		{"PATCH", "/config", `{"paused":true}`, "", 401, "", false},
		{"PATCH", "/config", `{"paused":true}`, "Bearer nope", 403, "", false},
		{"PATCH", "/config", `{"paused":true}`, "Bearer s3cret", 200, `"paused":true`, true},
		{"POST", "/failover", `{"candidate":"pg-1"}`, "", 401, "", false},
		{"POST", "/restart", `{}`, "", 401, "", false},
		{"POST", "/reinitialize", ``, "", 401, "", false},
		{"POST", "/pause", ``, "", 401, "", false},
		{"POST", "/resume", ``, "Bearer wrong", 403, "", false},
		{"POST", "/resume", ``, "Bearer s3cret", 200, "", true},
		{"PUT", "/config", `{}`, "", 401, "", false}, // any method that is not safe
		{"POST", "/nowhere", ``, "", 401, "", false},
		// Reading stays open.
		{"GET", "/cluster", ``, "", 200, "members", false},
		{"GET", "/config", ``, "", 200, "ttl", false},
		{"GET", "/metrics", ``, "", 200, "holdfast_leader", false},
		{"GET", "/primary", ``, "", 200, "", false},
		{"HEAD", "/replica", ``, "", 503, "", false},
		{"OPTIONS", "/liveness", ``, "", 200, "", false},
		{"GET", "/history", ``, "Bearer wrong", 200, "", true}, // a token on a read is not checked
	} {
		var headers []string
		if tc.auth != "" {
			headers = append(headers, "Authorization: "+tc.auth)
		}
		f.called()
		r := call(t, nil, tc.method, srv.URL()+tc.path, tc.body, headers...)
		if r.code != tc.code || !strings.Contains(r.body, tc.want) {
			t.Errorf("%s %s (Authorization %q) = %d %s; want %d containing %q", tc.method, tc.path, tc.auth, r.code, r.body, tc.code, tc.want)
		}
		if r.code == 401 && r.header.Get("WWW-Authenticate") != `Bearer realm="holdfast"` {
			t.Errorf("%s %s: 401 without WWW-Authenticate", tc.method, tc.path)
		}
		if calls, _ := f.called(); (len(calls) > 0) != tc.reaches {
			t.Errorf("%s %s (Authorization %q): backend calls %v, want reached=%v", tc.method, tc.path, tc.auth, calls, tc.reaches)
		}
	}
}

func TestMetrics(t *testing.T) {
	srv := startServer(t, newFake(primaryState()), ServerOptions{})
	r := call(t, nil, "GET", srv.URL()+"/metrics", "")
	if r.code != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics = %d %s", r.code, r.header.Get("Content-Type"))
	}
	l := `{cluster="prod",member="pg-0"}`
	for _, want := range []string{
		`holdfast_member_role{cluster="prod",member="pg-0",role="primary"} 1`,
		`holdfast_member_role{cluster="prod",member="pg-0",role="replica"} 0`,
		`holdfast_member_role{cluster="prod",member="pg-0",role="witness"} 0`,
		"holdfast_leader" + l + " 1",
		"holdfast_timeline" + l + " 2",
		"holdfast_wal_position_bytes" + l + " 1.048576e+08",
		"holdfast_replication_lag_bytes" + l + " 0",
		"holdfast_lease_valid_seconds" + l + " 2.9",
		"holdfast_loop_duration_seconds" + l + " 0.012",
		"holdfast_loop_heartbeat_age_seconds" + l + " 0.1",
		"holdfast_paused" + l + " 0",
		"holdfast_maintenance_waiting" + l + " 0",
		"holdfast_postgres_running" + l + " 1",
		"holdfast_postgres_ready" + l + " 1",
		"holdfast_streaming" + l + " 0",
		"# TYPE holdfast_leader gauge",
		"# HELP holdfast_replication_lag_bytes ",
		"go_goroutines ",
		"process_start_time_seconds ",
	} {
		if !strings.Contains(r.body, want+"\n") && !strings.Contains(r.body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	// Computed at scrape time; unknown lag is absent rather than 0; an
	// unusual role is reported too.
	s := replicaState()
	s.Role, s.Position.Timeline, s.Paused, s.Waiting = "rejoining", 1, true, "drain of node n1 waits"
	s2 := startServer(t, newFake(s), ServerOptions{})
	body := call(t, nil, "GET", s2.URL()+"/metrics", "").body
	l = `{cluster="prod",member="pg-1"}`
	for _, want := range []string{
		`holdfast_member_role{cluster="prod",member="pg-1",role="rejoining"} 1`,
		`holdfast_member_role{cluster="prod",member="pg-1",role="replica"} 0`,
		"holdfast_leader" + l + " 0",
		"holdfast_paused" + l + " 1",
		"holdfast_maintenance_waiting" + l + " 1",
		"holdfast_streaming" + l + " 1",
		"holdfast_lease_valid_seconds" + l + " 2.9", // every agent holds a lease
	} {
		if !strings.Contains(body, want) {
			t.Errorf("replica metrics lack %q", want)
		}
	}
	if strings.Contains(body, "holdfast_replication_lag_bytes{") {
		t.Errorf("unknown lag reported as a value")
	}
}

func TestServerLifecycle(t *testing.T) {
	f := newFake(replicaState())
	if _, err := NewServer(ServerOptions{Listen: "127.0.0.1:0"}); err == nil || !strings.Contains(err.Error(), "no backend") {
		t.Errorf("no backend: %v", err)
	}
	if _, err := NewServer(ServerOptions{Backend: f}); err == nil || !strings.Contains(err.Error(), "no listen address") {
		t.Errorf("no listen address: %v", err)
	}
	if _, err := NewServer(ServerOptions{Backend: f, Listen: "127.0.0.1:0", CertFile: "/c"}); err == nil || !strings.Contains(err.Error(), "both a certificate file and a key file") {
		t.Errorf("cert without key: %v", err)
	}
	if _, err := NewServer(ServerOptions{Backend: f, Listen: "127.0.0.1:0", ClientCAFile: "/ca"}); err == nil || !strings.Contains(err.Error(), "a client CA needs TLS") {
		t.Errorf("client CA without TLS: %v", err)
	}

	s, err := NewServer(ServerOptions{Backend: f, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	addr := s.Addr().String()
	if s.Addr().(*net.TCPAddr).Port == 0 || s.URL() != "http://"+addr {
		t.Errorf("Addr %s URL %s", addr, s.URL())
	}
	// The port is taken from NewServer on, so a conflict shows at startup.
	if _, err := NewServer(ServerOptions{Backend: f, Listen: addr}); err == nil || !strings.Contains(err.Error(), "listen on "+addr) {
		t.Errorf("port in use: %v", err)
	}
	// Close without Serve releases it.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := NewServer(ServerOptions{Backend: f, Listen: addr})
	if err != nil {
		t.Fatalf("port not released by Close: %v", err)
	}

	// Graceful stop: a request in flight finishes.
	block := make(chan struct{})
	f.set(func(f *fakeBackend) { f.block = block })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s2.Serve(ctx) }()
	if r := call(t, nil, "GET", s2.URL()+"/health", ""); r.code != 200 {
		t.Fatalf("serving: /health = %d", r.code)
	}
	if err := s2.Serve(ctx); err == nil || !strings.Contains(err.Error(), "already called") {
		t.Errorf("second Serve: %v", err)
	}
	got := make(chan response, 1)
	go func() { got <- call(t, nil, "POST", s2.URL()+"/reinitialize", "") }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if calls, _ := f.called(); len(calls) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("request never reached the backend")
		}
	}
	cancel()
	time.Sleep(50 * time.Millisecond)
	close(block)
	if r := <-got; r.code != 200 {
		t.Errorf("request in flight at shutdown = %d %s", r.code, r.body)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after a graceful stop: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := http.Get(s2.URL() + "/liveness"); err == nil {
		t.Errorf("still answering after Serve returned")
	}
}

func TestClusterViewOrderAndLag(t *testing.T) {
	v := cluster.View{
		Leader: &cluster.Leader{Name: "pg-10"},
		Members: map[string]cluster.MemberInfo{
			"pg-10": {Name: "pg-10"}, "pg-2": {Name: "pg-2"}, "db-1": {Name: "db-1"}, "w-0": {Name: "w-0", Witness: true}, "solo": {Name: "solo"},
		},
		Statuses: map[string]cluster.MemberStatus{
			"pg-10": {Role: cluster.RolePrimary, Position: cluster.Position{Timeline: 3, LSN: 1000}},
			"pg-2":  {Role: cluster.RoleReplica, Position: cluster.Position{Timeline: 3, LSN: 400}},
			"db-1":  {Role: cluster.RoleReplica, Position: cluster.Position{Timeline: 2, LSN: 5000}}, // older timeline
			"w-0":   {Role: cluster.RoleWitness},
			"ghost": {Role: cluster.RoleReplica, Position: cluster.Position{Timeline: 3, LSN: 1200}}, // reports, not registered; ahead
		},
	}
	cs := ClusterView(MemberState{Cluster: "c", Name: "pg-2", View: v, ViewAt: t0})
	var got []string
	for _, m := range cs.Members {
		lag := "null"
		if m.Lag != nil {
			lag = fmt.Sprint(*m.Lag)
		}
		got = append(got, m.Name+"="+lag)
	}
	if want := "db-1=null,ghost=0,pg-2=600,pg-10=0,solo=null,w-0=null"; strings.Join(got, ",") != want {
		t.Errorf("members %s, want %s", strings.Join(got, ","), want)
	}
	if cs.Timeline != 3 || cs.Leader != "pg-10" {
		t.Errorf("timeline %d leader %s", cs.Timeline, cs.Leader)
	}
	if empty := ClusterView(MemberState{}); empty.Members == nil {
		t.Errorf("no members renders as null, want []")
	}
}

// TestReplayLagReported: a replica whose replay trails what it received
// shows both positions and both lags in its health body, its metrics and
// /cluster (the received lag keeps its old meaning everywhere).
func TestReplayLagReported(t *testing.T) {
	s := replicaState()
	replayBehind(10 * mib)(&s)
	st := s.View.Statuses["pg-1"]
	st.ReplayLSN = s.ReplayLSN
	s.View.Statuses["pg-1"] = st
	now := t0.Add(time.Second)

	h := Health(s, now)
	if h.XLog.ReceivedLocation == nil || *h.XLog.ReceivedLocation != uint64(leaderLSN-mib) ||
		h.XLog.ReplayedLocation == nil || *h.XLog.ReplayedLocation != uint64(leaderLSN-10*mib) {
		t.Errorf("health xlog = %+v; want received %d, replayed %d", h.XLog, leaderLSN-mib, leaderLSN-10*mib)
	}
	if h.Lag == nil || *h.Lag != mib || h.ReplayLag == nil || *h.ReplayLag != 10*mib {
		t.Errorf("health lag %v, replay lag %v; want %d and %d", h.Lag, h.ReplayLag, mib, 10*mib)
	}
	if p := Health(primaryState(), now); p.XLog.ReplayedLocation != nil || p.ReplayLag == nil || *p.ReplayLag != 0 {
		t.Errorf("primary health: replayed location %v, replay lag %v; want none and 0", p.XLog.ReplayedLocation, p.ReplayLag)
	}

	cs := ClusterView(s)
	if m1 := cs.Members[1]; m1.Name != "pg-1" || m1.Lag == nil || *m1.Lag != mib || m1.ReplayLag == nil || *m1.ReplayLag != 10*mib || m1.ReplayLSN != (leaderLSN-10*mib).String() {
		t.Errorf("/cluster pg-1 = %+v; want lag %d, replay lag %d at %s", m1, mib, 10*mib, leaderLSN-10*mib)
	}
	if m0 := cs.Members[0]; m0.ReplayLag == nil || *m0.ReplayLag != 0 || m0.ReplayLSN != "" {
		t.Errorf("/cluster pg-0 (primary) = %+v; want replay lag 0, no replay LSN", m0)
	}

	srv := startServer(t, newFake(s), ServerOptions{})
	body := call(t, nil, "GET", srv.URL()+"/metrics", "").body
	l := `{cluster="prod",member="pg-1"}`
	for _, want := range []string{
		"holdfast_replication_lag_bytes" + l + " 1.048576e+06",
		"holdfast_replay_lag_bytes" + l + " 1.048576e+07",
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// A request quoting a huge value gets a short answer: the value is cut to
// quote.MaxBytes and its length given, wherever it appears in the message.
func TestErrorsQuoteLongValuesShort(t *testing.T) {
	f := newFake(primaryState())
	srv := startServer(t, f, ServerOptions{})
	long := strings.Repeat("x", maxBodyBytes-100)
	for _, tc := range []struct{ name, method, path, body, want string }{
		{"name", "POST", "/switchover", `{"candidate":"` + long + `"}`, `candidate: \"xxx`},
		{"time", "POST", "/switchover", `{"scheduled_at":"` + long + `"}`, `scheduled_at: \"xxx`},
		{"role", "POST", "/restart", `{"role":"` + long + `"}`, `role: \"xxx`},
		{"unknown field", "POST", "/switchover", `{"` + long + `":1}`, `unknown field \"xxx`},
		{"config key", "PATCH", "/config", `{"` + long + `":1}`, `unknown key \"xxx`},
		{"config duration", "PATCH", "/config", `{"ttl":"` + long + `"}`, `ttl: \"xxx`},
		{"config raw value", "PATCH", "/config", `{"paused":[` + strings.Repeat("1,", maxBodyBytes/2-100) + `1]}`, "paused: expected true or false, found [1,1,"},
		{"health query", "GET", "/replica?mode=" + long[:8000], "", `mode: \"xxx`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := call(t, nil, tc.method, srv.URL()+tc.path, tc.body)
			if r.code != http.StatusBadRequest || !strings.Contains(r.body, tc.want) {
				t.Fatalf("%s %s = %d %.300s; want 400 containing %s", tc.method, tc.path, r.code, r.body, tc.want)
			}
			if len(r.body) > 600 || !strings.Contains(r.body, " bytes)") {
				t.Errorf("answer is %d bytes, want the value cut to %d bytes and its length given: %.700s", len(r.body), quote.MaxBytes, r.body)
			}
		})
	}
}
