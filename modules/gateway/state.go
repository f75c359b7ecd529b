package gateway

import "github.com/caddyserver/caddy/v2"

// appState holds what outlives one config: the upstream budgets' engines
// and stores (budget.go) and the peer set of runtime services (runtime.go);
// internal/metrics keeps the metric collectors the same way. An App
// acquires its share in Provision and releases it in Cleanup; during a
// reload the new config acquires before the old one releases, so the state
// carries over, and the last release destroys it. Keys: "budget-store|...",
// "budget-engine|...", peersKey.
var appState = caddy.NewUsagePool()

const peersKey = "peers"
