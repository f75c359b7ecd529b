package caddyfile_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/byteproxy/byteproxy"
)

var update = flag.Bool("update", false, "rewrite the golden JSON of testdata/*.caddyfiletest")

const separator = "\n----------\n"

// TestAdaptGolden adapts each testdata/*.caddyfiletest (a Caddyfile, a line
// of dashes, the expected JSON) and compares the JSON.
func TestAdaptGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			input, want, ok := strings.Cut(string(raw), separator)
			if !ok {
				t.Fatalf("%s: no %q separator", file, strings.TrimSpace(separator))
			}
			got := adapt(t, input+"\n")
			if *update {
				if err := os.WriteFile(file, []byte(input+separator+got+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if got != strings.TrimSpace(want) {
				t.Errorf("adapted JSON differs from %s (run go test ./caddyfile -update to accept)\n--- got ---\n%s", file, got)
			}
		})
	}
}

func adapt(t *testing.T, input string) string {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	for _, w := range warnings {
		t.Errorf("warning: %s", w)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, out, "", "\t"); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestAdaptErrors checks that bad syntax is refused with a message that
// names the problem and the line.
func TestAdaptErrors(t *testing.T) {
	cases := []struct {
		name, input, want string
		line              int
	}{
		{"unknown option", "{\n byteproxy {\n  bogus 1\n }\n}\n:80 {\n byteproxy\n}", "unrecognized byteproxy option 'bogus'", 3},
		{"unknown preset", "{\n byteproxy {\n  service x nope\n }\n}", "unknown preset 'nope'", 3},
		{"bad key", "{\n byteproxy {\n  service a..b {\n   base_url https://x/\n  }\n }\n}", "invalid service key 'a..b'", 3},
		{"bad key character", "{\n byteproxy {\n  service a/b {\n   base_url https://x/\n  }\n }\n}", "invalid service key 'a/b'", 3},
		{"reserved key in capitals", "{\n byteproxy {\n  service Services {\n   base_url https://x/\n  }\n }\n}", "invalid service key 'Services'", 3},
		{"reserved key", "{\n byteproxy {\n  service services {\n   base_url https://x/\n  }\n }\n}", "invalid service key 'services'", 0},
		{"no base url", "{\n byteproxy {\n  service x {\n   name X\n  }\n }\n}", "service 'x' needs a base_url", 0},
		{"repeated timeout", "{\n byteproxy {\n  timeout 5s\n  timeout 10s\n }\n}", "'timeout' is set twice in the byteproxy global option (first on line 3)", 4},
		{"repeated pressure", "{\n byteproxy {\n  pressure {\n   max_cpu 0.9\n  }\n  pressure {\n  }\n }\n}", "'pressure' is set twice in the byteproxy global option (first on line 3)", 6},
		{"repeated auth scope", "{\n byteproxy {\n  auth proxy {\n   key k1\n  }\n  auth management {\n   key k2\n  }\n  auth proxy {\n   key k3\n  }\n }\n}", "'auth proxy' is set twice in the byteproxy global option", 9},
		{"duplicate service", "{\n byteproxy {\n  service github\n  service github\n }\n}", "service 'github' is defined twice", 4},
		{"bad rate limit", "{\n byteproxy {\n  service github {\n   rate_limit ten 1m\n  }\n }\n}", "max requests must be a positive integer, got 'ten'", 4},
		{"bad window", "{\n byteproxy {\n  client_rate_limit 10 soon\n }\n}", "window must be a positive duration, got 'soon'", 3},
		{"bad auth type", "{\n byteproxy {\n  service x {\n   base_url https://x/\n   auth digest t\n  }\n }\n}", "unknown auth type 'digest'", 5},
		{"header auth needs name", "{\n byteproxy {\n  service x {\n   base_url https://x/\n   auth header t\n  }\n }\n}", "auth header takes a name and a token", 0},
		{"bad scope", "{\n byteproxy {\n  auth admin {\n   key k\n  }\n }\n}", "unknown auth scope 'admin'", 3},
		{"auth_failures zero", "{\n byteproxy {\n  auth_failures 0 1m\n }\n}", "auth_failures: max failures must be a positive integer, got '0'", 3},
		{"auth_failures on", "{\n byteproxy {\n  auth_failures on\n }\n}", "auth_failures takes <max_failures> <window> (e.g. 20 1m) or off, got 'on'", 3},
		{"auth_failures one number", "{\n byteproxy {\n  auth_failures 5\n }\n}", "auth_failures takes <max_failures> <window> (e.g. 20 1m) or off, got '5'", 3},
		{"auth_failures bad window", "{\n byteproxy {\n  auth_failures 5 soon\n }\n}", "auth_failures: window must be a positive duration, got 'soon'", 3},
		{"bad bool", "{\n byteproxy {\n  strict_tls maybe\n }\n}", "want on or off (true or false), got 'maybe'", 3},
		{"bad size", "{\n byteproxy {\n  pressure {\n   max_heap lots\n  }\n }\n}", "want a size such as 512MiB, got 'lots'", 4},
		{"zero max_services", "{\n byteproxy {\n  runtime_services {\n   max_services 0\n  }\n }\n}", "max_services must be at least 1", 4},
		{"bad max_services", "{\n byteproxy {\n  runtime_services {\n   max_services many\n  }\n }\n}", "want a non-negative integer, got 'many'", 4},

		{"bad max_in_flight", "{\n byteproxy {\n  pressure {\n   max_in_flight -1\n  }\n }\n}", "max_in_flight: want a number of requests or off, got '-1'", 4},
		{"auth directive scope", ":80 {\n byteproxy_auth everyone\n}", "unknown scope \"everyone\"", 2},
		{"bare directive argument", ":80 {\n byteproxy_services github\n}", "byteproxy_services takes no arguments", 2},
		{"bare directive block", ":80 {\n byteproxy_ratelimit {\n  rate 5\n }\n}", "unrecognized subdirective 'rate'", 3},
		{"byteproxy directive block", ":80 {\n byteproxy {\n  service x\n }\n}", "unrecognized subdirective 'service'", 3},
		{"byteproxy directive argument", ":80 {\n byteproxy all\n}", "byteproxy takes no arguments", 2},
		{"rate_limit one argument", "{\n byteproxy {\n  service github {\n   rate_limit 100\n  }\n }\n}", "rate_limit takes <max_requests> <window>, e.g. rate_limit 100 1m; got 1 argument(s)", 4},
		{"client_rate_limit one argument", "{\n byteproxy {\n  client_rate_limit 600\n }\n}", "client_rate_limit takes <max_requests> <window>", 3},
		{"rate_limit bad count names the option", "{\n byteproxy {\n  client_rate_limit -5 1m\n }\n}", "client_rate_limit: max requests must be a positive integer, got '-5'", 3},
		{"two global blocks", "{\n byteproxy {\n  service github\n }\n byteproxy {\n  service discord\n }\n}", "the byteproxy global option may appear only once", 5},
		{"max_cpu as a percentage", "{\n byteproxy {\n  pressure {\n   max_cpu 98\n  }\n }\n}", "max_cpu: 98 would mean 9,800% of GOMAXPROCS; it is a fraction between 0 and 1; did you mean 0.98?", 4},
		{"max_cpu far above 1", "{\n byteproxy {\n  pressure {\n   max_cpu 250\n  }\n }\n}", "max_cpu: 250 would mean 25,000% of GOMAXPROCS; it is a fraction between 0 and 1", 4},
		{"upstream_limits bad switch", "{\n byteproxy {\n  service github {\n   upstream_limits maybe\n  }\n }\n}", "upstream_limits takes on or off, got 'maybe'", 4},
		{"upstream_limits off with settings", "{\n byteproxy {\n  service github {\n   upstream_limits off {\n    max_wait 1s\n   }\n  }\n }\n}", "upstream_limits off takes no settings", 5},
		{"http_version unknown", "{\n byteproxy {\n  service api {\n   base_url https://a.example/\n   http_version 3\n  }\n }\n}", "http_version takes auto, 1.1 or 2, got '3'", 5},
		{"http_version no value", "{\n byteproxy {\n  service api {\n   base_url https://a.example/\n   http_version\n  }\n }\n}", "wrong argument count", 5},
		{"upstream_limits twice", "{\n byteproxy {\n  service github {\n   upstream_limits\n   upstream_limits off\n  }\n }\n}", "upstream_limits may appear only once per service", 5},
		{"upstream_limits unknown", "{\n byteproxy {\n  service github {\n   upstream_limits {\n    max_hold 1s\n   }\n  }\n }\n}", "unrecognized upstream_limits subdirective 'max_hold'", 5},
		{"upstream_limits bad max_wait", "{\n byteproxy {\n  service github {\n   upstream_limits {\n    max_wait soon\n   }\n  }\n }\n}", "max_wait: want a duration such as 5s or 1500ms, got 'soon'", 5},
		{"upstream_limits global_limit", "{\n byteproxy {\n  service discord {\n   upstream_limits {\n    global_limit 0\n   }\n  }\n }\n}", "global_limit: want a positive number of requests, got '0'", 5},
		{"upstream_limits ban_threshold", "{\n byteproxy {\n  service discord {\n   upstream_limits {\n    ban_threshold many 10m\n   }\n  }\n }\n}", "ban_threshold: want a positive number of invalid responses or off, got 'many'", 5},
		{"upstream_limits weight", "{\n byteproxy {\n  service discord {\n   upstream_limits {\n    weight key:1 -2\n   }\n  }\n }\n}", "weight: want a positive number, got '-2'", 5},
		{"upstream_limits headers", "{\n byteproxy {\n  service x {\n   base_url https://x/\n   upstream_limits {\n    headers x-ratelimit soon\n   }\n  }\n }\n}", "headers x-ratelimit: want epoch or delta for X-RateLimit-Reset, got 'soon'", 6},
		{"upstream_limits max_in_flight", "{\n byteproxy {\n  service github {\n   upstream_limits {\n    max_in_flight 0\n   }\n  }\n }\n}", "max_in_flight: want a number of at least 1, or off, got '0'", 5},
		{"max_cpu not a number", "{\n byteproxy {\n  pressure {\n   max_cpu most\n  }\n }\n}", "max_cpu: want a fraction between 0 and 1, such as 0.98, got 'most'", 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(tc.input), map[string]any{"filename": "Caddyfile"})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
			if at := fmt.Sprintf("Caddyfile:%d", tc.line); tc.line > 0 && !strings.Contains(err.Error(), at) {
				t.Errorf("error %q does not name the line (%s)", err, at)
			}
		})
	}
}
