// Package store is holdfast's only door to the consensus store: an adapter
// over an etcd v3 cluster (Etcd) that speaks the cluster package's
// vocabulary, and the etcd server each agent embeds (Embedded).
//
// Every Etcd method takes a context and returns when it is done, so a
// store outage costs the caller at most its own deadline. Errors name the
// operation and wrap one of ErrUnavailable (retry later), ErrLeaseLost (the
// member's lease and every key bound to it are gone) or ErrConflict (a
// compare-and-swap lost: re-read), plus the etcd cause.
//
// Layout, under <Prefix>/<Cluster>/:
//
//	initialize       "bootstrapping by <member>" (leased) or the system identifier
//	leader           leader's member name, bound to its lease
//	members/<name>   JSON cluster.MemberInfo, no lease
//	status/<name>    JSON cluster.MemberStatus, bound to the member's lease
//	optime           JSON cluster.Optime, no lease
//	history          JSON []cluster.HistoryEntry, no lease, at most 100 entries
//	config           JSON cluster.Config (durations as "4s"), no lease
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/holdfast/holdfast/internal/cluster"
)

// Key names relative to the cluster root.
const (
	keyInit     = "initialize"
	keyLeader   = "leader"
	keyOptime   = "optime"
	keyHistory  = "history"
	keyConfig   = "config"
	keyFailover = "failover" // pending switchover or failover request
	keySync     = "sync"     // synchronous replication record
	dirMembers  = "members/"
	dirStatus   = "status/"
	maxHistory  = 100
	casAttempts = 5
)

// Defaults for zero Options fields.
const (
	DefaultTTL         = 30 * time.Second
	DefaultDialTimeout = 5 * time.Second
)

// Options configures Open.
type Options struct {
	// Endpoints are the etcd client URLs ("http://10.0.0.1:2379" or
	// "10.0.0.1:2379"). List every member: the client fails over between
	// them.
	Endpoints []string
	// Local is the client URL of the etcd member embedded in this process
	// ("" for an external store). When set, the client sends every request
	// to it alone, never to the other Endpoints: a member in the caller's
	// own process cannot be frozen while the caller runs, but another
	// member can (a SIGSTOPped agent, a hung host), and its TCP connections
	// stay open while nothing answers. A client balancing over every
	// member hung on the frozen one's share until the gRPC keepalive gave
	// up on it (8 s); one that preferred the local member but fell back to
	// another while the local one was not serving yet (at start) stayed on
	// that other member — and when it froze, two healthy members had no
	// store for 10 s and a failover took 12.7 s. While the local member
	// serves no quorum, requests fail with ErrUnavailable, as they would
	// through any member of a store without quorum.
	Local string
	// Prefix is the root of all holdfast keys, e.g. "/holdfast".
	Prefix string
	// Cluster and Member are the cluster's and this agent's names.
	Cluster string
	Member  string
	// TTL is the lifetime of the member's lease (rounded up to whole
	// seconds; etcd may raise it to its minimum). Zero means DefaultTTL.
	TTL time.Duration
	// DialTimeout bounds connection set-up of the short-lived clients
	// MoveLeaderAway opens. Open itself never waits for a connection. Zero
	// means DefaultDialTimeout.
	DialTimeout time.Duration
	// Logger receives the adapter's own log; nil discards it. etcd's client
	// log is always discarded (errors reach the caller instead).
	Logger *slog.Logger
}

// Etcd is one agent's handle on the cluster store. It is safe for
// concurrent use. It tracks a single lease for its member: keys bound to
// it (leader, status, a bootstrap in progress) vanish together when the
// agent stops renewing it.
type Etcd struct {
	cli         *clientv3.Client
	log         *slog.Logger
	member      string
	ttl         time.Duration
	dialTimeout time.Duration
	endpoints   []string
	root        string // "<prefix>/<cluster>/"

	// grant serialises lease grants so concurrent callers do not each
	// grant a lease; it is a channel so waiting for it honours contexts.
	grant chan struct{}
	mu    sync.Mutex
	lease clientv3.LeaseID // 0: none granted, or the last one was lost
}

// Open validates the options and creates a client. It does not contact the
// store: the connection is made lazily, so Open succeeds while the store is
// down and the first calls then fail with ErrUnavailable until it is back.
// An error means the options are unusable; a retry will not help. ctx is
// currently unused (nothing blocks).
func Open(ctx context.Context, o Options) (*Etcd, error) {
	if len(o.Endpoints) == 0 {
		return nil, errors.New("open store: no endpoints")
	}
	if err := cluster.ValidName(o.Cluster); err != nil {
		return nil, fmt.Errorf("open store: cluster: %w", err)
	}
	if err := cluster.ValidName(o.Member); err != nil {
		return nil, fmt.Errorf("open store: member: %w", err)
	}
	prefix := strings.TrimRight(o.Prefix, "/")
	if prefix != "" && !strings.HasPrefix(prefix, "/") {
		return nil, fmt.Errorf("open store: prefix %q must start with '/'", o.Prefix)
	}
	if o.TTL < 0 || o.DialTimeout < 0 {
		return nil, errors.New("open store: negative TTL or dial timeout")
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	lg := o.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	cfg := clientConfig(o.Endpoints, o.DialTimeout)
	if o.Local != "" {
		cfg.Endpoints = []string{o.Local}
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	return &Etcd{
		cli:         cli,
		log:         lg.With("component", "store"),
		member:      o.Member,
		ttl:         o.TTL,
		dialTimeout: o.DialTimeout,
		endpoints:   append([]string(nil), o.Endpoints...),
		root:        prefix + "/" + o.Cluster + "/",
		grant:       make(chan struct{}, 1),
	}, nil
}

// clientConfig is the client set-up shared by the long-lived client and the
// short-lived ones. gRPC keepalives (5s is the server's minimum interval)
// detect a peer whose host died without closing the connection, which
// would otherwise leave a watch silently hanging on it.
func clientConfig(endpoints []string, dialTimeout time.Duration) clientv3.Config {
	return clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          dialTimeout,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 3 * time.Second,
		Logger:               zap.NewNop(),
		// gRPC's default reconnect backoff grows to 2 minutes; a member
		// that comes back must be used again within seconds.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   2 * time.Second,
			},
			MinConnectTimeout: dialTimeout,
		})},
	}
}

// Close closes the client. It revokes nothing: keys bound to the lease stay
// until it expires (call Revoke first on a clean shutdown). Watch channels
// close.
func (e *Etcd) Close() error {
	if err := e.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("close store client: %w", err)
	}
	return nil
}

func (e *Etcd) key(name string) string { return e.root + name }

func (e *Etcd) currentLease() clientv3.LeaseID {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lease
}

// forgetLease drops id if it is still the current lease, so the next grant
// replaces it (a newer lease granted meanwhile is kept).
func (e *Etcd) forgetLease(id clientv3.LeaseID) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.lease == id && id != 0 {
		e.lease = 0
		e.log.Warn("lease lost", "lease", int64(id))
	}
}

// fail wraps err for op and forgets lease id when the store says the lease
// is gone.
func (e *Etcd) fail(op string, id clientv3.LeaseID, err error) error {
	werr := wrap(op, err)
	if errors.Is(werr, ErrLeaseLost) {
		e.forgetLease(id)
	}
	return werr
}

func (e *Etcd) ttlSeconds() int64 {
	s := int64(math.Ceil(e.ttl.Seconds()))
	if s < 1 {
		s = 1
	}
	return s
}

// ensureLease returns the current lease, granting one if there is none.
func (e *Etcd) ensureLease(ctx context.Context) (clientv3.LeaseID, error) {
	if id := e.currentLease(); id != 0 {
		return id, nil
	}
	select {
	case e.grant <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	defer func() { <-e.grant }()
	if id := e.currentLease(); id != 0 {
		return id, nil
	}
	resp, err := e.cli.Grant(ctx, e.ttlSeconds())
	if err != nil {
		return 0, err
	}
	e.mu.Lock()
	e.lease = resp.ID
	e.mu.Unlock()
	e.log.Info("granted lease", "lease", int64(resp.ID), "ttl", time.Duration(resp.TTL)*time.Second)
	return resp.ID, nil
}

// Lease returns the member's lease id, granting a lease with the configured
// TTL when the member has none or the previous one was lost. It blocks only
// for the grant round trip (bounded by ctx). ErrUnavailable: retry.
func (e *Etcd) Lease(ctx context.Context) (int64, error) {
	id, err := e.ensureLease(ctx)
	if err != nil {
		return 0, wrap("grant lease", err)
	}
	return int64(id), nil
}

// KeepAlive renews the member's lease once and returns the TTL the store
// granted (the lease now lives that long from the moment the store's raft
// leader processed the renewal). Call it well within the TTL, e.g. every
// loop. An error wrapping ErrLeaseLost means the lease expired or was
// revoked — every key bound to it is gone, including the leader key if this
// member held it — or that no lease was ever granted; the adapter has
// forgotten it and the next Lease call grants a fresh one. ErrUnavailable
// means the renewal did not reach a quorum in time; the lease keeps running
// down meanwhile.
//
// A renewal that has not answered within keepAliveHedge is sent again
// beside it (at most keepAliveAttempts in all), and the first success
// counts: a renewal forwarded to a raft leader that froze or was cut off
// just before hangs until ctx ends, while one sent after the followers
// elected a new leader (an election timeout, 1s embedded) succeeds. A
// renewal is idempotent, so a duplicate costs nothing but the request.
func (e *Etcd) KeepAlive(ctx context.Context) (time.Duration, error) {
	const op = "keep lease alive"
	id := e.currentLease()
	if id == 0 {
		return 0, fmt.Errorf("%s: %w: no lease granted", op, ErrLeaseLost)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the attempts still running
	type answer struct {
		ttl int64
		err error
	}
	answers := make(chan answer, keepAliveAttempts)
	sent, pending := 0, 0
	send := func() {
		sent++
		pending++
		go func() {
			resp, err := e.cli.KeepAliveOnce(ctx, id)
			if err != nil {
				answers <- answer{err: err}
				return
			}
			answers <- answer{ttl: resp.TTL}
		}()
	}
	send()
	hedge := time.NewTicker(keepAliveHedge)
	defer hedge.Stop()
	var last error
	for {
		select {
		case a := <-answers:
			pending--
			if a.err == nil {
				return time.Duration(a.ttl) * time.Second, nil
			}
			last = a.err
			if errors.Is(wrap(op, a.err), ErrLeaseLost) || pending == 0 && sent == keepAliveAttempts {
				return 0, e.fail(op, id, a.err)
			}
			// Otherwise the next attempt goes out at the next tick: a
			// failure that came back at once must not spin.
		case <-hedge.C:
			if sent < keepAliveAttempts {
				send()
			}
		case <-ctx.Done():
			if last == nil {
				last = ctx.Err()
			}
			return 0, e.fail(op, id, last)
		}
	}
}

// A lease renewal not answered within keepAliveHedge is sent again beside
// the first, up to keepAliveAttempts in all (see KeepAlive). A healthy
// store answers a renewal in milliseconds.
const (
	keepAliveHedge    = 300 * time.Millisecond
	keepAliveAttempts = 4
)

// Revoke revokes the member's lease so the keys bound to it (the leader
// key, the status, a bootstrap claim) disappear at once rather than after
// the TTL. Use it on clean shutdown, after PostgreSQL stopped accepting
// writes. A lease that already expired is not an error.
func (e *Etcd) Revoke(ctx context.Context) error {
	id := e.currentLease()
	if id == 0 {
		return nil
	}
	_, err := e.cli.Revoke(ctx, id)
	if err != nil {
		werr := e.fail("revoke lease", id, err)
		if errors.Is(werr, ErrLeaseLost) {
			return nil
		}
		return werr
	}
	e.forgetLease(id)
	e.log.Info("revoked lease", "lease", int64(id))
	return nil
}

// Load reads everything under the cluster's prefix in one range request: a
// consistent snapshot at View.Revision. A key whose value cannot be decoded
// is left out of the view and logged, so one bad key cannot blind the whole
// cluster. ErrUnavailable: no quorum answered in time (the read is
// linearizable, so a member cut off from the majority cannot serve stale
// data).
func (e *Etcd) Load(ctx context.Context) (cluster.View, error) {
	resp, err := e.cli.Get(ctx, e.root, clientv3.WithPrefix())
	if err != nil {
		return cluster.View{}, wrap("load cluster view", err)
	}
	v := cluster.View{
		Revision: resp.Header.Revision,
		Members:  map[string]cluster.MemberInfo{},
		Statuses: map[string]cluster.MemberStatus{},
	}
	for _, kv := range resp.Kvs {
		name := strings.TrimPrefix(string(kv.Key), e.root)
		bad := func(err error) {
			e.log.Warn("skipping unreadable key", "key", string(kv.Key), "error", err)
		}
		switch {
		case name == keyInit:
			v.Init = ParseInit(string(kv.Value), kv.ModRevision)
		case name == keyLeader:
			v.Leader = &cluster.Leader{Name: string(kv.Value), LeaseID: kv.Lease, Revision: kv.ModRevision}
		case name == keyOptime:
			var o cluster.Optime
			if err := json.Unmarshal(kv.Value, &o); err != nil {
				bad(err)
				continue
			}
			v.Optime = &o
		case name == keyHistory:
			var h []cluster.HistoryEntry
			if err := json.Unmarshal(kv.Value, &h); err != nil {
				bad(err)
				continue
			}
			v.History = h
		case name == keyConfig:
			c, err := DecodeConfig(kv.Value)
			if err != nil {
				bad(err)
				continue
			}
			v.Config = &c
			v.ConfigRevision = kv.ModRevision
		case name == keyFailover:
			var sw cluster.Switchover
			if err := json.Unmarshal(kv.Value, &sw); err != nil {
				bad(err)
				continue
			}
			sw.Revision = kv.ModRevision
			v.Switchover = &sw
		case name == keySync:
			var st cluster.SyncState
			if err := json.Unmarshal(kv.Value, &st); err != nil {
				bad(err)
				continue
			}
			st.Revision = kv.ModRevision
			v.Sync = &st
		case strings.HasPrefix(name, dirMembers):
			m := strings.TrimPrefix(name, dirMembers)
			var info cluster.MemberInfo
			if err := json.Unmarshal(kv.Value, &info); err != nil {
				bad(err)
				continue
			}
			info.Name = m // the key is authoritative
			v.Members[m] = info
		case strings.HasPrefix(name, dirStatus):
			m := strings.TrimPrefix(name, dirStatus)
			var st cluster.MemberStatus
			if err := json.Unmarshal(kv.Value, &st); err != nil {
				bad(err)
				continue
			}
			st.Name = m
			v.Statuses[m] = st
		default:
			e.log.Debug("ignoring unknown key", "key", string(kv.Key))
		}
	}
	return v, nil
}

// AcquireLeader creates the leader key holding this member's name, bound to
// its lease (granted first if needed), if no member holds it. It returns
// true when this member holds the key afterwards (also when it already
// did, with its current lease), false with a nil error when another member
// — or this member under an older lease, see DeleteStaleLeader — holds it.
// ErrLeaseLost: the lease expired; ErrUnavailable: unknown outcome, re-read.
func (e *Etcd) AcquireLeader(ctx context.Context) (bool, error) {
	const op = "acquire leader key"
	id, err := e.ensureLease(ctx)
	if err != nil {
		return false, wrap(op, err)
	}
	k := e.key(keyLeader)
	resp, err := e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, e.member, clientv3.WithLease(id))).
		Else(clientv3.OpGet(k)).
		Commit()
	if err != nil {
		return false, e.fail(op, id, err)
	}
	if resp.Succeeded {
		e.log.Info("acquired leader key", "lease", int64(id), "revision", resp.Header.Revision)
		return true, nil
	}
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 &&
		string(kvs[0].Value) == e.member && clientv3.LeaseID(kvs[0].Lease) == id {
		return true, nil
	}
	return false, nil
}

// ReleaseLeader deletes the leader key if it holds this member's name and is
// bound to this member's current lease, in one transaction, so a member can
// never delete a key another member (or a later incarnation of itself)
// acquired meanwhile. It is not an error when the key is not ours.
// ErrUnavailable: unknown outcome; the key still expires with the lease.
func (e *Etcd) ReleaseLeader(ctx context.Context) error {
	id := e.currentLease()
	if id == 0 {
		return nil // nothing can be bound to a lease we do not have
	}
	k := e.key(keyLeader)
	resp, err := e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(k), "=", e.member),
			clientv3.Compare(clientv3.LeaseValue(k), "=", id)).
		Then(clientv3.OpDelete(k)).
		Commit()
	if err != nil {
		return wrap("release leader key", err)
	}
	if resp.Succeeded {
		e.log.Info("released leader key")
	}
	return nil
}

// DeleteStaleLeader deletes the leader key only if its mod revision is still
// rev (as read in a View). It is for a member that finds its own name in
// the key from a previous run, bound to a lease that is not its current
// one: the key would otherwise block every election until that old lease
// expires. A key already gone is not an error; a key rewritten since rev
// gives ErrConflict (re-read).
func (e *Etcd) DeleteStaleLeader(ctx context.Context, rev int64) error {
	const op = "delete stale leader key"
	if rev <= 0 {
		return fmt.Errorf("%s: revision %d is not a key revision", op, rev)
	}
	k := e.key(keyLeader)
	resp, err := e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(k), "=", rev)).
		Then(clientv3.OpDelete(k)).
		Else(clientv3.OpGet(k, clientv3.WithKeysOnly())).
		Commit()
	if err != nil {
		return wrap(op, err)
	}
	if resp.Succeeded {
		e.log.Info("deleted stale leader key", "revision", rev)
		return nil
	}
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
		return fmt.Errorf("%s: %w: key changed since revision %d (now %d)", op, ErrConflict, rev, kvs[0].ModRevision)
	}
	return nil
}

// ClaimInit creates the initialize key as "bootstrapping by <member>", bound
// to the member's lease, if no member has claimed or finished the
// bootstrap. Exactly one of racing members gets true. If the winner dies
// mid-bootstrap its lease expires and the key with it, so another member can
// claim. ErrUnavailable: unknown outcome, re-read.
func (e *Etcd) ClaimInit(ctx context.Context) (bool, error) {
	const op = "claim bootstrap"
	id, err := e.ensureLease(ctx)
	if err != nil {
		return false, wrap(op, err)
	}
	k := e.key(keyInit)
	resp, err := e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, BootstrapPrefix+e.member, clientv3.WithLease(id))).
		Commit()
	if err != nil {
		return false, e.fail(op, id, err)
	}
	if resp.Succeeded {
		e.log.Info("claimed bootstrap")
	}
	return resp.Succeeded, nil
}

// FinishInit replaces this member's bootstrap claim with the system
// identifier, detached from any lease so it stays forever. ErrConflict: the
// claim is no longer ours (it expired with the lease, or was aborted) — the
// cluster must not consider this bootstrap done.
func (e *Etcd) FinishInit(ctx context.Context, sysid string) error {
	const op = "finish bootstrap"
	if sysid == "" || strings.HasPrefix(sysid, BootstrapPrefix) {
		return fmt.Errorf("%s: invalid system identifier %q", op, sysid)
	}
	k := e.key(keyInit)
	resp, err := e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(k), "=", BootstrapPrefix+e.member)).
		Then(clientv3.OpPut(k, sysid)).
		Commit()
	if err != nil {
		return wrap(op, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%s: %w: the initialize key no longer says %q", op, ErrConflict, BootstrapPrefix+e.member)
	}
	e.log.Info("finished bootstrap", "system_id", sysid)
	return nil
}

// AbortInit deletes this member's bootstrap claim so another member can
// bootstrap. A claim that is not ours (or is gone) is left alone without
// error.
func (e *Etcd) AbortInit(ctx context.Context) error {
	k := e.key(keyInit)
	resp, err := e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(k), "=", BootstrapPrefix+e.member)).
		Then(clientv3.OpDelete(k)).
		Commit()
	if err != nil {
		return wrap("abort bootstrap", err)
	}
	if resp.Succeeded {
		e.log.Info("aborted bootstrap")
	}
	return nil
}

// CheckName fills in an empty record name with the handle's member and
// refuses another member's name, so a misconfigured agent cannot overwrite
// a neighbour's records. Every store backend uses it.
func CheckName(op, member string, name *string) error {
	if *name == "" {
		*name = member
	}
	if *name != member {
		return fmt.Errorf("%s: record names %q, but this store handle belongs to %q", op, *name, member)
	}
	return nil
}

// Register writes the member's registration (no lease: it outlives the
// process). info.Name must be empty or the member's own name.
func (e *Etcd) Register(ctx context.Context, info cluster.MemberInfo) error {
	const op = "register member"
	if err := CheckName(op, e.member, &info.Name); err != nil {
		return err
	}
	b, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if _, err := e.cli.Put(ctx, e.key(dirMembers+info.Name), string(b)); err != nil {
		return wrap(op, err)
	}
	return nil
}

// PutStatus writes the member's status report bound to its lease (granted
// first if needed), so it disappears when the member stops renewing.
// st.Name must be empty or the member's own name. ErrLeaseLost: the lease
// expired; the next call grants a new one.
func (e *Etcd) PutStatus(ctx context.Context, st cluster.MemberStatus) error {
	const op = "put member status"
	if err := CheckName(op, e.member, &st.Name); err != nil {
		return err
	}
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	id, err := e.ensureLease(ctx)
	if err != nil {
		return wrap(op, err)
	}
	if _, err := e.cli.Put(ctx, e.key(dirStatus+st.Name), string(b), clientv3.WithLease(id)); err != nil {
		return e.fail(op, id, err)
	}
	return nil
}

// DeleteStatus removes the member's status report.
func (e *Etcd) DeleteStatus(ctx context.Context) error {
	if _, err := e.cli.Delete(ctx, e.key(dirStatus+e.member)); err != nil {
		return wrap("delete member status", err)
	}
	return nil
}

// PutOptime records the primary's WAL position, in one transaction with a
// check that the leader key still names this member, so a deposed primary
// cannot overwrite the new primary's position. ErrConflict: we are not the
// leader.
func (e *Etcd) PutOptime(ctx context.Context, o cluster.Optime) error {
	const op = "put optime"
	if o.Leader == "" {
		o.Leader = e.member
	}
	b, err := json.Marshal(o)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	lk := e.key(keyLeader)
	resp, err := e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(lk), "=", e.member)).
		Then(clientv3.OpPut(e.key(keyOptime), string(b))).
		Commit()
	if err != nil {
		return wrap(op, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%s: %w: the leader key does not name %q", op, ErrConflict, e.member)
	}
	return nil
}

// PutSync replaces the synchronous replication record, only if it is still
// at revision rev (0: absent) and this member holds the leader key under its
// current lease: a deposed primary, or one whose view is stale, can never
// overwrite the record the new primary relies on. ErrConflict: the record
// changed or this member is not the leader; read again and decide again.
func (e *Etcd) PutSync(ctx context.Context, s cluster.SyncState, rev int64) error {
	const op = "put synchronous replication record"
	s.Leader = e.member
	if s.Members == nil {
		s.Members = []string{}
	}
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	lease := e.currentLease()
	if lease == 0 {
		return fmt.Errorf("%s: %w: no lease", op, ErrConflict)
	}
	lk, sk := e.key(keyLeader), e.key(keySync)
	resp, err := e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(lk), "=", e.member),
			clientv3.Compare(clientv3.LeaseValue(lk), "=", lease),
			clientv3.Compare(clientv3.ModRevision(sk), "=", rev)).
		Then(clientv3.OpPut(sk, string(b))).
		Commit()
	if err != nil {
		return wrap(op, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%s: %w: the record changed or %q does not hold the leader key", op, ErrConflict, e.member)
	}
	return nil
}

// AppendHistory appends one promotion record to the history, keeping the
// last 100 entries, with a read-modify-write guarded by the key's mod
// revision (retried a few times on contention). A stored history that
// cannot be decoded is replaced — Load already ignores it, so it is lost
// for every reader anyway — and a warning is logged. ErrConflict: lost
// the race repeatedly.
func (e *Etcd) AppendHistory(ctx context.Context, h cluster.HistoryEntry) error {
	return e.editHistory(ctx, "append history", func(hist []cluster.HistoryEntry) ([]cluster.HistoryEntry, error) {
		return append(hist, h), nil
	})
}

// RecordDiscard records on the history entry whose timeline branched off
// d.Timeline at divergedAt the WAL a former primary's rewind threw away
// (cluster.AddDiscard), with the same guarded read-modify-write as
// AppendHistory. An error wrapping cluster.ErrNoBranch: no entry branches
// there; nothing was written.
func (e *Etcd) RecordDiscard(ctx context.Context, divergedAt cluster.LSN, d cluster.Discard) error {
	return e.editHistory(ctx, "record discarded WAL", func(hist []cluster.HistoryEntry) ([]cluster.HistoryEntry, error) {
		return cluster.AddDiscard(hist, divergedAt, d)
	})
}

// editHistory replaces the stored history with edit's result, keeping the
// last maxHistory entries, compare-and-swapped on the key's mod revision
// and retried on contention. An error from edit aborts with nothing
// written.
func (e *Etcd) editHistory(ctx context.Context, op string, edit func([]cluster.HistoryEntry) ([]cluster.HistoryEntry, error)) error {
	k := e.key(keyHistory)
	for range casAttempts {
		resp, err := e.cli.Get(ctx, k)
		if err != nil {
			return wrap(op, err)
		}
		var hist []cluster.HistoryEntry
		var rev int64
		if len(resp.Kvs) == 1 {
			rev = resp.Kvs[0].ModRevision
			if err := json.Unmarshal(resp.Kvs[0].Value, &hist); err != nil {
				e.log.Warn("replacing unreadable history", "key", k, "error", err)
				hist = nil
			}
		}
		hist, err = edit(hist)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		if len(hist) > maxHistory {
			hist = hist[len(hist)-maxHistory:]
		}
		b, err := json.Marshal(hist)
		if err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		tr, err := e.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(k), "=", rev)).
			Then(clientv3.OpPut(k, string(b))).
			Commit()
		if err != nil {
			return wrap(op, err)
		}
		if tr.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("%s: %w: history kept changing (%d attempts)", op, ErrConflict, casAttempts)
}

// PutConfigIfAbsent writes the cluster configuration unless one is already
// stored (the bootstrapping member seeds it from its own file; later
// members adopt what is there). An existing config is not an error.
func (e *Etcd) PutConfigIfAbsent(ctx context.Context, cfg cluster.Config) error {
	const op = "seed cluster config"
	b, err := EncodeConfig(cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	k := e.key(keyConfig)
	resp, err := e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(b))).
		Commit()
	if err != nil {
		return wrap(op, err)
	}
	if resp.Succeeded {
		e.log.Info("stored cluster config")
	}
	return nil
}

// PutConfig replaces the cluster configuration if the stored one still has
// mod revision rev (0: none must exist), as read with GetConfig.
// ErrConflict: someone changed it meanwhile; re-read and re-apply.
func (e *Etcd) PutConfig(ctx context.Context, cfg cluster.Config, rev int64) error {
	const op = "put cluster config"
	b, err := EncodeConfig(cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	k := e.key(keyConfig)
	resp, err := e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(k), "=", rev)).
		Then(clientv3.OpPut(k, string(b))).
		Commit()
	if err != nil {
		return wrap(op, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%s: %w: config is no longer at revision %d", op, ErrConflict, rev)
	}
	return nil
}

// GetConfig reads the cluster configuration and its mod revision, the
// value PutConfig compares against (cluster.View carries no config
// revision). It returns nil and 0 when no config is stored. An unreadable
// stored config is an error here (unlike Load), returned with the key's
// revision so the caller can still overwrite it with PutConfig.
func (e *Etcd) GetConfig(ctx context.Context) (*cluster.Config, int64, error) {
	const op = "get cluster config"
	resp, err := e.cli.Get(ctx, e.key(keyConfig))
	if err != nil {
		return nil, 0, wrap(op, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	c, err := DecodeConfig(resp.Kvs[0].Value)
	if err != nil {
		return nil, resp.Kvs[0].ModRevision, fmt.Errorf("%s: %w", op, err)
	}
	return &c, resp.Kvs[0].ModRevision, nil
}

// PutSwitchover records a switchover or failover request if none is
// pending. false (nil error) means another request is pending: one at a time.
func (e *Etcd) PutSwitchover(ctx context.Context, sw cluster.Switchover) (bool, error) {
	const op = "request switchover"
	b, err := json.Marshal(sw)
	if err != nil {
		return false, fmt.Errorf("%s: %w", op, err)
	}
	k := e.key(keyFailover)
	resp, err := e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, string(b))).
		Commit()
	if err != nil {
		return false, wrap(op, err)
	}
	return resp.Succeeded, nil
}

// DeleteSwitchover removes the pending request if its mod revision is still
// rev (0: whatever is there). A request already gone is not an error.
func (e *Etcd) DeleteSwitchover(ctx context.Context, rev int64) error {
	const op = "clear switchover"
	k := e.key(keyFailover)
	var err error
	if rev == 0 {
		_, err = e.cli.Delete(ctx, k)
	} else {
		_, err = e.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", rev)).Then(clientv3.OpDelete(k)).Commit()
	}
	if err != nil {
		return wrap(op, err)
	}
	return nil
}
