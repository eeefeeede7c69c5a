package store

import (
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// The backup schedule survives the store: the leader's agent reads it from
// there.
func TestConfigCodecKeepsBackupSchedule(t *testing.T) {
	in := cluster.Config{TTL: 4 * time.Second, LoopInterval: time.Second, BackupSchedule: "full=168h,incr=1h"}
	b, err := EncodeConfig(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeConfig(b)
	if err != nil || out != in {
		t.Fatalf("round trip: %+v, %v; want %+v", out, err, in)
	}
}
