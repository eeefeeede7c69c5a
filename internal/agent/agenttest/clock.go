// Package agenttest holds in-memory fakes of what an agent drives — the
// consensus store (StoreCluster, Store), the database (Net, DB) — and a
// manual clock, for scenario tests and simulations that run real
// agent.Agent instances step by step (agent.Agent.Step), deterministically.
//
// The fakes model the behaviour the agent's safety rests on, not the
// backends' internals: leases that expire on the manual clock and take
// their keys with them, compare-and-swap on the leader key and records,
// a quorum loss; a PostgreSQL with a WAL of unique tokens (so divergence,
// rewinds and lost commits are exact), timelines, recovery, promotion,
// clean and crash stops, streaming replication between DBs of one Net.
// Every fake is safe for concurrent use (the agent's lease keeper and
// failsafe round run beside its loop).
package agenttest

import (
	"sync"
	"time"
)

// Epoch is the wall-clock time at a Clock's zero.
var Epoch = time.Date(2026, 11, 21, 3, 0, 0, 0, time.UTC)

// Clock is a manual clock: monotonic time (agent.Options.Clock) and the
// wall clock that goes with it (agent.Options.Wall), both moved only by
// Advance and Set.
type Clock struct {
	mu  sync.Mutex
	now time.Duration
}

// NewClock returns a clock at zero.
func NewClock() *Clock { return &Clock{} }

// Now is the monotonic time.
func (c *Clock) Now() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Wall is Epoch + Now.
func (c *Clock) Wall() time.Time { return Epoch.Add(c.Now()) }

// Advance moves the clock forward by d (never back).
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d > 0 {
		c.now += d
	}
}

// Set moves the clock to t if t is later.
func (c *Clock) Set(t time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t > c.now {
		c.now = t
	}
}

// Since returns a clock function for an agent started now: its monotonic
// time counts from this moment, as a real agent's does from New.
func (c *Clock) Since() func() time.Duration {
	start := c.Now()
	return func() time.Duration { return c.Now() - start }
}
