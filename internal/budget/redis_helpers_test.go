package budget

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil/short"
	"github.com/redis/go-redis/v9"
)

// The helpers follow modules/ratelimit/redis_helpers_test.go.

// quietRedisLog drops go-redis's own messages (a line per failed dial
// while a test's Redis is down); the stores log the outage themselves.
type quietRedisLog struct{}

func (quietRedisLog) Printf(context.Context, string, ...any) {}

func init() { redis.SetLogger(quietRedisLog{}) }

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

var prefixSeq atomic.Int64

// testPrefix keeps tests that share one Redis (CI runs every package
// against the same one) from seeing each other's keys.
func testPrefix() string {
	return fmt.Sprintf("byteproxy:budgettest:%d-%d:", time.Now().UnixNano()%1_000_000_000, prefixSeq.Add(1))
}

// testRedisStore is a store on url with the given key prefix, closed
// when the test ends.
func testRedisStore(t testing.TB, url, prefix string, mod func(*RedisOptions)) *RedisStore {
	t.Helper()
	// Each store is a gateway of its own: its own id in the announcements.
	opt := RedisOptions{KeyPrefix: prefix, InstanceID: fmt.Sprintf("test/%d", prefixSeq.Add(1))}
	if mod != nil {
		mod(&opt)
	}
	s, err := NewRedisStoreURL(url, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if !s.Stats().Up {
		t.Fatal("the store did not reach Redis")
	}
	return s
}

// patient gives a store the timeouts of a loaded test machine: a test
// that means Redis to answer does not see a slow answer as an outage
// (a test of outages keeps the defaults).
func patient(url string) (string, func(*RedisOptions)) {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + "read_timeout=3s&write_timeout=3s&pool_timeout=3s",
		func(o *RedisOptions) { o.CallTimeout = 4 * time.Second }
}

// testPatientStore is testRedisStore with patient timeouts.
func testPatientStore(t testing.TB, url, prefix string, mod func(*RedisOptions)) *RedisStore {
	t.Helper()
	purl, slow := patient(url)
	return testRedisStore(t, purl, prefix, func(o *RedisOptions) {
		slow(o)
		if mod != nil {
			mod(o)
		}
	})
}

// benchRedisURL is BYTEPROXY_TEST_REDIS for benchmarks, else skip.
func benchRedisURL(b *testing.B) string {
	url := os.Getenv("BYTEPROXY_TEST_REDIS")
	if url == "" || pingRedis(url) != nil {
		b.Skip("set BYTEPROXY_TEST_REDIS to a reachable Redis")
	}
	return url
}

// testStore is the store of the engine tests: a MemStore, or with
// BYTEPROXY_BUDGET_TEST_STORE=redis a RedisStore on the test Redis (with
// its own key prefix), so that the whole engine suite can be run against
// the cluster store:
//
//	BYTEPROXY_BUDGET_TEST_STORE=redis go test ./internal/budget/
func testStore(t *testing.T) Store {
	t.Helper()
	switch os.Getenv("BYTEPROXY_BUDGET_TEST_STORE") {
	case "", "memory":
		return NewMemStore()
	case "redis":
		return testPatientStore(t, testRedisURL(t), testPrefix(), nil)
	default:
		t.Fatal("BYTEPROXY_BUDGET_TEST_STORE is memory or redis")
		return nil
	}
}
