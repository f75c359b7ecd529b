package ratelimit

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil/short"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// testRedisURL is the Redis for tests: BYTEPROXY_TEST_REDIS, else one
// started here when redis-server is installed. Without either the test is
// skipped, except under CI, where it fails.
func testRedisURL(t *testing.T) string {
	t.Helper()
	short.Skip(t, "needs Redis")
	if url := os.Getenv("BYTEPROXY_TEST_REDIS"); url != "" {
		if err := pingRedis(url); err != nil {
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
	return startRedis(t, freePort(t)).url
}

// redisServer is a redis-server child process of the test.
type redisServer struct {
	url  string
	port int
	cmd  *exec.Cmd
	done chan struct{}
}

// startRedis runs redis-server on port until the test ends (or kill).
func startRedis(t *testing.T, port int) *redisServer {
	t.Helper()
	short.Skip(t, "starts redis-server")
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but redis-server is not installed")
		}
		t.Skip("redis-server is not installed")
	}
	s := &redisServer{url: fmt.Sprintf("redis://127.0.0.1:%d/0", port), port: port, done: make(chan struct{})}
	s.cmd = exec.Command("redis-server", "--port", fmt.Sprint(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(s.kill)
	deadline := time.Now().Add(10 * time.Second)
	for pingRedis(s.url) != nil {
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not answer within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s
}

// kill stops the server at once (SIGKILL) and waits for it.
func (s *redisServer) kill() {
	_ = s.cmd.Process.Kill()
	<-s.done
}

func pingRedis(url string) error {
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

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// uniqueName keeps tests that share one Redis (CI runs every package
// against the same one) from seeing each other's keys.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s%d", prefix, time.Now().UnixNano()%1_000_000_000)
}

// benchRedisURL is BYTEPROXY_TEST_REDIS for benchmarks, else skip.
func benchRedisURL(b *testing.B) string {
	url := os.Getenv("BYTEPROXY_TEST_REDIS")
	if url == "" || pingRedis(url) != nil {
		b.Skip("set BYTEPROXY_TEST_REDIS to a reachable Redis")
	}
	return url
}

func nopLogger() *zap.Logger { return zap.NewNop() }
