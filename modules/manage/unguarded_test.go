package manage

import (
	"strings"
	"testing"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

// TestManageWithoutAuthFailsClosed composes byteproxy_manage without
// byteproxy_auth in front: /manage/* must be refused, not opened, while
// the same API behind auth answers.
func TestManageWithoutAuthFailsClosed(t *testing.T) {
	in := testutil.Start(t, `{
	byteproxy {
		auth management {
			key mgmt-unguarded-test-key
		}
	}
}
:{{PORT}} {
	route /open/* {
		uri strip_prefix /open
		byteproxy_manage
	}
	byteproxy
}
`, testutil.Options{})
	resp, body := testutil.Do(t, "GET", in.URL("/open/manage/services"), nil)
	if resp.StatusCode != 403 || !strings.Contains(string(body), "byteproxy_auth management") {
		t.Fatalf("unguarded /manage: %d %s, want 403 naming the missing handler", resp.StatusCode, body)
	}
	resp, body = testutil.Do(t, "GET", in.URL("/manage/services"), nil, "X-API-Key", "mgmt-unguarded-test-key")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"services"`) {
		t.Fatalf("guarded /manage/services: %d %s", resp.StatusCode, body)
	}
	resp, _ = testutil.Do(t, "GET", in.URL("/open/health"), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("informational endpoints need no auth: /health %d", resp.StatusCode)
	}
}
