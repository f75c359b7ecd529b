package services

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil"
	githubsim "github.com/byteproxy/byteproxy/internal/upstreamsim/github"
)

const simGitHubToken = "ghp_sim_token_0123456789"

func startGitHubSim(t *testing.T, mod func(*githubsim.Config)) *githubsim.Server {
	t.Helper()
	cfg := githubsim.Config{Tokens: []string{simGitHubToken}}
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

const githubGateway = `{
	byteproxy {
		service github {
			base_url {{SIM}}/
			auth bearer {env.BP_SIM_GH_TOKEN}
			{{LIMITS}}
		}
	}
}

:{{PORT}} {
	byteproxy
}
`

func startGitHubGateway(t *testing.T, sim *githubsim.Server, limits string) *testutil.Instance {
	return startBudgetGateway(t, strings.NewReplacer("{{SIM}}", sim.URL, "{{LIMITS}}", limits).Replace(githubGateway))
}

// TestBudgetGitHubDrain: three consumers draining a core budget of 100:
// exactly 100 requests reach GitHub, and every other one is answered by
// the gateway in GitHub's shape (403, x-ratelimit-remaining 0, the reset
// GitHub announced, the resource), which octokit and go-github wait on.
func TestBudgetGitHubDrain(t *testing.T) {
	sim := startGitHubSim(t, func(c *githubsim.Config) {
		c.Resources = map[string]githubsim.Resource{"core": {Limit: 100, Window: time.Hour}}
	})
	gw := startGitHubGateway(t, sim, "")
	var mu sync.Mutex
	byStatus := map[int]int{}
	var refusals []reply
	var wg sync.WaitGroup
	for consumer := range 3 {
		c := consumerClient(30 + consumer)
		for range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 6 {
					r := send(context.Background(), c, "GET", gw.URL("/proxy/github/repos/octo/hello"))
					mu.Lock()
					byStatus[r.status]++
					if r.status != 200 {
						refusals = append(refusals, r)
					}
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	st := sim.Stats()
	if st.Counted["core"] != 100 || st.Received != 100 || st.PrimaryLimited != 0 {
		t.Errorf("GitHub received %d requests, counted %d, refused %d as over the limit; want exactly 100 sent and none refused (%v)",
			st.Received, st.Counted["core"], st.PrimaryLimited, st.ByStatus)
	}
	if byStatus[200] != 100 || byStatus[403] != 80 {
		t.Fatalf("clients saw %v, want 100 answers of GitHub and 80 of the gateway", byStatus)
	}
	reset := sim.Reset(simGitHubToken, "core")
	for _, r := range refusals[:3] {
		h := r.header
		got, _ := strconv.ParseInt(h.Get("X-Ratelimit-Reset"), 10, 64)
		// The gateway measures GitHub's reset against the response's Date
		// (whole seconds), so its own can only be later, by at most a
		// second and the reset slack.
		if got < reset || got > reset+2 {
			t.Errorf("x-ratelimit-reset %d, GitHub's is %d", got, reset)
		}
		if h.Get("X-Ratelimit-Remaining") != "0" || h.Get("X-Ratelimit-Limit") != "100" || h.Get("X-Ratelimit-Resource") != "core" {
			t.Errorf("headers %v", h)
		}
		var body struct {
			Message          string `json:"message"`
			DocumentationURL string `json:"documentation_url"`
		}
		_ = json.Unmarshal(r.body, &body)
		if !strings.Contains(body.Message, "API rate limit exceeded") || !strings.HasPrefix(body.DocumentationURL, "https://docs.github.com/") {
			t.Errorf("body %s: want GitHub's message and documentation_url", r.body)
		}
		checkNoSecret(t, "the refusal", string(r.body))
	}
	if n := metric(t, gw, "byteproxy_budget_refused_total", "service", "github", "reason", "resource"); n != 80 {
		t.Errorf("byteproxy_budget_refused_total{reason=resource} = %v, want 80", n)
	}
}

// TestBudgetGitHubSecondary: GitHub's secondary-limit 403 with
// retry-after locks the credential until then: a request that will not
// wait is answered by the gateway in GitHub's secondary-limit shape, one
// that waits is held and sent when the lock ends, and GitHub sees nothing
// in between.
func TestBudgetGitHubSecondary(t *testing.T) {
	sim := startGitHubSim(t, nil)
	gw := startGitHubGateway(t, sim, "")
	c := consumerClient(35)
	url := gw.URL("/proxy/github/user")
	if r := send(context.Background(), c, "GET", url); r.status != 200 {
		t.Fatalf("first request: %d %s", r.status, r.body)
	}
	sim.ForceSecondary(simGitHubToken, 2*time.Second)
	locked := time.Now()
	if r := send(context.Background(), c, "GET", url); r.status != 403 || r.header.Get("Retry-After") != "2" {
		t.Fatalf("GitHub's secondary limit: %d Retry-After %q %s", r.status, r.header.Get("Retry-After"), r.body)
	}
	received := sim.Stats().Received

	r := send(context.Background(), c, "GET", url, "Prefer", "wait=0")
	if r.status != 403 {
		t.Fatalf("during the lock with Prefer: wait=0: %d %s, want the gateway's 403", r.status, r.body)
	}
	var body struct {
		Message string `json:"message"`
		Docs    string `json:"documentation_url"`
	}
	_ = json.Unmarshal(r.body, &body)
	if !strings.Contains(body.Message, "secondary rate limit") || !strings.HasSuffix(body.Docs, "secondary-rate-limits") {
		t.Errorf("body %s: want GitHub's secondary-limit message and documentation_url (what octokit and go-github recognise)", r.body)
	}
	if ra, _ := strconv.Atoi(r.header.Get("Retry-After")); ra < 1 || ra > 3 {
		t.Errorf("Retry-After %q, want the rest of the 2s lock", r.header.Get("Retry-After"))
	}
	if sim.Stats().Received != received {
		t.Error("the request reached GitHub during the lock")
	}

	r = send(context.Background(), c, "GET", url) // held until the lock ends
	if r.status != 200 {
		t.Fatalf("after the lock: %d %s", r.status, r.body)
	}
	if waited := r.done.Sub(locked); waited < 2*time.Second {
		t.Errorf("sent %v after the lock began, before its retry-after of 2s", waited)
	}
	if st := sim.Stats(); st.SecondaryLimited != 1 {
		t.Errorf("GitHub refused %d requests for its secondary limit, want only the forced one", st.SecondaryLimited)
	}
	if n := metric(t, gw, "byteproxy_budget_refused_total", "service", "github", "reason", "secondary"); n != 1 {
		t.Errorf("byteproxy_budget_refused_total{reason=secondary} = %v, want 1", n)
	}
	if n := metric(t, gw, "byteproxy_upstream_rate_limited_total", "service", "github", "scope", "retry_after"); n != 1 {
		t.Errorf("byteproxy_upstream_rate_limited_total{scope=retry_after} = %v, want 1", n)
	}
}

// TestBudgetGitHubMutations: mutating requests sent at once by several
// consumers reach GitHub one at a time, at least mutation_spacing (1s)
// apart, so GitHub's secondary limit never trips; with upstream_limits off
// the same requests trip it.
func TestBudgetGitHubMutations(t *testing.T) {
	run := func(t *testing.T, limits string) githubsim.Stats {
		sim := startGitHubSim(t, nil)
		gw := startGitHubGateway(t, sim, limits)
		var wg sync.WaitGroup
		statuses := make([]int, 4)
		for i := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				statuses[i] = send(context.Background(), consumerClient(36+i), "POST", gw.URL("/proxy/github/repos/octo/hello/issues")).status
			}()
		}
		wg.Wait()
		t.Logf("statuses %v", statuses)
		return sim.Stats()
	}
	t.Run("budget", func(t *testing.T) {
		st := run(t, "")
		if st.ByStatus[201] != 4 || st.SecondaryTripped != 0 {
			t.Errorf("GitHub answered %v and tripped its secondary limit %d times; want 4 created, none tripped", st.ByStatus, st.SecondaryTripped)
		}
		if st.MinMutationGap < time.Second {
			t.Errorf("mutations %v apart at GitHub, want at least 1s", st.MinMutationGap)
		}
	})
	t.Run("off", func(t *testing.T) {
		st := run(t, "upstream_limits off")
		if st.SecondaryTripped == 0 {
			t.Fatal("without the budget the same mutations did not trip the secondary limit: the test cannot fail")
		}
	})
}
