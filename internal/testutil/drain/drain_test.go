package drain

import (
	"encoding/json"
	"testing"
)

// Inject puts the wrapper first on every server, adds the TLS placeholder
// only where the server lists none (keeping TLS before the others), and
// does nothing the second time.
func TestInject(t *testing.T) {
	in := `{"apps":{"http":{"servers":{
		"plain":{"listen":[":1"]},
		"proxyproto":{"listener_wrappers":[{"wrapper":"proxy_protocol"}]},
		"tlsafter":{"listener_wrappers":[{"wrapper":"proxy_protocol"},{"wrapper":"tls"},{"wrapper":"http_redirect"}]}}}}}`
	var cfg map[string]any
	if err := json.Unmarshal([]byte(in), &cfg); err != nil {
		t.Fatal(err)
	}
	Inject(cfg)
	once, _ := json.Marshal(cfg)
	Inject(cfg)
	twice, _ := json.Marshal(cfg)
	want := `{"apps":{"http":{"servers":{` +
		`"plain":{"listen":[":1"],"listener_wrappers":[{"wrapper":"test_drain"},{"wrapper":"tls"}]},` +
		`"proxyproto":{"listener_wrappers":[{"wrapper":"test_drain"},{"wrapper":"tls"},{"wrapper":"proxy_protocol"}]},` +
		`"tlsafter":{"listener_wrappers":[{"wrapper":"test_drain"},{"wrapper":"proxy_protocol"},{"wrapper":"tls"},{"wrapper":"http_redirect"}]}}}}}`
	if string(once) != want {
		t.Fatalf("got  %s\nwant %s", once, want)
	}
	if string(twice) != want {
		t.Fatalf("injected twice: %s", twice)
	}
	// A config without servers is left alone.
	empty := map[string]any{"admin": map[string]any{"disabled": true}}
	Inject(empty)
	if b, _ := json.Marshal(empty); string(b) != `{"admin":{"disabled":true}}` {
		t.Fatalf("no servers: %s", b)
	}
}
