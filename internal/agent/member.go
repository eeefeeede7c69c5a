package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/backup"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/config"
	"github.com/holdfast/holdfast/internal/fenceguard"
	"github.com/holdfast/holdfast/internal/kubemaint"
	"github.com/holdfast/holdfast/internal/kubepod"
	"github.com/holdfast/holdfast/internal/kubestore"
	"github.com/holdfast/holdfast/internal/osuser"
	"github.com/holdfast/holdfast/internal/pg"
	"github.com/holdfast/holdfast/internal/pgauth"
	"github.com/holdfast/holdfast/internal/store"
	"github.com/holdfast/holdfast/internal/watchdog"
)

// eventTimeout bounds one Kubernetes API call made while starting: an
// event about a refusal, the read of the node's zone.
const eventTimeout = 5 * time.Second

// Paths inside a member's data_dir.
func pgDataDir(c config.Config) string   { return filepath.Join(c.DataDir, "pgdata") }
func etcdDataDir(c config.Config) string { return filepath.Join(c.DataDir, "etcd") }

// RunMember wires a member from its configuration — embedded etcd (when
// configured), the store client, the PostgreSQL engine — and runs its agent
// until ctx is cancelled. Before anything is written it checks that the data
// directory belongs to this cluster; a mismatch is returned as an error
// wrapping ErrFatal and nothing on disk changes.
func RunMember(ctx context.Context, c config.Config, log *slog.Logger) error {
	var kube kubernetes.Interface
	if c.Kubernetes.InPod() || c.Store.Mode == config.StoreKubernetes {
		cli, err := kubestore.NewClient(c.Kubernetes.Kubeconfig)
		if err != nil {
			return err
		}
		kube = cli
	}
	if err := preflight(c); err != nil {
		if kube != nil && c.Kubernetes.InPod() {
			ec, cancel := context.WithTimeout(ctx, eventTimeout)
			if eerr := kubepod.Event(ec, kube, c.Kubernetes.Namespace, c.Kubernetes.PodName, "DataDirRefused", err.Error(), true); eerr != nil {
				log.Warn("could not record the refusal as an event", "err", eerr)
			}
			if lerr := kubepod.Label(ec, kube, c.Kubernetes.Namespace, c.Kubernetes.PodName, c.Kubernetes.RoleLabel, kubepod.RoleUnhealthy); lerr != nil {
				log.Warn("could not label the pod unhealthy", "err", lerr)
			}
			cancel()
		}
		return err
	}
	if err := os.MkdirAll(c.DataDir, 0o755); err != nil {
		return fmt.Errorf("create data_dir %s: %w", c.DataDir, err)
	}
	self := cluster.MemberInfo{Name: c.Name, Witness: c.Witness, Tags: c.MemberTags()}
	if _, set := self.Tags[cluster.TagZone]; !set && c.Kubernetes.InPod() && c.Kubernetes.ZoneFromNode {
		zc, cancel := context.WithTimeout(ctx, eventTimeout)
		zone, err := kubepod.NodeZone(zc, kube, c.Kubernetes.Namespace, c.Kubernetes.PodName)
		cancel()
		switch {
		case err != nil:
			log.Warn("could not learn this member's zone: no zone preference for it", "err", err)
		case zone != "":
			if self.Tags == nil {
				self.Tags = map[string]string{}
			}
			self.Tags[cluster.TagZone] = zone
		}
	}
	var dog *watchdog.Guard
	if !c.Witness {
		g, err := watchdog.NewGuard(watchdog.GuardOptions{Mode: watchdog.Mode(c.Watchdog.Mode), Path: c.Watchdog.Device,
			SafetyMargin: c.Watchdog.SafetyMargin.D(), Logger: log.With("component", "watchdog")})
		if err != nil {
			return fmt.Errorf("watchdog: %w", err)
		}
		// A member that may never lead (required, but no usable device)
		// must not hold up the leader race either: it stays out of it.
		if c.Watchdog.Mode == config.WatchdogRequired {
			if err := g.Probe(c.TTL.D(), c.LoopInterval.D()); err != nil {
				log.Error("watchdog required but unusable: this member will not become primary (nofailover)", "err", err)
				self.Tags = maps.Clone(self.Tags)
				if self.Tags == nil {
					self.Tags = map[string]string{}
				}
				self.Tags[cluster.TagNoFailover] = "true"
			}
		}
		dog = g
	}
	// The fence guard: a child process that kills PostgreSQL if this agent
	// freezes while it may run a writable primary (package fenceguard).
	var guard *fenceguard.Client
	if !c.Witness {
		bin, err := fenceguard.Binary()
		if err == nil {
			guard, err = fenceguard.Start(bin, os.Stderr)
		}
		if err != nil {
			return fmt.Errorf("start the fence guard: %w", err)
		}
		defer guard.Close()
	}

	var db Database
	var bk *backup.Member
	var cloner Cloner
	var boot Bootstrapper
	var loadView func(context.Context) (cluster.View, error) // set once the store is open
	params := c.PostgreSQL.Parameters
	if !c.Witness {
		acct, err := osuser.Resolve(c.PostgreSQL.OSUser)
		if err != nil {
			return err
		}
		if err := osuser.CheckReachable(acct, c.DataDir); err != nil {
			return err
		}
		bin, err := pg.FindBinDir(c.PostgreSQL.BinDir)
		if err != nil {
			return err
		}
		lhost, lport, err := splitHostPort(c.PostgreSQL.Listen)
		if err != nil {
			return fmt.Errorf("postgresql.listen: %w", err)
		}
		chost, cport, err := splitHostPort(c.PGConnectAddress())
		if err != nil {
			return fmt.Errorf("postgresql.connect_address: %w", err)
		}
		if cport != lport {
			return fmt.Errorf("postgresql.connect_address port %d differs from postgresql.listen port %d: port forwarding is not supported yet", cport, lport)
		}
		self.Host, self.Port = chost, cport
		if c.Backup.Enabled() {
			if bk, err = newBackupMember(c, acct, chost, cport, func(ctx context.Context) (cluster.View, error) { return loadView(ctx) }, log); err != nil {
				return err
			}
			if c.Backup.TLS.Enabled() {
				self.BackupTLSPort = c.Backup.TLS.ServerPort()
			}
			params = maps.Clone(params)
			if params == nil {
				params = map[string]string{}
			}
			maps.Copy(params, bk.Parameters())
		}
		eng, err := pg.New(pg.Options{
			BinDir: bin, DataDir: pgDataDir(c), LogFile: filepath.Join(c.DataDir, "postgresql.log"),
			Account: acct, Member: c.Name, ListenHost: lhost, Port: lport, ConnectHost: chost,
			Parameters: params, PgHBA: c.PostgreSQL.PgHBA, InitdbArgs: c.PostgreSQL.InitdbArgs,
			Superuser:   pg.Credentials{Username: c.PostgreSQL.Superuser.Username, Password: c.PostgreSQL.Superuser.Password},
			Replication: pg.Credentials{Username: c.PostgreSQL.Replication.Username, Password: c.PostgreSQL.Replication.Password},
			ProxyAuth: pg.ProxyAuth{Role: pgauth.AuthRole, Password: c.PostgreSQL.ProxyAuth.Password,
				Function: pgauth.AuthFunction + "(text)", SetupSQL: pgauth.SetupSQL},
			Logger: log,
		})
		if err != nil {
			return err
		}
		db = eng
		if bk != nil {
			cloner = backup.NewReplicas(bk, eng)
		}
		if c.Bootstrap.Restore.Enabled() {
			if boot, err = newBootstrapRestore(c, acct, bin, eng, log); err != nil {
				return err
			}
		}
	}

	endpoints := c.Store.Endpoints
	localEndpoint := ""
	if c.Store.Mode == config.StoreEmbedded {
		e := c.Store.Embedded
		if e.AdvertisePeer == "" {
			e.AdvertisePeer = e.ListenPeer
		}
		if e.AdvertiseClient == "" {
			e.AdvertiseClient = e.ListenClient
		}
		emb, err := store.StartEmbedded(store.EmbeddedOptions{
			Name: c.Name, Dir: etcdDataDir(c),
			ListenPeer: e.ListenPeer, ListenClient: e.ListenClient,
			AdvertisePeer: e.AdvertisePeer, AdvertiseClient: e.AdvertiseClient,
			Peers: e.Peers, ClusterToken: c.Cluster,
			LogFile: filepath.Join(c.DataDir, "etcd.log"),
		})
		if err != nil {
			return fmt.Errorf("start embedded etcd member %s: %w", c.Name, err)
		}
		defer emb.Close()
		localEndpoint = emb.ClientURL()
		endpoints = c.PeerClientURLs()
	}
	var st Store
	if c.Store.Mode == config.StoreKubernetes {
		ks, err := kubestore.New(kubestore.Options{Client: kube, Namespace: c.Kubernetes.Namespace, Cluster: c.Cluster,
			Member: c.Name, TTL: c.TTL.D(), Labels: c.Kubernetes.Labels, Logger: log})
		if err != nil {
			return fmt.Errorf("open consensus store: %w", err)
		}
		st = ks
	} else {
		es, err := store.Open(ctx, store.Options{
			Endpoints: endpoints, Local: localEndpoint, Prefix: c.Store.Prefix, Cluster: c.Cluster, Member: c.Name,
			TTL: c.TTL.D(), DialTimeout: c.Store.DialTimeout.D(), Logger: log,
		})
		if err != nil {
			return fmt.Errorf("open consensus store: %w", err)
		}
		defer es.Close()
		st = es
	}
	loadView = st.Load
	var onState func(api.MemberState)
	if c.Kubernetes.InPod() {
		lb := kubepod.NewLabeler(kubepod.LabelerOptions{Client: kube, Namespace: c.Kubernetes.Namespace,
			Pod: c.Kubernetes.PodName, Cluster: c.Cluster, Key: c.Kubernetes.RoleLabel, Logger: log})
		lctx, stopLabels := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() { lb.Run(lctx); close(done) }()
		defer func() { stopLabels(); <-done }()
		onState = lb.Observe
	}
	var apiBackups api.BackupService
	var collectors []prometheus.Collector
	var archive ArchiveGate
	var archiveReporter ArchiveReporter
	if bk != nil {
		onState = chainState(onState, bk.Observe)
		apiBackups, collectors, archive, archiveReporter = bk, []prometheus.Collector{bk.Collector()}, bk.Gate(), bk
		bctx, stopBackups := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { bk.Run(bctx); close(done) }()
		defer func() { stopBackups(); <-done }()
	}

	self.APIURL = c.APIURL()
	a := New(Options{
		Cluster: c.Cluster, Self: self,
		Defaults:    c.ClusterConfig(),
		OnState:     onState,
		FenceMargin: c.FenceMargin(), DB: db, Store: st, LocalStoreEndpoint: localEndpoint,
		RewindFailedFile: filepath.Join(c.DataDir, "rewind-failed"),
		Watchdog:         dog,
		FenceGuard:       guard,
		Archive:          archive,
		ArchiveReporter:  archiveReporter,
		Cloner:           cloner,
		Bootstrapper:     boot,
		PeerClient: api.ClientOptions{Token: c.API.AuthToken, CAFile: c.API.TLS.PeerCAFile(),
			CertFile: c.API.TLS.CertFile, KeyFile: c.API.TLS.KeyFile, Timeout: time.Second},
		Logger: log,
	})
	if c.Kubernetes.InPod() {
		w := kubemaint.NewWatcher(kubemaint.WatcherOptions{Client: kube, Namespace: c.Kubernetes.Namespace,
			Pod: c.Kubernetes.PodName, Cluster: c.Cluster, Member: a.Backend(), Load: st.Load,
			DrainTaints: c.Kubernetes.DrainTaints, OnWait: a.SetWaiting, Logger: log})
		wctx, stopWatcher := context.WithCancel(ctx)
		defer stopWatcher()
		go w.Run(wctx)
	}
	srv, err := api.NewServer(api.ServerOptions{
		Backend: a.Backend(), Listen: c.API.Listen,
		CertFile: c.API.TLS.CertFile, KeyFile: c.API.TLS.KeyFile, ClientCAFile: c.API.TLS.ClientCAFile,
		AuthToken: c.API.AuthToken, Logger: log.With("component", "api"),
		Backups: apiBackups, Collectors: collectors,
	})
	if err != nil {
		return fmt.Errorf("start the API on %s: %w", c.API.Listen, err)
	}
	srvCtx, stopServer := context.WithCancel(ctx)
	defer stopServer()
	go func() {
		if err := srv.Serve(srvCtx); err != nil {
			log.Error("API server stopped", "err", err)
		}
	}()
	log.Info("agent starting", "cluster", c.Cluster, "member", c.Name, "store", c.Store.Mode, "endpoints", endpoints, "api", self.APIURL)
	err = a.Run(ctx)
	stopServer()
	return err
}

// preflight refuses, before touching anything, a data directory whose
// holdfast marker names another cluster.
func preflight(c config.Config) error {
	if c.Witness {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(pgDataDir(c), pg.MarkerFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read data directory marker: %w", err)
	}
	var m struct {
		Cluster  string `json:"cluster"`
		SystemID string `json:"system_id"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("%w: data directory %s has a damaged holdfast marker %s: %v", ErrFatal, pgDataDir(c), pg.MarkerFile, err)
	}
	if m.Cluster != "" && m.Cluster != c.Cluster {
		return fmt.Errorf("%w: data directory %s belongs to cluster %q (system identifier %s), not %q; holdfast will not touch it: point data_dir elsewhere or move the directory away", ErrFatal, pgDataDir(c), m.Cluster, m.SystemID, c.Cluster)
	}
	return nil
}

func splitHostPort(hp string) (string, int, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	return h, n, nil
}

// The production backends implement the agent's interfaces, and the etcd
// adapter the optional raft capability.
var (
	_ Database        = (*pg.Engine)(nil)
	_ Store           = (*store.Etcd)(nil)
	_ Store           = (*kubestore.Store)(nil)
	_ RaftLeaderMover = (*store.Etcd)(nil)
)
