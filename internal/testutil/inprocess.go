package testutil

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/byteproxy/byteproxy/internal/testutil/inproc"
	"github.com/byteproxy/byteproxy/internal/testutil/record"
)

// InProcess runs the gateway inside the test process, as Caddy's
// caddytest does (caddy.Load of the adapted Caddyfile), but on free ports,
// with its own storage and log file, and with every answer checked against
// the OpenAPI document as Start does. It needs no build and no child
// process, so it also runs under -short. The test package must link the
// modules its Caddyfile names (a blank import of the byteproxy package and
// Caddy's standard modules).
//
// One in-process gateway runs at a time: InProcess in another test waits
// until the test holding Caddy has ended, and a second InProcess in the
// same test stops the first instance. Tests that need two gateways at
// once, or a process of their own (kill -9, restart, peak memory, the
// command line), use Start. Kill and Stop stop the config; PID fails the
// test.
func InProcess(t testing.TB, caddyfile string, opt Options) *Instance {
	t.Helper()
	if caddy.GetModuleName(new(record.Recorder)) == "" {
		t.Fatal("InProcess: the record module is not registered")
	}
	// Taken first, so Caddy is given up after every cleanup below.
	proc := inproc.New(t)
	t.Cleanup(func() { _ = record.SetFile("") })
	in := &Instance{t: t, Dir: t.TempDir(), AdminPort: FreePort(t), Port: opt.Port, logs: new(syncBuffer), done: make(chan struct{}), proc: proc}
	if in.Port == 0 {
		in.Port = FreePort(t)
	}
	in.DataDir = opt.DataDir
	if in.DataDir == "" {
		in.DataDir = t.TempDir()
	}
	t.Cleanup(setEnv(opt.Env))
	if err := record.SetFile(in.answersFile()); err != nil {
		t.Fatal(err)
	}
	// Cleanups run last first: stop, then check the answers.
	t.Cleanup(in.checkAnswers)
	t.Cleanup(in.Kill)
	in.write(caddyfile)
	if err := in.load(); err != nil {
		t.Fatalf("loading the config in process: %v", err)
	}
	return in
}

// load adapts the instance's Caddyfile with the record adapter, points
// storage, logs and the admin endpoint at the instance, and runs it.
func (in *Instance) load() error {
	body, err := os.ReadFile(filepath.Join(in.Dir, "Caddyfile"))
	if err != nil {
		return err
	}
	out, warnings, err := caddyconfig.GetAdapter(record.Adapter).Adapt(body, map[string]any{"filename": filepath.Join(in.Dir, "Caddyfile")})
	if err != nil {
		return fmt.Errorf("adapting: %w", err)
	}
	for _, w := range warnings {
		in.logs.Write([]byte(fmt.Sprintf("adapter warning: %s\n", w.String())))
	}
	var cfg map[string]any
	if err := json.Unmarshal(out, &cfg); err != nil {
		return err
	}
	in.own(cfg)
	out, err = json.Marshal(cfg)
	if err != nil {
		return err
	}
	return in.proc.LoadJSON(out)
}

// own makes the adapted config the instance's: file storage under DataDir
// (a child process gets it from XDG_DATA_HOME), the config not saved to
// the user's home, and every log that would go to the terminal written to
// the instance's log file, which Logs reads.
func (in *Instance) own(cfg map[string]any) {
	if _, ok := cfg["storage"]; !ok {
		cfg["storage"] = map[string]any{"module": "file_system", "root": filepath.Join(in.DataDir, "caddy")}
	}
	admin, _ := cfg["admin"].(map[string]any)
	if admin == nil {
		admin = map[string]any{}
		cfg["admin"] = admin
	}
	admin["config"] = map[string]any{"persist": false}
	logging, _ := cfg["logging"].(map[string]any)
	if logging == nil {
		logging = map[string]any{}
		cfg["logging"] = logging
	}
	logs, _ := logging["logs"].(map[string]any)
	if logs == nil {
		logs = map[string]any{}
		logging["logs"] = logs
	}
	if _, ok := logs["default"]; !ok {
		logs["default"] = map[string]any{}
	}
	for _, l := range logs {
		l, _ := l.(map[string]any)
		if l == nil {
			continue
		}
		w, _ := l["writer"].(map[string]any)
		if out, _ := w["output"].(string); w == nil || out == "stderr" || out == "stdout" {
			l["writer"] = map[string]any{"output": "file", "filename": in.logFile(), "roll": false}
		}
	}
}

func (in *Instance) logFile() string { return filepath.Join(in.Dir, "caddy.log") }

// setEnv sets each "K=V" of env in the process environment and returns a
// function that puts the previous values back.
func setEnv(env []string) (restore func()) {
	type old struct {
		key, val string
		set      bool
	}
	var olds []old
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		prev, set := os.LookupEnv(k)
		olds = append(olds, old{k, prev, set})
		os.Setenv(k, v)
	}
	return func() {
		for i := len(olds) - 1; i >= 0; i-- {
			if olds[i].set {
				os.Setenv(olds[i].key, olds[i].val)
			} else {
				os.Unsetenv(olds[i].key)
			}
		}
	}
}
