package services

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-github/v84/github"

	"github.com/byteproxy/byteproxy/internal/testutil"
	"github.com/byteproxy/byteproxy/internal/testutil/fakeapi"
)

// The proxy key the clients of these tests hold, and the gateway's GitHub
// token (tokens["GITHUB_TOKEN"]) that only the gateway holds.
const linksProxyKey = "proxy-key-links-0123456789abcdef"

// fakeGitHub is fakeapi's GitHub (Link headers with absolute URLs on its
// own base URL in GitHub's /repositories/{id}/ form, a 301 for a renamed
// repository, a 302 to another host for an archive, a 201 with Location),
// plus the paths of the other services these tests put on the same
// upstream.
type fakeGitHub struct {
	*fakeapi.GitHub
}

const fakePerPage = 2 // three pages of fakeapi.Issues

func newFakeGitHub(t *testing.T) *fakeGitHub {
	f := &fakeGitHub{}
	f.GitHub = fakeapi.NewGitHub(t, tokens["GITHUB_TOKEN"], http.HandlerFunc(f.other))
	return f
}

func (f *fakeGitHub) other(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	switch p := r.URL.Path; {
	case p == "/elsewhere":
		w.Header().Set("Link", `<https://other.example.invalid/api/x?page=2>; rel="next"`)
		fmt.Fprint(w, `[]`)
	case p == "/q/items":
		// A service with a query credential whose upstream echoes it.
		page, _ := strconv.Atoi(r.URL.Query().Get("page"))
		w.Header().Set("Link", fmt.Sprintf(`<%s/q/items?key=%s&page=%d>; rel="next"`, f.Srv.URL, url.QueryEscape(r.URL.Query().Get("key")), max(page, 1)+1))
		fmt.Fprint(w, `[]`)
	case strings.HasPrefix(p, "/api/"):
		fmt.Fprint(w, `{"ok":true}`) // the discord service with a moved base URL
	default:
		http.NotFound(w, r)
	}
}

// assertGatewayCredentials checks that every request that reached the fake
// came through the gateway: with the gateway's GitHub token, never with the
// client's proxy key.
func (f *fakeGitHub) assertGatewayCredentials(t *testing.T) {
	t.Helper()
	for _, r := range f.Requests() {
		if strings.HasPrefix(r.Path, "/q/") || strings.HasPrefix(r.Path, "/api/") {
			continue // other services
		}
		authz, apiKey := r.Header.Get("Authorization"), r.Header.Get("X-Api-Key")
		if authz != "Bearer "+tokens["GITHUB_TOKEN"] || apiKey != "" ||
			strings.Contains(authz+r.RawQuery, linksProxyKey) {
			t.Errorf("%s %s?%s reached the upstream with Authorization %q, X-API-Key %q: not through the gateway",
				r.Method, r.Path, r.RawQuery, authz, apiKey)
		}
	}
}

const linksCaddyfile = `{
	servers :{{TRUSTED}} {
		trusted_proxies static 127.0.0.0/8
	}
	byteproxy {
		lean_path {{LEAN}}
		auth proxy {
			key ` + linksProxyKey + `
		}
		auth management {
			key manage-key-links-0123456789abcdef
		}
		service github {
			base_url http://{{UP}}/
		}
		service qry {
			base_url http://{{UP}}/q/
			auth query key {env.T_QUERY}
		}
		service discord {
			base_url http://{{UP}}/api/
		}
	}
}

:{{PORT}} {
	byteproxy
}

# The gateway mounted under a prefix that Caddy strips.
http://127.0.0.1:{{MOUNT}} {
	handle_path /edge/api/* {
		byteproxy
	}
}

# Behind a proxy Caddy trusts: X-Forwarded-Proto counts.
http://127.0.0.1:{{TRUSTED}} {
	byteproxy
}
`

type linksGateway struct {
	in               *testutil.Instance
	up               *fakeGitHub
	mounted, trusted string // base URLs of the other two sites
}

func startLinksGateway(t *testing.T, lean bool) *linksGateway {
	t.Helper()
	g := &linksGateway{up: newFakeGitHub(t)}
	mount, trusted := testutil.FreePort(t), testutil.FreePort(t)
	g.mounted, g.trusted = fmt.Sprintf("http://127.0.0.1:%d/edge/api", mount), fmt.Sprintf("http://127.0.0.1:%d", trusted)
	cf := strings.NewReplacer("{{UP}}", strings.TrimPrefix(g.up.Srv.URL, "http://"), "{{MOUNT}}", fmt.Sprint(mount),
		"{{TRUSTED}}", fmt.Sprint(trusted), "{{LEAN}}", map[bool]string{true: "on", false: "off"}[lean]).Replace(linksCaddyfile)
	g.in = testutil.Start(t, cf, testutil.Options{Env: tokenEnv()})
	return g
}

// goGitHub is the real go-github client, pointed at the gateway's GitHub
// service under site (the gateway's URL, with its mount prefix) and
// holding the proxy key, as a user sets it up.
func goGitHub(t *testing.T, site string) *github.Client {
	t.Helper()
	c := github.NewClient(nil).WithAuthToken(linksProxyKey)
	u, err := url.Parse(site + "/proxy/github/")
	if err != nil {
		t.Fatal(err)
	}
	c.BaseURL = u
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var nextLink = regexp.MustCompile(`<([^>]*)>;\s*rel="next"`)

// TestLinksThroughGateway drives the real go-github client through a real
// gateway (lean path on and off) against a GitHub-like upstream whose
// Link and Location headers name its own URL.
func TestLinksThroughGateway(t *testing.T) {
	for _, lean := range []bool{true, false} {
		t.Run(map[bool]string{true: "lean", false: "lean_path_off"}[lean], func(t *testing.T) {
			g := startLinksGateway(t, lean)
			site := strings.TrimSuffix(g.in.URL(""), "/")
			t.Run("PaginationByLink", func(t *testing.T) { testPagination(t, g, site) })
			t.Run("PaginationUnderMountPrefix", func(t *testing.T) { testPagination(t, g, g.mounted) })
			t.Run("RedirectFollowedByGoGitHub", func(t *testing.T) { testRenamedRepo(t, g, site) })
			t.Run("RedirectFollowedUnderMountPrefix", func(t *testing.T) { testRenamedRepo(t, g, g.mounted) })
			t.Run("CreatedLocation", func(t *testing.T) { testCreated(t, g, site) })
			t.Run("OtherHostUntouched", func(t *testing.T) { testOtherHost(t, g, site) })
			t.Run("QueryCredentialNotHandedOut", func(t *testing.T) { testQueryCredentialLink(t, g, site) })
			t.Run("TrustedForwardedProto", func(t *testing.T) { testForwardedProto(t, g) })
			g.up.assertGatewayCredentials(t)
			assertNoSecrets(t, "gateway log", g.in.Logs())
		})
	}
}

// testPagination walks three pages twice: by go-github's NextPage, and by
// the Link header's next URL as octokit.paginate and PyGithub do (with
// go-github's NewRequest, which takes an absolute URL as it is).
func testPagination(t *testing.T, g *linksGateway, site string) {
	ctx := testCtx(t)
	gh := goGitHub(t, site)
	before := len(g.up.Requests())

	opts := &github.IssueListByRepoOptions{ListOptions: github.ListOptions{PerPage: fakePerPage}}
	var numbers []int
	for page := 0; page < 10; page++ { // bounded: three pages expected
		issues, resp, err := gh.Issues.ListByRepo(ctx, "o", "r", opts)
		if err != nil {
			t.Fatalf("page %d: %v", page+1, err)
		}
		for _, is := range issues {
			numbers = append(numbers, is.GetNumber())
		}
		if resp.NextPage == 0 {
			break
		}
		opts.ListOptions.Page = resp.NextPage
	}
	if fmt.Sprint(numbers) != "[1 2 3 4 5 6]" {
		t.Errorf("by NextPage: issues %v", numbers)
	}

	numbers = nil
	req, err := gh.NewRequest("GET", "repos/o/r/issues?per_page=2", nil)
	if err != nil {
		t.Fatal(err)
	}
	pages := 0
	for ; pages < 10; pages++ {
		var issues []*github.Issue
		resp, err := gh.Do(ctx, req, &issues)
		if err != nil {
			t.Fatalf("page %d (%s): %v", pages+1, req.URL, err)
		}
		for _, is := range issues {
			numbers = append(numbers, is.GetNumber())
		}
		link := resp.Header.Get("Link")
		if pages > 0 && !strings.Contains(link, `rel="prev"`) {
			t.Errorf("page %d: Link %q lost its other relations", pages+1, link)
		}
		m := nextLink.FindStringSubmatch(link)
		if m == nil {
			break
		}
		want := site + "/proxy/github/repositories/42/issues?per_page=2&page="
		if !strings.HasPrefix(m[1], want) {
			t.Fatalf("page %d: next link %q, want the gateway's %s...", pages+1, m[1], want)
		}
		if strings.Contains(link, g.up.Srv.URL) {
			t.Errorf("page %d: Link %q names the upstream", pages+1, link)
		}
		if req, err = gh.NewRequest("GET", m[1], nil); err != nil {
			t.Fatal(err)
		}
	}
	if pages != 2 || fmt.Sprint(numbers) != "[1 2 3 4 5 6]" {
		t.Errorf("by Link: %d next links, issues %v", pages, numbers)
	}
	if n := len(g.up.Requests()) - before; n != 6 {
		t.Errorf("%d requests reached the upstream, want 6", n)
	}
	g.up.assertGatewayCredentials(t)
}

// testRenamedRepo: GitHub answers 301 for a renamed repository. net/http
// (under go-github's Repositories.Get) and go-github's own redirect
// following (GetArchiveLink: 301s followed, the 302 to another host
// returned) both stay on the gateway.
func testRenamedRepo(t *testing.T, g *linksGateway, site string) {
	ctx := testCtx(t)
	gh := goGitHub(t, site)
	before := g.up.Seen("GET", "/repositories/42")
	repo, _, err := gh.Repositories.Get(ctx, "o", "old-name")
	if err != nil {
		t.Fatalf("Repositories.Get: %v", err)
	}
	if repo.GetName() != "new-name" || repo.GetID() != 42 {
		t.Errorf("repo %v", repo)
	}
	if g.up.Seen("GET", "/repositories/42") != before+1 {
		t.Error("the redirect target was not fetched once")
	}

	// What the client sees: a redirect, to the gateway.
	r := call(t, "GET", site+"/proxy/github/repos/o/old-name", nil, "Authorization", "Bearer "+linksProxyKey)
	if r.status != http.StatusMovedPermanently || r.header.Get("Location") != site+"/proxy/github/repositories/42" {
		t.Errorf("301: %d Location %q", r.status, r.header.Get("Location"))
	}

	link, _, err := gh.Repositories.GetArchiveLink(ctx, "o", "old-name", github.Tarball, &github.RepositoryContentGetOptions{Ref: "main"}, 3)
	if err != nil {
		t.Fatalf("GetArchiveLink: %v", err)
	}
	if got := link.String(); got != "https://codeload.example.invalid/o/new-name/legacy.tar.gz/refs/heads/main?token=signed" {
		t.Errorf("archive link %q: a URL on another host must pass unchanged", got)
	}
	g.up.assertGatewayCredentials(t)
}

// testCreated: a 201's Location names the gateway, and fetching it with
// go-github goes through the gateway.
func testCreated(t *testing.T, g *linksGateway, site string) {
	ctx := testCtx(t)
	gh := goGitHub(t, site)
	issue, resp, err := gh.Issues.Create(ctx, "o", "r", &github.IssueRequest{Title: github.Ptr("new")})
	if err != nil {
		t.Fatal(err)
	}
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusCreated || issue.GetNumber() != 7 || loc != site+"/proxy/github/repos/o/r/issues/7" {
		t.Fatalf("201: %d #%d Location %q", resp.StatusCode, issue.GetNumber(), loc)
	}
	req, err := gh.NewRequest("GET", loc, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := g.up.Seen("GET", "/repos/o/r/issues/7")
	var got github.Issue
	if _, err := gh.Do(ctx, req, &got); err != nil || got.GetNumber() != 7 {
		t.Fatalf("GET Location: %v %v", err, got)
	}
	if g.up.Seen("GET", "/repos/o/r/issues/7") != before+1 {
		t.Error("the created resource was not fetched through the gateway")
	}
	g.up.assertGatewayCredentials(t)
}

func testOtherHost(t *testing.T, g *linksGateway, site string) {
	r := call(t, "GET", site+"/proxy/github/elsewhere", nil, "Authorization", "Bearer "+linksProxyKey)
	if r.status != http.StatusOK || r.header.Get("Link") != `<https://other.example.invalid/api/x?page=2>; rel="next"` {
		t.Errorf("%d Link %q: a URL on another host must pass byte for byte", r.status, r.header.Get("Link"))
	}
}

// testQueryCredentialLink: an upstream that echoes the service's query
// credential into its Link gets it stripped; following the link through
// the gateway adds it again.
func testQueryCredentialLink(t *testing.T, g *linksGateway, site string) {
	r := call(t, "GET", site+"/proxy/qry/items?api_key="+linksProxyKey, nil)
	want := `<` + site + `/proxy/qry/items?page=2>; rel="next"`
	if r.status != http.StatusOK || r.header.Get("Link") != want {
		t.Fatalf("%d Link %q, want %q", r.status, r.header.Get("Link"), want)
	}
	next := nextLink.FindStringSubmatch(r.header.Get("Link"))[1]
	r = call(t, "GET", next, nil, "X-API-Key", linksProxyKey)
	if r.status != http.StatusOK || !strings.Contains(r.header.Get("Link"), "page=3") {
		t.Errorf("following: %d Link %q", r.status, r.header.Get("Link"))
	}
	for _, req := range g.up.Requests() {
		if req.Path == "/q/items" && !strings.Contains(req.RawQuery, "key="+url.QueryEscape(tokens["T_QUERY"])) {
			t.Errorf("upstream request %s?%s lacks the gateway's credential", req.Path, req.RawQuery)
		}
	}
	assertNoSecrets(t, "response headers", fmt.Sprint(r.header))
}

// testForwardedProto: X-Forwarded-Proto decides the scheme only from a
// proxy Caddy trusts (the trusted site), never from any client.
func testForwardedProto(t *testing.T, g *linksGateway) {
	site := strings.TrimSuffix(g.in.URL(""), "/")
	for _, c := range []struct{ base, want string }{
		{g.trusted, "https://" + strings.TrimPrefix(g.trusted, "http://")},
		{site, site},
	} {
		r := call(t, "GET", c.base+"/proxy/github/repos/o/old-name", nil,
			"Authorization", "Bearer "+linksProxyKey, "X-Forwarded-Proto", "https")
		if got := r.header.Get("Location"); got != c.want+"/proxy/github/repositories/42" {
			t.Errorf("%s: Location %q, want %s/proxy/github/repositories/42", c.base, got, c.want)
		}
	}
}

// TestPresetBaseURLMovesVersions: `service discord { base_url ... }`
// moves the preset's version URLs with it, so /proxy/discord/v10/x
// reaches the overriding host with the bot token, and the management API
// shows the effective versions.
func TestPresetBaseURLMovesVersions(t *testing.T) {
	g := startLinksGateway(t, true)
	before := g.up.Seen("GET", "/api/v10/users/@me")
	r := call(t, "GET", g.in.URL("/proxy/discord/v10/users/@me"), nil, "Authorization", "Bearer "+linksProxyKey)
	if r.status != http.StatusOK || g.up.Seen("GET", "/api/v10/users/@me") != before+1 {
		t.Fatalf("status %d, upstream saw it %d times: the v10 URL did not move with base_url", r.status, g.up.Seen("GET", "/api/v10/users/@me")-before)
	}
	for _, req := range g.up.Requests() {
		if req.Path == "/api/v10/users/@me" && req.Header.Get("Authorization") != "Bot "+tokens["DISCORD_BOT_TOKEN"] {
			t.Errorf("Authorization %q", req.Header.Get("Authorization"))
		}
	}
	want := map[string]string{"v9": g.up.Srv.URL + "/api/v9/", "v10": g.up.Srv.URL + "/api/v10/"}

	resp, body := testutil.Do(t, "GET", g.in.URL("/manage/services/discord"), nil, "Authorization", "Bearer manage-key-links-0123456789abcdef")
	var svc struct {
		Config struct {
			VersionedBaseUrls map[string]string `json:"versionedBaseUrls"`
		} `json:"config"`
	}
	if err := json.Unmarshal(body, &svc); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if fmt.Sprint(svc.Config.VersionedBaseUrls) != fmt.Sprint(want) {
		t.Errorf("/manage/services/discord versions %v, want %v (%s)", svc.Config.VersionedBaseUrls, want, body)
	}

	resp, body = testutil.Do(t, "GET", g.in.URL("/proxy/services"), nil, "Authorization", "Bearer "+linksProxyKey)
	var list struct {
		Services []struct {
			Key               string            `json:"key"`
			VersionedBaseUrls map[string]string `json:"versionedBaseUrls"`
		} `json:"services"`
	}
	if err := json.Unmarshal(body, &list); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	found := false
	for _, s := range list.Services {
		if s.Key == "discord" {
			found = true
			if fmt.Sprint(s.VersionedBaseUrls) != fmt.Sprint(want) {
				t.Errorf("/proxy/services discord versions %v, want %v", s.VersionedBaseUrls, want)
			}
		}
	}
	if !found {
		t.Errorf("/proxy/services: no discord in %s", body)
	}
}
