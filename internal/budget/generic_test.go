package budget

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"
)

// limitedUpstream is a service on loopback with a fixed window of limit
// requests per window (whole seconds, ending on a whole second), which it
// describes with the IETF RateLimit fields or X-RateLimit headers (reset
// in epoch seconds), and which answers 429 beyond it.
type limitedUpstream struct {
	family HeaderFamily
	limit  int
	window time.Duration

	mu        sync.Mutex
	count     int
	reset     time.Time
	received  int
	tooMany   int
	retryNext string // answer the next request 503 with this Retry-After
	url       string
}

func startLimited(t *testing.T, family HeaderFamily, limit int, window time.Duration) *limitedUpstream {
	u := &limitedUpstream{family: family, limit: limit, window: window}
	srv := httptest.NewServer(u)
	t.Cleanup(srv.Close)
	u.url = srv.URL
	return u
}

func (u *limitedUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.received++
	now := time.Now()
	if u.retryNext != "" {
		w.Header().Set("Retry-After", u.retryNext)
		u.retryNext = ""
		w.WriteHeader(503)
		return
	}
	if !now.Before(u.reset) {
		u.count = 0
		u.reset = now.Add(u.window).Truncate(time.Second).Add(time.Second)
	}
	status := 200
	if u.count >= u.limit {
		status = 429
		u.tooMany++
	} else {
		u.count++
	}
	h := w.Header()
	remaining := u.limit - u.count
	switch u.family {
	case FamilyIETF:
		h.Set("RateLimit-Policy", `"default";q=`+strconv.Itoa(u.limit)+`;w=`+strconv.Itoa(int(u.window/time.Second)))
		t := (u.reset.Sub(now) + time.Second - 1) / time.Second
		h.Set("RateLimit", `"default";r=`+strconv.Itoa(remaining)+`;t=`+strconv.Itoa(int(t)))
	case FamilyXRateLimit:
		h.Set("X-RateLimit-Limit", strconv.Itoa(u.limit))
		h.Set("X-RateLimit-Remaining", strconv.Itoa(remaining))
		h.Set("X-RateLimit-Reset", strconv.FormatInt(u.reset.Unix(), 10))
	}
	w.WriteHeader(status)
}

func (u *limitedUpstream) stats() (received, tooMany int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.received, u.tooMany
}

// burst sends n requests from 3 consumers at once.
func burst(t *testing.T, f *forwarder, n int) {
	var wg sync.WaitGroup
	for c := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n / 3 {
				f.do(context.Background(), "consumer-"+strconv.Itoa(c), "GET", "/items", -1)
			}
		}()
	}
	wg.Wait()
}

// TestGenericFamilies: a service described by IETF RateLimit fields or
// X-RateLimit headers gets no 429 through the budget; without it, it does.
func TestGenericFamilies(t *testing.T) {
	for _, tt := range []struct {
		name   string
		family HeaderFamily
		epoch  bool
	}{
		{"ietf", FamilyIETF, false},
		{"x-ratelimit epoch", FamilyXRateLimit, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			up := startLimited(t, tt.family, 6, time.Second)
			cfg := GenericConfig()
			cfg.Family, cfg.ResetEpoch = tt.family, tt.epoch
			burst(t, newForwarder(New(cfg, testStore(t)), up.url, "cred", ""), 12)
			if received, tooMany := up.stats(); received != 12 || tooMany != 0 {
				t.Fatalf("received %d, answered %d 429s", received, tooMany)
			}
		})
	}
	t.Run("without budget", func(t *testing.T) {
		up := startLimited(t, FamilyIETF, 4, time.Second)
		burst(t, newForwarder(nil, up.url, "cred", ""), 12)
		if _, tooMany := up.stats(); tooMany == 0 {
			t.Fatal("no 429 without the budget: the test cannot fail")
		}
	})
}

// TestGenericRetryAfter: any service's 503 with Retry-After locks the
// credential until then.
func TestGenericRetryAfter(t *testing.T) {
	up := startLimited(t, FamilyNone, 100, time.Second)
	up.retryNext = "1"
	f := newForwarder(New(GenericConfig(), testStore(t)), up.url, "cred", "")
	ctx := context.Background()
	if r := f.do(ctx, "a", "GET", "/x", -1); r.status != 503 {
		t.Fatalf("first: %d", r.status)
	}
	r := f.do(ctx, "a", "GET", "/x", 0)
	if r.refusal == nil || r.refusal.Scope != ScopeLocked || r.refusal.RetryAfter > time.Second+200*time.Millisecond {
		t.Fatalf("after Retry-After: %d %+v", r.status, r.refusal)
	}
	if held := f.do(ctx, "a", "GET", "/x", 2*time.Second); held.status != 200 || held.ticket.Waited <= 0 {
		t.Fatalf("held: %d %+v", held.status, held.refusal)
	}
	if received, _ := up.stats(); received != 2 {
		t.Fatalf("received %d, want 2", received)
	}
}
