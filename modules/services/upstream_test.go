package services

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Distinctive upstream tokens: none of them, nor their first or last six
// characters, may ever reach a client or the gateway's log.
var tokens = map[string]string{
	"T_BEARER":          "tok-SECRET-bearer-4f9a1Zq",
	"T_BOT":             "tok-SECRET-bot-8c2b7Yx",
	"T_BASIC":           "svcuser:tok-SECRET-basic-5d3e9Wp",
	"T_HEADER":          "tok-SECRET-header-1a6c4Vr",
	"T_QUERY":           "tok-SECRET-query-7e8f2Us",
	"GITHUB_TOKEN":      "tok-SECRET-github-2b5d8Tt",
	"DISCORD_BOT_TOKEN": "tok-SECRET-discord-9c1a3Ss",
}

func tokenEnv() []string {
	var env []string
	for k, v := range tokens {
		env = append(env, k+"="+v)
	}
	return append(env, "BP_TEST_UNSET_TOKEN=")
}

// seen is what the upstream received for one request.
type seen struct {
	Method     string
	Host       string
	RequestURI string
	RawQuery   string
	Header     http.Header
}

// upstream is a real HTTP server on loopback that records every request
// carrying an X-Test-Id and answers by path. It never echoes a request
// header back, so a token can only reach a client through the gateway.
type upstream struct {
	srv      *httptest.Server
	mu       sync.Mutex
	seen     map[string]seen
	hits     atomic.Int64
	canceled chan string // X-Test-Id of /slow requests whose context ended early
}

var gzipBody = func() []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	_, _ = zw.Write(bytes.Repeat([]byte("compressed hello from upstream\n"), 100))
	_ = zw.Close()
	return b.Bytes()
}()

func newUpstream(t testing.TB) *upstream {
	u := &upstream{seen: map[string]seen{}, canceled: make(chan string, 16)}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upstream) hostport() string { return strings.TrimPrefix(u.srv.URL, "http://") }

func (u *upstream) get(t testing.TB, id string) seen {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	s, ok := u.seen[id]
	if !ok {
		t.Fatalf("upstream did not receive request %s", id)
	}
	return s
}

func (u *upstream) received(id string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	_, ok := u.seen[id]
	return ok
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	u.hits.Add(1)
	id := r.Header.Get("X-Test-Id")
	if id != "" {
		u.mu.Lock()
		u.seen[id] = seen{Method: r.Method, Host: r.Host, RequestURI: r.RequestURI, RawQuery: r.URL.RawQuery, Header: r.Header.Clone()}
		u.mu.Unlock()
	}
	p := r.URL.Path
	switch {
	case strings.Contains(p, "/status/"):
		code, _ := strconv.Atoi(p[strings.LastIndex(p, "/")+1:])
		if code == http.StatusFound {
			w.Header().Set("Location", "/somewhere/else")
		}
		if code == http.StatusNotModified {
			w.Header().Set("ETag", `"v1"`)
		}
		w.WriteHeader(code)
		if code != http.StatusNoContent && code != http.StatusNotModified {
			fmt.Fprintf(w, "status %d body", code)
		}
	case strings.HasSuffix(p, "/cookies"):
		w.Header().Add("Set-Cookie", "a=1; Path=/")
		w.Header().Add("Set-Cookie", "b=2; Path=/; HttpOnly")
		w.Header().Set("X-Proxy-Service", "spoofed-by-upstream")
		w.Header().Set("Server", "upstream-srv")
		_, _ = io.WriteString(w, "cookies")
	case strings.HasSuffix(p, "/gzip"):
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(gzipBody)))
		_, _ = w.Write(gzipBody)
	case strings.HasSuffix(p, "/delay"):
		time.Sleep(300 * time.Millisecond)
		_, _ = io.WriteString(w, "late")
	case strings.HasSuffix(p, "/slow"):
		select {
		case <-r.Context().Done():
			u.canceled <- id
		case <-time.After(10 * time.Second):
			_, _ = io.WriteString(w, "too late")
		}
	case strings.HasSuffix(p, "/trailer"):
		w.Header().Set("Trailer", "X-Checksum")
		_, _ = io.WriteString(w, "body with trailer")
		w.(http.Flusher).Flush()
		w.Header().Set("X-Checksum", "c0ffee")
	case strings.HasSuffix(p, "/upload"):
		h := crc32.New(crcTable)
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"bytes": n, "crc": h.Sum32()})
	case strings.HasSuffix(p, "/download"):
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		_, _ = io.Copy(w, newPattern(n))
	case strings.HasSuffix(p, "/ws"):
		if r.Header.Get("Authorization") != "Bearer "+tokens["T_BEARER"] {
			http.Error(w, "no credential", http.StatusUnauthorized)
			return
		}
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, append([]byte("echo: "), msg...)); err != nil {
				return
			}
		}
	default:
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Upstream", "yes")
		_, _ = io.WriteString(w, `{"ok":true}`)
	}
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// pattern generates n deterministic bytes without holding them: 64 KiB
// blocks of pseudo-random data, each stamped with its index.
type pattern struct {
	left  int64
	block [64 << 10]byte
	idx   uint64
	off   int
}

func newPattern(n int64) *pattern {
	p := &pattern{left: n}
	x := uint64(0x9E3779B97F4A7C15)
	for i := range p.block {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		p.block[i] = byte(x)
	}
	p.stamp()
	return p
}

func (p *pattern) stamp() {
	for i := 0; i < 8; i++ {
		p.block[i] = byte(p.idx >> (8 * i))
	}
}

func (p *pattern) Read(b []byte) (int, error) {
	if p.left <= 0 {
		return 0, io.EOF
	}
	if p.off == len(p.block) {
		p.idx++
		p.stamp()
		p.off = 0
	}
	n := copy(b, p.block[p.off:])
	if int64(n) > p.left {
		n = int(p.left)
	}
	p.off += n
	p.left -= int64(n)
	return n, nil
}

// patternCRC is the checksum of the first n bytes of the pattern.
func patternCRC(n int64) uint32 {
	h := crc32.New(crcTable)
	_, _ = io.Copy(h, newPattern(n))
	return h.Sum32()
}

// client does not follow redirects and does not decompress, so tests see
// exactly what the gateway sent.
var client = &http.Client{
	Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 16},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}

type result struct {
	status int
	header http.Header
	body   []byte
	took   time.Duration
}

// call sends a request through the gateway; headers are name, value pairs
// and may repeat a name.
func call(t testing.TB, method, url string, body io.Reader, headers ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return result{status: resp.StatusCode, header: resp.Header, body: b, took: time.Since(start)}
}

// raw sends a GET request line exactly as given (no client-side cleaning
// or escaping) and returns the response.
func raw(t testing.TB, addr, target string, headers ...string) result {
	t.Helper()
	return rawMethod(t, addr, "GET", target, headers...)
}

// rawMethod is raw with another method.
func rawMethod(t testing.TB, addr, method, target string, headers ...string) result {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, target, addr)
	for i := 0; i+1 < len(headers); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", headers[i], headers[i+1])
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: body}
}

func decode(t testing.TB, r result) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body is not JSON (status %d): %v\n%s", r.status, err, r.body)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	return m
}

var idSeq atomic.Int64

func newID() string { return "req-" + strconv.FormatInt(idSeq.Add(1), 10) }
