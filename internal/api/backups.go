package api

import (
	"context"
	"net/http"
)

// BackupService is a member's backups (package backup): it starts one
// backup at a time in the background and lists the repository. The values
// it returns are answered as JSON as they are, so the API does not depend
// on the backup package's types.
type BackupService interface {
	// StartBackup starts a backup of the given type (full, diff or incr;
	// "" for pgBackRest's default) and returns its job at once. An
	// *Error chooses the status of a refusal (409 while one runs).
	StartBackup(ctx context.Context, typ string) (any, error)
	// Backups lists the repository's backups and the last job.
	Backups(ctx context.Context) (any, error)
}

// backupBody is POST /backup's body.
type backupBody struct {
	Type string `json:"type"`
}

func (s *Server) startBackup(w http.ResponseWriter, r *http.Request) {
	if s.o.Backups == nil {
		s.writeError(w, r, Errorf(http.StatusNotFound, "backups are not configured on this member (set backup.repository)"))
		return
	}
	var b backupBody
	if err := readBody(w, r, &b); err != nil {
		s.writeError(w, r, err)
		return
	}
	switch b.Type {
	case "", "full", "diff", "incr":
	default:
		s.writeError(w, r, Errorf(http.StatusBadRequest, "backup type %q: write full, diff or incr", b.Type))
		return
	}
	ctx, cancel := s.backendContext(r)
	defer cancel()
	job, err := s.o.Backups.StartBackup(ctx, b.Type)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, job)
}

func (s *Server) listBackups(w http.ResponseWriter, r *http.Request) {
	if s.o.Backups == nil {
		s.writeError(w, r, Errorf(http.StatusNotFound, "backups are not configured on this member (set backup.repository)"))
		return
	}
	ctx, cancel := s.backendContext(r)
	defer cancel()
	v, err := s.o.Backups.Backups(ctx)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// StartBackup asks the member to start a backup (POST /backup); out
// receives the job it answers.
func (c *Client) StartBackup(ctx context.Context, typ string, out any) error {
	_, err := c.do(ctx, http.MethodPost, "/backup", backupBody{Type: typ}, out, http.StatusAccepted)
	return err
}

// Backups reads the member's list of backups (GET /backups) into out.
func (c *Client) Backups(ctx context.Context, out any) error {
	_, err := c.do(ctx, http.MethodGet, "/backups", nil, out, http.StatusOK)
	return err
}
