package watchdog

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// standIn creates an empty regular file standing in for a watchdog device.
func standIn(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "watchdog")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// written is what has been written to the stand-in so far.
func written(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDeviceKeepaliveAndDisarm(t *testing.T) {
	p := standIn(t)
	d, err := Open(Options{Path: p})
	if err != nil {
		t.Fatal(err)
	}
	if d.Path() != p || d.Timeout() != 0 {
		t.Errorf("Path() = %q, Timeout() = %s; want %q, 0 (not set)", d.Path(), d.Timeout(), p)
	}
	if got := written(t, p); got != "" {
		t.Errorf("opening wrote %q", got)
	}
	// A regular file has no WDIOC_KEEPALIVE: the ping falls back to a byte.
	for range 2 {
		if err := d.Keepalive(); err != nil {
			t.Fatal(err)
		}
	}
	if got := written(t, p); got != "11" {
		t.Errorf("after two pings the device holds %q, want %q", got, "11")
	}
	if d.Identity() != "" {
		t.Errorf("Identity() = %q for a regular file", d.Identity())
	}
	if err := d.Disarm(); err != nil {
		t.Fatal(err)
	}
	if got := written(t, p); got != "11V" {
		t.Errorf("after Disarm the device holds %q, want the magic character last: %q", got, "11V")
	}
	if err := d.Disarm(); err != nil {
		t.Errorf("second Disarm: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("Close after Disarm: %v", err)
	}
	if err := d.Keepalive(); !errors.Is(err, os.ErrClosed) || !strings.Contains(err.Error(), "ping watchdog "+p) {
		t.Errorf("Keepalive after Disarm: %v, want an error naming the operation and wrapping os.ErrClosed", err)
	}
	if _, err := d.SetTimeout(3 * time.Second); !errors.Is(err, os.ErrClosed) {
		t.Errorf("SetTimeout after Disarm: %v, want os.ErrClosed", err)
	}
	if got := written(t, p); got != "11V" {
		t.Errorf("calls after Disarm wrote to the device: %q", got)
	}
}

func TestDeviceCloseDoesNotDisarm(t *testing.T) {
	p := standIn(t)
	d, err := Open(Options{Path: p})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Keepalive(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := d.Disarm(); err != nil {
		t.Errorf("Disarm after Close: %v", err)
	}
	if got := written(t, p); got != "1" {
		t.Errorf("device holds %q, want %q: Close must not write the magic character", got, "1")
	}
}

func TestOpenErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none")
	if _, err := Open(Options{Path: missing}); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "open watchdog") || !strings.Contains(err.Error(), missing) {
		t.Errorf("Open(missing) = %v, want an error naming the operation and path, wrapping fs.ErrNotExist", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open created the missing device: %v", err)
	}
	if _, err := Open(Options{Path: missing, Timeout: 3 * time.Second}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open(missing, timeout) = %v, want fs.ErrNotExist", err)
	}

	// Asked for a timeout, Open refuses a regular file before writing to it.
	p := standIn(t)
	if _, err := Open(Options{Path: p, Timeout: 3 * time.Second}); err == nil || !strings.Contains(err.Error(), "not a character device") {
		t.Errorf("Open(regular file, timeout) = %v, want: not a character device", err)
	}
	if got := written(t, p); got != "" {
		t.Errorf("refused open wrote %q", got)
	}

	for _, bad := range []time.Duration{500 * time.Millisecond, -time.Second} {
		if _, err := Open(Options{Path: p, Timeout: bad}); err == nil || !strings.Contains(err.Error(), "below the 1s minimum") {
			t.Errorf("Open(timeout %s) = %v, want: below the 1s minimum", bad, err)
		}
	}
}

func TestSetTimeoutUnsupported(t *testing.T) {
	p := standIn(t)
	d, err := Open(Options{Path: p})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.SetTimeout(3 * time.Second); !errors.Is(err, ErrNoTimeout) || !strings.Contains(err.Error(), "set watchdog timeout on "+p) {
		t.Errorf("SetTimeout on a regular file = %v, want ErrNoTimeout naming the device", err)
	}
	if _, err := d.SetTimeout(900 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "below the 1s minimum") {
		t.Errorf("SetTimeout(900ms) = %v, want: below the 1s minimum", err)
	}
}

// TestOpenCharDeviceThatIsNoWatchdog: a character device without the
// watchdog ioctls is refused once the timeout cannot be set, and left
// closed (the magic character written first, harmless to /dev/null).
func TestOpenCharDeviceThatIsNoWatchdog(t *testing.T) {
	const null = "/dev/null"
	if fi, err := os.Stat(null); err != nil || fi.Mode()&fs.ModeCharDevice == 0 {
		t.Skipf("%s is not a character device here", null)
	}
	_, err := Open(Options{Path: null, Timeout: 3 * time.Second})
	if !errors.Is(err, ErrNoTimeout) {
		t.Errorf("Open(%s, 3s) = %v, want ErrNoTimeout", null, err)
	}
}

// TestRealDevice arms the machine's real watchdog for a moment and disarms
// it. It needs /dev/watchdog (e.g. modprobe softdog) and, because a failure
// between the two could reset the machine, HOLDFAST_TEST_WATCHDOG=1.
func TestRealDevice(t *testing.T) {
	if _, err := os.Stat(DefaultPath); err != nil {
		t.Skipf("no real watchdog to test: %s does not exist (load the softdog module, then run with HOLDFAST_TEST_WATCHDOG=1)", DefaultPath)
	}
	if os.Getenv("HOLDFAST_TEST_WATCHDOG") != "1" {
		t.Skipf("%s exists, but arming it can reset this machine if the test dies before disarming it: set HOLDFAST_TEST_WATCHDOG=1 to run", DefaultPath)
	}
	d, err := Open(Options{Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Disarm(); err != nil {
			t.Errorf("disarm the real watchdog (the machine may be reset): %v", err)
		}
	})
	if got := d.Timeout(); got <= 0 || got > 30*time.Second {
		t.Errorf("effective timeout %s, want in (0, 30s]", got)
	}
	t.Logf("driver %q, timeout %s", d.Identity(), d.Timeout())
	if err := d.Keepalive(); err != nil {
		t.Fatal(err)
	}
	eff, err := d.SetTimeout(20 * time.Second)
	if err != nil || eff <= 0 || eff > 20*time.Second {
		t.Errorf("SetTimeout(20s) = %s, %v", eff, err)
	}
	if err := d.Keepalive(); err != nil {
		t.Fatal(err)
	}
}
