package caddyfile

import (
	"encoding/json"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/byteproxy/byteproxy/modules/auth"
	"github.com/byteproxy/byteproxy/modules/cors"
	"github.com/byteproxy/byteproxy/modules/gateway"
	"github.com/byteproxy/byteproxy/modules/manage"
	"github.com/byteproxy/byteproxy/modules/pressure"
	"github.com/byteproxy/byteproxy/modules/ratelimit"
	"github.com/byteproxy/byteproxy/modules/services"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("byteproxy", parseSiteDirective)
	httpcaddyfile.RegisterDirectiveOrder("byteproxy", httpcaddyfile.Before, "php_fastcgi")
}

// parseSiteDirective expands `byteproxy` into the gateway's standard route:
//
//	cors on everything (so errors carry CORS headers too);
//	/proxy/*   -> pressure, auth proxy, rate limit, services, (informational)
//	/manage/*  -> pressure, auth management, manage
//	anything else -> manage's informational endpoints and JSON 404
func parseSiteDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	d := h.Dispenser
	d.Next() // "byteproxy"
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	if d.NextBlock(0) {
		return nil, d.Errf("unrecognized subdirective '%s'; gateway settings go in the byteproxy global option", d.Val())
	}
	var warnings []caddyconfig.Warning
	handler := func(name string, v caddyhttp.MiddlewareHandler) json.RawMessage {
		return caddyconfig.JSONModuleObject(v, "handler", name, &warnings)
	}
	pathMatch := func(paths ...string) caddy.ModuleMap {
		return caddy.ModuleMap{"path": caddyconfig.JSON(caddyhttp.MatchPath(paths), &warnings)}
	}
	sub := &caddyhttp.Subroute{Routes: caddyhttp.RouteList{
		{HandlersRaw: []json.RawMessage{handler("byteproxy_cors", new(cors.Handler))}},
		{
			MatcherSetsRaw: []caddy.ModuleMap{pathMatch("/proxy/*")},
			HandlersRaw: []json.RawMessage{
				handler("byteproxy_pressure", new(pressure.Handler)),
				handler("byteproxy_auth", &auth.Handler{Scope: gateway.ScopeProxy}),
				handler("byteproxy_ratelimit", new(ratelimit.Handler)),
				handler("byteproxy_services", new(services.Handler)),
				handler("byteproxy_manage", new(manage.Handler)),
			},
			Terminal: true,
		},
		{
			MatcherSetsRaw: []caddy.ModuleMap{pathMatch("/manage", "/manage/*")},
			HandlersRaw: []json.RawMessage{
				handler("byteproxy_pressure", new(pressure.Handler)),
				handler("byteproxy_auth", &auth.Handler{Scope: gateway.ScopeManagement}),
				handler("byteproxy_manage", new(manage.Handler)),
			},
			Terminal: true,
		},
		{HandlersRaw: []json.RawMessage{handler("byteproxy_manage", new(manage.Handler))}},
	}}
	return sub, nil
}
