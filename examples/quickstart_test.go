package examples

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

// quickStart is what the README's "Quick start" section says to do: the
// command that starts the gateway and every curl command, as written.
type quickStart struct {
	run   string   // the line that starts the gateway
	curls []string // in order: the code blocks' lines, then the prose's `curl ...`
}

func readQuickStart(t *testing.T) quickStart {
	t.Helper()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Quick start\n")
	if !ok {
		t.Fatal("README.md has no section 'Quick start'")
	}
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	var qs quickStart
	blocks := regexp.MustCompile("(?ms)^```sh\n(.*?)^```").FindAllStringSubmatch(section, -1)
	for _, b := range blocks {
		for line := range strings.SplitSeq(b[1], "\n") {
			line = strings.TrimSpace(line)
			switch {
			case strings.Contains(line, "cmd/byteproxy run"):
				qs.run = line
			case strings.HasPrefix(line, "curl "):
				qs.curls = append(qs.curls, line)
			}
		}
	}
	prose := regexp.MustCompile("(?ms)^```.*?^```").ReplaceAllString(section, "")
	for _, m := range regexp.MustCompile("`(curl [^`]+)`").FindAllStringSubmatch(prose, -1) {
		qs.curls = append(qs.curls, m[1])
	}
	if qs.run == "" || len(qs.curls) == 0 {
		t.Fatalf("the Quick start has no run command or no curl command:\n%s", section)
	}
	return qs
}

// TestReadmeQuickStart runs the README's Quick start as written: the
// gateway on Caddyfile.example with the run command's environment, then
// each curl command of the section (the commands are read from README.md,
// so they cannot drift). GITHUB_TOKEN is not set, so the GitHub call must
// be answered by the gateway, 401 "token missing", without going out.
func TestReadmeQuickStart(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed to run the README's commands (.ci/run installs it)")
	}
	qs := readQuickStart(t)

	// PROXY_API_KEY=dev-proxy-key go run ./cmd/byteproxy run --config Caddyfile.example
	words := strings.Fields(qs.run)
	var env []string
	for len(words) > 0 && strings.Contains(words[0], "=") {
		env, words = append(env, words[0]), words[1:]
	}
	if i := indexOf(words, "--config"); i < 0 || i+1 >= len(words) || words[i+1] != "Caddyfile.example" {
		t.Fatalf("the run command %q does not use Caddyfile.example", qs.run)
	}
	caddyfile, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	port := testutil.FreePort(t)
	// The last value of a variable wins: no token of the test's own
	// environment reaches the gateway.
	env = append(env, fmt.Sprintf("PORT=%d", port), "GITHUB_TOKEN=", "DISCORD_BOT_TOKEN=", "MANAGEMENT_API_KEY=")
	testutil.Start(t, string(caddyfile), testutil.Options{Port: port, Env: env})

	seen := map[string]bool{}
	for _, cmd := range qs.curls {
		if !strings.Contains(cmd, "localhost:3420") {
			t.Errorf("%q does not call the gateway at localhost:3420", cmd)
			continue
		}
		status, body := runCurl(t, strings.ReplaceAll(cmd, "localhost:3420", fmt.Sprintf("localhost:%d", port)))
		path := cmd[strings.Index(cmd, "localhost:3420")+len("localhost:3420"):]
		seen[path] = true
		var m map[string]any
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Errorf("%s: not JSON: %q", cmd, body)
			continue
		}
		switch {
		case strings.HasPrefix(path, "/proxy/github/"):
			if status != 401 || m["error"] != "Authentication token missing for github" || m["hint"] != "Set the environment variable: GITHUB_TOKEN" {
				t.Errorf("%s without GITHUB_TOKEN: %d %s, want 401 token missing", cmd, status, body)
			}
		case status != 200:
			t.Errorf("%s: %d %s", cmd, status, body)
		case path == "/health" && m["status"] != "healthy":
			t.Errorf("%s: %s", cmd, body)
		case path == "/proxy/services" && m["count"] != float64(2):
			t.Errorf("%s: want the two services of Caddyfile.example: %s", cmd, body)
		}
	}
	for _, want := range []string{"/health", "/proxy/services", "/proxy/github/repos/caddyserver/caddy", "/manage/services"} {
		if !seen[want] {
			t.Errorf("the Quick start no longer calls %s; update this test", want)
		}
	}
}

// runCurl runs a README curl command with bash, adding only what makes its
// answer readable here: silence, and the status on a last line.
func runCurl(t *testing.T, cmd string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", "-c", cmd+` -sS -w '\n%{http_code}'`).Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	body, code := "", string(out)
	if i := strings.LastIndex(code, "\n"); i >= 0 {
		body, code = code[:i], code[i+1:]
	}
	var status int
	if _, err := fmt.Sscan(code, &status); err != nil {
		t.Fatalf("%s: no status in %q", cmd, out)
	}
	return status, body
}

func indexOf(words []string, w string) int {
	for i, x := range words {
		if x == w {
			return i
		}
	}
	return -1
}
