package pressure

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// Admission of memory that requests hold whole. The management API reads a
// request body (up to 1 MiB) and decodes it before it can answer; without a
// bound, many such requests at once hold many times max_heap before the
// monitor's next reading (issue 15.2: 600 concurrent 1 MB bodies, 960 MB of
// heap against max_heap 512 MiB).

// reservableShare: requests may hold at most 1/reservableShare of the
// smaller of max_heap and max_rss at once (64 MiB at the defaults).
const reservableShare = 8

// reserveRetryAfter is the Retry-After of a refused reservation, in
// seconds: what is reserved is held for the milliseconds a body takes to
// decode, not for a load to pass.
const reserveRetryAfter = "1"

// Reserve reserves n bytes of memory for a request that will hold them (a
// body it reads whole and what it decodes to) and reports whether they fit:
// what requests hold at once stays within an eighth of the smaller of
// max_heap and max_rss. A lone request is always admitted, so a request no
// larger than what a handler accepts can always succeed once the others
// are done. With `pressure off` every request is admitted. The caller
// calls release once it no longer holds the memory; a refused caller
// answers with Refuse.
func (m *Monitor) Reserve(n int64) (release func(), ok bool) {
	s := m.cfg.Load()
	if s == nil {
		s = defaults()
	}
	if s.disabled {
		return func() {}, true
	}
	for {
		cur := m.reserved.Load()
		if cur > 0 && cur+n > s.reservable {
			return nil, false
		}
		if m.reserved.CompareAndSwap(cur, cur+n) {
			var once atomic.Bool
			return func() {
				if once.CompareAndSwap(false, true) {
					m.reserved.Add(-n)
				}
			}, true
		}
	}
}

// Refuse answers a request whose Reserve failed: 503 with Retry-After, in
// the shape of every shed request, at once, then discards what the client
// still sends of its body (discardAfter).
func (m *Monitor) Refuse(w http.ResponseWriter, r *http.Request, limit int64) error {
	s := m.cfg.Load()
	if s == nil {
		s = defaults()
	}
	s.metrics.Shed(TypeReserved)
	gateway.AddLogField(r, zap.String("pressure", TypeReserved))
	held := m.reserved.Load()
	duplex := startDuplex(w, r)
	w.Header().Set("Retry-After", reserveRetryAfter)
	msg := fmt.Sprintf("Requests being processed hold %s of request bodies, the most this gateway admits at once (1/%d of max_heap or max_rss). Retry in %s second.",
		ibytes(float64(held)), reservableShare, reserveRetryAfter)
	err := httpx.WriteError(w, r, http.StatusServiceUnavailable, "", msg, shedBody{
		Error:   "Server under pressure",
		Type:    TypeReserved,
		Value:   float64(held),
		Message: msg,
	})
	if duplex != nil {
		discardAfter(duplex, r, limit)
	}
	return err
}

// discardTime bounds how long a refused body is discarded: long enough for
// a client on a slow link to send a whole refused body (at most 1 MiB for
// management writes), so that it reads the answer instead of a reset.
const discardTime = 10 * time.Second

// startDuplex prepares to read a refused request's body after its answer
// is sent. Left unread, a body the client is still sending (over 256 KiB)
// makes the server close the connection under it, and a client busy
// sending often sees the reset rather than the answer. It returns nil when
// there is nothing to read (no body; a client waiting for 100 Continue
// sends none) or the connection cannot read and write at once.
func startDuplex(w http.ResponseWriter, r *http.Request) *http.ResponseController {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 ||
		strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
		return nil
	}
	rc := http.NewResponseController(w)
	if rc.EnableFullDuplex() != nil && r.ProtoMajor == 1 {
		return nil
	}
	return rc
}

// discardAfter sends the answer written so far and reads the rest of the
// body into no buffer of its own: at most limit bytes, for at most
// discardTime. What is read is dropped, so a refused body costs no memory.
func discardAfter(rc *http.ResponseController, r *http.Request, limit int64) {
	if rc.Flush() != nil {
		return
	}
	_ = rc.SetReadDeadline(time.Now().Add(discardTime))
	_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, limit))
}

// defaults are the settings when no byteproxy_pressure handler runs.
var defaults = sync.OnceValue(func() *settings { return resolve(nil) })
