package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// BootstrapPrefix starts the value of the initialize key while a member
// runs initdb; any other value is the finished cluster's system identifier.
const BootstrapPrefix = "bootstrapping by "

// ParseInit decodes the value of the initialize key.
func ParseInit(value string, rev int64) cluster.InitState {
	st := cluster.InitState{Present: true, Revision: rev}
	if who, ok := strings.CutPrefix(value, BootstrapPrefix); ok {
		st.Bootstrapper = who
	} else {
		st.SystemID = value
	}
	return st
}

// duration is a time.Duration that reads and writes JSON as a Go duration
// string ("4s", "1m30s") so the config key stays readable and editable
// with etcdctl. A bare JSON number is accepted on input and read as
// seconds, the unit a human editing the key by hand most likely means.
type duration time.Duration

func (d duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

func (d *duration) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: %w", s, err)
		}
		*d = duration(v)
		return nil
	}
	var secs float64
	if err := json.Unmarshal(b, &secs); err != nil {
		return fmt.Errorf("duration %s: want a string like \"4s\" or a number of seconds", b)
	}
	*d = duration(secs * float64(time.Second))
	return nil
}

// configJSON is the stored shape of cluster.Config: the same field names,
// durations as strings.
type configJSON struct {
	TTL                  duration `json:"ttl"`
	LoopInterval         duration `json:"loop_interval"`
	MaximumLagOnFailover int64    `json:"maximum_lag_on_failover"`
	PrimaryStartTimeout  duration `json:"primary_start_timeout"`
	Paused               bool     `json:"paused,omitempty"`
	SynchronousMode      string   `json:"synchronous_mode,omitempty"`
	SynchronousNodeCount int      `json:"synchronous_node_count,omitempty"`
	BackupSchedule       string   `json:"backup_schedule,omitempty"`
}

func EncodeConfig(c cluster.Config) ([]byte, error) {
	return json.Marshal(configJSON{
		TTL:                  duration(c.TTL),
		LoopInterval:         duration(c.LoopInterval),
		MaximumLagOnFailover: c.MaximumLagOnFailover,
		PrimaryStartTimeout:  duration(c.PrimaryStartTimeout),
		Paused:               c.Paused,
		SynchronousMode:      c.SynchronousMode,
		SynchronousNodeCount: c.SynchronousNodeCount,
		BackupSchedule:       c.BackupSchedule,
	})
}

func DecodeConfig(b []byte) (cluster.Config, error) {
	var j configJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return cluster.Config{}, err
	}
	return cluster.Config{
		TTL:                  time.Duration(j.TTL),
		LoopInterval:         time.Duration(j.LoopInterval),
		MaximumLagOnFailover: j.MaximumLagOnFailover,
		PrimaryStartTimeout:  time.Duration(j.PrimaryStartTimeout),
		Paused:               j.Paused,
		SynchronousMode:      j.SynchronousMode,
		SynchronousNodeCount: j.SynchronousNodeCount,
		BackupSchedule:       j.BackupSchedule,
	}, nil
}
