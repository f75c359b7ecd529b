package byteproxy_test

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

// xcaddyModule is the xcaddy the build test runs, fetched through the Go
// module proxy. The caddy:*-builder images ship an xcaddy of their own; the
// command line is the same.
const (
	xcaddyModule  = "github.com/caddyserver/xcaddy"
	xcaddyVersion = "v0.4.5"
)

// moduleIDs are every module ByteProxy registers.
var moduleIDs = []string{
	"byteproxy",
	"http.handlers.byteproxy",
	"http.handlers.byteproxy_auth",
	"http.handlers.byteproxy_cors",
	"http.handlers.byteproxy_manage",
	"http.handlers.byteproxy_pressure",
	"http.handlers.byteproxy_ratelimit",
	"http.handlers.byteproxy_services",
}

// dockerfile is the part of the Dockerfile the test checks and runs.
type dockerfile struct {
	args   map[string]string // global ARGs with their defaults
	stages []stage
}

type stage struct {
	from  string            // the image, ARGs substituted
	name  string            // AS <name>
	env   map[string]string // ENV k=v
	copy  [][]string        // COPY arguments
	run   []string          // RUN commands
	lines []string          // every instruction, for messages
}

// readDockerfile parses the few instructions our Dockerfile uses, joining
// continuation lines and substituting ${ARG} references.
func readDockerfile(t *testing.T, path string) dockerfile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	df := dockerfile{args: map[string]string{}}
	var logical []string
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			cur.WriteString(strings.TrimSuffix(line, `\`) + " ")
			continue
		}
		cur.WriteString(line)
		logical = append(logical, cur.String())
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	expand := func(s string) string {
		return os.Expand(s, func(k string) string { return df.args[k] })
	}
	for _, line := range logical {
		instr, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "ARG":
			k, v, _ := strings.Cut(rest, "=")
			if len(df.stages) == 0 {
				df.args[k] = v
			}
		case "FROM":
			f := strings.Fields(expand(rest))
			st := stage{from: f[0], env: map[string]string{}}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			df.stages = append(df.stages, st)
		default:
			if len(df.stages) == 0 {
				t.Fatalf("Dockerfile: %s before FROM", instr)
			}
			st := &df.stages[len(df.stages)-1]
			switch strings.ToUpper(instr) {
			case "ENV":
				k, v, _ := strings.Cut(rest, "=")
				st.env[k] = v
			case "COPY":
				st.copy = append(st.copy, strings.Fields(rest))
			case "RUN":
				st.run = append(st.run, rest)
			}
			st.lines = append(st.lines, line)
		}
	}
	return df
}

// goModVersion returns the version go.mod requires of a module.
func goModVersion(t *testing.T, module string) string {
	t.Helper()
	b, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(module) + `\s+(v\S+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("go.mod does not require %s", module)
	}
	return string(m[1])
}

// withArg is the --with argument that builds ByteProxy from a local copy.
// The version only names what Go records for the module (a replacement
// with a version never needs the module proxy to know it); it is ours.
func withArg(src string) string {
	return gateway.ModulePath + "@v" + gateway.Version + "=" + src
}

// TestDockerfileShape checks, without Docker, that the Dockerfile follows
// the caddy:builder pattern with the Caddy version go.mod builds against,
// builds this checkout, and ships what the image's command serves.
func TestDockerfileShape(t *testing.T) {
	df := readDockerfile(t, "Dockerfile")
	caddyVersion := goModVersion(t, "github.com/caddyserver/caddy/v2")
	if got := "v" + df.args["CADDY_VERSION"]; got != caddyVersion {
		t.Errorf("ARG CADDY_VERSION=%s, but go.mod requires caddy %s", df.args["CADDY_VERSION"], caddyVersion)
	}
	if len(df.stages) != 2 {
		t.Fatalf("want two stages (builder, final), got %d", len(df.stages))
	}
	builder, final := df.stages[0], df.stages[1]
	if want := "caddy:" + df.args["CADDY_VERSION"] + "-builder"; builder.from != want || builder.name != "builder" {
		t.Errorf("first stage is FROM %s AS %s, want FROM %s AS builder", builder.from, builder.name, want)
	}
	if want := "caddy:" + df.args["CADDY_VERSION"]; final.from != want {
		t.Errorf("final stage is FROM %s, want FROM %s", final.from, want)
	}
	src, args := xcaddyCommand(t, builder)
	if !containsSeq(args, "--with", withArg(src)) {
		t.Errorf("xcaddy build %v: want --with %s", args, withArg(src))
	}
	output := flagValue(args, "--output")
	if !hasCopy(final, "--from=builder", output, "/usr/bin/caddy") {
		t.Errorf("final stage does not copy the builder's %s to /usr/bin/caddy: %v", output, final.lines)
	}
	if !hasCopy(final, "Caddyfile.example", "/etc/caddy/Caddyfile") {
		t.Errorf("final stage does not copy Caddyfile.example to /etc/caddy/Caddyfile (what the caddy image runs): %v", final.lines)
	}
	// The image runs caddy, not cmd/byteproxy: it gets the byteproxy
	// binary's collector setting (defaultGCPercent) from its environment.
	if final.env["GOGC"] != "200" {
		t.Errorf("final stage: ENV GOGC=%q, want 200 (cmd/byteproxy's default)", final.env["GOGC"])
	}
}

// xcaddyCommand returns the builder's source directory (COPY . <dir>) and
// the arguments of its one `RUN xcaddy build ...`.
func xcaddyCommand(t *testing.T, builder stage) (src string, args []string) {
	t.Helper()
	for _, c := range builder.copy {
		if len(c) == 2 && c[0] == "." {
			src = c[1]
		}
	}
	if src == "" {
		t.Fatalf("builder stage does not COPY . <dir>: %v", builder.lines)
	}
	for _, r := range builder.run {
		if f := strings.Fields(r); len(f) > 1 && f[0] == "xcaddy" && f[1] == "build" {
			if args != nil {
				t.Fatalf("more than one RUN xcaddy build: %v", builder.run)
			}
			if strings.ContainsAny(r, `"'$&;|`) {
				t.Fatalf("RUN %s: the test runs it word by word; keep it free of quotes, variables and shell operators", r)
			}
			args = f[2:]
		}
	}
	if args == nil {
		t.Fatalf("builder stage has no RUN xcaddy build: %v", builder.lines)
	}
	return src, args
}

// TestDockerfileBuildCommand runs the Dockerfile's `xcaddy build` on this
// machine as the builder image would (its CADDY_VERSION, the stage's ENV),
// with this checkout in place of the copied source, then checks the binary
// has every module and accepts Caddyfile.example, the image's config.
// docker itself is not needed; xcaddy and Caddy's dependencies come from
// the Go module proxy, so outside CI a machine without it skips.
func TestDockerfileBuildCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Caddy with xcaddy (a minute or more); not in -short")
	}
	df := readDockerfile(t, "Dockerfile")
	builder := df.stages[0]
	src, args := xcaddyCommand(t, builder)
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "caddy")
	for i, a := range args {
		args[i] = strings.ReplaceAll(a, "="+src, "="+root)
	}
	for i := range args {
		if args[i] == "--output" && i+1 < len(args) {
			args[i+1] = bin
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	fetch := exec.CommandContext(ctx, "go", "mod", "download", xcaddyModule+"@"+xcaddyVersion)
	fetch.Dir = dir
	if out, err := fetch.CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("fetching xcaddy through the module proxy: %v\n%s", err, out)
		}
		t.Skipf("xcaddy cannot be fetched here (%v); CI runs this test", err)
	}

	cmd := exec.CommandContext(ctx, "go", append([]string{"run", xcaddyModule + "/cmd/xcaddy@" + xcaddyVersion, "build"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CADDY_VERSION=v"+df.args["CADDY_VERSION"]) // as the builder image sets it
	for k, v := range builder.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("xcaddy build %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("xcaddy build took %s", time.Since(start).Round(time.Second))

	out, err := exec.CommandContext(ctx, bin, "list-modules").CombinedOutput()
	if err != nil {
		t.Fatalf("list-modules: %v\n%s", err, out)
	}
	for _, id := range moduleIDs {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(id) + `$`).Match(out) {
			t.Errorf("the xcaddy-built binary lacks module %s", id)
		}
	}
	validate := exec.CommandContext(ctx, bin, "validate", "--config", filepath.Join(root, "Caddyfile.example"), "--adapter", "caddyfile")
	validate.Dir = dir
	validate.Env = append(os.Environ(), "PROXY_API_KEY=build-test-key", "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir, "HOME="+dir)
	if out, err := validate.CombinedOutput(); err != nil {
		t.Fatalf("the xcaddy-built binary refuses Caddyfile.example: %v\n%s", err, out)
	}
}

// TestReadmeBuildCommands: every xcaddy command in README.md builds
// ByteProxy from a local checkout as the Dockerfile does (the module is
// not published, so the plain --with github.com/byteproxy/byteproxy
// cannot be fetched).
func TestReadmeBuildCommands(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "xcaddy build") {
			continue
		}
		n++
		if !strings.Contains(line, "--with "+withArg("")) {
			t.Errorf("README: %q\nwant --with %s<path to the checkout>", line, withArg(""))
		}
	}
	if n == 0 {
		t.Error("README.md shows no xcaddy build command")
	}
}

func containsSeq(args []string, a, b string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == a && args[i+1] == b {
			return true
		}
	}
	return false
}

func flagValue(args []string, name string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == name {
			return args[i+1]
		}
	}
	return ""
}

func hasCopy(st stage, want ...string) bool {
	for _, c := range st.copy {
		if strings.Join(c, " ") == strings.Join(want, " ") {
			return true
		}
	}
	return false
}
