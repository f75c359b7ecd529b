package cors

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("byteproxy_cors", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("byteproxy_cors", httpcaddyfile.After, "log_level")
}

// parseCaddyfile sets up the handler from Caddyfile tokens.
//
//	byteproxy_cors
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	return gateway.ParseBareDirective(h, new(Handler))
}
