// Package byteproxy pulls in every ByteProxy module and its Caddyfile
// support, so that, from a checkout of the repository,
//
//	xcaddy build --with github.com/byteproxy/byteproxy@v0.2.0=.
//
// builds a Caddy with the whole gateway (the version only names what Go
// records; the code is the local copy).
package byteproxy

import (
	_ "github.com/byteproxy/byteproxy/caddyfile"
	_ "github.com/byteproxy/byteproxy/modules/auth"
	_ "github.com/byteproxy/byteproxy/modules/cors"
	_ "github.com/byteproxy/byteproxy/modules/gateway"
	_ "github.com/byteproxy/byteproxy/modules/manage"
	_ "github.com/byteproxy/byteproxy/modules/pressure"
	_ "github.com/byteproxy/byteproxy/modules/ratelimit"
	_ "github.com/byteproxy/byteproxy/modules/route"
	_ "github.com/byteproxy/byteproxy/modules/services"
)
