package manage

import "net/http"

// serveDocs answers /docs, /docs/openapi.json and /docs/json. It reports
// false for any other path.
//
// NOT YET IMPLEMENTED: answers nothing until the docs issue lands.
func serveDocs(w http.ResponseWriter, r *http.Request) bool { return false }
