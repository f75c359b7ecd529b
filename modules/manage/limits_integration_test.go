package manage_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/byteproxy/byteproxy/internal/testutil"
)

// limitsConf: 102 services in the Caddy config (more than the public
// answers list) and room for 3 runtime services.
func limitsConf() string {
	var services strings.Builder
	for i := range 102 {
		fmt.Fprintf(&services, "\t\tservice cfg-%03d {\n\t\t\tbase_url http://127.0.0.1:9/\n\t\t}\n", i)
	}
	return `{
	byteproxy {
		auth management {
			key {env.MANAGEMENT_API_KEY}
		}
		auth proxy {
			key {env.PROXY_API_KEY}
		}
		runtime_services {
			allow_private_upstreams
			token_env CUSTOM_*
			max_services 3
		}
` + services.String() + `	}
}
:{{PORT}} {
	byteproxy
}
`
}

// TestRuntimeServiceLimits: max_services caps runtime services (config
// services do not count) with a 409 naming the setting; the public answers
// list at most 100 services and say that they are cut; a credential header
// that cannot carry a credential is refused.
func TestRuntimeServiceLimits(t *testing.T) {
	t.Parallel()
	in := start(t, limitsConf(), "")
	for _, k := range []string{"r1", "r2", "r3"} {
		if st, m := api(t, in, "POST", "/manage/services", addBody(k, "http://127.0.0.1:9/")); st != 201 {
			t.Fatalf("POST %s: %d %v", k, st, m)
		}
	}
	st, m := api(t, in, "POST", "/manage/services", addBody("r4", "http://127.0.0.1:9/"))
	if st != 409 || m["field"] != "key" || m["maxServices"] != 3.0 || !strings.Contains(fmt.Sprint(m["error"]), "max_services") {
		t.Fatalf("over the limit: %d %v", st, m)
	}
	if st, _ := api(t, in, "GET", "/manage/services/r4", ""); st != 404 {
		t.Fatalf("refused service exists: %d", st)
	}
	if st, m := api(t, in, "PUT", "/manage/services/r3", `{"baseUrl":"http://127.0.0.1:10/"}`); st != 200 {
		t.Fatalf("replacing at the limit: %d %v", st, m)
	}
	if st, m := api(t, in, "DELETE", "/manage/services/r1", ""); st != 200 {
		t.Fatalf("DELETE: %d %v", st, m)
	}
	if st, m := api(t, in, "POST", "/manage/services", addBody("r4", "http://127.0.0.1:9/")); st != 201 {
		t.Fatalf("after a delete: %d %v", st, m)
	}
	total := 102 + 3
	if st, m := api(t, in, "GET", "/manage/services", ""); st != 200 || m["count"] != float64(total) || len(m["services"].([]any)) != total {
		t.Fatalf("GET /manage/services lists all: %d count %v", st, m["count"])
	}

	// A credential header the HTTP client would drop.
	for _, name := range []string{"Host", "Content-Length", "Connection"} {
		body := `{"key":"r4","config":{"baseUrl":"http://127.0.0.1:9/","auth":{"type":"header","headerName":"` + name + `","tokenEnvVar":"CUSTOM_TOKEN"}}}`
		if st, m := api(t, in, "PUT", "/manage/services/r4", body); st != 400 || m["field"] != "auth.headerName" {
			t.Errorf("auth header %s: %d %v", name, st, m)
		}
	}

	// Public answers are bounded.
	resp, raw := testutil.Do(t, "GET", in.URL("/health"), nil)
	health := decode(t, resp, raw)["services"].(map[string]any)
	if health["total"] != float64(total) || len(health["available"].([]any)) != 100 || health["truncated"] != true {
		t.Errorf("/health services: total %v, %d listed, truncated %v", health["total"], len(health["available"].([]any)), health["truncated"])
	}
	resp, raw = testutil.Do(t, "GET", in.URL("/status"), nil)
	conf := decode(t, resp, raw)["configuration"].(map[string]any)
	if conf["servicesTotal"] != float64(total) || len(conf["services"].([]any)) != 100 || conf["servicesTruncated"] != true {
		t.Errorf("/status services: total %v, %d listed, truncated %v", conf["servicesTotal"], len(conf["services"].([]any)), conf["servicesTruncated"])
	}
	if len(raw) > 32<<10 {
		t.Errorf("/status is %d bytes", len(raw))
	}
	resp, raw = testutil.Do(t, "GET", in.URL("/proxy/services"), nil, "X-API-Key", proxyKey)
	list := decode(t, resp, raw)
	if list["count"] != float64(total) || len(list["services"].([]any)) != 100 || list["truncated"] != true {
		t.Errorf("/proxy/services: count %v, %d listed, truncated %v", list["count"], len(list["services"].([]any)), list["truncated"])
	}
	resp, raw = testutil.Do(t, "GET", in.URL("/proxy/nope/x"), nil, "X-API-Key", proxyKey)
	nf := decode(t, resp, raw)
	if resp.StatusCode != 404 || len(nf["availableServices"].([]any)) != 100 || nf["truncated"] != true || nf["servicesTotal"] != float64(total) {
		t.Errorf("404: %d, %d listed, truncated %v, total %v", resp.StatusCode, len(nf["availableServices"].([]any)), nf["truncated"], nf["servicesTotal"])
	}
}
