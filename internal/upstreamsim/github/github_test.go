package github

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

const token = "ghp_sim"

func start(t *testing.T, mod func(*Config)) *Server {
	t.Helper()
	cfg := Config{Tokens: []string{token}}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func call(t *testing.T, s *Server, method, path string, hdr ...string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(method, s.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func TestPrimaryLimit(t *testing.T) {
	s := start(t, func(c *Config) { c.Resources = map[string]Resource{"core": {3, time.Hour}} })
	var reset string
	for i := range 3 {
		r := call(t, s, "GET", "/repos/o/r")
		h := r.Header
		if r.StatusCode != 200 || h.Get("X-Ratelimit-Remaining") != strconv.Itoa(2-i) || h.Get("X-Ratelimit-Used") != strconv.Itoa(i+1) ||
			h.Get("X-Ratelimit-Limit") != "3" || h.Get("X-Ratelimit-Resource") != "core" {
			t.Fatalf("%d: %d %v", i, r.StatusCode, h)
		}
		reset = h.Get("X-Ratelimit-Reset")
	}
	if sec, _ := strconv.ParseInt(reset, 10, 64); time.Unix(sec, 0).Before(time.Now().Add(59 * time.Minute)) {
		t.Fatalf("reset %s", reset)
	}
	if r := call(t, s, "GET", "/repos/o/r"); r.StatusCode != 403 || r.Header.Get("X-Ratelimit-Remaining") != "0" {
		t.Fatalf("exhausted: %d %v", r.StatusCode, r.Header)
	}
	if r := call(t, s, "GET", "/rate_limit"); r.StatusCode != 200 || r.Header.Get("X-Ratelimit-Resource") != "core" {
		t.Fatalf("/rate_limit: %d", r.StatusCode)
	}
	if r := call(t, s, "GET", "/search/issues"); r.StatusCode != 200 || r.Header.Get("X-Ratelimit-Resource") != "search" || r.Header.Get("X-Ratelimit-Limit") != "30" {
		t.Fatalf("search: %d %v", r.StatusCode, r.Header)
	}
	if st := s.Stats(); st.Counted["core"] != 3 || st.PrimaryLimited != 1 {
		t.Fatalf("%+v", st)
	}
}

func TestConditional(t *testing.T) {
	s := start(t, nil)
	etag := call(t, s, "GET", "/repos/o/r").Header.Get("ETag")
	r := call(t, s, "GET", "/repos/o/r", "If-None-Match", etag)
	if r.StatusCode != 304 || r.Header.Get("X-Ratelimit-Used") != "1" {
		t.Fatalf("conditional: %d %v", r.StatusCode, r.Header)
	}
	if st := s.Stats(); st.Counted["core"] != 1 || st.NotModified != 1 {
		t.Fatalf("%+v", st)
	}
}

func TestSecondaryLimit(t *testing.T) {
	s := start(t, func(c *Config) { c.MutationGap = time.Hour; c.SecondaryRetryAfter = 90 * time.Second })
	if r := call(t, s, "POST", "/repos/o/r/issues"); r.StatusCode != 201 {
		t.Fatalf("first POST: %d", r.StatusCode)
	}
	r := call(t, s, "POST", "/repos/o/r/issues")
	if r.StatusCode != 403 || r.Header.Get("Retry-After") != "90" {
		t.Fatalf("second POST at once: %d %v", r.StatusCode, r.Header)
	}
	if r := call(t, s, "GET", "/repos/o/r"); r.StatusCode != 403 || r.Header.Get("Retry-After") == "" {
		t.Fatalf("a GET while limited: %d", r.StatusCode)
	}
	if st := s.Stats(); st.SecondaryTripped != 1 || st.SecondaryLimited != 2 || st.MinMutationGap < 0 {
		t.Fatalf("%+v", st)
	}
}

func TestPagination(t *testing.T) {
	s := start(t, nil)
	r := call(t, s, "GET", "/repos/o/r/issues?per_page=30")
	link := r.Header.Get("Link")
	if !strings.Contains(link, `<`+s.URL+`/repos/o/r/issues?per_page=30&page=2>; rel="next"`) || !strings.Contains(link, `page=4>; rel="last"`) {
		t.Fatalf("page 1 Link: %s", link)
	}
	r = call(t, s, "GET", "/repos/o/r/issues?per_page=30&page=4")
	if link := r.Header.Get("Link"); !strings.Contains(link, `rel="prev"`) || strings.Contains(link, `rel="next"`) {
		t.Fatalf("last page Link: %s", link)
	}
}

func TestAuth(t *testing.T) {
	s := start(t, func(c *Config) { c.UnauthenticatedLimit = 1 })
	req, _ := http.NewRequest("GET", s.URL+"/repos/o/r", nil)
	req.Header.Set("Authorization", "Bearer wrong")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("wrong token: %d", resp.StatusCode)
	}
	for i, want := range []int{200, 403} {
		resp, err := http.Get(s.URL + "/repos/o/r")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want || resp.Header.Get("X-Ratelimit-Limit") != "1" {
			t.Fatalf("unauthenticated %d: %d %v", i, resp.StatusCode, resp.Header)
		}
	}
}
