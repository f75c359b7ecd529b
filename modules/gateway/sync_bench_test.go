package gateway

import (
	"context"
	"fmt"
	"testing"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// BenchmarkSyncRuntime measures one pass of the sync loop over 1,000
// unchanged runtime services in file storage: what every instance pays
// each sync_interval.
func BenchmarkSyncRuntime(b *testing.B) {
	a := &App{
		RuntimeServices: &RuntimeServicesConfig{AllowPrivateUpstreams: true},
		logger:          zap.NewNop(),
		storage:         &certmagic.FileStorage{Path: b.TempDir()},
		configServices:  map[string]*Service{},
	}
	empty := map[string]*Service{}
	a.services.Store(&empty)
	ctx := context.Background()
	for i := range DefaultMaxServices {
		key := fmt.Sprintf("svc-%04d", i)
		cfg := ServiceConfig{BaseURL: fmt.Sprintf("https://api%d.example.com/v1/", i), Headers: map[string]string{"User-Agent": "bench"}}
		if _, err := a.PutRuntime(ctx, key, cfg, true); err != nil {
			b.Fatal(err)
		}
	}
	if err := a.syncRuntime(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := a.syncRuntime(ctx); err != nil {
			b.Fatal(err)
		}
	}
	if n := len(a.AllServices()); n != DefaultMaxServices {
		b.Fatalf("%d services", n)
	}
}
