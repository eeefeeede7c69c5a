package store_test

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/store"
	"github.com/holdfast/holdfast/internal/store/storetest"
	"github.com/holdfast/holdfast/internal/testutil"
)

// TestConformance runs the backend conformance suite against a real
// (embedded, single-member) etcd server.
func TestConformance(t *testing.T) {
	dir := testutil.Dir(t)
	peer := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	client := fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
	o := store.EmbeddedOptions{
		Name: "etcd-0", Dir: filepath.Join(dir, "etcd-0"),
		ListenPeer: peer, AdvertisePeer: peer, ListenClient: client, AdvertiseClient: client,
		Peers: map[string]string{"etcd-0": "http://" + peer}, ClusterToken: "conformance",
		LogFile: filepath.Join(dir, "etcd-0.log"),
	}
	var m *store.Embedded
	start := func() {
		var err error
		if m, err = store.StartEmbedded(o); err != nil {
			t.Fatalf("start etcd: %v", err)
		}
		select {
		case <-m.Ready():
		case <-time.After(30 * time.Second):
			t.Fatal("etcd not ready within 30s")
		}
	}
	start()
	t.Cleanup(func() { m.Close() })
	storetest.Run(t, storetest.Backend{
		Open: func(t *testing.T, cluster, member string, ttl time.Duration) storetest.Store {
			s, err := store.Open(t.Context(), store.Options{Endpoints: []string{m.ClientURL()}, Prefix: "/conformance",
				Cluster: cluster, Member: member, TTL: ttl, DialTimeout: time.Second, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
		Outage: func(t *testing.T) func() {
			m.Close()
			return start
		},
	})
}
