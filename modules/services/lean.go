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

	"github.com/byteproxy/byteproxy/modules/services/internal/leanhttp"
)

// The lean path: how the forwarder sends the bulk of an API gateway's
// traffic — GET, HEAD and OPTIONS without a body to a plain-http upstream,
// or to an https one in HTTP/1.1 over TLS unless the service's
// http_version is 2 (poolRoutes) — through the lean HTTP/1.1 client
// (internal/leanhttp: why, and its guarantees) instead of
// httputil.ReverseProxy and http.Transport, which keep everything else
// (HTTP/2, request bodies, WebSocket upgrades, other methods). Under
// http_version auto an https upstream that does not agree to HTTP/1.1 by
// ALPN (one that speaks HTTP/2 only) gets its requests through the
// Transport instead, decided by the handshake before anything is sent
// (leanhttp.NewAutoTLSPool). The byteproxy app's `lean_path off` sends
// everything through ReverseProxy.

// leanMethod reports whether r, a request the server received, may take
// the lean path: a method that may be sent again, no body (a length of 0
// and not chunked: r.Body itself is never nil, and Caddy may wrap it), no
// upgrade.
func leanMethod(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		return false
	}
	return r.ContentLength == 0 && len(r.TransferEncoding) == 0 && r.Header["Upgrade"] == nil
}

// serveLean forwards r on the lean path to route rt, with the rules
// httputil.ReverseProxy applies on the other path: the request's URL and
// headers from outgoing (as Rewrite), hop-by-hop headers and those the
// Connection header lists dropped from the response, trailers announced
// and copied, informational responses forwarded, bodies of unknown length
// and event streams flushed as they come, and a body that fails midway
// aborting the response rather than ending it cleanly.
func (f *forwarder) serveLean(w *proxyWriter, r *http.Request, rt *route, tail string) {
	w.lean = true
	out := outRequests.Get().(*outRequest)
	defer out.release()
	f.buildLean(out, r, rt, tail)
	ctx := r.Context()
	send := func() (*http.Response, error) { return rt.pool.RoundTrip(ctx, &out.req, f.svc.Timeout, w) }
	resp, err := send()
	if err != nil && !errors.Is(err, leanhttp.ErrNoHTTP1) {
		resp, err = f.retry(ctx, r.Method, err, send)
	}
	if errors.Is(err, leanhttp.ErrNoHTTP1) {
		// The upstream will not speak HTTP/1.1 (http_version auto), and
		// nothing was sent: the Transport speaks what it offers.
		w.lean = false
		f.rp.ServeHTTP(w, r)
		return
	}
	if err != nil {
		w.failed = true
		if errors.Is(ctx.Err(), context.Canceled) {
			f.clientGone(r)
			return
		}
		f.answerError(w, r, rt.scheme+"://"+rt.host, err)
		return
	}
	f.writeLean(w, resp)
}

// outRequest is a pooled outgoing request with its URL and header map,
// so that the lean path does not copy the client's request to make one
// (outRequests; BenchmarkModules/services: 36 allocs, 3.2 KB/op with the
// pool; 41 allocs, 5.2 KB/op with an outRequest allocated per request).
type outRequest struct {
	req    http.Request
	url    url.URL
	header http.Header
}

var outRequests = sync.Pool{New: func() any { return &outRequest{header: make(http.Header, 16)} }}

func (o *outRequest) release() {
	if len(o.header) > 64 {
		return // an unusually large map is not kept
	}
	clear(o.header)
	o.req, o.url = http.Request{}, url.URL{}
	outRequests.Put(o)
}

// buildLean fills out with what goes upstream (see outgoing).
func (f *forwarder) buildLean(out *outRequest, r *http.Request, rt *route, tail string) {
	u := &out.url
	f.outgoing(out.header, u, r, rt, tail)
	out.req = http.Request{
		Method: r.Method, URL: u, Header: out.header,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
	}
}

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

// Informational forwards a 1xx response (103 Early Hints, say) with its
// headers, leaving the headers the gateway has set for the final response
// as they were.
func (w *proxyWriter) Informational(code int, hdr http.Header) {
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

// eventStream reports whether a Content-Type is text/event-stream, whose
// events must reach the client as they come.
func eventStream(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.EqualFold(strings.TrimSpace(mt), "text/event-stream")
}
