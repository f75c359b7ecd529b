// Package testutil runs the real gateway for integration tests: the
// byteproxy binary built from this module, started as a child process on
// loopback with a Caddyfile (Start), so multi-instance, reload, kill -9 and
// restart tests exercise exactly what users run; or the same config inside
// the test process (InProcess), which is what `go test -short` runs (Start
// skips there: see package short).
//
// The binary is built with the tag byteproxy_record, which adds one thing:
// the Caddyfile is adapted by internal/testutil/record's adapter, which
// wraps every byteproxy handler in a recorder. Every answer a byteproxy
// handler makes is written down, and when the test ends each one is checked
// against the OpenAPI document (internal/testutil/openapicheck): a test that
// received an answer the document does not describe fails.
package testutil

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil/inproc"
	"github.com/byteproxy/byteproxy/internal/testutil/record"
	"github.com/byteproxy/byteproxy/internal/testutil/short"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds ./cmd/byteproxy once per test process and returns its path.
// Under -short (without CI=true) it skips t: building and spawning the
// binary is the full suite's part (see package short).
func Binary(t testing.TB) string {
	t.Helper()
	short.Skip(t, "builds and spawns the gateway binary")
	buildOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			buildErr = err
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(out)))
		dir, err := os.MkdirTemp("", "byteproxy-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "byteproxy")
		cmd := exec.Command("go", "build", "-tags", "byteproxy_record", "-o", binPath, "./cmd/byteproxy")
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, b)
		}
	})
	if buildErr != nil {
		t.Fatalf("building byteproxy: %v", buildErr)
	}
	return binPath
}

// FreePort returns a loopback port no other caller in this process got
// (inproc.FreePort).
func FreePort(t testing.TB) int {
	t.Helper()
	return inproc.FreePort(t)
}

// Instance is one running gateway process.
type Instance struct {
	t         testing.TB
	cmd       *exec.Cmd
	Dir       string // working directory, holds the Caddyfile
	DataDir   string // XDG_DATA_HOME: Caddy's file storage lives below it
	AdminPort int
	Port      int // the site port ({{PORT}} in the Caddyfile)
	logs      *syncBuffer
	done      chan struct{}
	proc      *inproc.Instance // run by InProcess: no child process
}

// Options for Start.
type Options struct {
	// Env is added to the process environment ("K=V").
	Env []string
	// DataDir shares Caddy storage between instances; a new one if empty.
	DataDir string
	// Port for {{PORT}}; a free one if zero.
	Port int
}

// Start runs the gateway with caddyfile, in which {{PORT}} is replaced by
// the site port and {{ADMIN}} by the admin address; the global options
// block gets an admin line if {{ADMIN}} is not used. It waits until the
// admin endpoint answers and the site port accepts connections.
//
// Under -short (without CI=true) it skips t, as Binary does.
func Start(t testing.TB, caddyfile string, opt Options) *Instance {
	t.Helper()
	short.Skip(t, "spawns the gateway binary")
	in := &Instance{t: t, Dir: t.TempDir(), AdminPort: FreePort(t), Port: opt.Port, logs: new(syncBuffer), done: make(chan struct{})}
	if in.Port == 0 {
		in.Port = FreePort(t)
	}
	in.DataDir = opt.DataDir
	if in.DataDir == "" {
		in.DataDir = t.TempDir()
	}
	in.write(caddyfile)
	in.cmd = exec.Command(Binary(t), "run", "--config", filepath.Join(in.Dir, "Caddyfile"), "--adapter", record.Adapter)
	in.cmd.Dir = in.Dir
	in.cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+in.DataDir, "XDG_CONFIG_HOME="+filepath.Join(in.Dir, "config"), "HOME="+in.Dir,
		record.EnvFile+"="+in.answersFile())
	in.cmd.Env = append(in.cmd.Env, opt.Env...)
	in.cmd.Stdout = in.logs
	in.cmd.Stderr = in.logs
	if err := in.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = in.cmd.Wait(); close(in.done) }()
	// Cleanups run last first: the answers are checked once the process
	// is gone and has written its last one.
	t.Cleanup(in.checkAnswers)
	t.Cleanup(in.Kill)
	in.waitReady()
	return in
}

// Render replaces {{PORT}} and {{ADMIN}} in a Caddyfile for this instance.
func (in *Instance) render(caddyfile string) string {
	admin := fmt.Sprintf("127.0.0.1:%d", in.AdminPort)
	if !strings.Contains(caddyfile, "{{ADMIN}}") {
		caddyfile = addAdmin(caddyfile)
	}
	r := strings.NewReplacer("{{PORT}}", fmt.Sprint(in.Port), "{{ADMIN}}", admin)
	return r.Replace(caddyfile)
}

// addAdmin puts "admin {{ADMIN}}" in the global options block (the first
// thing after blank and comment lines), creating the block if the
// Caddyfile has none.
func addAdmin(c string) string {
	rest := strings.TrimLeft(c, " \t\r\n")
	for strings.HasPrefix(rest, "#") {
		_, rest, _ = strings.Cut(rest, "\n")
		rest = strings.TrimLeft(rest, " \t\r\n")
	}
	if strings.HasPrefix(rest, "{") {
		return c[:len(c)-len(rest)] + "{\n\tadmin {{ADMIN}}\n" + strings.TrimPrefix(rest, "{")
	}
	return "{\n\tadmin {{ADMIN}}\n}\n" + c
}

func (in *Instance) write(caddyfile string) {
	if err := os.WriteFile(filepath.Join(in.Dir, "Caddyfile"), []byte(in.render(caddyfile)), 0o600); err != nil {
		in.t.Fatal(err)
	}
}

func (in *Instance) waitReady() {
	in.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-in.done:
			in.t.Fatalf("byteproxy exited during startup:\n%s", in.Logs())
		default:
		}
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", in.Port), 200*time.Millisecond); err == nil {
			c.Close()
			if resp, err := http.Get(in.AdminURL("/config/")); err == nil {
				resp.Body.Close()
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	in.t.Fatalf("byteproxy did not become ready in 30s:\n%s", in.Logs())
}

// URL is the gateway's base URL plus path.
func (in *Instance) URL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", in.Port, path)
}

// AdminURL is the admin endpoint's URL plus path.
func (in *Instance) AdminURL(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", in.AdminPort, path)
}

// Reload writes a new Caddyfile and applies it with `byteproxy reload`.
func (in *Instance) Reload(caddyfile string) {
	in.t.Helper()
	in.write(caddyfile)
	if in.proc != nil {
		if err := in.load(); err != nil {
			in.t.Fatalf("reload: %v\nlogs:\n%s", err, in.Logs())
		}
		return
	}
	cmd := exec.Command(Binary(in.t), "reload", "--config", filepath.Join(in.Dir, "Caddyfile"), "--adapter", record.Adapter, "--address", fmt.Sprintf("127.0.0.1:%d", in.AdminPort), "--force")
	cmd.Env = in.cmd.Env
	if out, err := cmd.CombinedOutput(); err != nil {
		in.t.Fatalf("reload: %v\n%s\nlogs:\n%s", err, out, in.Logs())
	}
	// The test build's reload returned when the replaced servers had
	// closed (package drain); the client's kept-alive connections to them
	// are dead.
	inproc.CloseClientIdle()
}

// PID is the process id of the gateway, e.g. to read its peak resident
// memory from /proc/<pid>/status.
func (in *Instance) PID() int {
	if in.proc != nil {
		in.t.Fatal("PID: the gateway runs in the test process (InProcess); use Start")
	}
	return in.cmd.Process.Pid
}

// Logs is everything the process printed so far.
func (in *Instance) Logs() string {
	if in.proc != nil {
		b, _ := os.ReadFile(in.logFile())
		return in.logs.String() + string(b)
	}
	return in.logs.String()
}

// Kill ends the process with SIGKILL (no graceful shutdown) and waits.
// In process it stops the config, as Stop does.
func (in *Instance) Kill() {
	if in.proc != nil {
		in.Stop()
		return
	}
	if in.cmd.Process != nil {
		_ = in.cmd.Process.Signal(syscall.SIGKILL)
		<-in.done
	}
}

// Stop ends the process gracefully (SIGTERM) and waits at most 10s.
func (in *Instance) Stop() {
	if in.proc != nil {
		in.proc.Stop()
		return
	}
	_ = in.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-in.done:
	case <-time.After(10 * time.Second):
		in.Kill()
	}
}

// Do sends a request to the gateway and returns status, headers and body.
func Do(t testing.TB, method, url string, body []byte, headers ...string) (*http.Response, []byte) {
	t.Helper()
	resp, b, err := do(method, url, body, headers)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp, b
}

// DoAfterReload is Do for a request sent right after a config change: a
// connection that the replaced server accepted and then closed in its
// shutdown ends without an answer, so a connection error is retried, at
// most 5 attempts in all, 50 ms apart; any answer is final.
func DoAfterReload(t testing.TB, method, url string, body []byte, headers ...string) (*http.Response, []byte) {
	t.Helper()
	var err error
	for range 5 {
		var resp *http.Response
		var b []byte
		if resp, b, err = do(method, url, body, headers); err == nil {
			return resp, b
		}
		time.Sleep(50 * time.Millisecond) // a pause between attempts, not a synchronisation
	}
	t.Fatalf("%s %s: %v", method, url, err)
	return nil, nil
}

// do sends one request (30 s at most) and reads its whole answer.
func do(method, url string, body []byte, headers []string) (*http.Response, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b := new(bytes.Buffer)
	_, _ = b.ReadFrom(resp.Body)
	return resp, b.Bytes(), nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
