package cluster

import (
	"strings"
	"testing"
	"time"
)

func validConfig() Config {
	return Config{TTL: 4 * time.Second, LoopInterval: time.Second, MaximumLagOnFailover: 1 << 20,
		PrimaryStartTimeout: 10 * time.Second, SynchronousMode: SyncOff, SynchronousNodeCount: 1}
}

func TestConfigProblems(t *testing.T) {
	const fence = time.Second
	if ps := validConfig().Problems(fence); len(ps) != 0 {
		t.Fatalf("valid config: %v", ps)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   []string // "key: message" prefixes, in order; nil = valid
	}{
		{"negative ttl", func(c *Config) { c.TTL = -4 * time.Second }, []string{"ttl: -4s is negative (write a duration of at least 2s, e.g. 4s)"}},
		{"short ttl", func(c *Config) { c.TTL = 1500 * time.Millisecond }, []string{"ttl: 1.5s is too short (minimum 2s)"}},
		{"negative loop", func(c *Config) { c.LoopInterval = -time.Second }, []string{"loop_interval: -1s is negative"}},
		{"short loop", func(c *Config) { c.LoopInterval = 50 * time.Millisecond }, []string{"loop_interval: 50ms is too short (minimum 100ms)"}},
		{"ttl against loop", func(c *Config) { c.LoopInterval = 2 * time.Second }, []string{"ttl: 4s is too short for loop_interval 2s: it must be at least 2 × loop_interval + the fence margin (1s) = 5s"}},
		{"ttl exactly enough", func(c *Config) { c.TTL = 3 * time.Second }, nil},
		{"huge loop does not overflow", func(c *Config) { c.LoopInterval = 1<<63 - 1 }, []string{"ttl: 4s is too short for loop_interval"}},
		{"negative lag", func(c *Config) { c.MaximumLagOnFailover = -1 }, []string{"maximum_lag_on_failover: -1 is negative"}},
		{"no lag at all", func(c *Config) { c.MaximumLagOnFailover = 0 }, nil},
		{"largest lag", func(c *Config) { c.MaximumLagOnFailover = MaxLagOnFailoverLimit }, nil},
		{"lag beyond the limit", func(c *Config) { c.MaximumLagOnFailover = MaxLagOnFailoverLimit + 1 }, []string{"maximum_lag_on_failover: 1125899906842625 bytes is more than the limit of 1125899906842624 bytes (1024TiB)"}},
		{"lag of 2^63-1", func(c *Config) { c.MaximumLagOnFailover = 1<<63 - 1 }, []string{"maximum_lag_on_failover: 9223372036854775807 bytes is more than the limit"}},
		{"negative primary_start_timeout", func(c *Config) { c.PrimaryStartTimeout = -time.Second }, []string{"primary_start_timeout: -1s is negative"}},
		{"unknown mode", func(c *Config) { c.SynchronousMode = "yes" }, []string{`synchronous_mode: "yes" is not a mode (write one of off, on, strict, quorum)`}},
		{"mode left out", func(c *Config) { c.SynchronousMode = "" }, []string{`synchronous_mode: "" is not a mode`}},
		{"count zero", func(c *Config) { c.SynchronousNodeCount = 0 }, []string{"synchronous_node_count: 0 must be at least 1"}},
		{"every problem", func(c *Config) {
			*c = Config{TTL: -1, LoopInterval: -1, MaximumLagOnFailover: -1, PrimaryStartTimeout: -1}
		},
			[]string{"ttl:", "loop_interval:", "maximum_lag_on_failover:", "primary_start_timeout:", "synchronous_mode:", "synchronous_node_count:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.mutate(&c)
			ps := c.Problems(fence)
			if len(ps) != len(tc.want) {
				t.Fatalf("Problems = %v, want %d: %q", ps, len(tc.want), tc.want)
			}
			for i, p := range ps {
				if !strings.HasPrefix(p.Error(), tc.want[i]) {
					t.Errorf("problem %d = %q, want it to start with %q", i, p.Error(), tc.want[i])
				}
			}
			if err := c.Validate(fence); (err == nil) != (len(tc.want) == 0) {
				t.Errorf("Validate = %v, Problems = %v", err, ps)
			}
		})
	}
}

// A stored configuration that leaves out the synchronous settings reads as
// off and 1, and is valid once normalised.
func TestConfigNormalized(t *testing.T) {
	c := validConfig()
	c.SynchronousMode, c.SynchronousNodeCount = "", 0
	n := c.Normalized()
	if n.SynchronousMode != SyncOff || n.SynchronousNodeCount != 1 {
		t.Fatalf("Normalized = %+v", n)
	}
	if err := n.Validate(time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		4 * time.Second: "4s", 500 * time.Millisecond: "500ms", 90 * time.Second: "1m30s",
		time.Minute: "1m", 2 * time.Hour: "2h", -4 * time.Second: "-4s", 0: "0s",
	} {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestParseBackupSchedule(t *testing.T) {
	s, err := ParseBackupSchedule(" full=168h, diff=24h,incr=1h ")
	if err != nil || s != (BackupSchedule{Full: 168 * time.Hour, Diff: 24 * time.Hour, Incr: time.Hour}) {
		t.Fatalf("ParseBackupSchedule = %+v, %v", s, err)
	}
	if got := s.String(); got != "full=168h,diff=24h,incr=1h" {
		t.Errorf("String = %q", got)
	}
	if s, err := ParseBackupSchedule(""); err != nil || !s.IsZero() {
		t.Errorf("empty: %+v %v", s, err)
	}
	for in, want := range map[string]string{
		"full":            "want type=interval",
		"weekly=1h":       "is not a backup type",
		"incr=1h,incr=2h": "incr is given twice",
		"incr=soon":       "not a duration",
		"incr=30s":        "shorter than 1m",
		",":               "want type=interval",
	} {
		if _, err := ParseBackupSchedule(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseBackupSchedule(%q) = %v, want %q", in, err, want)
		}
	}
	c := validConfig()
	c.BackupSchedule = "incr=30s"
	if ps := c.Problems(time.Second); len(ps) != 1 || !strings.HasPrefix(ps[0].Error(), "backup_schedule: incr=30s: shorter than 1m") {
		t.Errorf("Problems = %v", ps)
	}
}
