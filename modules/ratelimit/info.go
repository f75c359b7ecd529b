package ratelimit

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/byteproxy/byteproxy/internal/fleet"
	"github.com/byteproxy/byteproxy/internal/httpx"
)

// limitInfo is the body of GET /proxy/services/{service}/rate-limit, in
// the original ByteProxy's fields.
type limitInfo struct {
	Service   string `json:"service"`
	Limit     *int   `json:"limit"`
	Remaining *int64 `json:"remaining,omitempty"`
	ResetTime *int64 `json:"resetTime,omitempty"` // Unix ms; 0 while no window is open
	ResetIn   *int64 `json:"resetIn,omitempty"`   // seconds
	WindowMs  int64  `json:"windowMs,omitempty"`
	Message   string `json:"message,omitempty"`
}

// serveInfo reports a service's window without counting a request.
func (h *Handler) serveInfo(w http.ResponseWriter, r *http.Request, key string) error {
	svc := h.app.Service(key)
	if svc == nil {
		return httpx.WriteJSON(w, http.StatusNotFound, map[string]string{
			"error": fmt.Sprintf("Service '%s' not configured", key),
		})
	}
	rl := svc.Config.RateLimit
	if rl == nil {
		msg := "Rate limiting is not configured for this service"
		if svc.Budget() != nil {
			msg = "The gateway sets no rate limit of its own for this service; the upstream's limits are kept by its upstream budget (README, Upstream budgets)"
		}
		return httpx.WriteJSON(w, http.StatusOK, limitInfo{Service: key, Message: msg})
	}
	sl := h.serviceLimitFor(key, rl)
	now := time.Now()
	st := h.peek(r.Context(), now, sl)
	var resetTime, resetIn int64
	if !st.end.IsZero() {
		resetTime, resetIn = st.end.UnixMilli(), ceilSeconds(st.end.Sub(now))
	}
	limit := rl.MaxRequests
	return httpx.WriteJSON(w, http.StatusOK, limitInfo{
		Service:   key,
		Limit:     &limit,
		Remaining: &st.remaining,
		ResetTime: &resetTime,
		ResetIn:   &resetIn,
		WindowMs:  time.Duration(rl.Window).Milliseconds(),
	})
}

// peek reads the window from Redis when it is in use, else from memory
// (during an outage: what is left of this instance's share).
func (h *Handler) peek(ctx context.Context, now time.Time, sl *serviceLimit) windowState {
	if h.redis != nil && h.redis.up.Load() {
		cctx, cancel := context.WithTimeout(ctx, fleet.CallTimeout)
		count, ttl, err := h.redis.peek(cctx, sl.redisKey)
		cancel()
		if err == nil {
			st := windowState{remaining: max(int64(sl.limit.MaxRequests)-count, 0)}
			if ttl > 0 {
				st.end = now.Add(ttl)
				sl.win.observe(now, count, st.end)
			} else {
				st.remaining = int64(sl.limit.MaxRequests)
			}
			return st
		}
		if ctx.Err() == nil {
			h.redis.markDown(err)
		}
	}
	return sl.win.peek(now, h.instances())
}
