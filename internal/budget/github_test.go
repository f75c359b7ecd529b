package budget

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	githubsim "github.com/byteproxy/byteproxy/internal/upstreamsim/github"
)

const ghToken = "ghp_test_token"

func startGitHub(t *testing.T, mod func(*githubsim.Config)) *githubsim.Server {
	t.Helper()
	cfg := githubsim.Config{Tokens: []string{ghToken}}
	if mod != nil {
		mod(&cfg)
	}
	s, err := githubsim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func githubForwarder(e *Engine, sim *githubsim.Server) *forwarder {
	return newForwarder(e, sim.URL, CredentialID("api.github.com", ghToken), "Bearer "+ghToken)
}

// TestGitHubDrainCoreBudget: three consumers draining a core budget of
// 100: exactly 100 requests reach GitHub, the rest are refused locally
// with GitHub's reset.
func TestGitHubDrainCoreBudget(t *testing.T) {
	sim := startGitHub(t, func(c *githubsim.Config) {
		c.Resources = map[string]githubsim.Resource{"core": {Limit: 100, Window: time.Hour}}
	})
	e := New(GitHubConfig(), testStore(t))
	f := githubForwarder(e, sim)
	var mu sync.Mutex
	var refusals []*Refusal
	var ok atomic.Int64
	var wg sync.WaitGroup
	for _, who := range []string{"alice", "bob", "carol"} {
		for range 5 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 10 {
					r := f.do(context.Background(), who, "GET", "/repos/octo/app/issues/1", -1)
					switch {
					case r.refusal != nil:
						mu.Lock()
						refusals = append(refusals, r.refusal)
						mu.Unlock()
					case r.status == 200:
						ok.Add(1)
					default:
						t.Errorf("%s: status %d %v", who, r.status, r.err)
					}
				}
			}()
		}
	}
	wg.Wait()
	st := sim.Stats()
	if st.Counted["core"] != 100 || ok.Load() != 100 || st.PrimaryLimited != 0 {
		t.Fatalf("GitHub counted %d, %d succeeded, %d refused by GitHub; want exactly 100 sent and none refused there",
			st.Counted["core"], ok.Load(), st.PrimaryLimited)
	}
	if len(refusals) != 50 {
		t.Fatalf("%d refused locally, want 50", len(refusals))
	}
	reset := time.Unix(sim.Reset(ghToken, "core"), 0)
	for _, r := range refusals {
		// The local reset is GitHub's, measured from its Date (whole
		// seconds, so up to a second later) plus slack.
		if r.Scope != ScopeBucket || r.Name != "core" || r.Limit != 100 || r.Reset.Before(reset) || r.Reset.After(reset.Add(1500*time.Millisecond)) {
			t.Fatalf("refusal %+v; GitHub resets at %v", r, reset)
		}
	}
}

// TestGitHubSecondaryLimitLocks: a 403 with retry-after locks the
// credential until then: nothing reaches GitHub meanwhile, and a request
// that may wait is sent after.
func TestGitHubSecondaryLimitLocks(t *testing.T) {
	sim := startGitHub(t, nil)
	e := New(GitHubConfig(), testStore(t))
	f := githubForwarder(e, sim)
	ctx := context.Background()
	sim.ForceSecondary(ghToken, 2*time.Second)
	if r := f.do(ctx, "a", "GET", "/repos/octo/app", -1); r.status != 403 || r.header.Get("Retry-After") != "2" {
		t.Fatalf("first request: %d retry-after %q", r.status, r.header.Get("Retry-After"))
	}
	before := sim.Stats().Received
	r := f.do(ctx, "a", "GET", "/repos/octo/app", 0)
	if r.refusal == nil || r.refusal.Scope != ScopeLocked || r.refusal.RetryAfter <= time.Second || r.refusal.RetryAfter > 2300*time.Millisecond {
		t.Fatalf("during the secondary limit: %d %+v", r.status, r.refusal)
	}
	held := f.do(ctx, "a", "GET", "/repos/octo/app", 3*time.Second)
	if held.status != 200 || held.ticket.Waited <= 0 {
		t.Fatalf("a request that may wait 3s: %d waited %v %+v", held.status, held.ticket.Waited, held.refusal)
	}
	if st := sim.Stats(); st.Received-before != 1 || st.SecondaryLimited != 1 {
		t.Fatalf("GitHub received %d more requests and refused %d for the secondary limit; want 1 and 1", st.Received-before, st.SecondaryLimited)
	}
}

// TestGitHubMutationsSpaced: mutating requests go one at a time, spaced:
// GitHub's secondary limit for them never trips; without the budget it
// does.
func TestGitHubMutationsSpaced(t *testing.T) {
	run := func(t *testing.T, e *Engine) githubsim.Stats {
		sim := startGitHub(t, func(c *githubsim.Config) {
			c.MutationGap = 150 * time.Millisecond
			c.SecondaryRetryAfter = time.Second
			c.Latency = 5 * time.Millisecond
		})
		f := githubForwarder(e, sim)
		var wg sync.WaitGroup
		for _, who := range []string{"alice", "bob", "carol"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 4 {
					f.do(context.Background(), who, "POST", "/repos/octo/app/issues", -1)
				}
			}()
		}
		wg.Wait()
		return sim.Stats()
	}
	t.Run("budget", func(t *testing.T) {
		cfg := GitHubConfig()
		cfg.MutationSpacing = 150 * time.Millisecond
		st := run(t, New(cfg, testStore(t)))
		if st.ByStatus[201] != 12 || st.SecondaryTripped != 0 || st.MinMutationGap < 150*time.Millisecond {
			t.Fatalf("created %d, secondary limit tripped %d times, least gap %v", st.ByStatus[201], st.SecondaryTripped, st.MinMutationGap)
		}
		t.Logf("least gap between mutations at GitHub: %v", st.MinMutationGap)
	})
	t.Run("without budget", func(t *testing.T) {
		st := run(t, nil)
		if st.SecondaryTripped == 0 {
			t.Fatal("without the budget the secondary limit never tripped: the test cannot fail")
		}
	})
}

// TestGitHubConditionalRequestsSpendNothing: 304s do not count at GitHub,
// and the budget sees that in the counts GitHub reports.
func TestGitHubConditionalRequestsSpendNothing(t *testing.T) {
	sim := startGitHub(t, func(c *githubsim.Config) {
		c.Resources = map[string]githubsim.Resource{"core": {Limit: 5, Window: time.Hour}}
	})
	e := New(GitHubConfig(), testStore(t))
	f := githubForwarder(e, sim)
	ctx := context.Background()
	first := f.do(ctx, "a", "GET", "/repos/octo/app", -1)
	etag := first.header.Get("ETag")
	if first.status != 200 || etag == "" {
		t.Fatalf("first: %d etag %q", first.status, etag)
	}
	for range 10 {
		req := Request{Credential: f.cred, Method: "GET", Path: "/repos/octo/app", Consumer: "a"}
		tk, err := e.Reserve(ctx, req)
		if err != nil {
			t.Fatalf("conditional request refused: %v", err)
		}
		hreq, _ := http.NewRequest("GET", sim.URL+"/repos/octo/app", nil)
		hreq.Header.Set("Authorization", f.auth)
		hreq.Header.Set("If-None-Match", etag)
		resp, err := f.client.Do(hreq)
		if err != nil {
			t.Fatal(err)
		}
		e.Done(&tk, resp.StatusCode, resp.Header)
		resp.Body.Close()
		if resp.StatusCode != 304 {
			t.Fatalf("conditional: %d", resp.StatusCode)
		}
	}
	for i := range 4 {
		if r := f.do(ctx, "a", "GET", "/repos/octo/app/pulls", -1); r.status != 200 {
			t.Fatalf("request %d of the 4 left: %d %+v", i, r.status, r.refusal)
		}
	}
	if r := f.do(ctx, "a", "GET", "/repos/octo/app/pulls", 0); r.refusal == nil {
		t.Fatalf("the 6th counted request: %d, want refused locally", r.status)
	}
	if st := sim.Stats(); st.NotModified != 10 || st.Counted["core"] != 5 || st.PrimaryLimited != 0 {
		t.Fatalf("%+v", st)
	}
}

// TestGitHubLearnsResource: a route whose responses name another resource
// than its path suggests spends from that resource afterwards.
func TestGitHubLearnsResource(t *testing.T) {
	e := New(GitHubConfig(), testStore(t))
	req := Request{Credential: "c", Method: "POST", Path: "/repos/o/r/import", Consumer: "a"}
	if p := e.plan(req, time.Now()); p.Route != "core" {
		t.Fatalf("guess %q", p.Route)
	}
	tk, err := e.Reserve(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set("X-RateLimit-Resource", "source_import")
	h.Set("X-RateLimit-Limit", "100")
	h.Set("X-RateLimit-Remaining", "99")
	h.Set("X-RateLimit-Reset", "4102444800")
	e.Done(&tk, 201, h)
	req.Path = "/repos/other/repo/import"
	if p := e.plan(req, time.Now()); p.Route != "source_import" {
		t.Fatalf("after learning: %q", p.Route)
	}
}
