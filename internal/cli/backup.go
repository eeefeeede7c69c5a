package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/holdfast/holdfast/internal/backup"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/quote"
)

// Timeouts of the backup commands.
const (
	// archivePushTimeout bounds one archive-push (PostgreSQL retries).
	archivePushTimeout = 5 * time.Minute
	// archiveGetTimeout bounds one archive-get: recovery waits for it, and
	// a standby tries streaming only once it failed (pgBackRest's own
	// retries of an unreachable repository take about four io-timeouts).
	archiveGetTimeout = 2 * time.Minute
	// backupPoll is how often ctl backup asks whether its backup ended.
	backupPoll = time.Second
	// backupAttempts is how many times ctl backup takes a backup whose
	// primary changed while it ran (a switchover, a failover) before it
	// gives up.
	backupAttempts = 2
	// backupsTimeout bounds ctl backups.
	backupsTimeout = time.Minute
)

// archivePushCmd is PostgreSQL's archive_command on a member with backups
// (backup.ArchiveCommand): it pushes only while the agent's archive gate
// holds a grant.
func archivePushCmd() *cobra.Command {
	var grant string
	var wf walFlags
	cmd := &cobra.Command{
		Use:    "archive-push --grant FILE --pgbackrest-config FILE --stanza NAME [--secrets FILE] WAL",
		Short:  "Push one WAL file with pgBackRest if this member may archive (PostgreSQL's archive_command)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := backup.NewGate(grant).Check(); err != nil {
				return fmt.Errorf("archive %s: %w", args[0], err)
			}
			t, err := wf.tool()
			if err != nil {
				return fmt.Errorf("archive %s: %w", args[0], err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), archivePushTimeout)
			defer cancel()
			return t.ArchivePush(ctx, args[0])
		},
	}
	cmd.Flags().StringVar(&grant, "grant", "", "the archive gate's file")
	wf.register(cmd)
	_ = cmd.MarkFlagRequired("grant")
	return cmd
}

// archiveGetCmd is PostgreSQL's restore_command on a member with backups
// (backup.RestoreCommand): it fetches one archived WAL file with
// `pgbackrest archive-get`, the repository's secrets in pgBackRest's
// environment. PostgreSQL runs restore_command without the agent's
// environment, so without this wrapper a standby could not read an S3
// repository's credentials nor an encrypted repository's passphrase, and
// a replica restored from such a repository could never replay the WAL
// it needs to become consistent.
//
// Unlike archive-push it asks no archive gate: reading the archive is
// harmless whatever this member's role — a demoted or fenced member that
// fetches WAL changes nothing anyone else relies on, and a standby must
// be able to fetch while another member leads. It never writes to the
// repository: it runs only pgBackRest's archive-get, a read, with
// asynchronous fetching off (no spool); the only file written is the
// destination PostgreSQL names. A failure exits 1, which PostgreSQL
// reads as "segment not available" (a standby then tries streaming) —
// never a code above 125, which would abort recovery.
func archiveGetCmd() *cobra.Command {
	var wf walFlags
	cmd := &cobra.Command{
		Use:    "archive-get --pgbackrest-config FILE --stanza NAME [--secrets FILE] WAL DEST",
		Short:  "Fetch one archived WAL file with pgBackRest (PostgreSQL's restore_command)",
		Hidden: true,
		Args:   cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := wf.tool()
			if err != nil {
				return fmt.Errorf("fetch %s from the archive: %w", args[0], err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), archiveGetTimeout)
			defer cancel()
			return t.ArchiveGet(ctx, args[0], args[1])
		},
	}
	wf.register(cmd)
	return cmd
}

// walFlags are the flags archive-push and archive-get share: which
// pgBackRest configuration and stanza, and the agent's secrets file.
type walFlags struct {
	conf, stanza, secrets string
}

func (w *walFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&w.conf, "pgbackrest-config", "", "pgbackrest.conf")
	f.StringVar(&w.stanza, "stanza", "", "the stanza")
	f.StringVar(&w.secrets, "secrets", "", "the repository's secrets (S3 credentials, passphrase), as the agent wrote them (mode 0600, this account's)")
	for _, n := range []string{"pgbackrest-config", "stanza"} {
		_ = cmd.MarkFlagRequired(n)
	}
}

// tool is the pgBackRest runner for the flags, with the secrets file's
// content (backup.ReadSecretsFile refuses a file others may read or that
// another account owns).
func (w *walFlags) tool() (backup.Tool, error) {
	t := backup.Tool{Config: w.conf, Stanza: w.stanza}
	if w.secrets != "" {
		s, err := backup.ReadSecretsFile(w.secrets)
		if err != nil {
			return backup.Tool{}, err
		}
		t.Secrets = s
	}
	return t, nil
}

func backupCmd(tf *targetFlags) *cobra.Command {
	var typ string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "backup [--type full|diff|incr]",
		Short: "Take a backup with pgBackRest, from a streaming replica (the primary when none streams), and wait for it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch typ {
			case "", "full", "diff", "incr":
			default:
				return fmt.Errorf("--type %s: write full, diff or incr", quote.Value(typ))
			}
			out := cmd.OutOrStdout()
			return withTarget(tf, wait, func(ctx context.Context, t ctl.Target, v cluster.View) error {
				for attempt := 1; ; attempt++ {
					job, err := runBackup(ctx, out, t, v, typ, wait)
					if err == nil || job == nil || !job.PrimaryChanged || attempt == backupAttempts {
						return err
					}
					fmt.Fprintf(out, "%v\ntaking the backup again (attempt %d of %d)\n", err, attempt+1, backupAttempts)
					if v, err = t.View(ctx); err != nil {
						return fmt.Errorf("read the cluster to take the backup again: %w", err)
					}
				}
			})
		},
	}
	cmd.Flags().StringVar(&typ, "type", "", "full, diff or incr (default: incr, or full when there is none)")
	cmd.Flags().DurationVar(&wait, "wait", time.Hour, "how long to wait for the backup to finish")
	return cmd
}

// runBackup starts one backup on the member ctl.BackupSource chooses in
// v and waits for it to end. It returns the finished job (nil when none
// was started or it did not end) and, when the backup did not succeed,
// why.
func runBackup(ctx context.Context, out io.Writer, t ctl.Target, v cluster.View, typ string, wait time.Duration) (*backup.Job, error) {
	member, standby, skipped, err := ctl.ExplainBackupSource(v)
	if err != nil {
		return nil, err
	}
	c, err := t.Client(v, member)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var job backup.Job
	if err := c.StartBackup(ctx, typ, &job); err != nil {
		return nil, fmt.Errorf("start a backup on %s: %w", member, err)
	}
	from := "the primary " + member
	if standby {
		from = "the replica " + member
	}
	fmt.Fprintf(out, "backup started on %s\n", from)
	if why := ctl.SkippedText(skipped); !standby && why != "" {
		fmt.Fprintf(out, "no replica could take it: %s\n", why)
	}
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("backup on %s: still running after --wait %s (see holdfast ctl backups)", member, wait)
		case <-time.After(backupPoll):
		}
		var l backup.List
		if err := c.Backups(ctx, &l); err != nil {
			continue // the member may be busy; ask again
		}
		if l.Job == nil || !l.Job.Started.Equal(job.Started) || l.Job.Running {
			continue
		}
		if l.Job.Error != "" {
			return l.Job, fmt.Errorf("backup on %s failed: %s", member, l.Job.Error)
		}
		if b, ok := l.Stanza.Latest(); ok {
			fmt.Fprintf(out, "backup %s (%s) finished in %s: %s, %s in the repository\n", b.Label, b.Type,
				l.Job.Finished.Sub(l.Job.Started).Round(time.Second), humanBytes(b.Size), humanBytes(b.RepoSize))
		}
		return l.Job, nil
	}
}

func backupsCmd(tf *targetFlags) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "backups",
		Short: "List the backups with size, duration, WAL range, and the time range they can restore to",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %s: use table or json", quote.Value(output))
			}
			return withTarget(tf, backupsTimeout, func(ctx context.Context, t ctl.Target, v cluster.View) error {
				c, member, err := t.AnyClient(v)
				if err != nil {
					return err
				}
				defer c.Close()
				var l backup.List
				if err := c.Backups(ctx, &l); err != nil {
					return fmt.Errorf("list backups through %s: %w", member, err)
				}
				if output == "json" {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(l)
				}
				return writeBackups(cmd.OutOrStdout(), l)
			})
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

// writeBackups prints l as a table and the restorable range.
func writeBackups(w io.Writer, l backup.List) error {
	st := l.Stanza
	fmt.Fprintf(w, "stanza %s: %s\n", st.Name, st.Status)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LABEL\tTYPE\tSTARTED (UTC)\tDURATION\tSIZE\tIN REPO\tWAL START\tWAL STOP")
	for _, b := range st.Backups {
		label := b.Label
		if b.Error {
			label += " (error)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", label, b.Type, b.Start.Format("2006-01-02 15:04:05"),
			b.Duration(), humanBytes(b.Size), humanBytes(b.RepoSize), b.WALStart, b.WALStop)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if from := st.RestorableFrom(); !from.IsZero() {
		fmt.Fprintf(w, "restorable from %s to the end of the archive (newest WAL %s)\n", from.Format(time.RFC3339), st.WALMax)
	} else {
		fmt.Fprintln(w, "nothing restorable yet: take a backup with holdfast ctl backup")
	}
	if s := l.Schedule; s != nil {
		if s.Due != "" {
			fmt.Fprintf(w, "schedule %s: a %s backup is due now\n", s.Spec, s.Due)
		} else {
			fmt.Fprintf(w, "schedule %s: next backup due at %s\n", s.Spec, s.Next.Format(time.RFC3339))
		}
	}
	if c := l.Check; c != nil {
		if c.Error == "" {
			fmt.Fprintf(w, "archive check on the primary %s at %s: ok (%d segments of earlier timelines pushed first)\n", c.Member, c.At.Format(time.RFC3339), c.Pushed)
		} else {
			fmt.Fprintf(w, "archive check on the primary %s at %s FAILED: %s\n", c.Member, c.At.Format(time.RFC3339), c.Error)
		}
	}
	if j := l.Job; j != nil {
		switch {
		case j.Running:
			fmt.Fprintf(w, "a %s backup is running on %s since %s\n", orDefault(j.Type), j.Member, j.Started.Format(time.RFC3339))
		case j.Error != "":
			fmt.Fprintf(w, "the last backup on %s failed at %s: %s\n", j.Member, j.Finished.Format(time.RFC3339), j.Error)
		}
	}
	return nil
}

func orDefault(typ string) string {
	if typ == "" {
		return "default"
	}
	return typ
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
