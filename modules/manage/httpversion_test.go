package manage

import (
	"testing"
)

// httpVersion goes through the management API as the Caddyfile's
// http_version: decoded, validated (a refusal names httpVersion), shown
// back when not auto.
func TestDecodeHTTPVersion(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		body, view, field string
	}{
		{`{"key":"a","config":{"baseUrl":"https://a.example/","httpVersion":"1.1"}}`, "1.1", ""},
		{`{"key":"a","config":{"baseUrl":"https://a.example/","httpVersion":"2"}}`, "2", ""},
		{`{"key":"a","config":{"baseUrl":"https://a.example/","httpVersion":"auto"}}`, "", ""},
		{`{"key":"a","config":{"baseUrl":"https://a.example/"}}`, "", ""},
		{`{"key":"a","config":{"baseUrl":"https://a.example/","httpVersion":"3"}}`, "", "httpVersion"},
		{`{"key":"a","config":{"baseUrl":"http://a.example/","httpVersion":"2"}}`, "", "httpVersion"},
	} {
		key, cfg, e := decodeService([]byte(c.body), "")
		if e != nil {
			t.Fatalf("%s: %v", c.body, e)
		}
		svc, err := validatorApp().ValidateRuntime(key, cfg)
		if c.field != "" {
			ae, ok := fromFieldError(err)
			if !ok || ae.Field != c.field {
				t.Errorf("%s: got %v, want a refusal of %s", c.body, err, c.field)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", c.body, err)
		}
		if v := viewOf(svc); v.HTTPVersion != c.view {
			t.Errorf("%s: view shows %q, want %q", c.body, v.HTTPVersion, c.view)
		}
	}
}
