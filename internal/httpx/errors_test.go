package httpx

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
)

// TestWriteErrorWithoutErrorRoutes: outside a server with handle_errors
// (here: no server at all, and no request) WriteError writes what
// WriteJSON writes, plus X-Proxy-Service, byte for byte.
func TestWriteErrorWithoutErrorRoutes(t *testing.T) {
	body := map[string]any{"error": "Too Many Requests", "retryAfter": 3}
	for _, r := range []*http.Request{nil, httptest.NewRequest(http.MethodGet, "/proxy/x/y", nil)} {
		want := httptest.NewRecorder()
		want.Header().Set("Retry-After", "3")
		want.Header().Set("X-Proxy-Service", "x")
		if err := WriteJSON(want, http.StatusTooManyRequests, body); err != nil {
			t.Fatal(err)
		}
		got := httptest.NewRecorder()
		got.Header().Set("Retry-After", "3")
		if err := WriteError(got, r, http.StatusTooManyRequests, "x", "limited", body); err != nil {
			t.Fatal(err)
		}
		if got.Code != want.Code || got.Body.String() != want.Body.String() || !reflect.DeepEqual(got.Header(), want.Header()) {
			t.Errorf("WriteError: %d %v %q; WriteJSON: %d %v %q", got.Code, got.Header(), got.Body, want.Code, want.Header(), want.Body)
		}
	}
}
