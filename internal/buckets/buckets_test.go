package buckets

import (
	"testing"
	"time"
)

// A store bounded per shard keeps its bound and its count of buckets under
// a flood of new keys, and a sweep after a window empties it.
func TestBoundAndSweep(t *testing.T) {
	s := New(2, time.Minute, 4, 8, func(k int) uint64 { return uint64(k) })
	now := time.Unix(1_700_000_000, 0)
	for k := range 1000 {
		sh := s.Lock(k)
		if sh.Get(k) != nil {
			t.Fatalf("key %d has a bucket before its first use", k)
		}
		sh.Add(k).AllowN(now, 1)
		sh.Unlock()
	}
	held := 0
	for i := range s.shards {
		held += len(s.shards[i].m)
	}
	if held != 4*8 || s.Len() != held || !s.Active() {
		t.Fatalf("%d buckets held, Len %d, Active %v; want the bound, 32", held, s.Len(), s.Active())
	}
	if left := s.Sweep(now.Add(10 * time.Second)); left != held {
		t.Fatalf("a sweep before the buckets refilled left %d of %d", left, held)
	}
	if left := s.Sweep(now.Add(time.Minute)); left != 0 || s.Len() != 0 || s.Active() {
		t.Fatalf("a sweep after a window left %d (Len %d, Active %v), want none", left, s.Len(), s.Active())
	}
}

func TestDurationFor(t *testing.T) {
	s := New(10, 10*time.Second, 1, 0, func(int) uint64 { return 0 })
	if d := s.DurationFor(2.5); d != 2500*time.Millisecond {
		t.Fatalf("2.5 tokens at one a second: %v", d)
	}
	if d := s.DurationFor(-1); d != 0 {
		t.Fatalf("no tokens to gain: %v", d)
	}
}
