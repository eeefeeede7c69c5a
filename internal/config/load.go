package config

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"github.com/holdfast/holdfast/internal/cluster"
	"io"
	"net"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/holdfast/holdfast/internal/quote"
)

// LoadOptions says where Load reads a member's configuration from.
type LoadOptions struct {
	// File is the YAML config file; "" means none.
	File string
	// Env is the environment as "KEY=VALUE" entries (os.Environ()). Only
	// HOLDFAST_* entries are read; HOLDFAST_CONFIG (the config file path,
	// the CLI's business) and HOLDFAST_TEST_* (test harness settings) are
	// ignored.
	Env []string
	// Sets are --set flag values, "dotted.key=value", applied in order.
	Sets []string
	// Hostname supplies the member name when none is configured; nil means
	// os.Hostname.
	Hostname func() (string, error)
}

// Load builds a member's configuration: Defaults(), overridden by the file,
// then by HOLDFAST_* variables, then by --set flags, later sources winning
// leaf by leaf. An unset name becomes the lower-cased host name, up to its
// first dot. The result is validated.
//
// Every error names where the bad value came from — "config FILE line N:
// KEY", "environment variable HOLDFAST_X" or "--set KEY" — and says how to
// fix it; all problems found are returned joined. On error the returned
// Config is the zero value.
//
// Value syntax for variables and flags: scalars as in the file (durations
// "10s" or bare seconds, sizes "16MB" or bytes, booleans true/false); lists
// are comma-separated ("a,b"); maps are comma-separated pairs ("k=v,k2=v2").
// A list or map value starting with '[' or '{' is read as YAML flow syntax
// instead, for items that contain commas. "--set tags.nofailover=true"
// sets a single map entry, taking the value verbatim.
func Load(opts LoadOptions) (Config, error) {
	var data []byte
	if opts.File != "" {
		var err error
		if data, err = os.ReadFile(opts.File); err != nil {
			return Config{}, fmt.Errorf("reading config: %w", err)
		}
	}
	return load(opts, data)
}

// load is Load with the file's contents already read.
func load(opts LoadOptions, data []byte) (Config, error) {
	c := Defaults()
	root := reflect.ValueOf(&c).Elem()
	l := loader{origins: map[string]string{}, leaves: leaves(root.Type(), "", nil, nil)}
	if opts.File != "" {
		l.file(root, opts.File, data)
	}
	l.env(root, opts.Env)
	l.sets(root, opts.Sets)
	if len(l.errs) > 0 {
		return Config{}, errors.Join(l.errs...)
	}
	if c.Name == "" && c.Kubernetes.InPod() {
		c.Name = c.Kubernetes.PodName
	}
	if dns := c.Kubernetes.PodDNSName(); dns != "" {
		// In a pod, others reach this member by its stable DNS name, never
		// by the pod IP, which changes with every restart.
		for _, a := range []struct {
			addr   *string
			listen string
		}{
			{&c.PostgreSQL.ConnectAddress, c.PostgreSQL.Listen},
			{&c.API.ConnectAddress, c.API.Listen},
			{&c.Store.Embedded.AdvertisePeer, c.Store.Embedded.ListenPeer},
			{&c.Store.Embedded.AdvertiseClient, c.Store.Embedded.ListenClient},
		} {
			if _, port, err := net.SplitHostPort(a.listen); err == nil && *a.addr == "" {
				*a.addr = net.JoinHostPort(dns, port)
			}
		}
	}
	if c.Name == "" {
		hostname := opts.Hostname
		if hostname == nil {
			hostname = os.Hostname
		}
		h, err := hostname()
		if err != nil {
			return Config{}, fmt.Errorf("name: not set, and the host name is unknown (set name): %w", err)
		}
		c.Name, _, _ = strings.Cut(strings.ToLower(h), ".")
		l.nameFromHost = true
	}
	if ps := c.problems(); len(ps) > 0 {
		errs := make([]error, len(ps))
		for i, p := range ps {
			errs[i] = l.locate(p)
		}
		return Config{}, errors.Join(errs...)
	}
	return c, nil
}

// leaf is a configurable value: a field that is not a nested struct.
type leaf struct {
	path  string // dotted yaml path, e.g. "postgresql.superuser.username"
	index []int  // for reflect.Value.FieldByIndex from Config
	typ   reflect.Type
}

// envName is the variable that overrides the leaf at path.
func envName(path string) string {
	return "HOLDFAST_" + strings.ToUpper(strings.ReplaceAll(path, ".", "_"))
}

// leaves appends the leaves of struct type t, in field order.
func leaves(t reflect.Type, prefix string, index []int, out []leaf) []leaf {
	for i := range t.NumField() {
		f := t.Field(i)
		name := yamlName(f)
		if name == "" {
			continue
		}
		p, idx := join(prefix, name), append(slices.Clone(index), i)
		if f.Type.Kind() == reflect.Struct {
			out = leaves(f.Type, p, idx, out)
		} else {
			out = append(out, leaf{p, idx, f.Type})
		}
	}
	return out
}

// yamlName is the key of a struct field, as gopkg.in/yaml.v3 names it; ""
// for a field that is not configurable.
func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	switch name {
	case "-":
		return ""
	case "":
		return strings.ToLower(f.Name)
	}
	return name
}

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

var (
	durationType = reflect.TypeFor[Duration]()
	byteSizeType = reflect.TypeFor[ByteSize]()
	mapType      = reflect.TypeFor[map[string]string]()
	listType     = reflect.TypeFor[[]string]()
)

// loader applies the sources in turn, collecting errors and remembering
// where each value came from so Validate's complaints can say so.
type loader struct {
	errs    []error
	origins map[string]string // leaf or map entry path -> where its value came from
	leaves  []leaf

	nameFromHost bool // name was not configured; Load used the host name
}

func (l *loader) fail(where, path string, err error) {
	if path != "" {
		err = fmt.Errorf("%s: %w", path, err)
	}
	l.errs = append(l.errs, fmt.Errorf("%s: %w", where, err))
}

// locate prefixes a validation problem with where the value came from: the
// origin of its key or of the closest enclosing key that has one.
func (l *loader) locate(p problem) error {
	if p.key == "name" && l.nameFromHost {
		return fmt.Errorf("name: %w (name is not set, so the host name was used; set name in the config file, HOLDFAST_NAME or --set name=...)", p.err)
	}
	for k := p.key; k != ""; {
		if where, ok := l.origins[k]; ok {
			if where == "--set "+p.key {
				return fmt.Errorf("%s: %w", where, p.err)
			}
			return fmt.Errorf("%s: %s: %w", where, p.key, p.err)
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return fmt.Errorf("%s: %w", p.key, p.err)
}

// file applies a YAML config file.
func (l *loader) file(root reflect.Value, file string, data []byte) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc, next yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err != io.EOF { // io.EOF: empty, or only comments
			l.errs = append(l.errs, fmt.Errorf("config %s: %w", file, err))
		}
		return
	}
	src := source{file: file}
	switch err := dec.Decode(&next); {
	case err == io.EOF:
	case err != nil:
		l.errs = append(l.errs, fmt.Errorf("config %s: %w", file, err))
		return
	default:
		l.fail(src.at(&next), "", errors.New("a second YAML document (---): a config file holds a single mapping"))
		return
	}
	top := doc.Content[0]
	if top.Kind != yaml.MappingNode && !isNull(top) {
		l.fail(src.at(top), "", fmt.Errorf("the top level must be a mapping of keys (%s), found %s", knownKeys(root.Type(), ""), describe(top)))
		return
	}
	l.decode(src, top, root, "")
}

// source is where a YAML node came from: a file, whose line numbers
// matter, or a variable or flag holding a YAML flow value.
type source struct{ file, name string }

func (s source) at(n *yaml.Node) string {
	if s.file != "" {
		return fmt.Sprintf("config %s line %d", s.file, n.Line)
	}
	return s.name
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// decode stores YAML node n into v, the value at dotted path, strictly: an
// unknown or duplicate key or a value of the wrong type is an error. A null
// leaves v as it was, so an empty or commented-out section keeps defaults.
func (l *loader) decode(src source, n *yaml.Node, v reflect.Value, path string) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if isNull(n) {
		return
	}
	where := src.at(n)
	switch t := v.Type(); {
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			l.fail(where, path, fmt.Errorf("expected a mapping of keys (%s), found %s", knownKeys(t, path), describe(n)))
			return
		}
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, ok := l.key(src, n.Content[i], path, seen)
			if !ok {
				continue
			}
			f, ok := fieldByName(t, k)
			if !ok {
				l.fail(src.at(n.Content[i]), join(path, k), fmt.Errorf("unknown key (%s)%s", knownKeys(t, path), didYouMean(k, keyNames(t))))
				continue
			}
			l.decode(src, n.Content[i+1], v.FieldByIndex(f.Index), join(path, k))
		}
	case t == mapType:
		if n.Kind != yaml.MappingNode {
			l.fail(where, path, fmt.Errorf("expected a mapping of key: value pairs, found %s", describe(n)))
			return
		}
		m := make(map[string]string, len(n.Content)/2)
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, ok := l.key(src, n.Content[i], path, seen)
			if !ok {
				continue
			}
			p, val := join(path, k), n.Content[i+1]
			if s, ok := l.text(src, val, p); ok {
				m[k] = s
				l.origins[p] = src.at(val)
			}
		}
		v.Set(reflect.ValueOf(m))
		l.origins[path] = where
	case t == listType:
		if n.Kind != yaml.SequenceNode {
			l.fail(where, path, fmt.Errorf(`expected a list, found %s (write [a, b], or one "- item" per line)`, describe(n)))
			return
		}
		s := make([]string, 0, len(n.Content))
		for _, e := range n.Content {
			if text, ok := l.text(src, e, path); ok {
				s = append(s, text)
			}
		}
		v.Set(reflect.ValueOf(s))
		l.origins[path] = where
	default:
		if n.Kind != yaml.ScalarNode {
			l.fail(where, path, fmt.Errorf("expected %s, found %s", typeName(t), describe(n)))
			return
		}
		s, err := scalarText(n)
		if err == nil {
			err = setScalar(v, s)
		}
		if err != nil {
			l.fail(where, path, err)
			return
		}
		l.origins[path] = where
	}
}

// key reads the key node k of a mapping at path, refusing keys that are not
// plain scalars and duplicates.
func (l *loader) key(src source, k *yaml.Node, path string, seen map[string]int) (string, bool) {
	for k.Kind == yaml.AliasNode && k.Alias != nil {
		k = k.Alias
	}
	switch {
	case k.ShortTag() == "!!merge":
		l.fail(src.at(k), join(path, "<<"), errors.New("merge keys are not supported (write the keys out)"))
		return "", false
	case k.Kind != yaml.ScalarNode || isNull(k):
		l.fail(src.at(k), path, fmt.Errorf("keys must be plain names, found %s", describe(k)))
		return "", false
	}
	name, err := scalarText(k)
	if err != nil {
		l.fail(src.at(k), path, err)
		return "", false
	}
	if first, dup := seen[name]; dup {
		l.fail(src.at(k), join(path, name), fmt.Errorf("duplicate key (first at line %d; remove one)", first))
		return "", false
	}
	seen[name] = k.Line
	return name, true
}

// text reads a map or list item, which must be a non-null scalar; its text
// is taken as written, whatever YAML type it has.
func (l *loader) text(src source, n *yaml.Node, path string) (string, bool) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind != yaml.ScalarNode || isNull(n) {
		l.fail(src.at(n), path, fmt.Errorf(`expected a value, found %s (quote it, or write "" for an empty one)`, describe(n)))
		return "", false
	}
	s, err := scalarText(n)
	if err != nil {
		l.fail(src.at(n), path, err)
		return "", false
	}
	return s, true
}

// scalarText is the text of a scalar node; a !!binary one is decoded (that
// is how Marshal writes strings that are not valid UTF-8).
func scalarText(n *yaml.Node) (string, error) {
	if n.ShortTag() != "!!binary" {
		return n.Value, nil
	}
	b, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(n.Value), ""))
	if err != nil {
		return "", fmt.Errorf("invalid !!binary value: %w", err)
	}
	return string(b), nil
}

// setScalar parses s into v, a string, bool, int, Duration or ByteSize.
func setScalar(v reflect.Value, s string) error {
	switch v.Type() {
	case durationType:
		d, err := parseDuration(s)
		v.SetInt(int64(d))
		return err
	case byteSizeType:
		b, err := ParseByteSize(s)
		v.SetInt(int64(b))
		return err
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := cluster.ParseBool(s)
		v.SetBool(b)
		return err
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, v.Type().Bits())
		if err != nil {
			return fmt.Errorf("%s is not an integer in range", quote.Value(s))
		}
		v.SetInt(n)
	default:
		return fmt.Errorf("unsupported field type %s", v.Type())
	}
	return nil
}

// toolVariables and toolPrefixes name the HOLDFAST_* variables that are
// not configuration: the CLI's (HOLDFAST_CONFIG, ctl's HOLDFAST_API_TOKEN)
// and those of the project's scripts, tests and benchmarks, which reach
// agents started under them (holdfast up inherits the environment). Every
// other HOLDFAST_* variable must name a setting, so a typo is an error.
var (
	toolVariables = []string{"HOLDFAST_CONFIG", "HOLDFAST_API_TOKEN", "HOLDFAST_CACHE", "HOLDFAST_HELM"}
	toolPrefixes  = []string{"HOLDFAST_TEST_", "HOLDFAST_KUBE_", "HOLDFAST_S3_", "HOLDFAST_BENCH", "HOLDFAST_FAULTS", "HOLDFAST_IMAGE_", "HOLDFAST_DEBIAN_"}
)

func toolVariable(k string) bool {
	if slices.Contains(toolVariables, k) {
		return true
	}
	for _, p := range toolPrefixes {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// env applies HOLDFAST_* variables.
func (l *loader) env(root reflect.Value, env []string) {
	var names []string
	byName := map[string]leaf{}
	for _, lf := range l.leaves {
		names = append(names, envName(lf.path))
		byName[envName(lf.path)] = lf
	}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(k, "HOLDFAST_") || toolVariable(k) {
			continue
		}
		where := "environment variable " + k
		lf, ok := byName[k]
		if !ok {
			l.fail(where, "", fmt.Errorf("unknown variable%s", didYouMean(k, names)))
			continue
		}
		l.setText(where, root.FieldByIndex(lf.index), lf.path, v)
	}
}

// sets applies --set flags.
func (l *loader) sets(root reflect.Value, sets []string) {
	var paths []string
	for _, lf := range l.leaves {
		paths = append(paths, lf.path)
	}
	for _, s := range sets {
		key, val, ok := strings.Cut(s, "=")
		key = strings.TrimSpace(key)
		where := "--set " + key
		if !ok {
			l.fail(where, "", errors.New(`missing "=" (write --set key=value)`))
			continue
		}
		if i := slices.Index(paths, key); i >= 0 {
			lf := l.leaves[i]
			l.setText(where, root.FieldByIndex(lf.index), lf.path, val)
			continue
		}
		if lf, entry, ok := l.mapEntry(key); ok {
			m := root.FieldByIndex(lf.index)
			if m.IsNil() {
				m.Set(reflect.MakeMap(mapType))
			}
			m.SetMapIndex(reflect.ValueOf(entry), reflect.ValueOf(val))
			l.origins[key], l.origins[lf.path] = where, where
			continue
		}
		var inside []string
		for _, p := range paths {
			if strings.HasPrefix(p, key+".") {
				inside = append(inside, p)
			}
		}
		if len(inside) > 0 {
			l.fail(where, "", fmt.Errorf("%s is a section, not a value: set one of its keys (%s)", key, strings.Join(inside, ", ")))
		} else {
			l.fail(where, "", fmt.Errorf("unknown key%s", didYouMean(key, paths)))
		}
	}
}

// mapEntry splits "tags.nofailover" into the map leaf and the entry key;
// the entry key may itself contain dots ("postgresql.parameters.auto_explain.log_min_duration").
func (l *loader) mapEntry(key string) (leaf, string, bool) {
	for _, lf := range l.leaves {
		if entry, ok := strings.CutPrefix(key, lf.path+"."); ok && lf.typ == mapType && entry != "" {
			return lf, entry, true
		}
	}
	return leaf{}, "", false
}

// setText parses a variable's or flag's value into v, the leaf at path.
func (l *loader) setText(where string, v reflect.Value, path, text string) {
	switch v.Type() {
	case listType, mapType:
		if t := strings.TrimSpace(text); strings.HasPrefix(t, "[") || strings.HasPrefix(t, "{") {
			var n yaml.Node
			if err := yaml.Unmarshal([]byte(t), &n); err != nil {
				l.fail(where, "", fmt.Errorf("invalid YAML flow value: %w", err))
				return
			}
			l.decode(source{name: where}, n.Content[0], v, path)
			return
		}
		if v.Type() == listType {
			items := []string{}
			for _, s := range strings.Split(text, ",") {
				if s = strings.TrimSpace(s); s != "" {
					items = append(items, s)
				}
			}
			v.Set(reflect.ValueOf(items))
			break
		}
		m := map[string]string{}
		for _, kv := range strings.Split(text, ",") {
			if strings.TrimSpace(kv) == "" {
				continue
			}
			k, val, ok := strings.Cut(kv, "=")
			if k = strings.TrimSpace(k); !ok || k == "" {
				l.fail(where, "", fmt.Errorf("%s is not key=value (write k1=v1,k2=v2)", quote.Value(kv)))
				return
			}
			m[k] = strings.TrimSpace(val)
		}
		v.Set(reflect.ValueOf(m))
	default:
		if err := setScalar(v, text); err != nil {
			l.fail(where, "", err)
			return
		}
	}
	l.origins[path] = where
}

// fieldByName finds the field of struct type t whose key is name.
func fieldByName(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		if f := t.Field(i); yamlName(f) == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func keyNames(t reflect.Type) []string {
	var names []string
	for i := range t.NumField() {
		if name := yamlName(t.Field(i)); name != "" {
			names = append(names, name)
		}
	}
	return names
}

// knownKeys is "known keys in PATH: a, b, c".
func knownKeys(t reflect.Type, path string) string {
	in := ""
	if path != "" {
		in = " in " + path
	}
	return "known keys" + in + ": " + strings.Join(keyNames(t), ", ")
}

// describe names a YAML node in an error message.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "nothing"
		}
		return quote.Value(n.Value)
	}
	return "an unexpected YAML node"
}

// typeName names what a leaf of type t expects, for error messages.
func typeName(t reflect.Type) string {
	switch t {
	case durationType:
		return `a duration such as "10s"`
	case byteSizeType:
		return `a size such as "16MB"`
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	}
	return "an integer"
}

// didYouMean suggests the candidate closest to s, if any is close enough.
func didYouMean(s string, candidates []string) string {
	best, bestD := "", -1
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), strings.ToLower(c)); bestD < 0 || d < bestD {
			best, bestD = c, d
		}
	}
	limit := 1
	if len(best) >= 5 {
		limit = 2
	}
	if bestD < 0 || bestD > limit {
		return ""
	}
	return "; did you mean " + best + "?"
}

// editDistance is the optimal-string-alignment distance: insertions,
// deletions, substitutions and adjacent transpositions each cost 1.
func editDistance(a, b string) int {
	prev2, prev, cur := make([]int, len(b)+1), make([]int, len(b)+1), make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}
