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
//
// The ring holds one answer time per request in the window (a Discord bot
// granted a high global limit, or cmd/byteproxy-bench's 100,000 per
// 100ms): they are nanoseconds since base (monotonic), 8 bytes without a
// pointer, so the ring is a third of a []time.Time and the garbage
// collector does not scan it (BenchmarkReserveDone/discord-global).
type globalWindow struct {
	out  int // reserved, not answered yet
	base time.Time
	done []int64 // answer times (ns since base) still in the window, a ring in answer order
	head int
	n    int
}

// at is the offset of t in the ring's time.
func (g *globalWindow) at(t time.Time) int64 { return int64(t.Sub(g.base)) }

// check says whether one more request fits now; span is the window plus
// slack. A refusal's until is zero when only answers can free room.
func (g *globalWindow) check(now time.Time, limit int, span time.Duration) (bool, time.Time) {
	g.expire(now, span)
	if g.out+g.n < limit {
		return true, time.Time{}
	}
	if g.n > 0 {
		return false, g.base.Add(time.Duration(g.done[g.head]) + span)
	}
	return false, time.Time{}
}

// expire drops the answers that left the window. Answers are kept in the
// order they were settled; one settled a moment out of order stays a
// little longer, which only errs on the safe side.
func (g *globalWindow) expire(now time.Time, span time.Duration) {
	if g.n == 0 {
		return
	}
	cut := g.at(now) - int64(span) // answers at or before it have left
	for g.n > 0 && g.done[g.head] <= cut {
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
		g.resize(limit, now)
	}
	if g.n == len(g.done) {
		// Only after the limit was lowered: the oldest goes.
		g.head = (g.head + 1) % len(g.done)
		g.n--
	}
	g.done[(g.head+g.n)%len(g.done)] = g.at(now)
	g.n++
}

// resize keeps the most recent answers when the limit changed (a reload).
func (g *globalWindow) resize(limit int, now time.Time) {
	if g.done == nil {
		g.base = now // the caller's clock, as every later time
	}
	ring := make([]int64, limit)
	keep := min(g.n, limit)
	for i := range keep {
		ring[i] = g.done[(g.head+g.n-keep+i)%len(g.done)]
	}
	g.done, g.head, g.n = ring, 0, keep
}
