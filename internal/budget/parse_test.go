package budget

import (
	"math"
	"math/big"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
)

// exactSeconds and exactEpochMillis are parseSeconds and parseEpochMillis
// of a plain decimal in exact arithmetic: thousandths rounded up (capped
// at maxWindow), and rounded half away from zero.
func exactSeconds(s string) time.Duration {
	x, _ := new(big.Rat).SetString(s)
	x.Mul(x, big.NewRat(1000, 1))
	q, r := new(big.Int).QuoRem(x.Num(), x.Denom(), new(big.Int))
	if r.Sign() > 0 {
		q.Add(q, big.NewInt(1))
	}
	return min(time.Duration(q.Int64())*time.Millisecond, maxWindow)
}

func exactEpochMillis(s string) int64 {
	x, _ := new(big.Rat).SetString(s)
	x.Mul(x, big.NewRat(1000, 1))
	x.Add(x, big.NewRat(1, 2))
	return new(big.Int).Quo(x.Num(), x.Denom()).Int64()
}

// TestDecimalParsing: the upstreams' decimals are read exactly (the float
// reading they had before was off by a millisecond for some, e.g.
// "8284.69" read as 8284.691s, always longer: safe, but not exact), and
// other forms as before.
func TestDecimalParsing(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200000 {
		var s string
		switch i % 4 {
		case 0: // reset-after
			s = strconv.FormatFloat(float64(rng.IntN(100_000_000))/1000, 'f', 3, 64)
		case 1: // epoch reset
			s = strconv.FormatFloat(float64(1_700_000_000_000+rng.Int64N(200_000_000_000))/1000, 'f', 3, 64)
		case 2: // whole seconds, fewer decimals
			s = strconv.FormatFloat(float64(rng.IntN(1_000_000))/100, 'f', -1, 64)
		default:
			s = strconv.Itoa(rng.IntN(100000))
		}
		if got, ok := parseSeconds(s); got != exactSeconds(s) || !ok {
			t.Fatalf("parseSeconds(%q) = %v %v, want %v", s, got, ok, exactSeconds(s))
		}
		want := exactEpochMillis(s)
		if got, ok := parseEpochMillis(s); got != want || ok != (want > 0 || s != strings.Repeat("0", len(s))) {
			t.Fatalf("parseEpochMillis(%q) = %v %v, want %v", s, got, ok, want)
		}
	}
	for _, c := range []struct {
		in      string
		seconds time.Duration
		sok     bool
		epoch   int64
		eok     bool
	}{
		{"0.0001", time.Millisecond, true, 0, true},
		{"1.0005", 1001 * time.Millisecond, true, 1001, true},
		{"1.00049", 1001 * time.Millisecond, true, 1000, true},
		{"0", 0, true, 0, false},
		{"0.000", 0, true, 0, false},
		{"5.", 5 * time.Second, true, 5000, true}, // float syntax, read by ParseFloat
		{".5", 500 * time.Millisecond, true, 500, true},
		{"1e3", 1000 * time.Second, true, 1_000_000, true},
		{"-1", 0, false, 0, false},
		{" 1", 0, false, 0, false},
		{"99999999", maxWindow, true, 99999999000, true},
		{"1000000000000", maxWindow, true, 1e15, true},
		{"1000000000000.5", maxWindow, true, 0, false},
	} {
		if d, ok := parseSeconds(c.in); d != c.seconds || ok != c.sok {
			t.Errorf("parseSeconds(%q) = %v %v, want %v %v", c.in, d, ok, c.seconds, c.sok)
		}
		if ms, ok := parseEpochMillis(c.in); ms != c.epoch || ok != c.eok {
			t.Errorf("parseEpochMillis(%q) = %v %v, want %v %v", c.in, ms, ok, c.epoch, c.eok)
		}
	}
}

// BenchmarkParseSeconds reads Discord's reset-after and reset: exactly
// (parseSeconds, parseEpochMillis) and, for comparison, with
// strconv.ParseFloat as they did before.
func BenchmarkParseSeconds(b *testing.B) {
	for _, c := range []struct {
		name    string
		seconds func(string) (time.Duration, bool)
		epoch   func(string) (int64, bool)
	}{
		{"exact", parseSeconds, parseEpochMillis},
		{"float", func(s string) (time.Duration, bool) {
			f, err := strconv.ParseFloat(s, 64)
			return seconds(f), err == nil
		}, func(s string) (int64, bool) {
			f, err := strconv.ParseFloat(s, 64)
			return int64(math.Round(f * 1000)), err == nil
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := c.seconds("0.988"); !ok {
					b.Fatal("unread")
				}
				if _, ok := c.epoch("1796222454.522"); !ok {
					b.Fatal("unread")
				}
			}
		})
	}
}
