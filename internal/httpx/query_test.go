package httpx

import "testing"

func TestStripQueryParam(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", ""},
		{"a=1", "a=1"},
		{"api_key=k", ""},
		{"a=1&api_key=k&b=2", "a=1&b=2"},
		{"y=2&y=3&flag&api_key=k", "y=2&y=3&flag"},
		{"api%5Fkey=k&x=%2F", "x=%2F"},
		{"api_key&api_key=1&api_keyx=2", "api_keyx=2"},
		{"q=api_key", "q=api_key"},
		// ';' separates too, and the other separators stay as they were.
		{"x=1;api_key=k", "x=1"},
		{"api_key=k;x=1&y=2", "x=1&y=2"},
		{"a=1;api_key=k;b=2&c=3", "a=1;b=2&c=3"},
		{"a=1&api_key=k;b=2", "a=1;b=2"},
		{"q=a;b&api_key=k", "q=a;b"},
		// any letter case, any encoding of the name, with or without '='
		{"API_KEY=k&Api_Key=k&x=1", "x=1"},
		{"%61pi_key=k;%41PI%5FKEY=k&x=1", "x=1"},
		{"api_key;api_key=;x", "x"},
		// empty segments are kept byte for byte
		{"&x=1&&api_key=k&", "&x=1&&"},
		{"x=%zz&api_key=k", "x=%zz"},
		{"api%zz=1", "api%zz=1"},
		{"api_kelvin=1;api_\u212aey=1", "api_kelvin=1;api_\u212aey=1"},
	}
	for _, c := range cases {
		if got := StripQueryParam(c.in, "api_key"); got != c.want {
			t.Errorf("StripQueryParam(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestQueryParam: the key is read under the same rule it is stripped by,
// except that letter case counts.
func TestQueryParam(t *testing.T) {
	cases := []struct {
		in, want string
		ok       bool
	}{
		{"", "", false},
		{"x=1", "", false},
		{"api_key=k", "k", true},
		{"x=1;api_key=k", "k", true},
		{"x=1&y=2;api_key=k&z", "k", true},
		{"%61pi_key=k", "k", true},
		{"api%5Fkey=a%2Bb+c", "a+b c", true},
		{"api_key=one;api_key=two", "one", true},
		{"api_key", "", true},
		{"api_key=%zz", "", true},
		{"API_KEY=k", "", false},
		{"Api_Key=k;x=1", "", false},
		{"xapi_key=k&api_keys=k&api_key[]=k", "", false},
	}
	for _, c := range cases {
		got, ok := QueryParam(c.in, "api_key")
		if got != c.want || ok != c.ok {
			t.Errorf("QueryParam(%q) = %q, %v; want %q, %v", c.in, got, ok, c.want, c.ok)
		}
		// Whatever is read as the parameter is also stripped.
		if ok {
			if _, still := QueryParam(StripQueryParam(c.in, "api_key"), "api_key"); still {
				t.Errorf("%q: read, but not stripped", c.in)
			}
		}
	}
}
