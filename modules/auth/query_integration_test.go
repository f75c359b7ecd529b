package auth

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

// queryKeyConfig: the whole gateway with one service on a recording
// upstream, so a request goes through byteproxy_auth and then either
// forwarding path of byteproxy_services (the lean path for a GET without a
// body, the Transport for a POST with one). The access log has the filter
// docs/OPERATIONS.md prescribes, with its optional line for a key sent
// under the upper-case name (no key, but Caddy logs the request as it
// arrived).
const queryKeyConfig = `{
	byteproxy {
		auth proxy {
			key {env.BP_TEST_PROXY_KEY}
		}
		auth management {
			key {env.BP_TEST_MGMT_KEY}
		}
		service rec {
			base_url http://127.0.0.1:%d/base/
		}
	}
}

:{{PORT}} {
	log {
		format filter {
			request>headers>X-Api-Key delete
			request>uri query {
				delete api_key
				delete API_KEY
			}
		}
	}
	byteproxy
}
`

// TestQueryKeySpellings: one rule decides what is a key in the query and
// what is stripped before the request goes upstream ('&' and ';' separate
// parameters, names are percent-decoded; only "api_key" exactly is a key,
// any letter case is stripped). A key is accepted or refused the same way
// on both forwarding paths, and the upstream never sees any spelling of
// the parameter.
func TestQueryKeySpellings(t *testing.T) {
	rec := newRecorder(t)
	in := testutil.Start(t, fmt.Sprintf(queryKeyConfig, rec.port()), testutil.Options{Env: keyEnv})
	// notKey stands for a value the client put under a near-miss name: no
	// key for the gateway, and still never forwarded.
	const notKey = "Nk4HsQ8vL2xT6pW0"
	cases := []struct {
		name, query string
		headers     []string
		status      int
		wantQuery   string
	}{
		{"semicolon", "x=1;api_key=" + proxyKey, nil, 200, "x=1"},
		{"semicolon first", "api_key=" + proxyKey + ";x=1&y=2", nil, 200, "x=1&y=2"},
		{"semicolon between", "a=1;api_key=" + proxyKey + ";b=2", nil, 200, "a=1;b=2"},
		{"semicolon beside a header key", "x=1;api_key=" + notKey, []string{"X-API-Key", proxyKey}, 200, "x=1"},
		{"encoded name", "%61pi_key=" + proxyKey + "&z=%7E", nil, 200, "z=%7E"},
		{"encoded name after semicolon", "z=1;%61pi%5Fkey=" + proxyKey, nil, 200, "z=1"},
		{"upper case is no key", "API_KEY=" + proxyKey, nil, 401, ""},
		{"upper case stripped", "x=1&API_KEY=" + notKey + ";Api_Key=" + notKey, []string{"X-API-Key", proxyKey}, 200, "x=1"},
		{"bare name stripped", "api_key&x=1;api_key", []string{"X-API-Key", proxyKey}, 200, "x=1"},
		{"empty value is no key", "api_key=;x=1", nil, 401, ""},
		{"semicolon, wrong key", "x=1;api_key=" + notKey, nil, 401, ""},
		{"second of two", "api_key=" + notKey + ";api_key=" + proxyKey, nil, 401, ""},
	}
	for _, c := range cases {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			t.Run(c.name+"/"+method, func(t *testing.T) {
				var body []byte
				if method == http.MethodPost {
					body = []byte(`{"a":1}`)
				}
				resp, raw := testutil.Do(t, method, in.URL("/proxy/rec/p?"+c.query), body, c.headers...)
				up := rec.take()
				if resp.StatusCode != c.status {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, raw)
				}
				assertNoKeyMaterial(t, "response", string(raw), proxyKey)
				if c.status != 200 {
					if up != nil {
						t.Fatal("a refused request reached the upstream")
					}
					return
				}
				if up == nil {
					t.Fatal("the upstream saw nothing")
				}
				if up.URL.RawQuery != c.wantQuery || up.URL.Path != "/base/p" {
					t.Errorf("upstream got %q ? %q, want /base/p ? %q", up.URL.Path, up.URL.RawQuery, c.wantQuery)
				}
				var dump strings.Builder
				_ = up.Write(&dump)
				assertNoKeyMaterial(t, "upstream request", dump.String(), proxyKey, notKey)
				if strings.Contains(strings.ToLower(dump.String()), "api_key") {
					t.Errorf("the upstream saw the parameter: %q", up.URL.RawQuery)
				}
			})
		}
	}
	assertNoKeyMaterial(t, "log", in.Logs(), proxyKey)
}
