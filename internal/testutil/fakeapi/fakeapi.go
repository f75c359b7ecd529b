// Package fakeapi imitates the parts of GitHub's and Discord's REST APIs
// that the client-library tests drive through the gateway, with their real
// paths, header names and meanings: Link and Location as absolute URLs on
// the API's own host, X-RateLimit-Reset as an epoch time, Discord's
// X-RateLimit-Reset-After and bucket, their error bodies. Each fake
// records every request as it arrived — headers, and the body's length and
// SHA-256 (and each multipart part's) — so a test can check what the
// gateway sent upstream: the credential it injected, the body byte for
// byte.
//
// The Go tests (modules/services) and the Node checks (examples/clients)
// use the same fakes. internal/upstreamsim is the other kind: simulators
// of the APIs' rate limits for the upstream-budget tests, which count
// requests and answer stand-in bodies; these fakes answer the resources a
// client library parses and keep every request.
package fakeapi

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
)

// Request is one request as a fake received it.
type Request struct {
	Method   string
	Path     string // URL path, decoded
	RawQuery string
	Header   http.Header
	Body     Sum
	// Parts of a multipart/form-data body, in order; nil otherwise.
	Parts []Part
	// BadMultipart is why a body declared multipart could not be read.
	BadMultipart string
}

// Sum identifies bytes: their length and SHA-256 (hex).
type Sum struct {
	Len    int64
	SHA256 string
}

// SumOf returns the Sum of b.
func SumOf(b []byte) Sum {
	h := sha256.Sum256(b)
	return Sum{int64(len(b)), hex.EncodeToString(h[:])}
}

// Part is one part of a multipart/form-data body.
type Part struct {
	Name, FileName, ContentType string
	Body                        Sum
	// Text is the part's content when it is small (payload_json), for
	// assertions on it.
	Text string
}

// recorder keeps the requests of one fake.
type recorder struct {
	mu   sync.Mutex
	reqs []Request
}

// record reads r's body whole (the fakes answer after reading, as the
// real APIs do) and stores what arrived. The body stays readable for the
// handler.
func (rec *recorder) record(r *http.Request) (Request, []byte) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	got := Request{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Header: r.Header.Clone(), Body: SumOf(body)}
	if mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err == nil && mt == "multipart/form-data" {
		got.Parts, err = readParts(body, params["boundary"])
		if err != nil {
			got.BadMultipart = err.Error()
		}
	}
	rec.mu.Lock()
	rec.reqs = append(rec.reqs, got)
	rec.mu.Unlock()
	return got, body
}

func readParts(body []byte, boundary string) ([]Part, error) {
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	var parts []Part
	for {
		p, err := mr.NextRawPart() // raw: no Content-Transfer-Encoding decoding
		if err == io.EOF {
			return parts, nil
		}
		if err != nil {
			return parts, err
		}
		b, err := io.ReadAll(p)
		if err != nil {
			return parts, err
		}
		part := Part{Name: p.FormName(), FileName: p.FileName(), ContentType: p.Header.Get("Content-Type"), Body: SumOf(b)}
		if len(b) <= 4096 {
			part.Text = string(b)
		}
		parts = append(parts, part)
	}
}

// Requests returns what the fake received so far.
func (rec *recorder) Requests() []Request {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return slices.Clone(rec.reqs)
}

// Seen reports how many requests for method and path the fake received.
func (rec *recorder) Seen(method, path string) int {
	n := 0
	for _, r := range rec.Requests() {
		if r.Method == method && r.Path == path {
			n++
		}
	}
	return n
}

func start(t testing.TB, h http.Handler) *httptest.Server {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
