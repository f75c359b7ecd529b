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

// openProxyWarning is the start of the warning logged when /proxy/* needs
// no key while a service carries a credential.
const openProxyWarning = "the proxy needs no API key"

// TestWarnsAboutAnOpenProxy: a gateway whose proxy needs no key while a
// service holds a token says so at startup, naming the service; with a
// proxy key, or without any credential to give away, it does not.
func TestWarnsAboutAnOpenProxy(t *testing.T) {
	const site = ":{{PORT}} {\n\tbind 127.0.0.1\n\tbyteproxy\n}\n"
	for _, c := range []struct {
		name, global string
		warn         bool
	}{
		{"token and no proxy key", "service gh github {\n\t\t\tauth bearer test-token-value\n\t\t}", true},
		{"token and a proxy key", "auth proxy {\n\t\t\tkey a-long-enough-proxy-key-value\n\t\t}\n\t\tservice gh github {\n\t\t\tauth bearer test-token-value\n\t\t}", false},
		{"no credential", "service open {\n\t\t\tbase_url http://127.0.0.1:9/\n\t\t}", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := testutil.Start(t, "{\n\tbyteproxy {\n\t\t"+c.global+"\n\t}\n}\n"+site, testutil.Options{})
			line := logLine(in.Logs(), openProxyWarning)
			if c.warn && (!strings.Contains(line, `"level":"warn"`) || !strings.Contains(line, `"gh"`)) {
				t.Fatalf("want a warn-level line naming the service gh, got %q\n%s", line, in.Logs())
			}
			if !c.warn && line != "" {
				t.Fatalf("warned although it should not: %s", line)
			}
			if strings.Contains(in.Logs(), "test-token-value") {
				t.Fatal("the log shows the token")
			}
		})
	}
}
