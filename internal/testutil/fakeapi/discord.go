package fakeapi

import (
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Discord imitates discord.com/api for one bot token, under /api/,
// /api/v9/ and /api/v10/ alike:
//
//   - GET /users/@me: the bot user
//   - POST /channels/{id}/messages: a message created from a JSON body or
//     a multipart/form-data one (payload_json and files[n]), as Discord
//     takes both; the answer lists the attachments with the sizes that
//     arrived
//   - POST /webhooks/{id}/{token}: a webhook execute, authenticated by the
//     token in the path: 204, or the message with ?wait=true
//
// The bot routes answer Discord's 401 without `Authorization: Bot
// <token>`. Every answer of a known route carries Discord's per-route
// rate-limit headers (X-RateLimit-Limit 5, Remaining 4, Reset in epoch
// seconds with a fraction, Reset-After, Bucket), never at 0, so a client
// library passes them and never waits because of the fake.
type Discord struct {
	recorder
	Srv   *httptest.Server
	Token string

	ids atomic.Int64
}

// discordPrefix is Discord's API root and an optional version segment.
var discordPrefix = regexp.MustCompile(`^/api(/v[0-9]+)?/`)

// NewDiscord starts a fake Discord that accepts the bot token token.
func NewDiscord(t testing.TB, token string) *Discord {
	d := &Discord{Token: token}
	d.ids.Store(1_300_000_000_000_000_000)
	mux := http.NewServeMux()
	mux.Handle("GET /users/@me", d.bot(d.me))
	mux.Handle("POST /channels/{channel}/messages", d.bot(d.createMessage))
	mux.HandleFunc("POST /webhooks/{id}/{token}", d.executeWebhook)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]any{"message": "404: Not Found", "code": 0})
	})
	d.Srv = start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.record(r)
		loc := discordPrefix.FindStringIndex(r.URL.Path)
		if loc == nil {
			writeJSON(w, http.StatusNotFound, map[string]any{"message": "404: Not Found", "code": 0})
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/" + r.URL.Path[loc[1]:]
		r2.URL.RawPath = ""
		d.rateLimitHeaders(w, r2.URL.Path)
		mux.ServeHTTP(w, r2)
	}))
	return d
}

// URL is the fake's API root, Discord's https://discord.com/api/.
func (d *Discord) URL() string { return d.Srv.URL + "/api/" }

// rateLimitHeaders are Discord's, in Discord's meaning.
func (d *Discord) rateLimitHeaders(w http.ResponseWriter, route string) {
	reset := time.Now().Add(time.Second)
	h := w.Header()
	h.Set("X-RateLimit-Limit", "5")
	h.Set("X-RateLimit-Remaining", "4")
	h.Set("X-RateLimit-Reset", strconv.FormatFloat(float64(reset.UnixMilli())/1000, 'f', 3, 64))
	h.Set("X-RateLimit-Reset-After", "1.000")
	h.Set("X-RateLimit-Bucket", fmt.Sprintf("%x", len(route)*7919))
}

// bot answers Discord's 401 without the bot token.
func (d *Discord) bot(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bot "+d.Token {
			writeJSON(w, http.StatusUnauthorized, map[string]any{"message": "401: Unauthorized", "code": 0})
			return
		}
		h(w, r)
	})
}

func (d *Discord) me(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"id": "80351110224678912", "username": "gatewaybot", "discriminator": "0", "bot": true})
}

func (d *Discord) createMessage(w http.ResponseWriter, r *http.Request) {
	msg, err := d.message(r, r.PathValue("channel"))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"message": "Invalid Form Body: " + err.Error(), "code": 50035})
		return
	}
	writeJSON(w, http.StatusOK, msg)
}

func (d *Discord) executeWebhook(w http.ResponseWriter, r *http.Request) {
	msg, err := d.message(r, "1200000000000000000")
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"message": "Invalid Form Body: " + err.Error(), "code": 50035})
		return
	}
	if r.URL.Query().Get("wait") != "true" {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	msg["webhook_id"] = r.PathValue("id")
	writeJSON(w, http.StatusOK, msg)
}

// message reads a message from a JSON or multipart body, as Discord does.
func (d *Discord) message(r *http.Request, channel string) (map[string]any, error) {
	var payload struct {
		Content string `json:"content"`
	}
	attachments := []map[string]any{}
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch mt {
	case "application/json":
		if err := json.NewDecoder(r.Body).Decode(&payload); err != nil {
			return nil, err
		}
	case "multipart/form-data":
		if err := r.ParseMultipartForm(1 << 20); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(r.FormValue("payload_json")), &payload); err != nil {
			return nil, fmt.Errorf("payload_json: %w", err)
		}
		for name, files := range r.MultipartForm.File {
			if !strings.HasPrefix(name, "files[") {
				continue
			}
			for _, f := range files {
				attachments = append(attachments, map[string]any{
					"id": strconv.FormatInt(d.ids.Add(1), 10), "filename": f.Filename, "size": f.Size,
					"content_type": f.Header.Get("Content-Type"),
				})
			}
		}
	default:
		_, _ = io.Copy(io.Discard, r.Body)
		return nil, fmt.Errorf("Content-Type %q", r.Header.Get("Content-Type"))
	}
	return map[string]any{
		"id": strconv.FormatInt(d.ids.Add(1), 10), "channel_id": channel, "type": 0,
		"content": payload.Content, "attachments": attachments,
		"author": map[string]any{"id": "80351110224678912", "username": "gatewaybot", "bot": true},
	}, nil
}
