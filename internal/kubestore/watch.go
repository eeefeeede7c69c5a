package kubestore

import (
	"context"
	"sort"
	"strings"
	"sync"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// Watch timing: backoff between attempts to (re-)establish a watch, and the
// server-side timeout after which a quiet watch is re-established anyway
// (a connection to an API server that hangs must not keep us deaf).
const (
	watchBackoffMin = 100 * time.Millisecond
	watchBackoffMax = 5 * time.Second
	watchTimeout    = 30 * time.Second
)

// Watch returns a channel that receives a signal whenever the leader
// changes hands (holder or incarnation: renewals do not signal, or every
// agent would wake every other each loop) or the cluster's config object
// changes (config, bootstrap, history, switchover), and once each time a
// watch is (re-)established, since changes made meanwhile are not replayed.
// Signals merge (capacity 1, sends never block). The channel closes when
// ctx is done.
func (s *Store) Watch(ctx context.Context) <-chan struct{} {
	out := make(chan struct{}, 1)
	signal := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		s.watchLoop(ctx, signal, func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = "metadata.name=" + s.leaseName()
			return s.cli.CoordinationV1().Leases(s.ns).Watch(ctx, o)
		})
	}()
	go func() {
		defer wg.Done()
		s.watchLoop(ctx, signal, func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = "metadata.name=" + s.configName()
			return s.cli.CoreV1().ConfigMaps(s.ns).Watch(ctx, o)
		})
	}()
	go func() {
		wg.Wait()
		close(out)
	}()
	return out
}

// digest is what of an object is worth waking an agent for.
func digest(obj any) (string, bool) {
	switch o := obj.(type) {
	case *coordv1.Lease:
		return holder(o) + "/" + o.Annotations[annIncarnation], true
	case *corev1.ConfigMap:
		keys := make([]string, 0, len(o.Data))
		for k := range o.Data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var b strings.Builder
		for _, k := range keys {
			b.WriteString(k + "=" + o.Data[k] + "\x00")
		}
		return b.String(), true
	}
	return "", false
}

func (s *Store) watchLoop(ctx context.Context, signal func(), open func(context.Context, metav1.ListOptions) (watch.Interface, error)) {
	backoff := watchBackoffMin
	last, known := "", false
	for ctx.Err() == nil {
		secs := int64(watchTimeout / time.Second)
		w, err := open(ctx, metav1.ListOptions{TimeoutSeconds: &secs})
		if err != nil {
			s.log.Debug("watch", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, watchBackoffMax)
			continue
		}
		backoff = watchBackoffMin
		signal() // whatever changed while no watch was in place
		for ev := range w.ResultChan() {
			if ev.Type == watch.Error {
				break
			}
			d, ok := digest(ev.Object)
			if ev.Type == watch.Deleted {
				d = ""
			}
			if ok && (!known || d != last) {
				last, known = d, true
				signal()
			}
		}
		w.Stop()
	}
}
