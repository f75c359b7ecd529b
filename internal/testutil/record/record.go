// Package record is built into the gateway only for the integration tests
// (`go build -tags byteproxy_record ./cmd/byteproxy`, which
// internal/testutil does): it writes down every answer a byteproxy handler
// makes itself, so that the tests can check each one against the OpenAPI
// document (internal/testutil/openapicheck). Nothing here is in the binary
// users run.
//
// Two parts:
//
//   - the config adapter `caddyfile_record`: the Caddyfile adapter, then
//     every handler of the adapted config whose name starts with
//     "byteproxy" is wrapped in byteproxy_test_record;
//   - the handler http.handlers.byteproxy_test_record: runs the handler it
//     wraps on a writer that keeps a copy of the answer, and appends the
//     answer as one JSON line to the file named by $BYTEPROXY_TEST_RECORD,
//     unless the wrapped handler passed the request on (then the answer is
//     another handler's: a later byteproxy handler records it if it is
//     ours).
package record

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/internal/testutil/drain"
)

// EnvFile names the file answers are appended to; nothing is recorded
// without it.
const EnvFile = "BYTEPROXY_TEST_RECORD"

// Adapter is the name of the config adapter that wraps byteproxy handlers.
const Adapter = "caddyfile_record"

// maxBody bounds the copy of a body kept for the record; a longer body is
// recorded as truncated (and its content is not checked).
const maxBody = 256 << 10

func init() {
	caddy.RegisterModule(new(Recorder))
	caddyconfig.RegisterAdapter(Adapter, adapter{})
}

// Answer is one recorded answer: the request as the wrapped handler saw it
// (after handle_path and other rewrites) and what it wrote.
type Answer struct {
	Handler string      `json:"handler"` // module name of the wrapped handler
	Method  string      `json:"method"`
	Path    string      `json:"path"`    // r.URL.Path
	RawPath string      `json:"rawPath"` // r.URL.EscapedPath()
	Query   string      `json:"query,omitempty"`
	Status  int         `json:"status"`
	Header  http.Header `json:"header"`
	Body    []byte      `json:"body,omitempty"`
	// Truncated is set when the body was longer than the copy kept.
	Truncated bool `json:"truncated,omitempty"`
	// Returned is set when the handler wrote nothing and returned an error
	// to Caddy, which then answered Status with an empty body.
	Returned bool `json:"returned,omitempty"`
	// ClientGone is set when the client went away before the answer was
	// complete: it may have received nothing.
	ClientGone bool `json:"clientGone,omitempty"`
	// ErrorRoute is set when the site's handle_errors answered an error of
	// the gateway's with a body of its own (httpx.WriteError): the
	// operator's answer, which the OpenAPI document does not describe.
	ErrorRoute bool `json:"errorRoute,omitempty"`
}

// Recorder wraps one handler and records the answers it makes itself.
type Recorder struct {
	// Wrap is the wrapped handler's config.
	Wrap json.RawMessage `json:"wrap,omitempty" caddy:"namespace=http.handlers inline_key=handler"`

	inner caddyhttp.MiddlewareHandler
	name  string
}

// CaddyModule returns the Caddy module information.
func (*Recorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.byteproxy_test_record",
		New: func() caddy.Module { return new(Recorder) },
	}
}

// Provision loads the wrapped handler.
func (rec *Recorder) Provision(ctx caddy.Context) error {
	if rec.Wrap == nil {
		return errors.New("byteproxy_test_record: nothing to wrap")
	}
	mod, err := ctx.LoadModule(rec, "Wrap")
	if err != nil {
		return err
	}
	rec.inner = mod.(caddyhttp.MiddlewareHandler)
	rec.name = mod.(caddy.Module).CaddyModule().ID.Name()
	return nil
}

// ServeHTTP runs the wrapped handler and records its answer.
func (rec *Recorder) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	a := &Answer{Handler: rec.name, Method: r.Method, Path: r.URL.Path, RawPath: r.URL.EscapedPath(), Query: r.URL.RawQuery}
	cw := &copyWriter{ResponseWriter: w, answer: a}
	err := rec.inner.ServeHTTP(cw, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		cw.passed = true // from here on the answer is not this handler's
		return next.ServeHTTP(w, r)
	}))
	if cw.passed {
		return err
	}
	if a.Status == 0 {
		if err == nil {
			if cw.hijacked {
				return nil // an upgrade: the upstream's 101 went out on the raw connection
			}
			a.Status = http.StatusOK // net/http's answer to a handler that wrote nothing
		} else {
			a.Returned = true
			a.Status = http.StatusInternalServerError
			if he, ok := errors.AsType[caddyhttp.HandlerError](err); ok && he.StatusCode != 0 {
				a.Status = he.StatusCode
			}
		}
	}
	a.ClientGone = r.Context().Err() != nil
	a.Body = cw.body.Bytes()
	if v, ok := caddyhttp.GetVar(r.Context(), httpx.VarErrorBody).(string); ok && v != string(a.Body) {
		a.ErrorRoute = true
	}
	write(a)
	return err
}

// copyWriter passes everything through and keeps the status, the headers
// as they were sent and a bounded copy of the body. It has no ReadFrom, so
// io.Copy and http.ServeContent write through Write.
type copyWriter struct {
	http.ResponseWriter
	answer   *Answer
	body     bytes.Buffer
	passed   bool // the wrapped handler called next
	hijacked bool
}

func (cw *copyWriter) WriteHeader(code int) {
	if !cw.passed && cw.answer.Status == 0 && code >= 200 {
		cw.answer.Status = code
		cw.answer.Header = cw.Header().Clone()
	}
	cw.ResponseWriter.WriteHeader(code)
}

func (cw *copyWriter) Write(p []byte) (int, error) {
	if cw.answer.Status == 0 {
		cw.WriteHeader(http.StatusOK)
	}
	if !cw.passed && !cw.answer.Truncated {
		if cw.body.Len()+len(p) > maxBody {
			cw.answer.Truncated = true
		} else {
			cw.body.Write(p)
		}
	}
	return cw.ResponseWriter.Write(p)
}

// FlushError sends the status first if nothing was written yet, so that
// the record sees it, then flushes the writer below.
func (cw *copyWriter) FlushError() error {
	if cw.answer.Status == 0 {
		cw.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(cw.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the writer below (flush,
// deadlines, full duplex); a hijack through it is an upgrade.
func (cw *copyWriter) Unwrap() http.ResponseWriter {
	cw.hijacked = true // conservative: only a hijack makes an answer with no status legitimate
	return cw.ResponseWriter
}

var (
	fileMu sync.Mutex
	file   *os.File
	opened bool
)

// SetFile makes the answers of this process go to the file name from now
// on (none if name is empty), in place of $BYTEPROXY_TEST_RECORD: a
// gateway run inside the test process (testutil.InProcess) records to its
// own instance's file.
func SetFile(name string) error {
	fileMu.Lock()
	defer fileMu.Unlock()
	if file != nil {
		file.Close()
	}
	opened, file = true, nil
	if name == "" {
		return nil
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	file = f
	return nil
}

// write appends the answer as one line, in one write, so a kill -9 loses at
// most the line being written.
func write(a *Answer) {
	line, err := json.Marshal(a)
	if err != nil {
		return
	}
	line = append(line, '\n')
	fileMu.Lock()
	defer fileMu.Unlock()
	if !opened {
		opened = true
		if name := os.Getenv(EnvFile); name != "" {
			file, _ = os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		}
	}
	if file != nil {
		_, _ = file.Write(line)
	}
}

// adapter is the Caddyfile adapter with every byteproxy handler wrapped.
type adapter struct{}

func (adapter) Adapt(body []byte, options map[string]any) ([]byte, []caddyconfig.Warning, error) {
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, options)
	if err != nil {
		return out, warnings, err
	}
	var cfg map[string]any
	if err := json.Unmarshal(out, &cfg); err != nil {
		return nil, warnings, err
	}
	// A reload of the test build returns when the replaced servers have
	// closed (package drain).
	drain.Inject(cfg)
	out, err = json.Marshal(wrapHandlers(cfg))
	return out, warnings, err
}

// wrapHandlers replaces each handler object {"handler": "byteproxy..."}
// anywhere in the config by {"handler": "byteproxy_test_record", "wrap": it}.
func wrapHandlers(v any) any {
	switch v := v.(type) {
	case map[string]any:
		name, _ := v["handler"].(string)
		if name == "byteproxy_test_record" {
			return v // wrapped already
		}
		for k, e := range v {
			v[k] = wrapHandlers(e)
		}
		if strings.HasPrefix(name, "byteproxy") {
			return map[string]any{"handler": "byteproxy_test_record", "wrap": v}
		}
	case []any:
		for i, e := range v {
			v[i] = wrapHandlers(e)
		}
	}
	return v
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Recorder)(nil)
	_ caddyhttp.MiddlewareHandler = (*Recorder)(nil)
)
