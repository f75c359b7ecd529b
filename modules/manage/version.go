package manage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/Masterminds/semver/v3"
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/byteproxy/byteproxy/internal/httpx"
	"github.com/byteproxy/byteproxy/modules/gateway"
)

// How often the release feed is read. A check runs only when /version/check
// is asked and the last result is older than this, in its own goroutine
// with its own timeout, so it never blocks startup or a reload.
var (
	updateCheckEvery      = 6 * time.Hour
	updateCheckRetryAfter = 15 * time.Minute // after a failed read
	updateCheckTimeout    = 10 * time.Second
	// updateCheckWait bounds how long a request waits for a check in
	// flight before it answers with what is known.
	updateCheckWait = 5 * time.Second
)

// maxFeedBytes caps the feed body (a GitHub releases page is ~100 KiB).
const maxFeedBytes = 4 << 20

// serveVersionCheck answers /version/check with c, the checker of the
// app's update_check feed (nil when none is configured).
func serveVersionCheck(w http.ResponseWriter, r *http.Request, c *updateChecker) error {
	if c == nil {
		return httpx.WriteJSON(w, http.StatusOK, map[string]any{
			"currentVersion": "v" + gateway.Version,
			"checked":        false,
			"message":        "no update_check configured",
		})
	}
	res := c.result(r.Context())
	return httpx.WriteJSON(w, http.StatusOK, res.body())
}

// checkers holds an update checker per feed URL while a config uses it,
// so the last result survives a config reload and a reload does not
// trigger a new fetch.
var checkers = caddy.NewUsagePool()

// acquireChecker returns the checker of feed; pair it with
// releaseChecker.
func acquireChecker(feed string, logger *zap.Logger) (*updateChecker, error) {
	v, _, err := checkers.LoadOrNew(feed, func() (caddy.Destructor, error) {
		return &updateChecker{feed: feed, client: &http.Client{Timeout: updateCheckTimeout}}, nil
	})
	if err != nil {
		return nil, err
	}
	c := v.(*updateChecker)
	if logger != nil {
		c.mu.Lock()
		c.logger = logger // the newest config's
		c.mu.Unlock()
	}
	return c, nil
}

func releaseChecker(c *updateChecker) {
	if c != nil {
		_, _ = checkers.Delete(c.feed)
	}
}

// updateChecker reads one release feed at most every updateCheckEvery.
// A fetch in flight when the last config lets go of it ends on its own
// timeout.
type updateChecker struct {
	feed   string
	client *http.Client

	mu      sync.Mutex
	logger  *zap.Logger
	last    checkResult
	next    time.Time     // no fetch before this
	running chan struct{} // closed when the fetch in flight ends; nil if none
}

// checkResult is what the last fetch found.
type checkResult struct {
	checkTime time.Time // zero: never checked
	latest    *release  // the last release read successfully, if any
	err       error     // the last fetch's error
}

// release is the part of a GitHub release the check needs.
type release struct {
	TagName     string    `json:"tag_name"`
	HTMLURL     string    `json:"html_url"`
	Prerelease  bool      `json:"prerelease"`
	Draft       bool      `json:"draft"`
	PublishedAt time.Time `json:"published_at"`
}

// Destruct lets a checker live in a caddy.UsagePool; it holds nothing to
// close (its client keeps no idle connection past a fetch).
func (c *updateChecker) Destruct() error {
	c.client.CloseIdleConnections()
	return nil
}

// result returns the latest result, starting a fetch in the background if
// the last one is stale; it waits for a fetch in flight at most
// updateCheckWait (or until the request ends).
func (c *updateChecker) result(ctx context.Context) checkResult {
	c.mu.Lock()
	if c.running == nil && !time.Now().Before(c.next) {
		c.running = make(chan struct{})
		go c.fetch(c.running)
	}
	running := c.running
	c.mu.Unlock()
	if running != nil {
		t := time.NewTimer(updateCheckWait)
		select {
		case <-running:
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

func (c *updateChecker) fetch(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), updateCheckTimeout)
	defer cancel()
	rel, err := c.read(ctx)
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last.checkTime = now
	c.last.err = err
	if err == nil {
		c.last.latest = rel
		c.next = now.Add(updateCheckEvery)
	} else {
		c.next = now.Add(updateCheckRetryAfter)
		if c.logger != nil {
			c.logger.Warn("update check failed", zap.String("feed_host", hostOf(c.feed)), zap.Error(err))
		}
	}
	c.running = nil
	close(done)
}

// read fetches the feed: a GitHub releases list (/repos/o/r/releases) or
// a single release (/repos/o/r/releases/latest).
func (c *updateChecker) read(ctx context.Context) (*release, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.feed, nil)
	if err != nil {
		return nil, fmt.Errorf("update_check URL: %w", err)
	}
	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("User-Agent", "ByteProxy/"+gateway.Version)
	resp, err := c.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL could carry credentials; the host is logged instead
		}
		return nil, fmt.Errorf("reading release feed: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("release feed answered %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxFeedBytes))
	if err != nil {
		return nil, fmt.Errorf("reading release feed: %w", err)
	}
	return pickRelease(body)
}

// pickRelease returns the highest stable release of a feed (or the newest
// prerelease when the feed has no stable one). Drafts and tags that are not
// semantic versions are skipped.
func pickRelease(body []byte) (*release, error) {
	var list []release
	if err := json.Unmarshal(body, &list); err != nil {
		var one release
		if err2 := json.Unmarshal(body, &one); err2 != nil || one.TagName == "" {
			return nil, fmt.Errorf("release feed is not a GitHub releases document: %w", err)
		}
		list = []release{one}
	}
	var best, bestPre *release
	var bestV, bestPreV *semver.Version
	for i := range list {
		rel := &list[i]
		v, err := semver.NewVersion(rel.TagName)
		if rel.Draft || err != nil {
			continue
		}
		if rel.Prerelease || v.Prerelease() != "" {
			if bestPre == nil || v.GreaterThan(bestPreV) {
				bestPre, bestPreV = rel, v
			}
			continue
		}
		if best == nil || v.GreaterThan(bestV) {
			best, bestV = rel, v
		}
	}
	if best == nil {
		best = bestPre
	}
	if best == nil {
		return nil, errors.New("release feed lists no release with a semantic version tag")
	}
	return best, nil
}

// body is the JSON answer. Without a successful read, isLatest is null:
// the original claimed isLatest:true with no network.
func (res checkResult) body() map[string]any {
	out := map[string]any{
		"currentVersion":   "v" + gateway.Version,
		"checked":          !res.checkTime.IsZero(),
		"latestVersion":    nil,
		"latestReleaseUrl": nil,
		"isLatest":         nil,
		"isPrerelease":     false,
		"releaseDate":      nil,
		"updateAvailable":  false,
		"checkTime":        nil,
	}
	if !res.checkTime.IsZero() {
		out["checkTime"] = res.checkTime.UTC().Format(time.RFC3339)
	} else {
		out["message"] = "the release feed has not been read yet"
	}
	if res.err != nil {
		out["error"] = res.err.Error()
	}
	if rel := res.latest; rel != nil {
		// "v" and the version, as currentVersion, /version and /health
		// write it, whether the tag has the "v" or not.
		out["latestVersion"] = "v" + strings.TrimPrefix(rel.TagName, "v")
		out["latestReleaseUrl"] = rel.HTMLURL
		out["isPrerelease"] = rel.Prerelease
		if !rel.PublishedAt.IsZero() {
			out["releaseDate"] = rel.PublishedAt.UTC().Format(time.RFC3339)
		}
		cur, err1 := semver.NewVersion(gateway.Version)
		lat, err2 := semver.NewVersion(rel.TagName)
		if err1 == nil && err2 == nil {
			out["isLatest"] = !cur.LessThan(lat)
			out["updateAvailable"] = cur.LessThan(lat)
		}
	}
	return out
}

func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Host
}
