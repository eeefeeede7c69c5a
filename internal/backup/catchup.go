package backup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// checkTimeout bounds `pgbackrest check` (a WAL switch reaching the
// archive: pgBackRest's archive-timeout, plus its start).
const checkTimeout = 3 * time.Minute

// ArchiveCheck is the last `pgbackrest check` the leader ran: once per
// leadership term, after pushing what the previous primary left
// unarchived.
type ArchiveCheck struct {
	Member string    `json:"member"`
	At     time.Time `json:"at"`
	// Pushed is how many segments of earlier timelines this primary pushed
	// first.
	Pushed int    `json:"pushed"`
	Error  string `json:"error,omitempty"`
}

// secureArchive runs once per leadership term, after the stanza is ready:
// it pushes the complete segments of earlier timelines the archive lacks
// (EarlierTimelineSegments: what the previous primary could not archive
// before it stopped), then runs `pgbackrest check`, which switches WAL and
// waits for the segment to reach the archive.
func (m *Member) secureArchive(ctx context.Context) ArchiveCheck {
	res := ArchiveCheck{Member: m.o.Member}
	n, err := m.pushEarlierTimelines(ctx)
	res.Pushed = n
	if err == nil {
		c, cancel := context.WithTimeout(ctx, checkTimeout)
		err = m.tool.Check(c)
		cancel()
	}
	res.At = time.Now().UTC()
	if err != nil {
		res.Error = err.Error()
	}
	return res
}

// pushEarlierTimelines pushes the segments of earlier timelines in this
// primary's pg_wal that the archive does not hold, and returns how many.
// Each push needs the archive gate's grant, like PostgreSQL's own.
func (m *Member) pushEarlierTimelines(ctx context.Context) (int, error) {
	const op = "push the earlier timelines' segments"
	qc, cancel := context.WithTimeout(ctx, queryTimeout)
	conn, err := m.connect(qc, m.o.Host, m.o.Port)
	if err != nil {
		cancel()
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	var walFile string
	var segSize int64
	err = conn.QueryRow(qc, `SELECT pg_walfile_name(pg_current_wal_lsn()), (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')`).Scan(&walFile, &segSize)
	conn.Close(context.WithoutCancel(qc))
	cancel()
	if err != nil {
		return 0, fmt.Errorf("%s: read the current timeline: %w", op, err)
	}
	tli, err := strconv.ParseUint(walFile[:8], 16, 32)
	if err != nil || segSize <= 0 {
		return 0, fmt.Errorf("%s: WAL file %q, segment size %d: not understood", op, walFile, segSize)
	}
	if tli == 1 {
		return 0, nil
	}
	walDir := filepath.Join(m.o.PGData, "pg_wal")
	hist, err := os.ReadFile(filepath.Join(walDir, fmt.Sprintf("%08X.history", tli)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	history, err := ParseHistory(hist)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	entries, err := os.ReadDir(walDir)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	candidates := EarlierTimelineSegments(names, history, uint64(segSize))
	if len(candidates) == 0 {
		return 0, nil
	}
	ic, cancel := context.WithTimeout(ctx, infoTimeout)
	st, err := m.tool.Info(ic)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	if st.ArchiveID == "" {
		return 0, fmt.Errorf("%s: stanza %s has no database yet", op, m.o.Stanza)
	}
	archived := map[string]bool{}
	listed := map[string]bool{}
	pushed := 0
	for _, seg := range candidates {
		if dir := seg[:16]; !listed[dir] {
			lc, cancel := context.WithTimeout(ctx, infoTimeout)
			files, err := m.tool.ListArchive(lc, st.ArchiveID+"/"+dir)
			cancel()
			if err != nil {
				return pushed, fmt.Errorf("%s: %w", op, err)
			}
			for _, f := range files {
				if seg, ok := archivedSegment(f); ok {
					archived[seg] = true
				}
			}
			listed[dir] = true
		}
		if archived[seg] {
			continue
		}
		if err := m.gate.Check(); err != nil {
			if errors.Is(err, ErrNotGranted) {
				return pushed, fmt.Errorf("%s: %w", op, err)
			}
			return pushed, err
		}
		pc, cancel := context.WithTimeout(ctx, checkTimeout)
		err := m.tool.ArchivePush(pc, filepath.Join(walDir, seg))
		cancel()
		if err != nil {
			return pushed, fmt.Errorf("%s: %s: %w", op, seg, err)
		}
		pushed++
		m.log.Info("pushed a segment the previous primary had not archived", "segment", seg)
	}
	return pushed, nil
}

// archivedSegment reads a file name of the repository's archive: the WAL
// segment it holds, when it is a segment archived whole — SEGMENT-SHA1,
// perhaps with the compression's extension. A push cut short (the old
// primary killed while archiving: the failover this catch-up is for)
// leaves its temporary file, named like the segment's with
// ".pgbackrest.tmp" appended; counting it as archived would leave the
// segment out of the archive for good, and a restore could not get past
// it.
func archivedSegment(name string) (string, bool) {
	const segLen, sumLen = 24, 40
	if len(name) < segLen+1+sumLen || name[segLen] != '-' {
		return "", false
	}
	seg, sum, rest := name[:segLen], name[segLen+1:segLen+1+sumLen], name[segLen+1+sumLen:]
	if !isHex(seg, true) || !isHex(sum, false) {
		return "", false
	}
	if rest != "" && (rest[0] != '.' || len(rest) == 1 || strings.Contains(rest[1:], ".")) {
		return "", false
	}
	return seg, true
}

// isHex says whether s is all hexadecimal digits, in upper case when upper
// (segment names), in lower case otherwise (checksums).
func isHex(s string, upper bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
		case upper && c >= 'A' && c <= 'F':
		case !upper && c >= 'a' && c <= 'f':
		default:
			return false
		}
	}
	return true
}
