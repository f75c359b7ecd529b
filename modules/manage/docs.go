package manage

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"hash/fnv"
	"html"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/internal/routes"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// The API page and its OpenAPI document ship inside the binary: /docs works
// offline and loads nothing from a CDN.
//
//go:embed docs/index.html docs/docs.js docs/docs.css docs/openapi.json
var docsFS embed.FS

// docAssets are built once: the page with its script and style inlined
// (each response only fills in a fresh CSP nonce) and the OpenAPI document
// with the running version.
type docAssets struct {
	page    string // index.html with {{NONCE}} and {{BASE}} left in
	spec    []byte // the document for a gateway at the site's root
	specTag string
	// The document around its server URL's mount prefix ({{BASE}}), for a
	// gateway mounted below a path.
	specHead, specTail []byte
}

var loadDocs = sync.OnceValue(func() *docAssets {
	read := func(name string) string {
		b, err := docsFS.ReadFile("docs/" + name)
		if err != nil {
			panic(err) // embedded at build time: cannot happen
		}
		return string(b)
	}
	// The replacer is one pass, so a "{{...}}" inside the script or style
	// is never substituted again.
	page := strings.NewReplacer("{{CSS}}", read("docs.css"), "{{JS}}", read("docs.js")).Replace(read("index.html"))
	spec := strings.Replace(read("openapi.json"), "{{VERSION}}", gateway.Version, 1)
	head, tail, _ := strings.Cut(spec, "{{BASE}}")
	root := []byte(head + tail)
	sum := sha256.Sum256(root)
	return &docAssets{page: page, spec: root, specTag: hex.EncodeToString(sum[:8]), specHead: []byte(head), specTail: []byte(tail)}
})

// serveDocs answers /docs, /docs/openapi.json and /docs/json. It reports
// false for any other path.
func serveDocs(w http.ResponseWriter, r *http.Request) bool {
	var serve func(http.ResponseWriter, *http.Request)
	route := r.URL.Path
	switch route {
	case routes.Docs, routes.Docs + "/":
		route, serve = routes.Docs, servePage
	case routes.DocsOpenAPI, routes.DocsJSON:
		serve = serveSpec
	default:
		return false
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		_ = methodNotAllowed(w, r, route)
		return true
	}
	serve(w, r)
	return true
}

// servePage writes the API page under a strict Content-Security-Policy:
// only the inline script and style carrying this response's nonce run, and
// the page may only talk to this gateway.
func servePage(w http.ResponseWriter, r *http.Request) {
	nonce := newNonce()
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'nonce-"+nonce+"'; style-src 'nonce-"+nonce+"'; "+
		"connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store") // the nonce must not be reused
	page := strings.NewReplacer("{{NONCE}}", nonce, "{{BASE}}", html.EscapeString(httpx.MountPrefix(r))).Replace(loadDocs().page)
	http.ServeContent(w, r, "", time.Time{}, strings.NewReader(page))
}

// serveSpec writes the OpenAPI document; its ETag lets clients revalidate.
// Its server URL is the gateway's mount prefix as this client reached it,
// so that tools that call the API from the document reach the gateway.
func serveSpec(w http.ResponseWriter, r *http.Request) {
	d := loadDocs()
	spec, tag := d.spec, d.specTag
	if prefix := httpx.MountPrefix(r); prefix != "" {
		quoted, _ := json.Marshal(prefix) // a string always marshals
		spec = slices.Concat(d.specHead, quoted[1:len(quoted)-1], d.specTail)
		f := fnv.New64a()
		_, _ = f.Write([]byte(prefix))
		tag += "-" + strconv.FormatUint(f.Sum64(), 16)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", `"`+tag+`"`)
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(spec))
}

func newNonce() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return base64.RawStdEncoding.EncodeToString(b)
}
