package backup

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/ctl"
)

// Timing of the leader's backup schedule.
const (
	// scheduleInterval is how often the leader judges the schedule.
	scheduleInterval = 15 * time.Second
	// scheduleRetry is how long after a scheduled backup failed (to start,
	// or on its member) the leader tries again.
	scheduleRetry = time.Minute
	// peerTimeout bounds one request to another member's API.
	peerTimeout = 30 * time.Second
)

// ScheduleStatus is the backup schedule as GET /backups reports it.
type ScheduleStatus struct {
	// Spec is the cluster's backup_schedule.
	Spec string `json:"spec"`
	// Due is the type due now ("" when none); Next when the next is due.
	Due  string    `json:"due,omitempty"`
	Next time.Time `json:"next"`
}

// scheduleStatus judges the cluster's schedule against st (nil when
// nothing is scheduled).
func scheduleStatus(cfg *cluster.Config, st Stanza, now time.Time) *ScheduleStatus {
	if cfg == nil {
		return nil
	}
	s := cfg.Schedule()
	if s.IsZero() {
		return nil
	}
	typ, next := Due(s, st, now)
	return &ScheduleStatus{Spec: s.String(), Due: typ, Next: next.UTC()}
}

// runSchedule takes the scheduled backups while this member leads, until
// ctx ends.
func (m *Member) runSchedule(ctx context.Context) {
	t := time.NewTicker(scheduleInterval)
	defer t.Stop()
	for {
		if err := m.scheduleOnce(ctx); err != nil {
			m.log.Warn("backup schedule", "err", err)
			m.mu.Lock()
			m.scheduleRetryAt = time.Now().Add(scheduleRetry)
			m.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// scheduleOnce starts the backup the schedule says is due, if any, on the
// member ctl backup would choose (a streaming replica, else the primary),
// unless a backup runs on any member: never two at once. What is due is
// read from the repository (Due), so a new leader continues the schedule.
func (m *Member) scheduleOnce(ctx context.Context) error {
	m.mu.Lock()
	ready := m.leading && m.stanzaOK && !time.Now().Before(m.scheduleRetryAt)
	m.mu.Unlock()
	if !ready {
		return nil
	}
	v, err := m.o.Load(ctx)
	if err != nil {
		return fmt.Errorf("read the cluster: %w", err)
	}
	if v.Config == nil || v.Config.Schedule().IsZero() {
		return nil
	}
	ic, cancel := context.WithTimeout(ctx, infoTimeout)
	st, err := m.tool.Info(ic)
	cancel()
	if err != nil {
		return err
	}
	typ, _ := Due(v.Config.Schedule(), st, time.Now())
	if typ == "" {
		return nil
	}
	if busy, err := m.backupBusy(ctx, v); err != nil || busy != "" {
		if err == nil {
			m.log.Debug("scheduled backup waits", "why", busy)
		}
		return err
	}
	member, standby, skipped, err := ctl.ExplainBackupSource(v)
	if err != nil {
		return err
	}
	c, err := m.peer(v, member)
	if err != nil {
		return err
	}
	defer c.Close()
	var job Job
	sc, cancel := context.WithTimeout(ctx, peerTimeout)
	err = c.StartBackup(sc, typ, &job)
	cancel()
	if err != nil {
		return fmt.Errorf("start a scheduled %s backup on %s: %w", typ, member, err)
	}
	if standby {
		m.log.Info("scheduled backup started", "type", typ, "on", member, "from_standby", standby, "schedule", v.Config.Schedule().String())
	} else {
		m.log.Info("scheduled backup started", "type", typ, "on", member, "from_standby", standby, "schedule", v.Config.Schedule().String(),
			"no_replica", ctl.SkippedText(skipped))
	}
	return nil
}

// backupBusy says why no scheduled backup may start now ("" = it may): a
// backup runs on a member, or one failed there less than scheduleRetry
// ago.
func (m *Member) backupBusy(ctx context.Context, v cluster.View) (string, error) {
	for name, info := range v.Members {
		if info.Witness || info.APIURL == "" {
			continue
		}
		if _, live := v.Statuses[name]; !live {
			continue
		}
		c, err := m.peer(v, name)
		if err != nil {
			return "", err
		}
		var l List
		lc, cancel := context.WithTimeout(ctx, peerTimeout)
		err = c.Backups(lc, &l)
		cancel()
		c.Close()
		if err != nil {
			return "", fmt.Errorf("ask %s whether a backup runs: %w", name, err)
		}
		switch j := l.Job; {
		case j == nil:
		case j.Running:
			return fmt.Sprintf("a %s backup runs on %s", orDefault(j.Type), name), nil
		case j.Error != "" && time.Since(j.Finished) < scheduleRetry:
			return fmt.Sprintf("a backup failed on %s at %s", name, j.Finished.Format(time.RFC3339)), nil
		}
	}
	return "", nil
}

// peer is a client of member's API.
func (m *Member) peer(v cluster.View, member string) (*api.Client, error) {
	info, ok := v.Members[member]
	if !ok || info.APIURL == "" {
		return nil, errors.New("member " + member + " has no registered API address")
	}
	o := m.o.Peer
	o.Timeout = peerTimeout
	return api.NewClient(info.APIURL, o)
}

func orDefault(typ string) string {
	if typ == "" {
		return "default"
	}
	return typ
}
