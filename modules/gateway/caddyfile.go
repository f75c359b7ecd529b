package gateway

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// ParseBareDirective parses a byteproxy handler directive that takes no
// arguments and no block (its settings live in the byteproxy global
// option) and returns handler.
func ParseBareDirective(h httpcaddyfile.Helper, handler caddyhttp.MiddlewareHandler) (caddyhttp.MiddlewareHandler, error) {
	d := h.Dispenser
	d.Next() // directive name
	name := d.Val()
	if d.NextArg() {
		return nil, d.Errf("%s takes no arguments; its settings go in the byteproxy global option", name)
	}
	if d.NextBlock(0) {
		return nil, d.Errf("unrecognized subdirective '%s'; settings go in the byteproxy global option", d.Val())
	}
	return handler, nil
}
