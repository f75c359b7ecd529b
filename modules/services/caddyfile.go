package services

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("byteproxy_services", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("byteproxy_services", httpcaddyfile.Before, "reverse_proxy")
}

// parseCaddyfile sets up the handler from Caddyfile tokens. The directive
// takes no arguments: the services it proxies to are configured in the
// byteproxy global option. It forwards /proxy/{service}/... and passes
// every other request on, so it composes with other handlers:
//
//	byteproxy_services
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	return gateway.ParseBareDirective(h, new(Handler))
}
