package services

import (
	"net/http"
	"testing"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

// The list of headers that stay at the gateway, as the README documents it
// (issue 11.9), in every spelling an upstream might read as the same name.
func TestClientOnly(t *testing.T) {
	t.Parallel()
	for k, want := range map[string]bool{
		"Authorization": true, "Proxy-Authorization": true, "X-Api-Key": true,
		"Forwarded": true, "X-Forwarded-For": true, "X-Forwarded-Host": true, "X-Forwarded-Anything": true,
		"X-Real-Ip": true, "True-Client-Ip": true, "X-Client-Ip": true, "Cf-Connecting-Ip": true,
		"X-Original-Url": true, "X-Rewrite-Url": true,
		"X_real_ip": true, "X_forwarded_for": true, "Cf_connecting_ip": true, "X_api_key": true,
		"Accept": false, "User-Agent": false, "X-Custom": false, "X-Request-Id": false, "X_custom": false,
	} {
		if got := clientOnly(k); got != want {
			t.Errorf("clientOnly(%q) = %v, want %v", k, got, want)
		}
	}
}

// Only `Upgrade: websocket` passes (issue 11.8).
func TestUpgradeRefused(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		values  []string
		refused bool
	}{
		{nil, false},
		{[]string{"websocket"}, false},
		{[]string{"WebSocket"}, false},
		{[]string{" websocket "}, false},
		{[]string{"h2c"}, true},
		{[]string{"websocket, h2c"}, true},
		{[]string{"websocket", "h2c"}, true},
		{[]string{"TLS/1.2"}, true},
		{[]string{""}, true},
	} {
		h := http.Header{}
		if c.values != nil {
			h["Upgrade"] = c.values
		}
		if got := gateway.UpgradeRefused(h); got != c.refused {
			t.Errorf("Upgrade %q: refused %v, want %v", c.values, got, c.refused)
		}
	}
}
