package config

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Marshal writes c as a YAML config file that Load reads back unchanged:
// for a c that passes Validate, loading Marshal(c) with no variables or
// flags gives c again. Every key is written, in struct order, except nil
// lists and maps (whose default is nil); durations are written as "4s",
// sizes as "1MiB" or "1000B". Secrets (passwords) are written as they are,
// so the caller chooses the file's permissions accordingly.
func Marshal(c Config) ([]byte, error) {
	n, err := encodeNode(reflect.ValueOf(c))
	if err != nil {
		return nil, fmt.Errorf("marshal config: %w", err)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(n); err != nil {
		return nil, fmt.Errorf("marshal config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("marshal config: %w", err)
	}
	return buf.Bytes(), nil
}

// encodeNode builds the YAML node of v, keyed by yaml struct tags.
func encodeNode(v reflect.Value) (*yaml.Node, error) {
	switch t := v.Type(); {
	case t == durationType || t == byteSizeType:
		return strNode(v.Interface().(fmt.Stringer).String()), nil
	case t == listType:
		n := &yaml.Node{Kind: yaml.SequenceNode}
		for _, s := range v.Interface().([]string) {
			n.Content = append(n.Content, strNode(s))
		}
		return n, nil
	case t == mapType:
		m, n := v.Interface().(map[string]string), &yaml.Node{Kind: yaml.MappingNode}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			n.Content = append(n.Content, strNode(k), strNode(m[k]))
		}
		return n, nil
	case t.Kind() == reflect.Struct:
		n := &yaml.Node{Kind: yaml.MappingNode}
		for i := range v.NumField() {
			name, f := yamlName(t.Field(i)), v.Field(i)
			if name == "" || (f.Kind() == reflect.Map || f.Kind() == reflect.Slice) && f.IsNil() {
				continue
			}
			child, err := encodeNode(f)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			n.Content = append(n.Content, strNode(name), child)
		}
		return n, nil
	}
	switch v.Kind() {
	case reflect.String:
		return strNode(v.String()), nil
	case reflect.Bool:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(v.Bool())}, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.FormatInt(v.Int(), 10)}, nil
	}
	return nil, fmt.Errorf("unsupported field type %s", v.Type())
}

// strNode is a YAML string that reads back as exactly s: plain or quoted
// as the encoder sees fit when s is printable, double-quoted with escapes
// when it holds line breaks, control characters or edge spaces, and
// base64 under !!binary when it is not UTF-8.
func strNode(s string) *yaml.Node {
	n := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
	switch {
	case !utf8.ValidString(s):
		n.Tag, n.Value = "!!binary", base64.StdEncoding.EncodeToString([]byte(s))
	case strings.TrimSpace(s) != s || strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0:
		n.Style = yaml.DoubleQuotedStyle
	}
	return n
}
