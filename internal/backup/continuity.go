package backup

import (
	"bufio"
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Switch is one line of a timeline history file: timeline Timeline ended
// at LSN, where its child began.
type Switch struct {
	Timeline uint32
	LSN      uint64
}

// ParseHistory reads a timeline history file (pg_wal/<TLI>.history): one
// "parent-timeline <TAB> switch-LSN <TAB> reason" line per ancestor, oldest
// first; blank lines and '#' comments are skipped.
func ParseHistory(b []byte) ([]Switch, error) {
	var out []Switch
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			return nil, fmt.Errorf("timeline history line %d %q: want a timeline and a switch point", n, line)
		}
		tli, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil || tli == 0 {
			return nil, fmt.Errorf("timeline history line %d: %q is not a timeline", n, f[0])
		}
		lsn, ok := parseLSN(f[1])
		if !ok {
			return nil, fmt.Errorf("timeline history line %d: %q is not a WAL position", n, f[1])
		}
		out = append(out, Switch{Timeline: uint32(tli), LSN: lsn})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read timeline history: %w", err)
	}
	return out, nil
}

// SegmentName is the WAL file name of segment segNo of timeline tli with
// segments of segSize bytes.
func SegmentName(tli uint32, segNo, segSize uint64) string {
	perID := uint64(0x100000000) / segSize
	return fmt.Sprintf("%08X%08X%08X", tli, segNo/perID, segNo%perID)
}

// parseSegment reads a WAL segment file name (24 hex digits).
func parseSegment(name string, segSize uint64) (tli uint32, segNo uint64, ok bool) {
	if len(name) != 24 {
		return 0, 0, false
	}
	var parts [3]uint64
	for i := range parts {
		v, err := strconv.ParseUint(name[i*8:i*8+8], 16, 32)
		if err != nil || strings.ToUpper(name[i*8:i*8+8]) != name[i*8:i*8+8] {
			return 0, 0, false
		}
		parts[i] = v
	}
	perID := uint64(0x100000000) / segSize
	if parts[2] >= perID {
		return 0, 0, false
	}
	return uint32(parts[0]), parts[1]*perID + parts[2], true
}

// EarlierTimelineSegments picks, among the file names of a promoted
// member's pg_wal, the complete segments of its ancestor timelines: for
// each timeline in history, the segments of that timeline before the one
// holding its switch point. Those hold WAL the member received while it
// followed the old primary, which its own archiver never pushes (a
// standby's received segments are not archived with archive_mode on): if
// the old primary stopped before archiving them, the archive has a gap
// until they are pushed. The segment holding a switch point is left out
// (its old-timeline copy may hold WAL past the switch; the new timeline's
// copy and PostgreSQL's .partial file cover it), and so are later ones (a
// standby recycles old files to future names). Sorted.
func EarlierTimelineSegments(names []string, history []Switch, segSize uint64) []string {
	end := map[uint32]uint64{}
	for _, s := range history {
		end[s.Timeline] = s.LSN / segSize
	}
	var out []string
	for _, n := range names {
		tli, seg, ok := parseSegment(n, segSize)
		if !ok {
			continue
		}
		if last, ok := end[tli]; ok && seg < last {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}
