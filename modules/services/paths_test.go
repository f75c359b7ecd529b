package services

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/metrics"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

func TestRouteSetPath(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		base, tail, want string
	}{
		{"http://h/api/", "users/1", "/api/users/1"},
		{"http://h/api/", "", "/api/"},
		{"http://h/", "//evil.example/x", "/evil.example/x"},
		{"http://h/api/", "a%2Fb", "/api/a%2Fb"},
		{"http://h/api/", "a!b(c)", "/api/a!b(c)"},
		{"http://h/api/", "sp%20ace", "/api/sp%20ace"},
		{"http://h/api/", "%5Cx", "/api/%5Cx"},
		{"http://h/a%2Fb/", "c", "/a%2Fb/c"},
		{"http://h/api/", "@me", "/api/@me"},
	} {
		b, _ := url.Parse(c.base)
		rt := newRoute(b)
		u := &url.URL{Scheme: "http", Host: "h"}
		rt.setPath(u, c.tail)
		if got := u.RequestURI(); got != c.want {
			t.Errorf("%s + %q = %s, want %s", c.base, c.tail, got, c.want)
		}
	}
}

func testService(t testing.TB, cfg gateway.ServiceConfig) *gateway.Service {
	t.Helper()
	s, err := gateway.BuildService("svc", cfg, "config", gateway.BuildOptions{Timeout: time.Second, Retries: 1, StrictTLS: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestRewrite checks the outgoing request built from an incoming one.
func TestRewrite(t *testing.T) {
	t.Parallel()
	s := testService(t, gateway.ServiceConfig{
		BaseURL:  "https://api.example.com/base/",
		Versions: map[string]string{"v2": "https://v2.example.com/two/"},
		Headers:  map[string]string{"user-agent": "svc", "X-Default": "d"},
		Auth:     &gateway.ServiceAuth{Type: "query", Name: "key", Token: "t&k n"},
	})
	f := newForwarder(s, nil, zap.NewNop(), true)
	for _, c := range []struct{ in, want string }{
		{"/proxy/svc/x?y=2&y=3&flag&api_key=k&key=client", "https://api.example.com/base/x?y=2&y=3&flag&key=t%26k+n"},
		{"/proxy/svc/v2/x/y", "https://v2.example.com/two/x/y?key=t%26k+n"},
		{"/proxy/svc/a%2Fb?semi=1;2", "https://api.example.com/base/a%2Fb?semi=1;2&key=t%26k+n"},
	} {
		in, _ := http.NewRequest("GET", "http://gateway"+c.in, nil)
		in.Header.Set("User-Agent", "client")
		in.Header.Set("X-Api-Key", "k")
		in.Header.Set("X-Forwarded-Server", "x")
		out := in.Clone(in.Context())
		f.rewrite(&httputil.ProxyRequest{In: in, Out: out})
		if got := out.URL.Scheme + "://" + out.URL.Host + out.URL.RequestURI(); got != c.want {
			t.Errorf("%s -> %s, want %s", c.in, got, c.want)
		}
		if out.Host != "" || out.Header.Get("User-Agent") != "client" || out.Header.Get("X-Default") != "d" ||
			out.Header.Get("X-Api-Key") != "" || out.Header.Get("X-Forwarded-Server") != "" {
			t.Errorf("%s: host %q headers %v", c.in, out.Host, out.Header)
		}
	}
}

func TestErrorClassification(t *testing.T) {
	t.Parallel()
	s := testService(t, gateway.ServiceConfig{BaseURL: "http://127.0.0.1:1/", Auth: &gateway.ServiceAuth{Type: "query", Name: "key", Token: "SECRETTOKEN"}})
	f := newForwarder(s, nil, zap.NewNop(), true)
	r, _ := http.NewRequest("GET", "http://127.0.0.1:1/x?key=SECRETTOKEN", nil)
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, c := range []struct {
		err    error
		status int
		kind   string
		retry  bool
	}{
		{refused, 502, metrics.UpstreamErrDial, true},
		{&url.Error{Op: "Get", URL: r.URL.String(), Err: refused}, 502, metrics.UpstreamErrDial, true},
		{&net.OpError{Op: "dial", Net: "tcp", Err: &timeoutErr{}}, 504, metrics.UpstreamErrTimeout, false},
		{&timeoutErr{}, 504, metrics.UpstreamErrTimeout, false},
		{&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, 502, metrics.UpstreamErrReset, false},
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("refusing to dial private address 10.0.0.1")}, 502, metrics.UpstreamErrDial, false},
		{errors.New("something else with SECRETTOKEN"), 502, metrics.UpstreamErrOther, false},
	} {
		status, kind, msg := f.describe(r.URL.Scheme+"://"+r.URL.Host, c.err)
		if status != c.status || kind != c.kind {
			t.Errorf("%v: %d %s, want %d %s", c.err, status, kind, c.status, c.kind)
		}
		if connectFailed(c.err) != c.retry {
			t.Errorf("%v: retryable = %v, want %v", c.err, !c.retry, c.retry)
		}
		if msg == "" || strings.Contains(msg, "SECRET") {
			t.Errorf("%v: message %q", c.err, msg)
		}
	}
}

type timeoutErr struct{}

func (*timeoutErr) Error() string   { return "i/o timeout" }
func (*timeoutErr) Timeout() bool   { return true }
func (*timeoutErr) Temporary() bool { return true }

func TestReplayable(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		method string
		body   bool
		want   bool
	}{
		{"GET", false, true}, {"HEAD", false, true}, {"OPTIONS", false, true},
		{"PUT", false, true}, {"DELETE", false, true},
		{"PUT", true, false}, {"POST", false, false}, {"PATCH", false, false},
	} {
		r, _ := http.NewRequest(c.method, "http://x/", nil)
		if c.body {
			r.Body = io.NopCloser(strings.NewReader("body"))
		}
		if got := replayable(r); got != c.want {
			t.Errorf("%s body=%v: replayable %v, want %v", c.method, c.body, got, c.want)
		}
	}
}

func TestDurationAndBackoff(t *testing.T) {
	t.Parallel()
	if got := durationMS(1234567 * time.Microsecond); got != "1234ms" {
		t.Errorf("durationMS = %q", got)
	}
	for d, want := range map[time.Duration]string{
		0: "0ms", -time.Second: "0ms", 42*time.Millisecond + 999*time.Microsecond: "42ms",
		999 * time.Millisecond: "999ms", time.Second: "1000ms",
	} {
		if got := durationMS(d); got != want {
			t.Errorf("durationMS(%v) = %q, want %q", d, got, want)
		}
	}
	if backoff(1) != 50*time.Millisecond || backoff(2) != 100*time.Millisecond || backoff(10) != time.Second {
		t.Errorf("backoff %v %v %v", backoff(1), backoff(2), backoff(10))
	}
}
