// Package cli defines holdfast's command line. Each command parses flags and
// calls into the package that does the work; no logic lives here.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/holdfast/holdfast/internal/agent"
	"github.com/holdfast/holdfast/internal/backup"
	"github.com/holdfast/holdfast/internal/config"
	"github.com/holdfast/holdfast/internal/fenceguard"
	"github.com/holdfast/holdfast/internal/local"
)

// Main runs the command line and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		fmt.Fprintf(stderr, "holdfast: %v\n", err)
		return 1
	}
	return 0
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "holdfast",
		Short:         "Replicated PostgreSQL that elects, replicates and fails over by itself",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.AddCommand(agentCmd(), upCmd(), downCmd(), ctlCmd(), proxyCmd(), fenceGuardCmd(), archivePushCmd(), archiveGetCmd())
	return root
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// fenceGuardCmd is the agent's own child process (see package fenceguard),
// not a command for people.
func fenceGuardCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "fence-guard",
		Short:  "Kill PostgreSQL if the agent stops confirming the primary (started by the agent)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)).With("component", "fence-guard")
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			return fenceguard.Run(ctx, cmd.InOrStdin(), fenceguard.Options{Kill: fenceguard.KillGroup, Log: log})
		},
	}
}

func agentCmd() *cobra.Command {
	var file string
	var sets []string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the agent beside one PostgreSQL member",
		Long: `Run the agent beside one PostgreSQL member.

Configuration comes from --config (or $HOLDFAST_CONFIG), then HOLDFAST_*
environment variables, then --set key=value flags, each overriding the last.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				file = os.Getenv("HOLDFAST_CONFIG")
			}
			c, err := config.Load(config.LoadOptions{File: file, Env: os.Environ(), Sets: sets})
			if err != nil {
				return err
			}
			log := newLogger(cmd.ErrOrStderr(), c.Log).With("member", c.Name)
			ctx, cancel := signalContext()
			defer cancel()
			err = agent.RunMember(ctx, c, log)
			if errors.Is(err, agent.ErrFatal) {
				log.Error("agent stopped", "err", err)
			}
			return err
		},
	}
	cmd.Flags().StringVarP(&file, "config", "c", "", "configuration file (YAML)")
	cmd.Flags().StringArrayVar(&sets, "set", nil, "override a setting: --set postgresql.listen=0.0.0.0:5432 (repeatable)")
	return cmd
}

func newLogger(w io.Writer, c config.Log) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func upCmd() *cobra.Command {
	var o local.UpOptions
	var detach bool
	var restoreFrom, targetTime, targetLSN, targetXID, backupSet, backupConfig string
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start a local cluster on this machine (embedded etcd, one agent per member)",
		Long: `Start a local cluster on this machine: one agent process per member, named
<cluster>-0 ... <cluster>-N-1, data under --dir, loopback ports chosen once and
kept. Running up again on the same --dir starts the members that are not
running, with their data; --cluster and --members, if given, must then
match the cluster the directory holds. One up works on a directory at a
time. Without --detach, Ctrl-C stops the cluster (primary first, then
replicas, witnesses last; see holdfast down).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the holdfast binary: %w", err)
			}
			o.Exe, o.Out = exe, cmd.OutOrStdout()
			// local.Up reads zero values as "not given"; a given one
			// that is zero would be read so too, so it is refused here.
			switch f := cmd.Flags(); {
			case !f.Changed("members"):
				o.Members = 0
			case o.Members < 1:
				return fmt.Errorf("--members %d: a cluster needs at least 1 database member (leave --members out for %d)", o.Members, local.DefaultMembers)
			}
			switch f := cmd.Flags(); {
			case !f.Changed("cluster"):
				o.Cluster = ""
			case o.Cluster == "":
				return fmt.Errorf("--cluster: give a name (leave --cluster out for %q)", local.DefaultCluster)
			}
			if backupConfig != "" {
				b, _, err := local.ReadBackupConfig("--backup-config", backupConfig)
				if err != nil {
					return err
				}
				o.BackupConfig = &b
			}
			if restoreFrom != "" {
				ro, err := local.ReadRestoreSource(restoreFrom)
				if err != nil {
					return err
				}
				if ro.Target, err = backup.ParseTarget(targetTime, targetLSN, targetXID); err != nil {
					return err
				}
				ro.Source.Set = backupSet
				o.Restore = &ro
			} else if targetTime != "" || targetLSN != "" || targetXID != "" || backupSet != "" {
				return fmt.Errorf("--target-time, --target-lsn, --target-xid and --backup-set need --restore-from")
			}
			ctx, cancel := signalContext()
			defer cancel()
			l, err := local.Up(ctx, o)
			if err != nil {
				return err
			}
			v, _ := local.View(ctx, l)
			local.PrintConnect(cmd.OutOrStdout(), o.Dir, l, v)
			if detach {
				return nil
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Running in the foreground; press Ctrl-C to stop the cluster.")
			<-ctx.Done()
			fmt.Fprintln(cmd.OutOrStdout(), "\nstopping the cluster: primary first, then replicas")
			return local.Down(context.Background(), o.Dir, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.IntVarP(&o.Members, "members", "n", local.DefaultMembers, "database members in a new cluster")
	f.IntVar(&o.Witnesses, "witnesses", 0, "witness members (etcd voters without a database) in a new cluster")
	f.StringVarP(&o.Dir, "dir", "d", "holdfast-cluster", "directory holding the cluster's data")
	f.StringVar(&o.Cluster, "cluster", local.DefaultCluster, "cluster name for a new cluster (members are <cluster>-0, -1, ...)")
	f.StringSliceVar(&o.Endpoints, "endpoints", nil, "use this external etcd cluster instead of embedded etcd (new cluster only)")
	f.StringVar(&o.OSUser, "os-user", "postgres", "OS user that runs PostgreSQL when holdfast runs as root")
	f.DurationVar(&o.Wait, "wait", 2*time.Minute, "how long to wait for the cluster to become healthy")
	f.BoolVar(&detach, "detach", false, "return once the cluster is healthy, leaving it running")
	f.StringVar(&o.ProxyMode, "proxy-mode", "", "the local proxy's read-write mode for a new cluster: passthrough (default; bytes passed through) or session (speaks the protocol and moves idle sessions to a new primary; see holdfast proxy --help)")
	f.StringVar(&o.BackupRepo, "backup-repo", "", "pgBackRest repository directory for a new cluster: the primary archives WAL there, ctl backup writes there")
	f.StringVar(&backupConfig, "backup-config", "", "a YAML file with a backup: section for a new cluster (any repository: an s3:// bucket with its endpoint, region and credential files; encryption with cipher_pass_file); see docs/backups.md")
	f.StringVar(&o.BackupStanza, "backup-stanza", "", "with --backup-repo or --backup-config: the new cluster's stanza (default: <cluster>-<8 random hex>); one the repository holds is refused")
	f.StringVar(&backupSet, "backup-set", "", "with --restore-from: the label of the backup to start from (default: the newest the target allows; see holdfast ctl backups)")
	f.StringVar(&restoreFrom, "restore-from", "", "build the new cluster from a backup: a YAML file with the source's backup section (repository, stanza), e.g. a source member's holdfast.yaml")
	f.StringVar(&targetTime, "target-time", "", "with --restore-from: replay WAL up to this RFC 3339 time (default: the latest point)")
	f.StringVar(&targetLSN, "target-lsn", "", "with --restore-from: replay WAL up to this position")
	f.StringVar(&targetXID, "target-xid", "", "with --restore-from: replay WAL up to this transaction")
	return cmd
}

func downCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop a local cluster: the primary first (while the store keeps quorum), then replicas, witnesses last",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return local.Down(context.Background(), dir, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVarP(&dir, "dir", "d", "holdfast-cluster", "directory holding the cluster's data")
	return cmd
}
