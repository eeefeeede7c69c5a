package kubestore_test

import (
	"log/slog"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/kubestore"
	"github.com/holdfast/holdfast/internal/store/storetest"
	"github.com/holdfast/holdfast/internal/testutil/kubeenv"
)

// TestConformance runs the backend conformance suite against a real
// kube-apiserver (and its etcd), as a user holding only the RBAC the chart
// grants the agents.
func TestConformance(t *testing.T) {
	env := kubeenv.APIServer(t)
	admin, err := kubestore.NewClient(env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	const ns = "default"
	grantAgentRBAC(t, admin, ns, "holdfast-agent")
	cli, err := kubestore.NewClient(env.KubeconfigFor("holdfast-agent"))
	if err != nil {
		t.Fatal(err)
	}
	storetest.Run(t, storetest.Backend{
		Open: func(t *testing.T, cluster, member string, ttl time.Duration) storetest.Store {
			s, err := kubestore.New(kubestore.Options{Client: cli, Namespace: ns, Cluster: cluster, Member: member, TTL: ttl,
				Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		Outage: func(t *testing.T) func() {
			env.StopAPIServer()
			return env.StartAPIServer
		},
	})
}
