package gateway

import (
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Request variables that byteproxy handlers set for later handlers, logs
// and placeholders ({http.vars.byteproxy.client}, ...).
const (
	// VarClient holds the consumer id: a non-secret id of the API key used,
	// set by byteproxy_auth.
	VarClient = "byteproxy.client"
	// VarService holds the service key of a proxied request.
	VarService = "byteproxy.service"
	// VarScope holds the auth scope byteproxy_auth admitted the request to
	// ("proxy" or "management"); byteproxy_manage refuses /manage/* without
	// it, so a route that forgets the auth handler fails closed.
	VarScope = "byteproxy.scope"
	// VarAuthorization is true when the client's request carried an
	// Authorization header, which byteproxy_auth (proxy scope) removed
	// before the request went on. byteproxy_services reads it for upstream
	// routes that need the service's credential only when the client sent
	// one (Discord's webhook and interaction-callback routes).
	VarAuthorization = "byteproxy.client_authorization"
)

// AddLogField adds a field to the request's access log entry (Caddy's `log`
// directive), e.g. the service or the consumer id. A field with the same
// key replaces the earlier one. Never pass a secret.
func AddLogField(r *http.Request, f zap.Field) {
	// Without access logs on this server nobody reads the field, and
	// ExtraLogFields.Set allocates: skip it on the hot path.
	if srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok && srv.Logs == nil {
		return
	}
	if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Set(f)
	}
}
