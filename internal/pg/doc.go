// Package pg is the PostgreSQL engine behind which the agent drives one
// member's database: it creates data directories (initdb, pg_basebackup),
// repairs diverged ones (pg_rewind), writes the configuration holdfast owns,
// supervises the postmaster process and answers the questions the agent asks
// every loop (Status) with one SQL round trip.
//
// The package is split in two:
//
//   - PURE knowledge, with no I/O, heavily unit- and fuzz-tested: rendering
//     holdfast.conf and holdfast_hba.conf (render.go), quoting (quote.go),
//     parsing pg_controldata output (controldata.go) and timeline history
//     files (history.go), the Status type (status.go).
//   - EFFECTS: the Engine (engine.go: data directory operations; process.go:
//     the postmaster; sql.go: the SQL connection) and FindBinDir (bindir.go).
//
// When holdfast runs as root every PostgreSQL program runs as the
// unprivileged osuser.Account given in Options, and every file or directory
// the engine creates for PostgreSQL is owned by that account.
package pg
