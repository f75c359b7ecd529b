package manage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

// Default pressure maxima (DESIGN §2); the flood test runs with them.
const (
	defaultMaxHeap = 512 << 20
	defaultMaxRSS  = 1 << 30
)

// TestManagementFloodBoundsMemory (issue 15.2): 600 concurrent 1 MB
// management POSTs against a gateway with the default memory limits.
// Every body is decoded in full and then refused (no baseUrl), so nothing
// is stored: what the heap holds is what admission let in. The heap and
// the resident set stay under 1.5 times max_heap and max_rss, and /health
// answers promptly throughout. Before admission accounted for management
// bodies the heap reached about 1 GB and /health took seconds.
func TestManagementFloodBoundsMemory(t *testing.T) {
	// Memory limits at their defaults; the scheduler-latency and CPU
	// thresholds out of reach, as on a machine with many cores where the
	// flood does not delay the scheduler: memory alone must hold.
	cf := `{
	byteproxy {
		auth management {
			key {env.MANAGEMENT_API_KEY}
		}
		pressure {
			max_sched_latency 1h
			max_cpu 1
		}
		runtime_services {
			allow_private_upstreams
		}
	}
}
:{{PORT}} {
	byteproxy
}
`
	in := start(t, cf, "")
	const (
		flood    = 600
		bodySize = 1 << 20
	)
	prefix := `{"key":"flood","config":{"name":"`
	suffix := `"}}`
	body := []byte(prefix + strings.Repeat("x", bodySize-len(prefix)-len(suffix)) + suffix)

	// Each request on its own connection, as 600 separate clients.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 60 * time.Second}
	defer client.CloseIdleConnections()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Watchers: the heap through the admin endpoint's /debug/vars
	// (runtime.MemStats.HeapAlloc, which counts garbage not yet collected,
	// as the monitor's heap reading does), and /health's latency.
	var heapPeak atomic.Uint64
	var healthWorst atomic.Int64
	var healthCount, healthFailed atomic.Int64
	var watchers sync.WaitGroup
	watchers.Go(func() {
		for ctx.Err() == nil {
			if h, ok := heapAlloc(in); ok && h > heapPeak.Load() {
				heapPeak.Store(h)
			}
			sleepCtx(ctx, 20*time.Millisecond)
		}
	})
	watchers.Go(func() {
		for ctx.Err() == nil {
			began := time.Now()
			resp, err := client.Get(in.URL("/health"))
			took := time.Since(began)
			healthCount.Add(1)
			if err != nil {
				healthFailed.Add(1)
			} else {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					healthFailed.Add(1)
				}
			}
			if took > time.Duration(healthWorst.Load()) {
				healthWorst.Store(int64(took))
			}
			sleepCtx(ctx, 20*time.Millisecond)
		}
	})

	var statuses sync.Map // status -> *atomic.Int64
	count := func(key string) {
		v, _ := statuses.LoadOrStore(key, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	var badShed atomic.Value
	var firstErr atomic.Pointer[string]
	go_ := make(chan struct{})
	var senders sync.WaitGroup
	for range flood {
		senders.Go(func() {
			<-go_
			req, _ := http.NewRequest(http.MethodPost, in.URL("/manage/services"), bytes.NewReader(body))
			req.Header.Set("X-API-Key", mgmtKey)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				count("error")
				msg := err.Error()
				firstErr.CompareAndSwap(nil, &msg)
				return
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			count(strconv.Itoa(resp.StatusCode))
			if resp.StatusCode == 503 && (resp.Header.Get("Retry-After") == "" || !strings.Contains(string(raw), `"Server under pressure"`)) {
				badShed.Store(fmt.Sprintf("%v %s", resp.Header, raw))
			}
			if resp.StatusCode == 503 && strings.Contains(string(raw), `"type":"requestBodies"`) {
				count("503 requestBodies")
			}
		})
	}
	began := time.Now()
	close(go_)
	senders.Wait()
	took := time.Since(began)
	cancel()
	watchers.Wait()

	summary := map[string]int64{}
	statuses.Range(func(k, v any) bool { summary[k.(string)] = v.(*atomic.Int64).Load(); return true })
	rssPeak := peakRSS(t, in.PID())
	t.Logf("%d concurrent 1 MB POST /manage/services in %s: answers %v; heap peak %.0f MiB (max_heap 512 MiB), RSS peak %.0f MiB (max_rss 1024 MiB); /health: %d answers, %d failed, slowest %s",
		flood, took.Round(time.Millisecond), summary, mib(heapPeak.Load()), mib(rssPeak), healthCount.Load(), healthFailed.Load(), time.Duration(healthWorst.Load()).Round(time.Millisecond))

	// The issue asks for under 1.5 x max_heap; admission holds it far
	// lower (about 20 MiB), so this asserts under max_heap itself.
	if h := heapPeak.Load(); h == 0 || h > defaultMaxHeap {
		t.Errorf("heap peak %.0f MiB, want under max_heap (512 MiB)", mib(h))
	}
	// Under 1.5 x max_rss, as the issue asks; and, what admission holds
	// it to, under a quarter of max_rss: the idle process (about 60 MiB),
	// the bodies admitted at once (at most 1/8 of max_heap, 64 MiB) and
	// 600 connections.
	if rssPeak > defaultMaxRSS*3/2 || rssPeak > defaultMaxRSS/4 {
		t.Errorf("RSS peak %.0f MiB, want under a quarter of max_rss (256 MiB)", mib(rssPeak))
	}
	// Generous: the flood's 600 clients share the machine's cores with the
	// gateway. Measured on 2 shared cores: 0.5-0.8 s alone (4.0-4.6 s
	// before admission), up to 6.6 s with other test binaries running at
	// a load average of 12; the issue saw 8.7 s.
	if w := time.Duration(healthWorst.Load()); w > 10*time.Second || healthFailed.Load() > 0 {
		t.Errorf("/health during the flood: slowest %s (want under 10s), %d failed", w, healthFailed.Load())
	}
	if summary["400"] == 0 {
		t.Errorf("no body was decoded at all: %v", summary)
	}
	// Admission, not luck, bounded the memory: writes beyond what the
	// memory share holds were refused at once.
	if summary["503 requestBodies"] == 0 {
		t.Errorf("no write was refused for want of memory (503 requestBodies): %v", summary)
	}
	for k := range summary {
		if k != "400" && k != "503" && k != "error" && k != "503 requestBodies" {
			t.Errorf("unexpected answers %s: %v", k, summary)
		}
	}
	// A refused body is not read, so a client still sending it may see the
	// connection closed instead of the 503; Go's client mostly reads the
	// answer first.
	if summary["error"] > flood/10 {
		t.Errorf("%d of %d clients got no answer: %v; first: %s", summary["error"], flood, summary, *firstErr.Load())
	} else if e := firstErr.Load(); e != nil {
		t.Logf("%d clients got no answer, first: %s", summary["error"], *e)
	}
	if v := badShed.Load(); v != nil {
		t.Errorf("a refusal is not the pressure 503 with Retry-After: %v", v)
	}
	// The gateway still works: a small change goes through (once the
	// monitor's next reading has collected the flood's garbage).
	eventually(t, 5*time.Second, "a service added after the flood", func() bool {
		st, _ := api(t, in, "POST", "/manage/services", addBody("after-flood", "http://127.0.0.1:9/"))
		return st == 201
	})
}

// heapAlloc reads runtime.MemStats.HeapAlloc of the gateway from the admin
// endpoint's /debug/vars.
func heapAlloc(in *testutil.Instance) (uint64, bool) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(in.AdminURL("/debug/vars"))
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var vars struct {
		Memstats struct {
			HeapAlloc uint64 `json:"HeapAlloc"`
		} `json:"memstats"`
	}
	if json.NewDecoder(resp.Body).Decode(&vars) != nil {
		return 0, false
	}
	return vars.Memstats.HeapAlloc, true
}

// peakRSS is the peak resident set of a process (VmHWM, Linux).
func peakRSS(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading the gateway's peak RSS: %v", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
