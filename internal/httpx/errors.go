package httpx

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// VarErrorBody names the request variable that holds the JSON body (with
// its final newline) of an error the gateway answers, while the site's
// handle_errors routes run: `respond {vars.byteproxy_error_body}` answers
// exactly what the gateway would have.
const VarErrorBody = "byteproxy_error_body"

// WriteError answers a request that the gateway refuses or cannot serve
// (a refused key, a rate limit, shed load, an unknown service, a failed
// upstream) with status and the JSON body v, with `X-Proxy-Service:
// <service>` unless service is "". msg is the error's one-line
// description, {http.error.message} in handle_errors: it names no key,
// token or credential.
//
// On a server without handle_errors it is WriteJSON: the answer is the
// same, byte for byte, as without this function. On a server with
// handle_errors the site's error routes answer, as they would a
// caddyhttp.Error, with the {http.error.*} placeholders, the body in
// VarErrorBody and the headers the gateway set (Retry-After, Allow,
// WWW-Authenticate, X-RateLimit-*) kept; where no error route writes an
// answer (another site's handle_errors on the same server, or
// `handle_errors 404` for a 429) the JSON body is the answer. See
// handOver for why the routes run here instead of in Caddy's server.
func WriteError(w http.ResponseWriter, r *http.Request, status int, service, msg string, v any) error {
	body, err := marshal(v)
	if err != nil {
		return err
	}
	if service != "" {
		w.Header().Set("X-Proxy-Service", service)
	}
	if routes := errorRoutes(r); len(routes) > 0 {
		return handOver(w, r, routes, status, msg, body)
	}
	return writeBody(w, status, body)
}

// errorRoutes returns the handle_errors routes of the server that handles
// r, nil when there are none (or r is nil).
func errorRoutes(r *http.Request) caddyhttp.RouteList {
	if r == nil {
		return nil
	}
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil || srv.Errors == nil {
		return nil
	}
	return srv.Errors.Routes
}

// handOver runs the server's error routes on the error, with the JSON body
// as the answer where they write none, and returns nil.
//
// Returning caddyhttp.Error(status, ...) to Caddy would run the same routes
// but (1) answer with an empty body wherever no route writes one, which the
// API contract does not allow, and (2) log the error with the request as it
// arrived, X-API-Key and ?api_key= included (Caddy clones it before any
// handler strips them), for every refusal of a valid key. Here the routes
// see what Caddy would give them: the error in the request's context
// (respond and file_server take its status), {http.error.*} set, the
// request's method and URI as the client sent them.
func handOver(w http.ResponseWriter, r *http.Request, routes caddyhttp.RouteList, status int, msg string, body []byte) error {
	herr := caddyhttp.HandlerError{
		Err:        errors.New(msg),
		StatusCode: status,
		Trace:      "byteproxy",
	}
	herr = caddyhttp.Error(status, herr) // an ID, as Caddy's own errors have
	h := w.Header()
	markError(h)
	h.Del("Content-Length")
	caddyhttp.SetVar(r.Context(), VarErrorBody, string(body))
	er := (*caddyhttp.HTTPErrorConfig)(nil).WithError(r, herr)
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		u := *orig.URL
		er.Method, er.RequestURI, er.URL = orig.Method, orig.RequestURI, &u
	}
	tw := &tracked{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	fallback := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		return writeBody(w, status, body)
	})
	err := errorChain(routes, fallback).ServeHTTP(tw, er)
	logger := caddy.Log().Named("http.handlers.byteproxy")
	if err != nil {
		// As Caddy's server: the error routes failed (file_server found
		// no page); without an answer yet, the JSON body is the answer.
		if ce := logger.Check(zap.ErrorLevel, "handle_errors failed on a gateway error"); ce != nil {
			ce.Write(zap.String("err_id", herr.ID), zap.Int("status", status), zap.Error(err))
		}
		if !tw.wrote {
			return writeBody(tw, status, body)
		}
		return nil
	}
	if ce := logger.Check(zap.DebugLevel, "gateway error answered by handle_errors"); ce != nil {
		ce.Write(zap.String("err_id", herr.ID), zap.Int("status", status), zap.String("msg", msg),
			zap.String("method", er.Method), zap.String("path", er.URL.Path))
	}
	return nil
}

// errorChain compiles the error routes as Caddy's server does, except that
// a terminal route that matched and wrote nothing ends in next (the JSON
// body) where Caddy writes the status with an empty body. A site's
// handle_errors blocks compile to one terminal route matching its hosts.
func errorChain(routes caddyhttp.RouteList, next caddyhttp.Handler) caddyhttp.Handler {
	last := next
	for i := len(routes) - 1; i >= 0; i-- {
		rt := routes[i]
		if !rt.Terminal {
			next = caddyhttp.RouteList{rt}.Compile(next)
			continue
		}
		rt.Terminal = false
		matched, rest := caddyhttp.RouteList{rt}.Compile(last), next
		next = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			ok, err := rt.MatcherSets.AnyMatchWithError(r)
			if err != nil {
				return err
			}
			if !ok {
				return rest.ServeHTTP(w, r)
			}
			return matched.ServeHTTP(w, r)
		})
	}
	return next
}

// tracked notes whether anything was written.
type tracked struct {
	*caddyhttp.ResponseWriterWrapper
	wrote bool
}

func (t *tracked) WriteHeader(code int) {
	t.wrote = true
	t.ResponseWriterWrapper.WriteHeader(code)
}

func (t *tracked) Write(b []byte) (int, error) {
	t.wrote = true
	return t.ResponseWriterWrapper.Write(b)
}
