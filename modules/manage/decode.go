package manage

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"mime"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// maxBodyBytes bounds a management request body.
const maxBodyBytes = 1 << 20

// What a management write may allocate while it runs, for admission
// (pressure.Monitor.Reserve). Per byte of body: a body of many small members
// decodes to maps that hold about 20 times its size before validation
// refuses them (BenchmarkReadDecodeLargeBody/POST_many_headers: 22.7 MB
// allocated for 1 MiB; a body that is mostly one string: 2.1 MB). Per
// request, whatever its size: BenchmarkDecodeService allocates about 10 KB
// for a typical body.
const (
	holdPerBodyByte = 24
	holdPerRequest  = 16 << 10
)

// bodyHold is what a management write with this request's body will hold:
// by its declared length, or the largest body accepted when the length is
// not declared.
func bodyHold(r *http.Request) int64 {
	n := r.ContentLength
	if n < 0 || n > maxBodyBytes {
		n = maxBodyBytes
	}
	return holdPerBodyByte*n + holdPerRequest
}

// Bounds on numbers, so a limit converts to a time.Duration without
// overflowing.
const (
	maxRequestsCap = 1_000_000_000
	maxWindowMs    = int64(366 * 24 * time.Hour / time.Millisecond)
)

// redacted replaces the value of a sensitive-looking header in responses.
// Sent back unchanged in a PUT, it keeps the stored value.
const redacted = "[REDACTED]"

var envVarName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// serviceRequest is the body of POST /manage/services, in the original's
// field names.
type serviceRequest struct {
	Key    *string      `json:"key"`
	Config *serviceBody `json:"config"`

	// Source is what GET /manage/services/{key} says of the service; it is
	// accepted (and ignored) so that a GET answer can be sent back whole.
	Source ignored `json:"source"`
}

// serviceBody is a service's configuration in the management API.
type serviceBody struct {
	Name              string            `json:"name"`
	BaseURL           string            `json:"baseUrl"`
	Headers           map[string]string `json:"headers"`
	VersionedBaseUrls map[string]string `json:"versionedBaseUrls"`
	RateLimit         *rateLimitBody    `json:"rateLimit"`
	Auth              *authBody         `json:"auth"`
	UpstreamLimits    *budgetBody       `json:"upstreamLimits"`
	// HTTPVersion is the Caddyfile's http_version: "auto" (or absent),
	// "1.1" or "2".
	HTTPVersion string `json:"httpVersion"`

	// Read-only and informational fields that a service's description
	// carries in GET answers (ours or the original's: its config had an
	// id, and its services a description and a timeout it did not apply),
	// accepted with any value and ignored, so that a config copied from a
	// GET can be POSTed or PUT as it is. Anything else unknown is refused.
	ID             ignored `json:"id"`
	Source         ignored `json:"source"`
	Description    ignored `json:"description"`
	Timeout        ignored `json:"timeout"`
	HasAuth        ignored `json:"hasAuth"`
	AuthConfigured ignored `json:"authConfigured"`
}

// budgetBody is a runtime service's upstream budget (the Caddyfile's
// upstream_limits): present turns it on ({} with the defaults), absent or
// null leaves it off. Durations are milliseconds, as windowMs.
type budgetBody struct {
	MaxWaitMs          *int64             `json:"maxWaitMs,omitempty"`
	ResetSlackMs       *int64             `json:"resetSlackMs,omitempty"`
	MaxInFlight        *int               `json:"maxInFlight,omitempty"`
	BanThreshold       *int               `json:"banThreshold,omitempty"`
	BanWindowMs        int64              `json:"banWindowMs,omitempty"`
	UnauthorizedLockMs *int64             `json:"unauthorizedLockMs,omitempty"`
	MaxQueue           int                `json:"maxQueue,omitempty"`
	Weights            map[string]float64 `json:"weights,omitempty"`
	Headers            string             `json:"headers,omitempty"`
	Reset              string             `json:"reset,omitempty"`
}

// ignored is a field accepted with any JSON value and not used.
type ignored = json.RawMessage

type rateLimitBody struct {
	MaxRequests int64 `json:"maxRequests"`
	WindowMs    int64 `json:"windowMs"`
}

type authBody struct {
	Type        string `json:"type"`
	TokenEnvVar string `json:"tokenEnvVar"`
	HeaderName  string `json:"headerName"`
	// TokenConfigured is accepted (and ignored) so that the config object
	// of GET /manage/services/{key} can be sent back as it is.
	TokenConfigured ignored `json:"tokenConfigured,omitempty"`
}

// checkContentType accepts JSON media types and a missing Content-Type
// (which needsJSON refuses before a body is read).
func checkContentType(r *http.Request) *httpx.FieldError {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json")) {
		return nil
	}
	return httpx.Fieldf("Content-Type", "the request body must be JSON (Content-Type: application/json), got %q", ct)
}

// readBody reads the request body whole, at most maxBodyBytes. A body of
// declared length is read into one buffer of exactly that size, so the
// buffer holds the body once (io.ReadAll's growth would allocate it about
// twice over); a declared length over the limit is refused unread.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, *httpx.FieldError) {
	if e := checkContentType(r); e != nil {
		return nil, e
	}
	if r.ContentLength > maxBodyBytes {
		return nil, bodyTooLarge()
	}
	limited := http.MaxBytesReader(w, r.Body, maxBodyBytes)
	var body []byte
	var err error
	if r.ContentLength >= 0 {
		body = make([]byte, r.ContentLength)
		_, err = io.ReadFull(limited, body)
	} else {
		body, err = io.ReadAll(limited)
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, bodyTooLarge()
	}
	if err != nil {
		return nil, httpx.Fieldf("body", "reading the request body failed")
	}
	return body, nil
}

func bodyTooLarge() *httpx.FieldError {
	return httpx.Fieldf("body", "the request body is larger than %d bytes", maxBodyBytes)
}

// decodeService decodes a service request body. urlKey is the key of
// PUT /manage/services/{key} ("" for POST). A PUT body is either the config
// object or the whole POST body, whose key must then match.
//
// The body is decoded in place, so a request holds its body once and what
// it decodes to; json.Decoder would first copy the body into a buffer of
// its own that grows to about twice the body's size
// (BenchmarkReadDecodeLargeBody: 6.3 MB allocated per 1 MiB body with
// json.Decoder, 2.1 MB this way). Admission budgets for this
// (holdPerBodyByte).
func decodeService(body []byte, urlKey string) (string, gateway.ServiceConfig, *httpx.FieldError) {
	if len(bytes.TrimSpace(body)) == 0 {
		return "", gateway.ServiceConfig{}, httpx.Fieldf("body", "a JSON request body is required")
	}
	// The member names first: a malformed body is refused after one pass.
	var names members[members[members[present]]]
	if err := json.Unmarshal(body, &names); err != nil {
		return "", gateway.ServiceConfig{}, jsonError(err, "")
	}
	var req serviceRequest
	if _, whole := names["config"]; urlKey != "" && !whole {
		req.Key = &urlKey
		req.Config = new(serviceBody)
		if e := decodeInto(body, req.Config, "config.", func() (string, bool) { return unknownInConfig(names) }); e != nil {
			return "", gateway.ServiceConfig{}, e
		}
	} else if e := decodeInto(body, &req, "", func() (string, bool) { return unknownInRequest(names) }); e != nil {
		return "", gateway.ServiceConfig{}, e
	}
	if req.Key == nil && urlKey != "" {
		req.Key = &urlKey
	}
	if req.Key == nil || *req.Key == "" {
		return "", gateway.ServiceConfig{}, httpx.Fieldf("key", "the service key is required")
	}
	key := *req.Key
	if urlKey != "" && key != urlKey {
		return "", gateway.ServiceConfig{}, httpx.Fieldf("key", "the key in the body (%q) differs from the key in the URL (%q)", key, urlKey)
	}
	if e := checkKey(key); e != nil {
		return "", gateway.ServiceConfig{}, e
	}
	if req.Config == nil {
		return "", gateway.ServiceConfig{}, httpx.Fieldf("config", "the service config is required")
	}
	cfg, e := req.Config.toConfig()
	return key, cfg, e
}

// decodeInto decodes body into v (a serviceRequest, or the serviceBody of
// a PUT with prefix "config."), then refuses the member v does not have
// that unknown found beforehand.
func decodeInto(body []byte, v any, prefix string, unknown func() (string, bool)) *httpx.FieldError {
	if err := json.Unmarshal(body, v); err != nil {
		return jsonError(err, prefix)
	}
	if name, ok := unknown(); ok {
		field := name
		if field == "" {
			field = "body"
		}
		return httpx.Fieldf(field, "unknown field %q", name)
	}
	return nil
}

// Member names of each object of a service request, from the JSON tags.
var (
	requestMembers   = memberNames(serviceRequest{})
	configMembers    = memberNames(serviceBody{})
	rateLimitMembers = memberNames(rateLimitBody{})
	authMembers      = memberNames(authBody{})
	budgetMembers    = memberNames(budgetBody{})
)

func memberNames(v any) []string {
	t := reflect.TypeOf(v)
	names := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		names = append(names, name)
	}
	return names
}

// members holds the member names of a JSON object and, to the depth its
// type gives, those of the objects in it: members[members[present]] is an
// object's names and its member objects' names. It keeps no value, so of
// the body it copies only names; the fixed depth bounds the work (each
// level decodes its own part of the body again).
type members[T any] map[string]T

func (m *members[T]) UnmarshalJSON(raw []byte) error {
	if len(raw) == 0 || raw[0] != '{' {
		*m = nil // not an object: the typed decode judges it
		return nil
	}
	return json.Unmarshal(raw, (*map[string]T)(m))
}

// present is a member's value, not kept.
type present struct{}

func (*present) UnmarshalJSON([]byte) error { return nil }

// unknownInRequest finds a member that a whole request ({"key",
// "config"}) does not have: at the top, in config, and in config's
// rateLimit and auth (headers and versionedBaseUrls take any name). Names
// match without regard to case, as encoding/json matches them to fields.
func unknownInRequest[T any](top members[members[members[T]]]) (string, bool) {
	if name, ok := unknownIn(top, requestMembers); ok {
		return name, true
	}
	for _, config := range membersNamed(top, "config") {
		if name, ok := unknownInConfig(config); ok {
			return name, true
		}
	}
	return "", false
}

// unknownInConfig is unknownInRequest for a config object.
func unknownInConfig[T any](config members[members[T]]) (string, bool) {
	if name, ok := unknownIn(config, configMembers); ok {
		return name, true
	}
	for _, rl := range membersNamed(config, "rateLimit") {
		if name, ok := unknownIn(rl, rateLimitMembers); ok {
			return name, true
		}
	}
	for _, auth := range membersNamed(config, "auth") {
		if name, ok := unknownIn(auth, authMembers); ok {
			return name, true
		}
	}
	for _, b := range membersNamed(config, "upstreamLimits") {
		if name, ok := unknownIn(b, budgetMembers); ok {
			return name, true
		}
	}
	return "", false
}

// unknownIn returns the first name of obj (in sorted order) not in known.
func unknownIn[T any](obj map[string]T, known []string) (string, bool) {
	for _, name := range slices.Sorted(maps.Keys(obj)) {
		if !slices.ContainsFunc(known, func(k string) bool { return strings.EqualFold(k, name) }) {
			return name, true
		}
	}
	return "", false
}

// membersNamed returns the values of obj's members called name, in any case.
func membersNamed[T any](obj map[string]T, name string) []T {
	var out []T
	for k, v := range obj {
		if strings.EqualFold(k, name) {
			out = append(out, v)
		}
	}
	return out
}

func jsonError(err error, prefix string) *httpx.FieldError {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		field := strings.TrimPrefix(prefix+typeErr.Field, "config.")
		if field == "" {
			field = "body"
		}
		return httpx.Fieldf(field, "wrong type: got %s, want %s", typeErr.Value, jsonKind(typeErr.Type.Kind().String()))
	case errors.As(err, &syntaxErr):
		return httpx.Fieldf("body", "malformed JSON at byte %d: %v", syntaxErr.Offset, syntaxErr)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return httpx.Fieldf("body", "malformed JSON: unexpected end of input")
	}
	if name, ok := strings.CutPrefix(err.Error(), `json: unknown field "`); ok {
		name = strings.TrimSuffix(name, `"`)
		field := name
		if field == "" {
			field = "body"
		}
		return httpx.Fieldf(field, "unknown field %q", name)
	}
	return httpx.Fieldf("body", "malformed JSON: %v", err)
}

func jsonKind(kind string) string {
	switch {
	case strings.HasPrefix(kind, "int"), strings.HasPrefix(kind, "uint"):
		return "an integer"
	case kind == "map", kind == "struct", kind == "ptr":
		return "an object"
	}
	return "a " + kind
}

// checkKey validates a service key as the management API accepts it.
func checkKey(key string) *httpx.FieldError {
	if err := gateway.CheckServiceKey(key); err != nil {
		return httpx.Fieldf("key", "%v", err)
	}
	return nil
}

// toConfig maps the API's config object onto the gateway's ServiceConfig.
func (b *serviceBody) toConfig() (gateway.ServiceConfig, *httpx.FieldError) {
	cfg := gateway.ServiceConfig{
		Name:     b.Name,
		BaseURL:  b.BaseURL,
		Headers:  b.Headers,
		Versions: b.VersionedBaseUrls,
		// Validated by BuildService (field http_version, named httpVersion
		// here by fieldNames).
		HTTPVersion: b.HTTPVersion,
	}
	if b.BaseURL == "" {
		return cfg, httpx.Fieldf("baseUrl", "baseUrl is required")
	}
	if rl := b.RateLimit; rl != nil {
		if rl.MaxRequests <= 0 || rl.MaxRequests > maxRequestsCap {
			return cfg, httpx.Fieldf("rateLimit.maxRequests", "must be between 1 and %d, got %d", maxRequestsCap, rl.MaxRequests)
		}
		if rl.WindowMs <= 0 || rl.WindowMs > maxWindowMs {
			return cfg, httpx.Fieldf("rateLimit.windowMs", "must be between 1 and %d, got %d", maxWindowMs, rl.WindowMs)
		}
		cfg.RateLimit = &gateway.RateLimit{
			MaxRequests: int(rl.MaxRequests),
			Window:      caddy.Duration(time.Duration(rl.WindowMs) * time.Millisecond),
		}
	}
	if u := b.UpstreamLimits; u != nil {
		l, e := u.toConfig()
		if e != nil {
			return cfg, e
		}
		cfg.UpstreamLimits = l
	}
	if a := b.Auth; a != nil && (a.Type != "" || a.TokenEnvVar != "" || a.HeaderName != "") {
		if a.Type == "" {
			return cfg, httpx.Fieldf("auth.type", "auth.type is required (bot, bearer, basic, header (or api-key) or query)")
		}
		// "api-key" (the original's name) is stored and shown as "header".
		cfg.Auth = &gateway.ServiceAuth{Type: gateway.CanonicalAuthType(a.Type), Name: a.HeaderName}
		if a.TokenEnvVar != "" {
			if !envVarName.MatchString(a.TokenEnvVar) {
				return cfg, httpx.Fieldf("auth.tokenEnvVar", "%q is not an environment variable name", a.TokenEnvVar)
			}
			cfg.Auth.Token = "{env." + a.TokenEnvVar + "}"
		}
	}
	return cfg, nil
}

// toConfig maps upstreamLimits onto the gateway's settings, which
// validates them (BuildService); here only what would overflow a
// duration is refused.
func (b *budgetBody) toConfig() (*gateway.UpstreamLimits, *httpx.FieldError) {
	l := &gateway.UpstreamLimits{
		MaxInFlight: b.MaxInFlight, BanThreshold: b.BanThreshold, MaxQueue: b.MaxQueue,
		Weights: b.Weights, Headers: b.Headers, Reset: b.Reset,
	}
	ms := func(field string, v *int64) (*caddy.Duration, *httpx.FieldError) {
		if v == nil {
			return nil, nil
		}
		if *v < 0 || *v > maxWindowMs {
			return nil, httpx.Fieldf("upstreamLimits."+field, "must be between 0 and %d, got %d", maxWindowMs, *v)
		}
		d := caddy.Duration(time.Duration(*v) * time.Millisecond)
		return &d, nil
	}
	var e *httpx.FieldError
	if l.MaxWait, e = ms("maxWaitMs", b.MaxWaitMs); e != nil {
		return nil, e
	}
	if l.ResetSlack, e = ms("resetSlackMs", b.ResetSlackMs); e != nil {
		return nil, e
	}
	if l.UnauthorizedLock, e = ms("unauthorizedLockMs", b.UnauthorizedLockMs); e != nil {
		return nil, e
	}
	w := b.BanWindowMs
	if bw, e := ms("banWindowMs", &w); e != nil {
		return nil, e
	} else if w != 0 {
		l.BanWindow = *bw
	}
	return l, nil
}

// budgetView is a service's upstream budget as the management API shows
// it (the settings that differ from the defaults).
func budgetView(l *gateway.UpstreamLimits) *budgetBody {
	if l == nil || l.Disabled {
		return nil
	}
	ms := func(d *caddy.Duration) *int64 {
		if d == nil {
			return nil
		}
		v := time.Duration(*d).Milliseconds()
		return &v
	}
	return &budgetBody{
		MaxWaitMs: ms(l.MaxWait), ResetSlackMs: ms(l.ResetSlack), MaxInFlight: l.MaxInFlight,
		BanThreshold: l.BanThreshold, BanWindowMs: time.Duration(l.BanWindow).Milliseconds(),
		UnauthorizedLockMs: ms(l.UnauthorizedLock), MaxQueue: l.MaxQueue, Weights: l.Weights,
		Headers: l.Headers, Reset: l.Reset,
	}
}

// fieldNames maps the gateway's config field names onto the API's.
var fieldNames = map[string]string{
	"base_url":     "baseUrl",
	"versions":     "versionedBaseUrls",
	"rate_limit":   "rateLimit",
	"auth.name":    "auth.headerName",
	"auth.token":   "auth.tokenEnvVar",
	"http_version": "httpVersion",
	// The settings of upstreamLimits that the API gives in milliseconds.
	"upstreamLimits.maxWait":          "upstreamLimits.maxWaitMs",
	"upstreamLimits.resetSlack":       "upstreamLimits.resetSlackMs",
	"upstreamLimits.unauthorizedLock": "upstreamLimits.unauthorizedLockMs",
	"upstreamLimits.banWindow":        "upstreamLimits.banWindowMs",
}

// fromFieldError turns a gateway validation error into a 400 answer.
func fromFieldError(err error) (*httpx.FieldError, bool) {
	var fe *httpx.FieldError
	if !errors.As(err, &fe) {
		return nil, false
	}
	field := fe.Field
	if n, ok := fieldNames[field]; ok {
		field = n
	}
	return &httpx.FieldError{Field: field, Msg: fe.Msg}, true
}

// configView is a service's configuration as the management API shows it.
// It never holds a credential: the token is named by its environment
// variable, and sensitive-looking header values are redacted.
type configView struct {
	Name              string             `json:"name"`
	BaseURL           string             `json:"baseUrl"`
	Headers           map[string]string  `json:"headers,omitempty"`
	VersionedBaseUrls map[string]string  `json:"versionedBaseUrls,omitempty"`
	RateLimit         *gateway.LimitInfo `json:"rateLimit,omitempty"`
	Auth              *authView          `json:"auth,omitempty"`
	UpstreamLimits    *budgetBody        `json:"upstreamLimits,omitempty"`
	HTTPVersion       string             `json:"httpVersion,omitempty"` // omitted for auto
}

type authView struct {
	Type            string `json:"type"`
	TokenEnvVar     string `json:"tokenEnvVar,omitempty"`
	HeaderName      string `json:"headerName,omitempty"`
	TokenConfigured bool   `json:"tokenConfigured"`
}

func viewOf(s *gateway.Service) configView {
	c := s.Config
	v := configView{Name: c.Name, BaseURL: s.BaseURL.String(), RateLimit: s.Info().RateLimit, UpstreamLimits: budgetView(c.UpstreamLimits)}
	if s.HTTPVersion != gateway.HTTPAuto {
		v.HTTPVersion = s.HTTPVersion
	}
	if len(c.Headers) > 0 {
		v.Headers = make(map[string]string, len(c.Headers))
		for k, val := range c.Headers {
			if sensitiveHeader(k) {
				val = redacted
			}
			v.Headers[k] = val
		}
	}
	if len(s.Versions) > 0 {
		v.VersionedBaseUrls = make(map[string]string, len(s.Versions))
		for name, u := range s.Versions {
			v.VersionedBaseUrls[name] = u.String()
		}
	}
	if s.HasAuth() {
		v.Auth = &authView{Type: s.AuthType(), TokenEnvVar: s.TokenEnv, TokenConfigured: s.TokenConfigured()}
		if t := s.AuthType(); t == "header" || t == "query" {
			v.Auth.HeaderName = c.Auth.Name
		}
	}
	return v
}

// sensitiveHeader reports header names whose values are likely secrets.
func sensitiveHeader(name string) bool {
	n := strings.ToLower(name)
	for _, s := range []string{"auth", "key", "token", "secret", "password", "cookie", "session", "signature", "credential"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// keepRedacted puts back the stored value of every header sent back as
// [REDACTED], so a GET → edit → PUT round trip does not destroy secrets it
// never saw.
func keepRedacted(cfg *gateway.ServiceConfig, cur *gateway.Service) {
	if cur == nil {
		return
	}
	for k, v := range cfg.Headers {
		if v != redacted {
			continue
		}
		for ck, cv := range cur.Config.Headers {
			if strings.EqualFold(ck, k) {
				cfg.Headers[k] = cv
			}
		}
	}
}
