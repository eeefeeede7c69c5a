package pg

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// ConfFile and HBAFile are the files holdfast owns inside the data
// directory. postgresql.conf ends with an include of ConfFile, so the
// settings in it win over postgresql.conf (postgresql.auto.conf, written by
// ALTER SYSTEM, is read after both and still wins: an operator who uses
// ALTER SYSTEM on a holdfast setting overrides holdfast).
const (
	ConfFile = "holdfast.conf"
	HBAFile  = "holdfast_hba.conf"
)

// Settings is everything RenderConf needs.
type Settings struct {
	// Member is this member's name: cluster_name and, for a standby, the
	// application_name it shows in the primary's pg_stat_replication.
	Member string
	// ListenHost is listen_addresses (a host, an address, a comma list or *).
	ListenHost string
	Port       int
	// HBAFile is the absolute path of the rendered holdfast_hba.conf.
	HBAFile string
	// Parameters are the user's settings, rendered first.
	Parameters map[string]string
	// Standby renders the recovery settings. Upstream is where to stream
	// from; nil means a standby with no upstream that replays local WAL only.
	Standby  bool
	Upstream *Upstream
	// SlotName is the primary's physical slot for this standby ("" = none).
	SlotName string
}

// Upstream is a standby's primary_conninfo.
type Upstream struct {
	Host     string
	Port     int
	User     string
	Password string
}

// policy says how a holdfast setting combines with a user parameter of the
// same name.
type policy int

const (
	enforced policy = iota // holdfast's value always wins
	floor                  // an integer: the larger of holdfast's and the user's
	fallback               // holdfast's value only when the user set none
)

// ownSetting is one of holdfast's settings that does not depend on Settings.
type ownSetting struct {
	name, value string
	policy      policy
}

// ownSettings are holdfast's constant settings. Those depending on Settings
// (listen_addresses, port, hba_file, cluster_name, recovery settings) are
// added by RenderConf.
var ownSettings = []ownSetting{
	{"unix_socket_directories", "", enforced}, // TCP only: no socket files to clean or secure
	{"wal_level", "replica", enforced},        // "logical" from the user is kept, see RenderConf
	{"hot_standby", "on", enforced},
	{"max_wal_senders", "10", floor},
	{"max_replication_slots", "10", floor},
	{"wal_log_hints", "on", enforced}, // pg_rewind needs it when checksums are off
	{"wal_keep_size", "128MB", fallback},
	{"hot_standby_feedback", "on", enforced},
	{"password_encryption", "scram-sha-256", enforced},
	{"log_destination", "stderr", enforced}, // the process's stderr goes to holdfast's log file
	{"logging_collector", "off", enforced},
	{"log_line_prefix", "%m [%p] ", fallback},
	// A standby retries a refused or broken WAL stream (a slot the new
	// primary has not created yet, a primary restarting) after this, and
	// PostgreSQL 15 may sleep it out before finishing a promotion: 5 s by
	// default is a visible outage after every failover.
	{"wal_retrieve_retry_interval", "1s", fallback},
	// Standbys report every second (default 10 s), so the primary can tell
	// a standby that stopped answering (a partition keeps its walsender
	// row until wal_sender_timeout) from a healthy one within a TTL, and a
	// dead synchronous standby is replaced instead of blocking commits.
	{"wal_receiver_status_interval", "1s", fallback},
}

// refusedParameters are user parameters holdfast cannot let through, with
// the reason shown to the user.
var refusedParameters = map[string]string{
	"port":                      "holdfast sets it from postgresql.listen",
	"listen_addresses":          "holdfast sets it from postgresql.listen",
	"hba_file":                  "holdfast renders its own; add rules with postgresql.pg_hba",
	"primary_conninfo":          "holdfast points standbys at the current primary",
	"primary_slot_name":         "holdfast manages replication slots",
	"synchronous_standby_names": "holdfast manages it from the cluster setting synchronous_mode",
	"data_directory":            "holdfast manages the data directory",
	"config_file":               "holdfast manages the configuration files",
	"include":                   "include directives are not parameters",
	"include_if_exists":         "include directives are not parameters",
	"include_dir":               "include directives are not parameters",
}

// paramNameRe is the name syntax of postgresql.conf (ASCII only).
var paramNameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// slotNameRe is what PostgreSQL accepts as a replication slot name.
var slotNameRe = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// RenderConf returns the contents of holdfast.conf. User parameters come
// first, sorted by name, then holdfast's own, so holdfast's win where both
// set a name (except max_wal_senders/max_replication_slots, which take the
// larger value, wal_level=logical, which is kept, and wal_keep_size and
// log_line_prefix, which are only defaults). It refuses, naming the
// parameter, a user parameter that would break holdfast (wal_level=minimal,
// hot_standby=off, port, listen_addresses, hba_file, primary_conninfo,
// primary_slot_name, ...), a name that is not a valid parameter name, the
// same name twice in different case, and NUL in any value. The output is
// deterministic, and every value is quoted so no value can end its line.
func RenderConf(s Settings) (string, error) {
	if s.Member == "" {
		return "", fmt.Errorf("render %s: no member name", ConfFile)
	}
	if s.Port < 1 || s.Port > 65535 {
		return "", fmt.Errorf("render %s: port %d out of range", ConfFile, s.Port)
	}
	if s.ListenHost == "" {
		return "", fmt.Errorf("render %s: no listen host", ConfFile)
	}
	if s.HBAFile == "" {
		return "", fmt.Errorf("render %s: no hba file path", ConfFile)
	}
	if !s.Standby && (s.Upstream != nil || s.SlotName != "") {
		return "", fmt.Errorf("render %s: an upstream or slot needs Standby", ConfFile)
	}
	if s.SlotName != "" && !slotNameRe.MatchString(s.SlotName) {
		return "", fmt.Errorf("render %s: slot name %q: use 1-63 lower-case letters, digits and '_'", ConfFile, s.SlotName)
	}

	user := make(map[string]string, len(s.Parameters))
	for name, value := range s.Parameters {
		if !paramNameRe.MatchString(name) {
			return "", fmt.Errorf("render %s: parameter %q: not a valid parameter name", ConfFile, name)
		}
		lower := strings.ToLower(name)
		if _, dup := user[lower]; dup {
			return "", fmt.Errorf("render %s: parameter %q is set twice (names are case-insensitive)", ConfFile, lower)
		}
		if why, bad := refusedParameters[lower]; bad {
			return "", fmt.Errorf("render %s: parameter %q cannot be set: %s", ConfFile, name, why)
		}
		if strings.IndexByte(value, 0) >= 0 {
			return "", fmt.Errorf("render %s: parameter %q: value contains a NUL byte", ConfFile, name)
		}
		user[lower] = value
	}

	own := make([]ownSetting, 0, len(ownSettings)+8)
	for _, o := range ownSettings {
		uv, set := user[o.name]
		switch {
		case o.name == "wal_level" && set:
			switch strings.ToLower(strings.TrimSpace(uv)) {
			case "replica", "archive", "hot_standby":
			case "logical":
				o.value = "logical"
			default:
				return "", fmt.Errorf("render %s: parameter \"wal_level\" = %q: holdfast needs replica or logical (standbys and pg_rewind need the WAL)", ConfFile, uv)
			}
		case o.name == "hot_standby" && set:
			on, ok := parseBool(uv)
			if !ok || !on {
				return "", fmt.Errorf("render %s: parameter \"hot_standby\" = %q: holdfast needs on (it queries standbys for their position)", ConfFile, uv)
			}
		case o.policy == floor && set:
			n, err := strconv.Atoi(strings.TrimSpace(uv))
			if err != nil || n < 0 {
				return "", fmt.Errorf("render %s: parameter %q = %q: want a non-negative integer", ConfFile, o.name, uv)
			}
			if min, _ := strconv.Atoi(o.value); n > min {
				o.value = strconv.Itoa(n)
			}
		case o.policy == fallback && set:
			continue
		}
		own = append(own, o)
	}
	own = append(own,
		ownSetting{name: "listen_addresses", value: s.ListenHost},
		ownSetting{name: "port", value: strconv.Itoa(s.Port)},
		ownSetting{name: "hba_file", value: s.HBAFile},
		ownSetting{name: "cluster_name", value: s.Member},
		ownSetting{name: "recovery_target_timeline", value: "latest"},
		ownSetting{name: "primary_slot_name", value: s.SlotName},
	)
	primary := ""
	if s.Upstream != nil {
		u := s.Upstream
		if u.Host == "" || u.Port < 1 || u.Port > 65535 || u.User == "" {
			return "", fmt.Errorf("render %s: upstream needs a host, a port and a user", ConfFile)
		}
		ci, err := conninfo(
			[2]string{"host", u.Host},
			[2]string{"port", strconv.Itoa(u.Port)},
			[2]string{"user", u.User},
			[2]string{"password", u.Password},
			[2]string{"application_name", s.Member},
			[2]string{"connect_timeout", "2"},
			[2]string{"keepalives", "1"},
			[2]string{"keepalives_idle", "5"},
			[2]string{"keepalives_interval", "2"},
			[2]string{"keepalives_count", "3"},
		)
		if err != nil {
			return "", fmt.Errorf("render %s: primary_conninfo: %w", ConfFile, err)
		}
		primary = ci
	}
	own = append(own, ownSetting{name: "primary_conninfo", value: primary})
	sort.SliceStable(own, func(i, j int) bool { return own[i].name < own[j].name })

	names := make([]string, 0, len(user))
	for n := range user {
		names = append(names, n)
	}
	sort.Strings(names)

	var b strings.Builder
	b.WriteString("# Written by holdfast: do not edit, every start rewrites it.\n")
	b.WriteString("# Set parameters in holdfast's configuration (postgresql.parameters).\n")
	if len(names) > 0 {
		b.WriteString("\n# User parameters.\n")
	}
	for _, n := range names {
		q, err := quoteConfValue(user[n])
		if err != nil {
			return "", fmt.Errorf("render %s: parameter %q: %w", ConfFile, n, err)
		}
		fmt.Fprintf(&b, "%s = %s\n", n, q)
	}
	b.WriteString("\n# Holdfast's settings: they win over the above.\n")
	for _, o := range own {
		q, err := quoteConfValue(o.value)
		if err != nil {
			return "", fmt.Errorf("render %s: %s: %w", ConfFile, o.name, err)
		}
		fmt.Fprintf(&b, "%s = %s\n", o.name, q)
	}
	return b.String(), nil
}

// parseBool accepts what PostgreSQL's parse_bool accepts: on/off, any
// unambiguous prefix of true/false/yes/no, 1/0, case-insensitively.
func parseBool(s string) (value, ok bool) {
	v := strings.ToLower(strings.TrimSpace(s))
	switch {
	case v == "":
		return false, false
	case strings.HasPrefix("true", v), strings.HasPrefix("yes", v), v == "on", v == "1":
		return true, true
	case strings.HasPrefix("false", v), strings.HasPrefix("no", v), v == "of", v == "off", v == "0":
		return false, true
	}
	return false, false
}

// HBASettings is what RenderHBA needs.
type HBASettings struct {
	// UserLines are the user's rules, placed first (pg_hba.conf is first
	// match wins, so they can reject or use another method before ours).
	UserLines []string
	// ReplicationUser is the role standbys and pg_basebackup log in as.
	ReplicationUser string
}

// RenderHBA returns the contents of holdfast_hba.conf: the user's lines,
// then password (scram-sha-256) rules for replication by the replication
// role and for every role and database, over IPv4 and IPv6. There are no
// "local" rules: holdfast disables Unix sockets. A user entry holding
// several lines is kept as several lines; role names are quoted so a
// keyword such as "all" is taken literally.
func RenderHBA(h HBASettings) string {
	var b strings.Builder
	b.WriteString("# Written by holdfast: do not edit, every start rewrites it.\n")
	if len(h.UserLines) > 0 {
		b.WriteString("\n# User rules (postgresql.pg_hba).\n")
	}
	for _, l := range h.UserLines {
		for _, part := range strings.Split(strings.ReplaceAll(l, "\r", ""), "\n") {
			b.WriteString(strings.ReplaceAll(part, "\x00", ""))
			b.WriteByte('\n')
		}
	}
	b.WriteString("\n# Holdfast's rules: passwords are always required.\n")
	if h.ReplicationUser != "" {
		r := quoteHBAToken(h.ReplicationUser)
		fmt.Fprintf(&b, "host replication %s 0.0.0.0/0 scram-sha-256\n", r)
		fmt.Fprintf(&b, "host replication %s ::/0 scram-sha-256\n", r)
	}
	b.WriteString("host all all 0.0.0.0/0 scram-sha-256\n")
	b.WriteString("host all all ::/0 scram-sha-256\n")
	return b.String()
}

// includeLine is the last line of postgresql.conf once holdfast owns it.
const includeLine = "include_if_exists = '" + ConfFile + "'"

// ensureInclude returns postgresql.conf's content ending with includeLine
// (so holdfast's settings are read last), and whether it changed. An
// include already last is left alone; one elsewhere is moved to the end.
func ensureInclude(content string) (string, bool) {
	lines := strings.Split(strings.TrimRight(content, "\n"), "\n")
	last := ""
	for i := len(lines) - 1; i >= 0; i-- {
		t := strings.TrimSpace(lines[i])
		if t != "" && !strings.HasPrefix(t, "#") {
			last = t
			break
		}
	}
	if last == includeLine {
		return content, false
	}
	kept := lines[:0]
	for _, l := range lines {
		if strings.TrimSpace(l) != includeLine {
			kept = append(kept, l)
		}
	}
	out := strings.Join(kept, "\n")
	if out != "" {
		out += "\n"
	}
	return out + "\n# Added by holdfast: its settings are read last.\n" + includeLine + "\n", true
}
