package caddyfile

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/byteproxy/byteproxy/modules/gateway"
	"github.com/byteproxy/byteproxy/modules/route"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("byteproxy", parseSiteDirective)
	httpcaddyfile.RegisterDirectiveOrder("byteproxy", httpcaddyfile.Before, "php_fastcgi")
}

// parseSiteDirective sets up the whole gateway on a site (or under a
// matcher or handle_path) as one http.handlers.byteproxy handler: the
// standard route, compiled once (see modules/route):
//
//	cors on everything (so errors carry CORS headers too);
//	/proxy/*   -> pressure, auth proxy, rate limit, services, (informational)
//	/manage/*  -> pressure, auth management, manage
//	anything else -> manage's informational endpoints and JSON 404
//
// The gateway's settings live in the byteproxy global option, so the
// directive takes no arguments.
func parseSiteDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	return gateway.ParseBareDirective(h, new(route.Handler))
}
