package budget

import (
	"context"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil/redistest"
)

func take(t *testing.T, s Store, p Plan, now time.Time) Grant {
	t.Helper()
	g, err := s.Take(context.Background(), p, now)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func settle(t *testing.T, s Store, p Plan, g Grant, o Outcome, now time.Time) Settled {
	t.Helper()
	st, err := s.Settle(context.Background(), p, g, o, now)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// stores runs a store test against each Store: MemStore, and RedisStore
// deciding by the test's clock (the scripts' times are the caller's), so
// both are held to the same transitions.
func stores(t *testing.T, test func(t *testing.T, s Store)) {
	t.Run("mem", func(t *testing.T) { test(t, NewMemStore()) })
	t.Run("redis", func(t *testing.T) {
		url := redistest.URL(t)
		test(t, testPatientStore(t, url, testPrefix(), func(o *RedisOptions) { o.callerClock = true }))
	})
}

// snapshot reads a bucket of either store.
func snapshot(t *testing.T, s Store, cred, route, major string) Snapshot {
	t.Helper()
	switch s := s.(type) {
	case *MemStore:
		return s.Bucket(cred, route, major)
	case *RedisStore:
		b, err := s.Bucket(context.Background(), cred, route, major)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	t.Fatalf("no snapshot of %T", s)
	return Snapshot{}
}

func answer(name string, limit, remaining int64, window int64, after time.Duration) Outcome {
	o := Outcome{Status: 200, N: 1}
	o.Facts[0] = Fact{Name: name, Limit: limit, Remaining: remaining, Window: window, ResetAfter: after}
	return o
}

// TestProbesMoveToTheLearnedBucket: requests that probed a route on
// another top-level resource keep counting once the route's bucket is
// learned, so a bucket of 1 never gets two requests.
func TestProbesMoveToTheLearnedBucket(t *testing.T) {
	stores(t, func(t *testing.T, s Store) {
		now := time.Unix(1000, 0)
		rules := &Rules{}
		p1 := Plan{Cred: "c", Route: "PUT /r", Major: "1", Rules: rules}
		p2 := Plan{Cred: "c", Route: "PUT /r", Major: "2", Rules: rules}
		g1 := take(t, s, p1, now)
		g2 := take(t, s, p2, now)
		if !g1.OK || !g2.OK || !g1.Probe {
			t.Fatalf("probes on two resources: %+v %+v", g1, g2)
		}
		settle(t, s, p1, g1, answer("react", 1, 0, 1_000_250, 250*time.Millisecond), now)
		// The route is known now; resource 2 still has its probe out.
		if g := take(t, s, p2, now); g.OK {
			t.Fatal("a second request on resource 2 while its probe is out")
		}
		settle(t, s, p2, g2, answer("react", 1, 0, 1_000_250, 250*time.Millisecond), now)
		if b := snapshot(t, s, "c", "PUT /r", "2"); b.InFlight != 0 || b.Used != 1 || b.Name != "react" {
			t.Fatalf("resource 2 after its probe's answer: %+v", b)
		}
		if g := take(t, s, p2, now.Add(260*time.Millisecond)); !g.OK {
			t.Fatalf("after the reset: %+v", g)
		}
	})
}

// TestGlobalSlidingWindow: a request counts against the global limit
// while in flight, then as arrived at its answer (the latest it can have
// arrived) until that leaves the window.
func TestGlobalSlidingWindow(t *testing.T) {
	stores(t, func(t *testing.T, s Store) {
		at := func(ms int) time.Time { return time.Unix(1000, 0).Add(time.Duration(ms) * time.Millisecond) }
		rules := &Rules{GlobalLimit: 3, GlobalWindow: time.Second, GlobalSlack: 10 * time.Millisecond}
		p := Plan{Cred: "c", Global: true, Rules: rules}
		var gs []Grant
		for i := range 3 {
			g := take(t, s, p, at(i))
			if !g.OK {
				t.Fatalf("send %d refused", i)
			}
			gs = append(gs, g)
		}
		if g := take(t, s, p, at(500)); g.OK || g.Scope != ScopeGlobal || !g.Until.IsZero() {
			t.Fatalf("4th with 3 in flight: %+v", g)
		}
		for i, g := range gs {
			settle(t, s, p, g, Outcome{Status: 200}, at(200+100*i))
		}
		if g := take(t, s, p, at(500)); g.OK || !g.Until.Equal(at(1210)) {
			t.Fatalf("4th with 3 answered within the window: %+v, want until %v", g, at(1210))
		}
		fourth := take(t, s, p, at(1210))
		if !fourth.OK {
			t.Fatal("refused once the first answer left the window")
		}
		// A reservation given back unsent leaves nothing behind.
		settle(t, s, p, fourth, Outcome{Status: StatusNotSent}, at(1215))
		if g := take(t, s, p, at(1216)); !g.OK {
			t.Fatalf("after an unsent reservation: %+v", g)
		}
		// A reload lowers the limit to 2: the answers at 300 and 400 and the
		// one in flight count.
		g := take(t, s, Plan{Cred: "c", Global: true, Rules: &Rules{GlobalLimit: 2, GlobalWindow: time.Second, GlobalSlack: 10 * time.Millisecond}}, at(1220))
		if g.OK || !g.Until.Equal(at(1310)) {
			t.Fatalf("after lowering the limit: %+v", g)
		}
	})
}

func TestSerialMutations(t *testing.T) {
	stores(t, func(t *testing.T, s Store) {
		now := time.Unix(1000, 0)
		p := Plan{Cred: "c", Serial: true, Rules: &Rules{MutationSpacing: time.Second}}
		g := take(t, s, p, now)
		if !g.OK || !g.Serial {
			t.Fatal("first mutation refused")
		}
		if d := take(t, s, p, now); d.OK || d.Scope != ScopeSerial || !d.Until.IsZero() {
			t.Fatalf("while the first is out: %+v", d)
		}
		settle(t, s, p, g, Outcome{Status: 201}, now.Add(300*time.Millisecond))
		if d := take(t, s, p, now.Add(400*time.Millisecond)); d.OK || !d.Until.Equal(now.Add(1300*time.Millisecond)) {
			t.Fatalf("a second after the answer: %+v", d)
		}
		// A mutation that was never sent does not push the next one back.
		g = take(t, s, p, now.Add(1300*time.Millisecond))
		settle(t, s, p, g, Outcome{Status: StatusNotSent}, now.Add(1400*time.Millisecond))
		if g := take(t, s, p, now.Add(1400*time.Millisecond)); !g.OK {
			t.Fatalf("after an unsent mutation: %+v", g)
		}
	})
}

func TestBanGuardStore(t *testing.T) {
	stores(t, func(t *testing.T, s Store) {
		now := time.Unix(1000, 0)
		p := Plan{Cred: "c", Rules: &Rules{BanThreshold: 3, BanWindow: 10 * time.Minute}}
		trips := 0
		for i := range 4 {
			g := take(t, s, p, now)
			if !g.OK {
				if i != 3 || g.Scope != ScopeBanGuard || !g.Until.Equal(now.Add(10*time.Minute)) {
					t.Fatalf("request %d: %+v", i, g)
				}
				break
			}
			if st := settle(t, s, p, g, Outcome{Status: 403, Invalid: true}, now); st.Tripped {
				trips++
			}
		}
		if trips != 1 {
			t.Fatalf("%d trips", trips)
		}
		if g := take(t, s, p, now.Add(10*time.Minute)); !g.OK {
			t.Fatalf("after the window: %+v", g)
		}
	})
}
