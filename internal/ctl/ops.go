package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"time"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/kubestore"
	"github.com/holdfast/holdfast/internal/quote"
	"github.com/holdfast/holdfast/internal/store"
)

// Target is the cluster an operator command acts on: its store, and how to
// reach the members' APIs.
type Target struct {
	Endpoints []string
	Prefix    string
	Cluster   string
	// Kube, when set, selects the Kubernetes store instead of etcd.
	Kube   *KubeTarget
	DBUser string // user shown in DSNs
	API    api.ClientOptions
	Proxy  *ProxyAddrs // a local cluster's proxy, if any
}

// KubeTarget locates a cluster kept in the Kubernetes API.
type KubeTarget struct {
	Kubeconfig string // "" in a pod: its service account
	Namespace  string
}

// Source is a read handle on a cluster's store.
type Source interface {
	Load(ctx context.Context) (cluster.View, error)
	Watch(ctx context.Context) <-chan struct{}
	Close() error
}

// storeReaderTTL is the lease TTL of the handles ctl and the proxy open:
// they never lead, so it only names them in the store.
const storeReaderTTL = 5 * time.Second

// OpenStore opens the target's store for reading, as member (a name for
// the store's log).
func (t Target) OpenStore(ctx context.Context, member string, log *slog.Logger) (Source, error) {
	if t.Kube != nil {
		cli, err := kubestore.NewClient(t.Kube.Kubeconfig)
		if err != nil {
			return nil, err
		}
		return kubestore.New(kubestore.Options{Client: cli, Namespace: t.Kube.Namespace, Cluster: t.Cluster, Member: member,
			TTL: storeReaderTTL, Logger: log})
	}
	return store.Open(ctx, store.Options{Endpoints: t.Endpoints, Prefix: t.Prefix, Cluster: t.Cluster, Member: member,
		TTL: storeReaderTTL, DialTimeout: 2 * time.Second, Logger: log})
}

// Where names the store for messages.
func (t Target) Where() string {
	if t.Kube != nil {
		return "namespace " + t.Kube.Namespace
	}
	return t.Prefix
}

// View reads the cluster's state from its store.
func (t Target) View(ctx context.Context) (cluster.View, error) {
	st, err := t.OpenStore(ctx, "ctl", slog.New(slog.DiscardHandler))
	if err != nil {
		return cluster.View{}, err
	}
	defer st.Close()
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v, err := st.Load(c)
	if err != nil {
		return v, fmt.Errorf("read cluster %q from the store: %w", t.Cluster, err)
	}
	if len(v.Members) == 0 {
		return v, fmt.Errorf("cluster %q has no members in the store under %s (wrong --cluster, --prefix or --namespace?)", t.Cluster, t.Where())
	}
	return v, nil
}

// Client returns an API client for member.
func (t Target) Client(v cluster.View, member string) (*api.Client, error) {
	m, ok := v.Members[member]
	if !ok {
		return nil, fmt.Errorf("no member %s in cluster %q", quote.Value(member), t.Cluster)
	}
	if m.APIURL == "" {
		return nil, fmt.Errorf("member %s has not registered an API address", member)
	}
	return api.NewClient(m.APIURL, t.API)
}

// AnyClient returns a client of the leader's API if it is alive, else of any
// live member: cluster-wide requests (switchover, pause, config) may be sent
// to any member.
func (t Target) AnyClient(v cluster.View) (*api.Client, string, error) {
	var names []string
	if v.Leader != nil {
		names = append(names, v.Leader.Name)
	}
	for _, n := range MemberNames(v) {
		if _, live := v.Statuses[n]; live {
			names = append(names, n)
		}
	}
	for _, n := range names {
		if v.Members[n].APIURL == "" {
			continue
		}
		c, err := t.Client(v, n)
		if err == nil {
			return c, n, nil
		}
	}
	return nil, "", errors.New("no live member with an API address")
}

// MemberNames lists the registered members' names in sorted order.
func MemberNames(v cluster.View) []string {
	var out []string
	for n := range v.Members {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// RestartAll restarts every database member without losing the primary's
// availability for longer than a switchover: replicas one at a time, each
// caught up before the next; then a switchover to a caught-up replica; then
// the old primary, now a replica.
func RestartAll(ctx context.Context, t Target, out io.Writer) error {
	v, err := t.View(ctx)
	if err != nil {
		return err
	}
	if v.Leader == nil {
		return errors.New("restart --all needs a running primary")
	}
	oldPrimary := v.Leader.Name
	var replicas []string
	for _, n := range MemberNames(v) {
		if n != oldPrimary && !v.Members[n].Witness {
			replicas = append(replicas, n)
		}
	}
	for _, r := range replicas {
		if err := restartAndCatchUp(ctx, t, r, out); err != nil {
			return err
		}
	}
	if len(replicas) > 0 {
		c, _, err := t.AnyClient(v)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "switching over from %s\n", oldPrimary)
		res, err := c.Switchover(ctx, api.SwitchoverRequest{Leader: oldPrimary})
		c.Close()
		if err != nil {
			return fmt.Errorf("switchover from %s: %w", oldPrimary, err)
		}
		fmt.Fprintln(out, res.Message)
		if err := waitCaughtUp(ctx, t, oldPrimary, 2*time.Minute); err != nil {
			return err
		}
	}
	return restartAndCatchUp(ctx, t, oldPrimary, out)
}

func restartAndCatchUp(ctx context.Context, t Target, member string, out io.Writer) error {
	v, err := t.View(ctx)
	if err != nil {
		return err
	}
	c, err := t.Client(v, member)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(out, "restarting %s\n", member)
	if _, err := c.Restart(ctx, api.RestartRequest{}); err != nil {
		return fmt.Errorf("restart %s: %w", member, err)
	}
	return waitCaughtUp(ctx, t, member, 2*time.Minute)
}

// waitCaughtUp waits until member is the running primary, or a streaming
// replica no further behind the primary than 1 MiB.
func waitCaughtUp(ctx context.Context, t Target, member string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := "no status"
	for time.Now().Before(deadline) {
		if v, err := t.View(ctx); err == nil {
			l := List(t.Cluster, v, t.DBUser)
			for _, m := range l.Members {
				if m.Name != member {
					continue
				}
				last = fmt.Sprintf("%s %s", m.Role, m.State)
				if m.Role == cluster.RolePrimary && m.State == cluster.StateRunning && m.Leader {
					return nil
				}
				if m.Role == cluster.RoleReplica && m.State == cluster.StateStreaming && m.LagBytes != nil && *m.LagBytes <= 1<<20 {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not catch up within %s (last seen: %s)", member, timeout, last)
}
