package httpx

import (
	"net/url"
	"strings"
)

// Query parameters that carry a key (?api_key=, read by byteproxy_auth)
// or a service credential are found by one rule, used both to read a key
// and to strip the parameter before a request goes upstream (both
// forwarding paths), so that no spelling of the parameter is forwarded
// while the gateway reads it as something else:
//
//   - '&' and ';' both separate parameters: Go's url.ParseQuery refuses ';'
//     since Go 1.17, but many upstream frameworks still split on it, so
//     "?x=1;api_key=K" carries the parameter api_key (read as the key and
//     stripped);
//   - the name is compared percent-decoded ("%61pi_key" is api_key);
//   - a name without "=" is the parameter with an empty value;
//   - reading is case-sensitive (only "api_key" is a key, as in the
//     original, and as Caddy's access-log query filter matches it, so an
//     accepted key is always one the documented filter removes), while
//     stripping ignores letter case: "API_KEY" is no key, but some
//     frameworks read query names case-insensitively, so it never travels
//     upstream either.
//
// Everything else in the query is left byte for byte as the client sent it
// (order, repeated parameters, bare flags, encoding), unlike url.Values.

// StripQueryParam removes every occurrence of the parameter name, in any
// letter case, from a raw query string under the rule above.
func StripQueryParam(rawQuery, name string) string {
	if !mayHoldParam(rawQuery, name) || !hasParam(rawQuery, name) {
		return rawQuery
	}
	var b strings.Builder
	b.Grow(len(rawQuery))
	wrote := false
	var sep byte // the separator before the current segment
	for q := rawQuery; ; {
		seg, next, found := cutSegment(q)
		if !namesParam(seg, name, equalFoldASCII) {
			if wrote {
				b.WriteByte(sep)
			}
			b.WriteString(seg)
			wrote = true
		}
		if !found {
			return b.String()
		}
		sep, q = q[len(seg)], next
	}
}

// QueryParam returns the first value of the parameter name (exactly: letter
// case counts) in a raw query under the rule above, decoded, and whether
// the parameter is present. It allocates only when the value is
// percent-encoded. A value that does not decode counts as present and
// empty.
func QueryParam(rawQuery, name string) (string, bool) {
	if !mayHoldParam(rawQuery, name) {
		return "", false
	}
	for q := rawQuery; ; {
		seg, next, found := cutSegment(q)
		if namesParam(seg, name, equal) {
			_, v, _ := strings.Cut(seg, "=")
			uv, err := url.QueryUnescape(v)
			if err != nil {
				return "", true
			}
			return uv, true
		}
		if !found {
			return "", false
		}
		q = next
	}
}

// cutSegment splits off the first parameter of a query; found reports a
// separator ('&' or ';') after it.
func cutSegment(q string) (seg, rest string, found bool) {
	i := strings.IndexAny(q, "&;")
	if i < 0 {
		return q, "", false
	}
	return q[:i], q[i+1:], true
}

// namesParam reports whether one query segment ("k=v" or "k") is the
// parameter name, comparing the decoded name with same.
func namesParam(seg, name string, same func(a, b string) bool) bool {
	k, _, _ := strings.Cut(seg, "=")
	if same(k, name) {
		return true
	}
	if !strings.ContainsAny(k, "%+") {
		return false
	}
	uk, err := url.QueryUnescape(k)
	return err == nil && same(uk, name)
}

func equal(a, b string) bool { return a == b }

// equalFoldASCII compares ignoring the case of ASCII letters only (unlike
// strings.EqualFold, the Kelvin sign is not a k).
func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// hasParam reports whether any segment of a query is the parameter name in
// any letter case.
func hasParam(rawQuery, name string) bool {
	for q := rawQuery; ; {
		seg, next, found := cutSegment(q)
		if namesParam(seg, name, equalFoldASCII) {
			return true
		}
		if !found {
			return false
		}
		q = next
	}
}

// mayHoldParam is a quick test that a query cannot hold the parameter: it
// holds neither a '%' nor the name in any letter case.
func mayHoldParam(rawQuery, name string) bool {
	if rawQuery == "" {
		return false
	}
	if strings.IndexByte(rawQuery, '%') >= 0 {
		return true
	}
	for i := 0; i+len(name) <= len(rawQuery); i++ {
		if equalFoldASCII(rawQuery[i:i+len(name)], name) {
			return true
		}
	}
	return false
}
