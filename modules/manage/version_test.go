package manage

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

func versionCheck(t *testing.T, app *gateway.App) map[string]any {
	t.Helper()
	rec := httptest.NewRecorder()
	var c *updateChecker
	if app.UpdateCheck != "" {
		var err error
		if c, err = acquireChecker(app.UpdateCheck, nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { releaseChecker(c) })
	}
	if err := serveVersionCheck(rec, httptest.NewRequest(http.MethodGet, "/version/check", nil), c); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/json; charset=utf-8" {
		t.Fatalf("status %d, Content-Type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	return body
}

// feed serves a GitHub releases list and counts its hits.
func feed(t *testing.T, body string) (string, *atomic.Int64) {
	t.Helper()
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.Header.Get("User-Agent") != "ByteProxy/"+gateway.Version {
			t.Errorf("User-Agent %q", r.Header.Get("User-Agent"))
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/repos/byteproxy/byteproxy/releases", &hits
}

func TestVersionCheckNotConfigured(t *testing.T) {
	body := versionCheck(t, &gateway.App{})
	if body["currentVersion"] != "v"+gateway.Version || body["checked"] != false || body["message"] != "no update_check configured" {
		t.Fatalf("body %v", body)
	}
}

func TestVersionCheckUpdateAvailable(t *testing.T) {
	url, hits := feed(t, `[
		{"tag_name": "v9.1.0-rc.1", "html_url": "https://example.test/rc", "prerelease": true, "published_at": "2026-11-01T00:00:00Z"},
		{"tag_name": "v9.0.0", "html_url": "https://example.test/v9.0.0", "prerelease": false, "published_at": "2026-10-01T00:00:00Z"},
		{"tag_name": "v10.0.0", "html_url": "https://example.test/draft", "draft": true},
		{"tag_name": "nightly", "html_url": "https://example.test/nightly"},
		{"tag_name": "v0.1.0", "html_url": "https://example.test/v0.1.0", "published_at": "2025-01-01T00:00:00Z"}
	]`)
	app := &gateway.App{UpdateCheck: url}
	body := versionCheck(t, app)
	want := map[string]any{
		"currentVersion": "v" + gateway.Version, "checked": true, "latestVersion": "v9.0.0",
		"latestReleaseUrl": "https://example.test/v9.0.0", "isLatest": false, "updateAvailable": true,
		"isPrerelease": false, "releaseDate": "2026-10-01T00:00:00Z",
	}
	for k, v := range want {
		if body[k] != v {
			t.Errorf("%s = %v, want %v", k, body[k], v)
		}
	}
	if _, err := time.Parse(time.RFC3339, fmt.Sprint(body["checkTime"])); err != nil {
		t.Errorf("checkTime %v", body["checkTime"])
	}
	if _, ok := body["error"]; ok {
		t.Errorf("error %v", body["error"])
	}
	// The result is cached: a second request does not read the feed again.
	versionCheck(t, app)
	if n := hits.Load(); n != 1 {
		t.Fatalf("feed read %d times, want 1", n)
	}
}

func TestVersionCheckIsLatest(t *testing.T) {
	url, _ := feed(t, `{"tag_name": "v`+gateway.Version+`", "html_url": "https://example.test/cur", "published_at": "2026-10-01T00:00:00Z"}`)
	body := versionCheck(t, &gateway.App{UpdateCheck: url})
	if body["isLatest"] != true || body["updateAvailable"] != false || body["latestVersion"] != "v"+gateway.Version {
		t.Fatalf("body %v", body)
	}
}

// With no network the answer says so: isLatest is null and error is set
// (the original claimed isLatest:true).
func TestVersionCheckUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens here now: connection refused
	body := versionCheck(t, &gateway.App{UpdateCheck: "http://" + addr + "/releases"})
	if body["isLatest"] != nil || body["updateAvailable"] != false || body["latestVersion"] != nil || body["checked"] != true {
		t.Fatalf("body %v", body)
	}
	if e, _ := body["error"].(string); e == "" {
		t.Fatalf("no error reported: %v", body)
	}
}

func TestVersionCheckBadFeed(t *testing.T) {
	for name, doc := range map[string]string{"not json": `<html>`, "no semver": `[{"tag_name":"latest"}]`, "empty": `[]`} {
		t.Run(name, func(t *testing.T) {
			url, _ := feed(t, doc)
			body := versionCheck(t, &gateway.App{UpdateCheck: url})
			if e, _ := body["error"].(string); e == "" || body["isLatest"] != nil {
				t.Fatalf("body %v", body)
			}
		})
	}
}

// A slow feed never holds a request longer than updateCheckWait; the
// answer then says the feed has not been read yet.
func TestVersionCheckSlowFeed(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		fmt.Fprint(w, `[{"tag_name":"v1.0.0"}]`)
	}))
	defer srv.Close()
	defer close(release)
	old := updateCheckWait
	updateCheckWait = 100 * time.Millisecond
	defer func() { updateCheckWait = old }()
	start := time.Now()
	body := versionCheck(t, &gateway.App{UpdateCheck: srv.URL + "/slow"})
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("request waited %v", d)
	}
	if body["checked"] != false || body["isLatest"] != nil {
		t.Fatalf("body %v", body)
	}
}
