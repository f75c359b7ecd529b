package ratelimit

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/byteproxy/byteproxy/internal/testutil"
	"github.com/byteproxy/byteproxy/internal/testutil/redistest"
)

// outageConfig is a gateway sharing srv with a service limit of 30 per
// window on x, a client limit of 9 per window, and /status.
func outageConfig(url, x, y string) string {
	return gatewayConfigWith(fmt.Sprintf(`
		redis %s
		client_rate_limit 9 10m
		service %s {
			base_url http://127.0.0.1:1/
			rate_limit 30 10m
		}
		service %s {
			base_url http://127.0.0.1:1/
		}`, url, x, y), "handle /status {\n\t\tbyteproxy_manage\n\t}")
}

// sendEach sends n requests per instance to path, round robin, one at a
// time, each from a new client unless client is given; it returns how many
// were admitted.
func sendEach(t *testing.T, ins []*testutil.Instance, path string, n int, client string, seq *int) int {
	t.Helper()
	ok := 0
	for i := range n * len(ins) {
		c := client
		if c == "" {
			*seq++
			c = fmt.Sprint("c", *seq)
		}
		switch r := get(t, ins[i%len(ins)].URL(path), "X-Client", c); r.status {
		case 200:
			ok++
		case 429:
		default:
			t.Fatalf("status %d %s", r.status, r.body)
		}
	}
	return ok
}

// redisComponent is components.redis of an instance's /status.
func redisComponent(t *testing.T, in *testutil.Instance) map[string]any {
	t.Helper()
	comps, _ := decode(t, get(t, in.URL("/status")).body)["components"].(map[string]any)
	st, _ := comps["redis"].(map[string]any)
	return st
}

// waitInstances waits until every instance's /status counts want live
// instances. It reports a failure but lets the test go on, so that the
// figures of a build without announcements are still measured.
func waitInstances(t *testing.T, ins []*testutil.Instance, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, in := range ins {
		for redisComponent(t, in)["instances"] != float64(want) {
			if time.Now().After(deadline) {
				t.Errorf("instance %d: redis status %v, want %d instances", in.Port, redisComponent(t, in), want)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func waitRecovered(t *testing.T, ins []*testutil.Instance) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for _, in := range ins {
		for !strings.Contains(in.Logs(), "redis reachable again") {
			if time.Now().After(deadline) {
				t.Fatalf("instance %d did not return to Redis within 20s:\n%s", in.Port, in.Logs())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func redisCount(t *testing.T, url, key string) int {
	t.Helper()
	opt, _ := redis.ParseURL(url)
	c := redis.NewClient(opt)
	defer c.Close()
	n, err := c.Get(context.Background(), key).Int()
	if err != nil && err != redis.Nil {
		t.Fatal(err)
	}
	return n
}

// Issue 15 item 6: three instances, a service limit of 30 per window, and
// Redis killed mid-window and restarted empty on the same port. Each
// instance enforces its share during the outage, starting from the count
// Redis last gave it, and carries its count back: the window admits at
// most the limit plus one share (30 + 10). Before, each instance opened a
// fresh local window (3 x 30) and the restarted Redis another 30.
func TestRedisOutageSharesTheLimit(t *testing.T) {
	srv := redistest.Start(t, redistest.FreePort(t))
	x, y := uniqueName("x"), uniqueName("y")
	cfg := outageConfig(srv.URL, x, y)
	var ins []*testutil.Instance
	for range 3 {
		ins = append(ins, testutil.Start(t, cfg, testutil.Options{}))
	}
	waitInstances(t, ins, 3)
	seq := 0
	svc := "/proxy/" + x + "/a"

	before := sendEach(t, ins, svc, 5, "", &seq)
	carolBefore := sendEach(t, ins, "/proxy/"+y+"/a", 3, "carol", &seq)
	if before != 15 || carolBefore != 9 {
		t.Fatalf("before the outage: %d of 15 admitted on the service, %d of 9 for carol", before, carolBefore)
	}

	srv.Kill()
	during := sendEach(t, ins, svc, 40, "", &seq)
	// A client spread over the instances: each gives it its share of the
	// bucket (9/3), so the cluster gives at most one bucket.
	carolDuring := sendEach(t, ins, "/proxy/"+y+"/a", 10, "carol", &seq)
	for _, in := range ins {
		if !strings.Contains(in.Logs(), "redis unreachable") {
			t.Fatalf("instance %d did not notice the outage:\n%s", in.Port, in.Logs())
		}
	}

	redistest.Start(t, srv.Port) // empty: the killed server kept nothing
	waitRecovered(t, ins)
	after := sendEach(t, ins, svc, 20, "", &seq)
	counted := redisCount(t, srv.URL, redisServiceKey(x, 30, 10*time.Minute))

	total := before + during + after
	t.Logf("service limit 30, 3 instances: %d admitted before the outage, %d during, %d after (total %d; Redis counts %d); client limit 9: carol got %d during the outage",
		before, during, after, total, counted, carolDuring)
	if total < 30 || total > 40 {
		t.Errorf("the window admitted %d requests in all, want 30..40 (the limit plus at most one share)", total)
	}
	if counted < 30 {
		t.Errorf("Redis counts %d requests in the window after recovery, want at least 30: the instances must carry their counts back", counted)
	}
	if carolDuring > 9+3 {
		t.Errorf("carol got %d requests during the outage, want at most 12 (one bucket plus one share)", carolDuring)
	}
}

// An instance alone keeps the whole limit during an outage (live instances
// 1), minus what Redis had counted, and carries its count back.
func TestRedisOutageAloneKeepsTheWholeLimit(t *testing.T) {
	srv := redistest.Start(t, redistest.FreePort(t))
	x, y := uniqueName("x"), uniqueName("y")
	ins := []*testutil.Instance{testutil.Start(t, outageConfig(srv.URL, x, y), testutil.Options{})}
	waitInstances(t, ins, 1)
	seq := 0
	svc := "/proxy/" + x + "/a"

	before := sendEach(t, ins, svc, 10, "", &seq)
	srv.Kill()
	during := sendEach(t, ins, svc, 40, "", &seq)
	redistest.Start(t, srv.Port)
	waitRecovered(t, ins)
	after := sendEach(t, ins, svc, 10, "", &seq)
	counted := redisCount(t, srv.URL, redisServiceKey(x, 30, 10*time.Minute))
	t.Logf("service limit 30, 1 instance: %d admitted before the outage, %d during, %d after; Redis counts %d", before, during, after, counted)
	if before != 10 || during != 20 || after != 0 || counted != 30 {
		t.Fatalf("admitted %d before, %d during and %d after the outage, Redis counts %d; want 10, 20 (the rest of the limit), 0 and 30",
			before, during, after, counted)
	}
}
