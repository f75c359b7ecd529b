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

	if st := w.peek(t0); st.remaining != 3 || !st.end.IsZero() {
		t.Fatalf("before the first request: %+v, want 3 remaining and no window", st)
	}
	for i, want := range []int64{2, 1, 0} {
		st := w.take(t0.Add(time.Duration(i) * time.Second))
		if !st.ok || st.remaining != want || !st.end.Equal(t0.Add(time.Minute)) {
			t.Fatalf("request %d: %+v, want ok with %d remaining, window ending at the first request + 1m", i+1, st, want)
		}
	}
	if st := w.take(t0.Add(30 * time.Second)); st.ok || st.remaining != 0 {
		t.Fatalf("4th request: %+v, want refused", st)
	}
	if st := w.peek(t0.Add(30 * time.Second)); st.remaining != 0 || !st.end.Equal(t0.Add(time.Minute)) {
		t.Fatalf("peek in a full window: %+v", st)
	}
	// The window ends a minute after the first request, not the last.
	later := t0.Add(time.Minute)
	if st := w.peek(later); st.remaining != 3 || !st.end.IsZero() {
		t.Fatalf("peek after the window: %+v, want a closed window", st)
	}
	if st := w.take(later); !st.ok || st.remaining != 2 || !st.end.Equal(later.Add(time.Minute)) {
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
			if w.take(now).ok {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 100 {
		t.Fatalf("%d requests admitted, want exactly 100", ok.Load())
	}
}
