package services

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

// serveLean forwards r on the lean path (see lean.go) to route rt, with
// the rules httputil.ReverseProxy applies on the other path: hop-by-hop
// headers and those the Connection header lists are dropped both ways,
// `Te: trailers` passes, no User-Agent is invented, trailers are
// announced and copied, informational responses are forwarded, bodies of
// unknown length and event streams are flushed as they come, and a body
// that fails midway aborts the response rather than ending it cleanly.
func (f *forwarder) serveLean(w *proxyWriter, r *http.Request, rt *route, tail string) {
	w.lean = true
	out := outgoing.Get().(*outRequest)
	defer out.release()
	f.buildLean(out, r, rt, tail)
	ctx := r.Context()
	send := func() (*http.Response, error) { return rt.pool.roundTrip(ctx, &out.req, f.svc.Timeout, w) }
	resp, err := send()
	if err != nil {
		resp, err = f.retry(ctx, r.Method, err, send)
	}
	if err != nil {
		w.failed = true
		if errors.Is(ctx.Err(), context.Canceled) {
			f.clientGone(r)
			return
		}
		f.answerError(w, r.Method, rt.scheme+"://"+rt.host, err)
		return
	}
	f.writeLean(w, resp)
}

// outRequest is a pooled outgoing request with its URL and header map,
// so that the lean path does not copy the client's request to make one.
type outRequest struct {
	req    http.Request
	url    url.URL
	header http.Header
}

var outgoing = sync.Pool{New: func() any { return &outRequest{header: make(http.Header, 16)} }}

func (o *outRequest) release() {
	if len(o.header) > 64 {
		return // an unusually large map is not kept
	}
	clear(o.header)
	o.req, o.url = http.Request{}, url.URL{}
	outgoing.Put(o)
}

// emptyValue keeps Request.Write from adding Go's User-Agent where the
// client sent none (as ReverseProxy does). Shared, never modified.
var emptyValue = []string{""}

// buildLean fills out with what goes upstream: the route's URL with the
// client's path tail and query (minus api_key), the client's end-to-end
// headers (minus its credentials and forwarding headers), the service's
// default headers and credential. Header values are shared with r, not
// copied: nothing on this path modifies them.
func (f *forwarder) buildLean(out *outRequest, r *http.Request, rt *route, tail string) {
	u := &out.url
	u.Scheme, u.Host = rt.scheme, rt.host
	rt.setPath(u, tail)
	u.RawQuery = gateway.StripQueryParam(r.URL.RawQuery, "api_key")

	h := out.header
	conn := r.Header["Connection"]
	for k, vv := range r.Header {
		if hopByHop(k) || clientOnly(k) || httpguts.HeaderValuesContainsToken(conn, k) {
			continue
		}
		h[k] = vv
	}
	if te := r.Header["Te"]; te != nil && httpguts.HeaderValuesContainsToken(te, "trailers") {
		h["Te"] = teTrailers
	}
	f.addServiceHeaders(h, u)
	if _, ok := h["User-Agent"]; !ok { // after the defaults, which may have one
		h["User-Agent"] = emptyValue
	}
	out.req = http.Request{
		Method: r.Method, URL: u, Header: h,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
	}
}

var teTrailers = []string{"trailers"}

// writeLean sends the upstream's response to the client.
func (f *forwarder) writeLean(w *proxyWriter, resp *http.Response) {
	h := w.Header()
	conn := resp.Header["Connection"]
	for k, vv := range resp.Header {
		if hopByHop(k) || httpguts.HeaderValuesContainsToken(conn, k) {
			continue
		}
		if have := h[k]; have != nil {
			h[k] = append(have, vv...)
		} else {
			h[k] = vv // the response's own slice: nothing else holds it
		}
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		h.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(resp.StatusCode)

	flush := resp.ContentLength < 0 || eventStream(resp.Header.Get("Content-Type"))
	if err := f.copyBody(w, resp.Body, flush); err != nil {
		resp.Body.Close()
		// Headers are out: all that is left is to abort the response so
		// that the client does not take a truncated body for a whole one.
		panic(http.ErrAbortHandler)
	}
	resp.Body.Close()
	if len(resp.Trailer) == 0 {
		return
	}
	// Force chunking, so that net/http does not compute a length for a
	// short body and leave no place for trailers.
	_ = http.NewResponseController(w).Flush()
	if len(resp.Trailer) == announced {
		for k, vv := range resp.Trailer {
			h[k] = append(h[k], vv...)
		}
		return
	}
	for k, vv := range resp.Trailer {
		for _, v := range vv {
			h.Add(http.TrailerPrefix+k, v)
		}
	}
}

// copyBody streams body to w with a pooled buffer, flushing after every
// write when asked to.
func (f *forwarder) copyBody(w http.ResponseWriter, body io.Reader, flush bool) error {
	buf := buffers.Get()
	defer buffers.Put(buf)
	rc := http.NewResponseController(w)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if flush {
				if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
					return err
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			if ce := f.logger.Check(zap.DebugLevel, "upstream body failed midway"); ce != nil {
				ce.Write(zap.String("error", f.svc.Redact(rerr.Error())))
			}
			return rerr
		}
	}
}

// informational forwards a 1xx response (103 Early Hints, say) with its
// headers, leaving the headers the gateway has set for the final response
// as they were.
func (w *proxyWriter) informational(code int, hdr http.Header) {
	h := w.Header()
	saved := h.Clone()
	for k, vv := range hdr {
		h[k] = append(h[k], vv...)
	}
	w.WriteHeader(code)
	clear(h)
	for k, vv := range saved {
		h[k] = vv
	}
}

// hopByHop: the headers of one connection, which no proxy forwards
// (ReverseProxy's list, RFC 9110 section 7.6.1).
func hopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// eventStream reports whether a Content-Type is text/event-stream, whose
// events must reach the client as they come.
func eventStream(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.EqualFold(strings.TrimSpace(mt), "text/event-stream")
}
