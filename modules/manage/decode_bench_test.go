package manage

import "testing"

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
