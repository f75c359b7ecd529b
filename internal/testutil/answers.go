package testutil

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/byteproxy/byteproxy/internal/testutil/openapicheck"
	"github.com/byteproxy/byteproxy/internal/testutil/record"
)

// AnswersChecked counts the answers checked against the OpenAPI document
// in this test process.
var AnswersChecked atomic.Int64

// EnvAnswersLog names a file to which each checked answer is appended as
// "METHOD path STATUS" (the documented path), to see which operations and
// statuses the tests reach: BYTEPROXY_TEST_ANSWERS_LOG=/tmp/answers.log
// go test ./...
const EnvAnswersLog = "BYTEPROXY_TEST_ANSWERS_LOG"

// maxReports bounds the failures reported per instance; the count of the
// rest is given.
const maxReports = 20

func (in *Instance) answersFile() string { return filepath.Join(in.Dir, "answers.jsonl") }

// Answers returns what the gateway recorded so far: every answer a
// byteproxy handler made itself.
func (in *Instance) Answers() []record.Answer {
	data, err := os.ReadFile(in.answersFile())
	if err != nil {
		return nil
	}
	var out []record.Answer
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		var a record.Answer
		// A kill -9 may cut the last line: it is skipped.
		if json.Unmarshal(sc.Bytes(), &a) == nil {
			out = append(out, a)
		}
	}
	return out
}

// checkAnswers fails the test for each recorded answer that the OpenAPI
// document does not describe.
func (in *Instance) checkAnswers() {
	answers := in.Answers()
	if len(answers) == 0 {
		return
	}
	checker, err := openapicheck.Default()
	if err != nil {
		in.t.Errorf("OpenAPI check: %v", err)
		return
	}
	var log strings.Builder
	checked, failed := 0, 0
	for i := range answers {
		a := &answers[i]
		if a.ClientGone || a.ErrorRoute {
			continue // the client may have received nothing; the operator's answer
		}
		AnswersChecked.Add(1)
		checked++
		fmt.Fprintf(&log, "%s %d\n", checker.Operation(a), a.Status)
		if err := checker.Check(a); err != nil {
			failed++
			if failed <= maxReports {
				in.t.Errorf("answer disagrees with the OpenAPI document: %v\n  body: %.600s", err, a.Body)
			}
		}
	}
	if failed > maxReports {
		in.t.Errorf("... and %d more answers disagree with the OpenAPI document", failed-maxReports)
	}
	in.t.Logf("openapi: %d answers checked, %d disagree", checked, failed)
	if name := os.Getenv(EnvAnswersLog); name != "" {
		if f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
			_, _ = f.WriteString(log.String())
			f.Close()
		}
	}
}
