package services

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

const proxyErrorCaddyfile = `{
	byteproxy {
		auth proxy {
			key {env.PE_PROXY_KEY}
		}
		auth_failures 3 1m
		timeout 5s
		retries 0
		cors {
			origins https://app.example
		}
		pressure {
			max_in_flight 1
		}
		service open {
			base_url http://{{UP}}/
		}
		service limited {
			base_url http://{{UP}}/
			rate_limit 1 1h
		}
		service nobot {
			base_url http://{{UP}}/
			auth bot {env.BP_TEST_UNSET_TOKEN}
		}
		service github {
			base_url http://{{UP}}/
		}
		service discord {
			base_url http://{{UP}}/api/
			version v10 http://{{UP}}/api/v10/
		}
		service slow {
			base_url http://{{UP}}/
			timeout 300ms
		}
		service down {
			base_url http://{{DOWN}}/
		}
	}
}

:{{PORT}} {
	byteproxy
}
`

const proxyErrorKey = "pe-proxy-key-8e6d4c2a0b"

// TestGatewayErrorsMarked: every JSON error the gateway makes itself on
// /proxy/* carries X-Proxy-Error: true, and X-Proxy-Service once the
// request reached a known service; answers the upstream made (its own 404
// and 500 included) carry no X-Proxy-Error.
func TestGatewayErrorsMarked(t *testing.T) {
	hold := make(chan struct{})
	held := make(chan struct{}, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/status/"):
			var code int
			fmt.Sscanf(r.URL.Path, "/status/%d", &code)
			w.WriteHeader(code)
			io.WriteString(w, `{"upstream":true}`)
		case r.URL.Path == "/slow":
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		case r.URL.Path == "/hold":
			held <- struct{}{}
			<-hold
		case strings.HasPrefix(r.URL.Path, "/api/"):
			w.Header().Set("X-Got-Content-Type", r.Header.Get("Content-Type"))
		}
	}))
	defer up.Close()
	cf := strings.NewReplacer("{{UP}}", strings.TrimPrefix(up.URL, "http://"),
		"{{DOWN}}", fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))).Replace(proxyErrorCaddyfile)
	in := testutil.Start(t, cf, testutil.Options{Env: []string{"PE_PROXY_KEY=" + proxyErrorKey, "BP_TEST_UNSET_TOKEN=", "DISCORD_BOT_TOKEN=" + tokens["DISCORD_BOT_TOKEN"]}})
	key := []string{"X-API-Key", proxyErrorKey}

	cases := []struct {
		name, method, path string
		headers            []string
		status             int
		service            string // X-Proxy-Service, "" for none
	}{
		{"github /org/ hint", "GET", "/proxy/github/org/acme", key, 400, "github"},
		{"dot segment", "GET", "/proxy/open/a/%2e%2e/b", key, 400, "open"},
		{"upgrade", "GET", "/proxy/open/x", append([]string{"Connection", "Upgrade", "Upgrade", "h2c"}, key...), 400, "open"},
		{"no key", "GET", "/proxy/open/x", nil, 401, ""},
		{"wrong key", "GET", "/proxy/open/x", []string{"Authorization", "Bot wrong"}, 401, ""},
		{"service token missing", "GET", "/proxy/nobot/x", key, 401, "nobot"},
		{"CORS origin refused", "OPTIONS", "/proxy/open/x", []string{"Origin", "https://evil.example", "Access-Control-Request-Method", "GET"}, 403, ""},
		{"unknown service", "GET", "/proxy/nope/x", key, 404, ""},
		{"no trailing slash", "GET", "/proxy/open", key, 404, ""},
		{"TRACE", "TRACE", "/proxy/open/x", key, 405, "open"},
		{"POST /proxy/services", "POST", "/proxy/services", key, 405, ""},
		{"rate limit: first", "GET", "/proxy/limited/status/200", key, 200, "limited"},
		{"rate limit", "GET", "/proxy/limited/status/200", key, 429, "limited"},
		{"upstream down", "GET", "/proxy/down/x", key, 502, "down"},
		{"upstream timeout", "GET", "/proxy/slow/slow", key, 504, "slow"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := testutil.Do(t, c.method, in.URL(c.path), nil, c.headers...)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, body)
			}
			wantErr := ""
			if c.status >= 400 {
				wantErr = "true"
				if !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
					t.Errorf("Content-Type %q", resp.Header.Get("Content-Type"))
				}
			}
			if got := resp.Header.Values("X-Proxy-Error"); wantErr == "" && len(got) != 0 || wantErr != "" && (len(got) != 1 || got[0] != wantErr) {
				t.Errorf("X-Proxy-Error %q, want %q", got, wantErr)
			}
			if got := resp.Header.Values("X-Proxy-Service"); c.service == "" && len(got) != 0 || c.service != "" && (len(got) != 1 || got[0] != c.service) {
				t.Errorf("X-Proxy-Service %q, want %q", got, c.service)
			}
		})
	}
	// The upstream's own errors are not the gateway's.
	for _, code := range []int{404, 500, 503} {
		resp, body := testutil.Do(t, "GET", in.URL(fmt.Sprintf("/proxy/open/status/%d", code)), nil, key...)
		if resp.StatusCode != code || string(body) != `{"upstream":true}` || resp.Header.Get("X-Proxy-Error") != "" || resp.Header.Get("X-Proxy-Service") != "open" {
			t.Errorf("upstream %d: %d %v %s", code, resp.StatusCode, resp.Header, body)
		}
	}

	// The discord preset sends Content-Type: application/json unless the
	// client sent its own.
	resp, _ := testutil.Do(t, "GET", in.URL("/proxy/discord/v10/users/@me"), nil, key...)
	if got := resp.Header.Get("X-Got-Content-Type"); resp.StatusCode != 200 || got != "application/json" {
		t.Errorf("discord default Content-Type: %d %q", resp.StatusCode, got)
	}
	resp, _ = testutil.Do(t, "POST", in.URL("/proxy/discord/v10/channels/1/messages"), []byte("--b--\r\n"),
		append([]string{"Content-Type", "multipart/form-data; boundary=b"}, key...)...)
	if got := resp.Header.Get("X-Got-Content-Type"); got != "multipart/form-data; boundary=b" {
		t.Errorf("client Content-Type on discord: %q", got)
	}

	// 503 from the pressure handler: one request in flight is the limit.
	done := make(chan struct{})
	go func() {
		defer close(done)
		testutil.Do(t, "GET", in.URL("/proxy/open/hold"), nil, key...)
	}()
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the held request did not reach the upstream")
	}
	resp, body := testutil.Do(t, "GET", in.URL("/proxy/open/x"), nil, key...)
	close(hold)
	<-done
	if resp.StatusCode != 503 || resp.Header.Get("X-Proxy-Error") != "true" || !strings.Contains(string(body), "Server under pressure") {
		t.Errorf("pressure: %d %v %s", resp.StatusCode, resp.Header, body)
	}

	// 429 from the key-guessing throttle (3 wrong keys a minute; 1 spent
	// above). Last: it shuts this client address out.
	var last *http.Response
	for range 4 {
		last, _ = testutil.Do(t, "GET", in.URL("/proxy/open/x"), nil, "X-API-Key", "guess")
	}
	if last.StatusCode != 429 || last.Header.Get("X-Proxy-Error") != "true" || last.Header.Get("X-Proxy-Service") != "" {
		t.Errorf("auth throttle: %d %v", last.StatusCode, last.Header)
	}
}
