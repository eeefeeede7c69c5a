package watchdog

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Mode says whether and how strictly a member uses the watchdog.
type Mode string

// Modes.
const (
	// Off: never open the device (the default).
	Off Mode = "off"
	// Automatic: use the device when it can be armed; otherwise warn and
	// lead without it.
	Automatic Mode = "automatic"
	// Required: never run a writable primary without an armed watchdog.
	Required Mode = "required"
)

// ParseMode reads a mode name: off, automatic or required.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case Off, Automatic, Required:
		return m, nil
	}
	return "", fmt.Errorf("%q is not a watchdog mode (write %s, %s or %s)", s, Off, Automatic, Required)
}

// MinSafetyMargin is the smallest explicit safety margin: the lease renewal
// and the ping must both fit in it.
const MinSafetyMargin = 100 * time.Millisecond

// kickSlack is how long before the lease deadline the reset must come for
// Kick to ping: it covers the ping reaching the device and the device's
// reset latency.
const kickSlack = 50 * time.Millisecond

// ErrLate is wrapped by Kick's error (required mode) when it did not ping
// because the reset would come too close to, or after, the moment the lease
// could expire.
var ErrLate = errors.New("too late to kick the watchdog: the reset would not come before the lease could expire")

// Timeout is the watchdog timeout for a lease of the given TTL: TTL minus
// the safety margin (0 means one loop interval: see the package
// documentation), rounded down to whole seconds. It must be at least 1s and
// longer than the loop interval, since the agent kicks once per loop.
func Timeout(ttl, loopInterval, safetyMargin time.Duration) (time.Duration, error) {
	switch {
	case loopInterval <= 0:
		return 0, fmt.Errorf("watchdog timeout: loop interval %s is not positive", loopInterval)
	case safetyMargin < 0:
		return 0, fmt.Errorf("watchdog timeout: safety margin %s is negative", safetyMargin)
	case safetyMargin == 0:
		safetyMargin = loopInterval
	case safetyMargin < MinSafetyMargin:
		return 0, fmt.Errorf("watchdog timeout: safety margin %s is below the %s minimum", safetyMargin, MinSafetyMargin)
	}
	t := (ttl - safetyMargin).Truncate(time.Second)
	if t < time.Second {
		return 0, fmt.Errorf("watchdog timeout: ttl %s minus safety margin %s leaves less than the 1s minimum", ttl, safetyMargin)
	}
	if t <= loopInterval {
		return 0, fmt.Errorf("watchdog timeout %s (ttl %s minus safety margin %s, in whole seconds) is not longer than the loop interval %s: one kick per loop could not keep it from firing",
			t, ttl, safetyMargin, loopInterval)
	}
	return t, nil
}

// GuardOptions configure a Guard.
type GuardOptions struct {
	// Mode; "" means Off.
	Mode Mode
	// Path of the device; "" means DefaultPath.
	Path string
	// SafetyMargin: timeout = TTL − SafetyMargin, in whole seconds; 0 means
	// one loop interval. Otherwise at least MinSafetyMargin.
	SafetyMargin time.Duration
	Logger       *slog.Logger

	// open replaces Open in tests.
	open func(Options) (device, error)
}

// device is what Guard needs from *Device.
type device interface {
	SetTimeout(time.Duration) (time.Duration, error)
	Timeout() time.Duration
	Keepalive() error
	Disarm() error
	Identity() string
}

// Guard is the policy the agent loop applies to the watchdog: armed while
// this member leads, kicked after every lease renewal, disarmed when it
// stops leading; a no-op in mode Off, best effort in Automatic, strict in
// Required. A nil *Guard behaves as one in mode Off.
//
// Concurrency contract: the agent loop owns the Guard. Arm and Disarm are
// called from the loop goroutine only. Kick is called by the loop after
// each successful lease renewal, and by the loop's lease keeper goroutine
// after each renewal it makes while the loop is blocked in a long action
// (promotion, a primary's stop), since those can outlast the timeout. The
// methods are safe for concurrent use.
//
// Errors. Arm and Kick return errors in Required mode only; in Automatic
// mode the Guard logs a warning, disarms if need be and carries on without
// the watchdog until the next leadership term. Disarm returns its error in
// every mode: the machine may still be reset, and the caller should log it.
type Guard struct {
	mu     sync.Mutex
	o      GuardOptions
	log    *slog.Logger
	dev    device        // armed device; nil when disarmed
	want   time.Duration // the timeout dev was armed with
	failed bool          // Automatic: arming failed this term; not retried before Disarm
}

// NewGuard checks o and returns a disarmed Guard; it opens nothing.
func NewGuard(o GuardOptions) (*Guard, error) {
	if o.Mode == "" {
		o.Mode = Off
	}
	if _, err := ParseMode(string(o.Mode)); err != nil {
		return nil, fmt.Errorf("watchdog guard: %w", err)
	}
	if o.SafetyMargin < 0 || (o.SafetyMargin > 0 && o.SafetyMargin < MinSafetyMargin) {
		return nil, fmt.Errorf("watchdog guard: safety margin %s must be 0 (one loop interval) or at least %s", o.SafetyMargin, MinSafetyMargin)
	}
	if o.Path == "" {
		o.Path = DefaultPath
	}
	if o.open == nil {
		o.open = func(opts Options) (device, error) {
			d, err := Open(opts)
			if err != nil {
				return nil, err // not a typed nil in the interface
			}
			return d, nil
		}
	}
	g := &Guard{o: o, log: o.Logger}
	if g.log == nil {
		g.log = slog.New(slog.DiscardHandler)
	}
	return g, nil
}

// Mode is the Guard's mode.
func (g *Guard) Mode() Mode {
	if g == nil {
		return Off
	}
	return g.o.Mode
}

// Armed reports whether the device is open and counting down.
func (g *Guard) Armed() bool {
	if g == nil {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dev != nil
}

// Timeout is the armed device's effective timeout; 0 when disarmed.
func (g *Guard) Timeout() time.Duration {
	if g == nil {
		return 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dev == nil {
		return 0
	}
	return g.dev.Timeout()
}

// Arm opens the device and sets its timeout for a lease of the given TTL
// and the loop interval in force (see Timeout). Call it before this member
// takes the leader key, starts PostgreSQL as a primary or promotes it, and
// every loop while it leads: it is idempotent, and when ttl or the loop
// interval changed it sets the new timeout on the armed device.
//
// In Required mode an error means the watchdog is not armed (or, when it
// already was, still has its previous timeout, which Kick checks against
// the lease): the member must not take or keep leadership. In Automatic
// mode failures are logged and Arm returns nil; after a failure it does not
// try again until Disarm (the next leadership term).
func (g *Guard) Arm(ttl, loopInterval time.Duration) error {
	if g == nil || g.o.Mode == Off {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	want, err := Timeout(ttl, loopInterval, g.o.SafetyMargin)
	if err != nil {
		return g.armFailed(fmt.Errorf("arm watchdog %s: %w", g.o.Path, err))
	}
	if g.dev != nil {
		if want == g.want {
			if err := checkEffective(g.dev.Timeout(), loopInterval); err != nil {
				return g.armFailed(fmt.Errorf("arm watchdog %s: %w", g.o.Path, err))
			}
			return nil
		}
		eff, err := g.dev.SetTimeout(want)
		if err == nil {
			err = checkEffective(eff, loopInterval)
		}
		if err != nil {
			return g.armFailed(fmt.Errorf("change watchdog timeout to %s: %w", want, err))
		}
		g.log.Info("watchdog timeout changed", "device", g.o.Path, "timeout", eff, "was", g.want)
		g.want = want
		return nil
	}
	if g.failed {
		return nil
	}
	dev, err := g.o.open(Options{Path: g.o.Path, Timeout: want})
	if err == nil {
		if err = checkEffective(dev.Timeout(), loopInterval); err != nil {
			err = fmt.Errorf("open watchdog %s: %w", g.o.Path, err)
			if derr := dev.Disarm(); derr != nil {
				err = errors.Join(err, derr)
			}
		}
	}
	if err != nil {
		return g.armFailed(err)
	}
	g.dev, g.want = dev, want
	g.log.Info("watchdog armed", "device", g.o.Path, "driver", dev.Identity(), "timeout", dev.Timeout(), "mode", g.o.Mode)
	return nil
}

// Probe reports whether Arm would succeed with these settings, without
// leading: it opens the device, sets the timeout and disarms it again at
// once. It returns the problem in every mode but Off (nil there), and nil
// while the Guard is armed (the device is evidently usable; opening it
// again would fail with EBUSY). Call it from the agent loop, e.g. at start,
// so that a member in Required mode whose watchdog cannot be armed can
// report itself as no candidate instead of winning comparisons it could
// never act on.
func (g *Guard) Probe(ttl, loopInterval time.Duration) error {
	if g == nil || g.o.Mode == Off {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dev != nil {
		return nil
	}
	want, err := Timeout(ttl, loopInterval, g.o.SafetyMargin)
	if err != nil {
		return fmt.Errorf("probe watchdog %s: %w", g.o.Path, err)
	}
	dev, err := g.o.open(Options{Path: g.o.Path, Timeout: want})
	if err != nil {
		return fmt.Errorf("probe watchdog: %w", err)
	}
	err = checkEffective(dev.Timeout(), loopInterval)
	if derr := dev.Disarm(); derr != nil {
		err = errors.Join(err, derr)
	}
	if err != nil {
		return fmt.Errorf("probe watchdog %s: %w", g.o.Path, err)
	}
	return nil
}

// checkEffective refuses a device timeout that once-per-loop kicks could
// not keep from firing.
func checkEffective(eff, loopInterval time.Duration) error {
	if eff <= loopInterval {
		return fmt.Errorf("effective timeout %s is not longer than the loop interval %s: one kick per loop could not keep it from firing", eff, loopInterval)
	}
	return nil
}

// armFailed applies the mode to a failure to arm (g.mu held). Automatic:
// warn once, disarm a device left armed, carry on without it. Required:
// return err; a device already armed stays armed.
func (g *Guard) armFailed(err error) error {
	if g.o.Mode == Required {
		return err
	}
	g.degrade(err)
	return nil
}

// degrade gives up on the watchdog for this leadership term (Automatic
// mode; g.mu held).
func (g *Guard) degrade(err error) {
	if g.dev != nil {
		if derr := g.dev.Disarm(); derr != nil {
			g.log.Error("watchdog could not be disarmed; it may reset this machine", "device", g.o.Path, "err", derr)
		}
		g.dev, g.want = nil, 0
	}
	if !g.failed {
		g.log.Warn("watchdog unavailable; leading without it (watchdog.mode automatic)", "device", g.o.Path, "err", err)
	}
	g.failed = true
}

// Kick pings the armed device; untilExpiry is the time left until the lease
// could expire in the store (the agent's lease deadline minus now), read
// right after the renewal. Call it after every successful lease renewal,
// and only then: a kick without a renewal would let a member that cannot
// reach the store keep its machine alive past its lease.
//
// Kick pings only if the reset it schedules (now + timeout) comes at least
// kickSlack before that deadline; otherwise it leaves the previous reset
// point, which was safe, in place, logs a warning and, in Required mode,
// returns an error wrapping ErrLate. A failed ping in Automatic mode
// disarms the device and carries on without it; in Required mode it is
// returned and the device stays armed (its reset is the safe outcome).
// Kick is a no-op while disarmed.
func (g *Guard) Kick(untilExpiry time.Duration) error {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.dev == nil {
		return nil
	}
	t := g.dev.Timeout()
	if untilExpiry < t+kickSlack {
		err := fmt.Errorf("kick watchdog %s: the lease could expire in %s, within the %s timeout: %w", g.o.Path, untilExpiry, t, ErrLate)
		g.log.Warn("watchdog not kicked: the lease renewal came too late for the timeout; the machine will be reset unless the next renewal is on time", "device", g.o.Path, "lease_left", untilExpiry, "timeout", t)
		if g.o.Mode == Required {
			return err
		}
		return nil
	}
	start := time.Now()
	if err := g.dev.Keepalive(); err != nil {
		if g.o.Mode == Required {
			return err
		}
		g.degrade(err)
		return nil
	}
	if took := time.Since(start); untilExpiry-took < t {
		g.log.Warn("watchdog ping was slow: the reset may come after the lease could expire", "device", g.o.Path, "took", took, "lease_left", untilExpiry, "timeout", t)
	}
	return nil
}

// Disarm stops the watchdog for a planned stop of leadership (magic close)
// so the machine is not reset. Call it once this member neither holds the
// leader key nor runs a writable PostgreSQL: after a fence, a demotion, a
// release of the leader key or a clean shutdown has stopped PostgreSQL —
// never before PostgreSQL has stopped accepting writes. It is a no-op when
// nothing is armed, and it ends the leadership term (Automatic mode tries
// to arm again at the next Arm).
func (g *Guard) Disarm() error {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.failed = false
	if g.dev == nil {
		return nil
	}
	dev := g.dev
	g.dev, g.want = nil, 0
	if err := dev.Disarm(); err != nil {
		return err
	}
	g.log.Info("watchdog disarmed", "device", g.o.Path)
	return nil
}
