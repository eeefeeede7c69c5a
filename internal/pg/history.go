package pg

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/holdfast/holdfast/internal/cluster"
)

// TimelineSwitch is one line of a timeline history file: timeline
// ParentTimeline ended at SwitchPoint, where the next timeline began.
type TimelineSwitch struct {
	ParentTimeline uint32
	SwitchPoint    cluster.LSN
	Reason         string
}

// ParseHistory parses the content of a timeline history file
// (pg_wal/XXXXXXXX.history): lines "parentTLI<TAB>switchpoint<TAB>reason",
// with blank lines and lines starting with '#' ignored, as PostgreSQL reads
// them. Parent timelines must increase from line to line; the reason may be
// empty. The result lists the ancestry oldest first; a file for timeline N
// has N-1 entries or fewer (timelines abandoned before use leave gaps).
func ParseHistory(content string) ([]TimelineSwitch, error) {
	var out []TimelineSwitch
	for i, raw := range strings.Split(content, "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			return nil, fmt.Errorf("parse timeline history: line %d %q: want parent timeline, switch point and reason", i+1, line)
		}
		tli, err := strconv.ParseUint(fields[0], 10, 32)
		if err != nil || tli == 0 {
			return nil, fmt.Errorf("parse timeline history: line %d: bad timeline %q", i+1, fields[0])
		}
		lsn, err := cluster.ParseLSN(fields[1])
		if err != nil {
			return nil, fmt.Errorf("parse timeline history: line %d: %w", i+1, err)
		}
		if n := len(out); n > 0 {
			prev := out[n-1]
			if uint32(tli) <= prev.ParentTimeline {
				return nil, fmt.Errorf("parse timeline history: line %d: timeline %d does not follow %d", i+1, tli, prev.ParentTimeline)
			}
			if lsn < prev.SwitchPoint {
				return nil, fmt.Errorf("parse timeline history: line %d: switch point %s is before the previous one %s", i+1, lsn, prev.SwitchPoint)
			}
		}
		reason := ""
		if parts := strings.SplitN(line, "\t", 3); len(parts) == 3 {
			reason = strings.TrimSpace(parts[2])
		} else if len(fields) > 2 {
			reason = strings.Join(fields[2:], " ")
		}
		out = append(out, TimelineSwitch{ParentTimeline: uint32(tli), SwitchPoint: lsn, Reason: reason})
	}
	return out, nil
}

// historyFileName is the name PostgreSQL gives timeline tli's history file.
func historyFileName(tli uint32) string { return fmt.Sprintf("%08X.history", tli) }
