package gateway

import (
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

func refusalFor(t *testing.T, preset string, rf Refusal, now time.Time) (*httptest.ResponseRecorder, map[string]any) {
	t.Helper()
	cfg := ServiceConfig{Preset: preset}
	if preset == "" {
		cfg.BaseURL = "https://api.example/"
	}
	svc, err := BuildService("svc", cfg, "config", BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rf.Service = svc
	w := httptest.NewRecorder()
	if err := writeRefusal(w, nil, rf, now); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
		t.Fatalf("body %q: %v", w.Body, err)
	}
	return w, m
}

func serviceRefusal() Refusal {
	return Refusal{
		Path: "/users/@me", RetryAfter: 1436200 * time.Microsecond, Limit: 50,
		Error: "Rate limit exceeded for svc. Reset in 2 seconds.", Hint: "wait",
		Scope: "shared", Resource: "byteproxy_service",
	}
}

func TestRefusalGenericKeepsTheOriginalBody(t *testing.T) {
	now := time.Unix(1_800_000_000, 250_000_000)
	w, _ := refusalFor(t, "", serviceRefusal(), now)
	if w.Code != 429 || w.Header().Get("Retry-After") != "2" {
		t.Fatalf("status %d Retry-After %q", w.Code, w.Header().Get("Retry-After"))
	}
	want := `{"error":"Rate limit exceeded for svc. Reset in 2 seconds.","service":"svc","path":"/users/@me","troubleshooting":{"hint":"wait","documentation":"` + RateLimitDocs + `"}}`
	if got := strings.TrimSpace(w.Body.String()); got != want {
		t.Fatalf("generic body\n got %s\nwant %s", got, want)
	}
	for k := range w.Header() {
		if strings.HasPrefix(k, "X-Ratelimit") {
			t.Errorf("generic refusal invented %s", k)
		}
	}
}

func TestRefusalDiscordShape(t *testing.T) {
	now := time.Unix(1_800_000_000, 250_000_000)
	w, m := refusalFor(t, "discord", serviceRefusal(), now)
	h := w.Header()
	// 1436.2ms: rounded up to 1437ms, plus the millisecond discordgo's
	// truncation takes away.
	if m["retry_after"] != 1.438 || m["global"] != false || m["code"] != 0.0 || m["message"] != m["error"] || m["service"] != "svc" || m["path"] != "/users/@me" {
		t.Fatalf("discord body %s", w.Body)
	}
	for k, v := range map[string]string{
		"Retry-After": "2", "X-Ratelimit-Limit": "50", "X-Ratelimit-Remaining": "0",
		"X-Ratelimit-Reset": "1800000001.688", "X-Ratelimit-Reset-After": "1.438", "X-Ratelimit-Scope": "shared",
	} {
		if got := h.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if _, ok := h["X-Ratelimit-Global"]; ok {
		t.Error("X-RateLimit-Global sent for a limit that is not global (libraries read any value as global)")
	}
	if _, ok := h["X-Ratelimit-Bucket"]; ok {
		t.Error("X-RateLimit-Bucket invented")
	}

	// discordgo's reading of retry_after (whole seconds plus the fraction
	// times 1000, truncated to milliseconds) never falls short of the wait.
	for _, ms := range []int64{1, 7, 437, 999, 1000, 1001, 12345, 59999} {
		retry := time.Duration(ms)*time.Millisecond - time.Microsecond
		f, _ := strconv.ParseFloat(string(appendSeconds(nil, discordWait(retry))), 64)
		whole, frac := math.Modf(f)
		read := time.Duration(whole)*time.Second + time.Duration(frac*1000)*time.Millisecond
		if read < retry {
			t.Errorf("retry %v: discordgo reads %v", retry, read)
		}
	}

	rf := serviceRefusal()
	rf.Scope, rf.Global, rf.Bucket, rf.Limit = "global", true, "abcd", 0
	w, m = refusalFor(t, "discord", rf, now)
	if h := w.Header(); h.Get("X-Ratelimit-Global") != "true" || h.Get("X-Ratelimit-Scope") != "global" || h.Get("X-Ratelimit-Bucket") != "abcd" || h.Get("X-Ratelimit-Limit") != "" || m["global"] != true {
		t.Errorf("global refusal: %v %s", h, w.Body)
	}
}

func TestRefusalGitHubShape(t *testing.T) {
	now := time.Unix(1_800_000_000, 250_000_000)
	rf := serviceRefusal()
	rf.RetryAfter = 3599*time.Second + 800*time.Millisecond
	w, m := refusalFor(t, "github", rf, now)
	h := w.Header()
	if w.Code != 429 || m["message"] != m["error"] || m["documentation_url"] != RateLimitDocs || m["service"] != "svc" {
		t.Fatalf("github %d body %s", w.Code, w.Body)
	}
	// Reset: epoch seconds of now+retry (1800003600.05), rounded up.
	for k, v := range map[string]string{
		"Retry-After": "3600", "X-Ratelimit-Limit": "50", "X-Ratelimit-Remaining": "0", "X-Ratelimit-Used": "50",
		"X-Ratelimit-Reset": "1800003601", "X-Ratelimit-Resource": "byteproxy_service",
	} {
		if got := h.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	for _, k := range []string{"X-Ratelimit-Scope", "X-Ratelimit-Reset-After"} {
		if _, ok := h[k]; ok {
			t.Errorf("GitHub shape has Discord's %s", k)
		}
	}
	rf.Status = http.StatusForbidden
	if w, _ := refusalFor(t, "github", rf, now); w.Code != 403 {
		t.Errorf("status %d, want the 403 asked for", w.Code)
	}
}
