package jsonfield

import (
	"reflect"
	"testing"
)

func TestUnknownFieldPath(t *testing.T) {
	type inner struct {
		Name string `json:"name,omitempty"`
	}
	type outer struct {
		List  []inner           `json:"list,omitempty"`
		ByKey map[string]*inner `json:"by_key,omitempty"`
		One   *inner            `json:"one,omitempty"`
	}
	tests := []struct{ raw, want string }{
		{`{"list":[{"name":"a"},{"nam":"b"}]}`, "x.list[1].nam"},
		{`{"by_key":{"k":{"name":"a","extra":1}}}`, "x.by_key.k.extra"},
		{`{"one":{"NAME":"a"},"two":1}`, "x.two"},
		{`{"One":{"Name":"a"}}`, ""},
	}
	for _, tc := range tests {
		got, _ := find([]byte(tc.raw), reflect.TypeFor[outer](), "x", true)
		if got != tc.want {
			t.Errorf("%s: got path %q, want %q", tc.raw, got, tc.want)
		}
	}
}

// TestUnknownMessage: the error names the path and the field probably
// meant, else the fields there are; a known key is no error.
func TestUnknownMessage(t *testing.T) {
	type svc struct {
		RateLimit *struct{} `json:"rate_limit,omitempty"`
		BaseURL   string    `json:"base_url,omitempty"`
	}
	type app struct {
		Services map[string]svc `json:"services,omitempty"`
	}
	typ := reflect.TypeFor[app]()
	for raw, want := range map[string]string{
		`{"services":{"github":{"rate_limt":{}}}}`: `apps.byteproxy.services.github.rate_limt: unknown field (did you mean "rate_limit"?)`,
		`{"bogus":true}`: `apps.byteproxy.bogus: unknown field (known fields: services)`,
	} {
		if err := Unknown([]byte(raw), typ, "apps.byteproxy"); err == nil || err.Error() != want {
			t.Errorf("%s: got %v, want %q", raw, err, want)
		}
	}
	if err := Unknown([]byte(`{"services":{"x":{"base_url":"https://x.example/"}}}`), typ, "apps.byteproxy"); err != nil {
		t.Errorf("known fields: %v", err)
	}
}
