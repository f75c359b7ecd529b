package budget

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/byteproxy/byteproxy/internal/testutil/redistest"
)

// The Redis of the tests is internal/testutil/redistest's.

// quietRedisLog drops go-redis's own messages (a line per failed dial
// while a test's Redis is down); the stores log the outage themselves.
type quietRedisLog struct{}

func (quietRedisLog) Printf(context.Context, string, ...any) {}

func init() { redis.SetLogger(quietRedisLog{}) }

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
		return testPatientStore(t, redistest.URL(t), testPrefix(), nil)
	default:
		t.Fatal("BYTEPROXY_BUDGET_TEST_STORE is memory or redis")
		return nil
	}
}
