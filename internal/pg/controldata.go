package pg

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/holdfast/holdfast/internal/cluster"
)

// ClusterState is pg_control's "Database cluster state".
type ClusterState string

// The states pg_controldata prints (in the C locale).
const (
	StateStartingUp         ClusterState = "starting up"
	StateShutDown           ClusterState = "shut down"
	StateShutDownInRecovery ClusterState = "shut down in recovery"
	StateShuttingDown       ClusterState = "shutting down"
	StateInCrashRecovery    ClusterState = "in crash recovery"
	StateInArchiveRecovery  ClusterState = "in archive recovery"
	StateInProduction       ClusterState = "in production"
)

// CleanShutdown reports whether the data directory was shut down cleanly
// (as a primary or as a standby); anything else means a crash, and
// PostgreSQL (or pg_rewind) will run crash recovery first.
func (s ClusterState) CleanShutdown() bool {
	return s == StateShutDown || s == StateShutDownInRecovery
}

// ControlData is what holdfast reads from pg_controldata. It describes the
// data directory as of its last checkpoint: the timeline of a primary
// promoted since then is newer than CheckpointTimeline until the next
// checkpoint completes.
type ControlData struct {
	SystemID           string       // "Database system identifier", decimal
	State              ClusterState // "Database cluster state"
	CheckpointLSN      cluster.LSN  // "Latest checkpoint location"
	CheckpointRedoLSN  cluster.LSN  // "Latest checkpoint's REDO location"
	CheckpointTimeline uint32       // "Latest checkpoint's TimeLineID"
	// MinRecoveryLSN and MinRecoveryTimeline: a standby (or a rewound
	// directory) must replay at least to here before it is consistent; 0
	// when no minimum is recorded.
	MinRecoveryLSN      cluster.LSN
	MinRecoveryTimeline uint32
	DataChecksums       bool // "Data page checksum version" is not 0
	WALLogHints         bool // "wal_log_hints setting"
}

// ParseControlData parses the output of pg_controldata run with LC_ALL=C
// (the labels are translated in other locales). It fails when the system
// identifier, the state, the checkpoint location or its timeline is
// missing or malformed; the other fields are optional (zero when absent).
func ParseControlData(out string) (ControlData, error) {
	fields := make(map[string]string)
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		k = strings.TrimSpace(k)
		if _, seen := fields[k]; !seen {
			fields[k] = strings.TrimSpace(v)
		}
	}
	var cd ControlData
	fail := func(what string, err error) (ControlData, error) {
		if err != nil {
			return ControlData{}, fmt.Errorf("parse pg_controldata output: %s: %w", what, err)
		}
		return ControlData{}, fmt.Errorf("parse pg_controldata output: %s missing (was pg_controldata run with LC_ALL=C?)", what)
	}

	sysid, ok := fields["Database system identifier"]
	if !ok || sysid == "" {
		return fail("Database system identifier", nil)
	}
	if _, err := strconv.ParseUint(sysid, 10, 64); err != nil {
		return fail("Database system identifier", err)
	}
	cd.SystemID = sysid

	state, ok := fields["Database cluster state"]
	if !ok || state == "" {
		return fail("Database cluster state", nil)
	}
	cd.State = ClusterState(state)

	lsn := func(key string, required bool, dst *cluster.LSN) error {
		v, ok := fields[key]
		if !ok {
			if required {
				_, err := fail(key, nil)
				return err
			}
			return nil
		}
		l, err := cluster.ParseLSN(v)
		if err != nil {
			_, err = fail(key, err)
			return err
		}
		*dst = l
		return nil
	}
	tli := func(key string, required bool, dst *uint32) error {
		v, ok := fields[key]
		if !ok {
			if required {
				_, err := fail(key, nil)
				return err
			}
			return nil
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			_, err = fail(key, err)
			return err
		}
		*dst = uint32(n)
		return nil
	}
	for _, err := range []error{
		lsn("Latest checkpoint location", true, &cd.CheckpointLSN),
		lsn("Latest checkpoint's REDO location", false, &cd.CheckpointRedoLSN),
		tli("Latest checkpoint's TimeLineID", true, &cd.CheckpointTimeline),
		lsn("Minimum recovery ending location", false, &cd.MinRecoveryLSN),
		tli("Min recovery ending loc's timeline", false, &cd.MinRecoveryTimeline),
	} {
		if err != nil {
			return ControlData{}, err
		}
	}
	if cd.CheckpointTimeline == 0 {
		return fail("Latest checkpoint's TimeLineID", fmt.Errorf("timeline 0 does not exist"))
	}
	if v, ok := fields["Data page checksum version"]; ok {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return fail("Data page checksum version", err)
		}
		cd.DataChecksums = n != 0
	}
	if v, ok := fields["wal_log_hints setting"]; ok {
		on, valid := parseBool(v)
		if !valid {
			return fail("wal_log_hints setting", fmt.Errorf("%q is not on or off", v))
		}
		cd.WALLogHints = on
	}
	return cd, nil
}
