// Package caddyfile adapts ByteProxy's Caddyfile syntax: the `byteproxy`
// global option (the apps.byteproxy app) and the `byteproxy` site
// directive (the whole gateway as one route).
package caddyfile

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/dustin/go-humanize"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("byteproxy", parseGlobal)
}

// parseGlobal parses the `byteproxy { ... }` global option into the app.
func parseGlobal(d *caddyfile.Dispenser, existing any) (any, error) {
	app := new(gateway.App)
	d.Next() // "byteproxy"; read first, so that an error names its line
	if existing != nil {
		return nil, d.Err("the byteproxy global option may appear only once; merge this block into the first one")
	}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	seen := map[string]int{} // option -> line it was first set on
	for d.NextBlock(0) {
		if opt := d.Val(); opt != "service" && opt != "auth" { // repeated: see parseService, parseAuth
			if line, ok := seen[opt]; ok {
				return nil, d.Errf("'%s' is set twice in the byteproxy global option (first on line %d); keep one", opt, line)
			}
			seen[opt] = d.Line()
		}
		if err := parseAppOption(d, app); err != nil {
			return nil, err
		}
	}
	return httpcaddyfile.App{Name: "byteproxy", Value: caddyconfig.JSON(app, nil)}, nil
}

func parseAppOption(d *caddyfile.Dispenser, app *gateway.App) error {
	switch opt := d.Val(); opt {
	case "auth":
		return parseAuth(d, app)
	case "query_key":
		b, err := oneBool(d)
		app.QueryKey = &b
		return err
	case "auth_failures":
		f, err := parseAuthFailures(d)
		app.AuthFailures = f
		return err
	case "timeout":
		dur, err := oneDuration(d)
		app.Timeout = dur
		return err
	case "retries":
		n, err := oneInt(d)
		app.Retries = &n
		return err
	case "strict_tls":
		b, err := oneBool(d)
		app.StrictTLS = &b
		return err
	case "lean_path":
		b, err := oneBool(d)
		app.LeanPath = &b
		return err
	case "cors":
		return parseCORS(d, app)
	case "pressure":
		return parsePressure(d, app)
	case "client_rate_limit":
		rl, err := parseRateLimit(d)
		app.ClientRateLimit = rl
		return err
	case "redis":
		if !d.NextArg() {
			return d.ArgErr()
		}
		app.Redis = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		return nil
	case "update_check":
		u, err := oneString(d)
		app.UpdateCheck = u
		return err
	case "runtime_services":
		return parseRuntimeServices(d, app)
	case "service":
		return parseService(d, app)
	default:
		return d.Errf("unrecognized byteproxy option '%s'", opt)
	}
}

// auth <proxy|management> { key <k>...; required <bool> }
func parseAuth(d *caddyfile.Dispenser, app *gateway.App) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	scope := d.Val()
	if scope != gateway.ScopeProxy && scope != gateway.ScopeManagement {
		return d.Errf("unknown auth scope '%s': want proxy or management", scope)
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if app.Auth == nil {
		app.Auth = map[string]*gateway.AuthScope{}
	}
	if app.Auth[scope] != nil {
		return d.Errf("'auth %s' is set twice in the byteproxy global option; merge the keys into one block", scope)
	}
	sc := new(gateway.AuthScope)
	app.Auth[scope] = sc
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "key":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			sc.Keys = append(sc.Keys, args...)
		case "required":
			b, err := oneBool(d)
			if err != nil {
				return err
			}
			sc.Required = &b
		default:
			return d.Errf("unrecognized auth subdirective '%s'", d.Val())
		}
	}
	return nil
}

// auth_failures <max_failures> <window> | auth_failures off
func parseAuthFailures(d *caddyfile.Dispenser) (*gateway.AuthFailures, error) {
	args := d.RemainingArgs()
	if len(args) == 1 {
		if on, err := parseBool(d, args[0]); err != nil || on {
			return nil, d.Errf("auth_failures takes <max_failures> <window> (e.g. 20 1m) or off, got '%s'", args[0])
		}
		return &gateway.AuthFailures{Disabled: true}, nil
	}
	if len(args) != 2 {
		return nil, d.Errf("auth_failures takes <max_failures> <window> (e.g. 20 1m) or off")
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n <= 0 {
		return nil, d.Errf("auth_failures: max failures must be a positive integer, got '%s'", args[0])
	}
	w, err := caddy.ParseDuration(args[1])
	if err != nil || w <= 0 {
		return nil, d.Errf("auth_failures: window must be a positive duration, got '%s'", args[1])
	}
	return &gateway.AuthFailures{MaxFailures: n, Window: caddy.Duration(w)}, nil
}

// cors [on|off] [{ origins ...; headers ...; methods ...; max_age <d> }]
func parseCORS(d *caddyfile.Dispenser, app *gateway.App) error {
	c := new(gateway.CORSConfig)
	app.CORS = c
	if d.NextArg() {
		on, err := parseBool(d, d.Val())
		if err != nil {
			return err
		}
		c.Disabled = !on
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "origins":
			args := splitList(d.RemainingArgs())
			if len(args) == 0 {
				return d.ArgErr()
			}
			c.Origins = append(c.Origins, args...)
		case "headers":
			c.AllowHeaders = append(c.AllowHeaders, splitList(d.RemainingArgs())...)
		case "methods":
			c.AllowMethods = append(c.AllowMethods, splitList(d.RemainingArgs())...)
		case "max_age":
			dur, err := oneDuration(d)
			if err != nil {
				return err
			}
			c.MaxAge = dur
		default:
			return d.Errf("unrecognized cors subdirective '%s'", d.Val())
		}
	}
	return nil
}

// pressure [on|off] [{ max_heap <size>; max_rss <size>; max_in_flight <n>|off; ... }]
func parsePressure(d *caddyfile.Dispenser, app *gateway.App) error {
	p := new(gateway.PressureConfig)
	app.Pressure = p
	if d.NextArg() {
		on, err := parseBool(d, d.Val())
		if err != nil {
			return err
		}
		p.Disabled = !on
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "max_heap":
			p.MaxHeap, err = oneSize(d)
		case "max_rss":
			p.MaxRSS, err = oneSize(d)
		case "max_sched_latency":
			p.MaxSchedLatency, err = oneDuration(d)
		case "max_cpu":
			p.MaxCPU, err = oneFraction(d)
		case "max_in_flight":
			p.MaxInFlight, err = maxInFlight(d)
		case "interval":
			p.Interval, err = oneDuration(d)
		case "retry_after":
			p.RetryAfter, err = oneDuration(d)
		case "health_check":
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return d.ArgErr()
			}
			p.HealthCheckURL = args[0]
			if len(args) == 2 {
				dur, perr := caddy.ParseDuration(args[1])
				if perr != nil {
					return d.Errf("health_check interval: %v", perr)
				}
				p.HealthCheckInterval = caddy.Duration(dur)
			}
		default:
			return d.Errf("unrecognized pressure subdirective '%s'", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// runtime_services { token_env <glob>...; allow_private_upstreams [bool]; sync_interval <d>; max_services <n> }
func parseRuntimeServices(d *caddyfile.Dispenser, app *gateway.App) error {
	rs := new(gateway.RuntimeServicesConfig)
	app.RuntimeServices = rs
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "token_env":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			rs.TokenEnv = append(rs.TokenEnv, args...)
		case "allow_private_upstreams":
			b := true
			if d.NextArg() {
				var err error
				if b, err = parseBool(d, d.Val()); err != nil {
					return err
				}
			}
			rs.AllowPrivateUpstreams = b
		case "sync_interval":
			dur, err := oneDuration(d)
			if err != nil {
				return err
			}
			rs.SyncInterval = dur
		case "max_services":
			n, err := oneInt(d)
			if err != nil {
				return err
			}
			if n == 0 {
				return d.Errf("max_services must be at least 1")
			}
			rs.MaxServices = n
		default:
			return d.Errf("unrecognized runtime_services subdirective '%s'", d.Val())
		}
	}
	return nil
}

// service <key> [<preset>] [{ name; base_url; version; header; auth; rate_limit; timeout; retries; tls_insecure_skip_verify; http_version; upstream_limits }]
func parseService(d *caddyfile.Dispenser, app *gateway.App) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	key := d.Val()
	if err := gateway.CheckServiceKey(key); err != nil {
		return d.Errf("invalid service key '%s': want letters, digits, '-', '_' or '.' (at most 63, starting with a letter or digit, no '..'), not a reserved name", key)
	}
	cfg := new(gateway.ServiceConfig)
	if _, ok := gateway.Presets[key]; ok {
		cfg.Preset = key
	}
	if d.NextArg() {
		if _, ok := gateway.Presets[d.Val()]; !ok {
			return d.Errf("unknown preset '%s' (want discord or github)", d.Val())
		}
		cfg.Preset = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if app.Services == nil {
		app.Services = map[string]*gateway.ServiceConfig{}
	}
	if _, dup := app.Services[key]; dup {
		return d.Errf("service '%s' is defined twice", key)
	}
	app.Services[key] = cfg
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := parseServiceOption(d, cfg); err != nil {
			return err
		}
	}
	if cfg.Preset == "" && cfg.BaseURL == "" {
		return d.Errf("service '%s' needs a base_url (or a preset)", key)
	}
	return nil
}

func parseServiceOption(d *caddyfile.Dispenser, cfg *gateway.ServiceConfig) error {
	var err error
	switch d.Val() {
	case "name":
		cfg.Name, err = oneString(d)
	case "base_url":
		cfg.BaseURL, err = oneString(d)
	case "version":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.ArgErr()
		}
		if cfg.Versions == nil {
			cfg.Versions = map[string]string{}
		}
		cfg.Versions[args[0]] = args[1]
	case "header":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.ArgErr()
		}
		if cfg.Headers == nil {
			cfg.Headers = map[string]string{}
		}
		cfg.Headers[args[0]] = args[1]
	case "auth":
		return parseServiceAuth(d, cfg)
	case "rate_limit":
		cfg.RateLimit, err = parseRateLimit(d)
	case "timeout":
		cfg.Timeout, err = oneDuration(d)
	case "retries":
		var n int
		n, err = oneInt(d)
		cfg.Retries = &n
	case "tls_insecure_skip_verify":
		if d.NextArg() {
			return d.ArgErr()
		}
		cfg.TLSInsecureSkipVerify = true
	case "http_version":
		if cfg.HTTPVersion, err = oneString(d); err != nil {
			return err
		}
		switch cfg.HTTPVersion {
		case gateway.HTTPAuto, gateway.HTTP1, gateway.HTTP2:
		default:
			return d.Errf("http_version takes auto, 1.1 or 2, got '%s'", cfg.HTTPVersion)
		}
	case "upstream_limits":
		return parseUpstreamLimits(d, cfg)
	default:
		return d.Errf("unrecognized service subdirective '%s'", d.Val())
	}
	return err
}

// upstream_limits [on|off] [{
//
//	max_wait <duration>
//	reset_slack <duration>
//	global_limit <n> [<window>]
//	mutation_spacing <duration>|off
//	max_in_flight <n>|off
//	ban_threshold <n>|off [<window>]
//	unauthorized_lock <duration>|off
//	max_queue <n>
//	weight <consumer> <weight>
//	headers ietf|x-ratelimit [epoch|delta]
//
// }]
func parseUpstreamLimits(d *caddyfile.Dispenser, cfg *gateway.ServiceConfig) error {
	if cfg.UpstreamLimits != nil {
		return d.Err("upstream_limits may appear only once per service; merge the two blocks")
	}
	l := new(gateway.UpstreamLimits)
	cfg.UpstreamLimits = l
	if d.NextArg() {
		on, err := parseBool(d, d.Val())
		if err != nil {
			return d.Errf("upstream_limits takes on or off, got '%s'", d.Val())
		}
		l.Disabled = !on
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if l.Disabled {
			return d.Errf("upstream_limits off takes no settings; remove '%s' or the off", d.Val())
		}
		if err := parseUpstreamLimit(d, l); err != nil {
			return err
		}
	}
	return nil
}

func parseUpstreamLimit(d *caddyfile.Dispenser, l *gateway.UpstreamLimits) error {
	var err error
	switch name := d.Val(); name {
	case "max_wait":
		l.MaxWait, err = durationPtr(d, false)
	case "reset_slack":
		l.ResetSlack, err = durationPtr(d, false)
	case "mutation_spacing":
		l.MutationSpacing, err = durationPtr(d, true)
	case "unauthorized_lock":
		l.UnauthorizedLock, err = durationPtr(d, true)
	case "global_limit":
		args := d.RemainingArgs()
		if len(args) < 1 || len(args) > 2 {
			return d.Errf("global_limit takes <requests> [<window>], e.g. global_limit 50 1s")
		}
		if l.GlobalLimit, err = strconv.Atoi(args[0]); err != nil || l.GlobalLimit <= 0 {
			return d.Errf("global_limit: want a positive number of requests, got '%s'", args[0])
		}
		if len(args) == 2 {
			w, perr := caddy.ParseDuration(args[1])
			if perr != nil || w <= 0 {
				return d.Errf("global_limit: window must be a positive duration, got '%s'", args[1])
			}
			l.GlobalWindow = caddy.Duration(w)
		}
	case "max_in_flight":
		l.MaxInFlight, err = countOrOff(d, 1)
	case "ban_threshold":
		args := d.RemainingArgs()
		if len(args) < 1 || len(args) > 2 {
			return d.Errf("ban_threshold takes <invalid_responses>|off [<window>], e.g. ban_threshold 5000 10m")
		}
		zero := 0
		l.BanThreshold = &zero
		if args[0] != "off" {
			n, perr := strconv.Atoi(args[0])
			if perr != nil || n <= 0 {
				return d.Errf("ban_threshold: want a positive number of invalid responses or off, got '%s'", args[0])
			}
			l.BanThreshold = &n
		}
		if len(args) == 2 {
			w, perr := caddy.ParseDuration(args[1])
			if perr != nil || w <= 0 {
				return d.Errf("ban_threshold: window must be a positive duration, got '%s'", args[1])
			}
			l.BanWindow = caddy.Duration(w)
		}
	case "max_queue":
		var n int
		if n, err = oneInt(d); err == nil && n == 0 {
			err = d.Errf("max_queue must be at least 1")
		}
		l.MaxQueue = n
	case "weight":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.Errf("weight takes <consumer> <weight>, e.g. weight key:53e07d8c8ec1 2")
		}
		w, perr := strconv.ParseFloat(args[1], 64)
		if perr != nil || !(w > 0) {
			return d.Errf("weight: want a positive number, got '%s'", args[1])
		}
		if l.Weights == nil {
			l.Weights = map[string]float64{}
		}
		if _, dup := l.Weights[args[0]]; dup {
			return d.Errf("weight: consumer '%s' is weighted twice", args[0])
		}
		l.Weights[args[0]] = w
	case "headers":
		args := d.RemainingArgs()
		if len(args) < 1 || len(args) > 2 {
			return d.Errf("headers takes ietf or x-ratelimit [epoch|delta]")
		}
		switch args[0] {
		case "ietf":
			if len(args) == 2 {
				return d.Errf("headers ietf takes no reset argument (RateLimit's t is always seconds from now)")
			}
		case "x-ratelimit":
			if len(args) == 2 {
				if args[1] != "epoch" && args[1] != "delta" {
					return d.Errf("headers x-ratelimit: want epoch or delta for X-RateLimit-Reset, got '%s'", args[1])
				}
				l.Reset = args[1]
			}
		default:
			return d.Errf("headers: want ietf or x-ratelimit, got '%s'", args[0])
		}
		l.Headers = args[0]
	default:
		return d.Errf("unrecognized upstream_limits subdirective '%s'", name)
	}
	return err
}

// durationPtr reads one duration (or, with off, the word off for 0) into
// a pointer, so that an explicit 0 is kept.
func durationPtr(d *caddyfile.Dispenser, off bool) (*caddy.Duration, error) {
	name := d.Val()
	s, err := oneString(d)
	if err != nil {
		return nil, err
	}
	if off && s == "off" {
		zero := caddy.Duration(0)
		return &zero, nil
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil || dur < 0 {
		return nil, d.Errf("%s: want a duration such as 5s or 1500ms, got '%s'", name, s)
	}
	v := caddy.Duration(dur)
	return &v, nil
}

// countOrOff reads `<n>|off` (off is 0) into a pointer; n at least least.
func countOrOff(d *caddyfile.Dispenser, least int) (*int, error) {
	name := d.Val()
	s, err := oneString(d)
	if err != nil {
		return nil, err
	}
	n := 0
	if s != "off" {
		if n, err = strconv.Atoi(s); err != nil || n < least {
			return nil, d.Errf("%s: want a number of at least %d, or off, got '%s'", name, least, s)
		}
	}
	return &n, nil
}

// auth bot|bearer|basic <token> | auth header|api-key|query <name> <token>
//
// api-key is the original ByteProxy's name for header; it adapts to
// "header".
func parseServiceAuth(d *caddyfile.Dispenser, cfg *gateway.ServiceConfig) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	a := &gateway.ServiceAuth{Type: gateway.CanonicalAuthType(args[0])}
	switch a.Type {
	case "bot", "bearer", "basic":
		if len(args) != 2 {
			return d.Errf("auth %s takes one token argument", args[0])
		}
		a.Token = args[1]
	case "header", "query":
		if len(args) != 3 {
			return d.Errf("auth %s takes a name and a token", args[0])
		}
		a.Name, a.Token = args[1], args[2]
	default:
		return d.Errf("unknown auth type '%s' (want bot, bearer, basic, header (or api-key) or query)", args[0])
	}
	cfg.Auth = a
	return nil
}

// <max_requests> <window>
func parseRateLimit(d *caddyfile.Dispenser) (*gateway.RateLimit, error) {
	name := d.Val() // rate_limit or client_rate_limit; RemainingArgs moves on
	args := d.RemainingArgs()
	if len(args) != 2 {
		return nil, d.Errf("%s takes <max_requests> <window>, e.g. %s 100 1m; got %d argument(s)", name, name, len(args))
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n <= 0 {
		return nil, d.Errf("%s: max requests must be a positive integer, got '%s'", name, args[0])
	}
	w, err := caddy.ParseDuration(args[1])
	if err != nil || w <= 0 {
		return nil, d.Errf("%s: window must be a positive duration, got '%s'", name, args[1])
	}
	return &gateway.RateLimit{MaxRequests: n, Window: caddy.Duration(w)}, nil
}

func oneString(d *caddyfile.Dispenser) (string, error) {
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.ArgErr()
	}
	return v, nil
}

func oneBool(d *caddyfile.Dispenser) (bool, error) {
	s, err := oneString(d)
	if err != nil {
		return false, err
	}
	return parseBool(d, s)
}

func parseBool(d *caddyfile.Dispenser, s string) (bool, error) {
	switch strings.ToLower(s) {
	case "on", "true", "yes", "1":
		return true, nil
	case "off", "false", "no", "0":
		return false, nil
	}
	return false, d.Errf("want on or off (true or false), got '%s'", s)
}

func oneInt(d *caddyfile.Dispenser) (int, error) {
	s, err := oneString(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, d.Errf("want a non-negative integer, got '%s'", s)
	}
	return n, nil
}

// maxInFlight reads `max_in_flight <n>|off`; off is no limit (-1 in JSON).
func maxInFlight(d *caddyfile.Dispenser) (int64, error) {
	s, err := oneString(d)
	if err != nil {
		return 0, err
	}
	if s == "off" {
		return -1, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, d.Errf("max_in_flight: want a number of requests or off, got '%s'", s)
	}
	return n, nil
}

// oneFraction reads a number between 0 and 1. A value above 1 is refused
// rather than read as a percentage: max_cpu 98 would otherwise mean
// 9,800% of GOMAXPROCS, a threshold never reached.
func oneFraction(d *caddyfile.Dispenser) (float64, error) {
	name := d.Val()
	s, err := oneString(d)
	if err != nil {
		return 0, err
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, d.Errf("%s: want a fraction between 0 and 1, such as 0.98, got '%s'", name, s)
	}
	if err := gateway.CheckFraction(name, f); err != nil {
		return 0, d.Err(err.Error())
	}
	return f, nil
}

func oneDuration(d *caddyfile.Dispenser) (caddy.Duration, error) {
	s, err := oneString(d)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil || dur < 0 {
		return 0, d.Errf("want a duration such as 30s or 1500ms, got '%s'", s)
	}
	return caddy.Duration(dur), nil
}

func oneSize(d *caddyfile.Dispenser) (int64, error) {
	s, err := oneString(d)
	if err != nil {
		return 0, err
	}
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, d.Errf("want a size such as 512MiB, got '%s'", s)
	}
	return int64(n), nil
}

// splitList accepts both "a b" and "a,b" (the original's CORS_ORIGINS).
func splitList(args []string) []string {
	var out []string
	for _, a := range args {
		for _, p := range strings.Split(a, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}
