package ratelimit

import (
	"sync"
	"time"
)

// window is a fixed-window counter: the first request opens a window of
// length size, and the window admits at most max requests until it ends.
// This is the service limit's model (the original ByteProxy's and GitHub's),
// which makes "remaining" and the reset time exact. It knows nothing of
// HTTP; a mutex keeps it exact under concurrency.
//
// Without Redis the window counts every request of this instance. With
// Redis, Redis counts, and the window is this instance's fallback for an
// outage: it remembers the count Redis last reported (observe), admits
// this instance's share of what is left (take with the number of live
// instances), and hands its own count back when Redis returns (pending,
// carried).
type window struct {
	max  int64
	size time.Duration

	mu     sync.Mutex
	end    time.Time // zero while no window is open
	shared int64     // the count Redis last reported for this window; 0 without Redis
	count  int64     // requests this instance admitted on its own in this window (not yet carried back)
}

func newWindow(max int, size time.Duration) *window {
	return &window{max: int64(max), size: size}
}

// windowState is what a decision or a peek reports.
type windowState struct {
	ok        bool      // the request was admitted (take only)
	remaining int64     // requests left in the current window
	end       time.Time // when the current window ends; zero if none is open
}

// take admits one request if this instance's allowance has room, opening
// a new window if none is open at now. instances is the number of
// instances sharing the limit (1 without Redis).
func (w *window) take(now time.Time, instances int64) windowState {
	w.mu.Lock()
	if !now.Before(w.end) {
		w.count, w.shared, w.end = 0, 0, now.Add(w.size)
	}
	allowed := w.allowance(instances)
	if w.count >= allowed {
		end := w.end
		w.mu.Unlock()
		return windowState{end: end}
	}
	w.count++
	st := windowState{ok: true, remaining: allowed - w.count, end: w.end}
	w.mu.Unlock()
	return st
}

// peek reports the window at now without counting a request.
func (w *window) peek(now time.Time, instances int64) windowState {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !now.Before(w.end) {
		return windowState{remaining: share(w.max, instances)}
	}
	return windowState{remaining: max(w.allowance(instances)-w.count, 0), end: w.end}
}

// allowance is how many requests this instance may admit on its own in
// the current window (called with w.mu held).
func (w *window) allowance(instances int64) int64 {
	return share(w.max-w.shared, instances)
}

// share is one instance's part of left requests among instances: rounded
// down, but at least one while anything is left (so a limit smaller than
// the number of instances still admits). Alone, or without Redis, it is
// everything left.
func share(left, instances int64) int64 {
	if left <= 0 {
		return 0
	}
	if instances <= 1 {
		return left
	}
	return max(left/instances, 1)
}

// observe records a window as Redis reported it to a request made at now:
// count requests, ending at end. Within the window this instance knows,
// counts only grow (replies may arrive out of order); once it has ended,
// the reported window replaces it, and what was counted here in the old
// one no longer matters.
func (w *window) observe(now time.Time, count int64, end time.Time) {
	w.mu.Lock()
	if !now.Before(w.end) {
		w.end, w.shared, w.count = end, count, 0
	} else {
		w.shared = max(w.shared, count)
	}
	w.mu.Unlock()
}

// windowDebt is what an instance knows of a window that Redis may not.
type windowDebt struct {
	key    string        // the window in Redis
	shared int64         // the count Redis last reported
	count  int64         // requests admitted here on their own since
	left   time.Duration // until the window ends
	end    time.Time     // when it ends: names the window for carried
}

// pending reports what Redis must be told of the window when it returns
// after an outage; ok is false when the window has ended (its counts no
// longer matter) or there is nothing to tell.
func (w *window) pending(now time.Time) (windowDebt, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !now.Before(w.end) || (w.count == 0 && w.shared == 0) {
		return windowDebt{}, false
	}
	return windowDebt{shared: w.shared, count: w.count, left: w.end.Sub(now), end: w.end}, true
}

// carried records that Redis took d back and now holds got: the requests
// carried are no longer this instance's alone (those admitted meanwhile
// still are), and Redis's count and end are the window's from now on.
func (w *window) carried(now time.Time, d windowDebt, got redisWindow) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.end.Equal(d.end) { // the window ended meanwhile
		return
	}
	w.count = max(w.count-d.count, 0)
	if !got.ok { // Redis refused the window: its count is dropped
		return
	}
	w.shared = got.count
	if got.ttl > 0 {
		w.end = now.Add(got.ttl)
	}
}

// Destruct lets a window live in a caddy.UsagePool; it holds no resources.
func (w *window) Destruct() error { return nil }
