package record

import (
	"encoding/json"
	"testing"
)

// Every byteproxy handler, at any depth (subroutes, error routes), is
// wrapped once; other handlers are left alone.
func TestWrapHandlers(t *testing.T) {
	in := `{"apps":{"http":{"servers":{"s":{"routes":[
		{"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"byteproxy"}]}]}]},
		{"handle":[{"handler":"byteproxy_auth","scope":"proxy"},{"handler":"static_response","body":"ok"}]}
	]}}},"byteproxy":{"services":{}}}}`
	var cfg any
	if err := json.Unmarshal([]byte(in), &cfg); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(wrapHandlers(cfg))
	want := `{"apps":{"byteproxy":{"services":{}},"http":{"servers":{"s":{"routes":[` +
		`{"handle":[{"handler":"subroute","routes":[{"handle":[{"handler":"byteproxy_test_record","wrap":{"handler":"byteproxy"}}]}]}]},` +
		`{"handle":[{"handler":"byteproxy_test_record","wrap":{"handler":"byteproxy_auth","scope":"proxy"}},{"body":"ok","handler":"static_response"}]}]}}}}}`
	if string(out) != want {
		t.Fatalf("got  %s\nwant %s", out, want)
	}
	// Adapting twice does not wrap twice.
	again, _ := json.Marshal(wrapHandlers(cfg))
	if string(again) != want {
		t.Fatalf("wrapped twice: %s", again)
	}
}
