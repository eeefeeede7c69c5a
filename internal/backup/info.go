package backup

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"
)

// Set is one backup in the repository.
type Set struct {
	Label string `json:"label"`
	// Type is full, diff or incr.
	Type string `json:"type"`
	// Prior is the backup this one depends on ("" for a full backup).
	Prior string    `json:"prior,omitempty"`
	Start time.Time `json:"start"`
	Stop  time.Time `json:"stop"`
	// Size is the database's size; RepoSize what the backup stores in the
	// repository (compressed, and only the changes for diff/incr).
	Size     int64 `json:"size_bytes"`
	RepoSize int64 `json:"repository_bytes"`
	// WALStart and WALStop are the first and last WAL segments the backup
	// needs to be consistent; LSNStart and LSNStop the positions.
	WALStart string `json:"wal_start"`
	WALStop  string `json:"wal_stop"`
	LSNStart string `json:"lsn_start"`
	LSNStop  string `json:"lsn_stop"`
	// SystemID is the database the backup is of.
	SystemID string `json:"system_id"`
	Error    bool   `json:"error,omitempty"`
}

// Duration is how long the backup took.
func (s Set) Duration() time.Duration { return s.Stop.Sub(s.Start) }

// Stanza is what `pgbackrest info` says about one stanza.
type Stanza struct {
	Name string `json:"stanza"`
	// StatusCode and Status: pgBackRest's status (0 "ok"; 1 "missing
	// stanza path"; 2 "no valid backups"; 3 "missing stanza data"; ...).
	StatusCode int    `json:"status_code"`
	Status     string `json:"status"`
	// SystemIDs are the databases the stanza has held (one, unless it was
	// upgraded); the last is the current one.
	SystemIDs []string `json:"system_ids,omitempty"`
	// Backups, oldest first.
	Backups []Set `json:"backups"`
	// WALMin and WALMax are the oldest and newest archived WAL segments of
	// the current database.
	WALMin string `json:"wal_min,omitempty"`
	WALMax string `json:"wal_max,omitempty"`
	// ArchiveID is the current database's directory in the stanza's
	// archive ("<PostgreSQL version>-<id>", e.g. "15-1").
	ArchiveID string `json:"archive_id,omitempty"`
	// Cipher is the stanza's cipher ("none" or CipherType).
	Cipher string `json:"cipher,omitempty"`
	// RepoError is pgBackRest's message when it could not read the
	// repository (status "other"; Tool.Info returns it as a *RepoError).
	RepoError string `json:"repository_error,omitempty"`
}

// Exists reports whether the stanza was created in the repository.
func (s Stanza) Exists() bool {
	return s.StatusCode != statusMissingStanzaPath && s.StatusCode != statusMissingStanzaData
}

// pgBackRest's stanza status codes (info command documentation).
const (
	statusOK                = 0
	statusMissingStanzaPath = 1
	statusNoValidBackups    = 2
	statusMissingStanzaData = 3
	statusOther             = 99
)

// RestorableFrom is the earliest time a restore can reach: the end of the
// oldest valid backup (zero when there is none).
func (s Stanza) RestorableFrom() time.Time {
	for _, b := range s.Backups {
		if !b.Error {
			return b.Stop
		}
	}
	return time.Time{}
}

// Latest is the newest valid backup, and whether there is one.
func (s Stanza) Latest() (Set, bool) {
	for i := len(s.Backups) - 1; i >= 0; i-- {
		if !s.Backups[i].Error {
			return s.Backups[i], true
		}
	}
	return Set{}, false
}

// SystemID is the stanza's current database system identifier ("" if
// unknown).
func (s Stanza) SystemID() string {
	if len(s.SystemIDs) == 0 {
		return ""
	}
	return s.SystemIDs[len(s.SystemIDs)-1]
}

// infoJSON is the part of `pgbackrest info --output=json` holdfast reads.
type infoJSON struct {
	Name    string `json:"name"`
	Archive []struct {
		Database struct {
			ID int `json:"id"`
		} `json:"database"`
		Min string `json:"min"`
		Max string `json:"max"`
	} `json:"archive"`
	Backup []struct {
		Archive struct {
			Start string `json:"start"`
			Stop  string `json:"stop"`
		} `json:"archive"`
		Database struct {
			ID int `json:"id"`
		} `json:"database"`
		Error *bool `json:"error"`
		Info  struct {
			Size       int64 `json:"size"`
			Repository struct {
				Size int64 `json:"size"`
			} `json:"repository"`
		} `json:"info"`
		Label string `json:"label"`
		LSN   struct {
			Start string `json:"start"`
			Stop  string `json:"stop"`
		} `json:"lsn"`
		Prior     *string `json:"prior"`
		Timestamp struct {
			Start int64 `json:"start"`
			Stop  int64 `json:"stop"`
		} `json:"timestamp"`
		Type string `json:"type"`
	} `json:"backup"`
	DB []struct {
		ID       int         `json:"id"`
		SystemID json.Number `json:"system-id"`
		Version  string      `json:"version"`
	} `json:"db"`
	Status struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"status"`
	Cipher string `json:"cipher"`
	Repo   []struct {
		Status struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"status"`
	} `json:"repo"`
}

// ParseInfo reads the output of `pgbackrest info --output=json`: one Stanza
// per stanza, backups sorted oldest first. System identifiers are kept as
// decimal strings (they exceed what a float64 holds exactly).
func ParseInfo(b []byte) ([]Stanza, error) {
	var raw []infoJSON
	dec := json.NewDecoder(bytesReader(b))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("parse pgbackrest info: %w", err)
	}
	out := make([]Stanza, 0, len(raw))
	for _, r := range raw {
		if r.Name == "" {
			return nil, errors.New("parse pgbackrest info: a stanza without a name")
		}
		s := Stanza{Name: r.Name, StatusCode: r.Status.Code, Status: r.Status.Message, Cipher: r.Cipher}
		if r.Status.Code == statusOther {
			s.RepoError = r.Status.Message
			for _, rp := range r.Repo {
				if rp.Status.Code == statusOther && rp.Status.Message != "" {
					s.RepoError = rp.Status.Message
				}
			}
		}
		sysids := map[int]string{}
		currentDB := 0
		for _, d := range r.DB {
			if _, err := strconv.ParseUint(d.SystemID.String(), 10, 64); err != nil {
				return nil, fmt.Errorf("parse pgbackrest info: stanza %s: system-id %q is not a number", r.Name, d.SystemID)
			}
			sysids[d.ID] = d.SystemID.String()
			s.SystemIDs = append(s.SystemIDs, d.SystemID.String())
			if d.ID >= currentDB {
				currentDB = d.ID
				s.ArchiveID = d.Version + "-" + strconv.Itoa(d.ID)
			}
		}
		for _, a := range r.Archive {
			if a.Database.ID == currentDB {
				s.WALMin, s.WALMax = a.Min, a.Max
			}
		}
		for _, rb := range r.Backup {
			set := Set{
				Label: rb.Label, Type: rb.Type,
				Start: time.Unix(rb.Timestamp.Start, 0).UTC(), Stop: time.Unix(rb.Timestamp.Stop, 0).UTC(),
				Size: rb.Info.Size, RepoSize: rb.Info.Repository.Size,
				WALStart: rb.Archive.Start, WALStop: rb.Archive.Stop,
				LSNStart: rb.LSN.Start, LSNStop: rb.LSN.Stop,
				SystemID: sysids[rb.Database.ID],
				Error:    rb.Error != nil && *rb.Error,
			}
			if rb.Prior != nil {
				set.Prior = *rb.Prior
			}
			s.Backups = append(s.Backups, set)
		}
		sort.SliceStable(s.Backups, func(i, j int) bool { return s.Backups[i].Stop.Before(s.Backups[j].Stop) })
		out = append(out, s)
	}
	return out, nil
}
