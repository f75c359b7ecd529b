package manage

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("byteproxy_manage", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("byteproxy_manage", httpcaddyfile.After, "reverse_proxy")
}

// parseCaddyfile sets up the handler from Caddyfile tokens.
//
//	byteproxy_manage
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
