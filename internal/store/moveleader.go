package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// candidateTimeout bounds the status probe of each transferee candidate.
const candidateTimeout = time.Second

// MoveLeaderAway transfers etcd raft leadership away from the etcd member
// serving localEndpoint, if that member is the raft leader; otherwise (or
// when no other started voting member exists) it does nothing.
//
// The agent holding the PostgreSQL leader key calls it so that losing its
// host does not also lose the etcd raft leader: a newly elected raft leader
// extends every lease by a full TTL, so the dead primary's leader key would
// outlive it by up to another TTL and delay failover.
//
// The transferee is the responsive voting member with the most raft log
// applied. It blocks until the transfer completed or ctx expired; allow at
// least one election timeout. ErrUnavailable: the transfer did not happen in
// time; it is safe to call again.
func (e *Etcd) MoveLeaderAway(ctx context.Context, localEndpoint string) error {
	const op = "move raft leader away"
	st, err := e.cli.Status(ctx, localEndpoint)
	if err != nil {
		return wrap(op, fmt.Errorf("status of %s: %w", localEndpoint, err))
	}
	self := st.Header.MemberId
	if st.Leader != self {
		return nil
	}
	ml, err := e.cli.MemberList(ctx)
	if err != nil {
		return wrap(op, fmt.Errorf("list members: %w", err))
	}
	// Ask every candidate at once, each bounded, so one dead host cannot
	// use up the caller's deadline.
	type answer struct {
		id      uint64
		applied uint64
	}
	answers := make(chan answer, len(ml.Members))
	var wg sync.WaitGroup
	for _, m := range ml.Members {
		if m.ID == self || m.IsLearner || m.Name == "" || len(m.ClientURLs) == 0 {
			continue // a member with no name has never started
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, candidateTimeout)
			defer cancel()
			s, err := e.cli.Status(sctx, m.ClientURLs[0])
			if err != nil {
				e.log.Debug("transferee candidate did not answer", "member", m.Name, "error", err)
				return
			}
			answers <- answer{m.ID, s.RaftAppliedIndex}
		}()
	}
	wg.Wait()
	close(answers)
	var (
		target  uint64
		applied uint64
		found   bool
	)
	for a := range answers {
		if !found || a.applied > applied {
			target, applied, found = a.id, a.applied, true
		}
	}
	if !found {
		if len(ml.Members) > 1 {
			return fmt.Errorf("%s: %w: no other voting member answered", op, ErrUnavailable)
		}
		return nil // a single-member store has nowhere to move to
	}
	// MoveLeader must be served by the leader itself, so talk to it alone.
	cli, err := clientv3.New(clientConfig([]string{localEndpoint}, e.dialTimeout))
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer cli.Close()
	if _, err := cli.MoveLeader(ctx, target); err != nil {
		if errors.Is(err, rpctypes.ErrNotLeader) {
			return nil // leadership moved on by itself meanwhile
		}
		return wrap(op, fmt.Errorf("transfer to %x: %w", target, err))
	}
	e.log.Info("moved raft leadership away", "from", fmt.Sprintf("%x", self), "to", fmt.Sprintf("%x", target))
	return nil
}
