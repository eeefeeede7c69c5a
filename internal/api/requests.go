package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/quote"
)

// maxBodyBytes bounds a request body: every request is a handful of fields.
const maxBodyBytes = 64 << 10

// The wire forms of the request bodies, as the server decodes them. Times
// arrive as strings so a bad one is reported naming its field (encoding/json
// would only say that some time failed to parse).
type (
	switchoverBody struct {
		Leader      string  `json:"leader"`
		Candidate   string  `json:"candidate"`
		ScheduledAt *string `json:"scheduled_at"`
	}
	failoverBody struct {
		Candidate string `json:"candidate"`
		Force     bool   `json:"force"`
	}
	restartBody struct {
		Role        string  `json:"role"`
		ScheduledAt *string `json:"scheduled_at"`
	}
	emptyBody struct{}
)

// request checks the body and returns the switchover it asks for; now is
// the member's clock, which a scheduled time must be after.
func (b switchoverBody) request(now time.Time) (SwitchoverRequest, error) {
	r := SwitchoverRequest{Leader: b.Leader, Candidate: b.Candidate}
	if err := checkName("leader", b.Leader); err != nil {
		return r, err
	}
	if err := checkName("candidate", b.Candidate); err != nil {
		return r, err
	}
	var err error
	r.ScheduledAt, err = parseSchedule("scheduled_at", b.ScheduledAt, now)
	return r, err
}

func (b failoverBody) request() (FailoverRequest, error) {
	if b.Candidate == "" {
		return FailoverRequest{}, badRequest("candidate: required (the member to promote)")
	}
	return FailoverRequest{Candidate: b.Candidate, Force: b.Force}, checkName("candidate", b.Candidate)
}

// request checks the body and returns the restart it asks for; now is the
// member's clock, which a scheduled time must be after.
func (b restartBody) request(now time.Time) (RestartRequest, error) {
	r := RestartRequest{Role: b.Role}
	switch b.Role {
	case "", RestartPrimary, RestartReplica:
	default:
		return r, badRequest("role: %s is not a role (write %s or %s, or leave it out to restart whatever the member is)", quote.Value(b.Role), RestartPrimary, RestartReplica)
	}
	var err error
	r.ScheduledAt, err = parseSchedule("scheduled_at", b.ScheduledAt, now)
	return r, err
}

func checkName(field, name string) error {
	if name == "" {
		return nil
	}
	if err := cluster.ValidName(name); err != nil {
		return badRequest("%s: %v", field, err)
	}
	return nil
}

// parseSchedule reads an optional RFC 3339 time at which to carry out an
// operation. It must carry its time zone (a scheduled operation must not
// move by the server's UTC offset) and must be after now, the member's
// clock: a time in the past is refused rather than run at once, since it is
// most likely a typo (a wrong day or time zone) and an operator who wants
// the operation now leaves the time out (Patroni refuses it likewise).
func parseSchedule(field string, s *string, now time.Time) (*time.Time, error) {
	if s == nil {
		return nil, nil
	}
	t, err := time.Parse(time.RFC3339, *s)
	if err != nil {
		return nil, badRequest("%s: %s is not an RFC 3339 time with a time zone (write e.g. 2026-05-01T10:00:00Z or 2026-05-01T12:00:00+02:00)", field, quote.Value(*s))
	}
	if !t.After(now) {
		return nil, badRequest("%s: %s is in the past (it is %s on this member): give a future time, or leave %s out to act now",
			field, quote.Value(*s), now.UTC().Format(time.RFC3339), field)
	}
	return &t, nil
}

func badRequest(format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, format, args...)
}

// readBody reads a request's JSON body strictly into v: malformed JSON, an
// unknown field, a value of the wrong type or data after the object is an
// *Error 400 naming the problem; a body over maxBodyBytes is a 413. An
// empty body is an empty object, so `curl -X POST .../reinitialize` works.
func readBody(w http.ResponseWriter, r *http.Request, v any) error {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return Errorf(http.StatusRequestEntityTooLarge, "request body is larger than %d bytes", maxBodyBytes)
		}
		return badRequest("reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	return decodeStrict(b, v)
}

// decodeStrict decodes one JSON object from b into v, refusing unknown
// fields and trailing data, with errors that name the field at fault.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err, v)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("request body: unexpected data after the JSON object (send one object)")
	}
	return nil
}

// jsonError turns an encoding/json error into a 400 that names the field.
func jsonError(err error, v any) error {
	var (
		syntax *json.SyntaxError
		typ    *json.UnmarshalTypeError
		apiErr *Error
	)
	switch {
	case errors.As(err, &apiErr):
		return apiErr
	case errors.As(err, &syntax):
		return badRequest("request body is not valid JSON (at byte %d): %v", syntax.Offset, err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("request body is not valid JSON: it ends too early")
	case errors.As(err, &typ):
		if typ.Field == "" {
			return badRequest("request body: expected a JSON object, found %s", article(typ.Value))
		}
		return badRequest("%s: expected %s, found %s", typ.Field, typeName(typ.Type), article(typ.Value))
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return badRequest("unknown field %s (known fields: %s)", quote.Raw(name), strings.Join(jsonFields(v), ", "))
	}
	return badRequest("request body: %v", err)
}

// jsonFields lists the JSON names of struct v's fields.
func jsonFields(v any) []string {
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	var names []string
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return []string{"none"}
	}
	return names
}

func typeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Pointer:
		return typeName(t.Elem())
	}
	return "a " + t.Kind().String()
}

// article names a JSON value kind as encoding/json reports it ("number",
// "array", ...), with an article.
func article(kind string) string {
	switch {
	case kind == "":
		return "something else"
	case strings.ContainsAny(kind[:1], "aeiou"):
		return "an " + kind
	}
	return "a " + kind
}

// configKeys are the keys PATCH /config accepts, in document order.
func configKeys() []string {
	return []string{"ttl", "loop_interval", "maximum_lag_on_failover", "primary_start_timeout", "paused", "synchronous_mode", "synchronous_node_count", "backup_schedule"}
}

// MarshalJSON writes the patch as a JSON merge patch with only the keys
// that are set, durations as strings.
func (p ConfigPatch) MarshalJSON() ([]byte, error) {
	m := map[string]any{}
	if p.TTL != nil {
		m["ttl"] = formatDuration(*p.TTL)
	}
	if p.LoopInterval != nil {
		m["loop_interval"] = formatDuration(*p.LoopInterval)
	}
	if p.MaximumLagOnFailover != nil {
		m["maximum_lag_on_failover"] = *p.MaximumLagOnFailover
	}
	if p.PrimaryStartTimeout != nil {
		m["primary_start_timeout"] = formatDuration(*p.PrimaryStartTimeout)
	}
	if p.Paused != nil {
		m["paused"] = *p.Paused
	}
	if p.SynchronousMode != nil {
		m["synchronous_mode"] = *p.SynchronousMode
	}
	if p.SynchronousNodeCount != nil {
		m["synchronous_node_count"] = *p.SynchronousNodeCount
	}
	if p.BackupSchedule != nil {
		m["backup_schedule"] = *p.BackupSchedule
	}
	return json.Marshal(m)
}

// UnmarshalJSON reads a JSON merge patch of the dynamic configuration,
// checking types only: an unknown key, a null (a setting cannot be
// removed), a duration that is not a duration string, a size that is
// neither a number of bytes nor a size string, or a non-boolean paused is
// an *Error 400 naming the key. Whether the values make sense together is
// the backend's to judge.
func (p *ConfigPatch) UnmarshalJSON(b []byte) error {
	var m map[string]json.RawMessage
	if err := decodeStrict(b, &m); err != nil {
		return err
	}
	if m == nil {
		return badRequest("request body: expected a JSON object of settings to change (%s)", strings.Join(configKeys(), ", "))
	}
	var out ConfigPatch
	for _, key := range slices.Sorted(maps.Keys(m)) {
		raw := m[key]
		if string(bytes.TrimSpace(raw)) == "null" {
			return badRequest("%s: null would remove the setting; cluster settings cannot be removed, only changed", key)
		}
		var err error
		switch key {
		case "ttl":
			out.TTL, err = patchDuration(key, raw)
		case "loop_interval":
			out.LoopInterval, err = patchDuration(key, raw)
		case "primary_start_timeout":
			out.PrimaryStartTimeout, err = patchDuration(key, raw)
		case "maximum_lag_on_failover":
			out.MaximumLagOnFailover, err = patchSize(key, raw)
		case "paused":
			var v bool
			if json.Unmarshal(raw, &v) != nil {
				err = badRequest("paused: expected true or false, found %s", quote.Raw(string(raw)))
			}
			out.Paused = &v
		case "synchronous_mode":
			var v string
			if json.Unmarshal(raw, &v) != nil {
				err = badRequest("synchronous_mode: expected a string (%s), found %s", strings.Join(cluster.SyncModes(), ", "), quote.Raw(string(raw)))
			}
			out.SynchronousMode = &v
		case "synchronous_node_count":
			var v int
			if json.Unmarshal(raw, &v) != nil {
				err = badRequest("synchronous_node_count: expected a whole number, found %s", quote.Raw(string(raw)))
			}
			out.SynchronousNodeCount = &v
		case "backup_schedule":
			var v string
			if json.Unmarshal(raw, &v) != nil {
				err = badRequest(`backup_schedule: expected a string such as "full=168h,incr=1h", found %s`, quote.Raw(string(raw)))
			}
			out.BackupSchedule = &v
		default:
			err = badRequest("unknown key %s (known keys: %s)", quote.Value(key), strings.Join(configKeys(), ", "))
		}
		if err != nil {
			return err
		}
	}
	*p = out
	return nil
}

func patchDuration(key string, raw json.RawMessage) (*time.Duration, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, badRequest(`%s: expected a duration string such as "4s" or "500ms", found %s`, key, quote.Raw(string(raw)))
	}
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return nil, badRequest(`%s: %s is not a duration (write e.g. "4s" or "500ms")`, key, quote.Value(s))
	}
	return &d, nil
}

func patchSize(key string, raw json.RawMessage) (*int64, error) {
	var n int64
	if err := json.Unmarshal(raw, &n); err == nil {
		return &n, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, badRequest(`%s: expected a number of bytes or a size string such as "16MB", found %s`, key, quote.Raw(string(raw)))
	}
	n, err := ParseSize(s)
	if err != nil {
		return nil, badRequest("%s: %v", key, err)
	}
	return &n, nil
}

// Empty reports whether the patch changes nothing.
func (p ConfigPatch) Empty() bool {
	return p == ConfigPatch{}
}

// String describes the patch for logs, e.g. "ttl=6s paused=true".
func (p ConfigPatch) String() string {
	var parts []string
	if p.TTL != nil {
		parts = append(parts, "ttl="+formatDuration(*p.TTL))
	}
	if p.LoopInterval != nil {
		parts = append(parts, "loop_interval="+formatDuration(*p.LoopInterval))
	}
	if p.MaximumLagOnFailover != nil {
		parts = append(parts, fmt.Sprintf("maximum_lag_on_failover=%d", *p.MaximumLagOnFailover))
	}
	if p.PrimaryStartTimeout != nil {
		parts = append(parts, "primary_start_timeout="+formatDuration(*p.PrimaryStartTimeout))
	}
	if p.Paused != nil {
		parts = append(parts, fmt.Sprintf("paused=%t", *p.Paused))
	}
	if p.SynchronousMode != nil {
		parts = append(parts, "synchronous_mode="+*p.SynchronousMode)
	}
	if p.SynchronousNodeCount != nil {
		parts = append(parts, fmt.Sprintf("synchronous_node_count=%d", *p.SynchronousNodeCount))
	}
	return strings.Join(parts, " ")
}

// Apply returns c with the patch applied; the backend validates the result.
func (p ConfigPatch) Apply(c cluster.Config) cluster.Config {
	if p.TTL != nil {
		c.TTL = *p.TTL
	}
	if p.LoopInterval != nil {
		c.LoopInterval = *p.LoopInterval
	}
	if p.MaximumLagOnFailover != nil {
		c.MaximumLagOnFailover = *p.MaximumLagOnFailover
	}
	if p.PrimaryStartTimeout != nil {
		c.PrimaryStartTimeout = *p.PrimaryStartTimeout
	}
	if p.Paused != nil {
		c.Paused = *p.Paused
	}
	if p.SynchronousMode != nil {
		c.SynchronousMode = *p.SynchronousMode
	}
	if p.SynchronousNodeCount != nil {
		c.SynchronousNodeCount = *p.SynchronousNodeCount
	}
	if p.BackupSchedule != nil {
		c.BackupSchedule = *p.BackupSchedule
	}
	return c
}
