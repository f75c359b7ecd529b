package manage

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestChangesFromTheOriginalAgree: the API docs (info.description of the
// OpenAPI document) and README.md list the same changes against the
// original ByteProxy, in the same order, by their bold titles; every item
// of either list has a title, so none escapes the comparison.
func TestChangesFromTheOriginalAgree(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("docs/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var spec struct {
		Info struct {
			Description string `json:"description"`
		} `json:"info"`
	}
	if err := json.Unmarshal(raw, &spec); err != nil {
		t.Fatal(err)
	}
	inReadme := changeTitles(t, "README.md", string(readme))
	inDocs := changeTitles(t, "openapi.json info.description", spec.Info.Description)
	if len(inReadme) < 20 {
		t.Fatalf("README lists %d changes; the section was not found whole", len(inReadme))
	}
	if !slices.Equal(inReadme, inDocs) {
		for _, c := range inReadme {
			if !slices.Contains(inDocs, c) {
				t.Errorf("%q is in README.md, not in the OpenAPI document", c)
			}
		}
		for _, c := range inDocs {
			if !slices.Contains(inReadme, c) {
				t.Errorf("%q is in the OpenAPI document, not in README.md", c)
			}
		}
		t.Errorf("the lists differ (or their order does):\nREADME: %q\ndocs:   %q", inReadme, inDocs)
	}
}

var (
	listItem    = regexp.MustCompile(`(?m)^- (.*)$`)
	boldAtStart = regexp.MustCompile(`^\*\*(.+?)\*\*`)
)

// changeTitles returns the bold titles of the list items in the "Changes
// from the original" section (a level-2 heading) of a Markdown text.
func changeTitles(t *testing.T, what, text string) []string {
	t.Helper()
	_, section, ok := strings.Cut(text, "\n## Changes from the original\n")
	if !ok {
		t.Fatalf("%s has no section \"## Changes from the original\"", what)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var titles []string
	for _, m := range listItem.FindAllStringSubmatch(section, -1) {
		b := boldAtStart.FindStringSubmatch(m[1])
		if b == nil {
			t.Errorf("%s: a change without a bold title: %.60q", what, m[1])
			continue
		}
		titles = append(titles, strings.TrimSuffix(b[1], "."))
	}
	return titles
}
