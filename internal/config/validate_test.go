package config

import (
	"maps"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/watchdog"
)

func TestValidate(t *testing.T) {
	if err := baseConfig().Validate(); err != nil {
		t.Fatalf("base config: %v", err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   []string // one per problem, each must appear; nil means valid
	}{
		{"cluster name", func(c *Config) { c.Cluster = "Prod_1" }, []string{`cluster: "Prod_1" is not a valid name: use 1-63 lower-case`}},
		{"name required", func(c *Config) { c.Name = "" }, []string{"name: required"}},
		{"name invalid", func(c *Config) { c.Name = "-n1" }, []string{`name: "-n1" is not a valid name`}},
		{"data_dir required", func(c *Config) { c.DataDir = "" }, []string{"data_dir: required (an absolute path"}},
		{"data_dir relative", func(c *Config) { c.DataDir = "var/lib" }, []string{`data_dir: "var/lib" is not an absolute path`}},
		{"ttl minimum", func(c *Config) { c.TTL = Duration(1500 * time.Millisecond) }, []string{"ttl: 1.5s is too short (minimum 2s)"}},
		{"loop_interval minimum", func(c *Config) { c.LoopInterval = Duration(50 * time.Millisecond) }, []string{"loop_interval: 50ms is too short (minimum 100ms)"}},
		{"ttl against loop_interval", func(c *Config) { c.TTL, c.LoopInterval = Duration(5*time.Second), Duration(2*time.Second) },
			[]string{"ttl: 5s is too short for loop_interval 2s: it must be at least 2 × loop_interval + the fence margin (2s) = 6s, so that a primary can miss one lease renewal and still fence itself"}},
		{"ttl exactly enough", func(c *Config) { c.TTL, c.LoopInterval = Duration(6*time.Second), Duration(2*time.Second) }, nil},
		{"huge loop_interval does not overflow", func(c *Config) { c.LoopInterval = Duration(1<<63 - 1) }, []string{"ttl: 4s is too short for loop_interval"}},
		{"boolean tag", func(c *Config) { c.Tags = map[string]string{"nofailover": "maybe"} }, []string{`tags.nofailover: "maybe" is not a boolean`}},
		{"priority tag", func(c *Config) { c.Tags = map[string]string{"failover_priority": "-2", "rack": "r1"} }, []string{"tags.failover_priority: \"-2\" is not a priority"}},
		{"member tags", func(c *Config) {
			c.MemberTagsByName = map[string]string{"n1.failover_priority": "3", "n2.zone": "b", "n2.noloadbalance": "sometimes", "nodot": "1", "Bad_Name.zone": "x"}
		}, []string{`member_tags: key "Bad_Name.zone"`, `member_tags: key "nodot" is not <member>.<tag>`, `member_tags.n2.noloadbalance: "sometimes" is not a boolean`}},
		{"negative lag", func(c *Config) { c.MaximumLagOnFailover = -1 }, []string{"maximum_lag_on_failover: -1 is negative"}},
		{"absurd lag", func(c *Config) { c.MaximumLagOnFailover = 1<<63 - 1 }, []string{"maximum_lag_on_failover: 9223372036854775807 bytes is more than the limit of 1125899906842624 bytes (1024TiB)"}},
		{"lag of 2^62", func(c *Config) { c.MaximumLagOnFailover = 1 << 62 }, []string{"maximum_lag_on_failover: 4611686018427387904 bytes is more than the limit"}},
		{"negative ttl", func(c *Config) { c.TTL = Duration(-4 * time.Second) }, []string{"ttl: -4s is negative (write a duration of at least 2s, e.g. 4s)"}},
		{"negative primary_start_timeout", func(c *Config) { c.PrimaryStartTimeout = Duration(-time.Second) }, []string{"primary_start_timeout: -1s is negative"}},
		{"zero primary_start_timeout", func(c *Config) { c.PrimaryStartTimeout = 0 }, nil},
		{"store mode", func(c *Config) { c.Store.Mode = "consul" }, []string{`store.mode: "consul" is not a store mode (write embedded, etcd or kubernetes)`}},
		{"prefix", func(c *Config) { c.Store.Prefix = "holdfast" }, []string{`store.prefix: "holdfast" must start with "/"`}},
		{"dial timeout", func(c *Config) { c.Store.DialTimeout = 0 }, []string{"store.dial_timeout: 0s must be positive"}},
		{"etcd endpoints required", func(c *Config) { c.Store.Mode = StoreEtcd }, []string{"store.endpoints: required with store.mode etcd"}},
		{"etcd endpoint scheme", func(c *Config) { c.Store.Mode, c.Store.Endpoints = StoreEtcd, []string{"https://e1:2379", "e2:2379"} },
			[]string{`store.endpoints: "e2:2379" is not an http(s)://host:port URL`}},
		{"etcd endpoint port", func(c *Config) { c.Store.Mode, c.Store.Endpoints = StoreEtcd, []string{"http://e1"} },
			[]string{`store.endpoints: "http://e1": "e1" is not host:port`}},
		{"etcd endpoint path", func(c *Config) { c.Store.Mode, c.Store.Endpoints = StoreEtcd, []string{"http://e1:2379/v3"} },
			[]string{`store.endpoints: "http://e1:2379/v3" is not an http(s)://host:port URL`}},
		{"etcd mode ignores embedded", func(c *Config) {
			c.Store.Mode, c.Store.Endpoints, c.Store.Embedded = StoreEtcd, []string{"http://e1:2379"}, Embedded{}
		}, nil},
		{"listen_peer port", func(c *Config) { c.Store.Embedded.ListenPeer = "127.0.0.1:0" }, []string{"store.embedded.listen_peer: port 0 out of range 1-65535"}},
		{"listen_client form", func(c *Config) { c.Store.Embedded.ListenClient = "2379" }, []string{`store.embedded.listen_client: "2379" is not host:port`}},
		{"listen_client required", func(c *Config) { c.Store.Embedded.ListenClient = "" }, []string{"store.embedded.listen_client: required (write host:port"}},
		{"advertise_client port", func(c *Config) { c.Store.Embedded.AdvertiseClient = "h:99999" }, []string{"store.embedded.advertise_client: port 99999 out of range 1-65535"}},
		{"advertise_peer host", func(c *Config) { c.Store.Embedded.AdvertisePeer = "a b:2380" }, []string{`store.embedded.advertise_peer: "a b:2380": "a b" is not a host name or IP address`}},
		{"advertise_peer needed for wildcard listen", func(c *Config) { c.Store.Embedded.ListenPeer = "0.0.0.0:2380" },
			[]string{"store.embedded.advertise_peer: required when store.embedded.listen_peer binds every interface"}},
		{"wildcard listen with advertise", func(c *Config) {
			c.Store.Embedded.ListenPeer, c.Store.Embedded.AdvertisePeer = "[::]:2380", "127.0.0.1:2380"
		}, nil},
		{"peers required", func(c *Config) { c.Store.Embedded.Peers = nil }, []string{"store.embedded.peers: required with store.mode embedded (map every voter's name to its peer URL, including this member's, e.g. {n1: http://127.0.0.1:2380})"}},
		{"peers must include this member", func(c *Config) { c.Store.Embedded.Peers = map[string]string{"n2": "http://h2:2380"} },
			[]string{`store.embedded.peers: has no entry for this member "n1" (add n1: http://127.0.0.1:2380)`}},
		{"own peer port", func(c *Config) { c.Store.Embedded.Peers["n1"] = "http://127.0.0.1:2381" },
			[]string{"store.embedded.peers.n1: http://127.0.0.1:2381 has port 2381, but this member's etcd advertises 127.0.0.1:2380"}},
		{"peer name", func(c *Config) { c.Store.Embedded.Peers["N2"] = "http://h2:2380" }, []string{`store.embedded.peers.N2: member name: "N2" is not a valid name`}},
		{"peer URL", func(c *Config) { c.Store.Embedded.Peers["n2"] = "h2:2380" }, []string{`store.embedded.peers.n2: "h2:2380" is not an http(s)://host:port URL`}},
		{"peer URL port", func(c *Config) { c.Store.Embedded.Peers["n2"] = "http://h2:123456" }, []string{"store.embedded.peers.n2: \"http://h2:123456\": port 123456 out of range 1-65535"}},
		{"peer URLs distinct", func(c *Config) { c.Store.Embedded.Peers["n2"] = "http://127.0.0.1:2380" }, []string{"store.embedded.peers.n2: has the same URL as n1"}},
		{"clients subset of peers", func(c *Config) {
			c.Store.Embedded.Clients = map[string]string{"n1": "http://h:2379", "n3": "http://h3:2379"}
		},
			[]string{`store.embedded.clients.n3: "n3" is not in store.embedded.peers`}},
		{"client URL", func(c *Config) { c.Store.Embedded.Clients = map[string]string{"n1": "http://user@h:2379"} },
			[]string{`store.embedded.clients.n1: "http://user@h:2379" is not an http(s)://host:port URL`}},
		{"pg listen port", func(c *Config) { c.PostgreSQL.Listen = "127.0.0.1:70000" }, []string{"postgresql.listen: port 70000 out of range 1-65535"}},
		{"pg listen port not a number", func(c *Config) { c.PostgreSQL.Listen = "127.0.0.1:pg" }, []string{`postgresql.listen: "127.0.0.1:pg": port "pg" is not a number`}},
		{"pg listen required", func(c *Config) { c.PostgreSQL.Listen = "" }, []string{"postgresql.listen: required"}},
		{"pg connect_address", func(c *Config) { c.PostgreSQL.ConnectAddress = "db1" }, []string{`postgresql.connect_address: "db1" is not host:port`}},
		{"pg connect_address for wildcard listen", func(c *Config) { c.PostgreSQL.Listen = "0.0.0.0:5432" },
			[]string{"postgresql.connect_address: required when postgresql.listen binds every interface"}},
		{"pg connect_address not wildcard", func(c *Config) { c.PostgreSQL.ConnectAddress = "0.0.0.0:5432" },
			[]string{"postgresql.connect_address: 0.0.0.0:5432 is not an address others can connect to"}},
		{"pg IPv6", func(c *Config) { c.PostgreSQL.Listen, c.PostgreSQL.ConnectAddress = "[::]:5432", "[fe80::1%eth0]:5432" }, nil},
		{"bin_dir relative", func(c *Config) { c.PostgreSQL.BinDir = "bin" }, []string{`postgresql.bin_dir: "bin" is not an absolute path`}},
		{"superuser required", func(c *Config) { c.PostgreSQL.Superuser.Username = "" }, []string{"postgresql.superuser.username: required"}},
		{"replication username form", func(c *Config) { c.PostgreSQL.Replication.Username = "Repl" },
			[]string{`postgresql.replication.username: "Repl" is not a valid role name`}},
		{"usernames differ", func(c *Config) { c.PostgreSQL.Replication.Username = "postgres" },
			[]string{`postgresql.replication.username: "postgres" is also the superuser`}},
		{"parameter name", func(c *Config) { c.PostgreSQL.Parameters = map[string]string{"work mem": "4MB"} },
			[]string{`postgresql.parameters.work mem: "work mem" is not a PostgreSQL parameter name`}},
		{"parameter value", func(c *Config) { c.PostgreSQL.Parameters = map[string]string{"work_mem": "4MB\nfsync = off"} },
			[]string{"postgresql.parameters.work_mem: the value must be a single line"}},
		{"pg_hba line", func(c *Config) { c.PostgreSQL.PgHBA = []string{"local all all peer", "a\nb"} },
			[]string{"postgresql.pg_hba: item 2 must be a single line"}},
		{"witness needs no postgresql", func(c *Config) { c.Witness, c.PostgreSQL = true, PostgreSQL{Listen: "x", BinDir: "rel"} }, nil},
		{"api listen required", func(c *Config) { c.API.Listen = "" }, []string{"api.listen: required (write host:port, e.g. 127.0.0.1:8008)"}},
		{"api listen port", func(c *Config) { c.API.Listen = "127.0.0.1:80080" }, []string{"api.listen: port 80080 out of range 1-65535"}},
		{"api listen form", func(c *Config) { c.API.Listen = "8008" }, []string{`api.listen: "8008" is not host:port`}},
		{"api connect_address for wildcard listen", func(c *Config) { c.API.Listen = "0.0.0.0:8008" },
			[]string{"api.connect_address: required when api.listen binds every interface (0.0.0.0:8008)"}},
		{"api wildcard listen with connect_address", func(c *Config) { c.API.Listen, c.API.ConnectAddress = "[::]:8008", "db1.example.com:8008" }, nil},
		{"api connect_address form", func(c *Config) { c.API.ConnectAddress = "db1" }, []string{`api.connect_address: "db1" is not host:port`}},
		{"api connect_address not wildcard", func(c *Config) { c.API.ConnectAddress = "0.0.0.0:8008" },
			[]string{"api.connect_address: 0.0.0.0:8008 is not an address others can connect to"}},
		{"api token", func(c *Config) { c.API.AuthToken = "s3cret-token_~+/=" }, nil},
		{"api token with space", func(c *Config) { c.API.AuthToken = "two words" },
			[]string{"api.auth_token: must be printable ASCII without spaces (it is sent as an HTTP header"}},
		{"api token with newline", func(c *Config) { c.API.AuthToken = "tok\n" }, []string{"api.auth_token: must be printable ASCII"}},
		{"api token not ASCII", func(c *Config) { c.API.AuthToken = "clé" }, []string{"api.auth_token: must be printable ASCII"}},
		{"api tls", func(c *Config) {
			c.API.TLS = TLS{CertFile: "/etc/holdfast/api.crt", KeyFile: "/etc/holdfast/api.key", ClientCAFile: "/etc/holdfast/ca.crt"}
		}, nil},
		{"api tls cert without key", func(c *Config) { c.API.TLS.CertFile = "/etc/holdfast/api.crt" },
			[]string{"api.tls.key_file: required with api.tls.cert_file"}},
		{"api tls key without cert", func(c *Config) { c.API.TLS.KeyFile = "/etc/holdfast/api.key" },
			[]string{"api.tls.cert_file: required with api.tls.key_file"}},
		{"api tls relative paths", func(c *Config) { c.API.TLS = TLS{CertFile: "api.crt", KeyFile: "/k", ClientCAFile: "tls/ca.crt"} },
			[]string{`api.tls.cert_file: "api.crt" is not an absolute path`, `api.tls.client_ca_file: "tls/ca.crt" is not an absolute path`}},
		{"api client CA needs TLS", func(c *Config) { c.API.TLS.ClientCAFile = "/etc/holdfast/ca.crt" },
			[]string{"api.tls.client_ca_file: requires api.tls.cert_file and api.tls.key_file"}},
		{"witness api checked", func(c *Config) { c.Witness, c.API.Listen = true, "x" }, []string{`api.listen: "x" is not host:port`}},
		{"log level", func(c *Config) { c.Log.Level = "trace" }, []string{`log.level: "trace" is not a log level (write debug, info, warn or error)`}},
		{"log format", func(c *Config) { c.Log.Format = "xml" }, []string{`log.format: "xml" is not a log format (write text or json)`}},
		{"watchdog automatic", func(c *Config) { c.Watchdog.Mode = WatchdogAutomatic }, nil},
		{"watchdog required with a margin", func(c *Config) {
			c.Watchdog.Mode, c.Watchdog.SafetyMargin = WatchdogRequired, Duration(1500*time.Millisecond)
		}, nil},
		{"watchdog with Patroni's timing", func(c *Config) {
			c.Watchdog.Mode, c.TTL, c.LoopInterval, c.Watchdog.SafetyMargin = WatchdogRequired, Duration(30*time.Second), Duration(10*time.Second), Duration(5*time.Second)
		}, nil},
		{"watchdog mode", func(c *Config) { c.Watchdog.Mode = "on" }, []string{`watchdog.mode: "on" is not a watchdog mode (write off, automatic or required)`}},
		{"watchdog mode empty", func(c *Config) { c.Watchdog.Mode = "" }, []string{`watchdog.mode: "" is not a watchdog mode`}},
		{"watchdog device required", func(c *Config) { c.Watchdog.Mode, c.Watchdog.Device = WatchdogRequired, "" },
			[]string{"watchdog.device: required with watchdog.mode required (the watchdog device, e.g. /dev/watchdog)"}},
		{"watchdog device relative", func(c *Config) { c.Watchdog.Mode, c.Watchdog.Device = WatchdogAutomatic, "dev/watchdog" },
			[]string{`watchdog.device: "dev/watchdog" is not an absolute path (write e.g. /dev/watchdog)`}},
		{"watchdog device unused when off", func(c *Config) { c.Watchdog.Device = "" }, nil},
		{"watchdog negative margin", func(c *Config) { c.Watchdog.SafetyMargin = Duration(-time.Second) },
			[]string{"watchdog.safety_margin: -1s is negative (write 0s for one loop_interval"}},
		{"watchdog margin below minimum", func(c *Config) { c.Watchdog.SafetyMargin = Duration(50 * time.Millisecond) },
			[]string{"watchdog.safety_margin: 50ms is too short (minimum 100ms"}},
		{"watchdog margin leaves no timeout", func(c *Config) { c.Watchdog.Mode, c.Watchdog.SafetyMargin = WatchdogAutomatic, Duration(5*time.Second) },
			[]string{"watchdog.safety_margin: 5s leaves no watchdog timeout for ttl 4s: the timeout is ttl - watchdog.safety_margin rounded down to whole seconds (0s) and must be at least 1s"}},
		{"watchdog timeout not longer than the loop", func(c *Config) {
			c.Watchdog.Mode, c.Watchdog.SafetyMargin = WatchdogRequired, Duration(2500*time.Millisecond)
		},
			[]string{"watchdog.safety_margin: 2.5s leaves a watchdog timeout of 1s (ttl 4s - watchdog.safety_margin, rounded down to whole seconds), not longer than loop_interval 1s"}},
		{"watchdog timing unchecked when off", func(c *Config) { c.Watchdog.SafetyMargin = Duration(5 * time.Second) }, nil},
		{"watchdog timing not checked against an invalid ttl", func(c *Config) { c.Watchdog.Mode, c.TTL = WatchdogRequired, Duration(1500*time.Millisecond) },
			[]string{"ttl: 1.5s is too short (minimum 2s)"}},
		{"all problems reported", func(c *Config) { c.DataDir, c.Log.Level, c.PostgreSQL.Listen = "", "x", "y" },
			[]string{"data_dir: required", "log.level:", "postgresql.listen:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := baseConfig()
			tc.mutate(&c)
			err := c.Validate()
			if tc.want == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			wantErr(t, err, "", tc.want...)
			if n := len(strings.Split(err.Error(), "\n")); n != len(tc.want) {
				t.Errorf("%d problems reported, want %d:\n%v", n, len(tc.want), err)
			}
		})
	}
}

func TestHelpers(t *testing.T) {
	c := baseConfig()
	if got := c.PGConnectAddress(); got != "127.0.0.1:5432" {
		t.Errorf("PGConnectAddress() = %q, want the listen address", got)
	}
	c.PostgreSQL.ConnectAddress = "10.0.0.1:5432"
	if got := c.PGConnectAddress(); got != "10.0.0.1:5432" {
		t.Errorf("PGConnectAddress() = %q, want connect_address", got)
	}

	if got, want := c.APIURL(), "http://127.0.0.1:8008"; got != want {
		t.Errorf("APIURL() = %q, want %q (the default listen address)", got, want)
	}
	c.API.ConnectAddress = "db1.example.com:8008"
	c.API.TLS.CertFile, c.API.TLS.KeyFile = "/c", "/k"
	if got, want := c.APIURL(), "https://db1.example.com:8008"; got != want {
		t.Errorf("APIURL() = %q, want %q (connect_address over HTTPS)", got, want)
	}
	if got, want := c.APIConnectAddress(), "db1.example.com:8008"; got != want {
		t.Errorf("APIConnectAddress() = %q, want %q", got, want)
	}

	if got, want := c.PeerClientURLs(), []string{"http://127.0.0.1:2379"}; !reflect.DeepEqual(got, want) {
		t.Errorf("PeerClientURLs() = %q, want listen_client %q", got, want)
	}
	c.Store.Embedded.AdvertiseClient = "10.0.0.1:2379"
	if got, want := c.PeerClientURLs(), []string{"http://10.0.0.1:2379"}; !reflect.DeepEqual(got, want) {
		t.Errorf("PeerClientURLs() = %q, want advertise_client %q", got, want)
	}
	c.Store.Embedded.Clients = map[string]string{"n3": "http://c:2379", "n1": "http://a:2379", "n2": "http://b:2379"}
	if got, want := c.PeerClientURLs(), []string{"http://a:2379", "http://b:2379", "http://c:2379"}; !reflect.DeepEqual(got, want) {
		t.Errorf("PeerClientURLs() = %q, want %q", got, want)
	}
}

// TestWatchdogMatchesPackage: the watchdog section accepts exactly the
// settings package watchdog can arm, with the same mode names.
func TestWatchdogMatchesPackage(t *testing.T) {
	for _, m := range []string{WatchdogOff, WatchdogAutomatic, WatchdogRequired} {
		if _, err := watchdog.ParseMode(m); err != nil {
			t.Errorf("config mode %q: %v", m, err)
		}
	}
	if minWatchdogSafetyMargin != watchdog.MinSafetyMargin {
		t.Errorf("minimum safety margin %s, package watchdog's is %s", minWatchdogSafetyMargin, watchdog.MinSafetyMargin)
	}
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	accepted, refused := 0, 0
	for _, ttl := range []time.Duration{ms(2000), ms(2500), ms(3000), ms(4000), ms(4500), ms(6000), ms(10000), ms(30000)} {
		for _, loop := range []time.Duration{ms(100), ms(500), ms(600), ms(1000), ms(1500), ms(2000), ms(10000)} {
			for _, margin := range []time.Duration{0, ms(100), ms(500), ms(1000), ms(1500), ms(2500), ms(5000), ms(9000)} {
				c := baseConfig()
				c.TTL, c.LoopInterval = Duration(ttl), Duration(loop)
				if c.Validate() != nil {
					continue // ttl and loop_interval themselves are refused
				}
				c.Watchdog.Mode, c.Watchdog.SafetyMargin = WatchdogRequired, Duration(margin)
				cfgErr := c.Validate()
				_, pkgErr := watchdog.Timeout(ttl, loop, margin)
				if (cfgErr == nil) != (pkgErr == nil) {
					t.Errorf("ttl %s, loop_interval %s, safety_margin %s: config says %v, package watchdog says %v", ttl, loop, margin, cfgErr, pkgErr)
				}
				if pkgErr == nil {
					accepted++
				} else {
					refused++
				}
			}
		}
	}
	if accepted == 0 || refused == 0 {
		t.Errorf("the grid is one-sided: %d accepted, %d refused", accepted, refused)
	}
}

func TestMemberTags(t *testing.T) {
	c := baseConfig()
	c.Name = "pg-2"
	c.Tags = map[string]string{"zone": "a", "rack": "r1"}
	c.MemberTagsByName = map[string]string{"pg-2.zone": "b", "pg-2.failover_priority": "0", "pg-1.zone": "c"}
	got := c.MemberTags()
	want := map[string]string{"zone": "b", "rack": "r1", "failover_priority": "0"}
	if !maps.Equal(got, want) {
		t.Fatalf("MemberTags = %v, want %v", got, want)
	}
	if c.Tags["zone"] != "a" {
		t.Fatalf("MemberTags changed Tags: %v", c.Tags)
	}
	c.Name = "pg-9"
	if got := c.MemberTags(); !maps.Equal(got, c.Tags) {
		t.Fatalf("a member without entries: %v", got)
	}
}
