package watchdog

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestTimeout(t *testing.T) {
	s := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	for _, tc := range []struct {
		ttl, loop, margin time.Duration
		want              time.Duration
		err               string
	}{
		{ttl: s(4), loop: s(1), want: s(3)},                  // holdfast's defaults: reset at the fence point
		{ttl: s(10), loop: s(1), want: s(9)},                 // a slow-disk TTL
		{ttl: s(10), loop: s(2), margin: s(1), want: s(9)},   // reset after the fence point (s+8)
		{ttl: s(30), loop: s(10), margin: s(5), want: s(25)}, // Patroni's defaults
		{ttl: s(4), loop: s(1), margin: s(1.5), want: s(2)},
		{ttl: s(4.5), loop: s(1), want: s(3)}, // rounded down to whole seconds
		{ttl: s(2), loop: s(0.6), want: s(1)},
		{ttl: s(4), loop: s(1), margin: s(0.1), want: s(3)},
		{ttl: s(4), loop: s(1), margin: s(5), err: "ttl 4s minus safety margin 5s leaves less than the 1s minimum"},
		{ttl: s(4), loop: s(1), margin: s(2.5), err: "watchdog timeout 1s (ttl 4s minus safety margin 2.5s, in whole seconds) is not longer than the loop interval 1s"},
		{ttl: s(4), loop: s(1), margin: -s(1), err: "safety margin -1s is negative"},
		{ttl: s(4), loop: s(1), margin: s(0.05), err: "safety margin 50ms is below the 100ms minimum"},
		{ttl: s(4), loop: 0, err: "loop interval 0s is not positive"},
	} {
		got, err := Timeout(tc.ttl, tc.loop, tc.margin)
		name := fmt.Sprintf("Timeout(ttl %s, loop %s, margin %s)", tc.ttl, tc.loop, tc.margin)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s = %s, %v; want error %q", name, got, err, tc.err)
			}
		case err != nil || got != tc.want:
			t.Errorf("%s = %s, %v; want %s", name, got, err, tc.want)
		}
	}
}

func TestParseMode(t *testing.T) {
	for _, m := range []Mode{Off, Automatic, Required} {
		if got, err := ParseMode(string(m)); got != m || err != nil {
			t.Errorf("ParseMode(%q) = %q, %v", m, got, err)
		}
	}
	if _, err := ParseMode("on"); err == nil || err.Error() != `"on" is not a watchdog mode (write off, automatic or required)` {
		t.Errorf("ParseMode(on) = %v", err)
	}
}

func TestNewGuardErrors(t *testing.T) {
	for _, tc := range []struct {
		o    GuardOptions
		want string
	}{
		{GuardOptions{Mode: "strict"}, `watchdog guard: "strict" is not a watchdog mode`},
		{GuardOptions{Mode: Required, SafetyMargin: -time.Second}, "watchdog guard: safety margin -1s must be 0 (one loop interval) or at least 100ms"},
		{GuardOptions{Mode: Automatic, SafetyMargin: time.Millisecond}, "safety margin 1ms must be 0"},
	} {
		if _, err := NewGuard(tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewGuard(%+v) = %v, want %q", tc.o, err, tc.want)
		}
	}
}

// fakeDev is a real Device on a stand-in file (so pings and the magic
// character are observable) with a driver's timeout handling simulated.
type fakeDev struct {
	*Device
	timeout time.Duration
	round   func(time.Duration) time.Duration // the driver's rounding; nil: exact
	pingErr error
	sets    []time.Duration
}

func (f *fakeDev) SetTimeout(t time.Duration) (time.Duration, error) {
	want := t.Truncate(time.Second)
	f.sets = append(f.sets, want)
	eff := want
	if f.round != nil {
		eff = f.round(want)
	}
	f.timeout = eff
	if eff > want {
		return eff, fmt.Errorf("set watchdog timeout on %s: asked for %s, the driver set %s: %w", f.Path(), want, eff, ErrTimeoutTooLong)
	}
	return eff, nil
}

func (f *fakeDev) Timeout() time.Duration { return f.timeout }

func (f *fakeDev) Keepalive() error {
	if f.pingErr != nil {
		return fmt.Errorf("ping watchdog %s: %w", f.Path(), f.pingErr)
	}
	return f.Device.Keepalive()
}

// rig is a Guard whose device opens are fakeDevs on stand-in files, one
// file per open (term), with its log captured.
type rig struct {
	t     *testing.T
	g     *Guard
	dir   string
	round func(time.Duration) time.Duration
	devs  []*fakeDev
	log   bytes.Buffer // written under g.mu only
}

func newRig(t *testing.T, mode Mode, margin time.Duration) *rig {
	t.Helper()
	r := &rig{t: t, dir: t.TempDir()}
	g, err := NewGuard(GuardOptions{
		Mode: mode, Path: "/dev/watchdog-under-test", SafetyMargin: margin,
		Logger: slog.New(slog.NewTextHandler(&r.log, nil)),
		open:   r.open,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.g = g
	return r
}

// open mirrors Open: open, set the timeout, disarm again if that fails.
func (r *rig) open(o Options) (device, error) {
	p := filepath.Join(r.dir, fmt.Sprintf("term-%d", len(r.devs)+1))
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		return nil, err
	}
	d, err := Open(Options{Path: p})
	if err != nil {
		return nil, err
	}
	f := &fakeDev{Device: d, round: r.round}
	r.devs = append(r.devs, f)
	if _, err := f.SetTimeout(o.Timeout); err != nil {
		return nil, errors.Join(err, f.Disarm())
	}
	return f, nil
}

// file is what the n-th opened device (1-based) received.
func (r *rig) file(n int) string {
	r.t.Helper()
	if n > len(r.devs) {
		r.t.Fatalf("device %d was never opened (%d opens)", n, len(r.devs))
	}
	return written(r.t, r.devs[n-1].Path())
}

func (r *rig) logged(s string) int { return strings.Count(r.log.String(), s) }

func TestGuardOff(t *testing.T) {
	for name, mk := range map[string]func() *Guard{
		"mode off": func() *Guard {
			g, err := NewGuard(GuardOptions{Mode: Off, open: func(Options) (device, error) {
				t.Fatal("mode off opened the device")
				return nil, nil
			}})
			if err != nil {
				t.Fatal(err)
			}
			return g
		},
		"zero options": func() *Guard {
			g, err := NewGuard(GuardOptions{Path: filepath.Join(t.TempDir(), "none")})
			if err != nil {
				t.Fatal(err)
			}
			return g
		},
		"nil guard": func() *Guard { return nil },
	} {
		t.Run(name, func(t *testing.T) {
			g := mk()
			if g.Mode() != Off {
				t.Errorf("Mode() = %q", g.Mode())
			}
			// Even settings that leave no timeout are not looked at.
			for _, err := range []error{g.Arm(4*time.Second, time.Second), g.Arm(time.Second, time.Second), g.Kick(0), g.Disarm(), g.Disarm()} {
				if err != nil {
					t.Errorf("mode off returned %v", err)
				}
			}
			if g.Armed() || g.Timeout() != 0 {
				t.Errorf("mode off armed: %v, %s", g.Armed(), g.Timeout())
			}
		})
	}
}

// TestGuardMissingDevice uses the real Open: /dev/watchdog does not exist
// on machines without a watchdog driver, and a typo'd path behaves alike.
func TestGuardMissingDevice(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "watchdog")

	t.Run("automatic degrades with a warning", func(t *testing.T) {
		var log bytes.Buffer
		g, err := NewGuard(GuardOptions{Mode: Automatic, Path: missing, Logger: slog.New(slog.NewTextHandler(&log, nil))})
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := g.Arm(4*time.Second, time.Second); err != nil {
				t.Fatalf("Arm in automatic mode: %v", err)
			}
			if err := g.Kick(3900 * time.Millisecond); err != nil {
				t.Fatalf("Kick in automatic mode: %v", err)
			}
		}
		if g.Armed() {
			t.Error("armed without a device")
		}
		if n := strings.Count(log.String(), "level=WARN msg=\"watchdog unavailable; leading without it (watchdog.mode automatic)\""); n != 1 {
			t.Errorf("warned %d times in one leadership term, want once:\n%s", n, log.String())
		}
		for _, want := range []string{"device=" + missing, "no such file or directory"} {
			if !strings.Contains(log.String(), want) {
				t.Errorf("warning lacks %q:\n%s", want, log.String())
			}
		}
		// The next term tries again, and warns again.
		if err := g.Disarm(); err != nil {
			t.Fatal(err)
		}
		if err := g.Arm(4*time.Second, time.Second); err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(log.String(), "watchdog unavailable"); n != 2 {
			t.Errorf("warned %d times over two terms, want twice", n)
		}
	})

	t.Run("required refuses", func(t *testing.T) {
		g, err := NewGuard(GuardOptions{Mode: Required, Path: missing})
		if err != nil {
			t.Fatal(err)
		}
		err = g.Arm(4*time.Second, time.Second)
		if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "open watchdog") || !strings.Contains(err.Error(), missing) {
			t.Errorf("Arm = %v, want an error naming the operation and device, wrapping fs.ErrNotExist", err)
		}
		if g.Armed() {
			t.Error("armed without a device")
		}
		if err := g.Kick(3900 * time.Millisecond); err != nil {
			t.Errorf("Kick while disarmed: %v", err)
		}
		if err := g.Disarm(); err != nil {
			t.Errorf("Disarm while disarmed: %v", err)
		}
	})

	t.Run("required refuses a regular file untouched", func(t *testing.T) {
		p := standIn(t)
		g, err := NewGuard(GuardOptions{Mode: Required, Path: p})
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Arm(4*time.Second, time.Second); err == nil || !strings.Contains(err.Error(), "not a character device") {
			t.Errorf("Arm on a regular file = %v, want: not a character device", err)
		}
		if got := written(t, p); got != "" {
			t.Errorf("the file was written to: %q", got)
		}
	})
}

func TestGuardTerm(t *testing.T) {
	for _, mode := range []Mode{Automatic, Required} {
		t.Run(string(mode), func(t *testing.T) {
			r := newRig(t, mode, 0)
			g := r.g
			for range 3 { // idempotent: one open, one timeout set
				if err := g.Arm(4*time.Second, time.Second); err != nil {
					t.Fatal(err)
				}
			}
			if !g.Armed() || g.Timeout() != 3*time.Second {
				t.Fatalf("Armed() = %v, Timeout() = %s; want armed with 3s (ttl 4s - loop 1s)", g.Armed(), g.Timeout())
			}
			if len(r.devs) != 1 || len(r.devs[0].sets) != 1 {
				t.Fatalf("%d opens, timeouts set %v; want one open, one set", len(r.devs), r.devs[0].sets)
			}
			for range 2 {
				if err := g.Kick(3900 * time.Millisecond); err != nil {
					t.Fatal(err)
				}
			}
			if got := r.file(1); got != "11" {
				t.Errorf("device received %q after two kicks, want %q", got, "11")
			}
			if err := g.Disarm(); err != nil {
				t.Fatal(err)
			}
			if got := r.file(1); got != "11V" {
				t.Errorf("device received %q after Disarm, want %q", got, "11V")
			}
			for _, err := range []error{g.Disarm(), g.Kick(3900 * time.Millisecond)} {
				if err != nil {
					t.Errorf("after Disarm: %v", err)
				}
			}
			if got := r.file(1); got != "11V" || g.Armed() {
				t.Errorf("calls after Disarm reached the device (%q) or left it armed (%v)", got, g.Armed())
			}
			if r.logged("watchdog armed") != 1 || r.logged("watchdog disarmed") != 1 {
				t.Errorf("want one armed and one disarmed message:\n%s", r.log.String())
			}

			// The next term opens the device again.
			if err := g.Arm(4*time.Second, time.Second); err != nil {
				t.Fatal(err)
			}
			if err := g.Kick(3900 * time.Millisecond); err != nil {
				t.Fatal(err)
			}
			if err := g.Disarm(); err != nil {
				t.Fatal(err)
			}
			if got := r.file(2); got != "1V" {
				t.Errorf("second term: device received %q, want %q", got, "1V")
			}
		})
	}
}

func TestGuardRetime(t *testing.T) {
	r := newRig(t, Required, 0)
	g := r.g
	if err := g.Arm(4*time.Second, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := g.Arm(10*time.Second, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := g.Arm(10*time.Second, time.Second); err != nil {
		t.Fatal(err)
	}
	if len(r.devs) != 1 || g.Timeout() != 9*time.Second {
		t.Fatalf("%d opens, timeout %s; want the open device retimed to 9s", len(r.devs), g.Timeout())
	}
	if sets := r.devs[0].sets; len(sets) != 2 || sets[1] != 9*time.Second {
		t.Errorf("timeouts set %v, want [3s 9s]", sets)
	}
	if r.logged("watchdog timeout changed") != 1 {
		t.Errorf("no single 'timeout changed' message:\n%s", r.log.String())
	}
}

// TestGuardLateKick: a kick whose reset would not come before the lease
// could expire is not sent.
func TestGuardLateKick(t *testing.T) {
	for _, mode := range []Mode{Automatic, Required} {
		t.Run(string(mode), func(t *testing.T) {
			r := newRig(t, mode, 0)
			g := r.g
			if err := g.Arm(4*time.Second, time.Second); err != nil {
				t.Fatal(err)
			}
			for _, left := range []time.Duration{3 * time.Second, 3040 * time.Millisecond, time.Second, -time.Second} {
				err := g.Kick(left)
				if mode == Required && !errors.Is(err, ErrLate) {
					t.Errorf("Kick(%s) with a 3s timeout = %v, want ErrLate", left, err)
				}
				if mode == Automatic && err != nil {
					t.Errorf("Kick(%s) in automatic mode = %v, want nil (logged)", left, err)
				}
			}
			if got := r.file(1); got != "" {
				t.Errorf("late kicks reached the device: %q", got)
			}
			if !g.Armed() {
				t.Error("a late kick disarmed the device")
			}
			if n := r.logged("watchdog not kicked"); n != 4 {
				t.Errorf("%d warnings for 4 late kicks:\n%s", n, r.log.String())
			}
			if err := g.Kick(3050 * time.Millisecond); err != nil {
				t.Fatal(err)
			}
			if got := r.file(1); got != "1" {
				t.Errorf("a timely kick was not sent: %q", got)
			}
		})
	}
}

// TestGuardTimeoutRoundedUp: a driver that rounds the timeout above what
// the lease allows is never trusted.
func TestGuardTimeoutRoundedUp(t *testing.T) {
	up := func(d time.Duration) time.Duration { return d + time.Second }

	t.Run("on open", func(t *testing.T) {
		for _, mode := range []Mode{Automatic, Required} {
			r := newRig(t, mode, 0)
			r.round = up
			err := r.g.Arm(4*time.Second, time.Second)
			switch {
			case mode == Required && !errors.Is(err, ErrTimeoutTooLong):
				t.Errorf("%s: Arm = %v, want ErrTimeoutTooLong", mode, err)
			case mode == Automatic && (err != nil || r.logged("watchdog unavailable") != 1):
				t.Errorf("%s: Arm = %v, want nil and a warning:\n%s", mode, err, r.log.String())
			}
			if r.g.Armed() || r.file(1) != "V" {
				t.Errorf("%s: armed %v, device received %q; want it disarmed at once", mode, r.g.Armed(), r.file(1))
			}
		}
	})

	t.Run("on retime", func(t *testing.T) {
		for _, mode := range []Mode{Automatic, Required} {
			r := newRig(t, mode, 0)
			if err := r.g.Arm(10*time.Second, time.Second); err != nil {
				t.Fatal(err)
			}
			r.devs[0].round = up // a 4s TTL wants 3s; the driver sets 4s
			err := r.g.Arm(4*time.Second, time.Second)
			if mode == Automatic {
				if err != nil || r.g.Armed() || r.file(1) != "V" {
					t.Errorf("automatic: Arm = %v, armed %v, device %q; want nil, disarmed", err, r.g.Armed(), r.file(1))
				}
				continue
			}
			if !errors.Is(err, ErrTimeoutTooLong) || !strings.Contains(err.Error(), "change watchdog timeout to 3s") {
				t.Errorf("required: Arm = %v, want ErrTimeoutTooLong", err)
			}
			// Still armed, with the 4s the driver set: a kick 3.9s before
			// the lease could expire would reset the machine too late.
			if !r.g.Armed() || r.g.Timeout() != 4*time.Second {
				t.Fatalf("required: armed %v, timeout %s; want still armed with 4s", r.g.Armed(), r.g.Timeout())
			}
			if err := r.g.Kick(3900 * time.Millisecond); !errors.Is(err, ErrLate) {
				t.Errorf("required: Kick = %v, want ErrLate", err)
			}
			if got := r.file(1); got != "" {
				t.Errorf("required: device received %q, want nothing", got)
			}
		}
	})
}

// TestGuardTimeoutRoundedDown: a shorter timeout is safe, but not one that
// once-per-loop kicks cannot keep from firing.
func TestGuardTimeoutRoundedDown(t *testing.T) {
	r := newRig(t, Required, 0)
	r.round = func(time.Duration) time.Duration { return 2 * time.Second }
	if err := r.g.Arm(4*time.Second, time.Second); err != nil || r.g.Timeout() != 2*time.Second {
		t.Fatalf("Arm = %v, timeout %s; want armed with the shorter 2s", err, r.g.Timeout())
	}
	if err := r.g.Disarm(); err != nil {
		t.Fatal(err)
	}

	r.round = func(time.Duration) time.Duration { return time.Second }
	err := r.g.Arm(4*time.Second, time.Second)
	if err == nil || !strings.Contains(err.Error(), "effective timeout 1s is not longer than the loop interval 1s") {
		t.Errorf("Arm = %v, want the effective timeout refused", err)
	}
	if r.g.Armed() || r.file(2) != "V" {
		t.Errorf("armed %v, device received %q; want it disarmed at once", r.g.Armed(), r.file(2))
	}
}

func TestGuardSettingsWithoutTimeout(t *testing.T) {
	for _, mode := range []Mode{Automatic, Required} {
		r := newRig(t, mode, 5*time.Second) // Patroni's margin, holdfast's 4s TTL
		err := r.g.Arm(4*time.Second, time.Second)
		if mode == Required && (err == nil || !strings.Contains(err.Error(), "arm watchdog /dev/watchdog-under-test: watchdog timeout: ttl 4s minus safety margin 5s")) {
			t.Errorf("required: Arm = %v", err)
		}
		if mode == Automatic && (err != nil || r.logged("watchdog unavailable") != 1) {
			t.Errorf("automatic: Arm = %v, want nil and a warning:\n%s", err, r.log.String())
		}
		if len(r.devs) != 0 {
			t.Errorf("%s: the device was opened", mode)
		}
	}
}

func TestGuardPingFails(t *testing.T) {
	boom := errors.New("input/output error")

	r := newRig(t, Automatic, 0)
	if err := r.g.Arm(4*time.Second, time.Second); err != nil {
		t.Fatal(err)
	}
	r.devs[0].pingErr = boom
	if err := r.g.Kick(3900 * time.Millisecond); err != nil {
		t.Errorf("automatic: Kick = %v, want nil (logged)", err)
	}
	if r.g.Armed() || r.file(1) != "V" || r.logged("watchdog unavailable") != 1 {
		t.Errorf("automatic: armed %v, device %q; want disarmed with a warning:\n%s", r.g.Armed(), r.file(1), r.log.String())
	}
	if err := r.g.Arm(4*time.Second, time.Second); err != nil || r.g.Armed() {
		t.Errorf("automatic: re-armed in the same term: %v, %v", err, r.g.Armed())
	}

	r = newRig(t, Required, 0)
	if err := r.g.Arm(4*time.Second, time.Second); err != nil {
		t.Fatal(err)
	}
	r.devs[0].pingErr = boom
	if err := r.g.Kick(3900 * time.Millisecond); !errors.Is(err, boom) || !strings.Contains(err.Error(), "ping watchdog") {
		t.Errorf("required: Kick = %v, want the ping error", err)
	}
	if !r.g.Armed() || r.file(1) != "" {
		t.Errorf("required: armed %v, device %q; want still armed (its reset is the safe outcome)", r.g.Armed(), r.file(1))
	}
}

// TestGuardConcurrentKicks: the lease keeper kicks while the loop may ask
// whether the guard is armed; run with -race.
func TestGuardConcurrentKicks(t *testing.T) {
	r := newRig(t, Required, 0)
	if err := r.g.Arm(4*time.Second, time.Second); err != nil {
		t.Fatal(err)
	}
	const n, each = 8, 25
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if err := r.g.Kick(3900 * time.Millisecond); err != nil {
					t.Error(err)
				}
				_ = r.g.Armed()
				_ = r.g.Timeout()
			}
		}()
	}
	wg.Wait()
	if err := r.g.Disarm(); err != nil {
		t.Fatal(err)
	}
	if want := strings.Repeat("1", n*each) + "V"; r.file(1) != want {
		t.Errorf("device received %d bytes, want %d pings then V", len(r.file(1)), n*each)
	}
}

func TestGuardProbe(t *testing.T) {
	if err := (*Guard)(nil).Probe(4*time.Second, time.Second); err != nil {
		t.Errorf("nil guard: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "watchdog")
	for _, mode := range []Mode{Automatic, Required} {
		g, err := NewGuard(GuardOptions{Mode: mode, Path: missing})
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Probe(4*time.Second, time.Second); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "probe watchdog") {
			t.Errorf("%s: Probe(missing) = %v, want fs.ErrNotExist", mode, err)
		}
	}

	r := newRig(t, Required, 0)
	if err := r.g.Probe(4*time.Second, time.Second); err != nil {
		t.Fatal(err)
	}
	if r.g.Armed() || r.file(1) != "V" {
		t.Errorf("after Probe: armed %v, device %q; want disarmed at once", r.g.Armed(), r.file(1))
	}
	if err := r.g.Probe(4*time.Second, 2*time.Second); err == nil || !strings.Contains(err.Error(), "not longer than the loop interval") {
		t.Errorf("Probe with settings that leave no timeout = %v", err)
	}
	if err := r.g.Arm(4*time.Second, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := r.g.Probe(4*time.Second, time.Second); err != nil || len(r.devs) != 2 {
		t.Errorf("Probe while armed = %v after %d opens; want nil without opening", err, len(r.devs))
	}
	r.round = func(time.Duration) time.Duration { return time.Second }
	if err := r.g.Disarm(); err != nil {
		t.Fatal(err)
	}
	if err := r.g.Probe(4*time.Second, time.Second); err == nil || !strings.Contains(err.Error(), "effective timeout 1s") || r.file(3) != "V" {
		t.Errorf("Probe with a driver that rounds below the loop = %v, device %q", err, r.file(3))
	}
}
