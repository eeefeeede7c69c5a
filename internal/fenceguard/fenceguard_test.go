package fenceguard

import (
	"context"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"
)

type kills struct {
	mu   sync.Mutex
	pgid []int
	at   []time.Time
}

func (k *kills) kill(pgid int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.pgid, k.at = append(k.pgid, pgid), append(k.at, time.Now())
	return nil
}

func (k *kills) get() []int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]int(nil), k.pgid...)
}

func start(t *testing.T) (*io.PipeWriter, *kills, <-chan error) {
	t.Helper()
	r, w := io.Pipe()
	k := &kills{}
	done := make(chan error, 1)
	go func() { done <- Run(context.Background(), r, Options{Kill: k.kill}) }()
	t.Cleanup(func() { w.Close() })
	return w, k, done
}

func say(t *testing.T, w io.Writer, s string) {
	t.Helper()
	if _, err := io.WriteString(w, s+"\n"); err != nil {
		t.Fatal(err)
	}
}

// killWait bounds the wait for a kill that is due.
const killWait = 10 * time.Second

// Armed and not confirmed: the process group is killed once, on time.
func TestGuardKillsWhenNotConfirmed(t *testing.T) {
	w, k, _ := start(t)
	armed := time.Now()
	say(t, w, "arm 4242 150")
	// On time is "not before the deadline"; how soon after it depends on
	// the machine's load, so the kill is waited for.
	for deadline := time.Now().Add(killWait); len(k.get()) == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a second kill would come now
	if got := k.get(); len(got) != 1 || got[0] != 4242 {
		t.Fatalf("kills = %v, want [4242]", got)
	}
	if d := k.at[0].Sub(armed); d < 150*time.Millisecond {
		t.Fatalf("killed %s after arming, before the 150ms deadline", d)
	}
}

// Confirmed in time, or disarmed, or told something it does not
// understand: no kill. The confirmations go on for several deadlines, a
// quarter of one apart (room for a loaded machine), so a guard that did
// not move its deadline on a confirmation would kill; each later check
// waits past the last deadline, so a disarm that did not take would kill.
func TestGuardConfirmedOrDisarmedDoesNotKill(t *testing.T) {
	const within = time.Second
	arm := fmt.Sprintf("arm 4242 %d", within.Milliseconds())
	w, k, done := start(t)
	for end := time.Now().Add(3 * within); time.Now().Before(end); time.Sleep(within / 4) {
		say(t, w, arm)
	}
	say(t, w, "disarm")
	time.Sleep(within + 200*time.Millisecond)
	say(t, w, arm)
	say(t, w, "arm 4242 soon") // malformed: disarms
	time.Sleep(within + 200*time.Millisecond)
	if got := k.get(); len(got) != 0 {
		t.Fatalf("kills = %v, want none", got)
	}
	w.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after the agent closed its end: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return when its input closed")
	}
}

func TestParse(t *testing.T) {
	for _, bad := range []string{"", "arm", "arm 1 10", "arm x 10", "arm 10 -1", "kill 10", "disarm now"} {
		if _, err := parse(bad); err == nil {
			t.Errorf("parse(%q) accepted", bad)
		}
	}
	if c, err := parse("arm 77 1500"); err != nil || !c.arm || c.pgid != 77 || c.within != 1500*time.Millisecond {
		t.Errorf("parse(arm 77 1500) = %+v, %v", c, err)
	}
}
