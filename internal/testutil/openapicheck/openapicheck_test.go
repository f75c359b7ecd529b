package openapicheck

import (
	"net/http"
	"strings"
	"testing"

	"github.com/byteproxy/byteproxy/internal/testutil/record"
)

func TestDocumentLoads(t *testing.T) {
	if _, err := Default(); err != nil {
		t.Fatal(err)
	}
}

func jsonHeader(kv ...string) http.Header {
	h := http.Header{"Content-Type": {"application/json; charset=utf-8"}}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

const errorBody = `{"error":"Service 'nope' not configured","availableServices":["a"]}`

// The checker must see what a drifted answer gets wrong: each case is an
// answer the document does not describe, and the error must say why.
func TestCheckerFindsDisagreements(t *testing.T) {
	c, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		a    record.Answer
		want string
	}{
		{"undocumented field", record.Answer{Handler: "byteproxy", Method: "GET", Path: "/proxy/nope/x", RawPath: "/proxy/nope/x", Status: 404,
			Header: jsonHeader("X-Proxy-Error", "true"), Body: []byte(`{"error":"x","availableServices":[],"extra":1}`)}, "extra"},
		{"wrong type", record.Answer{Handler: "byteproxy", Method: "GET", Path: "/proxy/nope/x", RawPath: "/proxy/nope/x", Status: 404,
			Header: jsonHeader("X-Proxy-Error", "true"), Body: []byte(`{"error":"x","availableServices":"a"}`)}, "availableServices"},
		{"error without X-Proxy-Error", record.Answer{Handler: "byteproxy", Method: "GET", Path: "/proxy/nope/x", RawPath: "/proxy/nope/x", Status: 404,
			Header: jsonHeader(), Body: []byte(errorBody)}, "X-Proxy-Error"},
		{"undocumented status", record.Answer{Handler: "byteproxy", Method: "GET", Path: "/health", RawPath: "/health", Status: 418,
			Header: jsonHeader(), Body: []byte(`{}`)}, "status is not supported"},
		{"unknown path, not the 404 body", record.Answer{Handler: "byteproxy", Method: "GET", Path: "/nope", RawPath: "/nope", Status: 404,
			Header: jsonHeader("X-Proxy-Error", "true"), Body: []byte(`{"error":"Endpoint not found"}`)}, "missing"},
		{"forwarded answer without X-Proxy-Service", record.Answer{Handler: "byteproxy", Method: "GET", Path: "/proxy/svc/x", RawPath: "/proxy/svc/x", Status: 404,
			Header: http.Header{"X-Proxy-Duration": {"3ms"}}, Body: []byte("upstream's own")}, "X-Proxy-Service"},
		{"bad X-Proxy-Duration", record.Answer{Handler: "byteproxy", Method: "GET", Path: "/proxy/svc/x", RawPath: "/proxy/svc/x", Status: 200,
			Header: http.Header{"X-Proxy-Duration": {"3 seconds"}, "X-Proxy-Service": {"svc"}}}, "X-Proxy-Duration"},
		{"error returned to Caddy", record.Answer{Handler: "byteproxy_manage", Method: "GET", Path: "/health", RawPath: "/health", Status: 500, Returned: true,
			Header: http.Header{}}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Check(&tc.a)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// What the document describes passes; an upstream's answer is the
// upstream's, whatever its status and body.
func TestCheckerAccepts(t *testing.T) {
	c, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	for name, a := range map[string]record.Answer{
		"unknown service": {Handler: "byteproxy", Method: "GET", Path: "/proxy/nope/x", RawPath: "/proxy/nope/x", Status: 404,
			Header: jsonHeader("X-Proxy-Error", "true"), Body: []byte(errorBody)},
		"upstream 404": {Handler: "byteproxy_services", Method: "GET", Path: "/proxy/svc/x", RawPath: "/proxy/svc/x", Status: 404,
			Header: http.Header{"X-Proxy-Duration": {"3ms"}, "X-Proxy-Service": {"svc"}, "Content-Type": {"text/plain"}}, Body: []byte("not found")},
		"method not allowed": {Handler: "byteproxy", Method: "POST", Path: "/health", RawPath: "/health", Status: 405,
			Header: jsonHeader("X-Proxy-Error", "true", "Allow", "GET, HEAD, OPTIONS"), Body: []byte(`{"error":"Method not allowed","message":"m","allowed":["GET","HEAD","OPTIONS"]}`)},
		"options": {Handler: "byteproxy", Method: "OPTIONS", Path: "/health", RawPath: "/health", Status: 204, Header: http.Header{"Allow": {"GET, HEAD, OPTIONS"}}},
	} {
		if err := c.Check(&a); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// BenchmarkCheck measures one check of a typical error answer: the cost the
// harness adds per recorded answer.
func BenchmarkCheck(b *testing.B) {
	c, err := Default()
	if err != nil {
		b.Fatal(err)
	}
	a := record.Answer{Handler: "byteproxy", Method: "GET", Path: "/proxy/nope/x", RawPath: "/proxy/nope/x", Status: 404,
		Header: jsonHeader("X-Proxy-Error", "true"), Body: []byte(errorBody)}
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Check(&a); err != nil {
			b.Fatal(err)
		}
	}
}

// The IETF rate-limit headers are checked with the draft's syntax, not one
// policy name: a limit added later (with a partition key) passes, a
// malformed value does not.
func TestRateLimitHeaders(t *testing.T) {
	c, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	answer := func(policy, state string) *record.Answer {
		return &record.Answer{Handler: "byteproxy", Method: "GET", Path: "/proxy/svc/x", RawPath: "/proxy/svc/x", Status: 200,
			Header: http.Header{"X-Proxy-Duration": {"1ms"}, "X-Proxy-Service": {"svc"}, "Ratelimit-Policy": {policy}, "Ratelimit": {state}}}
	}
	for _, ok := range [][2]string{
		{`"service";q=100;w=60`, `"service";r=42;t=17`},
		{`"service";q=100;w=60, "client";q=600;w=60`, `"service";r=42;t=17, "client";r=599;t=1`},
		{`"upstream";q=5000;w=3600;pk=:a2V5OjE=:`, `"upstream";r=4998;t=3601;pk=:a2V5OjE=:`},
	} {
		if err := c.Check(answer(ok[0], ok[1])); err != nil {
			t.Errorf("%q / %q: %v", ok[0], ok[1], err)
		}
	}
	for _, bad := range [][2]string{
		{`service;q=100;w=60`, `"service";r=1;t=1`},
		{`"service";q=100;w=60`, `"service"`},
		{`"service";q=100;w=60`, `"service";r=-1;t=1`},
	} {
		if err := c.Check(answer(bad[0], bad[1])); err == nil {
			t.Errorf("%q / %q accepted", bad[0], bad[1])
		}
	}
}
