package cors

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("byteproxy_cors", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("byteproxy_cors", httpcaddyfile.After, "log_level")
}

// parseCaddyfile sets up the handler from Caddyfile tokens.
//
//	byteproxy_cors
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
