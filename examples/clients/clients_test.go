// Package clients checks the Node client libraries through the gateway:
// @octokit/rest (with @octokit/plugin-throttling) and @discordjs/rest,
// set up as README's "Client libraries" shows, run unchanged by the
// node:test scripts in this directory against the built gateway on this
// directory's Caddyfile and fakes of GitHub and Discord.
//
// It is a Go test so that README's test command (`go test ./...`) is what
// CI runs: .ci/run installs Node if it is missing. Outside CI, a machine
// without Node 20 or later skips it; in CI (CI=true) that fails.
package clients

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil"
	"github.com/byteproxy/byteproxy/internal/testutil/fakeapi"
	"github.com/byteproxy/byteproxy/internal/testutil/short"
)

// Bounds of the Node part: installing the locked packages (from npm's
// cache, else the registry) and running the scripts.
const (
	npmTimeout  = 5 * time.Minute
	nodeTimeout = 3 * time.Minute
)

func TestNodeClients(t *testing.T) {
	node, npm := nodeTools(t)
	dir := stage(t)
	run(t, npmTimeout, dir, nil, npm, "ci", "--no-audit", "--no-fund", "--prefer-offline")

	proxyKey, ghToken, botToken := secret(t), secret(t), secret(t)
	gh := fakeapi.NewGitHub(t, ghToken, nil)
	dc := fakeapi.NewDiscord(t, botToken)
	caddyfile, err := os.ReadFile("Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	port := testutil.FreePort(t)
	in := testutil.Start(t, string(caddyfile), testutil.Options{Port: port, Env: []string{
		"PORT=" + strconv.Itoa(port), "PROXY_API_KEY=" + proxyKey,
		"GITHUB_TOKEN=" + ghToken, "GITHUB_API_URL=" + gh.URL(),
		"DISCORD_BOT_TOKEN=" + botToken, "DISCORD_API_URL=" + dc.URL(),
	}})

	scripts, _ := filepath.Glob(filepath.Join(dir, "*.test.js"))
	if len(scripts) == 0 {
		t.Fatal("no *.test.js scripts")
	}
	args := append([]string{"--test", "--test-reporter=spec"}, scripts...)
	gateway := strings.TrimSuffix(in.URL(""), "/")
	out := run(t, nodeTimeout, dir, []string{"GATEWAY=" + gateway, "PROXY_API_KEY=" + proxyKey}, node, args...)
	t.Logf("node --test:\n%s", out)

	// What reached the upstreams: the gateway's credentials, never the
	// proxy key; webhooks without the bot token.
	for _, r := range gh.Requests() {
		if r.Header.Get("Authorization") != "Bearer "+ghToken {
			t.Errorf("GitHub: %s %s arrived without the gateway's token", r.Method, r.Path)
		}
	}
	if gh.Seen("GET", "/repositories/42/issues") != 2 {
		t.Errorf("GitHub saw pages 2 and 3 %d times, want 2 (through the gateway)", gh.Seen("GET", "/repositories/42/issues"))
	}
	webhooks := 0
	for _, r := range dc.Requests() {
		authz := r.Header.Values("Authorization")
		if strings.HasPrefix(r.Path, "/api/v10/webhooks/") {
			webhooks++
			if len(authz) != 0 {
				t.Errorf("Discord: webhook %s %s arrived with Authorization", r.Method, r.Path)
			}
		} else if len(authz) != 1 || authz[0] != "Bot "+botToken {
			t.Errorf("Discord: %s %s arrived without the bot token", r.Method, r.Path)
		}
	}
	if webhooks != 3 {
		t.Errorf("Discord saw %d webhook calls, want 3", webhooks)
	}
	for _, r := range append(gh.Requests(), dc.Requests()...) {
		if strings.Contains(fmt.Sprint(r.Header)+r.RawQuery, proxyKey) {
			t.Errorf("%s %s: the proxy key reached the upstream", r.Method, r.Path)
		}
	}
	for name, s := range map[string]string{"proxy key": proxyKey, "GitHub token": ghToken, "bot token": botToken} {
		if strings.Contains(in.Logs(), s) {
			t.Errorf("the gateway's log contains the %s", name)
		}
	}
}

// nodeTools finds node (20 or later) and npm. Without them the test skips,
// except in CI, where it fails.
func nodeTools(t *testing.T) (node, npm string) {
	t.Helper()
	short.Skip(t, "runs the Node clients (npm install)")
	missing := func(why string) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s; CI must run the Node client checks (.ci/run installs nodejs and npm)", why)
		}
		t.Skipf("%s: Node client checks skipped (CI runs them)", why)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node is not installed")
	}
	npm, err = exec.LookPath("npm")
	if err != nil {
		missing("npm is not installed")
	}
	out, err := exec.Command(node, "--version").Output()
	v := strings.TrimPrefix(strings.TrimSpace(string(out)), "v")
	major, _ := strconv.Atoi(strings.Split(v, ".")[0])
	if err != nil || major < 20 {
		missing(fmt.Sprintf("node %q is older than 20 (@octokit/rest 22 needs 20)", v))
	}
	return node, npm
}

// stage copies the scripts and the locked package list into a temporary
// directory: each run installs afresh from package-lock.json, and leaves
// the source tree (and a developer's own node_modules) as it was.
func stage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files, _ := filepath.Glob("*.test.js")
	for _, f := range append(files, "package.json", "package-lock.json") {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// run runs a command in dir with env added, bounded by timeout: on expiry
// its whole process group is killed (node --test runs each script in a
// child process). It fails the test, with the output, unless the command
// succeeds.
func run(t *testing.T, timeout time.Duration, dir string, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	t.Logf("%s %s: %v", filepath.Base(name), args[0], time.Since(start).Round(time.Millisecond))
	if ctx.Err() != nil {
		t.Fatalf("%s %s did not finish in %v:\n%s", name, strings.Join(args, " "), timeout, out.String())
	}
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// secret is a fresh random credential.
func secret(t *testing.T) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
