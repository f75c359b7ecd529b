package manage

import (
	"net/http"

	"github.com/byteproxy/byteproxy/modules/gateway"
)

// serveVersionCheck answers /version/check.
//
// NOT YET IMPLEMENTED: reports that no check is configured.
func serveVersionCheck(w http.ResponseWriter, r *http.Request, app *gateway.App) error {
	return gateway.WriteJSON(w, http.StatusOK, map[string]any{"currentVersion": gateway.Version, "checked": false})
}
