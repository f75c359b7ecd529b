package pressure

import (
	"fmt"
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/dustin/go-humanize"
)

// Pressure types: the "type" of a 503 body and of /up's "exceeded".
const (
	TypeHeap        = "heapUsed"
	TypeRSS         = "rssBytes"
	TypeSched       = "eventLoopDelay"
	TypeCPU         = "cpu"
	TypeInFlight    = "inFlight"
	TypeHealthCheck = "healthCheck"
	// Request bodies being decoded hold all the memory admission allows
	// (Reserve); not a reading of the monitor.
	TypeReserved = "requestBodies"
)

// reading is one sample of the process. Fields a platform cannot measure
// are zero (RSS off Linux, CPU off Unix) and never count as pressure.
type reading struct {
	heap       uint64        // Go heap in use: live and not yet swept objects (garbage included)
	rss        uint64        // resident set size
	sched      time.Duration // p99 scheduler latency over the last interval
	cpu        float64       // process CPU over the last interval / GOMAXPROCS
	goroutines int64
	healthy    bool // the health_check probe passed (true without one)
	healthCode int  // the probe's HTTP status, 0 if it got none
}

// Threshold is an exceeded threshold, as /up reports it.
type Threshold struct {
	// One of the Type* constants.
	Type string `json:"type"`
	// The reading: bytes, milliseconds (eventLoopDelay), a fraction of
	// GOMAXPROCS (cpu), requests (inFlight) or the probe's HTTP status,
	// 0 when it got none (healthCheck).
	Value float64 `json:"value"`
	// The configured limit, in the same unit (0 for healthCheck).
	Limit float64 `json:"limit"`
}

// evaluate returns the first threshold r exceeds under s, or nil. It is
// pure, so every decision can be tested with made-up readings.
func evaluate(r reading, s *settings) *Threshold {
	switch {
	case s.disabled:
		return nil
	case s.maxHeap > 0 && r.heap > s.maxHeap:
		return &Threshold{TypeHeap, float64(r.heap), float64(s.maxHeap)}
	case s.maxRSS > 0 && r.rss > s.maxRSS:
		return &Threshold{TypeRSS, float64(r.rss), float64(s.maxRSS)}
	case s.maxSched > 0 && r.sched > s.maxSched:
		return &Threshold{TypeSched, ms(r.sched), ms(s.maxSched)}
	case s.maxCPU > 0 && r.cpu > s.maxCPU:
		return &Threshold{TypeCPU, r.cpu, s.maxCPU}
	case !r.healthy:
		return &Threshold{TypeHealthCheck, float64(r.healthCode), 0}
	}
	return nil
}

// message explains an exceeded threshold to the client in words.
func (e *Threshold) message(retryAfter int) string {
	var what string
	switch e.Type {
	case TypeHeap:
		what = fmt.Sprintf("Heap in use (%s) is over max_heap (%s)", ibytes(e.Value), ibytes(e.Limit))
	case TypeRSS:
		what = fmt.Sprintf("Resident memory (%s) is over max_rss (%s)", ibytes(e.Value), ibytes(e.Limit))
	case TypeSched:
		what = fmt.Sprintf("Scheduler latency p99 (%.3fms) is over max_sched_latency (%.3fms)", e.Value, e.Limit)
	case TypeCPU:
		what = fmt.Sprintf("CPU use (%.1f%% of GOMAXPROCS) is over max_cpu (%.1f%%)", e.Value*100, e.Limit*100)
	case TypeInFlight:
		what = fmt.Sprintf("%d requests are in flight, the max_in_flight limit", int64(e.Value))
	case TypeHealthCheck:
		what = "The health check of a dependency is failing"
	default:
		what = "A load threshold is exceeded"
	}
	return fmt.Sprintf("%s. Retry in %d seconds.", what, retryAfter)
}

func ibytes(v float64) string { return humanize.IBytes(uint64(v)) }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Names of the runtime/metrics samples read each interval.
const (
	metricHeap       = "/memory/classes/heap/objects:bytes"
	metricSched      = "/sched/latencies:seconds"
	metricGoroutines = "/sched/goroutines:goroutines"
)

// sampler measures the process. It keeps the previous scheduler histogram
// and CPU time so that latency and CPU cover only the last interval. It
// is used by one goroutine at a time.
type sampler struct {
	samples    []metrics.Sample
	prevCounts []uint64 // copy: metrics.Read reuses the histogram's memory
	prevCPU    time.Duration
	prevWall   time.Time

	collections int // forced by takeCollected; for tests
}

func newSampler() *sampler {
	sm := &sampler{samples: []metrics.Sample{{Name: metricHeap}, {Name: metricSched}, {Name: metricGoroutines}}}
	sm.take() // baseline: the first reading's deltas start now
	return sm
}

// take reads every value; latency and CPU are over the time since the
// previous take.
func (sm *sampler) take() reading {
	metrics.Read(sm.samples)
	r := reading{healthy: true}
	if v := sm.samples[0].Value; v.Kind() == metrics.KindUint64 {
		r.heap = v.Uint64()
	}
	if v := sm.samples[2].Value; v.Kind() == metrics.KindUint64 {
		r.goroutines = int64(v.Uint64())
	}
	if v := sm.samples[1].Value; v.Kind() == metrics.KindFloat64Histogram {
		h := v.Float64Histogram()
		if len(sm.prevCounts) == len(h.Counts) {
			r.sched = p99(sm.prevCounts, h)
		}
		sm.prevCounts = append(sm.prevCounts[:0], h.Counts...)
	}
	r.rss = rssBytes()
	now := time.Now()
	wall := now.Sub(sm.prevWall)
	if sm.prevWall.IsZero() || wall >= minInterval {
		// A shorter window would turn one clock tick of CPU time into a
		// huge fraction, so it keeps the baseline and reports no CPU.
		if cpu, ok := cpuTime(); ok {
			if !sm.prevWall.IsZero() {
				r.cpu = float64(cpu-sm.prevCPU) / (float64(wall) * float64(runtime.GOMAXPROCS(0)))
			}
			sm.prevCPU = cpu
		}
		sm.prevWall = now
	}
	return r
}

// takeCollected is take, except that a memory reading over its limit is
// taken again after a garbage collection (and, for RSS, after returning
// freed memory to the OS). The heap reading counts garbage not yet
// collected, and an idle process may not collect for two minutes (Go's
// forced GC), so without this a burst's garbage would keep the gateway
// shedding long after the burst (issue 15.1). The live heap at the last
// GC is no better: that GC may have run in the middle of the burst.
//
// The caller takes one reading per interval, so a collection runs at most
// once per interval, never per request, and only while a memory reading
// is over its limit.
func (sm *sampler) takeCollected(s *settings) reading {
	r := sm.take()
	if s.disabled {
		return r
	}
	heapOver := s.maxHeap > 0 && r.heap > s.maxHeap
	rssOver := s.maxRSS > 0 && r.rss > s.maxRSS
	if !heapOver && !rssOver {
		return r
	}
	if rssOver {
		debug.FreeOSMemory() // a GC, then every free page back to the OS
	} else {
		runtime.GC()
	}
	sm.collections++
	r.heap, r.rss = sm.memory()
	return r
}

// memory reads the heap and RSS alone.
func (sm *sampler) memory() (heap, rss uint64) {
	metrics.Read(sm.samples[:1]) // the heap sample
	if v := sm.samples[0].Value; v.Kind() == metrics.KindUint64 {
		heap = v.Uint64()
	}
	return heap, rssBytes()
}

// p99 is the 99th percentile of the samples added to h since prev, as the
// upper bound of the bucket that holds it (the lower bound for the last,
// unbounded bucket).
func p99(prev []uint64, h *metrics.Float64Histogram) time.Duration {
	var total uint64
	for i, c := range h.Counts {
		total += c - prev[i]
	}
	if total == 0 {
		return 0
	}
	target := total - total/100 // at least 99% of the samples lie at or below
	var cum uint64
	for i, c := range h.Counts {
		cum += c - prev[i]
		if cum >= target {
			bound := h.Buckets[i+1]
			if math.IsInf(bound, 1) {
				bound = h.Buckets[i]
			}
			if bound <= 0 {
				return 0
			}
			return time.Duration(math.Round(bound * float64(time.Second)))
		}
	}
	return 0
}
