// Package drain makes a config reload in a test return only when the
// replaced config's servers have closed every listener and connection.
//
// Caddy's http app returns from Stop once the old servers have *begun* to
// shut down (caddyhttp.App.Stop does not wait for http.Server.Shutdown).
// Until they finish, the old and the new server accept on the same shared
// socket, so a request sent right after a reload may still be answered by
// the replaced config, or meet a kept-alive connection that the old server
// closes without an answer. A real client of a reloading Caddy sees the
// same (docs/OPERATIONS.md, Reloads); a test that asserts "after the
// reload, X" must not.
//
// So the test configs (inproc's, and the record adapter's in the test
// build of the binary) put the listener wrapper caddy.listeners.test_drain
// first on every server: it counts the listeners, pending accepts and
// connections of its server, and its Cleanup, which Caddy runs after the
// old config's apps have stopped and before the reload returns, waits
// until all are closed, or Wait when a test holds a request open across
// the reload. Nothing here is in the binary users run.
package drain

import (
	"io"
	"net"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// Wait bounds the wait for a replaced config's connections: a test that
// holds a request open across a reload only makes that reload slower.
const Wait = 2 * time.Second

// ID is the wrapper's name in a server's listener_wrappers.
const ID = "test_drain"

func init() { caddy.RegisterModule(new(Wrapper)) }

// Wrapper is the listener wrapper caddy.listeners.test_drain.
type Wrapper struct {
	logger *zap.Logger
	mu     sync.Mutex
	open   int           // listeners, pending accepts and connections
	empty  chan struct{} // closed (and replaced) each time open falls to 0
}

// CaddyModule returns the Caddy module information.
func (*Wrapper) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "caddy.listeners." + ID, New: func() caddy.Module { return new(Wrapper) }}
}

// Provision sets up the counter.
func (w *Wrapper) Provision(ctx caddy.Context) error {
	w.logger = ctx.Logger()
	w.empty = make(chan struct{})
	return nil
}

// WrapListener counts ln and every connection accepted from it.
func (w *Wrapper) WrapListener(ln net.Listener) net.Listener {
	w.add(1)
	return &listener{Listener: ln, w: w}
}

// Cleanup waits until the server has closed everything it counted.
func (w *Wrapper) Cleanup() error {
	if open := w.drain(Wait); open > 0 {
		w.logger.Warn("the replaced config still holds listeners or connections (a request held across the reload)", zap.Int("open", open), zap.Duration("waited", Wait))
	}
	return nil
}

func (w *Wrapper) add(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.open += n
	if w.open == 0 {
		close(w.empty)
		w.empty = make(chan struct{})
	}
}

// drain waits until everything is closed, at most d, and returns how much
// was still open.
func (w *Wrapper) drain(d time.Duration) int {
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for {
		w.mu.Lock()
		n, empty := w.open, w.empty
		w.mu.Unlock()
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

type listener struct {
	net.Listener
	w      *Wrapper
	closed sync.Once
}

// Accept counts itself while it waits: a shared socket's Accept can hand
// the old server a connection even after its listener was closed.
func (l *listener) Accept() (net.Conn, error) {
	l.w.add(1)
	c, err := l.Listener.Accept()
	if err != nil {
		l.w.add(-1)
		return nil, err
	}
	return &conn{Conn: c, w: l.w}, nil
}

func (l *listener) Close() error {
	err := l.Listener.Close()
	l.closed.Do(func() { l.w.add(-1) })
	return err
}

// conn keeps the TCP connection's optional methods that net/http uses
// (CloseWrite for a graceful close, ReadFrom for sendfile).
type conn struct {
	net.Conn
	w      *Wrapper
	closed sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.closed.Do(func() { c.w.add(-1) })
	return err
}

func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// Inject puts the wrapper first (before TLS) in the listener wrappers of
// every server of a JSON config, once: an explicit "tls" placeholder
// after it keeps TLS where Caddy puts it implicitly, before every other
// wrapper the config lists.
func Inject(cfg map[string]any) {
	apps, _ := cfg["apps"].(map[string]any)
	httpApp, _ := apps["http"].(map[string]any)
	servers, _ := httpApp["servers"].(map[string]any)
	for _, s := range servers {
		srv, ok := s.(map[string]any)
		if !ok {
			continue
		}
		old, _ := srv["listener_wrappers"].([]any)
		if len(old) > 0 {
			if first, _ := old[0].(map[string]any); first["wrapper"] == ID {
				continue // injected already
			}
		}
		hasTLS := false
		for _, w := range old {
			m, _ := w.(map[string]any)
			hasTLS = hasTLS || m["wrapper"] == "tls"
		}
		wrappers := []any{map[string]any{"wrapper": ID}}
		if !hasTLS {
			wrappers = append(wrappers, map[string]any{"wrapper": "tls"})
		}
		srv["listener_wrappers"] = append(wrappers, old...)
	}
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Wrapper)(nil)
	_ caddy.CleanerUpper    = (*Wrapper)(nil)
	_ caddy.ListenerWrapper = (*Wrapper)(nil)
)
