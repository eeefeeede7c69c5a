package store

import (
	"context"
	"encoding/json"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/holdfast/holdfast/internal/cluster"
)

// WatchRoles returns a channel that receives a signal whenever a member's
// status appears, disappears, or reports another role or state, and once
// each time the watch is (re-)established — so a reader following roles
// (the proxy) learns at once that a new primary is writable, instead of at
// its next periodic read. A status rewrite that keeps role and state (every
// member rewrites its status every loop, with new WAL positions) does not
// signal. Signals merge and the channel closes as for Watch, whose outage
// handling it shares.
//
// Agents do not use it: they would wake each other at every role change of
// any member, which their loop does not need.
func (e *Etcd) WatchRoles(ctx context.Context) <-chan struct{} {
	from := e.key(dirStatus)
	return e.watchRange(ctx, from, clientv3.GetPrefixRangeEnd(from), roleChanged, clientv3.WithPrevKV())
}

// roleChanged reports whether a status event changes what the member says
// it is: a creation or deletion, or a role or state different from the
// previous value's (ev.PrevKv, which the watch asks for). An undecodable
// value, or a missing previous value, counts as a change.
func roleChanged(ev *clientv3.Event) bool {
	if ev.Type == clientv3.EventTypeDelete || ev.PrevKv == nil || ev.IsCreate() {
		return true
	}
	var prev, cur cluster.MemberStatus
	if json.Unmarshal(ev.PrevKv.Value, &prev) != nil || json.Unmarshal(ev.Kv.Value, &cur) != nil {
		return true
	}
	return prev.Role != cur.Role || prev.State != cur.State
}
