package gateway

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func TestCheckFraction(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		want string // "" = accepted
	}{
		{0, ""},
		{0.98, ""},
		{1, ""},
		{98, "max_cpu: 98 would mean 9,800% of GOMAXPROCS; it is a fraction between 0 and 1; did you mean 0.98?"},
		{5, "did you mean 0.05?"},
		{1.5, "max_cpu: 1.5 would mean 150% of GOMAXPROCS; it is a fraction between 0 and 1"},
		{250, "250 would mean 25,000% of GOMAXPROCS"},
		{-0.5, "want a fraction between 0 and 1"},
	} {
		err := CheckFraction("max_cpu", tc.v)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: want accepted, got %v", tc.v, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: got %v, want an error containing %q", tc.v, err, tc.want)
		case tc.v == 1.5 && strings.Contains(err.Error(), "did you mean"):
			t.Errorf("1.5: no percentage hint expected, got %v", err)
		}
	}
}

// TestAppValidate: settings out of range are refused by Validate (which
// Caddy calls after Provision), each naming its option.
func TestAppValidate(t *testing.T) {
	eleven, minus := 11, -1
	for _, c := range []struct {
		name string
		app  *App
		want string
	}{
		{"timeout", &App{Timeout: -1}, "byteproxy > timeout: must not be negative"},
		{"retries", &App{Retries: &eleven}, "byteproxy > retries: must be between 0 and 10, got 11"},
		{"retries negative", &App{Retries: &minus}, "byteproxy > retries: must be between 0 and 10, got -1"},
		{"max_services", &App{RuntimeServices: &RuntimeServicesConfig{MaxServices: -2}}, "runtime_services max_services: must be positive, got -2"},
		{"client_rate_limit", &App{ClientRateLimit: &RateLimit{}}, "byteproxy > client_rate_limit: "},
		{"auth_failures", &App{AuthFailures: &AuthFailures{MaxFailures: -1}}, "auth_failures: max_failures must not be negative"},
		{"cors origins", &App{CORS: &CORSConfig{Origins: []string{"app.example.com"}}}, `cors origins: "app.example.com" is not an origin`},
		{"cors max_age", &App{CORS: &CORSConfig{MaxAge: -1}}, "cors max_age: must not be negative"},
		{"pressure", &App{Pressure: &PressureConfig{MaxHeap: -1}}, "byteproxy > pressure > max_heap: must not be negative"},
		{"pressure max_cpu", &App{Pressure: &PressureConfig{MaxCPU: 98}}, "byteproxy > pressure > max_cpu: 98 would mean 9,800% of GOMAXPROCS"},
	} {
		err := c.app.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%s: Validate() = %v, want %q...", c.name, err, c.want)
		}
	}
	if err := new(App).Validate(); err != nil {
		t.Errorf("the zero app: %v", err)
	}
}

// TestCORSValidate: what the cors settings refuse, and what they let pass.
func TestCORSValidate(t *testing.T) {
	for _, o := range []string{"app.example.com", "https://app.example.com/path", "ftp://x", "https://user@x.example", "https://x.example?q"} {
		err := (&CORSConfig{Origins: []string{o}}).Validate()
		if err == nil || !strings.HasPrefix(err.Error(), fmt.Sprintf("cors origins: %q is not an origin", o)) {
			t.Errorf("%q: want an error naming cors origins, got %v", o, err)
		}
	}
	for _, c := range []*CORSConfig{
		nil,
		{Origins: []string{"HTTPS://App.Example.com/", "null", "http://localhost:3000"}},
		{Origins: []string{"*", "not an origin"}},            // '*' allows all; the rest is ignored
		{Disabled: true, Origins: []string{"not an origin"}}, // not used
		{MaxAge: caddy.Duration(time.Hour)},
	} {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	if err := (&CORSConfig{MaxAge: -1}).Validate(); err == nil || err.Error() != "cors max_age: must not be negative" {
		t.Errorf("negative max_age: %v", err)
	}
}

// TestPressureValidate: each refused pressure setting is named in its
// error.
func TestPressureValidate(t *testing.T) {
	for name, c := range map[string]*PressureConfig{
		"max_heap":          {MaxHeap: -1},
		"max_rss":           {MaxRSS: -1},
		"max_sched_latency": {MaxSchedLatency: -1},
		"max_cpu":           {MaxCPU: math.NaN()},
		"max_in_flight":     {MaxInFlight: -2},
		"health_check":      {HealthCheckURL: "ftp://x/"},
		"interval":          {Interval: -1},
		"retry_after":       {Disabled: true, RetryAfter: -1},
	} {
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: want an error naming it, got %v", name, err)
		}
	}
	for _, c := range []*PressureConfig{nil, {}, {MaxInFlight: -1, MaxCPU: 0.5, HealthCheckURL: "http://127.0.0.1:9/health"}} {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
}
