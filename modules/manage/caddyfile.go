package manage

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("byteproxy_manage", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("byteproxy_manage", httpcaddyfile.After, "reverse_proxy")
}

// parseCaddyfile sets up the handler from Caddyfile tokens.
//
//	byteproxy_manage
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	return gateway.ParseBareDirective(h, new(Handler))
}
