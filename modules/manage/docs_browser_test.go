package manage

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/routes"
)

// chromium returns the headless browser's path; without one the test is
// skipped, except in CI where the browser is part of the setup.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed (CI installs it)")
	}
	t.Skip("chromium is not installed")
	return ""
}

// browse loads url in headless Chromium, lets its scripts run, and returns
// the rendered DOM. extra adds flags (e.g. --screenshot=...).
func browse(t *testing.T, url string, extra ...string) string {
	t.Helper()
	bin := chromium(t)
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir=" + t.TempDir(), "--virtual-time-budget=5000"}
	if len(extra) == 0 {
		args = append(args, "--dump-dom")
	}
	args = append(args, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, url)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}
	return string(out)
}

// assertRendered checks that the page rendered every operation from the
// document, with the CSP in force (a blocked script, or a failed fetch of
// the document, would leave the "loading" paragraph).
func assertRendered(t *testing.T, dom string) {
	t.Helper()
	if strings.Contains(dom, `id="loading"`) {
		t.Fatalf("the page's script did not render the document:\n%.2000s", dom)
	}
	for _, want := range []string{
		"/proxy/services", "/proxy/{service}/{path}", "/proxy/services/{service}/rate-limit", "/manage/services/{key}/test",
		"/manage/diagnostics", "/version/check", "/auth-status", "Try it", "X-API-Key", "api_key",
		"RateLimited", "Gateway Timeout", "Server under pressure",
		// info.description's changes, as a list with titles.
		"<h2>Changes from the original</h2>", "<li><strong>Rate-limit headers.</strong> <span>A 429 carries <code>Retry-After</code>",
	} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered page lacks %q", want)
		}
	}
	// Each operation as method + path.
	for _, op := range routes.Endpoints("") {
		method, path, _ := strings.Cut(op, " ")
		if !strings.Contains(dom, `m-`+strings.ToLower(method)+`">`+method+`</span><span class="path">`+path+`</span>`) {
			t.Errorf("rendered page lacks the operation %s", op)
		}
	}
}

// TestDocsChromium renders the page in a real browser, served by serveDocs
// alone; TestGatewayDocsChromium does the same through the gateway.
func TestDocsChromium(t *testing.T) {
	chromium(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !serveDocs(w, r) {
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	assertRendered(t, browse(t, srv.URL+"/docs"))
	if shot := os.Getenv("BYTEPROXY_DOCS_SCREENSHOT"); shot != "" {
		// BYTEPROXY_DOCS_FRAGMENT (e.g. #proxyGet) opens one operation.
		browse(t, srv.URL+"/docs"+os.Getenv("BYTEPROXY_DOCS_FRAGMENT"), "--screenshot="+shot, "--window-size=1200,1600")
	}
}
