package inproc

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serve loads on p a config whose one server answers body on port.
func serve(t *testing.T, p *Instance, port int, body string) {
	t.Helper()
	cfg := fmt.Sprintf(`{"admin":{"disabled":true,"config":{"persist":false}},"logging":{"logs":{"default":{"level":"ERROR"}}},"apps":{"http":{"servers":{"s":{
		"listen":["127.0.0.1:%d"],"automatic_https":{"disable":true},
		"routes":[{"handle":[{"handler":"static_response","body":%q}]}]}}}}}`, port, body)
	if err := p.LoadJSON([]byte(cfg)); err != nil {
		t.Fatal(err)
	}
}

// get returns the body at port, or the error.
func get(port int) (string, error) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestReloadAndStop: LoadJSON replaces the running config; Stop unloads
// it (the listener closes) and a second Stop does nothing.
func TestReloadAndStop(t *testing.T) {
	p, port := New(t), FreePort(t)
	serve(t, p, port, "one")
	serve(t, p, port, "two")
	if b, err := get(port); err != nil || b != "two" {
		t.Fatalf("after reload: %q %v, want two", b, err)
	}
	p.Stop()
	if _, err := get(port); err == nil {
		t.Fatal("the server still answers after Stop")
	}
	p.Stop()
}

// TestNewTwiceInOneTest: a second New in the same test stops the first
// instance's config instead of waiting for the test to end.
func TestNewTwiceInOneTest(t *testing.T) {
	p1, port1 := New(t), FreePort(t)
	serve(t, p1, port1, "first")
	p2, port2 := New(t), FreePort(t)
	if _, err := get(port1); err == nil {
		t.Fatal("the first instance still answers after the second New")
	}
	serve(t, p2, port2, "second")
	if b, err := get(port2); err != nil || b != "second" {
		t.Fatalf("second instance: %q %v", b, err)
	}
}

// TestHoldWaits: New in another test waits until the test holding Caddy
// has ended, and by then the holder's config is stopped.
func TestHoldWaits(t *testing.T) {
	port := FreePort(t)
	got := make(chan *Instance, 1)
	t.Run("holder", func(h *testing.T) {
		serve(h, New(h), port, "held")
		go func() { got <- New(t) }()
		select {
		case <-got:
			h.Error("New of another test did not wait for the holder")
		case <-time.After(200 * time.Millisecond):
		}
	})
	if t.Failed() {
		return
	}
	p := <-got
	if _, err := get(port); err == nil {
		t.Fatal("the holder's config still runs after its test ended")
	}
	serve(t, p, port, "next")
	if b, err := get(port); err != nil || b != "next" {
		t.Fatalf("next holder: %q %v", b, err)
	}
}

// TestReloadDrainsReplacedServer: right after LoadJSON returns, every
// request is the new config's, also a POST (which net/http does not retry)
// from a client whose kept-alive connection led to the replaced server.
func TestReloadDrainsReplacedServer(t *testing.T) {
	p, port := New(t), FreePort(t)
	serve(t, p, port, "gen-0")
	for i := 1; i <= 30; i++ {
		if _, err := get(port); err != nil { // leaves a kept-alive connection
			t.Fatal(err)
		}
		want := fmt.Sprintf("gen-%d", i)
		serve(t, p, port, want)
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/", port), "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != want {
			t.Fatalf("reload %d: answered by %q, want %q", i, b, want)
		}
	}
}

// TestFreePortReservesAcrossProcesses: a port FreePort returned is locked
// against another process (a child that tries the same flock fails).
func TestFreePortReservesAcrossProcesses(t *testing.T) {
	port := FreePort(t)
	lock := filepath.Join(os.TempDir(), fmt.Sprintf("byteproxy-test-ports-%d", os.Getuid()), fmt.Sprintf("%d.lock", port))
	// flock(1) from util-linux, as another process: -n fails at once when held.
	out, err := exec.Command("flock", "-n", lock, "true").CombinedOutput()
	if err == nil {
		t.Fatalf("another process took the lock of port %d: %s", port, out)
	}
}
