// @octokit/rest through the gateway, set up as README's "Client libraries"
// shows: the proxy key as octokit's token (it sends `authorization: token
// <key>`), baseUrl on the gateway. Run by clients_test.go, which starts the
// gateway (examples/clients/Caddyfile) and a fake GitHub, and sets GATEWAY
// and PROXY_API_KEY.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Octokit } from '@octokit/rest';
import { throttling } from '@octokit/plugin-throttling';

const gateway = process.env.GATEWAY;
const proxyKey = process.env.PROXY_API_KEY;
assert.ok(gateway && proxyKey, 'GATEWAY and PROXY_API_KEY must be set');

// recordingFetch is the global fetch, recording each request octokit
// sends: its URL, its Authorization, when it left and what came back.
// More than 20 requests means a retry loop: it fails instead.
function recordingFetch() {
  const log = [];
  const fetchFn = async (url, init = {}) => {
    if (log.length >= 20) throw new Error('more than 20 requests: octokit is looping');
    const entry = { url: String(url), authorization: new Headers(init.headers).get('authorization'), sent: Date.now() };
    log.push(entry);
    const res = await fetch(url, init);
    entry.status = res.status;
    entry.got = Date.now();
    return res;
  };
  return { log, fetch: fetchFn };
}

test('default auth and octokit.paginate over 3 pages stay on the gateway', { timeout: 60_000 }, async () => {
  const rec = recordingFetch();
  const octokit = new Octokit({ auth: proxyKey, baseUrl: `${gateway}/proxy/github`, request: { fetch: rec.fetch } });

  const { data: user } = await octokit.rest.users.getAuthenticated();
  assert.equal(user.login, 'octocat');
  assert.equal(rec.log[0].authorization, `token ${proxyKey}`, "octokit's default scheme");

  const issues = await octokit.paginate(octokit.rest.issues.listForRepo, { owner: 'o', repo: 'r', per_page: 2 });
  assert.deepEqual(issues.map((i) => i.number), [1, 2, 3, 4, 5, 6]);
  const pages = rec.log.slice(1);
  assert.deepEqual(pages.map((p) => p.status), [200, 200, 200], 'three pages');
  for (const p of pages) {
    assert.ok(p.url.startsWith(`${gateway}/proxy/github/`), `page ${p.url} left the gateway`);
    assert.equal(p.authorization, `token ${proxyKey}`);
  }
  // Pages 2 and 3 are the upstream's Link URLs, rewritten to the gateway.
  assert.equal(pages[1].url, `${gateway}/proxy/github/repositories/42/issues?per_page=2&page=2`);
  assert.equal(pages[2].url, `${gateway}/proxy/github/repositories/42/issues?per_page=2&page=3`);
});

test("the throttling plugin waits out the gateway's 429 once, then succeeds", { timeout: 60_000 }, async () => {
  const rec = recordingFetch();
  const limits = [];
  const MyOctokit = Octokit.plugin(throttling);
  const octokit = new MyOctokit({
    auth: proxyKey,
    baseUrl: `${gateway}/proxy/github-tight`, // rate_limit 1 1s
    request: { fetch: rec.fetch },
    throttle: {
      onRateLimit: (retryAfter, options, _octokit, retryCount) => {
        limits.push({ retryAfter, retryCount, url: options.url });
        return retryCount === 0; // retry once
      },
      onSecondaryRateLimit: (retryAfter) => {
        limits.push({ secondary: true, retryAfter });
        return false;
      },
    },
  });

  const first = await octokit.rest.users.getByUsername({ username: 'octocat' });
  assert.equal(first.status, 200);
  const second = await octokit.rest.users.getByUsername({ username: 'octocat' });
  assert.equal(second.data.login, 'octocat');

  assert.deepEqual(rec.log.map((e) => e.status), [200, 429, 200], 'one refusal, then the retry succeeds');
  assert.equal(limits.length, 1, `onRateLimit called ${limits.length} times: ${JSON.stringify(limits)}`);
  const [limit] = limits;
  assert.ok(!limit.secondary, 'a primary rate limit (x-ratelimit-remaining: 0), not a secondary one');
  assert.equal(limit.retryCount, 0);
  // x-ratelimit-reset is epoch seconds: the window (1 s) ends within 2 s
  // (rounded up to the second), plus the second octokit adds. Seconds
  // until the reset there would give a retryAfter of 0 (an immediate
  // retry, refused again).
  assert.ok(limit.retryAfter >= 1 && limit.retryAfter <= 3, `retryAfter ${limit.retryAfter}`);
  const waited = rec.log[2].sent - rec.log[1].got;
  assert.ok(waited >= limit.retryAfter * 1000 - 20, `retried after ${waited} ms, told ${limit.retryAfter} s`);
});
