package budget

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// pollEvery is how often waiting requests whose end is unknown try again
// when no settle woke them (a settle of another instance of a cluster is
// not seen here).
const pollEvery = 100 * time.Millisecond

// lane holds the requests of one credential that wait for its budget and
// serves them by weighted fair queueing (start-time fair queueing): each
// waiting request gets a virtual finish tag, start + 1/weight, where start
// is the later of the queue's virtual time and the finish tag of the
// consumer's previous request; requests are tried in tag order. A consumer
// that sends ten times more only queues further behind itself: while
// others wait, each consumer gets its weight's share of what frees up.
//
// Whenever budget may have freed (a settle, the end of a window, a new
// arrival) the lane tries its requests in tag order; a request refused by
// the same limit as an earlier one in the pass is not tried (it would be
// refused too), so a limit that frees up goes to the earliest tags.
type lane struct {
	e       *Engine
	cred    string
	waiting atomic.Int32
	passes  atomic.Int64 // dispatch passes, for tests

	mu        sync.Mutex
	queue     []*waiter // by (finish, seq)
	consumers map[string]*consumer
	weights   float64 // sum of the weights of consumers with requests queued
	vtime     float64
	seq       uint64
	timer     *time.Timer
	timerAt   time.Time
	closed    bool
}

// consumer is one consumer's place in a lane.
type consumer struct {
	weight float64
	finish float64 // tag of its last request
	queued int
}

// waiter is a request being held.
type waiter struct {
	plan     Plan
	req      Request
	who      *consumer
	start    float64
	finish   float64
	seq      uint64
	arrived  time.Time
	deadline time.Time
	ready    chan struct{}

	// Set under lane.mu before ready is signalled.
	granted  bool
	grant    Grant
	fraction float64
	refusal  *Refusal
	err      error
	last     Grant // the latest refusal, for the one given at the deadline
}

func newLane(e *Engine, cred string) *lane {
	return &lane{e: e, cred: cred, consumers: make(map[string]*consumer)}
}

// wait queues a request and holds it until it is granted, refused, its
// deadline passes or ctx ends.
//
// first is the refusal of a first try, if any.
func (e *Engine) wait(ctx context.Context, l *lane, p Plan, req Request, first Grant, now time.Time) (Ticket, error) {
	w := &waiter{plan: p, req: req, arrived: now, deadline: now.Add(e.waitBudget(req)), ready: make(chan struct{}, 1), last: first}
	l.mu.Lock()
	l.enqueue(w, now)
	decided := w.refusal != nil || w.err != nil
	l.mu.Unlock()
	if decided {
		return e.outcome(w)
	}

	var timeout <-chan time.Time
	if d := time.Until(w.deadline); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	} else {
		c := make(chan time.Time)
		close(c)
		timeout = c
	}
	select {
	case <-w.ready:
		return e.outcome(w)
	case <-timeout:
	case <-ctx.Done():
	}

	l.mu.Lock()
	done := w.granted || w.refusal != nil || w.err != nil
	if !done {
		l.remove(w)
	}
	l.mu.Unlock()
	now = time.Now()
	if ctx.Err() != nil {
		if w.granted {
			// Granted as the client went away: give it back.
			_, _ = e.store.Settle(context.Background(), w.plan, w.grant, Outcome{Status: StatusNotSent}, now)
			e.kick(p.Cred)
		}
		return Ticket{}, ctx.Err()
	}
	if done {
		return e.outcome(w)
	}
	return Ticket{}, e.refuse(w.last, now, now.Sub(w.arrived), false)
}

// outcome turns a decided waiter into Reserve's result.
func (e *Engine) outcome(w *waiter) (Ticket, error) {
	switch {
	case w.granted:
		now := time.Now()
		if w.last.Scope == ScopeNone {
			// Never refused: let through by the pass that queued it.
			e.stats.granted.Add(1)
			return e.ticket(w.plan, w.grant, w.req, w.fraction, now, 0), nil
		}
		e.stats.held.Add(1)
		return e.ticket(w.plan, w.grant, w.req, w.fraction, now, now.Sub(w.arrived)), nil
	case w.err != nil:
		return Ticket{}, w.err
	}
	return Ticket{}, w.refusal
}

// enqueue tags and queues a request (making room if the queue is full)
// and tries the queue.
func (l *lane) enqueue(w *waiter, now time.Time) {
	if l.closed {
		w.err = ErrClosed
		return
	}
	if max := l.e.cfg.MaxQueue; max > 0 && len(l.queue) >= max && !l.dropLongest(w.req.Consumer, now) {
		// No room to wait: send it if nothing limits it, else refuse it.
		g, err := l.e.store.Take(context.Background(), w.plan, now)
		switch {
		case err != nil:
			w.err = err
		case g.OK:
			w.granted, w.grant, w.fraction = true, g, 1
			w.ready <- struct{}{}
		default:
			w.refusal = l.e.refuse(g, now, 0, true)
		}
		return
	}
	c := l.consumers[w.req.Consumer]
	if c == nil {
		weight := 1.0
		if v, ok := l.e.cfg.Weights[w.req.Consumer]; ok && v > 0 {
			weight = v
		}
		c = &consumer{weight: weight}
		l.consumers[w.req.Consumer] = c
	}
	w.who = c
	w.start = max(l.vtime, c.finish)
	w.finish = w.start + 1/c.weight
	c.finish = w.finish
	if c.queued == 0 {
		l.weights += c.weight
	}
	c.queued++
	l.seq++
	w.seq = l.seq
	i := sort.Search(len(l.queue), func(i int) bool {
		q := l.queue[i]
		return q.finish > w.finish || (q.finish == w.finish && q.seq > w.seq)
	})
	l.queue = append(l.queue, nil)
	copy(l.queue[i+1:], l.queue[i:])
	l.queue[i] = w
	l.waiting.Add(1)
	l.dispatchLocked(now)
}

// dropLongest makes room for a request of who by refusing the newest
// request of the consumer with the most queued, when that consumer has
// more than who. It reports whether it made room.
func (l *lane) dropLongest(who string, now time.Time) bool {
	var longest *consumer
	for _, c := range l.consumers {
		if longest == nil || c.queued > longest.queued {
			longest = c
		}
	}
	mine := 0
	if c := l.consumers[who]; c != nil {
		mine = c.queued
	}
	if longest == nil || longest.queued <= mine+1 {
		return false
	}
	for i := len(l.queue) - 1; i >= 0; i-- {
		if w := l.queue[i]; w.who == longest {
			l.remove(w)
			w.refusal = l.e.refuse(w.last, now, now.Sub(w.arrived), true)
			w.ready <- struct{}{}
			return true
		}
	}
	return false
}

// remove takes a waiter out of the queue.
func (l *lane) remove(w *waiter) {
	for i, q := range l.queue {
		if q == w {
			copy(l.queue[i:], l.queue[i+1:])
			l.queue[len(l.queue)-1] = nil
			l.queue = l.queue[:len(l.queue)-1]
			l.depart(w)
			l.idle()
			return
		}
	}
}

// depart does the bookkeeping of a waiter leaving the queue.
func (l *lane) depart(w *waiter) {
	l.waiting.Add(-1)
	w.who.queued--
	if w.who.queued == 0 {
		l.weights -= w.who.weight
	}
}

// idle starts virtual time over when nothing waits, and says so.
func (l *lane) idle() bool {
	if len(l.queue) > 0 {
		return false
	}
	l.vtime = 0
	l.weights = 0
	clear(l.consumers)
	l.stopTimer()
	return true
}

// dispatch tries the queue.
func (l *lane) dispatch() {
	l.mu.Lock()
	l.dispatchLocked(time.Now())
	l.mu.Unlock()
}

// dispatchLocked tries every waiting request in tag order, skipping those
// refused by a limit that refused an earlier one in this pass, grants what
// fits, refuses what can no longer be granted before its deadline, and
// sets the timer for the earliest end of a limit.
func (l *lane) dispatchLocked(now time.Time) {
	if l.idle() {
		return
	}
	l.passes.Add(1)
	var blocked [8]Grant // the refusals of this pass, by key
	nb := 0
	var next time.Time
	poll := false
	kept := l.queue[:0]
	for _, w := range l.queue {
		if d, ok := refusedBy(blocked[:nb], w.last.Key); ok {
			// Refused by the same limit as an earlier one: it waits for
			// that limit's end as it is now (its own last refusal may be
			// stale, even past).
			w.last = d
			if !l.e.holdable(d, now, w.deadline) {
				w.refusal = l.e.refuse(d, now, now.Sub(w.arrived), false)
				l.depart(w)
				w.ready <- struct{}{}
				continue
			}
			kept = append(kept, w)
			next, poll = earliest(next, poll, d)
			continue
		}
		g, err := l.e.store.Take(context.Background(), w.plan, now)
		switch {
		case err != nil:
			w.err = err
		case g.OK:
			w.granted, w.grant = true, g
			w.fraction = w.who.weight / l.weights
			l.vtime = max(l.vtime, w.start)
			if l.e.queueGranted != nil {
				l.e.queueGranted(w.req.Consumer)
			}
		default:
			w.last = g
			if g.Key != "" && nb < len(blocked) {
				blocked[nb] = g
				nb++
			}
			if !l.e.holdable(g, now, w.deadline) {
				w.refusal = l.e.refuse(g, now, now.Sub(w.arrived), false)
				break
			}
			kept = append(kept, w)
			next, poll = earliest(next, poll, g)
			continue
		}
		l.depart(w)
		w.ready <- struct{}{}
	}
	clear(l.queue[len(kept):])
	l.queue = kept
	if l.idle() {
		return
	}
	if poll && (next.IsZero() || next.Sub(now) > pollEvery) {
		next = now.Add(pollEvery)
	}
	l.schedule(next, now)
}

// earliest folds a refusal's end into the next wake-up; an unknown end
// asks for a poll.
func earliest(next time.Time, poll bool, g Grant) (time.Time, bool) {
	if g.Until.IsZero() {
		return next, true
	}
	if next.IsZero() || g.Until.Before(next) {
		next = g.Until
	}
	return next, poll
}

// refusedBy finds the refusal of this pass by the limit named key.
func refusedBy(refusals []Grant, key string) (Grant, bool) {
	if key == "" {
		return Grant{}, false
	}
	for _, d := range refusals {
		if d.Key == key {
			return d, true
		}
	}
	return Grant{}, false
}

// schedule wakes the lane at the given time, unless an earlier wake-up is
// already set.
func (l *lane) schedule(at, now time.Time) {
	if at.IsZero() {
		return
	}
	if l.timer != nil && l.timerAt.After(now) && !at.Before(l.timerAt) {
		return
	}
	d := max(at.Sub(now), 0)
	if l.timer == nil {
		l.timer = time.AfterFunc(d, l.fire)
	} else {
		l.timer.Reset(d)
	}
	l.timerAt = at
}

func (l *lane) fire() {
	l.mu.Lock()
	l.timerAt = time.Time{}
	l.dispatchLocked(time.Now())
	l.mu.Unlock()
}

func (l *lane) stopTimer() {
	if l.timer != nil {
		l.timer.Stop()
		l.timerAt = time.Time{}
	}
}

// close refuses every waiting request.
func (l *lane) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for len(l.queue) > 0 {
		w := l.queue[0]
		l.remove(w)
		w.err = ErrClosed
		w.ready <- struct{}{}
	}
	l.stopTimer()
}
