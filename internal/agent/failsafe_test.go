package agent

import (
	"testing"
	"time"
)

// The promise and the leader race exclude each other: whichever comes
// first wins, and a promise binds only for a TTL.
func TestFailsafeGate(t *testing.T) {
	now := time.Minute
	g := failsafeGate{self: "pg-1", clock: func() time.Duration { return now }}
	const ttl = 4 * time.Second

	if err := g.Promise("pg-1"); err == nil {
		t.Fatal("a member promised itself")
	}
	if err := g.Promise("pg-0"); err != nil {
		t.Fatalf("promise: %v", err)
	}
	if err := g.beginAcquire(ttl); err == nil {
		t.Fatal("raced for the key while a promise lasts")
	}
	now += ttl - time.Millisecond
	if err := g.beginAcquire(ttl); err == nil {
		t.Fatal("raced for the key just before the promise ends")
	}
	now += time.Millisecond
	if err := g.beginAcquire(ttl); err != nil {
		t.Fatalf("promise over, race refused: %v", err)
	}
	if err := g.Promise("pg-0"); err == nil {
		t.Fatal("promised while racing for the key")
	}
	g.setLeading(false) // the race was lost; next loop
	if err := g.Promise("pg-2"); err != nil {
		t.Fatalf("promise after a lost race: %v", err)
	}
	if to, at := g.promised(); to != "pg-2" || at != now {
		t.Fatalf("promised() = %s, %s", to, at)
	}
	g.setLeading(true) // this member leads now (e.g. the store says so)
	if err := g.Promise("pg-0"); err == nil {
		t.Fatal("a leading member promised another")
	}
}
