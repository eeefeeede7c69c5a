package ctl

import (
	"fmt"
	"io"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// WriteHistory prints the timeline history as `ctl history` shows it: one
// line per promotion, and under it one line per rewind of a former primary
// that discarded WAL past the switch point (commits acknowledged there are
// lost unless another member held them).
func WriteHistory(w io.Writer, hist []cluster.HistoryEntry) {
	fmt.Fprintf(w, "%-4s %-14s %-10s %-25s %s\n", "TL", "SWITCH LSN", "LEADER", "AT", "REASON")
	for _, h := range hist {
		fmt.Fprintf(w, "%-4d %-14s %-10s %-25s %s\n", h.Timeline, h.SwitchLSN, h.Leader, h.At.Format(time.RFC3339), h.Reason)
		for _, d := range h.Discarded {
			fmt.Fprintf(w, "     discarded: %s's rewind at %s threw away %d bytes of timeline %d WAL (%s to %s)\n",
				d.Member, d.At.Format(time.RFC3339), h.Bytes(d), d.Timeline, h.SwitchLSN, d.End)
		}
	}
}
