package services

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bwmarrin/discordgo"
	"github.com/google/go-github/v84/github"

	"github.com/byteproxy/byteproxy/internal/testutil"
	"github.com/byteproxy/byteproxy/internal/testutil/fakeapi"
)

// The real discordgo and go-github, set up as README's "Client libraries"
// shows, upload files through a real gateway to fakes of Discord and
// GitHub that check what arrived byte for byte (issue 13, "Must show").

const uploadsProxyKey = "proxy-key-uploads-0123456789abcdef"

const uploadSize = 5 << 20 // large enough that nothing holds it in one read

const uploadsCaddyfile = `{
	byteproxy {
		auth proxy {
			key ` + uploadsProxyKey + `
		}
		service discord {
			base_url {{DISCORD}}
		}
		service github {
			base_url {{GITHUB}}
		}
		# uploads.github.com, for release assets
		service github-uploads github {
			base_url {{GITHUB}}
		}
	}
}

:{{PORT}} {
	byteproxy
}
`

type uploadsGateway struct {
	in      *testutil.Instance
	discord *fakeapi.Discord
	github  *fakeapi.GitHub
}

func startUploadsGateway(t *testing.T) *uploadsGateway {
	t.Helper()
	g := &uploadsGateway{
		discord: fakeapi.NewDiscord(t, tokens["DISCORD_BOT_TOKEN"]),
		github:  fakeapi.NewGitHub(t, tokens["GITHUB_TOKEN"], nil),
	}
	cf := strings.NewReplacer("{{DISCORD}}", g.discord.URL(), "{{GITHUB}}", g.github.URL()).Replace(uploadsCaddyfile)
	g.in = testutil.Start(t, cf, testutil.Options{Env: tokenEnv()})
	return g
}

// randomFile is n bytes that compress to nothing and repeat nowhere.
func randomFile(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{'b', 'y', 't', 'e', 'p', 'r', 'o', 'x', 'y'})
	_, _ = r.Read(b)
	return b
}

// pointDiscordgoAt points discordgo's REST endpoints at the gateway, as
// README's "Client libraries" shows (discordgo builds them from package
// variables at init, so each one used is set), and restores them.
func pointDiscordgoAt(t *testing.T, api string) {
	saved := []string{discordgo.EndpointAPI, discordgo.EndpointGuilds, discordgo.EndpointChannels,
		discordgo.EndpointUsers, discordgo.EndpointWebhooks, discordgo.EndpointApplications}
	t.Cleanup(func() {
		discordgo.EndpointAPI, discordgo.EndpointGuilds, discordgo.EndpointChannels,
			discordgo.EndpointUsers, discordgo.EndpointWebhooks, discordgo.EndpointApplications =
			saved[0], saved[1], saved[2], saved[3], saved[4], saved[5]
	})
	discordgo.EndpointAPI = api
	discordgo.EndpointGuilds = api + "guilds/"
	discordgo.EndpointChannels = api + "channels/"
	discordgo.EndpointUsers = api + "users/"
	discordgo.EndpointWebhooks = api + "webhooks/"
	discordgo.EndpointApplications = api + "applications"
}

// TestDiscordgoDefaultSetup: discordgo as every bot creates it,
// discordgo.New("Bot " + key), given the proxy key as its token and its
// endpoints pointed at the gateway, works unchanged: the gateway takes
// `Bot <proxy key>` as the proxy key and sends the bot token instead. A
// message with a 5 MiB attachment (ChannelMessageSendComplex, a multipart
// body) reaches Discord byte for byte as discordgo sent it, its boundary
// intact (the discord preset's default Content-Type must not replace the
// client's).
func TestDiscordgoDefaultSetup(t *testing.T) {
	g := startUploadsGateway(t)
	pointDiscordgoAt(t, g.in.URL("/proxy/discord/v"+discordgo.APIVersion+"/"))
	s, err := discordgo.New("Bot " + uploadsProxyKey)
	if err != nil {
		t.Fatal(err)
	}
	s.MaxRestRetries = 0 // a failure shows as one

	me, err := s.User("@me")
	if err != nil || me.Username != "gatewaybot" {
		t.Fatalf("User(@me): %v %+v\n%s", err, me, g.in.Logs())
	}
	msg, err := s.ChannelMessageSend("1100000000000000000", "hello through the gateway")
	if err != nil || msg.Content != "hello through the gateway" || msg.ChannelID != "1100000000000000000" {
		t.Fatalf("ChannelMessageSend: %v %+v", err, msg)
	}

	// The upload, with the client's side of it observed (not changed).
	sent := &sentBodies{}
	s.Client.Transport = sent
	file := randomFile(uploadSize)
	msg, err = s.ChannelMessageSendComplex("1100000000000000000", &discordgo.MessageSend{
		Content: "build 1234",
		Files:   []*discordgo.File{{Name: "build-1234.bin", ContentType: "application/octet-stream", Reader: bytes.NewReader(file)}},
	})
	if err != nil {
		t.Fatalf("ChannelMessageSendComplex: %v\n%s", err, g.in.Logs())
	}
	if len(msg.Attachments) != 1 || msg.Attachments[0].Filename != "build-1234.bin" || msg.Attachments[0].Size != uploadSize || msg.Content != "build 1234" {
		t.Fatalf("message %+v, attachments %+v", msg, msg.Attachments)
	}

	path := "/api/v" + discordgo.APIVersion + "/channels/1100000000000000000/messages"
	var upload *fakeapi.Request
	for _, r := range g.discord.Requests() {
		if r.Method == "POST" && r.Path == path && len(r.Parts) > 0 {
			upload = &r
		}
	}
	if upload == nil || upload.BadMultipart != "" {
		t.Fatalf("no readable multipart upload reached Discord (%+v)", upload)
	}
	client := sent.only(t)
	if upload.Body != client.body || upload.Header.Get("Content-Type") != client.contentType {
		t.Errorf("Discord received %d bytes sha256 %s as %q; discordgo sent %d bytes sha256 %s as %q",
			upload.Body.Len, upload.Body.SHA256, upload.Header.Get("Content-Type"), client.body.Len, client.body.SHA256, client.contentType)
	}
	if n := len(upload.Parts); n != 2 || upload.Parts[0].Name != "payload_json" || !strings.Contains(upload.Parts[0].Text, `"content":"build 1234"`) {
		t.Fatalf("parts %+v", upload.Parts)
	}
	if p := upload.Parts[1]; p.Name != "files[0]" || p.FileName != "build-1234.bin" || p.ContentType != "application/octet-stream" || p.Body != fakeapi.SumOf(file) {
		t.Errorf("file part %+v, want files[0] build-1234.bin of %d bytes sha256 %s", p, uploadSize, fakeapi.SumOf(file).SHA256)
	}

	// The client sent the proxy key under discordgo's own scheme; Discord
	// saw only the bot token.
	if client.authorization != "Bot "+uploadsProxyKey {
		t.Errorf("discordgo sent Authorization %q, want its default Bot <token>", redact(client.authorization))
	}
	for _, r := range g.discord.Requests() {
		if got := r.Header.Values("Authorization"); len(got) != 1 || got[0] != "Bot "+tokens["DISCORD_BOT_TOKEN"] {
			t.Errorf("%s %s reached Discord with %d Authorization values, want the bot token once", r.Method, r.Path, len(got))
		}
		if strings.Contains(fmt.Sprint(r.Header)+r.RawQuery, uploadsProxyKey) {
			t.Errorf("%s %s: the proxy key reached Discord", r.Method, r.Path)
		}
	}
	if n := len(g.discord.Requests()); n != 3 {
		t.Errorf("Discord saw %d requests, want 3", n)
	}
	assertNoSecrets(t, "gateway log", g.in.Logs())
}

// TestGoGitHubReleaseAssetUpload: go-github's UploadReleaseAsset streams a
// 5 MiB file (an *os.File, with its Content-Length) through the gateway's
// uploads service; GitHub receives it byte for byte, with the gateway's
// token.
func TestGoGitHubReleaseAssetUpload(t *testing.T) {
	g := startUploadsGateway(t)
	gh := github.NewClient(nil).WithAuthToken(uploadsProxyKey)
	var err error
	if gh.BaseURL, err = url.Parse(g.in.URL("/proxy/github/")); err != nil {
		t.Fatal(err)
	}
	if gh.UploadURL, err = url.Parse(g.in.URL("/proxy/github-uploads/")); err != nil {
		t.Fatal(err)
	}
	content := randomFile(uploadSize)
	name := filepath.Join(t.TempDir(), "byteproxy-linux-amd64.zip")
	if err := os.WriteFile(name, content, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	asset, resp, err := gh.Repositories.UploadReleaseAsset(testCtx(t), "o", "r", 1, &github.UploadOptions{Name: "byteproxy-linux-amd64.zip"}, f)
	if err != nil {
		t.Fatalf("UploadReleaseAsset: %v\n%s", err, g.in.Logs())
	}
	if resp.StatusCode != http.StatusCreated || asset.GetSize() != uploadSize || asset.GetName() != "byteproxy-linux-amd64.zip" || asset.GetState() != "uploaded" {
		t.Fatalf("%d asset %+v", resp.StatusCode, asset)
	}
	reqs := g.github.Requests()
	if len(reqs) != 1 {
		t.Fatalf("GitHub saw %d requests, want 1", len(reqs))
	}
	r := reqs[0]
	if r.Method != "POST" || r.Path != "/repos/o/r/releases/1/assets" || r.RawQuery != "name=byteproxy-linux-amd64.zip" {
		t.Errorf("upload reached GitHub as %s %s?%s", r.Method, r.Path, r.RawQuery)
	}
	if r.Body != fakeapi.SumOf(content) || r.Header.Get("Content-Type") != "application/zip" {
		t.Errorf("GitHub received %d bytes sha256 %s as %q, want the file's %d bytes sha256 %s as application/zip",
			r.Body.Len, r.Body.SHA256, r.Header.Get("Content-Type"), int64(uploadSize), fakeapi.SumOf(content).SHA256)
	}
	if r.Header.Get("Authorization") != "Bearer "+tokens["GITHUB_TOKEN"] || strings.Contains(fmt.Sprint(r.Header), uploadsProxyKey) {
		t.Errorf("GitHub saw Authorization %q, want the gateway's token", redact(r.Header.Get("Authorization")))
	}
	assertNoSecrets(t, "gateway log", g.in.Logs())
}

// sentBodies is a transport that records what the client sent — the
// body's length and SHA-256 as it was read off, its Content-Type and
// Authorization — and changes nothing.
type sentBodies struct {
	mu   sync.Mutex
	sent []*sentBody
}

type sentBody struct {
	contentType, authorization string
	body                       fakeapi.Sum
	h                          hash.Hash
	n                          int64
	rc                         io.ReadCloser
	closed                     chan struct{}
	once                       sync.Once
}

func (b *sentBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	b.h.Write(p[:n])
	b.n += int64(n)
	return n, err
}

func (b *sentBody) Close() error {
	b.once.Do(func() {
		b.body = fakeapi.Sum{Len: b.n, SHA256: hex.EncodeToString(b.h.Sum(nil))}
		close(b.closed)
	})
	return b.rc.Close()
}

func (s *sentBodies) RoundTrip(req *http.Request) (*http.Response, error) {
	b := &sentBody{contentType: req.Header.Get("Content-Type"), authorization: req.Header.Get("Authorization"), h: sha256.New(), closed: make(chan struct{})}
	out := req.Clone(req.Context())
	if req.Body != nil {
		b.rc = req.Body
		out.Body = b
		out.GetBody = nil
	} else {
		close(b.closed)
	}
	s.mu.Lock()
	s.sent = append(s.sent, b)
	s.mu.Unlock()
	return http.DefaultTransport.RoundTrip(out)
}

// only returns the one request sent, once its body was read whole (the
// transport closes a request body when it is done with it).
func (s *sentBodies) only(t *testing.T) *sentBody {
	t.Helper()
	s.mu.Lock()
	sent := s.sent
	s.mu.Unlock()
	if len(sent) != 1 {
		t.Fatalf("the client sent %d requests, want 1", len(sent))
	}
	select {
	case <-sent[0].closed:
	case <-time.After(30 * time.Second):
		t.Fatal("the request body was not closed in 30s")
	}
	return sent[0]
}

// redact shows a credential's scheme only.
func redact(authz string) string {
	scheme, _, _ := strings.Cut(authz, " ")
	return scheme + " …"
}
