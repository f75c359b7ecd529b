package ratelimit

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

// TestDocumentationLinkResolves: the 429 body's documentation link points
// at the project page (README.md) and its #fragment is a README heading.
func TestDocumentationLinkResolves(t *testing.T) {
	base, fragment, ok := strings.Cut(gateway.RateLimitDocs, "#")
	if !ok || base != gateway.ProjectURL {
		t.Fatalf("documentation %q: want %s#<README heading>", gateway.RateLimitDocs, gateway.ProjectURL)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	// Headings outside fenced code blocks (a "# comment" in a shell block is none).
	prose := regexp.MustCompile("(?ms)^```.*?^```").ReplaceAll(readme, nil)
	var anchors []string
	for _, h := range regexp.MustCompile(`(?m)^#{1,6} (.+)$`).FindAllSubmatch(prose, -1) {
		anchors = append(anchors, githubAnchor(string(h[1])))
	}
	for _, a := range anchors {
		if a == fragment {
			return
		}
	}
	t.Errorf("README.md has no heading with the anchor #%s that the 429 body links to; headings: %v", fragment, anchors)
}

// githubAnchor is the id GitHub gives a Markdown heading: lower case,
// punctuation other than '-' and '_' dropped, spaces as '-'.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || ('a' <= r && r <= 'z') || ('0' <= r && r <= '9') || r > 0x7f:
			b.WriteRune(r)
		}
	}
	return b.String()
}
