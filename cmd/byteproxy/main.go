// Command byteproxy is Caddy's own command line with Caddy's standard
// modules and every ByteProxy module built in:
//
//	byteproxy run --config Caddyfile.example
//	byteproxy version
package main

import (
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// Caddy's standard modules.
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// ByteProxy's modules and Caddyfile support.
	_ "github.com/byteproxy/byteproxy"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

func main() {
	// Caddy's `version` command prints Caddy's version alone and cannot be
	// replaced (its command registry refuses a second "version"), so the
	// plain forms are answered here, before Caddy's command line.
	if len(os.Args) == 2 && isVersionArg(os.Args[1]) {
		printVersion(os.Stdout)
		return
	}
	setGCDefault()
	caddycmd.Main()
}

// defaultGCPercent is the binary's GOGC when the environment sets none.
// A gateway's live heap is small and its garbage is per request, so the
// collector's work follows the allocation rate: at Go's 100 it took about
// a sixth of the gateway's CPU under load. 200 cut the CPU per request by
// 18% in the load bench (121.5 to 99.8 µs to a plain-http upstream; 400
// gave 102.8), for a heap that peaks at three times the live one instead
// of two. The memory limit Caddy sets from the cgroup or the machine
// (GOMEMLIMIT, automemlimit) still makes the collector run earlier near
// that limit, and GOGC in the environment overrides this default.
const defaultGCPercent = 200

func setGCDefault() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(defaultGCPercent)
	}
}

func isVersionArg(arg string) bool {
	return arg == "version" || arg == "--version" || arg == "-v"
}

// printVersion writes ByteProxy's version, then Caddy's as `caddy version`
// prints it:
//
//	byteproxy v0.2.0 (module github.com/byteproxy/byteproxy (devel), go1.26.8)
//	caddy v2.11.9 h1:...
func printVersion(w io.Writer) {
	b := gateway.Build()
	_, full := caddy.Version()
	fmt.Fprintf(w, "byteproxy v%s (module %s %s, %s)\n", gateway.Version, gateway.ModulePath, b.Module, b.Go)
	fmt.Fprintf(w, "caddy %s\n", full)
}
