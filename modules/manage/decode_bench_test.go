package manage

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// BenchmarkDecodeService measures decoding and validating a typical POST
// /manage/services body (no storage, no name resolution).
func BenchmarkDecodeService(b *testing.B) {
	body := []byte(`{"key":"fake","config":{"name":"Fake","baseUrl":"https://api.example.com/","headers":{"User-Agent":"x"},"versionedBaseUrls":{"v2":"https://api.example.com/v2/"},"rateLimit":{"maxRequests":5,"windowMs":60000},"auth":{"type":"bearer","tokenEnvVar":"CUSTOM_TOKEN"}}}`)
	app := validatorApp()
	b.ReportAllocs()
	for b.Loop() {
		key, cfg, e := decodeService(body, "")
		if e != nil {
			b.Fatal(e)
		}
		if _, err := app.ValidateRuntime(key, cfg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReadDecodeLargeBody measures reading and decoding a body at the
// 1 MiB limit, POST and PUT shapes: B/op is what one management write
// allocates, which admission (pressure.AdmitBody) budgets for.
func BenchmarkReadDecodeLargeBody(b *testing.B) {
	// A body of many small members: what a decoded map holds per member
	// (about 50 bytes) far exceeds the member's bytes in JSON.
	var members strings.Builder
	for i := 0; members.Len() < maxBodyBytes-100; i++ {
		fmt.Fprintf(&members, `"h%d":"",`, i)
	}
	manyHeaders := `{"key":"big","config":{"baseUrl":"https://a.example/","headers":{` + strings.TrimSuffix(members.String(), ",") + `}}}`
	for _, tc := range []struct{ name, method, urlKey, body string }{
		{"POST", http.MethodPost, "", largeName()},
		{"PUT", http.MethodPut, "big", largeName()},
		{"POST_many_headers", http.MethodPost, "", manyHeaders},
	} {
		b.Run(tc.name, func(b *testing.B) {
			body := []byte(tc.body)
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				r := httptest.NewRequest(tc.method, "/manage/services", bytes.NewReader(body))
				r.Header.Set("Content-Type", "application/json")
				raw, e := readBody(httptest.NewRecorder(), r)
				if e != nil {
					b.Fatal(e)
				}
				if _, _, e := decodeService(raw, tc.urlKey); e != nil {
					b.Fatal(e)
				}
			}
		})
	}
}

// largeName is a service body at the 1 MiB limit, most of it one name.
func largeName() string {
	prefix, suffix := `{"key":"big","config":{"baseUrl":"https://a.example/","name":"`, `"}}`
	return prefix + strings.Repeat("x", maxBodyBytes-len(prefix)-len(suffix)) + suffix
}
