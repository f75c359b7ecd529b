package auth

import (
	"net/http"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

// Status returns the JSON body of /auth-status: which scopes require keys,
// whether keys are configured, and how this request presented one. It holds
// no key material. manage serves /auth-status through it.
//
// NOT YET IMPLEMENTED: returns a placeholder body.
func Status(app *gateway.App, r *http.Request) any {
	return map[string]any{"path": r.URL.Path}
}
