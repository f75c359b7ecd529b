package ratelimit

import (
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestBucketBurstAndRefill(t *testing.T) {
	s := newBucketStore(5, 10*time.Second) // a token every 2s
	t0 := time.Unix(1_700_000_000, 0)
	alice := clientKey{kindKeyID, "alice"}
	for i := range 5 {
		st := s.admit(t0, alice, 1, nil)
		if !st.ok || st.remaining != int64(4-i) {
			t.Fatalf("request %d: %+v, want ok with %d left", i+1, st, 4-i)
		}
	}
	st := s.admit(t0, alice, 1, nil)
	if st.ok || st.retry != 2*time.Second || st.full != 10*time.Second {
		t.Fatalf("6th request: %+v, want refused, retry in 2s, full in 10s", st)
	}
	// Another consumer, and the same name as an IP, have their own buckets.
	if !s.admit(t0, clientKey{kindKeyID, "bob"}, 1, nil).ok || !s.admit(t0, clientKey{kindIP, "alice"}, 1, nil).ok {
		t.Fatal("other consumers were refused")
	}
	if st := s.admit(t0.Add(2*time.Second), alice, 1, nil); !st.ok || st.remaining != 0 {
		t.Fatalf("after 2s: %+v, want one refilled token spent", st)
	}
	if st := s.peek(t0.Add(12*time.Second), alice, 1); st.remaining != 5 || st.full != 0 {
		t.Fatalf("after a full window idle: %+v, want a full bucket", st)
	}
}

func TestBucketNextRefusalSpendsNothing(t *testing.T) {
	s := newBucketStore(2, time.Minute)
	now := time.Now()
	k := clientKey{kindIP, "192.0.2.1"}
	for range 5 {
		if st := s.admit(now, k, 1, func() bool { return false }); !st.ok {
			t.Fatalf("client refused: %+v", st)
		}
	}
	if st := s.peek(now, k, 1); st.remaining != 2 {
		t.Fatalf("requests refused by the service check spent tokens: %d left, want 2", st.remaining)
	}
	calls := 0
	for range 3 {
		s.admit(now, k, 1, func() bool { calls++; return true })
	}
	if calls != 2 {
		t.Fatalf("service check ran %d times, want 2: a client refusal must not reach it", calls)
	}
}

func TestBucketExactUnderConcurrency(t *testing.T) {
	s := newBucketStore(50, time.Hour)
	now := time.Now()
	var ok atomic.Int64
	var wg sync.WaitGroup
	for range 500 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s.admit(now, clientKey{kindKeyID, "shared"}, 1, nil).ok {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 50 {
		t.Fatalf("%d admitted, want exactly 50", ok.Load())
	}
}

// A million distinct consumers: the sweep deletes every bucket that has
// refilled, and the memory they took is returned.
func TestBucketEvictionBoundsMemory(t *testing.T) {
	const n = 1_000_000
	s := newBucketStore(2, 2*time.Second) // one request leaves a bucket 1s from full
	t0 := time.Unix(1_700_000_000, 0)

	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	base := heap()
	for i := range n {
		s.admit(t0, clientKey{kindIP, "10." + strconv.Itoa(i>>16) + "." + strconv.Itoa(i>>8&255) + "." + strconv.Itoa(i&255)}, 1, nil)
	}
	if got := s.Len(); got != n {
		t.Fatalf("%d buckets, want %d", got, n)
	}
	full := heap()

	// Half a window later nothing is full yet: nothing may be evicted,
	// or a consumer would get a fresh bucket early.
	if left := s.Sweep(t0.Add(500 * time.Millisecond)); left != n {
		t.Fatalf("sweep before refill left %d buckets, want %d", left, n)
	}
	// One consumer keeps spending; everyone else goes idle.
	busy := clientKey{kindKeyID, "busy"}
	for range 2 {
		s.admit(t0.Add(time.Second), busy, 1, nil)
	}
	if left := s.Sweep(t0.Add(time.Second)); left != 1 {
		t.Fatalf("sweep after a window left %d buckets, want only the busy one", left)
	}
	if st := s.peek(t0.Add(time.Second), busy, 1); st.remaining != 0 {
		t.Fatalf("the busy consumer's bucket was reset by the sweep: %+v", st)
	}
	after := heap()
	t.Logf("heap: base %d MiB, with %d buckets %d MiB, after sweep %d MiB", base>>20, n, full>>20, after>>20)
	if grown := int64(after) - int64(base); grown > int64(full-base)/10 {
		t.Fatalf("after the sweep the heap is still %d bytes above the start (with all buckets: %d): memory not returned", grown, full-base)
	}
}

func TestBucketSweeperStops(t *testing.T) {
	before := runtime.NumGoroutine()
	for range 20 {
		s := newBucketStore(1, time.Second)
		s.Start()
		if err := s.Destruct(); err != nil {
			t.Fatal(err)
		}
	}
	if after := runtime.NumGoroutine(); after > before+2 {
		t.Fatalf("goroutines: %d before, %d after 20 start/destruct", before, after)
	}
}

// During a Redis outage a request costs one token per live instance: the
// bucket's burst and rate are divided among the instances.
func TestBucketShareDuringOutage(t *testing.T) {
	s := newBucketStore(9, 9*time.Second) // a token a second
	t0 := time.Unix(1_700_000_000, 0)
	k := clientKey{kindKeyID, "carol"}
	for i := range 3 {
		if st := s.admit(t0, k, 3, nil); !st.ok || st.remaining != int64(2-i) {
			t.Fatalf("request %d with 3 instances: %+v, want admitted with %d left", i+1, st, 2-i)
		}
	}
	st := s.admit(t0, k, 3, nil)
	if st.ok || st.retry != 3*time.Second {
		t.Fatalf("4th request: %+v, want refused until 3 tokens are back (3s)", st)
	}
	if !s.admit(t0.Add(3*time.Second), k, 3, nil).ok || s.admit(t0.Add(3*time.Second), k, 3, nil).ok {
		t.Fatal("want one request per 3s: a third of the rate")
	}
	// A bucket smaller than the number of instances still admits.
	small := newBucketStore(2, time.Minute)
	if !small.admit(t0, k, 2, nil).ok {
		t.Fatal("client limit 2 among 3 instances refused the first request")
	}
}
