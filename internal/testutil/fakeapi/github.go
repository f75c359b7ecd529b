package fakeapi

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// GitHub imitates api.github.com (and uploads.github.com, on the same
// server) for one token:
//
//   - GET /user, GET /users/{login}
//   - GET /repos/o/r/issues: six issues (Issues), paginated by per_page (GitHub's
//     default 30) with a Link header whose URLs are absolute, on the fake's
//     own host, in GitHub's /repositories/{id}/ form (page 2 on is
//     /repositories/42/issues)
//   - GET /repos/o/old-name: 301 to /repositories/42, a renamed repository
//   - GET /repos/o/old-name/tarball/main: 301, then a 302 to another host
//     (codeload.example.invalid), as archive links are
//   - POST /repos/o/r/issues: 201 with Location /repos/o/r/issues/7
//   - POST /repos/{o}/{r}/releases/{id}/assets?name=: a release asset
//     upload; 201 with the asset (its size is what arrived)
//
// Every answer of a known route carries GitHub's x-ratelimit-* (epoch
// seconds in X-RateLimit-Reset). A known route without `Authorization:
// Bearer <token>` or `token <token>` gets GitHub's 401. Other paths go to
// other, if given (other services of a test sharing this upstream), else
// 404.
type GitHub struct {
	recorder
	Srv   *httptest.Server
	Token string

	calls atomic.Int64
	reset int64 // epoch seconds of the quota's reset, an hour after start
}

// Issues is how many issues o/r has.
const Issues = 6

// NewGitHub starts a fake GitHub that accepts token; other (may be nil)
// answers the paths GitHub does not have.
func NewGitHub(t testing.TB, token string, other http.Handler) *GitHub {
	g := &GitHub{Token: token, reset: time.Now().Add(time.Hour).Unix()}
	mux := http.NewServeMux()
	route := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, g.authorized(h)) }
	route("GET /user", g.user)
	route("GET /users/{login}", g.user)
	route("GET /repos/o/r/issues", g.listIssues)
	route("GET /repositories/42/issues", g.listIssues)
	route("GET /repos/o/old-name", g.redirect(http.StatusMovedPermanently, "/repositories/42"))
	route("GET /repositories/42", g.repo)
	route("GET /repos/o/old-name/tarball/main", g.redirect(http.StatusMovedPermanently, "/repositories/42/tarball/main"))
	route("GET /repositories/42/tarball/main", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", "https://codeload.example.invalid/o/new-name/legacy.tar.gz/refs/heads/main?token=signed")
		w.WriteHeader(http.StatusFound)
	})
	route("POST /repos/o/r/issues", g.createIssue)
	route("GET /repos/o/r/issues/7", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"number": 7, "title": "new"})
	})
	route("POST /repos/{owner}/{repo}/releases/{id}/assets", g.uploadAsset)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if other != nil {
			other.ServeHTTP(w, r)
			return
		}
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"})
	})
	g.Srv = start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.record(r)
		mux.ServeHTTP(w, r)
	}))
	return g
}

// URL is the fake's base URL, with a trailing slash (a service's base_url).
func (g *GitHub) URL() string { return g.Srv.URL + "/" }

// authorized answers GitHub's 401 without the token, and adds the
// x-ratelimit-* of the token's core quota to every answer.
func (g *GitHub) authorized(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		authz := r.Header.Get("Authorization")
		if authz != "Bearer "+g.Token && authz != "token "+g.Token {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"})
			return
		}
		used := g.calls.Add(1)
		hd := w.Header()
		hd.Set("X-RateLimit-Limit", "5000")
		hd.Set("X-RateLimit-Remaining", strconv.FormatInt(5000-used, 10))
		hd.Set("X-RateLimit-Used", strconv.FormatInt(used, 10))
		hd.Set("X-RateLimit-Reset", strconv.FormatInt(g.reset, 10))
		hd.Set("X-RateLimit-Resource", "core")
		h(w, r)
	})
}

func (g *GitHub) user(w http.ResponseWriter, r *http.Request) {
	login := r.PathValue("login")
	if login == "" {
		login = "octocat"
	}
	writeJSON(w, http.StatusOK, map[string]any{"login": login, "id": 583231, "type": "User"})
}

func (g *GitHub) listIssues(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	perPage, _ := strconv.Atoi(q.Get("per_page"))
	if perPage <= 0 {
		perPage = 30
	}
	page, _ := strconv.Atoi(q.Get("page"))
	page = max(page, 1)
	last := max((Issues+perPage-1)/perPage, 1)
	at := func(n int) string {
		return fmt.Sprintf("%s/repositories/42/issues?per_page=%d&page=%d", g.Srv.URL, perPage, n)
	}
	var links []string
	if page > 1 {
		links = append(links, fmt.Sprintf(`<%s>; rel="prev"`, at(page-1)), fmt.Sprintf(`<%s>; rel="first"`, at(1)))
	}
	if page < last {
		links = append(links, fmt.Sprintf(`<%s>; rel="next"`, at(page+1)), fmt.Sprintf(`<%s>; rel="last"`, at(last)))
	}
	if len(links) > 0 {
		w.Header().Set("Link", strings.Join(links, ", "))
	}
	items := []map[string]any{}
	for n := (page-1)*perPage + 1; n <= page*perPage && n <= Issues; n++ {
		items = append(items, map[string]any{"number": n, "title": fmt.Sprint("issue ", n), "state": "open"})
	}
	writeJSON(w, http.StatusOK, items)
}

// redirect answers status with a Location on the fake's own host, and
// GitHub's body for it.
func (g *GitHub) redirect(status int, path string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", g.Srv.URL+path)
		writeJSON(w, status, map[string]string{"message": http.StatusText(status), "url": g.Srv.URL + path, "documentation_url": "https://docs.github.com/rest"})
	}
}

func (g *GitHub) repo(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"id": 42, "name": "new-name", "full_name": "o/new-name"})
}

func (g *GitHub) createIssue(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Location", g.Srv.URL+"/repos/o/r/issues/7")
	writeJSON(w, http.StatusCreated, map[string]any{"number": 7, "title": "new"})
}

// uploadAsset takes the raw body as the asset, as uploads.github.com does;
// the size it reports is what arrived.
func (g *GitHub) uploadAsset(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	if name == "" {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"message": "Validation Failed: name is missing"})
		return
	}
	n, _ := io.Copy(io.Discard, r.Body)
	writeJSON(w, http.StatusCreated, map[string]any{
		"id": 1, "name": name, "state": "uploaded", "size": n,
		"content_type": r.Header.Get("Content-Type"),
		"url":          fmt.Sprintf("%s/repos/%s/%s/releases/assets/1", g.Srv.URL, r.PathValue("owner"), r.PathValue("repo")),
	})
}
