package testutil

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	_ "github.com/caddyserver/caddy/v2/modules/standard" // in process: respond, the file log writer
)

// TestReloadDrainsReplacedServer: right after Reload returns, every
// request is the new config's, also a POST (which net/http does not retry)
// from a client whose kept-alive connection led to the replaced server;
// for the spawned binary (its test build's drain wrapper) and in process.
// In process it fails without package drain within 15 reloads (EOF, or
// the old answer); the binary's `byteproxy reload` command takes long
// enough on this machine that its subtest passed without it too.
func TestReloadDrainsReplacedServer(t *testing.T) {
	conf := func(gen int) string {
		return fmt.Sprintf(":{{PORT}} {\n\tbind 127.0.0.1\n\trespond \"gen-%d\"\n}\n", gen)
	}
	for _, mode := range []string{"binary", "in process"} {
		t.Run(mode, func(t *testing.T) {
			start := Start
			if mode == "in process" {
				start = InProcess
			}
			in := start(t, conf(0), Options{})
			for gen := 1; gen <= 15; gen++ {
				if resp, _ := Do(t, "GET", in.URL("/"), nil); resp.StatusCode != 200 { // leaves a kept-alive connection
					t.Fatalf("GET: %d", resp.StatusCode)
				}
				in.Reload(conf(gen))
				resp, err := http.Post(in.URL("/"), "text/plain", strings.NewReader("x"))
				if err != nil {
					t.Fatalf("reload %d: %v", gen, err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := fmt.Sprintf("gen-%d", gen); err != nil || string(body) != want {
					t.Fatalf("reload %d: answered by %q (%v), want %q", gen, body, err, want)
				}
			}
		})
	}
}
