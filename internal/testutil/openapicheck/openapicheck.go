// Package openapicheck checks the gateway's answers against its OpenAPI
// document (modules/manage/docs/openapi.json) with kin-openapi's
// openapi3filter.ValidateResponse, which handles OpenAPI 3.1 with the JSON
// Schema 2020-12 validator (santhosh-tekuri/jsonschema).
//
// The check is stricter than the document as published: every object
// schema that lists its properties and says nothing about others gets
// additionalProperties: false, so a field the server sends must be
// documented (clients may still rely on the published document letting new
// fields appear). Every status an operation answers must be documented.
//
// internal/testutil runs it on every answer recorded by the gateways the
// integration tests start (see internal/testutil/record).
package openapicheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"

	"github.com/byteproxy/byteproxy/internal/routes"
	"github.com/byteproxy/byteproxy/internal/testutil/record"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// DocPath is the document's place in the repository.
const DocPath = "modules/manage/docs/openapi.json"

// Checker validates answers against one loaded document.
type Checker struct {
	doc       *openapi3.T
	templates []string // the document's paths
}

var (
	loadOnce sync.Once
	loaded   *Checker
	loadErr  error
)

// Default loads the repository's document once per process.
func Default() (*Checker, error) {
	loadOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..", "..")
		var data []byte
		if data, loadErr = os.ReadFile(filepath.Join(root, DocPath)); loadErr == nil {
			loaded, loadErr = Load(data)
		}
	})
	return loaded, loadErr
}

func init() {
	// The /docs page is HTML; its schema is a string.
	openapi3filter.RegisterBodyDecoder("text/html", openapi3filter.PlainBodyDecoder)
}

// Load parses and validates a document (with {{VERSION}} and {{BASE}}
// still in it, as it is stored) and makes its object schemas strict.
func Load(data []byte) (*Checker, error) {
	data = bytes.Replace(data, []byte("{{VERSION}}"), []byte(gateway.Version), 1)
	data = bytes.Replace(data, []byte("{{BASE}}"), nil, 1) // the gateway at the site's root
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(data)
	if err != nil {
		return nil, fmt.Errorf("loading the OpenAPI document: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("the OpenAPI document is invalid: %w", err)
	}
	c := &Checker{doc: doc, templates: doc.Paths.InMatchingOrder()}
	if open := c.makeStrict(); len(open) > 0 {
		return nil, fmt.Errorf("the OpenAPI document has object schemas that neither list their properties nor say what else they hold (additionalProperties): %s", strings.Join(open, ", "))
	}
	return c, nil
}

// Doc is the loaded document.
func (c *Checker) Doc() *openapi3.T { return c.doc }

// makeStrict closes every object schema that lists properties and leaves
// additionalProperties open. It returns the object schemas that describe
// nothing (no properties, no additionalProperties), which a strict check
// cannot close: the document must say what they hold.
func (c *Checker) makeStrict() (open []string) {
	seen := map[*openapi3.Schema]bool{}
	var visit func(string, *openapi3.SchemaRef)
	visit = func(where string, ref *openapi3.SchemaRef) {
		if ref == nil || ref.Value == nil || seen[ref.Value] {
			return
		}
		s := ref.Value
		seen[s] = true
		undecided := s.AdditionalProperties.Has == nil && s.AdditionalProperties.Schema == nil
		switch {
		case len(s.Properties) > 0 && undecided:
			s.AdditionalProperties.Has = new(false)
		case undecided && s.Type.Includes(openapi3.TypeObject) && len(s.OneOf)+len(s.AnyOf)+len(s.AllOf) == 0:
			open = append(open, where)
		}
		for name, p := range s.Properties {
			visit(where+"."+name, p)
		}
		for _, list := range []openapi3.SchemaRefs{s.OneOf, s.AnyOf, s.AllOf} {
			for _, sub := range list {
				visit(where, sub)
			}
		}
		visit(where+"[]", s.Items)
		visit(where+".*", s.AdditionalProperties.Schema)
	}
	for name, s := range c.doc.Components.Schemas {
		visit(name, s)
	}
	for name, r := range c.doc.Components.Responses {
		visitContent("responses."+name, r.Value, visit)
	}
	for p, item := range c.doc.Paths.Map() {
		for m, op := range item.Operations() {
			for status, r := range op.Responses.Map() {
				visitContent(m+" "+p+" "+status, r.Value, visit)
			}
		}
	}
	slices.Sort(open)
	return open
}

func visitContent(where string, r *openapi3.Response, visit func(string, *openapi3.SchemaRef)) {
	if r == nil {
		return
	}
	for _, mt := range r.Content {
		visit(where, mt.Schema)
	}
}

// Check validates one answer. Answers of an upstream passed on by the
// proxy are the upstream's: only the headers the gateway adds are checked.
func (c *Checker) Check(a *record.Answer) error {
	tmpl, params := c.match(a)
	var op *openapi3.Operation
	var item *openapi3.PathItem
	if tmpl != "" {
		item = c.doc.Paths.Value(tmpl)
		op = item.GetOperation(a.Method)
	}
	opts := &openapi3filter.Options{IncludeResponseStatus: true, MultiError: false}
	status := a.Status
	if op != nil && tmpl == proxyTemplate && upstreamAnswer(a) {
		// The upstream's status and body; the gateway's headers are those
		// of the documented forwarded answer (200).
		status = http.StatusOK
		opts.ExcludeResponseBody = true
	}
	if op == nil {
		var err error
		if op, err = c.fallback(a.Method); err != nil {
			return err
		}
		tmpl, item = "(no documented operation)", &openapi3.PathItem{}
	}
	if a.Method == http.MethodHead {
		// kin-openapi does not check HEAD answers: check the GET answer's
		// status and headers (HEAD has no body).
		if get := item.GetOperation(http.MethodGet); get != nil {
			op = get
		}
		opts.ExcludeResponseBody = true
	}
	u := &url.URL{Path: a.Path, RawPath: a.RawPath, RawQuery: a.Query}
	req := &http.Request{Method: a.Method, URL: u, Header: http.Header{}}
	if a.Method == http.MethodHead {
		req.Method = http.MethodGet
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request:    req,
			PathParams: params,
			Route:      &routers.Route{Spec: c.doc, Path: tmpl, PathItem: item, Method: a.Method, Operation: op},
		},
		Status:  status,
		Header:  a.Header,
		Body:    io.NopCloser(bytes.NewReader(a.Body)),
		Options: opts,
	}
	if a.Header == nil {
		in.Header = http.Header{}
	}
	if a.Truncated || a.Returned {
		opts.ExcludeResponseBody = true
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		return fmt.Errorf("%s %s → %d (operation %s): %w", a.Method, a.RawPath, a.Status, tmpl, unwrapDetail(err))
	}
	if a.Returned && a.Status != http.StatusNotModified {
		// The handler gave Caddy an error to answer: Caddy answers it with
		// an empty body, not the JSON every error of the gateway has.
		return fmt.Errorf("%s %s → %d: the handler returned an error to Caddy (empty body, no JSON)", a.Method, a.RawPath, a.Status)
	}
	return nil
}

// Operation names the documented operation an answer belongs to, as
// "METHOD path", or "METHOD (undocumented)".
func (c *Checker) Operation(a *record.Answer) string {
	tmpl, _ := c.match(a)
	if tmpl == "" || c.doc.Paths.Value(tmpl).GetOperation(a.Method) == nil {
		return a.Method + " (undocumented)"
	}
	return a.Method + " " + tmpl
}

const proxyTemplate = routes.ProxyService

// Forwarded reports an answer of the upstream that the proxy passed on
// (only the gateway's headers on it are the gateway's).
func (c *Checker) Forwarded(a *record.Answer) bool {
	tmpl, _ := c.match(a)
	return tmpl == proxyTemplate && upstreamAnswer(a)
}

// upstreamAnswer tells a forwarded answer (the upstream's, with the
// gateway's X-Proxy-Duration) from one the gateway made (X-Proxy-Error).
func upstreamAnswer(a *record.Answer) bool {
	return a.Header.Get("X-Proxy-Error") == "" && a.Header.Get("X-Proxy-Duration") != ""
}

// slashed are the documented paths the gateway answers with a trailing
// slash too (routes.Table's Slash).
var slashed = func() map[string]bool {
	m := map[string]bool{}
	for _, rt := range routes.Table {
		m[rt.Path] = rt.Slash
	}
	return m
}()

// match finds the documented path of an answer: the proxy by the rules the
// gateway applies (routes.ProxyPath on the path as sent, and for the
// byteproxy handler first its route, routes.Of), the
// others segment by segment.
func (c *Checker) match(a *record.Answer) (string, map[string]string) {
	routed := a.Handler != "byteproxy" || routes.Of(a.Path) == routes.Proxy
	if key, rest, ok := routes.ProxyPath(a.RawPath); ok && routed {
		return proxyTemplate, map[string]string{"service": key, "path": strings.TrimPrefix(rest, "/")}
	}
	if tmpl, params := c.matchSegments(a.Path); tmpl != "" {
		return tmpl, params
	}
	if p, ok := strings.CutSuffix(a.Path, "/"); ok && p != "" {
		if tmpl, params := c.matchSegments(p); slashed[tmpl] {
			return tmpl, params
		}
	}
	return "", nil
}

// matchSegments finds the documented path p is an instance of, segment by
// segment, the proxy left out.
func (c *Checker) matchSegments(p string) (string, map[string]string) {
	got := strings.Split(p, "/")
	for _, tmpl := range c.templates {
		if tmpl == proxyTemplate {
			continue
		}
		want := strings.Split(tmpl, "/")
		if len(want) != len(got) {
			continue
		}
		params := map[string]string{}
		ok := true
		for i := range want {
			if strings.HasPrefix(want[i], "{") && strings.HasSuffix(want[i], "}") {
				if got[i] == "" {
					ok = false
					break
				}
				params[strings.Trim(want[i], "{}")] = got[i]
			} else if want[i] != got[i] {
				ok = false
				break
			}
		}
		if ok {
			return tmpl, params
		}
	}
	return "", nil
}

// fallbackResponses are the answers of a path or method the document does
// not list: the JSON 404, 405 with Allow (204 for OPTIONS), and what the
// handlers in front answer for any path (401, 403, 429, 503).
var fallbackResponses = map[string]string{
	"204": "Options",
	"401": "Unauthorized",
	"403": "Forbidden",
	"404": "EndpointNotFound",
	"405": "MethodNotAllowed",
	"415": "UnsupportedMediaType",
	"429": "TooManyAuthFailures",
	"503": "UnderPressure",
}

func (c *Checker) fallback(method string) (*openapi3.Operation, error) {
	op := &openapi3.Operation{Responses: openapi3.NewResponses()}
	op.Responses.Delete("default")
	for status, name := range fallbackResponses {
		if status == "204" && method != http.MethodOptions {
			continue
		}
		r := c.doc.Components.Responses[name]
		if r == nil {
			return nil, fmt.Errorf("the document has no components.responses.%s (fallback for undocumented paths and methods)", name)
		}
		op.Responses.Set(status, r)
	}
	return op, nil
}

// unwrapDetail keeps kin-openapi's message but drops the dump of the
// schema and the value it appends (the body is reported beside it).
func unwrapDetail(err error) error {
	msg := err.Error()
	var re *openapi3filter.ResponseError
	if errors.As(err, &re) {
		msg = re.Reason
		if re.Err != nil {
			msg += ": " + re.Err.Error()
		}
	}
	msg, _, _ = strings.Cut(msg, "\n")
	return errors.New(msg)
}

// Operations lists "METHOD path" for every operation of the document.
func (c *Checker) Operations() []string {
	var ops []string
	for p, item := range c.doc.Paths.Map() {
		for m := range item.Operations() {
			ops = append(ops, m+" "+p)
		}
	}
	slices.Sort(ops)
	return ops
}
