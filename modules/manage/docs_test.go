package manage

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

// gatewayRoutes is every operation the gateway answers (DESIGN §3). The
// OpenAPI document must describe exactly these; TestDocsRoutesAnswered
// checks that a running gateway answers each of them.
var gatewayRoutes = []string{
	"GET /proxy/{service}/{path}", "POST /proxy/{service}/{path}", "PUT /proxy/{service}/{path}",
	"PATCH /proxy/{service}/{path}", "DELETE /proxy/{service}/{path}", "HEAD /proxy/{service}/{path}",
	"OPTIONS /proxy/{service}/{path}",
	"GET /proxy/services",
	"GET /proxy/services/{service}/rate-limit",
	"GET /proxy/auth-test",
	"GET /proxy/auth-debug",
	"GET /proxy/key-debug",
	"GET /manage/services", "POST /manage/services",
	"GET /manage/services/{key}", "PUT /manage/services/{key}", "DELETE /manage/services/{key}",
	"POST /manage/services/{key}/test",
	"GET /manage/diagnostics",
	"GET /manage/key-debug",
	"GET /", "OPTIONS /", "GET /health", "GET /status", "GET /up", "GET /ready", "GET /version", "GET /version/check",
	"GET /auth-status", "GET /docs", "GET /docs/openapi.json", "GET /docs/json",
}

type openAPIDoc struct {
	OpenAPI string `json:"openapi"`
	Info    struct {
		Title   string `json:"title"`
		Version string `json:"version"`
	} `json:"info"`
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		SecuritySchemes map[string]struct {
			Type   string `json:"type"`
			Scheme string `json:"scheme"`
			In     string `json:"in"`
			Name   string `json:"name"`
		} `json:"securitySchemes"`
		Schemas   map[string]json.RawMessage `json:"schemas"`
		Responses map[string]json.RawMessage `json:"responses"`
		Headers   map[string]json.RawMessage `json:"headers"`
	} `json:"components"`
}

var httpMethods = []string{"get", "post", "put", "patch", "delete", "head", "options", "trace"}

// documentedOps lists "METHOD path" for every operation of the document.
func (d *openAPIDoc) documentedOps() []string {
	var ops []string
	for p, item := range d.Paths {
		for m := range item {
			if slices.Contains(httpMethods, m) {
				ops = append(ops, strings.ToUpper(m)+" "+p)
			}
		}
	}
	sort.Strings(ops)
	return ops
}

func servedSpec(t *testing.T, path string) (*openAPIDoc, []byte) {
	t.Helper()
	rec := httptest.NewRecorder()
	if !serveDocs(rec, httptest.NewRequest(http.MethodGet, path, nil)) {
		t.Fatalf("serveDocs did not answer %s", path)
	}
	if rec.Code != 200 {
		t.Fatalf("%s: status %d", path, rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("%s: Content-Type %q", path, ct)
	}
	var d openAPIDoc
	if err := json.Unmarshal(rec.Body.Bytes(), &d); err != nil {
		t.Fatalf("%s: not JSON: %v", path, err)
	}
	return &d, rec.Body.Bytes()
}

func TestOpenAPIDocument(t *testing.T) {
	d, raw := servedSpec(t, "/docs/openapi.json")
	if !regexp.MustCompile(`^3\.1\.\d+$`).MatchString(d.OpenAPI) {
		t.Errorf("openapi = %q, want 3.1.x", d.OpenAPI)
	}
	if d.Info.Version != gateway.Version || d.Info.Title == "" {
		t.Errorf("info = %+v, want version %s and a title", d.Info, gateway.Version)
	}
	// The original's address serves the same document.
	if _, compat := servedSpec(t, "/docs/json"); string(compat) != string(raw) {
		t.Error("/docs/json differs from /docs/openapi.json")
	}

	t.Run("every route documented and vice versa", func(t *testing.T) {
		want := slices.Clone(gatewayRoutes)
		sort.Strings(want)
		got := d.documentedOps()
		for _, op := range want {
			if !slices.Contains(got, op) {
				t.Errorf("route %s is not documented", op)
			}
		}
		for _, op := range got {
			if !slices.Contains(want, op) {
				t.Errorf("documented operation %s is not a gateway route", op)
			}
		}
	})

	// The 404's list of endpoints is the document's operations: the same
	// set as the routes (issue 17.1: it had left out /proxy/auth-debug and
	// /docs/json).
	t.Run("404 lists every route", func(t *testing.T) {
		listed := slices.Clone(availableEndpoints())
		sort.Strings(listed)
		want := slices.Clone(gatewayRoutes)
		sort.Strings(want)
		if !slices.Equal(listed, want) {
			t.Errorf("availableEndpoints = %q\nwant the routes %q", listed, want)
		}
	})

	t.Run("three key transports", func(t *testing.T) {
		ss := d.Components.SecuritySchemes
		if s := ss["bearerAuth"]; s.Type != "http" || s.Scheme != "bearer" {
			t.Errorf("bearerAuth = %+v", s)
		}
		if s := ss["apiKeyHeader"]; s.Type != "apiKey" || s.In != "header" || s.Name != "X-API-Key" {
			t.Errorf("apiKeyHeader = %+v", s)
		}
		if s := ss["apiKeyQuery"]; s.Type != "apiKey" || s.In != "query" || s.Name != "api_key" {
			t.Errorf("apiKeyQuery = %+v", s)
		}
	})

	t.Run("proxy error bodies", func(t *testing.T) {
		var op struct {
			Responses map[string]json.RawMessage `json:"responses"`
		}
		if err := json.Unmarshal(d.Paths["/proxy/{service}/{path}"]["get"], &op); err != nil {
			t.Fatal(err)
		}
		for _, code := range []string{"200", "401", "404", "429", "502", "503", "504"} {
			if _, ok := op.Responses[code]; !ok {
				t.Errorf("proxy GET does not document %s", code)
			}
		}
		for _, name := range []string{"Unauthorized", "ServiceNotConfigured", "RateLimited", "BadGateway", "UnderPressure", "GatewayTimeout", "EndpointNotFound", "TokenMissing"} {
			if _, ok := d.Components.Schemas[name]; !ok {
				t.Errorf("schema %s missing", name)
			}
		}
	})

	t.Run("every $ref resolves", func(t *testing.T) {
		var all map[string]any
		if err := json.Unmarshal(raw, &all); err != nil {
			t.Fatal(err)
		}
		refs := regexp.MustCompile(`"\$ref":\s*"([^"]+)"`).FindAllStringSubmatch(string(raw), -1)
		if len(refs) == 0 {
			t.Fatal("no $ref found")
		}
		for _, m := range refs {
			var cur any = all
			for _, part := range strings.Split(strings.TrimPrefix(m[1], "#/"), "/") {
				obj, ok := cur.(map[string]any)
				if !ok {
					cur = nil
					break
				}
				cur = obj[part]
			}
			if cur == nil {
				t.Errorf("$ref %s does not resolve", m[1])
			}
		}
	})

	t.Run("operation ids unique", func(t *testing.T) {
		seen := map[string]bool{}
		for p, item := range d.Paths {
			for m, raw := range item {
				if !slices.Contains(httpMethods, m) {
					continue
				}
				var op struct {
					OperationID string                     `json:"operationId"`
					Summary     string                     `json:"summary"`
					Responses   map[string]json.RawMessage `json:"responses"`
				}
				if err := json.Unmarshal(raw, &op); err != nil {
					t.Fatal(err)
				}
				if op.OperationID == "" || seen[op.OperationID] || op.Summary == "" || len(op.Responses) == 0 {
					t.Errorf("%s %s: operationId %q (dup %v), summary %q, %d responses", m, p, op.OperationID, seen[op.OperationID], op.Summary, len(op.Responses))
				}
				seen[op.OperationID] = true
			}
		}
	})
}

func TestDocsPage(t *testing.T) {
	for _, path := range []string{"/docs", "/docs/"} {
		rec := httptest.NewRecorder()
		if !serveDocs(rec, httptest.NewRequest(http.MethodGet, path, nil)) {
			t.Fatalf("serveDocs did not answer %s", path)
		}
		h := rec.Header()
		if rec.Code != 200 || h.Get("Content-Type") != "text/html; charset=utf-8" {
			t.Fatalf("%s: %d %q", path, rec.Code, h.Get("Content-Type"))
		}
		csp := h.Get("Content-Security-Policy")
		m := regexp.MustCompile(`script-src 'nonce-([A-Za-z0-9+/=]{16,})'`).FindStringSubmatch(csp)
		if m == nil || !strings.Contains(csp, "default-src 'none'") || strings.Contains(csp, "unsafe-inline") {
			t.Fatalf("CSP %q", csp)
		}
		body := rec.Body.String()
		if !strings.Contains(body, `<script nonce="`+m[1]+`">`) || !strings.Contains(body, `<style nonce="`+m[1]+`">`) {
			t.Fatal("the inline script and style do not carry the CSP nonce")
		}
		if strings.Contains(body, "{{") || strings.Contains(body, "http://") || strings.Contains(body, "https://") {
			t.Fatal("page has an unfilled placeholder or an external URL")
		}
		if !strings.Contains(body, "openapi.json") {
			t.Fatal("page does not load the document")
		}
	}
	// A fresh nonce per response.
	a, b := httptest.NewRecorder(), httptest.NewRecorder()
	serveDocs(a, httptest.NewRequest(http.MethodGet, "/docs", nil))
	serveDocs(b, httptest.NewRequest(http.MethodGet, "/docs", nil))
	if a.Header().Get("Content-Security-Policy") == b.Header().Get("Content-Security-Policy") {
		t.Fatal("nonce reused")
	}
}

func TestDocsOtherPathsAndMethods(t *testing.T) {
	for _, path := range []string{"/docs/x", "/docsx", "/doc", "/docs/openapi.yaml"} {
		if serveDocs(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, path, nil)) {
			t.Errorf("serveDocs answered %s", path)
		}
	}
	rec := httptest.NewRecorder()
	if !serveDocs(rec, httptest.NewRequest(http.MethodPost, "/docs/openapi.json", nil)) || rec.Code != 405 || rec.Header().Get("Allow") != "GET, HEAD, OPTIONS" {
		t.Fatalf("POST: %d %q", rec.Code, rec.Header().Get("Allow"))
	}
	// HEAD has headers, no body; a matching ETag gives 304.
	rec = httptest.NewRecorder()
	serveDocs(rec, httptest.NewRequest(http.MethodHead, "/docs/openapi.json", nil))
	etag := rec.Header().Get("ETag")
	if rec.Code != 200 || rec.Body.Len() != 0 || etag == "" {
		t.Fatalf("HEAD: %d, %d bytes, etag %q", rec.Code, rec.Body.Len(), etag)
	}
	req := httptest.NewRequest(http.MethodGet, "/docs/openapi.json", nil)
	req.Header.Set("If-None-Match", etag)
	rec = httptest.NewRecorder()
	serveDocs(rec, req)
	if rec.Code != http.StatusNotModified {
		t.Fatalf("If-None-Match: %d", rec.Code)
	}
}
