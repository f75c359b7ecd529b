// Command byteproxy is Caddy's own command line with Caddy's standard
// modules and every ByteProxy module built in:
//
//	byteproxy run --config Caddyfile.example
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// Caddy's standard modules.
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// ByteProxy's modules and Caddyfile support.
	_ "github.com/byteproxy/byteproxy"
)

func main() {
	caddycmd.Main()
}
