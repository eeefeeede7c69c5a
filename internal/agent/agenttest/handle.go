package agenttest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/store"
)

// Store is one member's handle on a StoreCluster: it implements the
// agent's Store (not the optional raft capability). Its errors wrap the
// store package's sentinels as the real adapters' do.
type Store struct {
	c     *StoreCluster
	name  string
	lease int64 // current lease; 0 = none
}

// LeaseID is the handle's current lease (0 = none).
func (s *Store) LeaseID() int64 {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	return s.lease
}

// hangCancelGrace is how long (real time) a hanging call waits for its
// context to be cancelled before it passes the clock to its deadline.
const hangCancelGrace = 100 * time.Millisecond

// op locks the cluster and fails when it is down or this member is cut
// off; the caller must unlock when err is nil.
func (s *Store) op(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w: %v", name, store.ErrUnavailable, err)
	}
	s.c.mu.Lock()
	s.c.comeBackLocked()
	if s.c.down || s.c.cut[s.name] {
		hang := s.c.hang[s.name]
		upAt, cut := s.c.upAt, s.c.cut[s.name]
		s.c.mu.Unlock()
		d, ok := ctx.Deadline()
		if !ok || !hang {
			return fmt.Errorf("%s: %w: no quorum reachable", name, store.ErrUnavailable)
		}
		// The call lasts until its deadline: remaining, on the clock too.
		remaining := time.Until(d)
		end := s.c.clock.Now() + remaining
		// A call made beside another (the agent's renewal during a
		// failsafe round) may be cancelled once that one answers: it
		// then passes no time.
		select {
		case <-ctx.Done():
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("%s: %w: %v", name, store.ErrUnavailable, ctx.Err())
			}
		case <-time.After(hangCancelGrace):
		}
		if upAt > 0 && !cut && upAt <= end {
			s.c.clock.Set(upAt) // waits for the election, then is served
			return s.opAfterHang(name)
		}
		s.c.clock.Set(end)
		return fmt.Errorf("%s: %w: no quorum reachable", name, store.ErrUnavailable)
	}
	s.c.expireLocked()
	return nil
}

// opAfterHang is op for a call that waited for the store to come back:
// its context may have ended in real time meanwhile, but not on the clock.
func (s *Store) opAfterHang(name string) error {
	s.c.mu.Lock()
	s.c.comeBackLocked()
	if s.c.down || s.c.cut[s.name] {
		s.c.mu.Unlock()
		return fmt.Errorf("%s: %w: no quorum reachable", name, store.ErrUnavailable)
	}
	s.c.expireLocked()
	return nil
}

func (s *Store) liveLocked() bool {
	_, ok := s.c.leases[s.lease]
	return s.lease != 0 && ok
}

// ensureLeaseLocked grants a lease if the handle has none, as the etcd
// adapter's ensureLease; a lease that expired is lost (ErrLeaseLost) and
// forgotten, so the next call grants a fresh one.
func (s *Store) ensureLeaseLocked(op string) (int64, error) {
	if s.lease == 0 {
		s.c.nextLease++
		s.lease = s.c.nextLease
		s.c.leases[s.lease] = s.c.clock.Now() + s.c.ttl
		return s.lease, nil
	}
	if !s.liveLocked() {
		s.lease = 0
		return 0, fmt.Errorf("%s: %w", op, store.ErrLeaseLost)
	}
	return s.lease, nil
}

func (s *Store) Load(ctx context.Context) (cluster.View, error) {
	if err := s.op(ctx, "load"); err != nil {
		return cluster.View{}, err
	}
	defer s.c.mu.Unlock()
	return s.c.viewLocked(), nil
}

// Watch wakes on changes of the leader, initialize, config, failover and
// history keys (coalesced), until ctx ends.
func (s *Store) Watch(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	s.c.mu.Lock()
	s.c.watchers[ch] = true
	s.c.mu.Unlock()
	go func() {
		<-ctx.Done()
		s.c.mu.Lock()
		delete(s.c.watchers, ch)
		s.c.mu.Unlock()
	}()
	return ch
}

func (s *Store) Lease(ctx context.Context) (int64, error) {
	if err := s.op(ctx, "grant lease"); err != nil {
		return 0, err
	}
	defer s.c.mu.Unlock()
	if s.lease != 0 && !s.liveLocked() {
		s.lease = 0
	}
	return s.ensureLeaseLocked("grant lease")
}

func (s *Store) KeepAlive(ctx context.Context) (time.Duration, error) {
	const op = "keep lease alive"
	if err := s.op(ctx, op); err != nil {
		return 0, err
	}
	defer s.c.mu.Unlock()
	if !s.liveLocked() {
		s.lease = 0
		return 0, fmt.Errorf("%s: %w", op, store.ErrLeaseLost)
	}
	s.c.leases[s.lease] = s.c.clock.Now() + s.c.ttl
	return s.c.ttl, nil
}

func (s *Store) Revoke(ctx context.Context) error {
	if err := s.op(ctx, "revoke lease"); err != nil {
		return err
	}
	defer s.c.mu.Unlock()
	if s.liveLocked() {
		s.c.dropLeaseLocked(s.lease)
	}
	s.lease = 0
	return nil
}

func (s *Store) AcquireLeader(ctx context.Context) (bool, error) {
	const op = "acquire leader key"
	if err := s.op(ctx, op); err != nil {
		return false, err
	}
	defer s.c.mu.Unlock()
	id, err := s.ensureLeaseLocked(op)
	if err != nil {
		return false, err
	}
	if l := s.c.leader; l != nil {
		return l.Name == s.name && l.LeaseID == id, nil
	}
	s.c.rev++
	s.c.leader = &cluster.Leader{Name: s.name, LeaseID: id, Revision: s.c.rev}
	s.c.notifyLocked()
	return true, nil
}

func (s *Store) ReleaseLeader(ctx context.Context) error {
	if err := s.op(ctx, "release leader key"); err != nil {
		return err
	}
	released := false
	if l := s.c.leader; l != nil && l.Name == s.name && l.LeaseID == s.lease && s.lease != 0 {
		s.c.leader, released = nil, true
		s.c.rev++
		s.c.notifyLocked()
	}
	hook := s.c.OnRelease
	s.c.mu.Unlock()
	if released && hook != nil {
		hook(s.name)
	}
	return nil
}

func (s *Store) DeleteStaleLeader(ctx context.Context, rev int64) error {
	const op = "delete stale leader key"
	if err := s.op(ctx, op); err != nil {
		return err
	}
	defer s.c.mu.Unlock()
	l := s.c.leader
	switch {
	case l == nil:
		return nil
	case l.Revision != rev:
		return fmt.Errorf("%s: %w: key changed since revision %d", op, store.ErrConflict, rev)
	}
	s.c.leader = nil
	s.c.rev++
	s.c.notifyLocked()
	return nil
}

func (s *Store) ClaimInit(ctx context.Context) (bool, error) {
	const op = "claim bootstrap"
	if err := s.op(ctx, op); err != nil {
		return false, err
	}
	defer s.c.mu.Unlock()
	id, err := s.ensureLeaseLocked(op)
	if err != nil {
		return false, err
	}
	if s.c.init.Present {
		return false, nil
	}
	s.c.rev++
	s.c.init = cluster.InitState{Present: true, Bootstrapper: s.name, Revision: s.c.rev}
	s.c.initLease = id
	s.c.notifyLocked()
	return true, nil
}

func (s *Store) FinishInit(ctx context.Context, sysid string) error {
	const op = "finish bootstrap"
	if err := s.op(ctx, op); err != nil {
		return err
	}
	defer s.c.mu.Unlock()
	if s.c.init.Bootstrapper != s.name {
		return fmt.Errorf("%s: %w: the claim is not %s's", op, store.ErrConflict, s.name)
	}
	s.c.rev++
	s.c.init = cluster.InitState{Present: true, SystemID: sysid, Revision: s.c.rev}
	s.c.initLease = 0
	s.c.notifyLocked()
	return nil
}

func (s *Store) AbortInit(ctx context.Context) error {
	if err := s.op(ctx, "abort bootstrap"); err != nil {
		return err
	}
	defer s.c.mu.Unlock()
	if s.c.init.Bootstrapper == s.name {
		s.c.init, s.c.initLease = cluster.InitState{}, 0
		s.c.rev++
		s.c.notifyLocked()
	}
	return nil
}

func (s *Store) PutConfigIfAbsent(ctx context.Context, cfg cluster.Config) error {
	if err := s.op(ctx, "put cluster config"); err != nil {
		return err
	}
	defer s.c.mu.Unlock()
	if s.c.config == nil {
		s.c.rev++
		s.c.config, s.c.configRev = &cfg, s.c.rev
		s.c.notifyLocked()
	}
	return nil
}

func (s *Store) PutConfig(ctx context.Context, cfg cluster.Config, rev int64) error {
	const op = "put cluster config"
	if err := s.op(ctx, op); err != nil {
		return err
	}
	defer s.c.mu.Unlock()
	if rev != s.c.configRev {
		return fmt.Errorf("%s: %w", op, store.ErrConflict)
	}
	s.c.rev++
	s.c.config, s.c.configRev = &cfg, s.c.rev
	s.c.notifyLocked()
	return nil
}

func (s *Store) Register(ctx context.Context, m cluster.MemberInfo) error {
	const op = "register member"
	if err := store.CheckName(op, s.name, &m.Name); err != nil {
		return err
	}
	if err := s.op(ctx, op); err != nil {
		return err
	}
	defer s.c.mu.Unlock()
	s.c.rev++
	s.c.members[m.Name] = m
	return nil
}

func (s *Store) PutStatus(ctx context.Context, st cluster.MemberStatus) error {
	const op = "put member status"
	if err := store.CheckName(op, s.name, &st.Name); err != nil {
		return err
	}
	if err := s.op(ctx, op); err != nil {
		return err
	}
	defer s.c.mu.Unlock()
	id, err := s.ensureLeaseLocked(op)
	if err != nil {
		return err
	}
	s.c.rev++
	s.c.statuses[s.name], s.c.statusLease[s.name] = st, id
	return nil
}

func (s *Store) DeleteStatus(ctx context.Context) error {
	if err := s.op(ctx, "delete member status"); err != nil {
		return err
	}
	defer s.c.mu.Unlock()
	delete(s.c.statuses, s.name)
	delete(s.c.statusLease, s.name)
	s.c.rev++
	return nil
}

func (s *Store) PutOptime(ctx context.Context, o cluster.Optime) error {
	if err := s.op(ctx, "put optime"); err != nil {
		return err
	}
	defer s.c.mu.Unlock()
	s.c.rev++
	s.c.optime = &o
	return nil
}

// PutSync writes the record only while this member holds the leader key
// under its lease, compare-and-swap on rev (0 = none yet).
func (s *Store) PutSync(ctx context.Context, sy cluster.SyncState, rev int64) error {
	const op = "put synchronous replication record"
	if err := s.op(ctx, op); err != nil {
		return err
	}
	defer s.c.mu.Unlock()
	l := s.c.leader
	have := int64(0)
	if s.c.sync != nil {
		have = s.c.sync.Revision
	}
	if l == nil || l.Name != s.name || l.LeaseID != s.lease || !s.liveLocked() || have != rev {
		return fmt.Errorf("%s: %w: the record changed or %q does not hold the leader key", op, store.ErrConflict, s.name)
	}
	s.c.rev++
	sy.Leader, sy.Members, sy.Revision = s.name, slices.Clone(sy.Members), s.c.rev
	if sy.Members == nil {
		sy.Members = []string{}
	}
	s.c.sync = &sy
	return nil
}

func (s *Store) AppendHistory(ctx context.Context, h cluster.HistoryEntry) error {
	if err := s.op(ctx, "append history"); err != nil {
		return err
	}
	defer s.c.mu.Unlock()
	s.c.rev++
	s.c.history = append(s.c.history, h)
	s.c.notifyLocked()
	return nil
}

func (s *Store) RecordDiscard(ctx context.Context, divergedAt cluster.LSN, d cluster.Discard) error {
	const op = "record discarded WAL"
	if err := s.op(ctx, op); err != nil {
		return err
	}
	defer s.c.mu.Unlock()
	h, err := cluster.AddDiscard(slices.Clone(s.c.history), divergedAt, d)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	s.c.rev++
	s.c.history = h
	s.c.notifyLocked()
	return nil
}

func (s *Store) PutSwitchover(ctx context.Context, sw cluster.Switchover) (bool, error) {
	if err := s.op(ctx, "put switchover"); err != nil {
		return false, err
	}
	defer s.c.mu.Unlock()
	if s.c.switchover != nil {
		return false, nil
	}
	s.c.rev++
	sw.Revision = s.c.rev
	s.c.switchover = &sw
	s.c.notifyLocked()
	return true, nil
}

func (s *Store) DeleteSwitchover(ctx context.Context, rev int64) error {
	const op = "delete switchover"
	if err := s.op(ctx, op); err != nil {
		return err
	}
	defer s.c.mu.Unlock()
	sw := s.c.switchover
	switch {
	case sw == nil:
		return nil
	case sw.Revision != rev:
		return fmt.Errorf("%s: %w", op, store.ErrConflict)
	}
	s.c.switchover = nil
	s.c.rev++
	s.c.notifyLocked()
	return nil
}
