package auth

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("byteproxy_auth", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("byteproxy_auth", httpcaddyfile.After, "forward_auth")
}

// parseCaddyfile sets up the handler from Caddyfile tokens.
//
//	byteproxy_auth <proxy|management>
func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	d := h.Dispenser
	hd := new(Handler)
	d.Next() // directive name
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	hd.Scope = d.Val()
	if hd.Scope != gateway.ScopeProxy && hd.Scope != gateway.ScopeManagement {
		return nil, d.Errf("unknown scope %q: want proxy or management", hd.Scope)
	}
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	if d.NextBlock(0) {
		return nil, d.Errf("unrecognized subdirective %q", d.Val())
	}
	return hd, nil
}
