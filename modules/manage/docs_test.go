package manage

import (
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/byteproxy/byteproxy/internal/routes"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

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

// httpMethods are the methods an OpenAPI path item may hold, in the order
// the endpoint list shows them.
var httpMethods = []string{"get", "post", "put", "patch", "delete", "head", "options", "trace"}

// documentedOperations lists every operation of an OpenAPI document as
// "METHOD path", by path, then in httpMethods order: the order of the
// 404's list.
func documentedOperations(t *testing.T, spec []byte) []string {
	t.Helper()
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(spec, &doc); err != nil {
		t.Fatal(err)
	}
	var ops []string
	for _, path := range slices.Sorted(maps.Keys(doc.Paths)) {
		for _, m := range httpMethods {
			if _, ok := doc.Paths[path][m]; ok {
				ops = append(ops, strings.ToUpper(m)+" "+path)
			}
		}
	}
	return ops
}

// sameOperations reports the operations one list has and the other lacks,
// and a difference in order.
func sameOperations(t *testing.T, gotName string, got []string, wantName string, want []string) {
	t.Helper()
	for _, op := range want {
		if !slices.Contains(got, op) {
			t.Errorf("%s lacks %s, which %s has", gotName, op, wantName)
		}
	}
	for _, op := range got {
		if !slices.Contains(want, op) {
			t.Errorf("%s has %s, which %s lacks", gotName, op, wantName)
		}
	}
	if !t.Failed() && !slices.Equal(got, want) {
		t.Errorf("%s in another order than %s:\n%q\n%q", gotName, wantName, got, want)
	}
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
		sameOperations(t, "the OpenAPI document", documentedOperations(t, raw), "routes.Table", routes.Endpoints(""))
	})

	// The 404's list of endpoints is the table's operations, in the
	// document's order (issue 17.1: it had left out /proxy/auth-debug and
	// /docs/json). TestRoutesServed checks it on a running gateway.
	t.Run("404 lists every route", func(t *testing.T) {
		rec := httptest.NewRecorder()
		if err := notFound(rec, httptest.NewRequest(http.MethodGet, "/nope", nil)); err != nil {
			t.Fatal(err)
		}
		var body struct {
			AvailableEndpoints []string `json:"availableEndpoints"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatal(err)
		}
		sameOperations(t, "the 404's availableEndpoints", body.AvailableEndpoints, "the OpenAPI document", documentedOperations(t, raw))
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
