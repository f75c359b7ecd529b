package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/internal/jsonfield"
	"github.com/dustin/go-humanize"
)

// Errors found while the config loads cannot name a Caddyfile line (the
// adapter is done by then), so they name the option the way a Caddyfile
// user finds it, "byteproxy > service custom-api > base_url", and quote the
// value as written, placeholder included. Errors in the JSON itself name
// the JSON path, "apps.byteproxy.services.github.rate_limt".

// OptionPath joins the parts of a byteproxy option path:
// OptionPath("pressure", "max_cpu") is "byteproxy > pressure > max_cpu".
func OptionPath(parts ...string) string {
	return strings.Join(append([]string{"byteproxy"}, parts...), " > ")
}

// ConfigError prefixes err with the option path of parts:
// ConfigError(err, "timeout") reads "byteproxy > timeout: <err>".
func ConfigError(err error, parts ...string) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", OptionPath(parts...), err)
}

// ConfigErrorIn prefixes an error that starts with the name of its own
// option ("max_cpu: ...") with the path of the block it is in:
// ConfigErrorIn(err, "pressure") reads "byteproxy > pressure > max_cpu: ...".
func ConfigErrorIn(err error, parts ...string) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s > %w", OptionPath(parts...), err)
}

// CheckFraction refuses a fraction setting (max_cpu) outside 0..1. A value
// above 1 is most likely a percentage, so the error suggests the fraction.
func CheckFraction(name string, v float64) error {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0) || v < 0:
		return fmt.Errorf("%s: want a fraction between 0 and 1, such as 0.98, got %v", name, v)
	case v > 1:
		hint := "" // between 1 and 2 it is no percentage one would write
		if v >= 2 && v <= 100 {
			hint = fmt.Sprintf("; did you mean %s?", strconv.FormatFloat(v/100, 'f', -1, 64))
		}
		return fmt.Errorf("%s: %s would mean %s%% of GOMAXPROCS; it is a fraction between 0 and 1%s",
			name, strconv.FormatFloat(v, 'f', -1, 64), humanize.Commaf(v*100), hint)
	}
	return nil
}

// serviceOption maps the field an httpx.FieldError names (the management API's
// camelCase) to the Caddyfile subdirective of a service.
var serviceOption = map[string]string{
	"preset":            "preset",
	"baseUrl":           "base_url",
	"versionedBaseUrls": "version",
	"headers":           "header",
	"rateLimit":         "rate_limit",
	"auth.type":         "auth",
	"auth.headerName":   "auth",
	"timeout":           "timeout",
	"retries":           "retries",
}

// budgetOption maps the settings of upstreamLimits (the management API's
// names) to the Caddyfile subdirectives of upstream_limits.
var budgetOption = map[string]string{
	"maxWait":          "max_wait",
	"resetSlack":       "reset_slack",
	"globalLimit":      "global_limit",
	"globalWindow":     "global_limit",
	"mutationSpacing":  "mutation_spacing",
	"maxInFlight":      "max_in_flight",
	"banThreshold":     "ban_threshold",
	"banWindow":        "ban_threshold",
	"unauthorizedLock": "unauthorized_lock",
	"maxQueue":         "max_queue",
	"weights":          "weight",
	"headers":          "headers",
	"reset":            "headers",
}

// serviceConfigError names the service and the option of a BuildService
// error for a service of the config, with a hint when the value holds a
// placeholder that is not resolved there.
func serviceConfigError(key string, cfg ServiceConfig, err error) error {
	var fe *httpx.FieldError
	if !errors.As(err, &fe) {
		return ConfigError(err, "service "+key)
	}
	opt, ok := serviceOption[fe.Field]
	if sub, isBudget := strings.CutPrefix(fe.Field, "upstreamLimits."); isBudget {
		opt, ok = "upstream_limits > "+budgetOption[sub], budgetOption[sub] != ""
	}
	if !ok {
		return ConfigError(errors.New(fe.Msg), "service "+key)
	}
	msg := fe.Msg
	switch opt {
	case "base_url":
		msg += placeholderHint("base_url", cfg.BaseURL)
	case "version":
		for _, raw := range cfg.Versions {
			if h := placeholderHint("version", raw); h != "" {
				msg += h
				break
			}
		}
	}
	return ConfigError(errors.New(msg), "service "+key, opt)
}

// placeholderHint explains a runtime placeholder ({env.X}) left in a
// value that is read as written: Caddy resolves those only where a module
// asks, while {$X} is substituted by the Caddyfile adapter everywhere.
func placeholderHint(option, value string) string {
	i := strings.Index(value, "{env.")
	if i < 0 {
		return ""
	}
	name, _, ok := strings.Cut(value[i+len("{env."):], "}")
	if !ok || name == "" {
		return ""
	}
	return fmt.Sprintf(" (the placeholder {env.%s} is not resolved in %s; write {$%s} to have the Caddyfile adapter substitute the environment variable)", name, option, name)
}

// UnmarshalJSON decodes the app's config strictly, as Caddy decodes every
// module, but an unknown field is reported with its JSON path
// (apps.byteproxy.services.github.rate_limt) rather than its name alone.
func (a *App) UnmarshalJSON(b []byte) error {
	type plain App // the same fields without this method
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode((*plain)(a)); err != nil {
		if uerr := jsonfield.Unknown(b, reflect.TypeFor[App](), "apps.byteproxy"); uerr != nil {
			return uerr
		}
		return err
	}
	a.configured = true
	return nil
}
