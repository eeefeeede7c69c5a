package store

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/testutil"
)

func TestEmbeddedPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	taken := l.Addr().String()
	free := fmt.Sprintf("127.0.0.1:%d", uniquePorts(t, 1)[0])
	dir := testutil.Dir(t)
	for _, o := range []EmbeddedOptions{
		{ListenPeer: taken, AdvertisePeer: taken, ListenClient: free, AdvertiseClient: free},
		{ListenPeer: free, AdvertisePeer: free, ListenClient: taken, AdvertiseClient: taken},
	} {
		o.Name, o.Dir = "e0", filepath.Join(dir, "e0")
		o.Peers = map[string]string{"e0": "http://" + o.AdvertisePeer}
		start := time.Now()
		m, err := StartEmbedded(o)
		if err == nil {
			m.Close()
			t.Fatalf("StartEmbedded on taken port %s succeeded", taken)
		}
		if !strings.Contains(err.Error(), taken) || !strings.Contains(err.Error(), "not available") {
			t.Errorf("error %q does not name the taken address", err)
		}
		if d := time.Since(start); d > returnLate {
			t.Errorf("failing on a taken port took %v", d)
		}
	}
}

func TestEmbeddedOptionsValidated(t *testing.T) {
	dir := testutil.Dir(t)
	base := EmbeddedOptions{Name: "e0", Dir: dir, ListenPeer: "127.0.0.1:1", AdvertisePeer: "127.0.0.1:1",
		ListenClient: "127.0.0.1:2", AdvertiseClient: "127.0.0.1:2"}
	for _, peers := range []map[string]string{
		nil,
		{"e1": "http://127.0.0.1:1"},
		{"e0": "http://127.0.0.1:9"},
	} {
		o := base
		o.Peers = peers
		if m, err := StartEmbedded(o); err == nil {
			m.Close()
			t.Errorf("StartEmbedded with peers %v succeeded", peers)
		}
	}
}

// TestEmbeddedSingleRestart: data survives a restart, and a lone member of
// a 3-member initial cluster starts without waiting for the others.
func TestEmbeddedSingleRestart(t *testing.T) {
	c := startCluster(t, 1)
	s := openStore(t, c.endpoints(), "single", "pg-a")
	must(t, s.Register(ctxT(t, 5*time.Second), clusterMemberInfo()))
	c.stop(0)
	c.start(0)
	c.waitReady(0)
	v := load(t, s)
	if _, ok := v.Members["pg-a"]; !ok {
		t.Fatalf("registration lost across restart: %+v", v.Members)
	}

	// A member whose peers are not up returns at once and is not ready.
	dir := testutil.Dir(t)
	ports := uniquePorts(t, 4)
	addr := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", ports[i]) }
	o := EmbeddedOptions{Name: "x0", Dir: filepath.Join(dir, "x0"),
		ListenPeer: addr(0), AdvertisePeer: addr(0), ListenClient: addr(1), AdvertiseClient: addr(1),
		Peers: map[string]string{"x0": "http://" + addr(0), "x1": "http://" + addr(2), "x2": "http://" + addr(3)}}
	start := time.Now()
	m, err := StartEmbedded(o)
	must(t, err)
	if d := time.Since(start); d > returnLate {
		t.Errorf("StartEmbedded without quorum took %v", d)
	}
	select {
	case <-m.Ready():
		t.Error("a member without quorum reports ready")
	case <-time.After(300 * time.Millisecond):
	}
	if m.ClientURL() != "http://"+addr(1) {
		t.Errorf("ClientURL = %q", m.ClientURL())
	}
	// Calls against it fail as unavailable, within the deadline.
	x := openStore(t, []string{m.ClientURL()}, "single", "pg-x")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := x.Load(ctx); !isUnavailable(err) {
		t.Errorf("Load without quorum: %v", err)
	}
	start = time.Now()
	must(t, m.Close())
	t.Logf("closing a member without quorum took %v", time.Since(start))
	must(t, m.Close()) // idempotent
	select {
	case <-m.Stopped():
	default:
		t.Error("Stopped not closed after Close")
	}
}
