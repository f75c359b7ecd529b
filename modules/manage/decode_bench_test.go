package manage

import (
	"bytes"
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
	for _, tc := range []struct{ name, method, urlKey, prefix string }{
		{"POST", http.MethodPost, "", `{"key":"big","config":{"baseUrl":"https://a.example/","name":"`},
		{"PUT", http.MethodPut, "big", `{"key":"big","config":{"baseUrl":"https://a.example/","name":"`},
	} {
		b.Run(tc.name, func(b *testing.B) {
			suffix := `"}}`
			body := []byte(tc.prefix + strings.Repeat("x", maxBodyBytes-len(tc.prefix)-len(suffix)) + suffix)
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
