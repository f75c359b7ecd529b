package manage

import (
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"runtime/metrics"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/internal/routes"
	"github.com/byteproxy/byteproxy/modules/auth"
	"github.com/byteproxy/byteproxy/modules/gateway"
	"github.com/byteproxy/byteproxy/modules/pressure"
)

// processStart is when the gateway process started; uptimes count from it,
// not from the last config reload.
var processStart = time.Now()

// serveInfo answers the informational endpoints and the JSON 404.
func (h *Handler) serveInfo(w http.ResponseWriter, r *http.Request) error {
	var body func(*http.Request) (int, any)
	route := r.URL.Path
	switch route {
	case routes.Root:
		body = h.welcome
	case routes.Health:
		body = h.health
	case routes.Status:
		body = h.status
	case routes.Up:
		body = func(*http.Request) (int, any) { return h.pressure.Up() }
	case routes.Ready:
		if !isRead(r) {
			return methodNotAllowed(w, r, route)
		}
		return h.serveReady(w)
	case routes.Version, routes.Version + "/":
		route, body = routes.Version, h.version
	case routes.VersionCheck:
		if !isRead(r) {
			return methodNotAllowed(w, r, route)
		}
		return serveVersionCheck(w, r, h.checker)
	case routes.AuthStatus:
		body = func(r *http.Request) (int, any) { return http.StatusOK, auth.Status(h.app, r) }
	case routes.ProxyServices, routes.ProxyServices + "/":
		route, body = routes.ProxyServices, h.proxyServices
	default:
		return notFound(w, r)
	}
	if !isRead(r) {
		return methodNotAllowed(w, r, route)
	}
	status, v := body(r)
	return httpx.WriteJSON(w, status, v)
}

// serveReady answers /ready: readiness for load balancers, 503 with
// Retry-After while the gateway sheds load or its health check fails.
func (h *Handler) serveReady(w http.ResponseWriter) error {
	status, retryAfter, body := h.pressure.Ready()
	w.Header().Set("Cache-Control", "no-store")
	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	return httpx.WriteJSON(w, status, body)
}

// notFound is the JSON 404 of every unknown path, whatever the method. Its
// paths are the client's: under the mount prefix (see httpx.MountPrefix).
func notFound(w http.ResponseWriter, r *http.Request) error {
	prefix := httpx.MountPrefix(r)
	msg := "The endpoint '" + shortPath(prefix+r.URL.Path) + "' does not exist"
	return httpx.WriteError(w, r, http.StatusNotFound, "", msg, map[string]any{
		"error":              "Endpoint not found",
		"message":            msg,
		"suggestion":         "Proxy calls look like " + prefix + routes.ProxyService + "; GET " + prefix + routes.Docs + " describes the API",
		"documentation":      prefix + routes.Docs,
		"availableEndpoints": routes.Endpoints(prefix), // routes.Table, as the OpenAPI document (TestRoutesServed)
	})
}

// welcome links the other informational endpoints, under the mount prefix.
func (h *Handler) welcome(r *http.Request) (int, any) {
	prefix := httpx.MountPrefix(r)
	return http.StatusOK, map[string]any{
		"message":       "Welcome to ByteProxy, an API gateway for Discord, GitHub and any HTTP API",
		"source":        gateway.ProjectURL,
		"documentation": prefix + routes.Docs,
		"status":        prefix + routes.Status,
		"health":        prefix + routes.Health,
		"version":       "v" + gateway.Version,
		"checkUpdates":  prefix + routes.VersionCheck,
	}
}

func uptimeSeconds() float64 {
	return float64(time.Since(processStart).Milliseconds()) / 1000
}

// health is public and minimal: liveness, version, service keys, whether
// the process is under pressure, and the original's config summary (port,
// logging, CORS); nothing about upstreams, memory or keys.
func (h *Handler) health(r *http.Request) (int, any) {
	services := h.app.AllServices()
	keys, truncated := gateway.ListedKeys(services)
	listed := map[string]any{"total": len(services), "available": keys}
	if truncated {
		listed["truncated"] = true
	}
	under, kind := h.pressure.UnderPressure()
	status := "healthy"
	pr := map[string]any{"underPressure": under}
	if under {
		status = "degraded"
		pr["type"] = kind
	}
	return http.StatusOK, map[string]any{
		"status":    status,
		"timestamp": time.Now().UTC().Format(time.RFC3339Nano),
		"uptime":    uptimeSeconds(),
		"version":   "v" + gateway.Version,
		"services":  listed,
		"pressure":  pr,
		"config": map[string]any{
			"port":    localPort(r),
			"logging": h.loggingInfo(),
			"cors":    h.corsInfo(),
		},
	}
}

// localPort is the port the request arrived on (the original's PORT), or
// nil where there is none (a Unix socket).
func localPort(r *http.Request) any {
	a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return nil
	}
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.Port
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return int(ap.Port())
	}
	return nil
}

// loggingInfo describes the gateway's log as the original's LOGGING_ENABLED
// and LOG_LEVEL did: whether its logger writes anything, and the lowest
// level it writes (Caddy's log settings decide both).
func (h *Handler) loggingInfo() map[string]any {
	info := map[string]any{"enabled": false, "level": nil}
	if h.logger == nil {
		return info
	}
	core := h.logger.Core()
	for _, l := range []zapcore.Level{zapcore.DebugLevel, zapcore.InfoLevel, zapcore.WarnLevel, zapcore.ErrorLevel, zapcore.FatalLevel} {
		if core.Enabled(l) {
			info["enabled"], info["level"] = true, l.String()
			break
		}
	}
	return info
}

// corsInfo is the CORS setting, as the original showed it.
func (h *Handler) corsInfo() map[string]any {
	cors := map[string]any{"enabled": true, "origins": []string{"*"}}
	if c := h.app.CORS; c != nil {
		cors["enabled"] = !c.Disabled
		if len(c.Origins) > 0 {
			cors["origins"] = c.Origins
		}
	}
	return cors
}

// status is public: runtime figures (the same kind /up shows) and which
// services exist and are usable. It never shows a header, a key or a
// token, or any part of one. It shows each service's base URL (as the
// original did) only where GET /proxy/services shows it to anyone, that is
// when the proxy scope requires no key; with a proxy key required, the
// base URLs are for key holders (/proxy/services) and baseUrlsHidden says
// so.
func (h *Handler) status(r *http.Request) (int, any) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	_, up := h.pressure.Up()
	services := h.app.AllServices()
	keys, truncated := gateway.ListedKeys(services)
	proxy, mgmt := h.app.ScopeFor(gateway.ScopeProxy), h.app.ScopeFor(gateway.ScopeManagement)
	showURLs := proxy == nil || !proxy.Required
	list := make([]map[string]any, 0, len(keys))
	for _, key := range keys {
		s := services[key]
		info := s.Info()
		entry := map[string]any{
			"key":                 key,
			"name":                info.Name,
			"source":              s.Source,
			"configured":          !s.HasAuth() || s.TokenConfigured(),
			"hasAuth":             s.HasAuth(),
			"authTokenConfigured": s.TokenConfigured(),
			"rateLimit":           info.RateLimit,
		}
		if showURLs {
			entry["baseUrl"] = info.BaseURL
		}
		list = append(list, entry)
	}
	configuration := map[string]any{
		"port":          localPort(r),
		"logging":       h.loggingInfo(),
		"services":      list,
		"servicesTotal": len(services),
		"cors":          h.corsInfo(),
		"strictTLS":     h.app.StrictTLSOn(),
		"timeoutMs":     time.Duration(h.app.Timeout).Milliseconds(),
		"auth": map[string]any{
			"proxyAuthRequired":      proxy != nil && proxy.Required,
			"managementAuthRequired": mgmt != nil && mgmt.Required,
		},
	}
	if truncated {
		configuration["servicesTruncated"] = true
	}
	if !showURLs {
		configuration["baseUrlsHidden"] = true
	}
	return http.StatusOK, map[string]any{
		"application": map[string]any{
			"name":        "ByteProxy",
			"version":     gateway.Version,
			"description": "API gateway for bots and services that call third-party APIs, built as Caddy modules",
		},
		"runtime": map[string]any{
			"go":         runtime.Version(),
			"platform":   runtime.GOOS + "/" + runtime.GOARCH,
			"uptime":     uptimeSeconds(),
			"goroutines": runtime.NumGoroutine(),
			"memory": map[string]any{
				"rss":       up.(pressure.UpBody).RSSBytes,
				"heapUsed":  ms.HeapAlloc,
				"heapTotal": ms.HeapSys,
				"sys":       ms.Sys,
				"numGC":     ms.NumGC,
				// The collector's settings (GOGC, GOMEMLIMIT), as the
				// process runs: the byteproxy binary's default GOGC is 200.
				"gcPercent":   gcSetting("/gc/gogc:percent"),
				"memoryLimit": gcSetting("/gc/gomemlimit:bytes"),
			},
		},
		"configuration": configuration,
		"components":    h.app.Statuses(),
	}
}

// buildInfo is what the binary was built from.
func buildInfo() map[string]any {
	b := gateway.Build()
	return map[string]any{"go": b.Go, "caddy": b.Caddy, "module": map[string]string{"path": gateway.ModulePath, "version": b.Module}}
}

func (h *Handler) version(*http.Request) (int, any) {
	bi := buildInfo()
	return http.StatusOK, map[string]any{
		"version":     "v" + gateway.Version,
		"semver":      gateway.Version,
		"environment": "prod",
		"builtWith":   map[string]any{"go": bi["go"], "caddy": bi["caddy"]},
		"module":      bi["module"],
	}
}

// proxyServices lists the services with their public description, at most
// gateway.PublicListLimit of them; count is the number of services.
func (h *Handler) proxyServices(*http.Request) (int, any) {
	services := h.app.AllServices()
	keys, truncated := gateway.ListedKeys(services)
	list := make([]gateway.ServiceInfo, 0, len(keys))
	for _, key := range keys {
		list = append(list, services[key].Info())
	}
	body := map[string]any{"services": list, "count": len(services)}
	if truncated {
		body["truncated"] = true
	}
	return http.StatusOK, body
}

// gcSetting reads one of the collector's settings from runtime/metrics
// (the GOGC percent, -1 when off; the memory limit in bytes).
func gcSetting(name string) int64 {
	sample := []metrics.Sample{{Name: name}}
	metrics.Read(sample)
	if sample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return int64(sample[0].Value.Uint64())
}
