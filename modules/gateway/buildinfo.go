package gateway

import (
	"runtime"
	"runtime/debug"
	"sync"
)

// ModulePath is this Go module's path.
const ModulePath = "github.com/byteproxy/byteproxy"

// BuildVersions is what the running binary was built from, as the Go
// build info records it.
type BuildVersions struct {
	// Go is the Go version that built the binary.
	Go string
	// Caddy is Caddy's module version, "unknown" without build info.
	Caddy string
	// Module is this module's version: a tag or pseudo-version when it is
	// a dependency (xcaddy), "(devel)" or a VCS-stamped version when it is
	// the main module (cmd/byteproxy), "unknown" without build info. A
	// module replaced by a local directory (xcaddy --with ...=./path)
	// reports the version it stands in for.
	Module string
}

// Build returns the binary's build versions; the build info is read once.
var Build = sync.OnceValue(func() BuildVersions {
	out := BuildVersions{Go: runtime.Version(), Caddy: "unknown", Module: "unknown"}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return out
	}
	for _, m := range append([]*debug.Module{&bi.Main}, bi.Deps...) {
		// Match on the path the code imports, not the replacement's (a
		// local replacement's Path is a directory).
		version := m.Version
		if m.Replace != nil && m.Replace.Version != "" {
			version = m.Replace.Version
		}
		switch m.Path {
		case "github.com/caddyserver/caddy/v2":
			out.Caddy = version
		case ModulePath:
			out.Module = version
		}
	}
	return out
})
