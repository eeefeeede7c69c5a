package agent

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
)

// PATCH /config runs the one validator of the dynamic configuration on the
// result: an invalid value is refused as invalid (naming key and rule)
// before the rules about changing a running cluster, and a refused change
// writes nothing.
func TestPatchConfigValidatesFirstAndWritesNothingWhenRefused(t *testing.T) {
	stored := cluster.Config{TTL: 4 * time.Second, LoopInterval: time.Second, MaximumLagOnFailover: 1 << 20,
		PrimaryStartTimeout: 10 * time.Second} // mode and count left out, as an older writer did
	members := map[string]cluster.MemberInfo{"pg-0": {Name: "pg-0"}, "pg-1": {Name: "pg-1"}, "w": {Name: "w", Witness: true}}
	dur := func(d time.Duration) *time.Duration { return &d }
	size := func(n int64) *int64 { return &n }
	count := func(n int) *int { return &n }
	mode := func(m string) *string { return &m }
	for _, tc := range []struct {
		name  string
		patch api.ConfigPatch
		want  string // in the 400's message; "" = accepted
	}{
		{"negative ttl", api.ConfigPatch{TTL: dur(-4 * time.Second)},
			"invalid cluster configuration: ttl: -4s is negative (write a duration of at least 2s, e.g. 4s)"},
		{"short ttl", api.ConfigPatch{TTL: dur(time.Second)}, "invalid cluster configuration: ttl: 1s is too short (minimum 2s)"},
		{"changed ttl", api.ConfigPatch{TTL: dur(6 * time.Second)}, "ttl cannot be changed on a running cluster yet"},
		{"zero loop_interval", api.ConfigPatch{LoopInterval: dur(0)}, "invalid cluster configuration: loop_interval: 0s is too short (minimum 100ms)"},
		{"loop_interval against ttl", api.ConfigPatch{LoopInterval: dur(2 * time.Second)},
			"invalid cluster configuration: ttl: 4s is too short for loop_interval 2s: it must be at least 2 × loop_interval + the fence margin (1s) = 5s"},
		{"absurd lag", api.ConfigPatch{MaximumLagOnFailover: size(1<<63 - 1)},
			"invalid cluster configuration: maximum_lag_on_failover: 9223372036854775807 bytes is more than the limit of 1125899906842624 bytes (1024TiB)"},
		{"lag of 2^62", api.ConfigPatch{MaximumLagOnFailover: size(1 << 62)}, "maximum_lag_on_failover: 4611686018427387904 bytes is more than the limit"},
		{"negative lag", api.ConfigPatch{MaximumLagOnFailover: size(-1)}, "invalid cluster configuration: maximum_lag_on_failover: -1 is negative"},
		{"negative primary_start_timeout", api.ConfigPatch{PrimaryStartTimeout: dur(-time.Second)}, "primary_start_timeout: -1s is negative"},
		{"unknown mode", api.ConfigPatch{SynchronousMode: mode("always")}, `synchronous_mode: "always" is not a mode`},
		{"zero count", api.ConfigPatch{SynchronousNodeCount: count(0)}, "synchronous_node_count: 0 must be at least 1"},
		{"two problems at once", api.ConfigPatch{TTL: dur(-time.Second), MaximumLagOnFailover: size(-5)},
			"ttl: -1s is negative (write a duration of at least 2s, e.g. 4s); maximum_lag_on_failover: -5 is negative"},
		{"more synchronous standbys than replicas", api.ConfigPatch{SynchronousMode: mode(cluster.SyncStrict), SynchronousNodeCount: count(2)},
			"synchronous_node_count 2 is larger than the number of replicas (1)"},
		{"same ttl", api.ConfigPatch{TTL: dur(4 * time.Second)}, ""},
		{"largest lag", api.ConfigPatch{MaximumLagOnFailover: size(cluster.MaxLagOnFailoverLimit)}, ""},
		{"lag and loop", api.ConfigPatch{MaximumLagOnFailover: size(16 << 20), LoopInterval: dur(500 * time.Millisecond)}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := stored
			st := &fakeStore{view: cluster.View{Config: &c, Members: members}}
			a := New(Options{Cluster: "c", Self: cluster.MemberInfo{Name: "pg-0"}, Defaults: stored, FenceMargin: time.Second, Store: st})
			got, err := a.Backend().PatchConfig(context.Background(), tc.patch)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("PatchConfig(%s): %v", tc.patch, err)
				}
				if len(st.configs) != 1 || st.configs[0] != got {
					t.Fatalf("wrote %v, want exactly the returned %v", st.configs, got)
				}
				if got.SyncMode() != cluster.SyncOff || got.SynchronousNodeCount != 1 {
					t.Errorf("wrote mode %q count %d, want the stored omissions filled in as they read", got.SynchronousMode, got.SynchronousNodeCount)
				}
				return
			}
			var apiErr *api.Error
			if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest || !strings.Contains(apiErr.Message, tc.want) {
				t.Fatalf("PatchConfig(%s) = %v; want a 400 containing %q", tc.patch, err, tc.want)
			}
			if len(st.configs) != 0 {
				t.Errorf("a refused change wrote %v", st.configs)
			}
		})
	}
}
