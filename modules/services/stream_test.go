package services

import (
	"context"
	"encoding/json"
	"hash/crc32"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func testTrailers(t *testing.T, g *gatewayUnderTest) {
	resp, err := client.Get(g.url("/proxy/up/trailer"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if string(body) != "body with trailer" || resp.Trailer.Get("X-Checksum") != "c0ffee" {
		t.Errorf("body %q, trailer %q; want the upstream's trailer", body, resp.Trailer.Get("X-Checksum"))
	}
}

func testWebSocket(t *testing.T, g *gatewayUnderTest) {
	url := "ws" + strings.TrimPrefix(g.url("/proxy/up/ws"), "http")
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	c, resp, err := d.Dial(url, http.Header{"Authorization": {"Bearer client-own-token"}})
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial through the gateway: %v (status %d)", err, status)
	}
	defer c.Close()
	if resp.Header.Get("X-Proxy-Service") != "up" {
		t.Errorf("101 without X-Proxy-Service: %v", resp.Header)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for i, msg := range []string{"hello", strings.Repeat("x", 100<<10), "bye"} {
		if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != "echo: "+msg {
			t.Errorf("message %d: echo of %d bytes, got %d bytes", i, len(msg), len(got))
		}
	}
}

// heapWatch polls the gateway's expvar memstats (admin /debug/vars) and
// keeps the largest HeapInuse seen.
type heapWatch struct {
	mu      sync.Mutex
	max     uint64
	samples int
	stop    chan struct{}
	done    chan struct{}
}

func watchHeap(t *testing.T, g *gatewayUnderTest) *heapWatch {
	h := &heapWatch{stop: make(chan struct{}), done: make(chan struct{})}
	url := g.in.AdminURL("/debug/vars")
	go func() {
		defer close(h.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			if v, err := heapInuse(url); err == nil {
				h.mu.Lock()
				h.max = max(h.max, v)
				h.samples++
				h.mu.Unlock()
			}
			select {
			case <-h.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return h
}

func (h *heapWatch) result() (uint64, int) {
	close(h.stop)
	<-h.done
	return h.max, h.samples
}

func heapInuse(url string) (uint64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var v struct {
		Memstats struct{ HeapInuse uint64 } `json:"memstats"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return 0, err
	}
	return v.Memstats.HeapInuse, nil
}

const (
	gib      = int64(1) << 30
	heapCap  = 64 << 20
	bigLimit = 150 * time.Second
)

// testStreaming sends 1 GiB up and 1 GiB down through the gateway and
// checks that both arrive intact while the gateway's heap stays small:
// nothing is buffered whole.
func testStreaming(t *testing.T, g *gatewayUnderTest) {
	if testing.Short() {
		t.Skip("1 GiB transfers skipped in -short mode")
	}
	t.Run("Up", func(t *testing.T) {
		want := patternCRC(gib)
		ctx, cancel := context.WithTimeout(context.Background(), bigLimit)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "PUT", g.url("/proxy/open/upload"), newPattern(gib))
		req.ContentLength = gib
		req.Header.Set("Content-Type", "application/octet-stream")
		w := watchHeap(t, g)
		start := time.Now()
		resp, err := client.Do(req)
		peak, samples := w.result()
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got struct {
			Bytes int64
			CRC   uint32
		}
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 200 {
			t.Fatalf("status %d, %v", resp.StatusCode, err)
		}
		if got.Bytes != gib || got.CRC != want {
			t.Errorf("upstream received %d bytes crc %08x, want %d crc %08x", got.Bytes, got.CRC, gib, want)
		}
		t.Logf("1 GiB up in %v; gateway HeapInuse max %d MiB over %d samples", time.Since(start).Round(time.Millisecond), peak>>20, samples)
		assertHeap(t, peak, samples)
	})
	t.Run("Down", func(t *testing.T) {
		want := patternCRC(gib)
		ctx, cancel := context.WithTimeout(context.Background(), bigLimit)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", g.url("/proxy/open/download?n="+strconv.FormatInt(gib, 10)), nil)
		w := watchHeap(t, g)
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			w.result()
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := crc32.New(crcTable)
		n, err := io.Copy(h, resp.Body)
		peak, samples := w.result()
		if err != nil {
			t.Fatal(err)
		}
		if n != gib || h.Sum32() != want || resp.ContentLength != gib {
			t.Errorf("received %d bytes (Content-Length %d) crc %08x, want %d crc %08x", n, resp.ContentLength, h.Sum32(), gib, want)
		}
		t.Logf("1 GiB down in %v; gateway HeapInuse max %d MiB over %d samples", time.Since(start).Round(time.Millisecond), peak>>20, samples)
		assertHeap(t, peak, samples)
	})
}

func assertHeap(t *testing.T, peak uint64, samples int) {
	t.Helper()
	if samples < 3 {
		t.Errorf("only %d heap samples: the watch did not cover the transfer", samples)
	}
	if peak == 0 || peak >= heapCap {
		t.Errorf("gateway HeapInuse peaked at %d bytes, want under %d", peak, heapCap)
	}
}
