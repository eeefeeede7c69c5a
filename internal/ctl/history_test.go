package ctl

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

func TestWriteHistoryShowsDiscards(t *testing.T) {
	at := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	hist := []cluster.HistoryEntry{
		{Timeline: 2, SwitchLSN: 0x5000000, Leader: "pg-1", Reason: "manual failover", At: at,
			Discarded: []cluster.Discard{{Member: "pg-0", Timeline: 1, End: 0x5300000, At: at.Add(time.Minute)}}},
	}
	var b bytes.Buffer
	WriteHistory(&b, hist)
	want := "     discarded: pg-0's rewind at 2026-05-01T10:01:00Z threw away 3145728 bytes of timeline 1 WAL (0/5000000 to 0/5300000)\n"
	if !strings.HasSuffix(b.String(), want) || !strings.Contains(b.String(), "manual failover") {
		t.Fatalf("history:\n%s\nwant it to end with\n%s", b.String(), want)
	}
}
