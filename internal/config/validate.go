package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/quote"
)

var (
	usernameRe = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)
	hostRe     = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
	paramRe    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)
)

// problem is one thing wrong with a Config: the dotted key at fault and
// what is wrong with it, including how to fix it.
type problem struct {
	key string
	err error
}

// Validate refuses impossible values. Each problem names the key and says
// how to fix it; all problems are returned, joined. Validate looks at the
// values only: it touches neither the disk nor the network. The postgresql
// section of a witness is not checked, since a witness runs no database.
func (c Config) Validate() error {
	ps := c.problems()
	errs := make([]error, len(ps))
	for i, p := range ps {
		errs[i] = fmt.Errorf("%s: %w", p.key, p.err)
	}
	return errors.Join(errs...)
}

// problems lists what Validate refuses, in key order.
func (c Config) problems() []problem {
	var ps []problem
	add := func(key string, err error) { ps = append(ps, problem{key, err}) }
	bad := func(key, format string, args ...any) { add(key, fmt.Errorf(format, args...)) }

	if err := cluster.ValidName(c.Cluster); err != nil {
		add("cluster", err)
	}
	if c.Name == "" {
		bad("name", `required (a DNS label such as "pg-1")`)
	} else if err := cluster.ValidName(c.Name); err != nil {
		add("name", err)
	}
	switch {
	case c.DataDir == "":
		bad("data_dir", "required (an absolute path such as /var/lib/holdfast)")
	case !filepath.IsAbs(c.DataDir):
		bad("data_dir", "%s is not an absolute path (write it from /, e.g. /var/lib/holdfast)", quote.Value(c.DataDir))
	}

	// The settings the cluster shares (ttl, loop_interval, ...) are judged
	// by the validator every change to them passes too.
	for _, p := range c.ClusterConfig().Problems(c.FenceMargin()) {
		add(p.Key, p.Err)
	}

	s := c.Store
	if !strings.HasPrefix(s.Prefix, "/") {
		bad("store.prefix", `%s must start with "/" (e.g. /holdfast)`, quote.Value(s.Prefix))
	}
	if s.DialTimeout <= 0 {
		bad("store.dial_timeout", "%s must be positive (e.g. 2s)", s.DialTimeout)
	}
	switch s.Mode {
	case StoreEtcd:
		if len(s.Endpoints) == 0 {
			bad("store.endpoints", "required with store.mode etcd (list the etcd client URLs, e.g. [http://10.0.0.1:2379])")
		}
		for _, e := range s.Endpoints {
			if err := checkURL(e, "http://10.0.0.1:2379"); err != nil {
				add("store.endpoints", err)
			}
		}
	case StoreEmbedded:
		ps = append(ps, c.embeddedProblems()...)
	case StoreKubernetes:
		if c.Kubernetes.Namespace == "" {
			bad("kubernetes.namespace", "required with store.mode kubernetes (the namespace of the cluster's objects; in a pod, set HOLDFAST_KUBERNETES_NAMESPACE from the downward API)")
		}
	default:
		bad("store.mode", "%s is not a store mode (write %s, %s or %s)", quote.Value(s.Mode), StoreEmbedded, StoreEtcd, StoreKubernetes)
	}
	for _, k := range slices.Sorted(maps.Keys(c.Tags)) {
		if err := cluster.CheckTag(k, c.Tags[k]); err != nil {
			add("tags."+k, err)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(c.MemberTagsByName)) {
		name, tag, ok := strings.Cut(k, ".")
		if !ok || tag == "" {
			add("member_tags", fmt.Errorf("key %s is not <member>.<tag> (e.g. pg-2.failover_priority)", cluster.Quote(k)))
			continue
		}
		if err := cluster.ValidName(name); err != nil {
			add("member_tags", fmt.Errorf("key %s: %w", cluster.Quote(k), err))
			continue
		}
		if err := cluster.CheckTag(tag, c.MemberTagsByName[k]); err != nil {
			add("member_tags."+k, err)
		}
	}
	ps = append(ps, c.kubernetesProblems()...)

	if !c.Witness {
		ps = append(ps, c.postgresProblems()...)
	}
	ps = append(ps, c.apiProblems()...)

	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%s is not a log level (write debug, info, warn or error)", quote.Value(c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", "%s is not a log format (write text or json)", quote.Value(c.Log.Format))
	}
	ps = append(ps, c.watchdogProblems()...)
	ps = append(ps, c.backupProblems()...)
	ps = append(ps, c.bootstrapProblems()...)
	return ps
}

// embeddedProblems checks store.embedded.
func (c Config) embeddedProblems() []problem {
	var ps []problem
	bad := func(key, format string, args ...any) { ps = append(ps, problem{key, fmt.Errorf(format, args...)}) }
	e := c.Store.Embedded
	checkAddr := func(key, addr, example string) {
		if err := checkHostPort(addr, example); err != nil {
			ps = append(ps, problem{key, err})
		}
	}
	checkAddr("store.embedded.listen_peer", e.ListenPeer, "0.0.0.0:2380")
	checkAddr("store.embedded.listen_client", e.ListenClient, "127.0.0.1:2379")
	if e.AdvertisePeer != "" {
		checkAddr("store.embedded.advertise_peer", e.AdvertisePeer, "10.0.0.1:2380")
	}
	if e.AdvertiseClient != "" {
		checkAddr("store.embedded.advertise_client", e.AdvertiseClient, "10.0.0.1:2379")
	}
	advertised := e.AdvertisePeer
	switch {
	case advertised == "" && unspecified(e.ListenPeer):
		bad("store.embedded.advertise_peer", "required when store.embedded.listen_peer binds every interface (%s): set the host:port other members reach this one at", e.ListenPeer)
	case advertised != "" && unspecified(advertised):
		bad("store.embedded.advertise_peer", "%s is not an address other members can reach (write this host's address, e.g. 10.0.0.1:2380)", advertised)
	case advertised == "":
		advertised = e.ListenPeer
	}
	own, ok := e.Peers[c.Name]
	switch {
	case len(e.Peers) == 0:
		bad("store.embedded.peers", "required with store.mode embedded (map every voter's name to its peer URL, including this member's, e.g. {%s: http://%s})", c.Name, advertised)
	case cluster.ValidName(c.Name) != nil:
		// Reported as a problem of name.
	case !ok:
		bad("store.embedded.peers", "has no entry for this member %s (add %s: http://%s)", quote.Value(c.Name), c.Name, advertised)
	case checkHostPort(advertised, "") != nil || unspecified(advertised):
		// Reported above.
	default:
		u, err := url.Parse(own)
		if _, port, _ := net.SplitHostPort(advertised); err == nil && u.Port() != "" && port != u.Port() {
			bad("store.embedded.peers."+c.Name, "%s has port %s, but this member's etcd advertises %s (advertise_peer, else listen_peer); they must be the same address", own, u.Port(), advertised)
		}
	}
	byURL := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(e.Peers)) {
		key, u := "store.embedded.peers."+name, e.Peers[name]
		if err := cluster.ValidName(name); err != nil {
			ps = append(ps, problem{key, fmt.Errorf("member name: %w", err)})
		}
		if err := checkURL(u, "http://10.0.0.1:2380"); err != nil {
			ps = append(ps, problem{key, err})
		} else if other, dup := byURL[u]; dup {
			bad(key, "has the same URL as %s (%s); every voter needs its own", other, u)
		}
		byURL[u] = name
	}
	for _, name := range slices.Sorted(maps.Keys(e.Clients)) {
		key := "store.embedded.clients." + name
		if _, ok := e.Peers[name]; !ok {
			bad(key, "%s is not in store.embedded.peers (clients lists the client URLs of the voters; add it to peers or remove it here)", quote.Value(name))
		}
		if err := checkURL(e.Clients[name], "http://10.0.0.1:2379"); err != nil {
			ps = append(ps, problem{key, err})
		}
	}
	return ps
}

// postgresProblems checks the postgresql section.
func (c Config) postgresProblems() []problem {
	var ps []problem
	bad := func(key, format string, args ...any) { ps = append(ps, problem{key, fmt.Errorf(format, args...)}) }
	p := c.PostgreSQL
	if err := checkHostPort(p.Listen, "127.0.0.1:5432"); err != nil {
		ps = append(ps, problem{"postgresql.listen", err})
	}
	if p.ConnectAddress != "" {
		if err := checkHostPort(p.ConnectAddress, "10.0.0.1:5432"); err != nil {
			ps = append(ps, problem{"postgresql.connect_address", err})
		} else if unspecified(p.ConnectAddress) {
			bad("postgresql.connect_address", "%s is not an address others can connect to (write this host's address, e.g. 10.0.0.1:5432)", p.ConnectAddress)
		}
	} else if unspecified(p.Listen) {
		bad("postgresql.connect_address", "required when postgresql.listen binds every interface (%s): set the host:port other members and clients use to reach this database", p.Listen)
	}
	if p.BinDir != "" && !filepath.IsAbs(p.BinDir) {
		bad("postgresql.bin_dir", "%s is not an absolute path (write e.g. /usr/lib/postgresql/17/bin, or leave it unset to find one)", quote.Value(p.BinDir))
	}
	for _, role := range []struct {
		key  string
		user string
	}{{"postgresql.superuser.username", p.Superuser.Username}, {"postgresql.replication.username", p.Replication.Username}} {
		switch {
		case role.user == "":
			bad(role.key, "required (e.g. postgres, replicator)")
		case !usernameRe.MatchString(role.user):
			bad(role.key, "%s is not a valid role name (use lower-case letters, digits and _, not starting with a digit)", quote.Value(role.user))
		}
	}
	if p.Superuser.Username != "" && p.Superuser.Username == p.Replication.Username {
		bad("postgresql.replication.username", "%s is also the superuser (use a separate role, e.g. replicator)", quote.Value(p.Replication.Username))
	}
	for _, name := range slices.Sorted(maps.Keys(p.Parameters)) {
		key := "postgresql.parameters." + name
		if !paramRe.MatchString(name) {
			bad(key, "%s is not a PostgreSQL parameter name", quote.Value(name))
		}
		if strings.ContainsAny(p.Parameters[name], "\n\r\x00") {
			bad(key, "the value must be a single line")
		}
	}
	for i, line := range p.PgHBA {
		if strings.ContainsAny(line, "\n\r\x00") {
			bad("postgresql.pg_hba", "item %d must be a single line (write one list item per rule)", i+1)
		}
	}
	return ps
}

// apiProblems checks the api section. A witness runs the API too (its
// liveness probe and metrics), so it is checked for every member.
func (c Config) apiProblems() []problem {
	var ps []problem
	bad := func(key, format string, args ...any) { ps = append(ps, problem{key, fmt.Errorf(format, args...)}) }
	a := c.API
	if err := checkHostPort(a.Listen, "127.0.0.1:8008"); err != nil {
		ps = append(ps, problem{"api.listen", err})
	}
	if a.ConnectAddress != "" {
		if err := checkHostPort(a.ConnectAddress, "10.0.0.1:8008"); err != nil {
			ps = append(ps, problem{"api.connect_address", err})
		} else if unspecified(a.ConnectAddress) {
			bad("api.connect_address", "%s is not an address others can connect to (write this host's address, e.g. 10.0.0.1:8008)", a.ConnectAddress)
		}
	} else if unspecified(a.Listen) {
		bad("api.connect_address", "required when api.listen binds every interface (%s): set the host:port other members and the CLI use to reach this member's API", a.Listen)
	}
	// The token travels in an HTTP header: a byte the header cannot carry
	// would make every authenticated request fail in a way that looks like
	// a wrong token.
	if t := a.AuthToken; t != "" && strings.IndexFunc(t, func(r rune) bool { return r <= ' ' || r >= 0x7f }) >= 0 {
		bad("api.auth_token", "must be printable ASCII without spaces (it is sent as an HTTP header: Authorization: Bearer <token>)")
	}
	t := a.TLS
	for _, f := range []struct{ key, path, example string }{
		{"api.tls.cert_file", t.CertFile, "api.crt"},
		{"api.tls.key_file", t.KeyFile, "api.key"},
		{"api.tls.client_ca_file", t.ClientCAFile, "ca.crt"},
		{"api.tls.ca_file", t.CAFile, "ca.crt"},
	} {
		if f.path != "" && !filepath.IsAbs(f.path) {
			bad(f.key, "%s is not an absolute path (write it from /, e.g. /etc/holdfast/tls/%s)", quote.Value(f.path), f.example)
		}
	}
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		bad("api.tls.key_file", "required with api.tls.cert_file (HTTPS needs the certificate and its private key)")
	case t.CertFile == "" && t.KeyFile != "":
		bad("api.tls.cert_file", "required with api.tls.key_file (HTTPS needs the certificate and its private key)")
	}
	if t.ClientCAFile != "" && (t.CertFile == "" || t.KeyFile == "") {
		bad("api.tls.client_ca_file", "requires api.tls.cert_file and api.tls.key_file: client certificates are only checked over HTTPS")
	}
	return ps
}

// kubernetesProblems checks the kubernetes section.
func (c Config) kubernetesProblems() []problem {
	var ps []problem
	bad := func(key, format string, args ...any) { ps = append(ps, problem{key, fmt.Errorf(format, args...)}) }
	k := c.Kubernetes
	if k.InPod() {
		if err := cluster.ValidName(k.PodName); err != nil {
			ps = append(ps, problem{"kubernetes.pod_name", err})
		}
		if k.Namespace == "" {
			bad("kubernetes.namespace", "required with kubernetes.pod_name (set HOLDFAST_KUBERNETES_NAMESPACE from the downward API)")
		}
		if k.HeadlessService == "" && (c.PostgreSQL.ConnectAddress == "" || c.API.ConnectAddress == "") {
			bad("kubernetes.headless_service", "required with kubernetes.pod_name: other members reach this pod by its stable DNS name <pod>.<headless_service>.<namespace>.svc (or set postgresql.connect_address and api.connect_address)")
		}
	}
	if k.ClusterDomain == "" || strings.Trim(k.ClusterDomain, ".") != k.ClusterDomain {
		bad("kubernetes.cluster_domain", "%s is not a domain (e.g. cluster.local)", quote.Value(k.ClusterDomain))
	}
	if !labelKeyRe.MatchString(k.RoleLabel) {
		bad("kubernetes.role_label", "%s is not a label key (e.g. holdfast.io/role)", quote.Value(k.RoleLabel))
	}
	for key, v := range k.Labels {
		if !labelKeyRe.MatchString(key) || !labelValueRe.MatchString(v) {
			bad("kubernetes.labels", "%s=%s is not a valid Kubernetes label (keys like app.kubernetes.io/instance, values of at most 63 letters, digits, '-', '_' or '.')", quote.Value(key), quote.Value(v))
		}
	}
	if k.Kubeconfig != "" && !filepath.IsAbs(k.Kubeconfig) {
		bad("kubernetes.kubeconfig", "%s is not an absolute path", quote.Value(k.Kubeconfig))
	}
	return ps
}

// Kubernetes label syntax: an optional DNS-subdomain prefix and a name.
var (
	labelKeyRe   = regexp.MustCompile(`^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
	labelValueRe = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$`)
)

// minWatchdogSafetyMargin is the smallest explicit watchdog.safety_margin
// (watchdog.MinSafetyMargin): the lease renewal and the kick must fit in it.
const minWatchdogSafetyMargin = 100 * time.Millisecond

// watchdogProblems checks the watchdog section. The timeout arithmetic is
// package watchdog's (Timeout); the two are kept equal by a test.
func (c Config) watchdogProblems() []problem {
	var ps []problem
	bad := func(key, format string, args ...any) { ps = append(ps, problem{key, fmt.Errorf(format, args...)}) }
	w := c.Watchdog
	marginOK := false
	switch m := w.SafetyMargin.D(); {
	case m < 0:
		bad("watchdog.safety_margin", "%s is negative (write 0s for one loop_interval, or a duration such as 1s)", w.SafetyMargin)
	case m > 0 && m < minWatchdogSafetyMargin:
		bad("watchdog.safety_margin", "%s is too short (minimum %s: the lease renewal and the watchdog kick must fit in it; 0s means one loop_interval)", w.SafetyMargin, Duration(minWatchdogSafetyMargin))
	default:
		marginOK = true
	}
	switch w.Mode {
	case WatchdogOff:
		return ps
	case WatchdogAutomatic, WatchdogRequired:
	default:
		bad("watchdog.mode", "%s is not a watchdog mode (write %s, %s or %s)", quote.Value(w.Mode), WatchdogOff, WatchdogAutomatic, WatchdogRequired)
		return ps
	}
	switch {
	case w.Device == "":
		bad("watchdog.device", "required with watchdog.mode %s (the watchdog device, e.g. /dev/watchdog)", w.Mode)
	case !filepath.IsAbs(w.Device):
		bad("watchdog.device", "%s is not an absolute path (write e.g. /dev/watchdog)", quote.Value(w.Device))
	}
	// The timeout is checked only against a valid ttl and loop_interval;
	// their own problems are reported above.
	if !marginOK {
		return ps
	}
	for _, p := range c.ClusterConfig().Problems(c.FenceMargin()) {
		if p.Key == "ttl" || p.Key == "loop_interval" {
			return ps
		}
	}
	ttl, loop := c.TTL.D(), c.LoopInterval.D()
	margin, which := w.SafetyMargin.D(), "watchdog.safety_margin"
	if margin == 0 {
		margin, which = loop, "watchdog.safety_margin (0s: one loop_interval)"
	}
	switch t := (ttl - margin).Truncate(time.Second); {
	case t < time.Second:
		bad("watchdog.safety_margin", "%s leaves no watchdog timeout for ttl %s: the timeout is ttl - %s rounded down to whole seconds (%s) and must be at least 1s, so that a frozen primary is reset before its lease can expire (raise ttl or lower watchdog.safety_margin)",
			Duration(margin), c.TTL, which, Duration(max(t, 0)))
	case t <= loop:
		bad("watchdog.safety_margin", "%s leaves a watchdog timeout of %s (ttl %s - %s, rounded down to whole seconds), not longer than loop_interval %s: the agent kicks the watchdog once per loop, so it would fire while the agent is healthy (raise ttl or lower watchdog.safety_margin)",
			Duration(margin), Duration(t), c.TTL, which, c.LoopInterval)
	}
	return ps
}

// checkHostPort checks a host:port address with a port in 1..65535.
func checkHostPort(addr, example string) error {
	if addr == "" {
		return fmt.Errorf("required (write host:port, e.g. %s)", example)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s is not host:port (write e.g. %s)", quote.Value(addr), example)
	}
	if _, err := netip.ParseAddr(host); err != nil && !hostRe.MatchString(host) {
		return fmt.Errorf("%s: %s is not a host name or IP address (write e.g. %s)", quote.Value(addr), quote.Value(host), example)
	}
	if port == "" || strings.Trim(port, "0123456789") != "" {
		return fmt.Errorf("%s: port %s is not a number (write e.g. %s)", quote.Value(addr), quote.Value(port), example)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %s out of range 1-65535", quote.Raw(port))
	}
	return nil
}

// checkURL checks an http(s)://host:port URL with nothing after the port.
func checkURL(s, example string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Opaque != "" || u.User != nil ||
		u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return fmt.Errorf("%s is not an http(s)://host:port URL (write e.g. %s)", quote.Value(s), example)
	}
	if err := checkHostPort(u.Host, strings.TrimPrefix(example, "http://")); err != nil {
		return fmt.Errorf("%s: %w", quote.Value(s), err)
	}
	return nil
}

// unspecified reports whether host:port binds every interface (0.0.0.0, ::).
func unspecified(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsUnspecified()
}

// PGConnectAddress is the host:port others use to reach this member's
// PostgreSQL: postgresql.connect_address, else postgresql.listen.
func (c Config) PGConnectAddress() string {
	if c.PostgreSQL.ConnectAddress != "" {
		return c.PostgreSQL.ConnectAddress
	}
	return c.PostgreSQL.Listen
}

// APIConnectAddress is the host:port others use to reach this member's
// API: api.connect_address, else api.listen.
func (c Config) APIConnectAddress() string {
	if c.API.ConnectAddress != "" {
		return c.API.ConnectAddress
	}
	return c.API.Listen
}

// APIURL is the base URL of this member's API as others reach it
// ("https://10.0.0.1:8008" with api.tls.cert_file set, else "http://...");
// the agent publishes it in the member's registration.
func (c Config) APIURL() string {
	scheme := "http"
	if c.API.TLS.CertFile != "" {
		scheme = "https"
	}
	return scheme + "://" + c.APIConnectAddress()
}

// PeerClientURLs are the embedded store's client URLs an agent connects to:
// the values of store.embedded.clients, sorted and without duplicates, or,
// when that is empty, this member's own client URL
// ("http://" + advertise_client, else listen_client). It is meaningful in
// embedded mode only; in etcd mode use Store.Endpoints.
func (c Config) PeerClientURLs() []string {
	e := c.Store.Embedded
	if len(e.Clients) == 0 {
		addr := e.AdvertiseClient
		if addr == "" {
			addr = e.ListenClient
		}
		return []string{"http://" + addr}
	}
	return slices.Compact(slices.Sorted(maps.Values(e.Clients)))
}
