package kubestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/store"
)

// --- members ----------------------------------------------------------------

// Register writes the member's registration (it outlives the process).
func (s *Store) Register(ctx context.Context, info cluster.MemberInfo) error {
	const op = "register member"
	if err := store.CheckName(op, s.member, &info.Name); err != nil {
		return err
	}
	b, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return wrap(op, s.updateMember(ctx, func(cm *corev1.ConfigMap) error {
		if cm.Data[keyMember] == string(b) {
			return nil // rewriting it renews the record, as any write does
		}
		cm.Data[keyMember] = string(b)
		return nil
	}))
}

// PutStatus writes the member's status under its lease (granted first if
// needed): readers drop it once the record is not renewed for a TTL.
func (s *Store) PutStatus(ctx context.Context, st cluster.MemberStatus) error {
	const op = "put member status"
	if err := store.CheckName(op, s.member, &st.Name); err != nil {
		return err
	}
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	id, err := s.ensureLease(ctx)
	if err != nil {
		return wrap(op, err)
	}
	inc := strconv.FormatInt(id, 10)
	err = s.updateMember(ctx, func(cm *corev1.ConfigMap) error {
		if cm.Annotations[annIncarnation] != inc {
			return fmt.Errorf("%w: the member record names lease %q", store.ErrLeaseLost, cm.Annotations[annIncarnation])
		}
		cm.Data[keyStatus] = string(b)
		return nil
	})
	if errors.Is(err, store.ErrLeaseLost) {
		s.forget(id)
	}
	return wrap(op, err)
}

// DeleteStatus removes the member's status report.
func (s *Store) DeleteStatus(ctx context.Context) error {
	err := s.updateMember(ctx, func(cm *corev1.ConfigMap) error {
		if _, ok := cm.Data[keyStatus]; !ok {
			return errNoChange
		}
		delete(cm.Data, keyStatus)
		return nil
	})
	if errors.Is(err, errNoChange) {
		return nil
	}
	return wrap("delete member status", err)
}

// memberAlive judges a member record on this process's clock: it carries
// an incarnation and was renewed within its TTL.
func (s *Store) memberAlive(cm *corev1.ConfigMap, at time.Time) bool {
	if cm.Annotations[annIncarnation] == "" {
		return false
	}
	ttl, err := time.ParseDuration(cm.Annotations[annTTL])
	if err != nil || ttl <= 0 {
		ttl = DefaultTTL
	}
	return s.alive("member/"+cm.Name, cm.ResourceVersion, ttl, at)
}

// --- the bootstrap claim ----------------------------------------------------

// claimAlive reports whether the bootstrap claim in the config object is
// held by a live incarnation of its claimant. members, when not nil, are
// the member records already read; otherwise the claimant's is fetched.
func (s *Store) claimAlive(ctx context.Context, cfg *corev1.ConfigMap, members map[string]*corev1.ConfigMap, at time.Time) (bool, error) {
	who, ok := strings.CutPrefix(cfg.Data[keyInit], store.BootstrapPrefix)
	if !ok {
		return true, nil // finished: forever
	}
	m, found := members[who]
	if members == nil {
		got, err := s.cli.CoreV1().ConfigMaps(s.ns).Get(ctx, s.memberName(who), metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return false, err
		}
		m, found, at = got, err == nil, now()
	}
	if !found {
		return false, nil
	}
	return m.Annotations[annIncarnation] == cfg.Annotations[annInitBy] && s.memberAlive(m, at), nil
}

// ClaimInit claims the bootstrap for this member's lease if nobody has
// claimed or finished it, or the claimant's lease died. Exactly one of
// racing members gets true.
func (s *Store) ClaimInit(ctx context.Context) (bool, error) {
	const op = "claim bootstrap"
	id, err := s.ensureLease(ctx)
	if err != nil {
		return false, wrap(op, err)
	}
	err = s.updateConfig(ctx, func(cm *corev1.ConfigMap) error {
		if _, ok := cm.Data[keyInit]; ok {
			live, err := s.claimAlive(ctx, cm, nil, time.Time{})
			if err != nil {
				return err
			}
			if live {
				return errNoChange
			}
		}
		cm.Data[keyInit] = store.BootstrapPrefix + s.member
		cm.Annotations[annInitBy] = strconv.FormatInt(id, 10)
		nextSeq(cm.Annotations, keyInit)
		return nil
	})
	switch {
	case errors.Is(err, errNoChange):
		return false, nil
	case err != nil:
		return false, wrap(op, err)
	}
	s.log.Info("claimed bootstrap")
	return true, nil
}

// FinishInit replaces this member's bootstrap claim with the system
// identifier, forever. ErrConflict: the claim is no longer ours.
func (s *Store) FinishInit(ctx context.Context, sysid string) error {
	const op = "finish bootstrap"
	if sysid == "" || strings.HasPrefix(sysid, store.BootstrapPrefix) {
		return fmt.Errorf("%s: invalid system identifier %q", op, sysid)
	}
	err := s.updateConfig(ctx, func(cm *corev1.ConfigMap) error {
		if cm.Data[keyInit] != store.BootstrapPrefix+s.member {
			return fmt.Errorf("%w: the initialize key no longer says %q", store.ErrConflict, store.BootstrapPrefix+s.member)
		}
		cm.Data[keyInit] = sysid
		delete(cm.Annotations, annInitBy)
		nextSeq(cm.Annotations, keyInit)
		return nil
	})
	if err != nil {
		return wrap(op, err)
	}
	s.log.Info("finished bootstrap", "system_id", sysid)
	return nil
}

// AbortInit deletes this member's bootstrap claim; a claim that is not
// ours, or none, is left alone.
func (s *Store) AbortInit(ctx context.Context) error {
	err := s.updateConfig(ctx, func(cm *corev1.ConfigMap) error {
		if cm.Data[keyInit] != store.BootstrapPrefix+s.member {
			return errNoChange
		}
		delete(cm.Data, keyInit)
		delete(cm.Annotations, annInitBy)
		nextSeq(cm.Annotations)
		return nil
	})
	if errors.Is(err, errNoChange) {
		return nil
	}
	if err != nil {
		return wrap("abort bootstrap", err)
	}
	s.log.Info("aborted bootstrap")
	return nil
}

// --- history, config, switchover ------------------------------------------------

// AppendHistory appends one promotion record, keeping the last 100. An
// unreadable stored history is replaced (Load ignores it anyway).
func (s *Store) AppendHistory(ctx context.Context, h cluster.HistoryEntry) error {
	return s.editHistory(ctx, "append history", func(hist []cluster.HistoryEntry) ([]cluster.HistoryEntry, error) {
		return append(hist, h), nil
	})
}

// RecordDiscard records on the history entry whose timeline branched off
// d.Timeline at divergedAt the WAL a former primary's rewind threw away
// (cluster.AddDiscard). An error wrapping cluster.ErrNoBranch: no entry
// branches there; nothing was written.
func (s *Store) RecordDiscard(ctx context.Context, divergedAt cluster.LSN, d cluster.Discard) error {
	return s.editHistory(ctx, "record discarded WAL", func(hist []cluster.HistoryEntry) ([]cluster.HistoryEntry, error) {
		return cluster.AddDiscard(hist, divergedAt, d)
	})
}

// editHistory replaces the stored history with edit's result, keeping the
// last maxHistory entries; an error from edit aborts with nothing written.
func (s *Store) editHistory(ctx context.Context, op string, edit func([]cluster.HistoryEntry) ([]cluster.HistoryEntry, error)) error {
	return wrap(op, s.updateConfig(ctx, func(cm *corev1.ConfigMap) error {
		var hist []cluster.HistoryEntry
		if raw, ok := cm.Data[keyHistory]; ok {
			if err := json.Unmarshal([]byte(raw), &hist); err != nil {
				s.log.Warn("replacing unreadable history", "configmap", cm.Name, "error", err)
				hist = nil
			}
		}
		hist, err := edit(hist)
		if err != nil {
			return err
		}
		if len(hist) > maxHistory {
			hist = hist[len(hist)-maxHistory:]
		}
		b, err := json.Marshal(hist)
		if err != nil {
			return err
		}
		cm.Data[keyHistory] = string(b)
		nextSeq(cm.Annotations, keyHistory)
		return nil
	}))
}

// PutConfigIfAbsent writes the cluster configuration unless one is stored.
func (s *Store) PutConfigIfAbsent(ctx context.Context, cfg cluster.Config) error {
	const op = "seed cluster config"
	b, err := store.EncodeConfig(cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	err = s.updateConfig(ctx, func(cm *corev1.ConfigMap) error {
		if _, ok := cm.Data[keyConfig]; ok {
			return errNoChange
		}
		cm.Data[keyConfig] = string(b)
		nextSeq(cm.Annotations, keyConfig)
		return nil
	})
	if errors.Is(err, errNoChange) {
		return nil
	}
	if err != nil {
		return wrap(op, err)
	}
	s.log.Info("stored cluster config")
	return nil
}

// PutConfig replaces the cluster configuration if it is still at revision
// rev (0: none must exist). ErrConflict: it changed meanwhile.
func (s *Store) PutConfig(ctx context.Context, cfg cluster.Config, rev int64) error {
	const op = "put cluster config"
	b, err := store.EncodeConfig(cfg)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return wrap(op, s.updateConfig(ctx, func(cm *corev1.ConfigMap) error {
		_, present := cm.Data[keyConfig]
		if r := keyRev(cm.Annotations, present, keyConfig); r != rev {
			return fmt.Errorf("%w: config is no longer at revision %d", store.ErrConflict, rev)
		}
		cm.Data[keyConfig] = string(b)
		nextSeq(cm.Annotations, keyConfig)
		return nil
	}))
}

// GetConfig reads the cluster configuration and its revision (nil, 0 when
// none is stored). An unreadable config is an error, returned with its
// revision so PutConfig can still overwrite it.
func (s *Store) GetConfig(ctx context.Context) (*cluster.Config, int64, error) {
	const op = "get cluster config"
	cm, err := s.cli.CoreV1().ConfigMaps(s.ns).Get(ctx, s.configName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, wrap(op, err)
	}
	raw, ok := cm.Data[keyConfig]
	if !ok {
		return nil, 0, nil
	}
	rev := keyRev(cm.Annotations, true, keyConfig)
	c, err := store.DecodeConfig([]byte(raw))
	if err != nil {
		return nil, rev, fmt.Errorf("%s: %w", op, err)
	}
	return &c, rev, nil
}

// PutSwitchover records a switchover or failover request if none is
// pending. false: another request is pending.
func (s *Store) PutSwitchover(ctx context.Context, sw cluster.Switchover) (bool, error) {
	const op = "request switchover"
	b, err := json.Marshal(sw)
	if err != nil {
		return false, fmt.Errorf("%s: %w", op, err)
	}
	err = s.updateConfig(ctx, func(cm *corev1.ConfigMap) error {
		if _, ok := cm.Data[keyFailover]; ok {
			return errNoChange
		}
		cm.Data[keyFailover] = string(b)
		nextSeq(cm.Annotations, keyFailover)
		return nil
	})
	if errors.Is(err, errNoChange) {
		return false, nil
	}
	if err != nil {
		return false, wrap(op, err)
	}
	return true, nil
}

// DeleteSwitchover removes the pending request if its revision is still
// rev (0: whatever is there). A request already gone is not an error.
func (s *Store) DeleteSwitchover(ctx context.Context, rev int64) error {
	err := s.updateConfig(ctx, func(cm *corev1.ConfigMap) error {
		_, present := cm.Data[keyFailover]
		if !present || (rev != 0 && keyRev(cm.Annotations, present, keyFailover) != rev) {
			return errNoChange
		}
		delete(cm.Data, keyFailover)
		nextSeq(cm.Annotations)
		return nil
	})
	if errors.Is(err, errNoChange) {
		return nil
	}
	return wrap("clear switchover", err)
}

// MoveLeaderAway is etcd's raft leadership transfer; the Kubernetes API
// has no leader of ours to move, so it does nothing.
func (s *Store) MoveLeaderAway(context.Context, string) error { return nil }

// --- the view -------------------------------------------------------------------

// Load reads the leader Lease and every object of the cluster (two
// requests) and judges the renewable records on this process's clock. An
// unreadable record is left out and logged. ErrUnavailable: the API server
// did not answer.
func (s *Store) Load(ctx context.Context) (cluster.View, error) {
	const op = "load cluster view"
	l, err := s.cli.CoordinationV1().Leases(s.ns).Get(ctx, s.leaseName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l, err = nil, nil
	}
	if err != nil {
		return cluster.View{}, wrap(op, err)
	}
	list, err := s.cli.CoreV1().ConfigMaps(s.ns).List(ctx, metav1.ListOptions{LabelSelector: LabelCluster + "=" + s.cl})
	if err != nil {
		return cluster.View{}, wrap(op, err)
	}
	// One instant for every judgement of this view, taken after both
	// responses arrived: a leader and a status renewed by the same
	// keepalive die in the same view.
	at := now()
	v := cluster.View{Members: map[string]cluster.MemberInfo{}, Statuses: map[string]cluster.MemberStatus{}}
	bad := func(obj, key string, err error) {
		s.log.Warn("skipping unreadable record", "object", obj, "key", key, "error", err)
	}
	if l != nil {
		s.loadLease(l, at, &v, bad)
	}
	members := map[string]*corev1.ConfigMap{}
	var cfg *corev1.ConfigMap
	for i := range list.Items {
		cm := &list.Items[i]
		switch {
		case cm.Name == s.configName() && cm.Labels[labelKind] == kindConfig:
			cfg = cm
		case cm.Labels[labelKind] == kindMember && strings.HasPrefix(cm.Name, s.cl+"-member-"):
			members[strings.TrimPrefix(cm.Name, s.cl+"-member-")] = cm
		}
	}
	for name, cm := range members {
		if raw, ok := cm.Data[keyMember]; ok {
			var info cluster.MemberInfo
			if err := json.Unmarshal([]byte(raw), &info); err != nil {
				bad(cm.Name, keyMember, err)
			} else {
				info.Name = name
				v.Members[name] = info
			}
		}
		raw, ok := cm.Data[keyStatus]
		if !ok || !s.memberAlive(cm, at) {
			continue
		}
		var st cluster.MemberStatus
		if err := json.Unmarshal([]byte(raw), &st); err != nil {
			bad(cm.Name, keyStatus, err)
			continue
		}
		st.Name = name
		v.Statuses[name] = st
	}
	if cfg != nil {
		if err := s.loadConfig(ctx, cfg, members, at, &v, bad); err != nil {
			return cluster.View{}, wrap(op, err)
		}
	}
	return v, nil
}

func (s *Store) loadLease(l *coordv1.Lease, at time.Time, v *cluster.View, bad func(obj, key string, err error)) {
	if s.leaderAlive(l, at) {
		id, _ := strconv.ParseInt(l.Annotations[annIncarnation], 10, 64)
		v.Leader = &cluster.Leader{Name: holder(l), LeaseID: id, Revision: transitions(l)}
	}
	if raw, ok := l.Annotations[annOptime]; ok {
		var o cluster.Optime
		if err := json.Unmarshal([]byte(raw), &o); err != nil {
			bad(l.Name, annOptime, err)
		} else {
			v.Optime = &o
		}
	}
	if raw, ok := l.Annotations[annSync]; ok {
		var st cluster.SyncState
		if err := json.Unmarshal([]byte(raw), &st); err != nil {
			bad(l.Name, annSync, err)
		} else {
			st.Revision = keyRev(l.Annotations, true, keySync)
			v.Sync = &st
		}
	}
}

func (s *Store) loadConfig(ctx context.Context, cm *corev1.ConfigMap, members map[string]*corev1.ConfigMap, at time.Time, v *cluster.View, bad func(obj, key string, err error)) error {
	if raw, ok := cm.Data[keyInit]; ok {
		live, err := s.claimAlive(ctx, cm, members, at)
		if err != nil {
			return err
		}
		if live {
			v.Init = store.ParseInit(raw, keyRev(cm.Annotations, true, keyInit))
		}
	}
	if raw, ok := cm.Data[keyHistory]; ok {
		if err := json.Unmarshal([]byte(raw), &v.History); err != nil {
			bad(cm.Name, keyHistory, err)
			v.History = nil
		}
	}
	if raw, ok := cm.Data[keyConfig]; ok {
		c, err := store.DecodeConfig([]byte(raw))
		if err != nil {
			bad(cm.Name, keyConfig, err)
		} else {
			v.Config = &c
			v.ConfigRevision = keyRev(cm.Annotations, true, keyConfig)
		}
	}
	if raw, ok := cm.Data[keyFailover]; ok {
		var sw cluster.Switchover
		if err := json.Unmarshal([]byte(raw), &sw); err != nil {
			bad(cm.Name, keyFailover, err)
		} else {
			sw.Revision = keyRev(cm.Annotations, true, keyFailover)
			v.Switchover = &sw
		}
	}
	return nil
}
