// @discordjs/rest through the gateway, set up as README's "Client
// libraries" shows: the proxy key as the token (it sends `Authorization:
// Bot <key>`), api on the gateway. Run by clients_test.go, which starts the
// gateway (examples/clients/Caddyfile) and a fake Discord, and sets GATEWAY
// and PROXY_API_KEY.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { REST } from '@discordjs/rest';

const gateway = process.env.GATEWAY;
const proxyKey = process.env.PROXY_API_KEY;
assert.ok(gateway && proxyKey, 'GATEWAY and PROXY_API_KEY must be set');

const channel = '1100000000000000000';

// record logs every response the REST manager gets (its 'response'
// event), with the headers it sent, and every wait for a bucket (its
// 'rateLimited' event); limitHook, given as its
// rejectOnRateLimit, logs every rate limit it meets and answers "wait,
// don't reject".
function record(rest, log = { responses: [], limits: [], waits: [] }) {
  rest.on('response', (request, response) => {
    log.responses.push({ path: request.path, status: response.status, headers: request.options.headers, at: Date.now() });
  });
  rest.on('rateLimited', (info) => log.waits.push(info));
  return log;
}

function limitHook(log) {
  return (info) => {
    log.limits.push(info);
    return false;
  };
}

test('a message create with the default setup', { timeout: 60_000 }, async () => {
  const rest = new REST({ api: `${gateway}/proxy/discord` }).setToken(proxyKey);
  const log = record(rest);
  const msg = await rest.post(`/channels/${channel}/messages`, { body: { content: 'hello through the gateway' } });
  assert.equal(msg.content, 'hello through the gateway');
  assert.equal(msg.channel_id, channel);
  assert.equal(log.responses.length, 1);
  assert.equal(log.responses[0].headers.Authorization, `Bot ${proxyKey}`, "discord.js's default scheme");
});

test("the gateway's 429 is waited out once, then the call succeeds", { timeout: 60_000 }, async () => {
  const log = { responses: [], limits: [], waits: [] };
  const rest = new REST({ api: `${gateway}/proxy/discord-tight`, rejectOnRateLimit: limitHook(log) }).setToken(proxyKey); // rate_limit 1 1s
  record(rest, log);
  const first = await rest.get('/users/@me');
  assert.equal(first.username, 'gatewaybot');
  const second = await rest.get('/users/@me');
  assert.equal(second.username, 'gatewaybot');

  assert.deepEqual(log.responses.map((r) => r.status), [200, 429, 200], 'one refusal, then the retry succeeds');
  // The refusal as discord.js read it: Discord's 429 of a shared limit,
  // not a global one, with Retry-After (plus discord.js's 50 ms offset).
  const [refusal] = log.limits;
  assert.equal(refusal.global, false);
  assert.equal(refusal.scope, 'shared', "the service limit is shared by the gateway's clients");
  assert.ok(refusal.retryAfter >= 1_000 && refusal.retryAfter <= 2_050, `retryAfter ${refusal.retryAfter} ms`);
  // It then waits once, for the bucket the 429 emptied (X-RateLimit-
  // Remaining 0 and Reset-After; its rateLimited event, reported to the
  // hook a second time), and retries when the window has passed.
  assert.equal(log.waits.length, 1, `waited ${log.waits.length} times`);
  assert.ok(log.limits.length <= 2, `rate limited ${log.limits.length} times: ${JSON.stringify(log.limits)}`);
  const waited = log.responses[2].at - log.responses[1].at;
  assert.ok(waited >= refusal.retryAfter - 50 - 20, `retried after ${waited} ms, told ${refusal.retryAfter} ms`);
});

test('a webhook execute goes without Authorization; the proxy key in a header', { timeout: 60_000 }, async () => {
  // As WebhookClient does: no bot token, `auth: false`.
  const rest = new REST({ api: `${gateway}/proxy/discord`, headers: { 'X-API-Key': proxyKey } });
  const log = record(rest);
  const msg = await rest.post('/webhooks/123/hook-token', {
    body: { content: 'from a webhook' },
    auth: false,
    query: new URLSearchParams({ wait: 'true' }),
  });
  assert.equal(msg.content, 'from a webhook');
  assert.equal(msg.webhook_id, '123');
  assert.equal(log.responses[0].headers.Authorization, undefined);
});

test('a webhook execute goes without Authorization; the proxy key in the query', { timeout: 60_000 }, async () => {
  const rest = new REST({ api: `${gateway}/proxy/discord` });
  const log = record(rest);
  const msg = await rest.post('/webhooks/123/hook-token', {
    body: { content: 'from a webhook, key in the URL' },
    auth: false,
    query: new URLSearchParams({ wait: 'true', api_key: proxyKey }),
  });
  assert.equal(msg.content, 'from a webhook, key in the URL');
  assert.equal(log.responses[0].headers.Authorization, undefined);
  // Without ?wait=true, Discord answers 204 (discord.js: an empty buffer).
  const none = await rest.post('/webhooks/123/hook-token', { body: { content: 'no wait' }, auth: false, query: new URLSearchParams({ api_key: proxyKey }) });
  assert.equal(none.byteLength, 0);
  assert.equal(log.responses[1].status, 204);
});
