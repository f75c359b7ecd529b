package manage

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

// validatorApp is an unprovisioned app with the management API's default
// rules (private upstreams refused) and CUSTOM_* allowed as token env.
func validatorApp() *gateway.App {
	return &gateway.App{RuntimeServices: &gateway.RuntimeServicesConfig{TokenEnv: []string{"CUSTOM_*"}}}
}

func TestDecodeServiceFields(t *testing.T) {
	t.Parallel()
	key, cfg, e := decodeService([]byte(`{"key":"fake","config":{"name":"Fake","baseUrl":"https://api.example.com/v1",
		"headers":{"User-Agent":"x"},"versionedBaseUrls":{"v2":"https://api.example.com/v2/"},
		"rateLimit":{"maxRequests":5,"windowMs":1500},"auth":{"type":"header","tokenEnvVar":"CUSTOM_T","headerName":"X-Token"}}}`), "")
	if e != nil {
		t.Fatal(e)
	}
	if key != "fake" || cfg.Name != "Fake" || cfg.BaseURL != "https://api.example.com/v1" || cfg.Headers["User-Agent"] != "x" ||
		cfg.Versions["v2"] != "https://api.example.com/v2/" {
		t.Fatalf("decoded %q %+v", key, cfg)
	}
	if cfg.RateLimit.MaxRequests != 5 || time.Duration(cfg.RateLimit.Window) != 1500*time.Millisecond {
		t.Fatalf("rate limit %+v", cfg.RateLimit)
	}
	if cfg.Auth.Type != "header" || cfg.Auth.Token != "{env.CUSTOM_T}" || cfg.Auth.Name != "X-Token" {
		t.Fatalf("auth %+v", cfg.Auth)
	}
	svc, err := validatorApp().ValidateRuntime(key, cfg)
	if err != nil {
		t.Fatal(err)
	}
	v := viewOf(svc)
	if v.Auth.TokenEnvVar != "CUSTOM_T" || v.Auth.HeaderName != "X-Token" || v.RateLimit.WindowMs != 1500 || v.BaseURL != "https://api.example.com/v1/" {
		t.Fatalf("view %+v %+v", v, v.Auth)
	}
}

func TestDecodeServicePUTShapes(t *testing.T) {
	t.Parallel()
	for _, body := range []string{
		`{"baseUrl":"https://a.example/"}`,
		`{"key":"k1","config":{"baseUrl":"https://a.example/"}}`,
		`{"config":{"baseUrl":"https://a.example/"}}`,
	} {
		key, cfg, e := decodeService([]byte(body), "k1")
		if e != nil || key != "k1" || cfg.BaseURL != "https://a.example/" {
			t.Errorf("%s: %q %+v %v", body, key, cfg, e)
		}
	}
	if _, _, e := decodeService([]byte(`{"key":"k2","config":{"baseUrl":"https://a.example/"}}`), "k1"); e == nil || e.Field != "key" {
		t.Errorf("key mismatch: %v", e)
	}
}

// TestDecodeCopiedConfig: a service description copied from a GET answer
// (ours, or the original's with id, description and timeout) decodes, for
// POST and for PUT, to the same service; unknown fields are still refused
// by name.
func TestDecodeCopiedConfig(t *testing.T) {
	t.Parallel()
	const cfg = `{"id":"svc_123","name":"Orig","baseUrl":"https://api.example.com/","description":"from the original","timeout":5000,
		"source":"runtime","hasAuth":true,"authConfigured":false,
		"headers":{"User-Agent":"x"},"rateLimit":{"maxRequests":5,"windowMs":1000},
		"auth":{"type":"api-key","tokenEnvVar":"CUSTOM_T","headerName":"X-Key","tokenConfigured":true}}`
	for name, c := range map[string]struct{ body, urlKey string }{
		"POST the original's GET":  {`{"key":"orig","config":` + cfg + `}`, ""},
		"POST our GET":             {`{"key":"orig","config":` + cfg + `,"source":"runtime"}`, ""},
		"PUT our GET":              {`{"key":"orig","config":` + cfg + `,"source":"config"}`, "orig"},
		"PUT the config":           {cfg, "orig"},
		"PUT the config, no extra": {`{"name":"Orig","baseUrl":"https://api.example.com/","headers":{"User-Agent":"x"},"rateLimit":{"maxRequests":5,"windowMs":1000},"auth":{"type":"header","tokenEnvVar":"CUSTOM_T","headerName":"X-Key"}}`, "orig"},
	} {
		key, got, e := decodeService([]byte(c.body), c.urlKey)
		if e != nil {
			t.Errorf("%s: %v", name, e)
			continue
		}
		if key != "orig" || got.Name != "Orig" || got.BaseURL != "https://api.example.com/" || got.Headers["User-Agent"] != "x" ||
			got.RateLimit.MaxRequests != 5 || got.Auth.Type != "header" || got.Auth.Name != "X-Key" || got.Auth.Token != "{env.CUSTOM_T}" || got.Timeout != 0 {
			t.Errorf("%s: %q %+v %+v", name, key, got, got.Auth)
		}
	}
	for body, field := range map[string]string{
		`{"key":"a","config":{"baseUrl":"https://a.example/","bogus":1}}`:                   "bogus",
		`{"key":"a","config":{"baseUrl":"https://a.example/"},"id":"x"}`:                    "id",
		`{"key":"a","config":{"baseUrl":"https://a.example/","auth":{"type":"bot","x":1}}}`: "x",
		`{"key":"a","config":{"baseUrl":"https://a.example/","Timeouts":1}}`:                "Timeouts",
	} {
		if _, _, e := decodeService([]byte(body), ""); e == nil || e.Field != field {
			t.Errorf("%s: %v, want a refusal naming %q", body, e, field)
		}
	}
}

// TestDecodeServiceErrors covers each 400 case of decoding and validation
// and the field it names.
func TestDecodeServiceErrors(t *testing.T) {
	t.Parallel()
	cases := []struct{ name, body, field string }{
		{"empty", ``, "body"},
		{"malformed", `{"key":`, "body"},
		{"syntax", `{"key" "x"}`, "body"},
		{"trailing", `{"key":"a","config":{"baseUrl":"https://a.example/"}} {}`, "body"},
		{"not object", `[1,2]`, "body"},
		{"no key", `{"config":{"baseUrl":"https://a.example/"}}`, "key"},
		{"empty key", `{"key":"","config":{"baseUrl":"https://a.example/"}}`, "key"},
		{"dot dot key", `{"key":"a..b","config":{"baseUrl":"https://a.example/"}}`, "key"},
		{"dot key", `{"key":".","config":{"baseUrl":"https://a.example/"}}`, "key"},
		{"reserved key in capitals", `{"key":"Services","config":{"baseUrl":"https://a.example/"}}`, "key"},
		{"proto key", `{"key":"__proto__","config":{"baseUrl":"https://a.example/"}}`, "key"},
		{"slash key", `{"key":"a/b","config":{"baseUrl":"https://a.example/"}}`, "key"},
		{"long key", `{"key":"` + strings.Repeat("a", 64) + `","config":{"baseUrl":"https://a.example/"}}`, "key"},
		{"reserved key", `{"key":"services","config":{"baseUrl":"https://a.example/"}}`, "key"},
		{"no config", `{"key":"a"}`, "config"},
		{"no baseUrl", `{"key":"a","config":{"name":"x"}}`, "baseUrl"},
		{"relative url", `{"key":"a","config":{"baseUrl":"/api"}}`, "baseUrl"},
		{"not a url", `{"key":"a","config":{"baseUrl":"not a url"}}`, "baseUrl"},
		{"ftp url", `{"key":"a","config":{"baseUrl":"ftp://a.example/"}}`, "baseUrl"},
		{"file url", `{"key":"a","config":{"baseUrl":"file:///etc/passwd"}}`, "baseUrl"},
		{"userinfo", `{"key":"a","config":{"baseUrl":"https://u:p@a.example/"}}`, "baseUrl"},
		{"loopback", `{"key":"a","config":{"baseUrl":"http://127.0.0.1:8080/"}}`, "baseUrl"},
		{"localhost", `{"key":"a","config":{"baseUrl":"http://localhost/"}}`, "baseUrl"},
		{"metadata", `{"key":"a","config":{"baseUrl":"http://169.254.169.254/latest/"}}`, "baseUrl"},
		{"private v6", `{"key":"a","config":{"baseUrl":"http://[fd00::1]/"}}`, "baseUrl"},
		{"mapped v6", `{"key":"a","config":{"baseUrl":"http://[::ffff:10.0.0.1]/"}}`, "baseUrl"},
		{"zero net", `{"key":"a","config":{"baseUrl":"http://0.0.0.0/"}}`, "baseUrl"},
		{"private version", `{"key":"a","config":{"baseUrl":"https://a.example/","versionedBaseUrls":{"v1":"http://10.1.2.3/"}}}`, "versionedBaseUrls"},
		{"placeholder url", `{"key":"a","config":{"baseUrl":"https://{env.MANAGEMENT_API_KEY}.example/"}}`, "baseUrl"},
		{"placeholder header", `{"key":"a","config":{"baseUrl":"https://a.example/","headers":{"X-Leak":"{env.MANAGEMENT_API_KEY}"}}}`, "headers"},
		{"file placeholder", `{"key":"a","config":{"baseUrl":"https://a.example/","headers":{"X":"{file./etc/passwd}"}}}`, "headers"},
		{"header newline", `{"key":"a","config":{"baseUrl":"https://a.example/","headers":{"X":"a\r\nInjected: 1"}}}`, "headers"},
		{"bad header name", `{"key":"a","config":{"baseUrl":"https://a.example/","headers":{"Bad Name":"x"}}}`, "headers"},
		{"headers not object", `{"key":"a","config":{"baseUrl":"https://a.example/","headers":["x"]}}`, "headers"},
		{"zero max", `{"key":"a","config":{"baseUrl":"https://a.example/","rateLimit":{"maxRequests":0,"windowMs":1000}}}`, "rateLimit.maxRequests"},
		{"negative window", `{"key":"a","config":{"baseUrl":"https://a.example/","rateLimit":{"maxRequests":1,"windowMs":-5}}}`, "rateLimit.windowMs"},
		{"missing window", `{"key":"a","config":{"baseUrl":"https://a.example/","rateLimit":{"maxRequests":1}}}`, "rateLimit.windowMs"},
		{"fraction", `{"key":"a","config":{"baseUrl":"https://a.example/","rateLimit":{"maxRequests":1.5,"windowMs":1000}}}`, "rateLimit.maxRequests"},
		{"string number", `{"key":"a","config":{"baseUrl":"https://a.example/","rateLimit":{"maxRequests":"5","windowMs":1000}}}`, "rateLimit.maxRequests"},
		{"huge window", `{"key":"a","config":{"baseUrl":"https://a.example/","rateLimit":{"maxRequests":1,"windowMs":99999999999999999}}}`, "rateLimit.windowMs"},
		{"unknown auth", `{"key":"a","config":{"baseUrl":"https://a.example/","auth":{"type":"magic"}}}`, "auth.type"},
		{"auth no type", `{"key":"a","config":{"baseUrl":"https://a.example/","auth":{"tokenEnvVar":"CUSTOM_X"}}}`, "auth.type"},
		{"header no name", `{"key":"a","config":{"baseUrl":"https://a.example/","auth":{"type":"header","tokenEnvVar":"CUSTOM_X"}}}`, "auth.headerName"},
		{"header Host", `{"key":"a","config":{"baseUrl":"https://a.example/","auth":{"type":"header","headerName":"Host","tokenEnvVar":"CUSTOM_X"}}}`, "auth.headerName"},
		{"header Transfer-Encoding", `{"key":"a","config":{"baseUrl":"https://a.example/","auth":{"type":"header","headerName":"transfer-encoding","tokenEnvVar":"CUSTOM_X"}}}`, "auth.headerName"},
		{"documentation address", `{"key":"a","config":{"baseUrl":"http://203.0.113.7/"}}`, "baseUrl"},
		{"decimal address", `{"key":"a","config":{"baseUrl":"http://2130706433/"}}`, "baseUrl"},
		{"secret env", `{"key":"a","config":{"baseUrl":"https://a.example/","auth":{"type":"bearer","tokenEnvVar":"MANAGEMENT_API_KEY"}}}`, "auth.tokenEnvVar"},
		{"discord env", `{"key":"a","config":{"baseUrl":"https://a.example/","auth":{"type":"bot","tokenEnvVar":"DISCORD_BOT_TOKEN"}}}`, "auth.tokenEnvVar"},
		{"env syntax", `{"key":"a","config":{"baseUrl":"https://a.example/","auth":{"type":"bot","tokenEnvVar":"CUSTOM_X}{env.Y"}}}`, "auth.tokenEnvVar"},
		{"unknown top", `{"key":"a","config":{"baseUrl":"https://a.example/"},"extra":1}`, "extra"},
		{"unknown config", `{"key":"a","config":{"baseUrl":"https://a.example/","token":"abc"}}`, "token"},
		{"unknown auth field", `{"key":"a","config":{"baseUrl":"https://a.example/","auth":{"type":"bot","token":"abc"}}}`, "token"},
		{"long name", `{"key":"a","config":{"name":"` + strings.Repeat("n", 300) + `","baseUrl":"https://a.example/"}}`, "name"},
		{"bad version", `{"key":"a","config":{"baseUrl":"https://a.example/","versionedBaseUrls":{"a/b":"https://a.example/"}}}`, "versionedBaseUrls"},
	}
	app := validatorApp()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			key, cfg, e := decodeService([]byte(c.body), "")
			if e == nil {
				_, err := app.ValidateRuntime(key, cfg)
				if err == nil {
					t.Fatalf("accepted")
				}
				var ok bool
				if e, ok = fromFieldError(err); !ok {
					t.Fatalf("not a field error: %v", err)
				}
			}
			if e.Field != c.field {
				t.Fatalf("field %q, want %q (%s)", e.Field, c.field, e.Msg)
			}
			if e.Msg == "" {
				t.Fatal("empty message")
			}
		})
	}
}

func TestReadBodyLimits(t *testing.T) {
	t.Parallel()
	big := `{"key":"a","config":{"baseUrl":"https://a.example/","name":"` + strings.Repeat("x", maxBodyBytes) + `"}}`
	r := httptest.NewRequest(http.MethodPost, "/manage/services", strings.NewReader(big))
	if _, e := readBody(httptest.NewRecorder(), r); e == nil || e.Field != "body" {
		t.Fatalf("oversized body: %v", e)
	}
	r = httptest.NewRequest(http.MethodPost, "/manage/services", strings.NewReader(`{}`))
	r.Header.Set("Content-Type", "text/plain")
	if _, e := readBody(httptest.NewRecorder(), r); e == nil || e.Field != "Content-Type" {
		t.Fatalf("text/plain: %v", e)
	}
	for _, ct := range []string{"", "application/json", "application/json; charset=utf-8", "application/merge-patch+json"} {
		r = httptest.NewRequest(http.MethodPost, "/manage/services", strings.NewReader(`{}`))
		if ct != "" {
			r.Header.Set("Content-Type", ct)
		}
		if b, e := readBody(httptest.NewRecorder(), r); e != nil || string(b) != "{}" {
			t.Fatalf("%q: %v", ct, e)
		}
	}
}

func TestViewRedactsSensitiveHeaders(t *testing.T) {
	t.Parallel()
	cfg := gateway.ServiceConfig{BaseURL: "https://a.example/", Headers: map[string]string{"X-Api-Key": "sekrit-value", "User-Agent": "ua"}}
	svc, err := validatorApp().ValidateRuntime("a", cfg)
	if err != nil {
		t.Fatal(err)
	}
	v := viewOf(svc)
	if v.Headers["X-Api-Key"] != redacted || v.Headers["User-Agent"] != "ua" {
		t.Fatalf("headers %v", v.Headers)
	}
	next := gateway.ServiceConfig{BaseURL: "https://a.example/", Headers: map[string]string{"x-api-key": redacted}}
	keepRedacted(&next, svc)
	if next.Headers["x-api-key"] != "sekrit-value" {
		t.Fatalf("kept %v", next.Headers)
	}
}

// FuzzDecodeService fuzzes decoding and validation of a service request:
// nothing panics, every refusal names a field, and whatever is accepted is
// a valid, public, placeholder-free service whose view decodes back to the
// same service. The seeds run as a normal test.
func FuzzDecodeService(f *testing.F) {
	seeds := []string{
		`{"key":"fake","config":{"name":"Fake","baseUrl":"https://api.example.com/","headers":{"User-Agent":"x"},"versionedBaseUrls":{"v2":"https://api.example.com/v2/"},"rateLimit":{"maxRequests":5,"windowMs":60000},"auth":{"type":"bearer","tokenEnvVar":"CUSTOM_TOKEN"}}}`,
		`{"key":"q","config":{"baseUrl":"http://93.184.215.14:8080/x","auth":{"type":"query","headerName":"k","tokenEnvVar":"CUSTOM_Q"}}}`,
		`{"key":"h","config":{"baseUrl":"https://a.example","auth":{"type":"header","headerName":"X-Key"}}}`,
		`{"key":"b","config":{"baseUrl":"https://a.example","auth":{"type":"basic","tokenEnvVar":"CUSTOM_B","tokenConfigured":false}}}`,
		`{"baseUrl":"https://a.example/"}`,
		`{"key":"k","config":{"baseUrl":"https://a.example","auth":{"type":"api-key","headerName":"X-Key","tokenEnvVar":"CUSTOM_K"}}}`,
		`{"key":"a","config":{"baseUrl":"http://127.0.0.1/"}}`,
		`{"key":"a","config":{"baseUrl":"http://[::1]/"}}`,
		`{"key":"a","config":{"baseUrl":"https://{env.X}/"}}`,
		`{"key":"a","config":{"baseUrl":"https://a.example/","rateLimit":{"maxRequests":-1,"windowMs":1}}}`,
		`{"key":"__proto__","config":{}}`,
		`{"key":"My.API","config":{"baseUrl":"https://a.example/"}}`,
		`{"key":"orig","config":{"id":"svc_1","name":"O","baseUrl":"https://a.example/","description":"d","timeout":5000,"auth":{"type":"api-key","headerName":"X-K","tokenEnvVar":"CUSTOM_K","tokenConfigured":true}},"source":"runtime"}`,
		`{"id":1,"source":null,"baseUrl":"https://a.example/","hasAuth":false}`,
		`{"key":"a..b","config":{"baseUrl":"https://a.example/"}}`,
		`{"key":"a","config":{"baseUrl":"https://a.example/","auth":{"type":"bot","tokenEnvVar":"MANAGEMENT_API_KEY"}}}`,
		`{"key":"a","config":null}`,
		`{"key":1}`,
		`null`,
		`{"key":"a","config":{"baseUrl":"https://a.example/"}}garbage`,
		"{\"key\":\"a\",\"config\":{\"baseUrl\":\"https://a.example/\",\"headers\":{\"X\":\"\\u0000\"}}}",
	}
	for _, s := range seeds {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	app := validatorApp()
	f.Fuzz(func(t *testing.T, body []byte, put bool) {
		urlKey := ""
		if put {
			urlKey = "a"
		}
		key, cfg, e := decodeService(body, urlKey)
		if e != nil {
			if e.Field == "" || e.Msg == "" {
				t.Fatalf("refusal without field or message: %+v", e)
			}
			return
		}
		svc, err := app.ValidateRuntime(key, cfg)
		if err != nil {
			if fe, ok := fromFieldError(err); !ok || fe.Field == "" {
				t.Fatalf("validation error without a field: %v", err)
			}
			return
		}
		checkAccepted(t, key, svc)
		// The view, sent back as a PUT, describes the same service.
		view, _ := json.Marshal(viewOf(svc))
		k2, cfg2, e := decodeService(view, key)
		if e != nil {
			t.Fatalf("view %s does not decode: %v", view, e)
		}
		svc2, err := app.ValidateRuntime(k2, cfg2)
		if err != nil {
			t.Fatalf("view %s does not validate: %v", view, err)
		}
		v1, _ := json.Marshal(viewOf(svc))
		v2, _ := json.Marshal(viewOf(svc2))
		if string(v1) != string(v2) {
			t.Fatalf("round trip changed the service: %s -> %s", v1, v2)
		}
	})
}

func checkAccepted(t *testing.T, key string, svc *gateway.Service) {
	t.Helper()
	if gateway.CheckServiceKey(key) != nil || strings.Contains(key, "..") || strings.Contains(key, "/") {
		t.Fatalf("accepted key %q", key)
	}
	urls := []string{svc.BaseURL.String()}
	for _, u := range svc.Versions {
		urls = append(urls, u.String())
	}
	for _, u := range urls {
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			t.Fatalf("accepted non-http URL %q", u)
		}
	}
	for _, h := range []string{svc.BaseURL.Hostname()} {
		if h == "localhost" || strings.HasPrefix(h, "127.") || strings.HasPrefix(h, "10.") || h == "::1" {
			t.Fatalf("accepted private host %q", h)
		}
	}
	if svc.TokenEnv != "" && !strings.HasPrefix(svc.TokenEnv, "CUSTOM_") {
		t.Fatalf("accepted token env %q", svc.TokenEnv)
	}
	for k, v := range svc.Config.Headers {
		if strings.ContainsAny(k+v, "\r\n") || strings.Contains(v, "{env.") {
			t.Fatalf("accepted header %q: %q", k, v)
		}
	}
}

// TestDecodeUpstreamLimits: a runtime service's upstreamLimits (the
// Caddyfile's upstream_limits, milliseconds for durations) decode, are
// validated by the gateway with the API's field names, and GET shows them
// so that a GET body can be PUT back.
func TestDecodeUpstreamLimits(t *testing.T) {
	t.Parallel()
	body := `{"key":"limited","config":{"baseUrl":"https://api.example.com/","upstreamLimits":{"maxWaitMs":0,"headers":"x-ratelimit","reset":"delta","maxQueue":10,"weights":{"key:abc":2}}}}`
	key, cfg, e := decodeService([]byte(body), "")
	if e != nil {
		t.Fatal(e)
	}
	l := cfg.UpstreamLimits
	if l == nil || l.MaxWait == nil || *l.MaxWait != 0 || l.Headers != "x-ratelimit" || l.Reset != "delta" || l.MaxQueue != 10 || l.Weights["key:abc"] != 2 {
		t.Fatalf("decoded %+v", l)
	}
	svc, err := validatorApp().ValidateRuntime(key, cfg)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := json.Marshal(viewOf(svc))
	if !strings.Contains(string(v), `"upstreamLimits":{"maxWaitMs":0,"maxQueue":10,"weights":{"key:abc":2},"headers":"x-ratelimit","reset":"delta"}`) {
		t.Errorf("view %s", v)
	}
	// The view goes back in unchanged.
	_, again, e := decodeService(append(append([]byte(`{"config":`), v...), '}'), "limited")
	if e != nil || !reflectEqualLimits(again.UpstreamLimits, cfg.UpstreamLimits) {
		t.Errorf("PUT of the view: %+v %v", again.UpstreamLimits, e)
	}
	// On: {} turns the defaults on; absent leaves it off.
	_, on, _ := decodeService([]byte(`{"key":"k","config":{"baseUrl":"https://a.example/","upstreamLimits":{}}}`), "")
	_, off, _ := decodeService([]byte(`{"key":"k","config":{"baseUrl":"https://a.example/"}}`), "")
	if on.UpstreamLimits == nil || off.UpstreamLimits != nil {
		t.Errorf("{} → %+v, absent → %+v", on.UpstreamLimits, off.UpstreamLimits)
	}

	for _, c := range []struct{ body, field string }{
		{`{"key":"k","config":{"baseUrl":"https://a.example/","upstreamLimits":{"maxWait":5}}}`, "maxWait"},
		{`{"key":"k","config":{"baseUrl":"https://a.example/","upstreamLimits":{"maxWaitMs":-1}}}`, "upstreamLimits.maxWaitMs"},
		{`{"key":"k","config":{"baseUrl":"https://a.example/","upstreamLimits":{"headers":"draft"}}}`, "upstreamLimits.headers"},
		{`{"key":"k","config":{"baseUrl":"https://a.example/","upstreamLimits":{"maxWaitMs":7200000}}}`, "upstreamLimits.maxWaitMs"},
		{`{"key":"k","config":{"baseUrl":"https://a.example/","upstreamLimits":{"weights":{"x":-1}}}}`, "upstreamLimits.weights"},
	} {
		key, cfg, e := decodeService([]byte(c.body), "")
		if e == nil {
			_, err := validatorApp().ValidateRuntime(key, cfg)
			e, _ = fromFieldError(err)
		}
		if e == nil || e.Field != c.field {
			t.Errorf("%s: %v, want an error naming %s", c.body, e, c.field)
		}
	}
}

func reflectEqualLimits(a, b *gateway.UpstreamLimits) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
