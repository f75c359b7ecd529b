// Package jsonfield names the unknown field of a JSON config that a strict
// decode refused by its path (apps.byteproxy.services.github.rate_limt)
// rather than its name alone, and says which field was probably meant.
package jsonfield

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
)

var jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()

// Unknown is the error of the first key of raw (a JSON value at path)
// that no field of t takes, e.g. "apps.byteproxy.services.github.rate_limt:
// unknown field (did you mean "rate_limit"?)", or nil if every key is
// known. t is walked even when it decodes itself (an UnmarshalJSON that
// calls Unknown after a strict decode failed); nested types that do are
// not.
func Unknown(raw []byte, t reflect.Type, path string) error {
	p, known := find(raw, t, path, true)
	if p == "" {
		return nil
	}
	return fmt.Errorf("%s: unknown field%s", p, suggest(p, known))
}

// find walks raw along t and returns the path of the first key that no
// field of t takes (keys in sorted order), with the JSON names of the
// fields that object does take. It matches names as encoding/json does:
// exactly, else case-insensitively.
func find(raw []byte, t reflect.Type, path string, root bool) (string, []string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if !root && reflect.PointerTo(t).Implements(jsonUnmarshaler) {
		return "", nil // decodes itself, e.g. caddy.Duration
	}
	switch t.Kind() {
	case reflect.Struct:
		var obj map[string]json.RawMessage
		if json.Unmarshal(raw, &obj) != nil {
			return "", nil
		}
		fields := jsonFields(t)
		for _, k := range sortedRawKeys(obj) {
			ft, ok := fields[k]
			if !ok {
				ft, ok = fields[strings.ToLower(k)]
			}
			if !ok {
				names := make([]string, 0, len(fields))
				for name, f := range fields {
					if name == f.name {
						names = append(names, name)
					}
				}
				sort.Strings(names)
				return path + "." + k, names
			}
			if p, known := find(obj[k], ft.typ, path+"."+k, false); p != "" {
				return p, known
			}
		}
	case reflect.Map:
		var obj map[string]json.RawMessage
		if json.Unmarshal(raw, &obj) != nil {
			return "", nil
		}
		for _, k := range sortedRawKeys(obj) {
			if p, known := find(obj[k], t.Elem(), path+"."+k, false); p != "" {
				return p, known
			}
		}
	case reflect.Slice, reflect.Array:
		var list []json.RawMessage
		if json.Unmarshal(raw, &list) != nil {
			return "", nil
		}
		for i, v := range list {
			if p, known := find(v, t.Elem(), fmt.Sprintf("%s[%d]", path, i), false); p != "" {
				return p, known
			}
		}
	}
	return "", nil
}

type jsonField struct {
	name string
	typ  reflect.Type
}

// jsonFields indexes the exported fields of struct t by JSON name, and by
// its lower case for encoding/json's case-insensitive match.
func jsonFields(t reflect.Type) map[string]jsonField {
	out := map[string]jsonField{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = jsonField{name: name, typ: f.Type}
		if low := strings.ToLower(name); out[low].name == "" {
			out[low] = jsonField{name: name, typ: f.Type}
		}
	}
	return out
}

func sortedRawKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// suggest says which known field an unknown one was probably meant
// to be (at most two edits away), else lists the known fields.
func suggest(path string, known []string) string {
	unknown := path[strings.LastIndex(path, ".")+1:]
	best, bestDist := "", 3
	for _, k := range known {
		if d := editDistance(strings.ToLower(unknown), k); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	if len(known) == 0 {
		return ""
	}
	return " (known fields: " + strings.Join(known, ", ") + ")"
}

// editDistance is the Levenshtein distance of two short strings.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
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
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
