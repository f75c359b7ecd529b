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
type window struct {
	max  int64
	size time.Duration

	mu    sync.Mutex
	count int64
	end   time.Time // zero while no window is open
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

// take admits one request if the window has room, opening a new window if
// none is open at now.
func (w *window) take(now time.Time) windowState {
	w.mu.Lock()
	if !now.Before(w.end) {
		w.count, w.end = 0, now.Add(w.size)
	}
	if w.count >= w.max {
		end := w.end
		w.mu.Unlock()
		return windowState{end: end}
	}
	w.count++
	st := windowState{ok: true, remaining: w.max - w.count, end: w.end}
	w.mu.Unlock()
	return st
}

// peek reports the window at now without counting a request.
func (w *window) peek(now time.Time) windowState {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !now.Before(w.end) {
		return windowState{remaining: w.max}
	}
	return windowState{remaining: w.max - w.count, end: w.end}
}

// Destruct lets a window live in a caddy.UsagePool; it holds no resources.
func (w *window) Destruct() error { return nil }
