package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Watch backoff bounds.
const (
	watchBackoffMin = 100 * time.Millisecond
	watchBackoffMax = 5 * time.Second
)

// Watch returns a channel that receives a signal whenever the leader,
// initialize, config or history key changes, so an agent can react at once
// instead of at its next loop tick. Writes to status, optime and members
// keys do not signal: members rewrite them whenever their position moves
// (every loop under writes), and signalling on them would make agents wake
// each other in an endless loop.
//
// The channel has capacity 1 and sends never block: signals that arrive
// while one is pending are merged, so a signal means "re-read the view",
// not "exactly one change happened". One signal is also sent every time
// the watch is (re-)established — first start included — because changes
// made while no watch was in place are not replayed; the caller re-reads
// everything then.
//
// The watch survives store outages. A broken connection is bridged by the
// etcd client, which resumes the watch at the next unseen revision, so
// changes made meanwhile are replayed (and signal). The watch also asks to
// be cancelled when the etcd member serving it has no raft leader
// (otherwise a member cut off from the majority would keep it open and
// silent); that, a compacted resume revision, or any other end of the
// watch makes it be re-established with exponential backoff (100ms to 5s)
// until ctx is done, followed by the signal described above. The channel
// is closed when ctx is done or the Etcd is closed.
func (e *Etcd) Watch(ctx context.Context) <-chan struct{} {
	watched := map[string]bool{
		e.key(keyLeader):   true,
		e.key(keyInit):     true,
		e.key(keyConfig):   true,
		e.key(keyHistory):  true,
		e.key(keyFailover): true,
	}
	// One range covers the five keys: under the cluster root they sort
	// config < failover < history < initialize < leader, before members/,
	// optime and status/. Events are still filtered by exact key.
	return e.watchRange(ctx, e.key(keyConfig), e.key(keyLeader)+"\x00",
		func(ev *clientv3.Event) bool { return watched[string(ev.Kv.Key)] })
}

// watchRange signals out, as Watch describes, on every event in [from, to)
// that relevant selects and on every (re-)establishment of the watch. opts
// are added to the watch request.
func (e *Etcd) watchRange(ctx context.Context, from, to string, relevant func(*clientv3.Event) bool, opts ...clientv3.OpOption) <-chan struct{} {
	out := make(chan struct{}, 1)
	go e.watchLoop(ctx, out, from, to, relevant, opts)
	return out
}

func (e *Etcd) watchLoop(ctx context.Context, out chan<- struct{}, from, to string, relevant func(*clientv3.Event) bool, opts []clientv3.OpOption) {
	defer close(out)
	signal := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	backoff := watchBackoffMin
	for {
		established, err := e.watchOnce(ctx, from, to, relevant, opts, signal)
		if ctx.Err() != nil || e.cli.Ctx().Err() != nil {
			return
		}
		if established {
			backoff = watchBackoffMin
		}
		e.log.Warn("watch interrupted; re-establishing", "error", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-e.cli.Ctx().Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, watchBackoffMax)
	}
}

// watchOnce runs one watch until it ends and reports whether it was ever
// established, and why it ended.
func (e *Etcd) watchOnce(ctx context.Context, from, to string, relevant func(*clientv3.Event) bool, opts []clientv3.OpOption, signal func()) (bool, error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	established := false
	wch := e.cli.Watch(wctx, from, append([]clientv3.OpOption{clientv3.WithRange(to), clientv3.WithCreatedNotify()}, opts...)...)
	for resp := range wch {
		if err := resp.Err(); err != nil {
			return established, err
		}
		if resp.Created {
			established = true
			e.log.Debug("watch established", "revision", resp.Header.Revision)
			signal()
			continue
		}
		for _, ev := range resp.Events {
			if relevant(ev) {
				signal()
				break
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return established, err
	}
	if established {
		return true, errors.New("watch channel closed")
	}
	return false, fmt.Errorf("watch channel closed before the watch was established")
}
