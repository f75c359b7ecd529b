package gateway

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/byteproxy/byteproxy/internal/metrics"
)

// TestReferenceListsEveryMetric: the metrics table of docs/REFERENCE.md
// names every metric the gateway registers, with its labels, and no
// metric that does not exist.
func TestReferenceListsEveryMetric(t *testing.T) {
	doc, err := os.ReadFile("../../docs/REFERENCE.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{} // metric name -> its table row
	for _, m := range regexp.MustCompile("(?m)^\\| `(byteproxy_[a-z_]+)` \\|.*$").FindAllSubmatch(doc, -1) {
		rows[string(m[1])] = string(m[0])
	}
	var cs collectorList
	if err := metrics.New().Register(&cs, appCollectors(new(App))...); err != nil {
		t.Fatal(err)
	}
	descs := make(chan *prometheus.Desc, 64)
	for _, c := range cs {
		c.Describe(descs)
	}
	close(descs)
	// Desc has no accessors; its String() is stable:
	// Desc{fqName: "x", help: "...", constLabels: {k="v"}, variableLabels: {a,b}}
	nameRe := regexp.MustCompile(`fqName: "([^"]+)"`)
	varRe := regexp.MustCompile(`variableLabels: \{([^}]*)\}`)
	constRe := regexp.MustCompile(`constLabels: \{([^}]*)\}`)
	registered := map[string]bool{}
	for d := range descs {
		s := d.String()
		name := nameRe.FindStringSubmatch(s)
		if name == nil {
			t.Fatalf("cannot read the metric name from %s", s)
		}
		registered[name[1]] = true
		row, ok := rows[name[1]]
		if !ok {
			t.Errorf("metric %s is not in the metrics table of docs/REFERENCE.md", name[1])
			continue
		}
		var labels []string
		if m := varRe.FindStringSubmatch(s); m != nil && m[1] != "" {
			labels = append(labels, strings.Split(m[1], ",")...)
		}
		if m := constRe.FindStringSubmatch(s); m != nil && m[1] != "" {
			for _, kv := range strings.Split(m[1], ",") {
				k, _, _ := strings.Cut(kv, "=")
				labels = append(labels, k)
			}
		}
		for _, l := range labels {
			if !strings.Contains(row, "`"+strings.TrimSpace(l)+"`") {
				t.Errorf("docs/REFERENCE.md: %s does not name its label %s", name[1], l)
			}
		}
	}
	if len(registered) < 10 {
		t.Fatalf("read only %d metrics; the test is not looking where it should", len(registered))
	}
	for name := range rows {
		if !registered[name] {
			t.Errorf("docs/REFERENCE.md lists %s, which the gateway does not register", name)
		}
	}
}

// collectorList is a prometheus.Registerer that keeps what it is given.
type collectorList []prometheus.Collector

func (l *collectorList) Register(c prometheus.Collector) error { *l = append(*l, c); return nil }

func (l *collectorList) MustRegister(cs ...prometheus.Collector) { *l = append(*l, cs...) }

func (*collectorList) Unregister(prometheus.Collector) bool { return false }
