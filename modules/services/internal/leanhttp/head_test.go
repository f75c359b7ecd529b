package leanhttp

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"testing"
)

// headOf returns what writeHead and req.Write write for req.
func headOf(t testing.TB, req *http.Request) (lean, std string, leanErr, stdErr error) {
	t.Helper()
	var a, b bytes.Buffer
	bwa, bwb := bufio.NewWriter(&a), bufio.NewWriter(&b)
	var keys []string
	leanErr = writeHead(bwa, req, &keys)
	_ = bwa.Flush()
	if req.GetBody != nil { // the body was read: a fresh one
		req.Body, _ = req.GetBody()
	}
	stdErr = req.Write(bwb)
	_ = bwb.Flush()
	return a.String(), b.String(), leanErr, stdErr
}

func sameHead(t *testing.T, name string, req *http.Request) {
	t.Helper()
	lean, std, le, se := headOf(t, req)
	if (le == nil) != (se == nil) || le != nil && le.Error() != se.Error() {
		t.Fatalf("%s: errors differ: writeHead %v, Request.Write %v", name, le, se)
	}
	if lean != std {
		t.Fatalf("%s: writeHead wrote\n%q\nRequest.Write wrote\n%q", name, lean, std)
	}
}

// TestWriteHeadIsRequestWrite holds writeHead to Request.Write's bytes,
// on the requests the lean path sends and on the ones it hands over.
func TestWriteHeadIsRequestWrite(t *testing.T) {
	mk := func(method, rawURL string, h http.Header) *http.Request {
		u, err := url.Parse(rawURL)
		if err != nil {
			t.Fatal(err)
		}
		return &http.Request{Method: method, URL: u, Header: h, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1}
	}
	cases := map[string]*http.Request{
		"plain get":    mk("GET", "http://up:8080/api/v10/users/@me?with_counts=true", http.Header{"Accept": {"application/json"}, "User-Agent": {""}, "Authorization": {"Bot x"}}),
		"no method":    mk("", "http://up/", http.Header{}),
		"nil header":   mk("GET", "http://up/x", nil),
		"default ua":   mk("GET", "http://up/x", http.Header{"Accept": {"*/*"}}),
		"ua":           mk("HEAD", "http://up/x", http.Header{"User-Agent": {"  bot/1 \r\n x\t"}}),
		"ua empty vec": mk("GET", "http://up/x", http.Header{"User-Agent": {}}),
		"ua twice":     mk("GET", "http://up/x", http.Header{"User-Agent": {"a", "b"}}),
		"options":      mk("OPTIONS", "http://up/x", http.Header{"Origin": {"https://a"}}),
		"options star": mk("OPTIONS", "http://up", http.Header{}),
		"other method": mk("DELETE", "http://up/x", http.Header{}),
		"post":         mk("POST", "http://up/x", http.Header{}),
		"empty path":   mk("GET", "http://up", http.Header{}),
		"empty query":  mk("GET", "http://up/x?", http.Header{}),
		"escaped path": mk("GET", "http://up/a%2Fb/c%20d/é?q=%20&x=é", http.Header{}),
		"excluded": mk("GET", "http://up/x", http.Header{
			"Host": {"evil"}, "Content-Length": {"5"}, "Transfer-Encoding": {"chunked"}, "Trailer": {"X"}, "X-A": {"1"},
		}),
		"values": mk("GET", "http://up/x", http.Header{
			"X-Multi": {"a", " b ", "", "c\r\nInjected: 1", "\n\r\t"}, "Zz": {"last"}, "Aa": {"first"}, "a-lower": {"v"},
		}),
		"bad names":    mk("GET", "http://up/x", http.Header{"Bad Name": {"v"}, "Bad:": {"v"}, "": {"v"}, "Ok": {"v"}}),
		"ipv6":         mk("GET", "http://[::1]:80/x", http.Header{}),
		"ipv6 zone":    mk("GET", "http://[fe80::1%25eth0]:80/x", http.Header{}),
		"unicode host": mk("GET", "http://bücher.example/x", http.Header{}),
		"bad host":     mk("GET", "http://up/x", http.Header{}),
		"ctl path":     mk("GET", "http://up/x", http.Header{}),
		"ctl query":    mk("GET", "http://up/x", http.Header{}),
		"opaque":       mk("GET", "http://up/x", http.Header{}),
		"host field":   mk("GET", "http://up/x", http.Header{}),
		"close":        mk("GET", "http://up/x", http.Header{}),
		"body":         mk("GET", "http://up/x", http.Header{}),
		"no body":      mk("GET", "http://up/x", http.Header{}),
		"traced":       mk("GET", "http://up/x", http.Header{}),
	}
	cases["bad host"].URL.Host = "up x"
	cases["ctl path"].URL.Path = "/x\x7f"
	cases["ctl query"].URL.RawQuery = "a=\x01"
	cases["opaque"].URL.Opaque = "//up/y"
	cases["host field"].Host = "other"
	cases["close"].Close = true
	cases["body"].GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("hello")), nil }
	cases["body"].Body, cases["body"].ContentLength = io.NopCloser(strings.NewReader("hello")), 5
	cases["no body"].Body = http.NoBody
	cases["traced"] = cases["traced"].WithContext(httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{}))
	for name, req := range cases {
		sameHead(t, name, req)
	}

	// Random headers of the characters that matter: separators, CR, LF,
	// spaces, tabs, bytes above 0x7f.
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("aZ-_ :\r\n\t\x00\x7f\xc3\xa9;,=\"")
	word := func(n int) string {
		b := make([]byte, rng.IntN(n))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(b)
	}
	for i := range 2000 {
		h := http.Header{}
		for range rng.IntN(6) {
			k := word(8)
			if rng.IntN(2) == 0 {
				k = http.CanonicalHeaderKey(k)
			}
			for range rng.IntN(3) + 1 {
				h[k] = append(h[k], word(12))
			}
		}
		if rng.IntN(3) == 0 {
			h["User-Agent"] = []string{word(10)}
		}
		methods := []string{"GET", "HEAD", "OPTIONS", ""}
		req := mk(methods[rng.IntN(len(methods))], "http://up/p", h)
		req.URL.Path = "/" + word(6)
		req.URL.RawQuery = word(6)
		sameHead(t, "random "+string(rune('0'+i%10)), req)
	}
}

// BenchmarkWriteHead is the lean path's request head, as the gateway
// sends a typical API call, written by Request.Write and by writeHead.
func BenchmarkWriteHead(b *testing.B) {
	u, _ := url.Parse("http://127.0.0.1:8080/api/v10/channels/123/messages?limit=50")
	req := &http.Request{Method: "GET", URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{
		"Accept":          {"application/json"},
		"Accept-Encoding": {"gzip"},
		"Authorization":   {"Bot bench-token"},
		"User-Agent":      {"ByteProxy-bench"},
	}}
	bw := bufio.NewWriterSize(io.Discard, 8<<10)
	b.Run("request_write", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := req.Write(bw); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("write_head", func(b *testing.B) {
		var keys []string
		b.ReportAllocs()
		for b.Loop() {
			if err := writeHead(bw, req, &keys); err != nil {
				b.Fatal(err)
			}
		}
	})
}
