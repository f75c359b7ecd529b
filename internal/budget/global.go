package budget

import "time"

// globalWindow counts a credential's requests against a limit per sliding
// window that the upstream applies to arrivals (Discord's global limit).
//
// When a request arrived is not known here: some time between its
// reservation and its answer, and under load that delay varies by more
// than any fixed margin. So a request counts as in flight until it is
// answered, and then as having arrived at the answer (the latest it can
// have) until that leaves the window. Any window of the upstream then
// holds at most limit of them, whatever the delays.
type globalWindow struct {
	out  int         // reserved, not answered yet
	done []time.Time // answer times still in the window, a ring in answer order
	head int
	n    int
}

// check says whether one more request fits now; span is the window plus
// slack. A refusal's until is zero when only answers can free room.
func (g *globalWindow) check(now time.Time, limit int, span time.Duration) (bool, time.Time) {
	g.expire(now, span)
	if g.out+g.n < limit {
		return true, time.Time{}
	}
	if g.n > 0 {
		return false, g.done[g.head].Add(span)
	}
	return false, time.Time{}
}

// expire drops the answers that left the window. Answers are kept in the
// order they were settled; one settled a moment out of order stays a
// little longer, which only errs on the safe side.
func (g *globalWindow) expire(now time.Time, span time.Duration) {
	for g.n > 0 && !now.Before(g.done[g.head].Add(span)) {
		g.head = (g.head + 1) % len(g.done)
		g.n--
	}
}

func (g *globalWindow) take() { g.out++ }

// settle ends a reservation; sent: it may have reached the upstream.
func (g *globalWindow) settle(now time.Time, sent bool, limit int) {
	if g.out > 0 {
		g.out--
	}
	if sent && limit > 0 {
		g.record(now, limit)
	}
}

// record counts an answer received at now (a request that was not
// reserved here: see MemStore.observe).
func (g *globalWindow) record(now time.Time, limit int) {
	if len(g.done) != limit {
		g.resize(limit)
	}
	if g.n == len(g.done) {
		// Only after the limit was lowered: the oldest goes.
		g.head = (g.head + 1) % len(g.done)
		g.n--
	}
	g.done[(g.head+g.n)%len(g.done)] = now
	g.n++
}

// resize keeps the most recent answers when the limit changed (a reload).
func (g *globalWindow) resize(limit int) {
	ring := make([]time.Time, limit)
	keep := min(g.n, limit)
	for i := range keep {
		ring[i] = g.done[(g.head+g.n-keep+i)%len(g.done)]
	}
	g.done, g.head, g.n = ring, 0, keep
}
