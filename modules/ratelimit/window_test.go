package ratelimit

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestWindowFixed(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	w := newWindow(3, time.Minute)

	if st := w.peek(t0, 1); st.remaining != 3 || !st.end.IsZero() {
		t.Fatalf("before the first request: %+v, want 3 remaining and no window", st)
	}
	for i, want := range []int64{2, 1, 0} {
		st := w.take(t0.Add(time.Duration(i)*time.Second), 1)
		if !st.ok || st.remaining != want || !st.end.Equal(t0.Add(time.Minute)) {
			t.Fatalf("request %d: %+v, want ok with %d remaining, window ending at the first request + 1m", i+1, st, want)
		}
	}
	if st := w.take(t0.Add(30*time.Second), 1); st.ok || st.remaining != 0 {
		t.Fatalf("4th request: %+v, want refused", st)
	}
	if st := w.peek(t0.Add(30*time.Second), 1); st.remaining != 0 || !st.end.Equal(t0.Add(time.Minute)) {
		t.Fatalf("peek in a full window: %+v", st)
	}
	// The window ends a minute after the first request, not the last.
	later := t0.Add(time.Minute)
	if st := w.peek(later, 1); st.remaining != 3 || !st.end.IsZero() {
		t.Fatalf("peek after the window: %+v, want a closed window", st)
	}
	if st := w.take(later, 1); !st.ok || st.remaining != 2 || !st.end.Equal(later.Add(time.Minute)) {
		t.Fatalf("first request of the next window: %+v", st)
	}
}

func TestWindowExactUnderConcurrency(t *testing.T) {
	w := newWindow(100, time.Hour)
	now := time.Now()
	var ok atomic.Int64
	var wg sync.WaitGroup
	for range 1000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if w.take(now, 1).ok {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 100 {
		t.Fatalf("%d requests admitted, want exactly 100", ok.Load())
	}
}

// During a Redis outage an instance admits its share of what Redis had not
// counted, and hands its own count back when Redis returns.
func TestWindowShareDuringOutage(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	end := t0.Add(time.Minute)
	w := newWindow(30, time.Minute)
	w.observe(t0, 10, end)
	w.observe(t0, 12, end)
	w.observe(t0, 11, end) // a reply overtaken by a later one
	if st := w.peek(t0, 3); st.remaining != 6 || !st.end.Equal(end) {
		t.Fatalf("peek with 3 instances after Redis counted 12 of 30: %+v, want 6 left (18/3) until the same end", st)
	}
	admitted := 0
	for range 20 {
		if w.take(t0.Add(time.Second), 3).ok {
			admitted++
		}
	}
	if admitted != 6 {
		t.Fatalf("3 instances, Redis had counted 12 of 30: %d admitted here, want 6", admitted)
	}

	d, ok := w.pending(t0.Add(2 * time.Second))
	if !ok || d.shared != 12 || d.count != 6 || d.left != 58*time.Second {
		t.Fatalf("pending: %+v %v, want 12 seen, 6 admitted here, 58s left", d, ok)
	}
	w.take(t0.Add(3*time.Second), 1) // admitted while the debt is carried
	w.carried(t0.Add(3*time.Second), d, redisWindow{ok: true, count: 35, ttl: 57 * time.Second})
	if d, ok := w.pending(t0.Add(3 * time.Second)); !ok || d.shared != 35 || d.count != 1 {
		t.Fatalf("after carrying: %+v, want Redis's 35 and the 1 request admitted meanwhile", d)
	}
	if _, ok := w.pending(t0.Add(time.Minute)); ok {
		t.Fatal("a window that has ended is still to be carried back")
	}

	// Alone, the instance keeps everything left.
	w = newWindow(30, time.Minute)
	w.observe(t0, 12, end)
	if st := w.peek(t0, 1); st.remaining != 18 {
		t.Fatalf("alone: %+v, want 18 left", st)
	}
	// A window opened during the outage: a share of the whole limit.
	if st := w.take(end, 3); !st.ok || st.remaining != 9 || !st.end.Equal(end.Add(time.Minute)) {
		t.Fatalf("new window with 3 instances: %+v, want 10 allowed (9 left), ending a minute later", st)
	}
	// A reply of a new Redis window replaces the one that ended.
	later := end.Add(time.Minute)
	w.observe(later, 2, later.Add(time.Minute))
	if st := w.peek(later, 2); st.remaining != 14 {
		t.Fatalf("after a new Redis window with 2 counted: %+v, want 14 left for 2 instances", st)
	}
	// A limit smaller than the number of instances still admits one.
	if st := newWindow(2, time.Minute).take(t0, 3); !st.ok || st.remaining != 0 {
		t.Fatalf("limit 2 among 3 instances: %+v, want one admitted", st)
	}
	w = newWindow(30, time.Minute)
	w.observe(t0, 30, end)
	if st := w.take(t0, 3); st.ok {
		t.Fatal("admitted in a window Redis had filled")
	}
}
