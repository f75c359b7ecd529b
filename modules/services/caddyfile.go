package services

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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
	d := h.Dispenser
	hd := new(Handler)
	d.Next() // directive name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	if d.NextBlock(0) {
		return nil, d.Errf("unrecognized subdirective %q", d.Val())
	}
	return hd, nil
}
