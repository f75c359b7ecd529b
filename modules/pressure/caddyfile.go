package pressure

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("byteproxy_pressure", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("byteproxy_pressure", httpcaddyfile.After, "header")
}

// parseCaddyfile sets up the handler from Caddyfile tokens.
//
//	byteproxy_pressure
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	return gateway.ParseBareDirective(h, new(Handler))
}
