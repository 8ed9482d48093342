// Continuous batching through the openai client: requests batched together give exactly what they give alone,
// requests that arrive while others run are admitted at once, and prefix-cache hits are reported and change
// nothing in the output.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { clientFor, collectStream, readMetrics, serverFor, waitForMetrics } from './harness.mjs';

const bounded = { timeout: 90_000 };
const greedy = { temperature: 0 };
const noEos = { 2: -100 };  // stories260K's end-of-sequence token

const animals = ['cat', 'dog', 'bird', 'fish', 'frog', 'bunny', 'bear', 'duck'];
// 32 prompts of different lengths (a few long enough to be evaluated in several chunks) and lengths to generate,
// each long enough that the requests overlap in the engine however slowly the client sends them.
function requestFor(i) {
  const animal = animals[i % animals.length];
  let prompt = `Once upon a time, there was a ${animal} named ${['Tim', 'Sue', 'Max', 'Lily'][i % 4]}.`;
  if (i % 5 === 0) prompt = `${prompt} The ${animal} liked to play in the park with a big red ball.`.repeat(1 + i / 5);
  return { model: 'm', prompt, max_tokens: 48 + ((i * 13) % 57), logit_bias: noEos, ...greedy };
}

test('32 concurrent streams give each exactly the tokens it gets alone (greedy)', bounded, async (t) => {
  // A small step budget makes the long prompts arrive in chunks beside the other streams' decode steps.
  const server = await serverFor(t, ['-b', '32']);
  const client = clientFor(server);
  const requests = Array.from({ length: 32 }, (_, i) => requestFor(i));
  const alone = [];
  for (const request of requests) alone.push(await collectStream(await client.completions.create({ ...request, stream: true })));

  // Steps that ran more than 8 sequences together, from the server's histogram of sequences per step.
  const bigSteps = (m) => m.tessera_step_sequences_count - m['tessera_step_sequences_bucket{le="8"}'];
  const before = await readMetrics(server.url);
  const together = await Promise.all(requests.map(async (request) => collectStream(
    await client.completions.create({ ...request, stream: true, stream_options: { include_usage: true } }))));
  const after = await readMetrics(server.url);

  for (let i = 0; i < requests.length; ++i) {
    assert.equal(together[i].texts[0], alone[i].texts[0], `request ${i}`);
    assert.deepEqual(together[i].finishes, alone[i].finishes, `request ${i}`);
    const { usage } = together[i].chunks.at(-1);
    assert.equal(usage.completion_tokens, requests[i].max_tokens, `request ${i}`);
  }
  assert.ok(alone.every((a) => a.finishes[0] === 'length'));
  // They did run as one batch: many were in the engine at once.
  assert.ok(bigSteps(after) - bigSteps(before) > 0, `no step ran more than 8 sequences: ${JSON.stringify(after)}`);
});

test('a request that arrives while another runs is admitted and finishes first', bounded, async (t) => {
  const server = await serverFor(t);
  const client = clientFor(server);
  const events = [];
  const long = (async () => {
    const stream = await client.completions.create({ model: 'm', prompt: 'Once upon a time', max_tokens: 1900,
      logit_bias: noEos, stream: true, ...greedy });
    let n = 0;
    let short;
    for await (const chunk of stream) {
      // Once the long one is generating, the short one is sent.
      if (++n === 20) short = sendShort();
      if (chunk.choices[0].finish_reason) events.push(`long finished after ${n} chunks`);
    }
    return short;
  })();
  async function sendShort() {
    const reply = await client.completions.create({ model: 'm', prompt: 'The cat', max_tokens: 5, ...greedy });
    events.push('short finished');
    return reply;
  }
  const short = await (await long);
  assert.equal(short.usage.completion_tokens, 5);
  assert.equal(events[0], 'short finished', events.join(', '));
  assert.match(events[1], /^long finished/);
});

test('prefix-cache hits are reported in usage and /metrics and give the same output as misses', bounded, async (t) => {
  const server = await serverFor(t);
  const client = clientFor(server);
  const prompt = 'The quick brown fox jumps over the lazy dog. Once upon a time, in a small village,';
  const body = { model: 'm', prompt, max_tokens: 30, ...greedy };
  const before = await readMetrics(server.url);
  const miss = await client.completions.create(body);
  assert.equal(miss.usage.prompt_tokens_details.cached_tokens, 0);
  const afterMiss = await waitForMetrics(server.url, (m) => m['tessera_requests_total{status="ok"}'] === 1);
  const hit = await client.completions.create(body);
  const cached = hit.usage.prompt_tokens_details.cached_tokens;
  assert.ok(cached > 0 && cached < hit.usage.prompt_tokens, `cached ${cached} of ${hit.usage.prompt_tokens}`);
  assert.equal(hit.choices[0].text, miss.choices[0].text);
  const afterHit = await waitForMetrics(server.url, (m) => m['tessera_requests_total{status="ok"}'] === 2);
  assert.equal(afterMiss.tessera_prefix_cache_hit_tokens_total, before.tessera_prefix_cache_hit_tokens_total);
  assert.equal(afterHit.tessera_prefix_cache_hit_tokens_total - afterMiss.tessera_prefix_cache_hit_tokens_total, cached);
  assert.equal(afterHit.tessera_prompt_tokens_total - afterMiss.tessera_prompt_tokens_total, hit.usage.prompt_tokens);

  // A longer prompt that starts with the cached one: a partial hit, and the same text as on a fresh server.
  const longer = { ...body, prompt: `${prompt} there lived a little girl` };
  const partial = await collectStream(await client.completions.create({ ...longer, stream: true,
    stream_options: { include_usage: true } }));
  const partialCached = partial.chunks.at(-1).usage.prompt_tokens_details.cached_tokens;
  assert.ok(partialCached >= cached, `cached ${partialCached}`);
  const fresh = await serverFor(t);
  const freshReply = await clientFor(fresh).completions.create(longer);
  assert.equal(freshReply.usage.prompt_tokens_details.cached_tokens, 0);
  assert.equal(partial.texts[0], freshReply.choices[0].text);
});
