package budget

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// forwarder stands in for the gateway's forwarder: it asks the engine
// before sending, sends with a plain http.Client and settles the ticket
// when the response head arrives. A nil engine sends everything (the
// feature switched off).
type forwarder struct {
	engine *Engine
	client *http.Client
	base   string
	cred   string
	auth   string // the Authorization the gateway adds
	// onGrant, when set, is told each consumer granted, in grant order.
	onGrant func(consumer string)
	// onAnswer, when set, is told every upstream response.
	onAnswer func(method, path string, status int)
}

// result is what the client of the gateway sees.
type result struct {
	status  int
	header  http.Header
	body    []byte
	refusal *Refusal
	ticket  Ticket
	err     error
}

func newForwarder(e *Engine, base, cred, auth string) *forwarder {
	return &forwarder{
		engine: e,
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second},
		base:   base,
		cred:   cred,
		auth:   auth,
	}
}

// do forwards one request; wait < 0: no Prefer: wait.
func (f *forwarder) do(ctx context.Context, consumer, method, path string, wait time.Duration) result {
	var t Ticket
	if f.engine != nil {
		req := Request{Credential: f.cred, Method: method, Path: path, Consumer: consumer}
		if wait >= 0 {
			req.Wait, req.HasWait = wait, true
		}
		var err error
		t, err = f.engine.Reserve(ctx, req)
		if err != nil {
			var rf *Refusal
			if errors.As(err, &rf) {
				return result{status: rf.Status, refusal: rf}
			}
			return result{err: err}
		}
		if f.onGrant != nil {
			f.onGrant(consumer)
		}
	}
	var body io.Reader
	if method == "POST" || method == "PATCH" || method == "PUT" {
		body = strings.NewReader(`{"content":"hi"}`)
	}
	hreq, err := http.NewRequestWithContext(ctx, method, f.base+path, body)
	if err != nil {
		f.cancel(&t)
		return result{err: err}
	}
	if f.auth != "" {
		hreq.Header.Set("Authorization", f.auth)
	}
	resp, err := f.client.Do(hreq)
	if err != nil {
		if f.engine != nil {
			f.engine.Done(&t, StatusNoResponse, nil)
		}
		return result{err: err}
	}
	if f.engine != nil {
		f.engine.Done(&t, resp.StatusCode, resp.Header)
	}
	if f.onAnswer != nil {
		f.onAnswer(method, path, resp.StatusCode)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return result{status: resp.StatusCode, header: resp.Header, body: b, ticket: t}
}

func (f *forwarder) cancel(t *Ticket) {
	if f.engine != nil {
		f.engine.Cancel(t)
	}
}

// id reads the "id" of a JSON body.
func (r result) id() string {
	var v struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(r.body, &v)
	return v.ID
}

// within runs fn until it reports true, for at most d, yielding between
// tries (for state only observable by polling, such as a queue's length).
func within(t *testing.T, d time.Duration, what string, fn func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !fn() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(time.Millisecond)
	}
}
