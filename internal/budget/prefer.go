package budget

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// PreferWait reads the wait preference of RFC 7240 (Prefer: wait=N, N in
// seconds) from a request's headers: how long the client is willing to
// wait. ok is false when there is none (or it is malformed). As RFC 7240
// asks, only the first wait preference counts; a preference may carry
// parameters (";...") and other preferences may share the field.
func PreferWait(h http.Header) (time.Duration, bool) {
	for _, line := range h["Prefer"] {
		for _, pref := range strings.Split(line, ",") {
			pref, _, _ = strings.Cut(pref, ";")
			name, val, found := strings.Cut(strings.TrimSpace(pref), "=")
			if !strings.EqualFold(strings.TrimSpace(name), "wait") {
				continue
			}
			if !found {
				return 0, false
			}
			val = strings.Trim(strings.TrimSpace(val), `"`)
			n, err := strconv.ParseUint(val, 10, 32)
			if err != nil {
				return 0, false
			}
			return time.Duration(n) * time.Second, true
		}
	}
	return 0, false
}

// Share is a consumer's share of the budget a request spent from: what
// the consumer may still count on before Reset. When several consumers
// wait for the same credential, Remaining is their weighted share of it.
type Share struct {
	// Limit of the window (0: no limit known for this request).
	Limit int64
	// Remaining for this consumer.
	Remaining int64
	// Reset: time until the window ends (0: unknown).
	Reset time.Duration
}

// AppendRateLimit appends the share as one member of the IETF RateLimit
// field (draft-ietf-httpapi-ratelimit-headers): the policy name, r, t when
// known (whole seconds, rounded up), and pk, the partition key, as a byte
// sequence (the consumer's id, which must not be a secret).
//
//	"upstream";r=3;t=1;pk=:a2V5LTE=:
func (s Share) AppendRateLimit(dst []byte, policy, pk string) []byte {
	dst = append(dst, '"')
	dst = append(dst, policy...)
	dst = append(dst, `";r=`...)
	dst = strconv.AppendInt(dst, max(s.Remaining, 0), 10)
	if s.Reset > 0 {
		dst = append(dst, ";t="...)
		dst = strconv.AppendInt(dst, int64((s.Reset+time.Second-1)/time.Second), 10)
	}
	if pk != "" {
		dst = append(dst, ";pk=:"...)
		dst = base64.StdEncoding.AppendEncode(dst, []byte(pk))
		dst = append(dst, ':')
	}
	return dst
}
