package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/byteproxy/byteproxy/internal/testutil"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// TestVersionCommand runs the built binary: `byteproxy version` names
// ByteProxy's version and module, then Caddy's version as Caddy prints it.
func TestVersionCommand(t *testing.T) {
	bin := testutil.Binary(t)
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.Command(bin, arg).CombinedOutput()
		if err != nil {
			t.Fatalf("byteproxy %s: %v\n%s", arg, err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 2 {
			t.Fatalf("byteproxy %s: want two lines (ours, Caddy's), got %q", arg, out)
		}
		ours := "byteproxy v" + gateway.Version + " (module " + gateway.ModulePath + " "
		if !strings.HasPrefix(lines[0], ours) {
			t.Errorf("byteproxy %s: first line %q, want it to start with %q", arg, lines[0], ours)
		}
		if caddy := regexp.MustCompile(`^caddy v2\.\d+\.\d+`); !caddy.MatchString(lines[1]) {
			t.Errorf("byteproxy %s: second line %q, want Caddy's version", arg, lines[1])
		}
	}
}

// TestOtherCommandsReachCaddy: only the plain version forms are answered
// before Caddy's command line.
func TestOtherCommandsReachCaddy(t *testing.T) {
	out, err := exec.Command(testutil.Binary(t), "list-modules").CombinedOutput()
	if err != nil {
		t.Fatalf("list-modules: %v\n%s", err, out)
	}
	for _, id := range []string{"byteproxy", "http.handlers.byteproxy", "http.handlers.reverse_proxy"} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(id) + `$`).Match(out) {
			t.Errorf("list-modules does not list %s", id)
		}
	}
}

// TestGCDefault runs the built binary: without GOGC in the environment the
// collector runs at the binary's default, with GOGC at the environment's,
// as /status reports.
func TestGCDefault(t *testing.T) {
	// The child inherits this process's environment; a GOGC set for the
	// test run would hide the default.
	t.Setenv("GOGC", "")
	os.Unsetenv("GOGC")
	const cf = "{\n\tbyteproxy\n}\n\n:{{PORT}} {\n\tbyteproxy\n}\n"
	for _, tc := range []struct {
		env  []string
		want float64
	}{
		{nil, defaultGCPercent},
		{[]string{"GOGC=150"}, 150},
	} {
		in := testutil.Start(t, cf, testutil.Options{Env: tc.env})
		resp, body := testutil.Do(t, "GET", in.URL("/status"), nil)
		var st struct {
			Runtime struct {
				Memory map[string]float64 `json:"memory"`
			} `json:"runtime"`
		}
		if err := json.Unmarshal(body, &st); err != nil || resp.StatusCode != 200 {
			t.Fatalf("/status: %d %v: %s", resp.StatusCode, err, body)
		}
		if got := st.Runtime.Memory["gcPercent"]; got != tc.want {
			t.Errorf("env %v: gcPercent %v, want %v", tc.env, got, tc.want)
		}
		if st.Runtime.Memory["memoryLimit"] <= 0 {
			t.Errorf("env %v: memoryLimit %v", tc.env, st.Runtime.Memory["memoryLimit"])
		}
		in.Stop()
	}
}
