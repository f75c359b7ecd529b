package ratelimit

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

// The whole gateway (the byteproxy site directive, real proxy keys, a
// real upstream): the client limit follows the API key used, and the
// limits of runtime services added, changed and removed through the
// management API apply without a reload.
func TestSiteDirectiveRuntimeServices(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	defer up.Close()
	in := testutil.Start(t, fmt.Sprintf(`{
	byteproxy {
		auth proxy {
			key key-one-0123456789
			key key-two-0123456789
		}
		client_rate_limit 6 1m
		runtime_services {
			allow_private_upstreams
		}
		service x {
			base_url %s/
			rate_limit 2 1m
		}
		service free {
			base_url %[1]s/
		}
	}
}
:{{PORT}} {
	byteproxy
}
`, up.URL), testutil.Options{})
	one, two := []string{"X-API-Key", "key-one-0123456789"}, []string{"X-API-Key", "key-two-0123456789"}

	for range 2 {
		get(t, in.URL("/proxy/x/a"), one...)
	}
	r := get(t, in.URL("/proxy/x/a"), one...)
	if r.status != 429 {
		t.Fatalf("3rd request to x: %d %s", r.status, r.body)
	}
	checkServiceRefusal(t, r, "x", "/a", 60)

	add := `{"key":"rt","config":{"name":"RT","baseUrl":"` + up.URL + `/","rateLimit":{"maxRequests":2,"windowMs":60000}}}`
	if resp, body := testutil.Do(t, http.MethodPost, in.URL("/manage/services"), []byte(add), "Content-Type", "application/json"); resp.StatusCode != 201 {
		t.Fatalf("adding a runtime service: %d %s", resp.StatusCode, body)
	}
	for i := range 2 {
		if r := get(t, in.URL("/proxy/rt/a"), two...); r.status == 429 || !strings.HasPrefix(r.header.Get("RateLimit-Policy"), `"service";q=2;w=60`) {
			t.Fatalf("runtime service request %d: %d %v", i+1, r.status, r.header)
		}
	}
	if r := get(t, in.URL("/proxy/rt/a"), two...); r.status != 429 {
		t.Fatalf("3rd request to the runtime service: %d, want 429", r.status)
	}

	// Requests refused by a service limit spend no client token: key one
	// had 2 requests admitted, so 4 of its 6 tokens are left however often
	// x refuses it.
	for i := range 3 {
		if r := get(t, in.URL("/proxy/x/a"), one...); r.status != 429 || decode(t, r.body)["limitType"] != nil {
			t.Fatalf("key one on x, request %d: %d %s; want the service's 429", i+4, r.status, r.body)
		}
	}
	for i := range 4 {
		r := get(t, in.URL("/proxy/free/a"), one...)
		if remaining, _ := limitState(t, r.header, "client"); r.status != 200 || remaining != 3-i {
			t.Fatalf("key one on an unlimited service, request %d: %d RateLimit %q", i+1, r.status, r.header.Get("RateLimit"))
		}
	}
	if r := get(t, in.URL("/proxy/free/a"), one...); r.status != 429 || decode(t, r.body)["limitType"] != "client" {
		t.Fatalf("key one out of tokens: %d %s; want the client's 429", r.status, r.body)
	}
	// Key two has its own bucket.
	if r := get(t, in.URL("/proxy/free/a"), two...); r.status != 200 {
		t.Fatalf("key two: %d", r.status)
	}

	// A changed limit starts a fresh window.
	put := `{"name":"RT","baseUrl":"` + up.URL + `/","rateLimit":{"maxRequests":5,"windowMs":60000}}`
	if resp, body := testutil.Do(t, http.MethodPut, in.URL("/manage/services/rt"), []byte(put), "Content-Type", "application/json"); resp.StatusCode != 200 {
		t.Fatalf("changing the runtime service: %d %s", resp.StatusCode, body)
	}
	var info map[string]any
	r = get(t, in.URL("/proxy/services/rt/rate-limit"), two...)
	if err := json.Unmarshal(r.body, &info); err != nil || info["limit"] != 5.0 || info["remaining"] != 5.0 {
		t.Fatalf("after the change: %d %s", r.status, r.body)
	}

	if resp, body := testutil.Do(t, http.MethodDelete, in.URL("/manage/services/rt"), nil); resp.StatusCode >= 300 {
		t.Fatalf("removing the runtime service: %d %s", resp.StatusCode, body)
	}
	if r := get(t, in.URL("/proxy/services/rt/rate-limit"), two...); r.status != 404 {
		t.Fatalf("rate-limit of a removed service: %d %s", r.status, r.body)
	}
}
