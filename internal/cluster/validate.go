package cluster

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/quote"
)

// Bounds of the dynamic configuration, checked by Config.Problems.
const (
	// MinTTL is the shortest leader lease: a shorter one would be lost to
	// an ordinary hiccup of the network or the store's disk.
	MinTTL = 2 * time.Second
	// MinLoopInterval is the shortest loop interval.
	MinLoopInterval = 100 * time.Millisecond
	// MaxLagOnFailoverLimit is the largest maximum_lag_on_failover, 1024
	// TiB (the message in Problems names it so). A larger bound guards
	// nothing a real cluster can lag by; from 2^62 bytes on it would
	// moreover admit a switchover candidate on an older timeline (whose lag
	// is counted as 2^62): the guard silently switched off.
	MaxLagOnFailoverLimit = 1 << 50
)

// SettingError is one invalid setting of the dynamic configuration: the key
// at fault and what is wrong with it, including how to fix it.
type SettingError struct {
	Key string
	Err error
}

func (e SettingError) Error() string { return e.Key + ": " + e.Err.Error() }

func (e SettingError) Unwrap() error { return e.Err }

// Problems is the one validator of the dynamic configuration: package
// config runs it on the configuration file at start-up (the values a
// bootstrapping member writes to the store), and PATCH /config (ctl
// edit-config) on the result of every change, before anything is written.
// It lists every invalid setting, in key order; none means valid.
//
// fenceMargin is how long before its lease could expire a primary that
// failed to renew it stops accepting writes (config.Config.FenceMargin).
// The mode and count are judged as written: a stored configuration that
// leaves them out ("" and 0) must be Normalized first.
func (c Config) Problems(fenceMargin time.Duration) []SettingError {
	var ps []SettingError
	bad := func(key, format string, args ...any) {
		ps = append(ps, SettingError{key, fmt.Errorf(format, args...)})
	}
	ttlOK := duration(&ps, "ttl", c.TTL, MinTTL, "4s")
	loopOK := duration(&ps, "loop_interval", c.LoopInterval, MinLoopInterval, "1s")
	if ttlOK && loopOK {
		if need := addSat(addSat(c.LoopInterval, c.LoopInterval), fenceMargin); c.TTL < need {
			bad("ttl", "%s is too short for loop_interval %s: it must be at least 2 × loop_interval + the fence margin (%s) = %s, so that a primary can miss one lease renewal and still fence itself (stop accepting writes) before its lease expires and another member is promoted (raise ttl or lower loop_interval)",
				FormatDuration(c.TTL), FormatDuration(c.LoopInterval), FormatDuration(fenceMargin), FormatDuration(need))
		}
	}
	switch n := c.MaximumLagOnFailover; {
	case n < 0:
		bad("maximum_lag_on_failover", "%d is negative (write 0 or more bytes, e.g. 16MB)", n)
	case n > MaxLagOnFailoverLimit:
		bad("maximum_lag_on_failover", "%d bytes is more than the limit of %d bytes (1024TiB): a larger bound guards nothing, and from 2^62 bytes on it would even let a member of an older timeline take over (write the most WAL a failover may lose, e.g. 16MB)", n, int64(MaxLagOnFailoverLimit))
	}
	if c.PrimaryStartTimeout < 0 {
		bad("primary_start_timeout", "%s is negative (write 0s or more)", FormatDuration(c.PrimaryStartTimeout))
	}
	if !slices.Contains(SyncModes(), c.SynchronousMode) {
		bad("synchronous_mode", "%s is not a mode (write one of %s)", quote.Value(c.SynchronousMode), strings.Join(SyncModes(), ", "))
	}
	if c.SynchronousNodeCount < 1 {
		bad("synchronous_node_count", "%d must be at least 1", c.SynchronousNodeCount)
	}
	if _, err := ParseBackupSchedule(c.BackupSchedule); err != nil {
		bad("backup_schedule", "%v (write e.g. full=168h,diff=24h,incr=1h, or nothing for backups on demand only)", err)
	}
	return ps
}

// duration checks a duration setting against its minimum and reports
// whether it passed.
func duration(ps *[]SettingError, key string, d, minimum time.Duration, example string) bool {
	switch {
	case d < 0:
		*ps = append(*ps, SettingError{key, fmt.Errorf("%s is negative (write a duration of at least %s, e.g. %s)", FormatDuration(d), FormatDuration(minimum), example)})
	case d < minimum:
		*ps = append(*ps, SettingError{key, fmt.Errorf("%s is too short (minimum %s)", FormatDuration(d), FormatDuration(minimum))})
	default:
		return true
	}
	return false
}

// Validate is Problems as one error (nil when valid): every problem on a
// line of its own, each naming its key.
func (c Config) Validate(fenceMargin time.Duration) error {
	ps := c.Problems(fenceMargin)
	errs := make([]error, len(ps))
	for i, p := range ps {
		errs[i] = p
	}
	return errors.Join(errs...)
}

// Normalized returns c with the settings a stored configuration may leave
// out filled in as they read: the mode "" as SyncOff, the count 0 as 1.
func (c Config) Normalized() Config {
	c.SynchronousMode = c.SyncMode()
	c.SynchronousNodeCount = c.SyncCount()
	return c
}

// FormatDuration writes d the way configuration files and the API read it
// back: "4s", "500ms", "1m30s", "1m", "1h" (trailing zero units dropped).
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// addSat adds two non-negative durations, saturating instead of
// overflowing.
func addSat(a, b time.Duration) time.Duration {
	if b > 0 && a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}
