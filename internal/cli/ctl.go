package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/config"
	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/quote"
)

// targetFlags select the cluster a ctl command acts on.
type targetFlags struct {
	dir, cluster, prefix     string
	endpoints                []string
	token, caFile, cert, key string
	kube                     bool
	kubeconfig, namespace    string
}

func (f *targetFlags) register(cmd *cobra.Command) {
	p := cmd.PersistentFlags()
	p.StringVarP(&f.dir, "dir", "d", "holdfast-cluster", "directory of a local cluster (from holdfast up)")
	p.StringSliceVar(&f.endpoints, "endpoints", nil, "etcd endpoints of the cluster's store (instead of --dir)")
	p.StringVar(&f.cluster, "cluster", "holdfast", "cluster name (with --endpoints)")
	p.StringVar(&f.prefix, "prefix", "/holdfast", "key prefix in the store (with --endpoints)")
	p.StringVar(&f.token, "token", "", "API token for operations (default $HOLDFAST_API_TOKEN)")
	p.StringVar(&f.caFile, "cacert", "", "CA certificate (PEM) to verify the members' API")
	p.StringVar(&f.cert, "cert", "", "client certificate (PEM) for the members' API")
	p.StringVar(&f.key, "key", "", "client key (PEM) for the members' API")
	p.BoolVar(&f.kube, "kube", false, "the cluster's store is the Kubernetes API (with --cluster, --namespace)")
	p.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file with --kube (default $KUBECONFIG, else the pod's service account)")
	p.StringVar(&f.namespace, "namespace", "", "namespace with --kube (default $HOLDFAST_KUBERNETES_NAMESPACE, else the pod's)")
}

// serviceAccountNamespace is where a pod finds its own namespace.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// kubeTarget resolves --kubeconfig and --namespace.
func (f *targetFlags) kubeTarget() (*ctl.KubeTarget, error) {
	k := &ctl.KubeTarget{Kubeconfig: f.kubeconfig, Namespace: f.namespace}
	if k.Kubeconfig == "" {
		k.Kubeconfig = os.Getenv("KUBECONFIG")
	}
	if k.Namespace == "" {
		k.Namespace = os.Getenv("HOLDFAST_KUBERNETES_NAMESPACE")
	}
	if k.Namespace == "" {
		if b, err := os.ReadFile(serviceAccountNamespace); err == nil {
			k.Namespace = strings.TrimSpace(string(b))
		}
	}
	if k.Namespace == "" {
		return nil, fmt.Errorf("--kube needs --namespace (the namespace the cluster runs in)")
	}
	return k, nil
}

func (f *targetFlags) target() (ctl.Target, error) {
	t, _, err := f.targetAndLayout()
	return t, err
}

// targetAndLayout is target, with the local cluster's layout it was made
// from (nil for a cluster given by --endpoints or --kube).
func (f *targetFlags) targetAndLayout() (ctl.Target, *local.Layout, error) {
	t := ctl.Target{Endpoints: f.endpoints, Prefix: f.prefix, Cluster: f.cluster, DBUser: "postgres",
		API: api.ClientOptions{Token: f.token, CAFile: f.caFile, CertFile: f.cert, KeyFile: f.key}}
	if t.API.Token == "" {
		t.API.Token = os.Getenv("HOLDFAST_API_TOKEN")
	}
	if t.API.Token == "" {
		t.API.Token = os.Getenv("HOLDFAST_API_AUTH_TOKEN") // inside an agent's pod
	}
	if f.kube {
		if len(f.endpoints) > 0 {
			return t, nil, fmt.Errorf("--kube and --endpoints select two different stores: pass one")
		}
		k, err := f.kubeTarget()
		if err != nil {
			return t, nil, err
		}
		t.Kube = k
		return t, nil, nil
	}
	if len(f.endpoints) > 0 {
		return t, nil, nil
	}
	l, err := local.ReadLayout(f.dir)
	if err != nil {
		return t, nil, fmt.Errorf("%w (pass --dir of a local cluster, or --endpoints and --cluster)", err)
	}
	t.Endpoints, t.Cluster, t.DBUser, t.Prefix = l.Endpoints(), l.Cluster, l.Superuser.Username, "/holdfast"
	if l.ProxyRW() != "" {
		t.Proxy = &ctl.ProxyAddrs{RW: l.ProxyRW(), RO: l.ProxyRO()}
	}
	return t, &l, nil
}

func ctlCmd() *cobra.Command {
	var tf targetFlags
	cmd := &cobra.Command{Use: "ctl", Short: "Operate a cluster: list, switchover, failover, restart, reinit, pause, config"}
	tf.register(cmd)
	cmd.AddCommand(listCmd(&tf), explainCmd(&tf), rolloutCmd(&tf), switchoverCmd(&tf), failoverCmd(&tf), restartCmd(&tf), reinitCmd(&tf),
		pauseCmd(&tf, true), pauseCmd(&tf, false), showConfigCmd(&tf), editConfigCmd(&tf), historyCmd(&tf),
		backupCmd(&tf), backupsCmd(&tf))
	return cmd
}

// withTarget runs fn with the target and a fresh view of the cluster.
func withTarget(tf *targetFlags, timeout time.Duration, fn func(ctx context.Context, t ctl.Target, v cluster.View) error) error {
	t, err := tf.target()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	v, err := t.View(ctx)
	if err != nil {
		return err
	}
	return fn(ctx, t, v)
}

// onAny sends a cluster-wide operation to the leader's (or any live
// member's) API and prints the result.
func onAny(tf *targetFlags, out io.Writer, op func(context.Context, *api.Client) (api.Result, error)) error {
	return withTarget(tf, 2*time.Minute, func(ctx context.Context, t ctl.Target, v cluster.View) error {
		c, _, err := t.AnyClient(v)
		if err != nil {
			return err
		}
		defer c.Close()
		res, err := op(ctx, c)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, res.Message)
		return nil
	})
}

func rolloutCmd(tf *targetFlags) *cobra.Command {
	var approve bool
	show := func(approve *bool) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			return withTarget(tf, 10*time.Second, func(ctx context.Context, t ctl.Target, v cluster.View) error {
				return t.Rollout(ctx, v, approve != nil && *approve, cmd.OutOrStdout())
			})
		}
	}
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Show a Kubernetes rollout's progress; --approve the switchover of a supervised one",
		Args:  cobra.NoArgs,
		RunE:  show(&approve),
	}
	cmd.Flags().BoolVar(&approve, "approve", false, "approve the switchover of a supervised rollout (rollout.supervised in the chart)")
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Show a Kubernetes rollout's progress (the same as rollout without --approve)",
		Args:  cobra.NoArgs,
		RunE:  show(nil),
	})
	return cmd
}

func explainCmd(tf *targetFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "explain",
		Short: "Say why: who leads or why nobody does, who could take over and why not, what drains and rollouts wait for",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withTarget(tf, 10*time.Second, func(ctx context.Context, t ctl.Target, v cluster.View) error {
				notes, err := t.KubeNotes(ctx, v)
				if err != nil {
					notes = append(notes, "(the agents' events could not be read: "+err.Error()+")")
				}
				for _, line := range ctl.Explain(v, notes) {
					fmt.Fprintln(cmd.OutOrStdout(), line)
				}
				return nil
			})
		},
	}
}

func listCmd(tf *targetFlags) *cobra.Command {
	var output string
	var watch time.Duration
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the members with role, state, timeline and lag",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %s: use table or json", quote.Value(output))
			}
			for {
				err := withTarget(tf, 10*time.Second, func(_ context.Context, t ctl.Target, v cluster.View) error {
					l := ctl.List(t.Cluster, v, t.DBUser)
					l.Proxy = t.Proxy
					if watch > 0 && output == "table" {
						fmt.Fprint(cmd.OutOrStdout(), "\033[H\033[2J")
						fmt.Fprintln(cmd.OutOrStdout(), time.Now().Format(time.RFC3339))
					}
					if output == "json" {
						return l.WriteJSON(cmd.OutOrStdout())
					}
					return l.WriteTable(cmd.OutOrStdout())
				})
				if err != nil && watch == 0 {
					return err
				}
				if watch == 0 {
					return nil
				}
				if err != nil {
					fmt.Fprintln(cmd.ErrOrStderr(), err)
				}
				time.Sleep(watch)
			}
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	cmd.Flags().DurationVarP(&watch, "watch", "w", 0, "refresh every interval (e.g. 1s) until interrupted")
	cmd.Flags().Lookup("watch").NoOptDefVal = "1s"
	return cmd
}

func parseTime(flag, s string) (*time.Time, error) {
	if s == "" {
		return nil, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return nil, fmt.Errorf("--%s %s: want an RFC 3339 time such as 2026-11-22T03:00:00Z", flag, quote.Value(s))
	}
	return &t, nil
}

func switchoverCmd(tf *targetFlags) *cobra.Command {
	var to, from, at string
	var cancel bool
	cmd := &cobra.Command{
		Use:   "switchover",
		Short: "Move the primary role to a replica without losing a committed transaction",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cancel {
				return onAny(tf, cmd.OutOrStdout(), func(ctx context.Context, c *api.Client) (api.Result, error) {
					return api.Result{Message: "scheduled switchover cancelled"}, c.CancelSwitchover(ctx)
				})
			}
			when, err := parseTime("at", at)
			if err != nil {
				return err
			}
			return onAny(tf, cmd.OutOrStdout(), func(ctx context.Context, c *api.Client) (api.Result, error) {
				return c.Switchover(ctx, api.SwitchoverRequest{Leader: from, Candidate: to, ScheduledAt: when})
			})
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "member to promote (default: the most up-to-date replica)")
	cmd.Flags().StringVar(&from, "from", "", "expected current primary (refused if it is not)")
	cmd.Flags().StringVar(&at, "at", "", "schedule at this RFC 3339 time instead of now")
	cmd.Flags().BoolVar(&cancel, "cancel", false, "cancel a scheduled switchover")
	return cmd
}

func failoverCmd(tf *targetFlags) *cobra.Command {
	var to string
	var force bool
	cmd := &cobra.Command{
		Use:   "failover --to MEMBER [--force]",
		Short: "Promote a member when the cluster has no healthy primary (states what it may lose; --force accepts it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to == "" {
				return fmt.Errorf("--to is required: name the member to promote")
			}
			return withTarget(tf, 2*time.Minute, func(ctx context.Context, t ctl.Target, v cluster.View) error {
				out := cmd.OutOrStdout()
				accepted, err := ctl.ConfirmFailover(v, to, force, ctl.Prompt{In: cmd.InOrStdin(), Out: out, Interactive: isTerminal(cmd.InOrStdin())})
				if err != nil {
					return err
				}
				c, _, err := t.AnyClient(v)
				if err != nil {
					return err
				}
				defer c.Close()
				res, err := c.Failover(ctx, api.FailoverRequest{Candidate: to, Force: accepted})
				if err != nil {
					return err
				}
				fmt.Fprintln(out, res.Message)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "member to promote")
	cmd.Flags().BoolVar(&force, "force", false, "promote even if the member may lack acknowledged commits (the loss is stated first)")
	return cmd
}

// isTerminal reports whether r is a terminal (an operator who can answer a
// question). A character device is not enough: /dev/null is one, and a
// script whose stdin is /dev/null must get the refusal, not a prompt.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func restartCmd(tf *targetFlags) *cobra.Command {
	var role, at string
	var all bool
	cmd := &cobra.Command{
		Use:   "restart [MEMBER] [--role replica|primary] [--all]",
		Short: "Restart PostgreSQL on a member, on every member of a role, or on all (role-aware)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			when, err := parseTime("at", at)
			if err != nil {
				return err
			}
			switch {
			case all && (len(args) > 0 || role != ""):
				return fmt.Errorf("--all restarts every member in a safe order; it takes no member or --role")
			case all:
				t, err := tf.target()
				if err != nil {
					return err
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
				defer cancel()
				return ctl.RestartAll(ctx, t, out)
			case len(args) == 0 && role == "":
				return fmt.Errorf("name a member, or use --role replica|primary, or --all")
			case role != "" && role != api.RestartPrimary && role != api.RestartReplica:
				return fmt.Errorf("--role %s: use primary or replica", quote.Value(role))
			}
			return withTarget(tf, 5*time.Minute, func(ctx context.Context, t ctl.Target, v cluster.View) error {
				members := args
				if len(members) == 0 {
					for _, n := range ctl.MemberNames(v) {
						isLeader := v.Leader != nil && v.Leader.Name == n
						if !v.Members[n].Witness && (role == api.RestartPrimary) == isLeader {
							members = append(members, n)
						}
					}
				}
				for _, m := range members {
					c, err := t.Client(v, m)
					if err != nil {
						return err
					}
					res, err := c.Restart(ctx, api.RestartRequest{Role: role, ScheduledAt: when})
					c.Close()
					if err != nil {
						return fmt.Errorf("restart %s: %w", m, err)
					}
					fmt.Fprintln(out, res.Message)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&role, "role", "", "only members with this role: primary or replica")
	cmd.Flags().BoolVar(&all, "all", false, "every member: replicas one at a time, then a switchover, then the old primary")
	cmd.Flags().StringVar(&at, "at", "", "schedule at this RFC 3339 time instead of now")
	return cmd
}

func reinitCmd(tf *targetFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "reinit MEMBER",
		Short: "Throw away a replica's data (kept aside) and build it again: from the newest backup when the cluster has one, else cloned from the primary",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withTarget(tf, time.Minute, func(ctx context.Context, t ctl.Target, v cluster.View) error {
				c, err := t.Client(v, args[0])
				if err != nil {
					return err
				}
				defer c.Close()
				res, err := c.Reinitialize(ctx)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), res.Message)
				return nil
			})
		},
	}
}

func pauseCmd(tf *targetFlags, pause bool) *cobra.Command {
	use, short := "pause", "Maintenance mode: no automatic failover, promotion, demotion, start or stop"
	if !pause {
		use, short = "resume", "Leave maintenance mode"
	}
	return &cobra.Command{
		Use: use, Short: short, Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return onAny(tf, cmd.OutOrStdout(), func(ctx context.Context, c *api.Client) (api.Result, error) {
				if pause {
					return c.Pause(ctx)
				}
				return c.Resume(ctx)
			})
		},
	}
}

func printConfig(w io.Writer, c cluster.Config) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(map[string]any{
		"ttl": c.TTL.String(), "loop_interval": c.LoopInterval.String(),
		"maximum_lag_on_failover": c.MaximumLagOnFailover, "primary_start_timeout": c.PrimaryStartTimeout.String(),
		"paused": c.Paused, "synchronous_mode": c.SyncMode(), "synchronous_node_count": c.SyncCount(),
		"backup_schedule": c.BackupSchedule,
	})
}

func showConfigCmd(tf *targetFlags) *cobra.Command {
	return &cobra.Command{
		Use: "show-config", Short: "Show the cluster's dynamic configuration", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withTarget(tf, 10*time.Second, func(_ context.Context, _ ctl.Target, v cluster.View) error {
				if v.Config == nil {
					return fmt.Errorf("the cluster has no configuration yet (not bootstrapped)")
				}
				return printConfig(cmd.OutOrStdout(), *v.Config)
			})
		},
	}
}

func editConfigCmd(tf *targetFlags) *cobra.Command {
	var sets []string
	cmd := &cobra.Command{
		Use:   "edit-config --set key=value ...",
		Short: "Change the cluster's dynamic configuration (ttl, loop_interval, maximum_lag_on_failover, primary_start_timeout, synchronous_mode, synchronous_node_count, backup_schedule)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(sets) == 0 {
				return fmt.Errorf("nothing to change: pass --set key=value")
			}
			var p api.ConfigPatch
			for _, kv := range sets {
				k, val, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--set %s: want key=value", quote.Value(kv))
				}
				var err error
				switch k {
				case "ttl", "loop_interval", "primary_start_timeout":
					var d config.Duration
					if d, err = parseDuration(val); err == nil {
						x := d.D()
						switch k {
						case "ttl":
							p.TTL = &x
						case "loop_interval":
							p.LoopInterval = &x
						default:
							p.PrimaryStartTimeout = &x
						}
					}
				case "maximum_lag_on_failover":
					var n int64
					if n, err = api.ParseSize(val); err == nil {
						p.MaximumLagOnFailover = &n
					}
				case "synchronous_mode":
					p.SynchronousMode = &val
				case "synchronous_node_count":
					var n int
					if n, err = strconv.Atoi(val); err != nil {
						err = fmt.Errorf("%s is not a whole number", quote.Value(val))
					}
					p.SynchronousNodeCount = &n
				case "backup_schedule":
					p.BackupSchedule = &val
				default:
					return fmt.Errorf("--set %s: unknown key (use ttl, loop_interval, maximum_lag_on_failover, primary_start_timeout, synchronous_mode, synchronous_node_count, backup_schedule; pause with `ctl pause`)", quote.Value(k))
				}
				if err != nil {
					return fmt.Errorf("--set %s: %w", quote.Value(kv), err)
				}
			}
			return withTarget(tf, time.Minute, func(ctx context.Context, t ctl.Target, v cluster.View) error {
				c, _, err := t.AnyClient(v)
				if err != nil {
					return err
				}
				defer c.Close()
				nc, err := c.PatchConfig(ctx, p)
				if err != nil {
					return err
				}
				return printConfig(cmd.OutOrStdout(), nc)
			})
		},
	}
	cmd.Flags().StringArrayVar(&sets, "set", nil, "key=value to change (repeatable)")
	return cmd
}

func parseDuration(s string) (config.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%s is not a duration (write e.g. 10s or 500ms)", quote.Value(s))
	}
	return config.Duration(d), nil
}

func historyCmd(tf *targetFlags) *cobra.Command {
	return &cobra.Command{
		Use: "history", Short: "Show the timeline history: promotions with time and reason, and WAL that rewinds discarded", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withTarget(tf, 10*time.Second, func(_ context.Context, _ ctl.Target, v cluster.View) error {
				ctl.WriteHistory(cmd.OutOrStdout(), v.History)
				return nil
			})
		},
	}
}
