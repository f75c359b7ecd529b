package gateway

import "testing"

func TestDiscordTokenRoute(t *testing.T) {
	t.Parallel()
	for tail, want := range map[string]bool{
		"webhooks/1/t":                  true,
		"v10/webhooks/1/t":              true,
		"v9/webhooks/1/t/messages/2":    true,
		"webhooks/1/t/":                 true,
		"webhooks/1/t/slack":            true,
		"interactions/1/t/callback":     true,
		"v10/interactions/1/t/callback": true,
		"webhooks/1":                    false,
		"webhooks/1/":                   false,
		"webhooks//t":                   false,
		"webhooks":                      false,
		"interactions/1/t":              false,
		"interactions/1/t/callback/x":   false,
		"interactions/1/t/callbacks":    false,
		"v10/v10/webhooks/1/t":          false,
		"vx/webhooks/1/t":               false,
		"channels/1/webhooks":           false,
		"Webhooks/1/t":                  false,
		"":                              false,
	} {
		if got := discordTokenRoute(tail); got != want {
			t.Errorf("discordTokenRoute(%q) = %v, want %v", tail, got, want)
		}
	}
}
