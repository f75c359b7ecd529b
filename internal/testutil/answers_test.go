package testutil

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
)

// errorsTB records Errorf instead of failing, to test the check itself.
type errorsTB struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (e *errorsTB) Errorf(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.errs = append(e.errs, fmt.Sprintf(format, args...))
}

func (e *errorsTB) errors() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.errs...)
}

// The gateway the harness starts records its answers, and the check at
// the end of a test passes them when they agree with the OpenAPI document
// and fails the test for one that does not.
func TestAnswersCheckedAgainstOpenAPI(t *testing.T) {
	tb := &errorsTB{TB: t}
	in := Start(tb, `{
	byteproxy {
		auth proxy {
			key answers-proxy-key-0123456789
		}
	}
}
:{{PORT}} {
	handle_path /api/* {
		byteproxy
	}
}
`, Options{})
	for _, path := range []string{"/api/health", "/api/", "/api/nope", "/api/proxy/nope/x", "/api/proxy/services"} {
		Do(t, "GET", in.URL(path), nil)
	}
	Do(t, "POST", in.URL("/api/health"), nil)
	answers := in.Answers()
	if len(answers) != 6 {
		t.Fatalf("recorded %d answers, want 6: %+v", len(answers), answers)
	}
	// The gateway saw the path below the mount point.
	if answers[0].Path != "/health" || answers[0].Handler != "byteproxy" || answers[0].Status != 200 {
		t.Fatalf("first answer %+v", answers[0])
	}
	in.checkAnswers()
	if errs := tb.errors(); len(errs) > 0 {
		t.Fatalf("the gateway's answers disagree with the document:\n%s", strings.Join(errs, "\n"))
	}

	// An answer the document does not describe fails the test.
	f, err := os.OpenFile(in.answersFile(), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(`{"handler":"byteproxy","method":"GET","path":"/health","rawPath":"/health","status":200,"header":{"Content-Type":["application/json"]},"body":"eyJzdGF0dXMiOiJoZWFsdGh5In0="}` + "\n")
	f.Close()
	in.checkAnswers()
	if errs := tb.errors(); len(errs) != 1 || !strings.Contains(errs[0], "GET /health → 200") {
		t.Fatalf("want one failure for the forged /health answer, got %q", errs)
	}
}
