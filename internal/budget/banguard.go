package budget

import "time"

// banSlots is the resolution of the ban guard's sliding window: 600 slots
// (one second each over Discord's 10 minutes).
const banSlots = 600

// invalidWindow counts invalid responses over a sliding window, in
// banSlots slots: the count drops a slot at a time as the window moves.
type invalidWindow struct {
	slots  [banSlots]int32
	slot   time.Duration // length of a slot
	window time.Duration // the window the slots were cut for
	head   int64         // absolute number of the newest slot
	total  int
}

// advance drops the slots that left the window.
func (w *invalidWindow) advance(now time.Time, window time.Duration) {
	if w.window != window {
		// First use, or the window changed (a reload): start over.
		*w = invalidWindow{slot: max(window/banSlots, time.Millisecond), window: window}
	}
	abs := now.UnixNano() / int64(w.slot)
	if w.total == 0 {
		w.head = abs
		return
	}
	if abs-w.head >= banSlots {
		w.slots, w.total, w.head = [banSlots]int32{}, 0, abs
		return
	}
	for ; w.head < abs; w.head++ {
		i := (w.head + 1) % banSlots
		w.total -= int(w.slots[i])
		w.slots[i] = 0
	}
}

// add counts one invalid response.
func (w *invalidWindow) add(now time.Time, window time.Duration) {
	w.advance(now, window)
	w.slots[w.head%banSlots]++
	w.total++
}

// count is the number within the window.
func (w *invalidWindow) count(now time.Time, window time.Duration) int {
	if w.total == 0 {
		return 0
	}
	w.advance(now, window)
	return w.total
}

// until is when the count falls below threshold: when enough of the
// oldest slots have left the window.
func (w *invalidWindow) until(threshold int) time.Time {
	excess := w.total - threshold + 1
	if excess <= 0 {
		return time.Time{}
	}
	for abs := w.head - banSlots + 1; abs <= w.head; abs++ {
		excess -= int(w.slots[abs%banSlots])
		if excess <= 0 {
			// Slot abs leaves the window when slot abs+banSlots begins.
			return time.Unix(0, (abs+banSlots)*int64(w.slot))
		}
	}
	return time.Unix(0, (w.head+1)*int64(w.slot))
}
