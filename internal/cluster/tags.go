package cluster

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"

	"github.com/holdfast/holdfast/internal/quote"
)

// Member tags the agents act on. Any other tag is free-form: shown by `ctl
// list`, matched by the health checks' ?tag_<key>=<value>.
const (
	// TagNoFailover (boolean) bars the member from ever being promoted.
	TagNoFailover = "nofailover"
	// TagNoLoadBalance (boolean) keeps read-only traffic off the member.
	TagNoLoadBalance = "noloadbalance"
	// TagFailoverPriority (integer ≥ 0) ranks candidates: higher first, 0
	// never promoted.
	TagFailoverPriority = "failover_priority"
	// TagZone names the member's failure domain; candidates in the old
	// primary's zone are preferred over others ranked equal.
	TagZone = "zone"
)

// DefaultFailoverPriority is the priority of a member without the tag.
const DefaultFailoverPriority = 1

// maxPriority bounds failover_priority: a rank, not a quantity.
const maxPriority = 1000

// ParseBool reads a boolean setting or tag value: true/yes/on/1 or
// false/no/off/0, in any case. Anything else is an error: "maybe" must not
// read as false. It is the one boolean parser of configuration and tags.
func ParseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "yes", "on", "1":
		return true, nil
	case "false", "no", "off", "0":
		return false, nil
	}
	return false, fmt.Errorf("%s is not a boolean (write true or false)", Quote(v))
}

func parsePriority(v string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 || n > maxPriority {
		return 0, fmt.Errorf("%s is not a priority (use a whole number from 0, never promoted, to %d; default %d)", Quote(v), maxPriority, DefaultFailoverPriority)
	}
	return n, nil
}

// CheckTag refuses a tag value the agents would misread. It is the one
// validator of tags, run on the member's configuration at start-up.
func CheckTag(key, value string) error {
	switch key {
	case TagNoFailover, TagNoLoadBalance:
		_, err := ParseBool(value)
		return err
	case TagFailoverPriority:
		_, err := parsePriority(value)
		return err
	case TagZone:
		if strings.TrimSpace(value) != value {
			return fmt.Errorf("%s has surrounding spaces", Quote(value))
		}
	}
	return nil
}

// Quote quotes a value for an error message, cut to a readable length: a
// megabyte of input must not become a megabyte of message. It is
// quote.Value, the one such helper.
func Quote(v string) string { return quote.Value(v) }

// ComparePreference orders two candidates to take over from the primary
// named leader by the operator's preference alone: higher
// failover_priority first, then the one in leader's zone (when both zones
// are known). Negative when a is preferred. Callers decide where it ranks
// against WAL position: a planned switchover (every streaming replica
// receives the old primary's last WAL) puts it first; a failover only
// uses it between candidates holding the same WAL.
func ComparePreference(v View, leader, a, b string) int {
	ma, mb := v.Members[a], v.Members[b]
	if c := cmp.Compare(mb.FailoverPriority(), ma.FailoverPriority()); c != 0 {
		return c
	}
	z := v.Members[leader].Zone()
	if z == "" {
		return 0
	}
	za, zb := ma.Zone() == z, mb.Zone() == z
	switch {
	case za && !zb:
		return -1
	case zb && !za:
		return 1
	}
	return 0
}

// PreferredTarget returns the member among names a planned switchover
// from leader hands over to: the operator's preference first
// (ComparePreference), then the most WAL, then the order of names; ""
// when names is empty. Callers pass only members that could take over.
func PreferredTarget(v View, leader string, names []string) string {
	best := ""
	for _, name := range names {
		if best == "" {
			best = name
			continue
		}
		c := ComparePreference(v, leader, name, best)
		if c < 0 || c == 0 && v.Statuses[best].Position.Less(v.Statuses[name].Position) {
			best = name
		}
	}
	return best
}
