package watchdog

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultPath is the watchdog device Open uses when Options.Path is empty:
// the first watchdog the kernel registered (softdog, or a hardware one).
const DefaultPath = "/dev/watchdog"

// The byte written to ping a device whose driver lacks the keepalive ioctl,
// and the magic character that, written last before close, lets the driver
// stop the timer. Any write pings; a write without 'V' also cancels an
// earlier magic character, so the keepalive byte must not be 'V'.
const (
	keepaliveByte = '1'
	magicClose    = 'V'
)

var (
	// ErrTimeoutTooLong: the driver set a longer timeout than was asked for
	// (drivers round to what their hardware can count). A longer timeout
	// could let a frozen primary outlive its lease, so it is never accepted.
	ErrTimeoutTooLong = errors.New("watchdog timeout longer than asked for")
	// ErrNoTimeout: the device cannot set a timeout (it is not a watchdog,
	// or its driver does not support WDIOC_SETTIMEOUT).
	ErrNoTimeout = errors.New("cannot set the watchdog timeout")
)

// Options say which device Open arms and with what timeout.
type Options struct {
	// Path of the device; "" means DefaultPath.
	Path string
	// Timeout, when positive, is set with WDIOC_SETTIMEOUT right after the
	// device is opened, rounded down to whole seconds (the unit of the Linux
	// watchdog API); it must be at least 1s. Open then refuses anything but
	// a character device, and a driver that cannot set it or that rounds it
	// up. Zero leaves the driver's own timeout (e.g. softdog's 60s): only
	// for tests and devices whose timeout is set elsewhere; a regular file
	// is accepted then and stands in for the device.
	Timeout time.Duration
}

// Device is an open, armed Linux watchdog (Documentation/watchdog/
// watchdog-api.rst): from the moment it is opened the kernel resets the
// machine unless it is pinged (Keepalive) at least once per timeout, until
// it is disarmed (Disarm: the magic character 'V', then close).
//
// A Device is not safe for concurrent use; Guard serializes its calls.
type Device struct {
	f       *os.File
	path    string
	timeout time.Duration // effective; 0 when unknown (Options.Timeout 0)
	// writePing: the driver lacks WDIOC_KEEPALIVE (or the "device" is a
	// regular file); ping by writing a byte.
	writePing bool
	closed    bool
}

// Open opens and thereby arms the watchdog at o.Path, then sets o.Timeout.
// If the timeout cannot be set exactly or lower, the device is disarmed
// again (magic close) and an error returned: Open never leaves a device
// armed with a timeout the caller did not accept. Opening fails with EBUSY
// when another process (another holdfast agent on this machine, or a
// watchdog daemon) holds the device.
func Open(o Options) (*Device, error) {
	path := o.Path
	if path == "" {
		path = DefaultPath
	}
	if o.Timeout < 0 || (o.Timeout > 0 && o.Timeout < time.Second) {
		return nil, fmt.Errorf("open watchdog %s: timeout %s is below the 1s minimum", path, o.Timeout)
	}
	if o.Timeout > 0 {
		// Before anything is written to it: writing pings or 'V' into a
		// configuration mistake such as a regular file would corrupt it.
		fi, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("open watchdog: %w", err)
		}
		if fi.Mode()&fs.ModeCharDevice == 0 {
			return nil, fmt.Errorf("open watchdog %s: not a character device (a watchdog device is, e.g. /dev/watchdog)", path)
		}
	}
	// O_WRONLY as the API expects; never O_CREATE: a missing device is an
	// error, not a file to make. os.OpenFile adds O_CLOEXEC, so PostgreSQL
	// and other children never inherit the descriptor (a child holding it
	// would keep the device busy and could not disarm it).
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return nil, fmt.Errorf("open watchdog: %w (another process holds it: another holdfast agent on this machine, or a watchdog daemon)", err)
		}
		return nil, fmt.Errorf("open watchdog: %w", err)
	}
	d := &Device{f: f, path: path}
	if o.Timeout > 0 {
		if _, err := d.SetTimeout(o.Timeout); err != nil {
			if derr := d.Disarm(); derr != nil {
				return nil, errors.Join(err, fmt.Errorf("the device may stay armed and reset this machine: %w", derr))
			}
			return nil, err
		}
	}
	return d, nil
}

// Path is the device's path.
func (d *Device) Path() string { return d.path }

// Timeout is the effective timeout the driver reported, 0 when it was not
// set (Options.Timeout 0).
func (d *Device) Timeout() time.Duration { return d.timeout }

// SetTimeout asks the driver for timeout t, rounded down to whole seconds,
// and returns the timeout the driver actually uses (read back with
// WDIOC_GETTIMEOUT, else as WDIOC_SETTIMEOUT reported it). Setting the
// timeout also pings the device. A driver may round: a shorter effective
// timeout is accepted; a longer one is returned together with an error
// wrapping ErrTimeoutTooLong, and the device stays armed with it — the
// caller decides (Open disarms). A driver that cannot set a timeout gives
// an error wrapping ErrNoTimeout.
func (d *Device) SetTimeout(t time.Duration) (time.Duration, error) {
	if d.closed {
		return 0, fmt.Errorf("set watchdog timeout on %s: %w", d.path, os.ErrClosed)
	}
	want := t.Truncate(time.Second)
	if want < time.Second {
		return 0, fmt.Errorf("set watchdog timeout on %s: %s is below the 1s minimum", d.path, t)
	}
	secs := int32(min(want/time.Second, 1<<31-1))
	// WDIOC_SETTIMEOUT is _IOWR: the driver writes back what it set.
	err := d.control(func(fd uintptr) error {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.WDIOC_SETTIMEOUT, uintptr(unsafe.Pointer(&secs)))
		if e != 0 {
			return e
		}
		return nil
	})
	switch {
	case err == nil:
	case errors.Is(err, unix.EINVAL):
		return 0, fmt.Errorf("set watchdog timeout on %s: the driver refuses %s (outside the range it can count): %w", d.path, want, err)
	case unsupported(err):
		return 0, fmt.Errorf("set watchdog timeout on %s: %w: %w", d.path, ErrNoTimeout, err)
	default:
		return 0, fmt.Errorf("set watchdog timeout %s on %s: %w", want, d.path, err)
	}
	var got int
	err = d.control(func(fd uintptr) error {
		var e error
		got, e = unix.IoctlGetInt(int(fd), unix.WDIOC_GETTIMEOUT)
		return e
	})
	if err != nil {
		got = int(secs) // what WDIOC_SETTIMEOUT reported
	}
	eff := time.Duration(got) * time.Second
	d.timeout = eff
	switch {
	case eff <= 0:
		return eff, fmt.Errorf("set watchdog timeout on %s: asked for %s, the driver reports %s: %w", d.path, want, eff, ErrNoTimeout)
	case eff > want:
		return eff, fmt.Errorf("set watchdog timeout on %s: asked for %s, the driver set %s: %w", d.path, want, eff, ErrTimeoutTooLong)
	}
	return eff, nil
}

// Keepalive pings the device: the kernel's countdown starts again from the
// full timeout. It uses WDIOC_KEEPALIVE, falling back for good to writing a
// byte when the driver (or a regular file standing in for the device) does
// not support the ioctl.
func (d *Device) Keepalive() error {
	if d.closed {
		return fmt.Errorf("ping watchdog %s: %w", d.path, os.ErrClosed)
	}
	if !d.writePing {
		err := d.control(func(fd uintptr) error { return unix.IoctlWatchdogKeepalive(int(fd)) })
		if err == nil {
			return nil
		}
		if !unsupported(err) {
			return fmt.Errorf("ping watchdog %s: %w", d.path, err)
		}
		d.writePing = true
	}
	if _, err := d.f.Write([]byte{keepaliveByte}); err != nil {
		return fmt.Errorf("ping watchdog %s: %w", d.path, err)
	}
	return nil
}

// Disarm stops the watchdog for a planned stop: it writes the magic
// character 'V', then closes the device, which tells the driver the close
// is intended and lets it stop the timer. A driver built with nowayout
// ignores this and resets the machine after the timeout anyway. Disarm
// closes the device even when the write fails; the error then says the
// machine may still be reset. Disarm of a closed device is a no-op.
func (d *Device) Disarm() error {
	if d.closed {
		return nil
	}
	_, werr := d.f.Write([]byte{magicClose})
	cerr := d.close()
	if werr != nil {
		return fmt.Errorf("disarm watchdog %s: write the magic character: %w (the device stays armed and will reset this machine)", d.path, werr)
	}
	if cerr != nil {
		return fmt.Errorf("disarm watchdog %s: %w", d.path, cerr)
	}
	return nil
}

// Close closes the device WITHOUT disarming it: the kernel keeps counting
// down and resets the machine after the timeout unless the device is
// opened and pinged again. Use it only when that reset is wanted (the
// caller could not make its PostgreSQL stop accepting writes); use Disarm
// for a planned stop. Close of a closed device is a no-op.
func (d *Device) Close() error {
	if d.closed {
		return nil
	}
	if err := d.close(); err != nil {
		return fmt.Errorf("close watchdog %s: %w", d.path, err)
	}
	return nil
}

func (d *Device) close() error {
	d.closed = true
	return d.f.Close()
}

// Identity is the driver's name as WDIOC_GETSUPPORT reports it (e.g.
// "Software Watchdog"), "" when the driver does not say.
func (d *Device) Identity() string {
	if d.closed {
		return ""
	}
	var id string
	_ = d.control(func(fd uintptr) error {
		info, err := unix.IoctlGetWatchdogInfo(int(fd))
		if err != nil {
			return err
		}
		b := info.Identity[:]
		if i := strings.IndexByte(string(b), 0); i >= 0 {
			b = b[:i]
		}
		id = strings.TrimSpace(string(b))
		return nil
	})
	return id
}

// control runs fn with the device's descriptor, kept open meanwhile.
func (d *Device) control(fn func(fd uintptr) error) error {
	rc, err := d.f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(fd) }); err != nil {
		return err
	}
	return ferr
}

// unsupported reports whether err means "this ioctl is not available on
// this file": not a watchdog at all (ENOTTY), or a driver without the
// feature (EOPNOTSUPP, EINVAL).
func unsupported(err error) bool {
	return errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS)
}
