// Package httpx holds the HTTP helpers every byteproxy module answers
// with: the JSON body writer (one set of header rules for every answer the
// gateway makes itself), the field error of a refused value, the mount
// prefix of a request, and the query-parameter rule for credentials.
package httpx

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// WriteJSON writes v as the JSON body of a response with this status. Every
// byteproxy module answers through it, so every body has the same shape
// rules: application/json, and on an error (any status from 400 up) no
// caching and `X-Proxy-Error: true`, which tells a client, as the
// original's header did, that the gateway made the answer itself rather
// than pass on the upstream's. (Each response gets its own header values:
// see STYLE, never one slice for two responses.)
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	body, err := marshal(v)
	if err != nil {
		return err
	}
	return writeBody(w, status, body)
}

func marshal(v any) ([]byte, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(body, '\n'), nil
}

// writeBody writes a ready JSON body (see WriteJSON).
func writeBody(w http.ResponseWriter, status int, body []byte) error {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	if status >= 400 {
		markError(h)
	}
	h.Del("Content-Length")
	w.WriteHeader(status)
	_, err := w.Write(body)
	return err
}

func markError(h http.Header) {
	h.Set("Cache-Control", "no-store")
	h.Set("X-Proxy-Error", "true")
}

// MountPrefix is the path prefix that Caddy removed before the request
// reached the gateway (`handle_path /api/*`, `uri strip_prefix`): the start
// of the path the client sent (Caddy keeps the original request) that the
// current path ends, compared as sent and, should a rewrite have changed
// the escaping, decoded; escaped, "" when there is none. Any other rewrite
// of the path leaves no prefix. The gateway puts it before every URL of
// its own that it writes (links in JSON bodies, the API page, rewritten
// Link and Location headers), so that they work for the client.
func MountPrefix(r *http.Request) string {
	orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request)
	if !ok || orig.URL == nil {
		return ""
	}
	if op, cp := orig.URL.EscapedPath(), r.URL.EscapedPath(); len(op) > len(cp) && strings.HasSuffix(op, cp) {
		return op[:len(op)-len(cp)]
	}
	if op, cp := orig.URL.Path, r.URL.Path; len(op) > len(cp) && strings.HasSuffix(op, cp) {
		return (&url.URL{Path: op[:len(op)-len(cp)]}).EscapedPath()
	}
	return ""
}

// FieldError is a value the gateway does not accept, naming the field it
// is in: a service's config (in the management API's camelCase, which the
// config loader maps to Caddyfile names) or a management request's body.
type FieldError struct {
	Field string
	Msg   string
}

// Fieldf returns a FieldError on field with a formatted message.
func Fieldf(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Write answers 400 with the body the management API documents for a
// refused value: {"error": "Invalid <field>: <msg>", "field": "<field>"}.
func (e *FieldError) Write(w http.ResponseWriter) error {
	return WriteJSON(w, http.StatusBadRequest, fieldBody{Error: "Invalid " + e.Field + ": " + e.Msg, Field: e.Field})
}

type fieldBody struct {
	Error string `json:"error"`
	Field string `json:"field"`
}

// IsTLSError reports whether a request to an upstream failed because the
// TLS handshake did: the certificate was not verified (unknown authority,
// wrong host name, expired or otherwise invalid) or the upstream did not
// answer with TLS at all.
func IsTLSError(err error) bool {
	var certErr *tls.CertificateVerificationError
	var recErr tls.RecordHeaderError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	return errors.As(err, &certErr) || errors.As(err, &recErr) || errors.As(err, &unknownAuth) ||
		errors.As(err, &hostErr) || errors.As(err, &invalid)
}
