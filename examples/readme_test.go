package examples

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// readmeGlobalOptionBlocks returns the Caddyfile blocks of the README's
// "The `byteproxy` global option" section: the minimal one, then the
// annotated one.
func readmeGlobalOptionBlocks(t *testing.T) []string {
	t.Helper()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n### The `byteproxy` global option\n")
	if !ok {
		t.Fatal("README.md has no section 'The `byteproxy` global option'")
	}
	// The section ends at the next heading of any level (a subsection has
	// snippets of its own).
	if end := strings.Index(section, "\n#"); end >= 0 {
		section = section[:end]
	}
	var blocks []string
	for _, m := range regexp.MustCompile("(?ms)^```caddyfile\n(.*?)^```").FindAllStringSubmatch(section, -1) {
		blocks = append(blocks, m[1])
	}
	if len(blocks) == 0 {
		t.Fatal("no Caddyfile block in the section")
	}
	return blocks
}

func adaptText(t *testing.T, caddyfile string) []byte {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "README.md"})
	if err != nil {
		t.Fatalf("adapting the README block: %v\n%s", err, caddyfile)
	}
	return out
}

// TestReadmeMinimalBlock: the first block works when pasted, and fails
// closed without a proxy key.
func TestReadmeMinimalBlock(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	blocks := readmeGlobalOptionBlocks(t)
	if len(blocks) != 2 {
		t.Fatalf("want two Caddyfile blocks in the section (minimal, annotated), found %d", len(blocks))
	}
	minimal := blocks[0]
	cfg := adaptText(t, minimal)
	t.Setenv("PROXY_API_KEY", "readme-key")
	if err := caddy.Validate(mustConfig(t, cfg)); err != nil {
		t.Fatalf("the minimal block does not load: %v", err)
	}
	t.Setenv("PROXY_API_KEY", "")
	if err := caddy.Validate(mustConfig(t, cfg)); err == nil || !strings.Contains(err.Error(), "auth proxy") {
		t.Fatalf("without PROXY_API_KEY, want a startup error naming auth proxy, got %v", err)
	}
}

// TestReadmeAnnotatedBlockIsSafeToPaste: the annotated block loads, and
// none of its optional settings that change behaviour is active: no
// dependency probe (503 for everything while it fails), no Redis (starts
// in fallback), no private upstreams or env tokens for runtime services,
// no unverified TLS, no outgoing update check.
func TestReadmeAnnotatedBlockIsSafeToPaste(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	t.Setenv("PROXY_API_KEY", "readme-key")
	blocks := readmeGlobalOptionBlocks(t)
	annotated := blocks[len(blocks)-1]
	cfgJSON := adaptText(t, annotated)
	var cfg struct {
		Apps struct {
			Byteproxy map[string]json.RawMessage `json:"byteproxy"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	app := string(mustJSON(t, cfg.Apps.Byteproxy))
	for _, field := range []string{`"health_check_url"`, `"redis"`, `"allow_private_upstreams"`, `"token_env"`, `"tls_insecure_skip_verify"`, `"update_check"`, `"client_rate_limit"`} {
		if strings.Contains(app, field) {
			t.Errorf("the annotated block sets %s when pasted; comment it out (optional)", field)
		}
	}
	if len(cfg.Apps.Byteproxy["services"]) == 0 {
		t.Error("the annotated block defines no service")
	}
	if err := caddy.Validate(mustConfig(t, cfgJSON)); err != nil {
		t.Fatalf("the annotated block does not load: %v", err)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
