package manage

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/internal/routes"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// serveManage routes /manage and /manage/* (p), a trailing slash ignored.
func (h *Handler) serveManage(w http.ResponseWriter, r *http.Request, p string) error {
	if needsJSON(r) {
		return unsupportedMediaType(w, r)
	}
	p = strings.TrimSuffix(p, "/")
	switch {
	case p == routes.ManageServices:
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			return h.listServices(w)
		case http.MethodPost:
			return h.addService(w, r)
		}
		return methodNotAllowed(w, r, routes.ManageServices)
	case p == routes.ManageDiagnostics:
		if !isRead(r) {
			return methodNotAllowed(w, r, routes.ManageDiagnostics)
		}
		return h.diagnostics(w)
	case strings.HasPrefix(p, routes.ManageServices+"/"):
		key, action, _ := strings.Cut(p[len(routes.ManageServices)+1:], "/")
		switch action {
		case "": // routes.ManageService
			return h.serveService(w, r, key)
		case "test": // routes.ManageServiceTest
			if r.Method != http.MethodPost {
				return methodNotAllowed(w, r, routes.ManageServiceTest)
			}
			return h.testService(w, r, key)
		}
	}
	// /manage/key-debug is answered by byteproxy_auth; without it in the
	// route it is unknown here, like any other path.
	return notFound(w, r)
}

func (h *Handler) serveService(w http.ResponseWriter, r *http.Request, key string) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		svc := h.app.Service(key)
		if svc == nil {
			return serviceNotFound(w, key)
		}
		return httpx.WriteJSON(w, http.StatusOK, map[string]any{"key": key, "config": viewOf(svc), "source": svc.Source})
	case http.MethodPut:
		return h.replaceService(w, r, key)
	case http.MethodDelete:
		return h.deleteService(w, r, key)
	}
	return methodNotAllowed(w, r, routes.ManageService)
}

// listEntry is one service in GET /manage/services.
type listEntry struct {
	gateway.ServiceInfo
	AuthConfigured bool   `json:"authConfigured"`
	Source         string `json:"source"`
}

func (h *Handler) listServices(w http.ResponseWriter) error {
	services := h.app.AllServices()
	list := make([]listEntry, 0, len(services))
	for _, key := range gateway.SortedKeys(services) {
		s := services[key]
		list = append(list, listEntry{ServiceInfo: s.Info(), AuthConfigured: s.HasAuth() && s.TokenConfigured(), Source: s.Source})
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{"services": list, "count": len(list)})
}

func (h *Handler) addService(w http.ResponseWriter, r *http.Request) error {
	release, ok := h.pressure.Reserve(bodyHold(r))
	if !ok {
		return h.pressure.Refuse(w, r, maxBodyBytes)
	}
	defer release()
	body, e := readBody(w, r)
	if e != nil {
		return e.Write(w)
	}
	key, cfg, e := decodeService(body, "")
	if e != nil {
		return e.Write(w)
	}
	if _, preset := gateway.Presets[key]; preset || h.app.IsConfigService(key) {
		return exists(w, key)
	}
	svc, err := h.app.PutRuntime(r.Context(), key, cfg, true)
	if err != nil {
		return h.changeFailed(w, key, err)
	}
	return stored(w, http.StatusCreated, "added", svc)
}

func (h *Handler) replaceService(w http.ResponseWriter, r *http.Request, key string) error {
	if h.app.IsConfigService(key) {
		return configDefined(w, key)
	}
	if e := checkKey(key); e != nil {
		return serviceNotFound(w, key)
	}
	release, ok := h.pressure.Reserve(bodyHold(r))
	if !ok {
		return h.pressure.Refuse(w, r, maxBodyBytes)
	}
	defer release()
	body, e := readBody(w, r)
	if e != nil {
		return e.Write(w)
	}
	_, cfg, e := decodeService(body, key)
	if e != nil {
		return e.Write(w)
	}
	keepRedacted(&cfg, h.app.Service(key))
	svc, err := h.app.PutRuntime(r.Context(), key, cfg, false)
	if err != nil {
		return h.changeFailed(w, key, err)
	}
	return stored(w, http.StatusOK, "updated", svc)
}

// stored answers a durable add or replacement with the service as stored.
func stored(w http.ResponseWriter, status int, verb string, svc *gateway.Service) error {
	return httpx.WriteJSON(w, status, map[string]any{
		"message": fmt.Sprintf("Service '%s' %s successfully", svc.Key, verb),
		"key":     svc.Key,
		"config":  viewOf(svc),
	})
}

func (h *Handler) deleteService(w http.ResponseWriter, r *http.Request, key string) error {
	if h.app.IsConfigService(key) {
		return configDefined(w, key)
	}
	if checkKey(key) != nil {
		return serviceNotFound(w, key)
	}
	if err := h.app.DeleteRuntime(r.Context(), key); err != nil {
		return h.changeFailed(w, key, err)
	}
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"message": fmt.Sprintf("Service '%s' deleted successfully", key),
		"key":     key,
	})
}

// changeFailed maps a registry error onto its answer.
func (h *Handler) changeFailed(w http.ResponseWriter, key string, err error) error {
	if e, ok := fromFieldError(err); ok {
		return e.Write(w)
	}
	switch {
	case errors.Is(err, gateway.ErrExists):
		return exists(w, key)
	case errors.Is(err, gateway.ErrNotFound):
		return serviceNotFound(w, key)
	case errors.Is(err, gateway.ErrConfigDefined):
		return configDefined(w, key)
	case errors.Is(err, gateway.ErrTooManyServices):
		return h.tooManyServices(w, key)
	case errors.Is(err, gateway.ErrKeyCase):
		var ce *gateway.KeyCaseError
		errors.As(err, &ce)
		return httpx.WriteJSON(w, http.StatusConflict, map[string]any{
			"error": fmt.Sprintf("Service '%s' not added: the service '%s' exists, and keys may not differ only in letter case", key, ce.Existing),
			"field": "key",
		})
	}
	h.logger.Error("changing a runtime service failed", zap.String("service", key), zap.Error(err))
	return httpx.WriteJSON(w, http.StatusInternalServerError, map[string]any{
		"error":   "Storage error",
		"message": "The change could not be stored and was not made; see the gateway log",
	})
}

func exists(w http.ResponseWriter, key string) error {
	return httpx.WriteJSON(w, http.StatusConflict, map[string]any{"error": fmt.Sprintf("Service '%s' already exists", key)})
}

func serviceNotFound(w http.ResponseWriter, key string) error {
	return httpx.WriteJSON(w, http.StatusNotFound, map[string]any{"error": fmt.Sprintf("Service '%s' not found", shortPath(key))})
}

// tooManyServices answers 409: the request is valid, the registry is full.
func (h *Handler) tooManyServices(w http.ResponseWriter, key string) error {
	limit := h.app.MaxRuntimeServices()
	return httpx.WriteJSON(w, http.StatusConflict, map[string]any{
		"error":       fmt.Sprintf("Service '%s' not added: at most %d runtime services may exist (runtime_services max_services); delete one first", key, limit),
		"field":       "key",
		"maxServices": limit,
	})
}

func configDefined(w http.ResponseWriter, key string) error {
	return httpx.WriteJSON(w, http.StatusConflict, map[string]any{
		"error":  fmt.Sprintf("Service '%s' is defined in the Caddy config; change it in the Caddy config", key),
		"source": "config",
	})
}

// testService probes a service's base URL with a HEAD request through the
// service's own transport (its timeout, TLS settings and dial guard) and
// default headers. The credential is not sent: reachability needs none,
// and a probe must not spend the upstream's quota. Any HTTP answer counts
// as reachable; no answer is 502 with the reason and hints.
func (h *Handler) testService(w http.ResponseWriter, r *http.Request, key string) error {
	svc := h.app.Service(key)
	if svc == nil {
		return serviceNotFound(w, key)
	}
	timeout := svc.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	target := svc.BaseURL.String()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, target, nil)
	if err != nil {
		return h.unreachable(w, svc, err, 0)
	}
	for k, v := range svc.Headers {
		req.Header[k] = v
	}
	client := &http.Client{
		Transport:     svc.Transport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	start := time.Now()
	resp, err := client.Do(req)
	took := time.Since(start)
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			err = fmt.Errorf("no answer within the service's timeout of %s", timeout)
		}
		return h.unreachable(w, svc, err, took)
	}
	resp.Body.Close()
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"service":        key,
		"status":         "reachable",
		"responseStatus": resp.StatusCode,
		"duration":       fmt.Sprintf("%dms", took.Milliseconds()),
		"baseUrl":        svc.RedactURL(svc.BaseURL),
	})
}

func (h *Handler) unreachable(w http.ResponseWriter, svc *gateway.Service, err error, took time.Duration) error {
	var tlsHelp any
	if httpx.IsTLSError(err) {
		tlsHelp = map[string]any{
			"issue": "The upstream's TLS certificate could not be verified",
			"solutions": []string{
				"Check that the upstream serves a certificate valid for its host name and a complete chain",
				"Install the issuing CA in the gateway host's trust store if it is a private CA",
				"For this service only: set tls_insecure_skip_verify in its Caddy config (not recommended)",
				"For every service: strict_tls off in the byteproxy global option (not recommended; STRICT_TLS=false)",
			},
			"strictTLS": h.app.StrictTLSOn(),
		}
	}
	return httpx.WriteJSON(w, http.StatusBadGateway, map[string]any{
		"service":  svc.Key,
		"status":   "unreachable",
		"error":    svc.Redact(err.Error()),
		"duration": fmt.Sprintf("%dms", took.Milliseconds()),
		"baseUrl":  svc.RedactURL(svc.BaseURL),
		"troubleshooting": map[string]any{
			"suggestions": []string{
				"Check that the base URL is correct",
				"Check that the upstream is running and reachable from the gateway host (DNS, firewall, proxy)",
				"If the upstream is slow, raise the service's timeout",
				"Private and loopback upstreams of runtime services need runtime_services allow_private_upstreams",
			},
			"tlsHelp": tlsHelp,
		},
	})
}

// diagnostics reports settings useful when something does not work. It
// names the environment variable of each token and whether it is set —
// never any part of a token.
func (h *Handler) diagnostics(w http.ResponseWriter) error {
	services := h.app.AllServices()
	authInfo := make(map[string]any, len(services))
	for _, key := range gateway.SortedKeys(services) {
		s := services[key]
		if !s.HasAuth() {
			continue
		}
		authInfo[key] = map[string]any{"tokenConfigured": s.TokenConfigured(), "envVar": s.TokenEnv, "authType": s.AuthType()}
	}
	now := time.Now()
	zone, offset := now.Zone()
	rs := h.app.RuntimeServices
	runtimeInfo := map[string]any{}
	if rs != nil {
		runtimeInfo = map[string]any{
			"tokenEnv":              append([]string{}, rs.TokenEnv...), // [] rather than null
			"allowPrivateUpstreams": rs.AllowPrivateUpstreams,
			"syncInterval":          time.Duration(rs.SyncInterval).String(),
		}
	}
	retries := 0
	if h.app.Retries != nil {
		retries = *h.app.Retries
	}
	host, _ := os.Hostname()
	return httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"system": map[string]any{
			"goVersion":  runtime.Version(),
			"platform":   runtime.GOOS + "/" + runtime.GOARCH,
			"uptime":     uptimeSeconds(),
			"goroutines": runtime.NumGoroutine(),
			"cpus":       runtime.GOMAXPROCS(0),
			"hostname":   host,
		},
		"network": map[string]any{
			"strictTLS": h.app.StrictTLSOn(),
			"timeout":   time.Duration(h.app.Timeout).Milliseconds(),
			"retries":   retries,
		},
		"environment": map[string]any{
			"timeZone":    zone,
			"utcOffset":   offset / 60,
			"currentTime": now.UTC().Format(time.RFC3339Nano),
		},
		"authentication":  authInfo,
		"runtimeServices": runtimeInfo,
		"troubleshooting": map[string]any{
			"authIssues": []string{
				"tokenConfigured false: set the named environment variable for the gateway process and reload",
				"An upstream 401 with tokenConfigured true: the token is wrong or lacks the needed scopes",
			},
			"tlsIssues": []string{
				"Certificate errors: POST /manage/services/{key}/test shows TLS hints",
			},
		},
	})
}
