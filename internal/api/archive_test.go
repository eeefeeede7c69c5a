package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// withLeaderArchive is s with the leader pg-0's status in its view
// reporting a.
func withLeaderArchive(s MemberState, a *cluster.ArchiveStatus) MemberState {
	v := testView()
	st := v.Statuses["pg-0"]
	st.Archive = a
	v.Statuses["pg-0"] = st
	s.View = v
	return s
}

// TestClusterArchive: every member answers /archive for the cluster — the
// primary from its own status, the others from the primary's status in
// their store read — and a member that cannot know answers unknown (503).
func TestClusterArchive(t *testing.T) {
	now := t0.Add(time.Second)
	ok := &cluster.ArchiveStatus{State: cluster.ArchiveOK, LastArchivedWAL: "000000020000000000000003"}
	failing := &cluster.ArchiveStatus{State: cluster.ArchiveFailing, Reason: "archiving 000000020000000000000004 failed"}
	primary := func(a *cluster.ArchiveStatus) MemberState { s := primaryState(); s.Archive = a; return s }
	cases := []struct {
		name    string
		s       MemberState
		now     time.Time
		want    cluster.ArchiveState
		primary string
		reason  string
	}{
		{name: "the primary, ok", s: primary(ok), now: now, want: cluster.ArchiveOK, primary: "pg-0"},
		{name: "the primary, failing", s: primary(failing), now: now, want: cluster.ArchiveFailing, primary: "pg-0", reason: "failed"},
		{name: "the primary without a repository", s: primary(&cluster.ArchiveStatus{State: cluster.ArchiveOff, Reason: "no backup.repository"}),
			now: now, want: cluster.ArchiveOff, primary: "pg-0", reason: "no backup.repository"},
		{name: "a replica, from the primary's status", s: withLeaderArchive(replicaState(), failing), now: now, want: cluster.ArchiveFailing, primary: "pg-0", reason: "failed"},
		{name: "a replica, primary ok", s: withLeaderArchive(replicaState(), ok), now: now, want: cluster.ArchiveOK, primary: "pg-0"},
		{name: "a replica, the primary reports nothing", s: replicaState(), now: now, want: cluster.ArchiveUnknown, primary: "pg-0", reason: "reports no archive status"},
		{name: "a replica with a stale store read", s: withLeaderArchive(replicaState(), ok), now: t0.Add(time.Minute), want: cluster.ArchiveUnknown, reason: "longer than the TTL"},
		{name: "a replica that never read the store", s: func() MemberState { s := replicaState(); s.ViewAt = time.Time{}; return s }(), now: now,
			want: cluster.ArchiveUnknown, reason: "has not read the store"},
		{name: "no leader", s: func() MemberState { s := withLeaderArchive(replicaState(), ok); s.View.Leader = nil; return s }(), now: now,
			want: cluster.ArchiveUnknown, reason: "no member leads"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := ClusterArchive(c.s, c.now)
			if got.State != c.want || got.Primary != c.primary || !strings.Contains(got.Reason, c.reason) {
				t.Errorf("ClusterArchive = %+v; want state %s, primary %q, a reason saying %q", got, c.want, c.primary, c.reason)
			}
			pass, err := Check("/archive", nil, c.s, c.now)
			if err != nil || pass != (c.want == cluster.ArchiveOK) {
				t.Errorf("Check(/archive) = %v, %v; want %v", pass, err, c.want == cluster.ArchiveOK)
			}
		})
	}
}

// TestArchiveEndpoint: GET /archive answers 200 while archiving is ok and
// 503 with the state and reason in the body otherwise; HEAD answers the
// status alone; a malformed query is a 400.
func TestArchiveEndpoint(t *testing.T) {
	var cur MemberState
	b := newFake(MemberState{})
	b.state = func() MemberState { return cur }
	srv, err := NewServer(ServerOptions{Backend: b, Listen: "127.0.0.1:0", Now: func() time.Time { return t0.Add(time.Second) }})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	get := func(method, target string) (int, string) {
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, httptest.NewRequest(method, target, nil))
		return rec.Code, rec.Body.String()
	}
	s := primaryState()
	s.Archive = &cluster.ArchiveStatus{State: cluster.ArchiveOK, LastArchivedWAL: "000000020000000000000003"}
	cur = s
	if code, body := get(http.MethodGet, "/archive"); code != http.StatusOK || !strings.Contains(body, `"archive":{"state":"ok"`) {
		t.Errorf("archiving ok: %d %s", code, body)
	}
	s = primaryState()
	s.Archive = &cluster.ArchiveStatus{State: cluster.ArchiveFailing, Reason: "archiving 000000020000000000000004 failed at 2026-05-01T09:59:59Z"}
	cur = s
	code, body := get(http.MethodGet, "/archive")
	var h MemberHealth
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		t.Fatalf("body %s: %v", body, err)
	}
	if code != http.StatusServiceUnavailable || h.Archive.State != cluster.ArchiveFailing || h.Archive.Primary != "pg-0" || !strings.Contains(h.Archive.Reason, "000000020000000000000004 failed") {
		t.Errorf("archiving failing: %d %s", code, body)
	}
	if code, _ := get(http.MethodHead, "/archive"); code != http.StatusServiceUnavailable {
		t.Errorf("HEAD /archive while failing: %d", code)
	}
	if code, body := get(http.MethodGet, "/archive?lag=abc"); code != http.StatusBadRequest {
		t.Errorf("a malformed query: %d %s", code, body)
	}
}
