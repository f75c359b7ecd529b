// Package redistest gives tests a Redis: the one BYTEPROXY_TEST_REDIS
// names, else a redis-server child process of the test. It imports no
// package of this module, so that any package's own tests can use it.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// URL is the Redis for tests: BYTEPROXY_TEST_REDIS, else one started here
// when redis-server is installed. Without either the test is skipped,
// except under CI, where it fails.
func URL(t *testing.T) string {
	t.Helper()
	if url := os.Getenv("BYTEPROXY_TEST_REDIS"); url != "" {
		if err := Ping(url); err != nil {
			t.Fatalf("BYTEPROXY_TEST_REDIS is set but Redis does not answer: %v", err)
		}
		return url
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but no Redis: set BYTEPROXY_TEST_REDIS or install redis-server")
		}
		t.Skip("no Redis: set BYTEPROXY_TEST_REDIS or install redis-server")
	}
	return Start(t, FreePort(t)).URL
}

// BenchURL is BYTEPROXY_TEST_REDIS for benchmarks, else skip.
func BenchURL(b *testing.B) string {
	url := os.Getenv("BYTEPROXY_TEST_REDIS")
	if url == "" || Ping(url) != nil {
		b.Skip("set BYTEPROXY_TEST_REDIS to a reachable Redis")
	}
	return url
}

// Server is a redis-server child process of the test.
type Server struct {
	URL  string
	Port int
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs redis-server on port until the test ends (or Kill).
func Start(t *testing.T, port int) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but redis-server is not installed")
		}
		t.Skip("redis-server is not installed")
	}
	s := &Server{URL: fmt.Sprintf("redis://127.0.0.1:%d/0", port), Port: port, done: make(chan struct{})}
	s.cmd = exec.Command("redis-server", "--port", fmt.Sprint(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(s.Kill)
	deadline := time.Now().Add(10 * time.Second)
	for Ping(s.URL) != nil {
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not answer within 10s")
		}
		time.Sleep(20 * time.Millisecond) // polling: redis-server signals readiness only in its log
	}
	return s
}

// Kill stops the server at once (SIGKILL) and waits for it. A second
// call does nothing.
func (s *Server) Kill() {
	_ = s.cmd.Process.Kill()
	<-s.done
}

// Ping reports whether the Redis at url answers within two seconds.
func Ping(url string) error {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return err
	}
	opt.DialTimeout = time.Second
	opt.MaxRetries = -1
	c := redis.NewClient(opt)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Ping(ctx).Err()
}

// FreePort is a loopback TCP port free a moment ago.
func FreePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
