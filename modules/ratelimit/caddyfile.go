package ratelimit

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("byteproxy_ratelimit", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("byteproxy_ratelimit", httpcaddyfile.Before, "encode")
}

// parseCaddyfile sets up the handler from Caddyfile tokens. The directive
// takes no arguments: the limits are the byteproxy app's (rate_limit on a
// service, client_rate_limit and redis in the global byteproxy block).
//
//	byteproxy_ratelimit
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	return gateway.ParseBareDirective(h, new(Handler))
}
