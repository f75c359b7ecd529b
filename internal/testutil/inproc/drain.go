package inproc

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// A config reload in Caddy returns once the old servers have *begun* to shut
// down (caddyhttp.App.Stop does not wait for http.Server.Shutdown). Until
// they finish, the old and the new server accept on the same shared socket,
// so a request sent right after caddy.Load may still be answered by the
// replaced config, or meet a connection that the old server closes without
// an answer. A real client of a reloading Caddy sees the same; a test that
// asserts "after the reload, X" must not. So every config LoadJSON runs
// counts its servers' listeners and connections (a listener wrapper placed
// before TLS), and LoadJSON returns only when the replaced config has closed
// all of them, or after drainWait when a test holds a request across the
// reload.

// drainWait bounds the wait for the replaced config's connections: a test
// that holds a request open across a reload only makes that reload slower.
const drainWait = 2 * time.Second

func init() { caddy.RegisterModule(connCounter{}) }

// connCounter is a listener wrapper (caddy.listeners.inproc_conns) that
// counts the open listeners, pending accepts and connections of the
// servers of one config load.
type connCounter struct {
	// Generation is the config load whose servers this wrapper counts.
	Generation uint64 `json:"generation"`
}

// CaddyModule returns the Caddy module information.
func (connCounter) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "caddy.listeners.inproc_conns", New: func() caddy.Module { return new(connCounter) }}
}

// WrapListener counts ln and every connection accepted from it.
func (c *connCounter) WrapListener(ln net.Listener) net.Listener {
	g := generationOf(c.Generation)
	g.add(1)
	return &countedListener{Listener: ln, g: g}
}

// generation counts what one config load's servers still hold open.
type generation struct {
	mu    sync.Mutex
	open  int
	empty chan struct{} // closed (and replaced) each time open falls to 0
}

var (
	generationsMu sync.Mutex
	generations   = map[uint64]*generation{}
	lastGen       atomic.Uint64
)

func generationOf(id uint64) *generation {
	generationsMu.Lock()
	defer generationsMu.Unlock()
	g := generations[id]
	if g == nil {
		g = &generation{empty: make(chan struct{})}
		generations[id] = g
	}
	return g
}

func forgetGeneration(id uint64) {
	generationsMu.Lock()
	delete(generations, id)
	generationsMu.Unlock()
}

func (g *generation) add(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open += n
	if g.open == 0 {
		close(g.empty)
		g.empty = make(chan struct{})
	}
}

// drain waits until everything of g is closed, at most d, and returns how
// much was still open.
func (g *generation) drain(d time.Duration) int {
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for {
		g.mu.Lock()
		n, empty := g.open, g.empty
		g.mu.Unlock()
		if n == 0 {
			return 0
		}
		select {
		case <-empty:
		case <-timeout.C:
			return n
		}
	}
}

type countedListener struct {
	net.Listener
	g      *generation
	closed sync.Once
}

// Accept counts itself while it waits: a shared socket's Accept can hand
// the old server a connection even after its listener was closed.
func (l *countedListener) Accept() (net.Conn, error) {
	l.g.add(1)
	c, err := l.Listener.Accept()
	if err != nil {
		l.g.add(-1)
		return nil, err
	}
	return &countedConn{Conn: c, g: l.g}, nil
}

func (l *countedListener) Close() error {
	err := l.Listener.Close()
	l.closed.Do(func() { l.g.add(-1) })
	return err
}

// countedConn keeps the TCP connection's optional methods that net/http
// uses (CloseWrite for a graceful close, ReadFrom for sendfile).
type countedConn struct {
	net.Conn
	g      *generation
	closed sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.closed.Do(func() { c.g.add(-1) })
	return err
}

func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *countedConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// countConnections puts the counting wrapper first (before TLS) in the
// listener wrappers of every server of cfg, for config load gen. An
// explicit "tls" placeholder after it keeps TLS where Caddy puts it
// implicitly: before every other wrapper the config lists.
func countConnections(cfg map[string]any, gen uint64) error {
	apps, _ := cfg["apps"].(map[string]any)
	httpApp, _ := apps["http"].(map[string]any)
	servers, _ := httpApp["servers"].(map[string]any)
	for name, s := range servers {
		srv, ok := s.(map[string]any)
		if !ok {
			return fmt.Errorf("server %s is not an object", name)
		}
		old, _ := srv["listener_wrappers"].([]any)
		wrappers := []any{map[string]any{"wrapper": "inproc_conns", "generation": gen}}
		hasTLS := false
		for _, w := range old {
			if m, ok := w.(map[string]any); ok && m["wrapper"] == "tls" {
				hasTLS = true
			}
		}
		if !hasTLS {
			wrappers = append(wrappers, map[string]any{"wrapper": "tls"})
		}
		srv["listener_wrappers"] = append(wrappers, old...)
	}
	return nil
}

// closeClientIdle drops the default client's idle connections, which may
// lead to a replaced server.
func closeClientIdle() {
	if tr, ok := http.DefaultTransport.(*http.Transport); ok {
		tr.CloseIdleConnections()
	}
}
