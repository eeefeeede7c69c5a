// Package config reads a member's static configuration: a YAML file,
// overridden by HOLDFAST_* environment variables, overridden by --set flags.
// Every key is known: an unknown key, a value of the wrong type or an
// impossible value is refused with an error that names the key and where it
// came from (file and line, variable, or flag), before anything touches disk.
package config

import (
	"maps"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// Store modes.
const (
	StoreEmbedded = "embedded" // every agent runs an etcd member in-process
	StoreEtcd     = "etcd"     // an external etcd v3 cluster
	// StoreKubernetes keeps the cluster's state in Kubernetes objects (a
	// Lease and ConfigMaps) through the API server (docs/kubernetes.md).
	StoreKubernetes = "kubernetes"
)

// Watchdog modes (the same names as package watchdog's Mode).
const (
	WatchdogOff       = "off"       // never open the device (default)
	WatchdogAutomatic = "automatic" // use it when it can be armed, else warn and lead without it
	WatchdogRequired  = "required"  // never run a writable primary without it
)

// Config is one member's static configuration.
type Config struct {
	// Cluster names the cluster; it prefixes every key in the store.
	Cluster string `yaml:"cluster"`
	// Name is this member's stable identity. Default: the host name.
	Name string `yaml:"name"`
	// DataDir holds everything of this member: pgdata/, etcd/ and run files.
	DataDir string `yaml:"data_dir"`
	// Witness members vote in the embedded store and run no database.
	Witness bool `yaml:"witness"`
	// Tags are member labels (cluster.Tag*): "nofailover: true" bars
	// promotion, "failover_priority" ranks candidates, "zone" names the
	// failure domain; any other tag is free-form.
	Tags map[string]string `yaml:"tags"`
	// MemberTagsByName are tags for particular members, keyed
	// "<member>.<tag>" (member names hold no dots), merged over Tags: one
	// file (a Helm chart's ConfigMap) serving every member can still rank
	// them, e.g. "pg-2.failover_priority: 0" (MemberTags()).
	MemberTagsByName map[string]string `yaml:"member_tags"`

	// TTL of the leader lease. A primary that has not renewed for
	// TTL - FenceMargin stops accepting writes.
	TTL Duration `yaml:"ttl"`
	// LoopInterval is how often the agent observes and decides when nothing
	// wakes it earlier.
	LoopInterval Duration `yaml:"loop_interval"`
	// MaximumLagOnFailover bars candidates further behind the last known
	// primary position than this.
	MaximumLagOnFailover ByteSize `yaml:"maximum_lag_on_failover"`
	// PrimaryStartTimeout is how long a primary whose PostgreSQL crashed may
	// take to come back in place before it gives up leadership.
	PrimaryStartTimeout Duration `yaml:"primary_start_timeout"`
	// SynchronousMode and SynchronousNodeCount seed the cluster's dynamic
	// configuration when this member bootstraps it (afterwards change them
	// with ctl edit-config): off, on, strict or quorum, and N.
	SynchronousMode      string `yaml:"synchronous_mode"`
	SynchronousNodeCount int    `yaml:"synchronous_node_count"`
	// BackupSchedule seeds the cluster's backup schedule the same way
	// (cluster.ParseBackupSchedule, e.g. "full=168h,incr=1h"; needs
	// backup.repository).
	BackupSchedule string `yaml:"backup_schedule"`

	Store      Store      `yaml:"store"`
	PostgreSQL PostgreSQL `yaml:"postgresql"`
	API        API        `yaml:"api"`
	Log        Log        `yaml:"log"`
	Watchdog   Watchdog   `yaml:"watchdog"`
	Kubernetes Kubernetes `yaml:"kubernetes"`
	Backup     Backup     `yaml:"backup"`
	// Bootstrap: how the member that bootstraps the cluster builds its
	// first data directory (initdb, or a restore from a backup).
	Bootstrap Bootstrap `yaml:"bootstrap"`
}

// Kubernetes configures a member that runs in a Kubernetes pod, and the
// Kubernetes store (docs/kubernetes.md). A member is in a pod when
// PodName is set: its name defaults to the pod's, its connect addresses to
// the pod's stable DNS name, and it labels its pod with its role.
type Kubernetes struct {
	// PodName and Namespace come from the downward API
	// (HOLDFAST_KUBERNETES_POD_NAME, HOLDFAST_KUBERNETES_NAMESPACE).
	PodName   string `yaml:"pod_name"`
	Namespace string `yaml:"namespace"`
	// HeadlessService is the StatefulSet's governing Service: pods are
	// reached as <pod>.<headless_service>.<namespace>.svc.<cluster_domain>.
	HeadlessService string `yaml:"headless_service"`
	ClusterDomain   string `yaml:"cluster_domain"`
	// RoleLabel is the pod label set to primary, replica or unhealthy.
	RoleLabel string `yaml:"role_label"`
	// Kubeconfig is a kubeconfig file; empty: the pod's service account.
	Kubeconfig string `yaml:"kubeconfig"`
	// Labels are added to every object the Kubernetes store creates.
	Labels map[string]string `yaml:"labels"`
	// DrainTaints are the node taints that mean "this node is going away":
	// the primary on such a node (or a cordoned one) hands over first.
	// Empty: kubemaint.DefaultDrainTaints.
	DrainTaints []string `yaml:"drain_taints"`
	// ZoneFromNode tags the member with its node's
	// topology.kubernetes.io/zone label (cluster.TagZone) unless the tags
	// already name a zone: failovers, switchovers and drains then prefer
	// candidates in the primary's zone. Default true.
	ZoneFromNode bool `yaml:"zone_from_node"`
}

// InPod reports whether this member runs in a Kubernetes pod.
func (k Kubernetes) InPod() bool { return k.PodName != "" }

// PodDNSName is the pod's stable DNS name, "" when it cannot be formed.
func (k Kubernetes) PodDNSName() string {
	if k.PodName == "" || k.HeadlessService == "" || k.Namespace == "" {
		return ""
	}
	return k.PodName + "." + k.HeadlessService + "." + k.Namespace + ".svc." + k.ClusterDomain
}

// Store configures the consensus store.
type Store struct {
	Mode string `yaml:"mode"` // embedded (default) or etcd
	// Prefix under which all keys live. Default "/holdfast".
	Prefix string `yaml:"prefix"`
	// Endpoints of an external etcd cluster (mode etcd).
	Endpoints []string `yaml:"endpoints"`
	// DialTimeout bounds connecting to the store.
	DialTimeout Duration `yaml:"dial_timeout"`
	Embedded    Embedded `yaml:"embedded"`
}

// Embedded configures the in-process etcd member.
type Embedded struct {
	// ListenPeer and ListenClient are host:port this member's etcd binds.
	ListenPeer   string `yaml:"listen_peer"`
	ListenClient string `yaml:"listen_client"`
	// AdvertisePeer and AdvertiseClient default to the listen addresses.
	AdvertisePeer   string `yaml:"advertise_peer"`
	AdvertiseClient string `yaml:"advertise_client"`
	// Peers lists every voter of the initial cluster, name -> peer URL
	// (http://host:port). It must include this member.
	Peers map[string]string `yaml:"peers"`
	// Clients lists every voter's client URL, name -> URL; agents connect to
	// all of them so losing one member's etcd does not cut the others off.
	Clients map[string]string `yaml:"clients"`
}

// PostgreSQL configures the database engine.
type PostgreSQL struct {
	// Listen is host:port PostgreSQL binds.
	Listen string `yaml:"listen"`
	// ConnectAddress is host:port others use to reach it. Default: Listen.
	ConnectAddress string `yaml:"connect_address"`
	// BinDir holds initdb, postgres, pg_basebackup, pg_rewind. Default: the
	// newest /usr/lib/postgresql/*/bin, else the directory of postgres on PATH.
	BinDir string `yaml:"bin_dir"`
	// OSUser runs PostgreSQL when holdfast runs as root. Default "postgres".
	OSUser string `yaml:"os_user"`
	// Parameters are the user's postgresql.conf settings; holdfast's own
	// settings (replication, hot standby, ...) win where they overlap.
	Parameters map[string]string `yaml:"parameters"`
	// PgHBA lines are placed before holdfast's own rules.
	PgHBA []string `yaml:"pg_hba"`
	// InitdbArgs are extra initdb arguments.
	InitdbArgs []string `yaml:"initdb_args"`

	Superuser   Credentials `yaml:"superuser"`
	Replication Credentials `yaml:"replication"`
	// ProxyAuth is the session proxy's auth role (holdfast proxy
	// --mode=session reads verifiers as pgauth.AuthRole). With a password
	// the primary creates that role and its function, and keeps the
	// password; without one the operator runs pgauth's setup SQL, or uses
	// no session proxy.
	ProxyAuth ProxyAuth `yaml:"proxy_auth"`
}

// ProxyAuth configures the session proxy's auth role.
type ProxyAuth struct {
	// Password of holdfast_auth; give the proxy the same one
	// (--auth-password-file).
	Password string `yaml:"password"`
}

// Credentials of a database role holdfast uses.
type Credentials struct {
	Username string `yaml:"username"`
	Password string `yaml:"password"`
}

// API configures the member's HTTP API: health checks for load balancers
// and probes, metrics, the cluster view, and the operations the CLI asks for
// (switchover, restart, pause, ...).
type API struct {
	// Listen is host:port the API binds. Default "127.0.0.1:8008".
	Listen string `yaml:"listen"`
	// ConnectAddress is host:port other members and the CLI use to reach
	// the API; it is published in the member's registration. Default: Listen.
	ConnectAddress string `yaml:"connect_address"`
	// AuthToken, when set, is required as "Authorization: Bearer <token>"
	// on every request that changes something (POST, PATCH, DELETE). Health
	// checks, metrics and the read-only views stay open, so load balancers
	// and probes need no secret.
	AuthToken string `yaml:"auth_token"`
	TLS       TLS    `yaml:"tls"`
}

// TLS configures HTTPS for the API.
type TLS struct {
	// CertFile and KeyFile (PEM) turn on HTTPS (TLS 1.2 or later); set both
	// or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientCAFile (PEM), when set, makes every request that changes
	// something present a client certificate signed by one of these CAs.
	// Read-only requests need none. Requires CertFile and KeyFile.
	ClientCAFile string `yaml:"client_ca_file"`
	// CAFile (PEM) verifies the other members' API certificates when this
	// member calls them (the failsafe asks every member each loop while the
	// store is unreachable). Default: ClientCAFile; with neither, the
	// system's roots.
	CAFile string `yaml:"ca_file"`
}

// PeerCAFile is the CA this member verifies the other members' API with.
func (t TLS) PeerCAFile() string {
	if t.CAFile != "" {
		return t.CAFile
	}
	return t.ClientCAFile
}

// Log configures the agent's own logging.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// Watchdog configures the Linux watchdog that resets this machine when the
// agent freezes while it runs a writable primary, before the leader lease
// can expire for the other members (docs/architecture.md, "Watchdog").
// A witness never leads, so it never arms it.
type Watchdog struct {
	// Mode is off (default), automatic (use the device when it can be
	// opened and its timeout set, else log a warning and lead without it)
	// or required (never become a writable primary without it).
	Mode string `yaml:"mode"`
	// Device is the watchdog device. Default "/dev/watchdog".
	Device string `yaml:"device"`
	// SafetyMargin sets the watchdog timeout: ttl - safety_margin, rounded
	// down to whole seconds. 0 (default) means one loop_interval, which puts
	// the reset of a frozen primary at the moment a live one would fence.
	SafetyMargin Duration `yaml:"safety_margin"`
}

// Defaults returns a configuration with every default filled in; Load
// starts from it. Values that depend on the machine (host name) are filled
// in by Load, not here, so Defaults stays pure.
func Defaults() Config {
	return Config{
		Cluster:              "holdfast",
		TTL:                  Duration(4 * time.Second),
		LoopInterval:         Duration(1 * time.Second),
		MaximumLagOnFailover: ByteSize(1 << 20),
		PrimaryStartTimeout:  Duration(10 * time.Second),
		SynchronousMode:      "off",
		SynchronousNodeCount: 1,
		Store: Store{
			Mode:        StoreEmbedded,
			Prefix:      "/holdfast",
			DialTimeout: Duration(2 * time.Second),
			Embedded: Embedded{
				ListenPeer:   "127.0.0.1:2380",
				ListenClient: "127.0.0.1:2379",
			},
		},
		PostgreSQL: PostgreSQL{
			Listen:      "127.0.0.1:5432",
			OSUser:      "postgres",
			Superuser:   Credentials{Username: "postgres"},
			Replication: Credentials{Username: "replicator"},
		},
		API:        API{Listen: "127.0.0.1:8008"},
		Log:        Log{Level: "info", Format: "text"},
		Watchdog:   Watchdog{Mode: WatchdogOff, Device: "/dev/watchdog"},
		Kubernetes: Kubernetes{ClusterDomain: "cluster.local", RoleLabel: "holdfast.io/role", ZoneFromNode: true},
		Backup:     Backup{RetentionFull: 2},
	}
}

// FenceMargin is how long before the leader lease could expire in the store
// a primary that failed to renew it stops accepting writes. It covers the
// time a fast shutdown needs to stop new writes plus clock-rate differences
// between this machine and the store's leader.
func (c Config) FenceMargin() time.Duration { return time.Duration(c.LoopInterval) }

// MemberTags returns this member's tags: Tags with the entries of
// MemberTagsByName naming this member merged over them. The result is a
// new map.
func (c Config) MemberTags() map[string]string {
	out := maps.Clone(c.Tags)
	for k, v := range c.MemberTagsByName {
		name, tag, ok := strings.Cut(k, ".")
		if !ok || name != c.Name {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[tag] = v
	}
	return out
}

// ClusterConfig is the part of c the cluster shares: the dynamic
// configuration a bootstrapping member writes to the store, and the one an
// agent uses until it has read the store's.
func (c Config) ClusterConfig() cluster.Config {
	return cluster.Config{
		TTL: c.TTL.D(), LoopInterval: c.LoopInterval.D(),
		MaximumLagOnFailover: c.MaximumLagOnFailover.Bytes(), PrimaryStartTimeout: c.PrimaryStartTimeout.D(),
		SynchronousMode: c.SynchronousMode, SynchronousNodeCount: c.SynchronousNodeCount,
		BackupSchedule: c.BackupSchedule,
	}
}
