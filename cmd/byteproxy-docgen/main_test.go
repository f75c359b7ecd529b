package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	_ "github.com/byteproxy/byteproxy"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

const (
	gatewayDir = "../../modules/gateway"
	reference  = "../../docs/REFERENCE.md"
)

// TestReferenceIsCurrent fails when the JSON reference in
// docs/REFERENCE.md differs from what the config structs' doc comments
// generate (a field was added, renamed or its comment changed).
func TestReferenceIsCurrent(t *testing.T) {
	want, err := generate(gatewayDir)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(reference)
	if err != nil {
		t.Fatal(err)
	}
	got, err := currentSection(doc)
	if err != nil {
		t.Fatalf("docs/REFERENCE.md: %v", err)
	}
	if got != want {
		t.Errorf("docs/REFERENCE.md is stale: run `go run ./cmd/byteproxy-docgen -w` from the repository root and commit the result\n--- generated ---\n%s", want)
	}
}

// TestGeneratedCoversEveryField: every JSON field of apps.byteproxy and of
// the structs below it is documented, with the name Caddy decodes.
func TestGeneratedCoversEveryField(t *testing.T) {
	section, err := generate(gatewayDir)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type)
	walk = func(rt reflect.Type) {
		for rt.Kind() == reflect.Pointer || rt.Kind() == reflect.Map || rt.Kind() == reflect.Slice {
			rt = rt.Elem()
		}
		if rt.Kind() != reflect.Struct || rt.PkgPath() != reflect.TypeFor[gateway.App]().PkgPath() || seen[rt] {
			return
		}
		seen[rt] = true
		for i := range rt.NumField() {
			f := rt.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if !f.IsExported() || name == "" || name == "-" {
				continue
			}
			if !strings.Contains(section, "- **`"+name+"`** (") {
				t.Errorf("%s.%s (json %q) is missing from the generated reference", rt.Name(), f.Name, name)
			}
			walk(f.Type)
		}
	}
	walk(reflect.TypeFor[gateway.App]())
	if len(seen) < 5 {
		t.Fatalf("walked only %d structs; the test is not looking where it should", len(seen))
	}
}

// TestGenerateRefusesUndocumentedField: the doc comments are the
// documentation, so a config field without one stops the generator.
func TestGenerateRefusesUndocumentedField(t *testing.T) {
	dir := t.TempDir()
	src := "package gateway\n\ntype App struct {\n\t// Documented.\n\tA string `json:\"a,omitempty\"`\n\tB string `json:\"b,omitempty\"`\n}\n"
	if err := os.WriteFile(dir+"/app.go", []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := generate(dir); err == nil || !strings.Contains(err.Error(), `field "b" has no doc comment`) {
		t.Fatalf("want an error naming field b, got %v", err)
	}
}

// TestReplaceSectionKeepsHandWrittenText: -w changes only the text between
// the markers.
func TestReplaceSectionKeepsHandWrittenText(t *testing.T) {
	doc := "# Title\n\nbefore\n\n" + beginMarker + "\nold\n" + endMarker + "\n\nafter\n"
	out, err := replaceSection([]byte(doc), "new")
	if err != nil {
		t.Fatal(err)
	}
	want := "# Title\n\nbefore\n\n" + beginMarker + "\n\nnew\n" + endMarker + "\n\nafter\n"
	if string(out) != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}
	if _, err := replaceSection([]byte("no markers"), "new"); err == nil {
		t.Error("want an error for a reference without markers")
	}
}

// TestReferenceListsModules: the module table names exactly the modules
// ByteProxy registers, and each handler has a directive section.
func TestReferenceListsModules(t *testing.T) {
	doc, err := os.ReadFile(reference)
	if err != nil {
		t.Fatal(err)
	}
	var ours []string
	for _, id := range caddy.Modules() {
		info, err := caddy.GetModule(id)
		if err != nil {
			t.Fatal(err)
		}
		rt := reflect.TypeOf(info.New())
		if rt.Kind() == reflect.Pointer {
			rt = rt.Elem()
		}
		if strings.HasPrefix(rt.PkgPath(), gateway.ModulePath+"/") {
			ours = append(ours, id)
		}
	}
	if len(ours) < 8 {
		t.Fatalf("found only %d of our modules: %v", len(ours), ours)
	}
	listed := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z_.]+)` \\| `modules/").FindAllSubmatch(doc, -1) {
		listed[string(m[1])] = true
	}
	for _, id := range ours {
		if !listed[id] {
			t.Errorf("module %s is not in the module table of docs/REFERENCE.md", id)
		}
		delete(listed, id)
		if directive, ok := strings.CutPrefix(id, "http.handlers."); ok {
			if !strings.Contains(string(doc), "### `"+directive+"`\n\n```caddyfile\n"+directive) {
				t.Errorf("docs/REFERENCE.md has no syntax section for the %s directive", directive)
			}
		}
	}
	for id := range listed {
		t.Errorf("docs/REFERENCE.md lists %s, which is not registered", id)
	}
}

// TestDocLinksResolve: every relative link of README.md and the docs/
// pages points at a file that exists and, with a #fragment, at a heading
// (or an <a id>) of that file.
func TestDocLinksResolve(t *testing.T) {
	pages := []string{"../../README.md", "../../docs/REFERENCE.md", "../../docs/OPERATIONS.md"}
	linkRe := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, page := range pages {
		body, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range linkRe.FindAllSubmatch(stripCode(body), -1) {
			link := string(m[1])
			if strings.Contains(link, "://") || strings.HasPrefix(link, "mailto:") {
				continue
			}
			file, fragment, _ := strings.Cut(link, "#")
			target := page
			if file != "" {
				target = filepath.Join(filepath.Dir(page), file)
			}
			tb, err := os.ReadFile(target)
			if err != nil {
				t.Errorf("%s: link %s: %v", filepath.Base(page), link, err)
				continue
			}
			if fragment != "" && !slices.Contains(anchors(tb), fragment) {
				t.Errorf("%s: link %s: %s has no heading #%s", filepath.Base(page), link, filepath.Base(target), fragment)
			}
		}
	}
}

// stripCode removes fenced code blocks and inline code, where "](x)" and
// "# x" are no links or headings.
func stripCode(md []byte) []byte {
	md = regexp.MustCompile("(?ms)^```.*?^```").ReplaceAll(md, nil)
	return regexp.MustCompile("`[^`\n]*`").ReplaceAllFunc(md, func(code []byte) []byte {
		if bytes.ContainsAny(code, "]#") {
			return nil
		}
		return code
	})
}

// anchors are the ids GitHub gives a page's headings (lower case,
// punctuation but '-' and '_' dropped, spaces as '-', repeats numbered)
// and its explicit <a id="...">.
func anchors(md []byte) []string {
	var out []string
	seen := map[string]int{}
	prose := regexp.MustCompile("(?ms)^```.*?^```").ReplaceAll(md, nil)
	for _, h := range regexp.MustCompile(`(?m)^#{1,6} (.+)$`).FindAllSubmatch(prose, -1) {
		var b strings.Builder
		for _, r := range strings.ToLower(strings.TrimSpace(string(h[1]))) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || ('a' <= r && r <= 'z') || ('0' <= r && r <= '9') || r > 0x7f:
				b.WriteRune(r)
			}
		}
		a := b.String()
		if n := seen[a]; n > 0 {
			out = append(out, fmt.Sprintf("%s-%d", a, n))
		} else {
			out = append(out, a)
		}
		seen[a]++
	}
	for _, m := range regexp.MustCompile(`<a id="([^"]+)">`).FindAllSubmatch(md, -1) {
		out = append(out, string(m[1]))
	}
	return out
}
