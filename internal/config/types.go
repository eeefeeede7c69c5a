package config

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/quote"
)

// Duration is a time.Duration written in YAML as "10s", "500ms", "1m".
// A bare integer means seconds.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats d the way Load reads it back: "4s", "500ms", "1m30s",
// "1h" (trailing zero units are dropped).
func (d Duration) String() string { return cluster.FormatDuration(time.Duration(d)) }

// parseDuration reads "10s", "500ms", "1h30m" or a bare integer of seconds.
func parseDuration(s string) (Duration, error) {
	t := strings.TrimSpace(s)
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		if n > math.MaxInt64/int64(time.Second) || n < math.MinInt64/int64(time.Second) {
			return 0, fmt.Errorf("%s seconds is out of range", quote.Value(s))
		}
		return Duration(time.Duration(n) * time.Second), nil
	}
	d, err := time.ParseDuration(t)
	if err != nil {
		return 0, fmt.Errorf(`%s is not a duration (write e.g. "10s" or "500ms")`, quote.Value(s))
	}
	return Duration(d), nil
}

// ByteSize is a size written as a number of bytes or with a unit:
// "16MB", "1MiB", "512kB" (PostgreSQL-style units are binary: 1kB = 1024).
type ByteSize int64

// Bytes returns b as a number of bytes.
func (b ByteSize) Bytes() int64 { return int64(b) }

// String formats b with the largest binary unit that divides it exactly
// ("1MiB", "512KiB"), else as bytes ("1000B"); Load reads it back.
func (b ByteSize) String() string {
	n := int64(b)
	if n != 0 {
		for i := len(binaryUnits) - 1; i >= 0; i-- {
			if u := binaryUnits[i]; n%u.mult == 0 {
				return strconv.FormatInt(n/u.mult, 10) + u.name
			}
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// binaryUnits are the IEC units String writes, smallest first.
var binaryUnits = []struct {
	name string
	mult int64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}}

var byteSizeRe = regexp.MustCompile(`^([+-]?[0-9]+)\s*(B|kB|MB|GB|TB|KiB|MiB|GiB|TiB)?$`)

// ParseByteSize reads a number of bytes, optionally followed by a unit:
// B, kB, MB, GB, TB (binary, as PostgreSQL reads them) or KiB..TiB. It is
// the one size parser: the API's ?lag= and config patches use it too.
func ParseByteSize(s string) (ByteSize, error) {
	m := byteSizeRe.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf(`%s is not a size (write a number of bytes, or a number with a unit: B, kB, MB, GB, TB, KiB, MiB, GiB, TiB; e.g. "16MB")`, quote.Value(s))
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s is out of range", quote.Value(s))
	}
	var mult int64 = 1
	switch m[2] {
	case "kB", "KiB":
		mult = 1 << 10
	case "MB", "MiB":
		mult = 1 << 20
	case "GB", "GiB":
		mult = 1 << 30
	case "TB", "TiB":
		mult = 1 << 40
	}
	if n > math.MaxInt64/mult || n < math.MinInt64/mult {
		return 0, fmt.Errorf("%s is out of range", quote.Value(s))
	}
	return ByteSize(n * mult), nil
}
