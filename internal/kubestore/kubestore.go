// Package kubestore is holdfast's consensus store on the Kubernetes API: the
// same contract as the etcd adapter (package store), kept with objects the
// agents own in their namespace.
//
// Layout, for cluster C in namespace N (every object labelled
// holdfast.io/cluster=C plus Options.Labels):
//
//	Lease     C-leader       the leader: holderIdentity, renewTime,
//	                         leaseDurationSeconds, leaseTransitions (the
//	                         fencing epoch, the leader's revision); annotations
//	                         holdfast.io/incarnation (the holder's lease id),
//	                         holdfast.io/optime, holdfast.io/sync
//	ConfigMap C-config       data: config, initialize, history, failover
//	ConfigMap C-member-<m>   data: member (registration), status; annotations
//	                         holdfast.io/incarnation and holdfast.io/ttl
//
// The API server never expires anything. What etcd does with leases is done
// here by every reader on its own monotonic clock: a record that must be
// renewed (the leader Lease, a member's status, a bootstrap claim) is dead
// once its resourceVersion has not changed for its TTL since this process
// first saw that resourceVersion. The writer counts its own deadline from
// before it sent the renewal, so the reader's judgement is never earlier
// than the writer's, whatever the two wall clocks say.
//
// Compare-and-swap is the API's own (resourceVersion on update); the
// per-key revisions the cluster package speaks of are counters this adapter
// keeps in annotations (holdfast.io/seq and holdfast.io/rev.<key>), so a
// write of one key does not invalidate a revision read for another key of
// the same object. resourceVersions never leave this package.
//
// Errors wrap the store package's sentinels: ErrConflict for a lost
// compare-and-swap, ErrLeaseLost when this member's incarnation died, and
// ErrUnavailable for every other API error (the failsafe's "store
// unreachable").
package kubestore

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"sync"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/store"
)

// Names of labels, annotations and data keys.
const (
	LabelCluster = "holdfast.io/cluster"
	labelKind    = "holdfast.io/kind" // "config" or "member"

	annIncarnation = "holdfast.io/incarnation"
	annTTL         = "holdfast.io/ttl"
	annOptime      = "holdfast.io/optime"
	annSync        = "holdfast.io/sync"
	annSeq         = "holdfast.io/seq"
	annRevPrefix   = "holdfast.io/rev."
	annInitBy      = "holdfast.io/init-incarnation"
	annRenew       = "holdfast.io/renewed"

	keyConfig   = "config"
	keyInit     = "initialize"
	keyHistory  = "history"
	keyFailover = "failover"
	keySync     = "sync"
	keyMember   = "member"
	keyStatus   = "status"

	kindConfig = "config"
	kindMember = "member"

	maxHistory = 100
	// casAttempts bounds the retries of a compare-and-swap that lost only
	// because another key of the same object changed meanwhile.
	casAttempts = 8
)

// Defaults for zero Options fields.
const DefaultTTL = 30 * time.Second

// Options configures New.
type Options struct {
	Client    kubernetes.Interface
	Namespace string
	Cluster   string
	Member    string
	// TTL of this member's lease, rounded up to whole seconds.
	TTL time.Duration
	// Labels are added to every object this store creates.
	Labels map[string]string
	Logger *slog.Logger
}

// Store is one agent's handle on the cluster store. It is safe for
// concurrent use.
type Store struct {
	cli    kubernetes.Interface
	log    *slog.Logger
	ns     string
	cl     string
	member string
	ttl    time.Duration
	labels map[string]string

	mu sync.Mutex
	// incarnation is this member's lease id; 0 when none is granted or the
	// last one was lost.
	incarnation int64
	// renewed is when the last successful renewal of the incarnation was
	// sent (monotonic): the incarnation is lost a TTL later.
	renewed time.Time
	// seen records, per renewable record, the resourceVersion last read
	// and when this process first read it.
	seen map[string]sighting
}

type sighting struct {
	rv    string
	first time.Time
}

// New validates the options. It does not contact the API server.
func New(o Options) (*Store, error) {
	if o.Client == nil {
		return nil, errors.New("open kubernetes store: no client")
	}
	if o.Namespace == "" {
		return nil, errors.New("open kubernetes store: no namespace")
	}
	if err := cluster.ValidName(o.Cluster); err != nil {
		return nil, fmt.Errorf("open kubernetes store: cluster: %w", err)
	}
	if err := cluster.ValidName(o.Member); err != nil {
		return nil, fmt.Errorf("open kubernetes store: member: %w", err)
	}
	if o.TTL < 0 {
		return nil, errors.New("open kubernetes store: negative TTL")
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	lg := o.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	return &Store{
		cli: o.Client, log: lg.With("component", "store"), ns: o.Namespace, cl: o.Cluster, member: o.Member,
		ttl: time.Duration(ttlSeconds(o.TTL)) * time.Second, labels: maps.Clone(o.Labels), seen: map[string]sighting{},
	}, nil
}

func ttlSeconds(d time.Duration) int32 {
	s := int32((d + time.Second - 1) / time.Second)
	return max(s, 1)
}

// Close releases nothing: the client is the caller's.
func (s *Store) Close() error { return nil }

func (s *Store) leaseName() string             { return s.cl + "-leader" }
func (s *Store) configName() string            { return s.cl + "-config" }
func (s *Store) memberName(name string) string { return s.cl + "-member-" + name }

func (s *Store) objectLabels(kind string) map[string]string {
	l := maps.Clone(s.labels)
	if l == nil {
		l = map[string]string{}
	}
	l[LabelCluster] = s.cl
	if kind != "" {
		l[labelKind] = kind
	}
	return l
}

// wrap names the operation and classifies the cause: a lost
// compare-and-swap is ErrConflict, a caller's cancellation stays as it is,
// every other API error is ErrUnavailable.
func wrap(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrLeaseLost), errors.Is(err, store.ErrUnavailable):
		return fmt.Errorf("%s: %w", op, err)
	case apierrors.IsConflict(err), apierrors.IsAlreadyExists(err):
		return fmt.Errorf("%s: %w: %w", op, store.ErrConflict, err)
	case errors.Is(err, context.Canceled), errors.Is(err, cluster.ErrNoBranch):
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: %w: %w", op, store.ErrUnavailable, err)
}

// now is the monotonic clock every expiry judgement uses.
func now() time.Time { return time.Now() }

// alive reports whether a renewable record, renewed every ttl and read at
// resourceVersion rv by a response that arrived at at, may still be
// alive: this process first saw rv less than ttl before at. at must be
// taken after the response arrived — never before the request was sent,
// which could predate the write that produced rv.
func (s *Store) alive(key, rv string, ttl time.Duration, at time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.seen[key]
	if !ok || v.rv != rv {
		v = sighting{rv: rv, first: at}
		s.seen[key] = v
	}
	return at.Sub(v.first) < ttl
}

// --- the member's lease ---------------------------------------------------

func newIncarnation() int64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic(fmt.Sprintf("crypto/rand failed: %v", err)) // never happens on Linux
		}
		if v := int64(binary.BigEndian.Uint64(b[:]) >> 1); v != 0 {
			return v
		}
	}
}

// current returns the live incarnation, forgetting one whose last renewal
// is more than a TTL old (others may already have judged it dead).
func (s *Store) current() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.incarnation != 0 && now().Sub(s.renewed) >= s.ttl {
		s.log.Warn("lease lost: not renewed for a TTL", "lease", s.incarnation)
		s.incarnation = 0
	}
	return s.incarnation
}

func (s *Store) forget(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.incarnation == id && id != 0 {
		s.incarnation = 0
		s.log.Warn("lease lost", "lease", id)
	}
}

// Lease returns the member's lease id, granting a new one (published in
// the member's record) when it has none or the last one was lost.
// ErrUnavailable: retry.
func (s *Store) Lease(ctx context.Context) (int64, error) {
	id, err := s.ensureLease(ctx)
	if err != nil {
		return 0, wrap("grant lease", err)
	}
	return id, nil
}

func (s *Store) ensureLease(ctx context.Context) (int64, error) {
	if id := s.current(); id != 0 {
		return id, nil
	}
	id, start := newIncarnation(), now()
	err := s.updateMember(ctx, func(cm *corev1.ConfigMap) error {
		cm.Annotations[annIncarnation] = strconv.FormatInt(id, 10)
		cm.Annotations[annTTL] = s.ttl.String()
		return nil
	})
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	s.incarnation, s.renewed = id, start
	s.mu.Unlock()
	s.log.Info("granted lease", "lease", id, "ttl", s.ttl)
	return id, nil
}

// KeepAlive renews the member's lease (its record, and the leader Lease
// when it holds it) and returns the TTL: the lease lives that long from
// the moment the call started. ErrLeaseLost: the lease was not renewed for
// a TTL, or the leader Lease it held was taken over; the next Lease call
// grants a new one. ErrUnavailable: the renewal did not happen; the lease
// keeps running down.
func (s *Store) KeepAlive(ctx context.Context) (time.Duration, error) {
	const op = "keep lease alive"
	start := now()
	id := s.current()
	if id == 0 {
		return 0, fmt.Errorf("%s: %w: no lease granted", op, store.ErrLeaseLost)
	}
	inc := strconv.FormatInt(id, 10)
	err := s.updateMember(ctx, func(cm *corev1.ConfigMap) error {
		if cm.Annotations[annIncarnation] != inc {
			return fmt.Errorf("%w: the member record names lease %q", store.ErrLeaseLost, cm.Annotations[annIncarnation])
		}
		cm.Annotations[annRenew] = strconv.FormatInt(time.Now().UnixNano(), 10)
		return nil
	})
	if err == nil {
		err = s.updateLease(ctx, false, func(l *coordv1.Lease) error {
			if holder(l) != s.member {
				return errNoChange
			}
			if l.Annotations[annIncarnation] != inc {
				return errNoChange
			}
			t := metav1.NewMicroTime(time.Now())
			l.Spec.RenewTime = &t
			return nil
		})
		if errors.Is(err, errNoChange) {
			err = nil
		}
	}
	if err != nil {
		if errors.Is(err, store.ErrLeaseLost) {
			s.forget(id)
		}
		return 0, wrap(op, err)
	}
	s.mu.Lock()
	if s.incarnation == id {
		s.renewed = start
	}
	s.mu.Unlock()
	return s.ttl, nil
}

// Revoke ends the member's lease at once: the leader Lease is released if
// held, the status removed and the incarnation cleared from the member's
// record, so others see all of it gone without waiting a TTL.
func (s *Store) Revoke(ctx context.Context) error {
	s.mu.Lock()
	id := s.incarnation
	s.mu.Unlock()
	if id == 0 {
		return nil
	}
	if err := s.ReleaseLeader(ctx); err != nil {
		return wrap("revoke lease", err)
	}
	inc := strconv.FormatInt(id, 10)
	err := s.updateMember(ctx, func(cm *corev1.ConfigMap) error {
		if cm.Annotations[annIncarnation] != inc {
			return errNoChange
		}
		delete(cm.Annotations, annIncarnation)
		delete(cm.Data, keyStatus)
		return nil
	})
	if err != nil && !errors.Is(err, errNoChange) {
		return wrap("revoke lease", err)
	}
	s.forget(id)
	s.log.Info("revoked lease", "lease", id)
	return nil
}

// --- generic compare-and-swap on one object ---------------------------------

// errNoChange from a mutate function means "nothing to write": the update
// is skipped and the error returned to the caller, who decides what it
// means.
var errNoChange = errors.New("no change")

// nextSeq bumps the object's write counter and marks key as written at it.
func nextSeq(ann map[string]string, keys ...string) int64 {
	n, _ := strconv.ParseInt(ann[annSeq], 10, 64)
	n++
	ann[annSeq] = strconv.FormatInt(n, 10)
	for _, k := range keys {
		ann[annRevPrefix+k] = strconv.FormatInt(n, 10)
	}
	return n
}

// keyRev is the revision of key in an object: 0 when the key is absent.
func keyRev(ann map[string]string, present bool, key string) int64 {
	if !present {
		return 0
	}
	n, _ := strconv.ParseInt(ann[annRevPrefix+key], 10, 64)
	return max(n, 1)
}

// casOps are the API calls compareAndSwap makes for one object.
type casOps[T metav1.Object] struct {
	get func(context.Context) (T, error)
	// fresh makes the object when it is missing; nil: a missing object
	// stays missing and mutate is not called (errNoChange).
	fresh  func() T
	create func(context.Context, T) error
	update func(context.Context, T) error
}

// compareAndSwap reads an object (a fresh one when absent), lets mutate
// change it and writes it back under the API's compare-and-swap
// (resourceVersion), retrying when the object changed meanwhile.
func compareAndSwap[T metav1.Object](ctx context.Context, what string, ops casOps[T], mutate func(T) error) error {
	for range casAttempts {
		obj, err := ops.get(ctx)
		missing := apierrors.IsNotFound(err)
		if err != nil && !missing {
			return err
		}
		if missing {
			if ops.fresh == nil {
				return errNoChange
			}
			obj = ops.fresh()
		}
		if obj.GetAnnotations() == nil {
			obj.SetAnnotations(map[string]string{})
		}
		if err := mutate(obj); err != nil {
			return err
		}
		if missing {
			err = ops.create(ctx, obj)
		} else {
			err = ops.update(ctx, obj)
		}
		if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || (!missing && apierrors.IsNotFound(err)) {
			continue
		}
		return err
	}
	return fmt.Errorf("%w: %s kept changing (%d attempts)", store.ErrConflict, what, casAttempts)
}

// updateConfigMap is compareAndSwap on the named ConfigMap, created when
// absent.
func (s *Store) updateConfigMap(ctx context.Context, name, kind string, mutate func(*corev1.ConfigMap) error) error {
	api := s.cli.CoreV1().ConfigMaps(s.ns)
	return compareAndSwap(ctx, "configmap "+name, casOps[*corev1.ConfigMap]{
		get: func(ctx context.Context) (*corev1.ConfigMap, error) { return api.Get(ctx, name, metav1.GetOptions{}) },
		fresh: func() *corev1.ConfigMap {
			return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: s.ns, Labels: s.objectLabels(kind)}}
		},
		create: func(ctx context.Context, cm *corev1.ConfigMap) error {
			_, err := api.Create(ctx, cm, metav1.CreateOptions{})
			return err
		},
		update: func(ctx context.Context, cm *corev1.ConfigMap) error {
			_, err := api.Update(ctx, cm, metav1.UpdateOptions{})
			return err
		},
	}, func(cm *corev1.ConfigMap) error {
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		return mutate(cm)
	})
}

func (s *Store) updateMember(ctx context.Context, mutate func(*corev1.ConfigMap) error) error {
	return s.updateConfigMap(ctx, s.memberName(s.member), kindMember, mutate)
}

func (s *Store) updateConfig(ctx context.Context, mutate func(*corev1.ConfigMap) error) error {
	return s.updateConfigMap(ctx, s.configName(), kindConfig, mutate)
}

// updateLease is compareAndSwap on the leader Lease. With create false a
// missing Lease is left missing and mutate is not called (errNoChange).
func (s *Store) updateLease(ctx context.Context, create bool, mutate func(*coordv1.Lease) error) error {
	api := s.cli.CoordinationV1().Leases(s.ns)
	ops := casOps[*coordv1.Lease]{
		get: func(ctx context.Context) (*coordv1.Lease, error) {
			return api.Get(ctx, s.leaseName(), metav1.GetOptions{})
		},
		create: func(ctx context.Context, l *coordv1.Lease) error {
			_, err := api.Create(ctx, l, metav1.CreateOptions{})
			return err
		},
		update: func(ctx context.Context, l *coordv1.Lease) error {
			_, err := api.Update(ctx, l, metav1.UpdateOptions{})
			return err
		},
	}
	if create {
		ops.fresh = func() *coordv1.Lease {
			return &coordv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: s.leaseName(), Namespace: s.ns, Labels: s.objectLabels("")}}
		}
	}
	return compareAndSwap(ctx, "lease "+s.leaseName(), ops, mutate)
}

func holder(l *coordv1.Lease) string {
	if l == nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func leaseTTL(l *coordv1.Lease) time.Duration {
	if l.Spec.LeaseDurationSeconds == nil || *l.Spec.LeaseDurationSeconds <= 0 {
		return DefaultTTL
	}
	return time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
}

func transitions(l *coordv1.Lease) int64 {
	if l.Spec.LeaseTransitions == nil {
		return 0
	}
	return int64(*l.Spec.LeaseTransitions)
}

// leaderAlive judges the leader Lease, read by a response that arrived at
// at, on this process's clock.
func (s *Store) leaderAlive(l *coordv1.Lease, at time.Time) bool {
	return holder(l) != "" && s.alive("lease", l.ResourceVersion, leaseTTL(l), at)
}

// --- the leader -------------------------------------------------------------

// AcquireLeader takes the leader Lease for this member's lease (granted
// first if needed) when nobody holds it or its holder stopped renewing it
// for its TTL on this member's clock. It counts the acquisition in
// leaseTransitions. true: this member holds it afterwards (also when it
// already did); false: another member holds it, or won the race.
func (s *Store) AcquireLeader(ctx context.Context) (bool, error) {
	const op = "acquire leader key"
	id, err := s.ensureLease(ctx)
	if err != nil {
		return false, wrap(op, err)
	}
	inc := strconv.FormatInt(id, 10)
	mine := false
	err = s.updateLease(ctx, true, func(l *coordv1.Lease) error {
		h := holder(l)
		if h == s.member && l.Annotations[annIncarnation] == inc {
			mine = true
			return errNoChange
		}
		if l.ResourceVersion != "" && h != "" && s.leaderAlive(l, now()) {
			return errNoChange
		}
		t := metav1.NewMicroTime(time.Now())
		n := int32(transitions(l) + 1)
		d := ttlSeconds(s.ttl)
		l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.LeaseTransitions = &s.member, &d, &n
		l.Spec.AcquireTime, l.Spec.RenewTime = &t, &t
		l.Annotations[annIncarnation] = inc
		return nil
	})
	switch {
	case errors.Is(err, errNoChange):
		return mine, nil
	case apierrors.IsConflict(err), apierrors.IsAlreadyExists(err), errors.Is(err, store.ErrConflict):
		return false, nil // another member wrote the Lease first
	case err != nil:
		return false, wrap(op, err)
	}
	s.log.Info("acquired leader key", "lease", id)
	return true, nil
}

// ReleaseLeader clears the Lease's holder if it is this member under its
// current lease. It is not an error when the Lease is not ours.
func (s *Store) ReleaseLeader(ctx context.Context) error {
	s.mu.Lock()
	id := s.incarnation
	s.mu.Unlock()
	if id == 0 {
		return nil
	}
	inc := strconv.FormatInt(id, 10)
	return s.clearLeader(ctx, "release leader key", func(l *coordv1.Lease) error {
		if holder(l) != s.member || l.Annotations[annIncarnation] != inc {
			return errNoChange
		}
		return nil
	})
}

// clearLeader removes the Lease's holder when may allows (nil); errNoChange
// from may leaves the Lease alone without error.
func (s *Store) clearLeader(ctx context.Context, op string, may func(*coordv1.Lease) error, logArgs ...any) error {
	err := s.updateLease(ctx, false, func(l *coordv1.Lease) error {
		if err := may(l); err != nil {
			return err
		}
		l.Spec.HolderIdentity = nil
		delete(l.Annotations, annIncarnation)
		return nil
	})
	if errors.Is(err, errNoChange) {
		return nil
	}
	if err != nil {
		return wrap(op, err)
	}
	s.log.Info(op, logArgs...)
	return nil
}

// DeleteStaleLeader clears the Lease's holder only if the leader's revision
// (its transition count) is still rev, as read in a View. ErrConflict: the
// Lease was acquired again since.
func (s *Store) DeleteStaleLeader(ctx context.Context, rev int64) error {
	const op = "delete stale leader key"
	if rev <= 0 {
		return fmt.Errorf("%s: revision %d is not a key revision", op, rev)
	}
	return s.clearLeader(ctx, op, func(l *coordv1.Lease) error {
		if holder(l) == "" {
			return errNoChange
		}
		if t := transitions(l); t != rev {
			return fmt.Errorf("%w: the leader changed since revision %d (now %d)", store.ErrConflict, rev, t)
		}
		return nil
	}, "revision", rev)
}

// PutOptime records the primary's WAL position on the leader Lease, only
// while the Lease names this member. ErrConflict: we are not the leader.
func (s *Store) PutOptime(ctx context.Context, o cluster.Optime) error {
	const op = "put optime"
	if o.Leader == "" {
		o.Leader = s.member
	}
	b, err := json.Marshal(o)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	err = s.updateLease(ctx, false, func(l *coordv1.Lease) error {
		if holder(l) != s.member {
			return fmt.Errorf("%w: the leader key does not name %q", store.ErrConflict, s.member)
		}
		l.Annotations[annOptime] = string(b)
		return nil
	})
	if errors.Is(err, errNoChange) {
		return fmt.Errorf("%s: %w: there is no leader key", op, store.ErrConflict)
	}
	return wrap(op, err)
}

// PutSync replaces the synchronous replication record (kept on the leader
// Lease) only if it is still at revision rev (0: absent) and this member
// holds the Lease under its current lease. ErrConflict otherwise.
func (s *Store) PutSync(ctx context.Context, st cluster.SyncState, rev int64) error {
	const op = "put synchronous replication record"
	st.Leader = s.member
	if st.Members == nil {
		st.Members = []string{}
	}
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	id := s.current()
	if id == 0 {
		return fmt.Errorf("%s: %w: no lease", op, store.ErrConflict)
	}
	inc := strconv.FormatInt(id, 10)
	err = s.updateLease(ctx, false, func(l *coordv1.Lease) error {
		_, present := l.Annotations[annSync]
		if holder(l) != s.member || l.Annotations[annIncarnation] != inc || keyRev(l.Annotations, present, keySync) != rev {
			return fmt.Errorf("%w: the record changed or %q does not hold the leader key", store.ErrConflict, s.member)
		}
		l.Annotations[annSync] = string(b)
		nextSeq(l.Annotations, keySync)
		return nil
	})
	if errors.Is(err, errNoChange) {
		return fmt.Errorf("%s: %w: there is no leader key", op, store.ErrConflict)
	}
	return wrap(op, err)
}
