package gateway_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

// unconfiguredWarning is the start of the warning logged when the gateway
// runs without the byteproxy global option (or apps.byteproxy).
const unconfiguredWarning = "the byteproxy app is not configured"

// TestWarnsWhenAppNotConfigured runs the gateway binary with the site
// directive alone: it must say, once per config load, that the gateway has
// no services and no API keys; with the global option it must not.
func TestWarnsWhenAppNotConfigured(t *testing.T) {
	t.Run("directive alone", func(t *testing.T) {
		in := testutil.Start(t, ":{{PORT}} {\n\tbind 127.0.0.1\n\tbyteproxy\n}\n", testutil.Options{})
		resp, _ := testutil.Do(t, http.MethodGet, in.URL("/health"), nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("/health: %d", resp.StatusCode)
		}
		logs := in.Logs()
		if n := strings.Count(logs, unconfiguredWarning); n != 1 {
			t.Fatalf("want the warning once in the startup log, found %d times:\n%s", n, logs)
		}
		line := logLine(logs, unconfiguredWarning)
		if !strings.Contains(line, `"level":"warn"`) || !strings.Contains(line, "no services and no API keys") {
			t.Errorf("want a warn-level line naming what is missing, got %s", line)
		}
		// A reload is a new config load: one more warning, not one per handler.
		in.Reload(":{{PORT}} {\n\tbind 127.0.0.1\n\tbyteproxy\n}\n")
		if n := strings.Count(in.Logs(), unconfiguredWarning); n != 2 {
			t.Errorf("after one reload, want the warning twice in total, found %d times", n)
		}
	})
	t.Run("with the global option", func(t *testing.T) {
		in := testutil.Start(t, "{\n\tbyteproxy {\n\t\tservice github\n\t}\n}\n:{{PORT}} {\n\tbind 127.0.0.1\n\tbyteproxy\n}\n", testutil.Options{})
		resp, _ := testutil.Do(t, http.MethodGet, in.URL("/health"), nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("/health: %d", resp.StatusCode)
		}
		if strings.Contains(in.Logs(), unconfiguredWarning) {
			t.Errorf("warned although the global option is present:\n%s", in.Logs())
		}
	})
}

func logLine(logs, substr string) string {
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, substr) {
			return l
		}
	}
	return ""
}
