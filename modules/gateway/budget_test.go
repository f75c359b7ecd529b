package gateway

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/byteproxy/byteproxy/internal/budget"
	"github.com/byteproxy/byteproxy/internal/httpx"
)

func dur(d time.Duration) *caddy.Duration { v := caddy.Duration(d); return &v }
func intp(n int) *int                     { return &n }

// TestUpstreamLimitsCompile: which services get a budget, with what.
func TestUpstreamLimitsCompile(t *testing.T) {
	t.Setenv("BP_BUDGET_TOKEN", "secret-token-value")
	build := func(t *testing.T, key string, cfg ServiceConfig) *Service {
		t.Helper()
		if cfg.Auth == nil && cfg.Preset == "" {
			cfg.Auth = &ServiceAuth{Type: "bearer", Token: "{env.BP_BUDGET_TOKEN}"}
		}
		s, err := BuildService(key, cfg, "config", BuildOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	t.Run("custom service off unless set", func(t *testing.T) {
		if s := build(t, "x", ServiceConfig{BaseURL: "https://x.example/"}); s.budgetSpec != nil {
			t.Error("a custom service without upstream_limits has a budget")
		}
		s := build(t, "x", ServiceConfig{BaseURL: "https://x.example/", UpstreamLimits: &UpstreamLimits{}})
		if s.budgetSpec == nil || s.budgetSpec.cfg.Kind != budget.KindGeneric || s.budgetSpec.cfg.MaxWait != 5*time.Second {
			t.Fatalf("upstream_limits {} on a custom service: %+v, want the generic defaults", s.budgetSpec)
		}
	})
	t.Run("overrides", func(t *testing.T) {
		s := build(t, "discord", ServiceConfig{Preset: "discord", UpstreamLimits: &UpstreamLimits{
			MaxWait: dur(0), GlobalLimit: 100, BanThreshold: intp(0), UnauthorizedLock: dur(time.Minute),
			MaxQueue: 10, Weights: map[string]float64{"key:abc": 2},
		}})
		c := s.budgetSpec.cfg
		if c.MaxWait != 0 || c.GlobalLimit != 100 || c.GlobalWindow != time.Second || c.BanThreshold != 0 ||
			c.UnauthorizedLock != time.Minute || c.MaxQueue != 10 || c.Weights["key:abc"] != 2 {
			t.Errorf("discord with overrides: %+v", c)
		}
		g := build(t, "gh", ServiceConfig{Preset: "github", UpstreamLimits: &UpstreamLimits{MutationSpacing: dur(0), MaxInFlight: intp(0)}})
		if g.budgetSpec.cfg.MutationSpacing != 0 || g.budgetSpec.cfg.MaxInFlight != 0 {
			t.Errorf("github with spacing and in-flight off: %+v", g.budgetSpec.cfg)
		}
		x := build(t, "x", ServiceConfig{BaseURL: "https://x.example/", UpstreamLimits: &UpstreamLimits{Headers: "x-ratelimit", Reset: "delta"}})
		if x.budgetSpec.cfg.Family != budget.FamilyXRateLimit || x.budgetSpec.cfg.ResetEpoch {
			t.Errorf("x-ratelimit delta: %+v", x.budgetSpec.cfg)
		}
	})
	t.Run("credential", func(t *testing.T) {
		a := build(t, "a", ServiceConfig{BaseURL: "https://x.example/", UpstreamLimits: &UpstreamLimits{}})
		b := build(t, "b", ServiceConfig{BaseURL: "https://x.example/other/", UpstreamLimits: &UpstreamLimits{}})
		if a.budgetSpec.cred != b.budgetSpec.cred {
			t.Error("two services with one token and one upstream host must share the credential")
		}
		if strings.Contains(a.budgetSpec.cred+a.budgetSpec.id, "secret-token-value") {
			t.Error("the credential id or the pool key holds the token")
		}
	})
	for _, c := range []struct {
		name  string
		cfg   ServiceConfig
		field string
	}{
		{"global limit on github", ServiceConfig{Preset: "github", UpstreamLimits: &UpstreamLimits{GlobalLimit: 5}}, "upstreamLimits.globalLimit"},
		{"spacing on discord", ServiceConfig{Preset: "discord", UpstreamLimits: &UpstreamLimits{MutationSpacing: dur(time.Second)}}, "upstreamLimits.mutationSpacing"},
		{"negative wait", ServiceConfig{Preset: "discord", UpstreamLimits: &UpstreamLimits{MaxWait: dur(-time.Second)}}, "upstreamLimits.maxWait"},
		{"negative queue", ServiceConfig{Preset: "discord", UpstreamLimits: &UpstreamLimits{MaxQueue: -1}}, "upstreamLimits.maxQueue"},
		{"empty consumer", ServiceConfig{Preset: "discord", UpstreamLimits: &UpstreamLimits{Weights: map[string]float64{" ": 1}}}, "upstreamLimits.weights"},
		{"reset without family", ServiceConfig{BaseURL: "https://x.example/", UpstreamLimits: &UpstreamLimits{Reset: "delta"}}, "upstreamLimits.reset"},
		{"headers on discord", ServiceConfig{Preset: "discord", UpstreamLimits: &UpstreamLimits{Headers: "ietf"}}, "upstreamLimits.headers"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := BuildService("svc", c.cfg, "config", BuildOptions{})
			var fe *httpx.FieldError
			if !errors.As(err, &fe) || fe.Field != c.field {
				t.Fatalf("error %v, want one naming %s", err, c.field)
			}
		})
	}
}

// TestBudgetSurvivesAppGenerations: the engine of an unchanged service is
// shared by the old and the new config (a reload), survives the old one's
// Cleanup, and is closed with the last config that used it; a held request
// is then released, not left waiting.
func TestBudgetSurvivesAppGenerations(t *testing.T) {
	t.Setenv("BP_BUDGET_TOKEN", "gen-token")
	newApp := func(t *testing.T, maxWait time.Duration) (*App, *Service) {
		t.Helper()
		s, err := BuildService("svc", ServiceConfig{
			BaseURL: "https://gen.example/", Auth: &ServiceAuth{Type: "bearer", Token: "{env.BP_BUDGET_TOKEN}"},
			UpstreamLimits: &UpstreamLimits{MaxWait: dur(maxWait)},
		}, "config", BuildOptions{})
		if err != nil {
			t.Fatal(err)
		}
		a := new(App)
		m := map[string]*Service{"svc": s}
		a.attachBudgets(m)
		a.services.Store(&m)
		if s.Budget() == nil {
			t.Fatal("no budget attached")
		}
		return a, s
	}
	old, s1 := newApp(t, time.Minute)
	cur, s2 := newApp(t, time.Minute)
	if s1.Budget().Engine != s2.Budget().Engine {
		t.Fatal("the reloaded config got a new engine for an unchanged service")
	}
	e := s2.Budget().Engine
	cred := s2.Budget().Credential
	req := budget.Request{Credential: cred, Method: "GET", Path: "/x", Consumer: "c"}
	// A probe in flight holds the next request (the credential's limits
	// are not known yet).
	probe, err := e.Reserve(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	_ = old.Cleanup()
	if _, err := e.Reserve(ctxTimeout(t, 10*time.Millisecond), req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("after the old config's Cleanup: %v, want the request held (the engine lives on)", err)
	}
	held := make(chan error, 1)
	go func() { _, err := e.Reserve(context.Background(), req); held <- err }()
	waitUntil(t, func() bool { return e.Waiting(cred) == 1 })
	_ = cur.Cleanup()
	select {
	case err := <-held:
		if !errors.Is(err, budget.ErrClosed) {
			t.Fatalf("held request: %v, want ErrClosed when the last config is cleaned up", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a held request was still waiting 5s after its engine's last config was cleaned up")
	}
	e.Done(&probe, 200, nil)
	// A changed setting is a new engine, over the same store.
	a3, s3 := newApp(t, time.Minute)
	a4, s4 := newApp(t, 2*time.Minute)
	defer a3.Cleanup()
	defer a4.Cleanup()
	if s3.Budget().Engine == s4.Budget().Engine {
		t.Error("a changed max_wait kept the engine")
	}
	if a3.budgetState.store != a4.budgetState.store {
		t.Error("two configs alive at once use two stores: a reload would forget the upstream's state")
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}
