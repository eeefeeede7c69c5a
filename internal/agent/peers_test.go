package agent

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
)

// TestHTTPPeersKeepTheirConnection: the failsafe rounds to a member reuse
// one connection (a new one per round cost a handshake inside the round's
// second), and a round whose kept-alive connection the member had closed
// meanwhile still gets its promise, on a new connection.
func TestHTTPPeersKeepTheirConnection(t *testing.T) {
	var conns, promises atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/failsafe" {
			http.Error(w, "unexpected", http.StatusNotFound)
			return
		}
		promises.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"message":"promised"}`))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	p := newHTTPPeers(api.ClientOptions{Timeout: 10 * time.Second})
	m := cluster.MemberInfo{Name: "pg-1", APIURL: srv.URL}
	round := func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := p.Failsafe(ctx, m, "pg-0"); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		round()
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("5 rounds used %d connections, want 1", n)
	}
	// The member closes the idle connection (it restarted, or timed it
	// out); the next round is answered all the same.
	srv.CloseClientConnections()
	round()
	if n := promises.Load(); n != 6 {
		t.Errorf("%d promises, want 6", n)
	}
}
