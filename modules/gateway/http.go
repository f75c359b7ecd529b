package gateway

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
