package agent

import (
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/decide"
)

// A fence must have stopped every write fenceLead before the lease could
// expire, and always gets at least minFenceBudget.
func TestFenceBudget(t *testing.T) {
	now := time.Minute
	for _, tc := range []struct {
		name  string
		lease decide.Lease
		want  time.Duration
	}{
		{"at the fence point", decide.Lease{Held: true, Deadline: now + time.Second}, time.Second - fenceLead},
		{"well before", decide.Lease{Held: true, Deadline: now + 4*time.Second}, 4*time.Second - fenceLead},
		{"close to the deadline", decide.Lease{Held: true, Deadline: now + 250*time.Millisecond}, minFenceBudget},
		{"past the deadline", decide.Lease{Held: true, Deadline: now - time.Second}, minFenceBudget},
		{"no lease", decide.Lease{Deadline: now + 4*time.Second}, minFenceBudget},
	} {
		if got := fenceBudget(tc.lease, now); got != tc.want {
			t.Errorf("%s: fenceBudget = %s, want %s", tc.name, got, tc.want)
		}
	}
}

// Raft leadership moves at most once per raftMoveInterval on the agent's
// clock, the first raftMoveInterval after the agent started.
func TestRaftMoveLimiter(t *testing.T) {
	var l raftMoveLimiter
	for _, step := range []struct {
		at   time.Duration
		want bool
	}{
		{0, false},
		{raftMoveInterval - time.Millisecond, false},
		{raftMoveInterval, true},
		{raftMoveInterval + time.Second, false},
		{2*raftMoveInterval - time.Millisecond, false},
		{2 * raftMoveInterval, true},
		{10 * raftMoveInterval, true},
	} {
		if got := l.allow(step.at); got != step.want {
			t.Errorf("allow(%s) = %v, want %v", step.at, got, step.want)
		}
	}
}
