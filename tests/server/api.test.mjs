// Every endpoint and request field of `tessera serve` through the official openai client (streaming and not),
// on the stories260K fixture. Expected texts and token ids come from the fixture's llama.cpp goldens
// (TESSERA_FIXTURES/trained/stories260K.golden.json and README.md), not from the server itself.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';
import { clientFor, collectStream, readMetrics, runPool, serverFor, startServer } from './harness.mjs';

const bounded = { timeout: 60_000 };
const golden = JSON.parse(readFileSync(join(process.env.TESSERA_FIXTURES ?? '', 'trained', 'stories260K.golden.json')));
// From the fixtures' README: the random models' prompt with the 512-token vocabulary that stories260K has.
const foxPrompt = 'The quick brown fox jumps over the lazy dog. Once upon a time, in a small village,';
const foxTokens = [1, 291, 410, 456, 425, 417, 340, 268, 420, 327, 416, 272, 414, 444, 410, 449, 425, 423, 427, 419,
  334, 330, 265, 278, 412, 451, 422, 400, 428, 426, 403, 407, 261, 378, 432, 322, 261, 262, 423, 388, 410, 435, 290,
  421, 412, 428, 411, 432];
const greedy = { temperature: 0 };
const noEos = { 2: -100 };  // stories260K's end-of-sequence token

let server;
let client;
before(async () => {
  server = await startServer();
  client = clientFor(server);
});
after(() => server?.stop());

async function post(path, body, headers = {}) {
  const response = await fetch(`${server.url}${path}`, {
    method: 'POST', headers: { 'Content-Type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
}

// The raw SSE events of a streamed request, [DONE] included, as the server sent them.
async function rawEvents(path, body) {
  const response = await fetch(`${server.url}${path}`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }),
  });
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type'), /^text\/event-stream/);
  const text = await response.text();
  assert.ok(text.endsWith('\n\n'), 'events end with a blank line');
  return text.slice(0, -2).split('\n\n').map((event) => {
    assert.match(event, /^data: /);
    return event.slice('data: '.length);
  });
}

async function expectApiError(promise, errorClass, status, param) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof errorClass, `${error.constructor.name} (${error.message}) is a ${errorClass.name}`);
    assert.equal(error.status, status);
    assert.equal(typeof error.error?.message, 'string');
    assert.ok(error.error.message.length > 0);
    assert.ok(['invalid_request_error', 'server_error'].includes(error.type), `error type ${error.type}`);
    if (param !== undefined) assert.equal(error.param, param);
    return true;
  });
}

function assertRecentTimestamp(created) {
  assert.ok(Number.isInteger(created));
  assert.ok(Math.abs(created - Date.now() / 1000) < 120, `created ${created} is now`);
}

describe('endpoints', () => {
  test('GET /health answers 200 {"status":"ok"} once the model is loaded', bounded, async () => {
    const response = await fetch(`${server.url}/health`);
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), { status: 'ok' });
  });

  test('GET /v1/models lists the model', bounded, async () => {
    const models = [];
    for await (const model of client.models.list()) models.push(model);
    assert.equal(models.length, 1);
    assert.equal(models[0].id, 'stories260K.gguf');
    assert.equal(models[0].object, 'model');
    assert.equal(typeof models[0].owned_by, 'string');
    assertRecentTimestamp(models[0].created);
  });

  test('POST /tokenize and /detokenize agree with llama.cpp on the fixture vocabulary', bounded, async () => {
    assert.deepEqual(await post('/tokenize', { content: golden.prompt }),
      { status: 200, body: { tokens: golden.prompt_tokens } });
    assert.deepEqual((await post('/tokenize', { content: foxPrompt })).body.tokens, foxTokens);
    assert.deepEqual((await post('/tokenize', { content: golden.prompt, add_special: false })).body.tokens,
      golden.prompt_tokens.slice(1));
    assert.deepEqual(await post('/detokenize', { tokens: golden.greedy_tokens }),
      { status: 200, body: { content: golden.greedy_text } });
    for (const body of [{}, { content: 5 }, { tokens: [1] }]) assert.equal((await post('/tokenize', body)).status, 400);
    for (const tokens of [[-1], [512], ['a'], [1.5], 'abc']) {
      const reply = await post('/detokenize', { tokens });
      assert.equal(reply.status, 400, JSON.stringify(tokens));
      assert.equal(typeof reply.body.error.message, 'string');
    }
  });

  test('GET /metrics has every series the issue names, in Prometheus text format', bounded, async () => {
    await client.completions.create({ model: 'm', prompt: golden.prompt, max_tokens: 3, ...greedy });
    const response = await fetch(`${server.url}/metrics`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type'), /^text\/plain/);
    const text = await response.text();
    for (const [name, type] of [['tessera_requests_total', 'counter'], ['tessera_requests_running', 'gauge'],
      ['tessera_requests_waiting', 'gauge'], ['tessera_prompt_tokens_total', 'counter'],
      ['tessera_generated_tokens_total', 'counter'], ['tessera_prefix_cache_hit_tokens_total', 'counter'],
      ['tessera_kv_blocks_used', 'gauge'], ['tessera_kv_blocks_total', 'gauge'],
      ['tessera_time_to_first_token_seconds', 'histogram'], ['tessera_step_sequences', 'histogram']]) {
      assert.match(text, new RegExp(`^# TYPE ${name} ${type}$`, 'm'));
    }
    const m = await readMetrics(server.url);
    assert.ok(m['tessera_requests_total{status="ok"}'] >= 1);
    assert.ok(m.tessera_prompt_tokens_total >= 5);
    assert.ok(m.tessera_generated_tokens_total >= 3);
    assert.ok(m.tessera_kv_blocks_total > 0);
    const buckets = [...text.matchAll(/^tessera_time_to_first_token_seconds_bucket\{le="([^"]+)"\} (\d+)$/gm)];
    assert.ok(buckets.length >= 2);
    assert.equal(buckets.at(-1)[1], '+Inf');
    const counts = buckets.map((b) => Number(b[2]));
    assert.deepEqual(counts, [...counts].sort((a, b) => a - b), 'buckets are cumulative');
    assert.equal(counts.at(-1), m.tessera_time_to_first_token_seconds_count);
    assert.ok(m.tessera_time_to_first_token_seconds_count >= 1);
    // The greedy request alone: its prompt step and two decode steps, at least, each of one sequence.
    assert.ok(m.tessera_step_sequences_count >= 3);
    assert.ok(m['tessera_step_sequences_bucket{le="1"}'] >= 3);
    assert.ok(m.tessera_step_sequences_sum >= m.tessera_step_sequences_count);
  });

  test('unknown routes are 404 in OpenAI\'s error shape', bounded, async () => {
    await expectApiError(client.get('/no-such-route'), OpenAI.NotFoundError, 404);
    await expectApiError(client.post('/chat/complete', { body: {} }), OpenAI.NotFoundError, 404);
    const response = await fetch(`${server.url}/v2/models`);
    assert.equal(response.status, 404);
    assert.equal(typeof (await response.json()).error.message, 'string');
  });
});

describe('completions', () => {
  test('a greedy completion is llama.cpp\'s greedy text, in OpenAI\'s shape', bounded, async () => {
    const reply = await client.completions.create({ model: 'any-name', prompt: golden.prompt, max_tokens: 60, ...greedy });
    assert.match(reply.id, /^cmpl-/);
    assert.equal(reply.object, 'text_completion');
    assert.equal(reply.model, 'any-name');
    assertRecentTimestamp(reply.created);
    assert.equal(reply.choices.length, 1);
    const [choice] = reply.choices;
    assert.equal(choice.index, 0);
    assert.equal(choice.finish_reason, 'length');
    assert.equal(choice.logprobs, null);
    assert.ok(choice.text.length > 150);
    assert.ok(golden.greedy_text.startsWith(choice.text), choice.text);
    assert.equal(reply.usage.prompt_tokens, golden.prompt_tokens.length);
    assert.equal(reply.usage.completion_tokens, 60);
    assert.equal(reply.usage.total_tokens, 60 + golden.prompt_tokens.length);
    assert.ok(Number.isInteger(reply.usage.prompt_tokens_details.cached_tokens));
  });

  test('streamed, it gives the same text in chunks, then finish_reason, then [DONE]', bounded, async () => {
    const body = { model: 'm', prompt: golden.prompt, max_tokens: 40, ...greedy };
    const whole = await client.completions.create(body);
    const { chunks, texts, finishes } = await collectStream(await client.completions.create({ ...body, stream: true }));
    assert.equal(texts[0], whole.choices[0].text);
    assert.deepEqual(finishes, ['length']);
    assert.ok(chunks.length > 10, 'one chunk per token or so');
    for (const chunk of chunks) {
      assert.equal(chunk.object, 'text_completion');
      assert.match(chunk.id, /^cmpl-/);
      assert.equal(chunk.id, chunks[0].id);
      assert.equal(chunk.model, 'm');
    }
    assert.ok(chunks.slice(0, -1).every((c) => c.choices[0].finish_reason === null));
    const events = await rawEvents('/v1/completions', body);
    assert.equal(events.at(-1), '[DONE]');
    assert.equal(JSON.parse(events.at(-2)).choices[0].finish_reason, 'length');
  });

  test('an array of prompts gets n choices each, indexed prompt by prompt', bounded, async () => {
    const prompts = ['Once upon a time', 'The cat'];
    const alone = await Promise.all(prompts.map((prompt) => client.completions.create({
      model: 'm', prompt, max_tokens: 12, ...greedy })));
    const reply = await client.completions.create({ model: 'm', prompt: prompts, n: 2, max_tokens: 12, ...greedy });
    assert.deepEqual(reply.choices.map((c) => c.index), [0, 1, 2, 3]);
    assert.deepEqual(reply.choices.map((c) => c.text), [alone[0], alone[0], alone[1], alone[1]]
      .map((r) => r.choices[0].text));
    assert.equal(reply.usage.prompt_tokens, alone[0].usage.prompt_tokens + alone[1].usage.prompt_tokens);
    assert.equal(reply.usage.completion_tokens, 4 * 12);
  });

  test('logprobs gives tokens, their log-probabilities, the best alternatives and text offsets', bounded, async () => {
    const reply = await client.completions.create({ model: 'm', prompt: golden.prompt, max_tokens: 20, logprobs: 3,
      ...greedy });
    const { text, logprobs } = reply.choices[0];
    assert.equal(logprobs.tokens.length, 20);
    assert.equal(logprobs.tokens.join(''), text);
    let offset = 0;
    for (let i = 0; i < 20; ++i) {
      assert.equal(logprobs.text_offset[i], offset);
      offset += logprobs.tokens[i].length;
      const lp = logprobs.token_logprobs[i];
      assert.ok(lp <= 0 && lp > -50, `log-probability ${lp}`);
      const top = Object.entries(logprobs.top_logprobs[i]);
      assert.ok(top.length >= 1 && top.length <= 3);
      // Greedy: the chosen token is the most likely one.
      const best = Math.max(...top.map(([, p]) => p));
      assert.equal(logprobs.top_logprobs[i][logprobs.tokens[i]], lp);
      assert.equal(best, lp);
      assert.ok(top.reduce((sum, [, p]) => sum + Math.exp(p), 0) <= 1 + 1e-5);
    }
    // The golden's greedy choices are the argmax: their gaps show in the first two alternatives.
    const secondBest = Object.values(logprobs.top_logprobs[0]).sort((a, b) => b - a)[1];
    assert.ok(Math.abs((logprobs.token_logprobs[0] - secondBest) - golden.greedy_top1_minus_top2[0]) < 2e-2);
  });
});

describe('chat completions', () => {
  const messages = [{ role: 'system', content: 'Lily' }, { role: 'user', content: 'Once upon a time' }];

  test('a reply in OpenAI\'s shape, with the prompt counted as the plain-text conversation', bounded, async () => {
    const reply = await client.chat.completions.create({ model: 'chat-model', messages, max_tokens: 16, ...greedy });
    assert.match(reply.id, /^chatcmpl-/);
    assert.equal(reply.object, 'chat.completion');
    assert.equal(reply.model, 'chat-model');
    assertRecentTimestamp(reply.created);
    assert.equal(reply.choices.length, 1);
    const [choice] = reply.choices;
    assert.equal(choice.index, 0);
    assert.equal(choice.message.role, 'assistant');
    assert.equal(typeof choice.message.content, 'string');
    assert.ok(choice.message.content.length > 0);
    assert.equal(choice.finish_reason, 'length');
    assert.equal(choice.logprobs, null);
    // Without a chat template the messages are joined by newlines.
    const { body } = await post('/tokenize', { content: 'Lily\nOnce upon a time' });
    assert.equal(reply.usage.prompt_tokens, body.tokens.length);
    assert.equal(reply.usage.completion_tokens, 16);
    assert.equal(reply.usage.total_tokens, body.tokens.length + 16);
    const asCompletion = await client.completions.create({ model: 'm', prompt: 'Lily\nOnce upon a time', max_tokens: 16,
      ...greedy });
    assert.equal(choice.message.content, asCompletion.choices[0].text);
  });

  test('streamed: the role in the first chunk, the text, a finish chunk, [DONE]', bounded, async () => {
    const body = { model: 'm', messages, max_tokens: 24, ...greedy };
    const whole = await client.chat.completions.create(body);
    const { chunks, texts, finishes } = await collectStream(await client.chat.completions.create({ ...body, stream: true }));
    assert.equal(texts[0], whole.choices[0].message.content);
    assert.deepEqual(finishes, ['length']);
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    assert.ok(chunks.slice(1).every((c) => c.choices[0].delta.role === undefined));
    for (const chunk of chunks) {
      assert.equal(chunk.object, 'chat.completion.chunk');
      assert.equal(chunk.id, chunks[0].id);
      assert.match(chunk.id, /^chatcmpl-/);
      assert.equal(chunk.usage, undefined);
    }
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'length');
    const events = await rawEvents('/v1/chat/completions', body);
    assert.equal(events.at(-1), '[DONE]');
    assert.equal(events.filter((e) => e === '[DONE]').length, 1);
  });

  test('content as text parts is the same as a string; other parts and roles are refused', bounded, async () => {
    const asString = await client.chat.completions.create({ model: 'm', max_tokens: 10, ...greedy,
      messages: [{ role: 'user', content: 'Once upon a time' }] });
    const asParts = await client.chat.completions.create({ model: 'm', max_tokens: 10, ...greedy,
      messages: [{ role: 'user', content: [{ type: 'text', text: 'Once upon' }, { type: 'text', text: ' a time' }] }] });
    assert.equal(asParts.choices[0].message.content, asString.choices[0].message.content);
    await expectApiError(client.chat.completions.create({ model: 'm', max_tokens: 4, messages: [{ role: 'user',
      content: [{ type: 'image_url', image_url: { url: 'data:,' } }] }] }), OpenAI.BadRequestError, 400);
    await expectApiError(client.chat.completions.create({ model: 'm', max_tokens: 4,
      messages: [{ role: 'wizard', content: 'hi' }] }), OpenAI.BadRequestError, 400);
  });

  test('logprobs with top_logprobs: tokens that spell the reply, bytes, the best alternatives', bounded, async () => {
    const reply = await client.chat.completions.create({ model: 'm', messages, max_tokens: 12, logprobs: true,
      top_logprobs: 4, ...greedy });
    const { content } = reply.choices[0].logprobs;
    assert.equal(content.length, 12);
    assert.equal(content.map((t) => t.token).join(''), reply.choices[0].message.content);
    for (const t of content) {
      assert.deepEqual(t.bytes, [...Buffer.from(t.token)]);
      assert.equal(t.top_logprobs.length, 4);
      assert.equal(t.top_logprobs[0].token, t.token);
      assert.equal(t.top_logprobs[0].logprob, t.logprob);
      const probs = t.top_logprobs.map((a) => a.logprob);
      assert.deepEqual(probs, [...probs].sort((a, b) => b - a));
      for (const a of t.top_logprobs) assert.deepEqual(a.bytes, [...Buffer.from(a.token)]);
    }
    const plain = await client.chat.completions.create({ model: 'm', messages, max_tokens: 3, logprobs: true, ...greedy });
    assert.ok(plain.choices[0].logprobs.content.every((t) => t.top_logprobs.length === 0));
  });

  test('logprobs of tokens that are not whole characters give their bytes, 0 to 255', bounded, async () => {
    // Token 198 is the byte 0xC3, 172 the byte 0xA9: "é" takes both.
    const reply = await client.chat.completions.create({ model: 'm', max_tokens: 6, logprobs: true, top_logprobs: 2,
      messages: [{ role: 'user', content: 'Once' }], temperature: 2, seed: 3, logit_bias: { 198: 100, 172: 100 } });
    for (const t of reply.choices[0].logprobs.content) {
      assert.equal(t.bytes.length, 1);
      assert.ok([0xc3, 0xa9].includes(t.bytes[0]), `bytes ${t.bytes}`);
      for (const a of t.top_logprobs) assert.ok(a.bytes.every((b) => b >= 0 && b <= 255), `bytes ${a.bytes}`);
    }
  });

  test('a control token the model generates shows as nothing, in the text and in logprobs alike', bounded, async () => {
    // Token 1 is "<s>" (BOS).
    const reply = await client.chat.completions.create({ model: 'm', messages, max_tokens: 3, logprobs: true,
      top_logprobs: 1, logit_bias: { 1: 100 }, ...greedy });
    assert.equal(reply.choices[0].message.content, '');
    assert.equal(reply.usage.completion_tokens, 3);
    assert.deepEqual(reply.choices[0].logprobs.content.map((t) => [t.token, t.bytes]), [['', []], ['', []], ['', []]]);
  });

  test('streamed logprobs spell the streamed text', bounded, async () => {
    const stream = await client.chat.completions.create({ model: 'm', messages, max_tokens: 20, logprobs: true,
      top_logprobs: 1, stream: true, ...greedy });
    let text = '';
    let tokens = '';
    for await (const chunk of stream) {
      const [choice] = chunk.choices;
      text += choice.delta.content ?? '';
      for (const t of choice.logprobs?.content ?? []) tokens += t.token;
    }
    assert.equal(tokens, text);
    assert.ok(text.length > 20);
  });
});

describe('request fields', () => {
  test('n choices: greedy ones are equal, sampled ones follow their seeds', bounded, async () => {
    const body = { model: 'm', messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 24 };
    const g = await client.chat.completions.create({ ...body, n: 3, ...greedy });
    assert.deepEqual(g.choices.map((c) => c.index), [0, 1, 2]);
    assert.equal(new Set(g.choices.map((c) => c.message.content)).size, 1);
    assert.equal(g.usage.completion_tokens, 3 * 24);
    const sampled = { ...body, n: 4, temperature: 1, top_k: 0, top_p: 1, min_p: 0, seed: 11 };
    const first = await client.chat.completions.create(sampled);
    const second = await client.chat.completions.create(sampled);
    const texts = first.choices.map((c) => c.message.content);
    assert.deepEqual(second.choices.map((c) => c.message.content), texts);
    assert.ok(new Set(texts).size > 1, 'different choices sample differently');
    const streamed = await collectStream(await client.chat.completions.create({ ...sampled, stream: true }));
    assert.deepEqual(streamed.texts, texts);
    assert.deepEqual(streamed.finishes, ['length', 'length', 'length', 'length']);
  });

  test('seed: the same seed gives the same text, alone or among other requests', bounded, async () => {
    const body = { model: 'm', prompt: 'Once upon a time', max_tokens: 40, temperature: 1, top_k: 0, top_p: 1,
      min_p: 0, seed: 1234 };
    const alone = (await client.completions.create(body)).choices[0].text;
    assert.equal((await client.completions.create(body)).choices[0].text, alone);
    const other = (await client.completions.create({ ...body, seed: 4321 })).choices[0].text;
    assert.notEqual(other, alone);
    const crowd = await Promise.all([
      ...Array.from({ length: 6 }, (_, i) => client.completions.create({ ...body, seed: i, max_tokens: 30 + i })),
      client.completions.create(body),
      ...Array.from({ length: 6 }, (_, i) => client.completions.create({ ...body, prompt: `The dog ${i}` }))]);
    assert.equal(crowd[6].choices[0].text, alone);
  });

  test('stop: text ends before the first stop string, which is never shown, also across tokens', bounded, async () => {
    const base = { model: 'm', prompt: golden.prompt, max_tokens: 40, ...greedy };
    const full = (await client.completions.create(base)).choices[0].text;
    assert.ok(full.startsWith(', there was a little girl named Lily.'), full);
    for (const stop of ['Lily', ['zzz', 'girl'], 'le gi', ['e gir', 'ttle'], 'a little girl']) {
      const stops = [stop].flat();
      const cut = Math.min(...stops.map((s) => full.indexOf(s)).filter((i) => i >= 0));
      const whole = await client.completions.create({ ...base, stop });
      assert.equal(whole.choices[0].text, full.slice(0, cut), JSON.stringify(stop));
      assert.equal(whole.choices[0].finish_reason, 'stop');
      const streamed = await collectStream(await client.completions.create({ ...base, stop, stream: true }));
      assert.equal(streamed.texts[0], full.slice(0, cut), `streamed, ${JSON.stringify(stop)}`);
      assert.deepEqual(streamed.finishes, ['stop']);
    }
    // A stop string that begins to match but then does not: the held-back text is shown after all.
    const streamed = await collectStream(await client.completions.create({ ...base, stop: ['girl named Bob', 'Lily!'],
      stream: true }));
    assert.equal(streamed.texts[0], full);
    assert.deepEqual(streamed.finishes, ['length']);
    // Text held back because it may begin a stop string is shown when max_tokens ends the reply.
    const lily = full.indexOf('Lily') + 'Lily'.length;
    const upToLily = await client.completions.create({ ...base, max_tokens: 40, logprobs: 0 });
    let n = 0;
    for (let length = 0; length < lily; ++n) length += upToLily.choices[0].logprobs.tokens[n].length;
    const heldAtEnd = await collectStream(await client.completions.create({ ...base, max_tokens: n, stop: 'Lily.',
      stream: true }));
    assert.equal(heldAtEnd.texts[0], full.slice(0, lily));
    assert.deepEqual(heldAtEnd.finishes, ['length']);
    await expectApiError(client.completions.create({ ...base, stop: ['a', 'b', 'c', 'd', 'e'] }),
      OpenAI.BadRequestError, 400, 'stop');
  });

  test('streaming never splits a UTF-8 character across chunks', bounded, async () => {
    // Sampling only among the bytes 0xC3 and 0xA9 makes "é" out of two tokens now and then, between invalid bytes.
    const body = { model: 'm', prompt: 'Once upon a time', max_tokens: 40, temperature: 2, seed: 3,
      logit_bias: { 198: 100, 172: 100 } };
    const whole = (await client.completions.create(body)).choices[0].text;
    assert.ok(whole.includes('é'), JSON.stringify(whole));
    // A chunk that ended inside "é" would show its bytes as two replacement characters instead.
    const { texts } = await collectStream(await client.completions.create({ ...body, stream: true }));
    assert.equal(texts[0], whole);
  });

  test('max_completion_tokens, logit_bias and the samplers\' fields act; user and unknown fields are ignored',
    bounded, async () => {
      const messages = [{ role: 'user', content: 'Once upon a time' }];
      const base = { model: 'm', messages, max_tokens: 30, ...greedy };
      const plain = (await client.chat.completions.create(base)).choices[0].message.content;
      const text = async (extra) => (await client.chat.completions.create({ ...base, ...extra })).choices[0].message.content;
      const limited = await client.chat.completions.create({ model: 'm', messages, max_completion_tokens: 7, ...greedy });
      assert.equal(limited.usage.completion_tokens, 7);
      assert.equal(limited.choices[0].finish_reason, 'length');
      // Token 68 is the byte "A".
      assert.equal(await text({ logit_bias: { 68: 100 }, max_tokens: 5 }), 'AAAAA');
      // Samplers that keep only the most likely token are greedy at any temperature.
      for (const keepBest of [{ top_k: 1 }, { top_p: 1e-6 }, { min_p: 1 }]) {
        assert.equal(await text({ temperature: 1.5, seed: 9, ...keepBest }), plain, JSON.stringify(keepBest));
      }
      for (const penalty of [{ frequency_penalty: 2 }, { presence_penalty: 2 }, { repeat_penalty: 2 }]) {
        assert.notEqual(await text({ ...penalty, max_tokens: 100 }), await text({ max_tokens: 100 }),
          JSON.stringify(penalty));
      }
      assert.equal(await text({ user: 'someone', metadata: { x: 1 }, unknown_field: [1, { a: null }],
        service_tier: 'auto', parallel_tool_calls: false }), plain);
      assert.equal(await text({ top_p: null, top_k: null, seed: null, stop: null, n: null }), plain);
      // A field given as null takes the server's default (--temp 0.8).
      assert.equal(await text({ temperature: null, seed: 5 }), await text({ temperature: 0.8, seed: 5 }));
    });

  test('stream_options.include_usage: "usage": null on every chunk, then a usage chunk with no choices',
    bounded, async () => {
      const body = { model: 'm', prompt: golden.prompt, max_tokens: 12, ...greedy };
      const events = await rawEvents('/v1/completions', { ...body, stream_options: { include_usage: true } });
      assert.equal(events.at(-1), '[DONE]');
      const chunks = events.slice(0, -1).map((e) => JSON.parse(e));
      const usageChunk = chunks.at(-1);
      assert.deepEqual(usageChunk.choices, []);
      assert.deepEqual(usageChunk.usage, (await client.completions.create(body)).usage);
      assert.equal(usageChunk.usage.completion_tokens, 12);
      for (const chunk of chunks.slice(0, -1)) {
        assert.ok('usage' in chunk);
        assert.equal(chunk.usage, null);
      }
      const chat = await collectStream(await client.chat.completions.create({ model: 'm', max_tokens: 5, stream: true,
        messages: [{ role: 'user', content: 'Hi' }], stream_options: { include_usage: true }, ...greedy }));
      assert.equal(chat.chunks.at(-1).usage.completion_tokens, 5);
      assert.ok(chat.chunks.slice(0, -1).every((c) => c.usage === null));
    });
});

describe('errors', () => {
  const messages = [{ role: 'user', content: 'Hi' }];
  const badChat = [
    [{ messages: 'hi' }, 'messages'], [{}, 'messages'], [{ messages: [] }, 'messages'],
    [{ messages: [{ content: 'x' }] }, 'messages[0].role'], [{ messages: [{ role: 'user', content: 5 }] }],
    [{ messages, temperature: 'hot' }, 'temperature'], [{ messages, temperature: 2.5 }, 'temperature'],
    [{ messages, temperature: -1 }, 'temperature'], [{ messages, top_p: 0 }, 'top_p'], [{ messages, top_p: 1.5 }, 'top_p'],
    [{ messages, top_k: -1 }, 'top_k'], [{ messages, top_k: 1.5 }, 'top_k'], [{ messages, min_p: 2 }, 'min_p'],
    [{ messages, n: 0 }, 'n'], [{ messages, n: 1000 }, 'n'], [{ messages, n: '2' }, 'n'],
    [{ messages, max_tokens: 0 }, 'max_tokens'], [{ messages, max_tokens: -5 }, 'max_tokens'],
    [{ messages, max_tokens: 2.5 }, 'max_tokens'], [{ messages, max_completion_tokens: 'many' }, 'max_completion_tokens'],
    [{ messages, seed: 'x' }, 'seed'], [{ messages, seed: 1.5 }, 'seed'],
    [{ messages, presence_penalty: 3 }, 'presence_penalty'], [{ messages, frequency_penalty: -3 }, 'frequency_penalty'],
    [{ messages, repeat_penalty: 0 }, 'repeat_penalty'], [{ messages, stop: 5 }, 'stop'], [{ messages, stop: [1] }, 'stop'],
    [{ messages, logit_bias: [] }, 'logit_bias'], [{ messages, logit_bias: { x: 1 } }, 'logit_bias'],
    [{ messages, logit_bias: { 512: 1 } }, 'logit_bias'], [{ messages, logit_bias: { 1: 'a' } }, 'logit_bias'],
    [{ messages, logit_bias: { 1: 101 } }, 'logit_bias'], [{ messages, logit_bias: { '-1': 1 } }, 'logit_bias'],
    [{ messages, top_logprobs: 2 }, 'top_logprobs'], [{ messages, logprobs: true, top_logprobs: 21 }, 'top_logprobs'],
    [{ messages, logprobs: 'yes' }, 'logprobs'], [{ messages, stream: 'yes' }, 'stream'],
    [{ messages, stream_options: { include_usage: true } }, 'stream_options'], [{ messages, model: 5 }, 'model'],
  ];

  test('invalid fields are a BadRequestError (400) naming the field', bounded, async () => {
    for (const [body, param] of badChat) {
      await expectApiError(client.chat.completions.create({ model: 'm', ...body }), OpenAI.BadRequestError, 400, param);
    }
    for (const [body, param] of [[{}, 'prompt'], [{ prompt: 5 }, 'prompt'], [{ prompt: [] }, 'prompt'],
      [{ prompt: ['a', 1] }, 'prompt'], [{ prompt: 'a', logprobs: true }, 'logprobs'],
      [{ prompt: 'a', logprobs: 21 }, 'logprobs'], [{ prompt: 'a', echo: 5, n: 17 }, 'n']]) {
      await expectApiError(client.completions.create({ model: 'm', ...body }), OpenAI.BadRequestError, 400, param);
    }
  });

  test('a prompt and max_tokens beyond the context are a 400 with code context_length_exceeded', bounded, async () => {
    await assert.rejects(client.completions.create({ model: 'm', prompt: 'Once upon a time', max_tokens: 2044 }),
      (error) => error instanceof OpenAI.BadRequestError && error.code === 'context_length_exceeded');
    const reply = await client.completions.create({ model: 'm', prompt: 'Once upon a time', max_tokens: 2043,
      logit_bias: noEos, ...greedy });
    assert.equal(reply.usage.completion_tokens, 2043);
    assert.equal(reply.choices[0].finish_reason, 'length');
    const long = 'Once upon a time '.repeat(600);
    await expectApiError(client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: long }] }),
      OpenAI.BadRequestError, 400);
  });

  test('context_shift lets a reply run past the context; --context-shift makes it the default', bounded, async () => {
    const shifted = await client.completions.create({ model: 'm', prompt: 'Once upon a time', max_tokens: 2100,
      logit_bias: noEos, context_shift: true, ...greedy });
    assert.equal(shifted.usage.completion_tokens, 2100);
    assert.equal(shifted.choices[0].finish_reason, 'length');
    const small = await startServer(['-c', '64', '--context-shift', '--keep', '4']);
    try {
      const smallClient = clientFor(small);
      const reply = await smallClient.completions.create({ model: 'm', prompt: 'Once upon a time', max_tokens: 100,
        logit_bias: noEos, ...greedy });
      assert.equal(reply.usage.completion_tokens, 100);
      // Until the first shift, the text is the one the unshifted context gives.
      assert.ok(reply.choices[0].text.startsWith(shifted.choices[0].text.slice(0, 40)));
      await assert.rejects(smallClient.completions.create({ model: 'm', prompt: 'Once upon a time', max_tokens: 100,
        context_shift: false }), (error) => error instanceof OpenAI.BadRequestError && error.code === 'context_length_exceeded');
    } finally {
      await small.stop();
    }
  });

  test('bodies that are not JSON objects are a 400 in the error shape', bounded, async () => {
    for (const body of ['', '{', 'null', '[]', '"text"', '{"messages": [}', '\u0000', '{"a":1}{"b":2}']) {
      const reply = await post('/v1/chat/completions', body);
      assert.equal(reply.status, 400, JSON.stringify(body));
      assert.equal(reply.body.error.type, 'invalid_request_error');
      assert.equal(typeof reply.body.error.message, 'string');
    }
  });

  test('a body over 8 MiB is a 413', bounded, async () => {
    const content = 'a'.repeat(8 * 1024 * 1024 + 1);
    const reply = await post('/v1/chat/completions', { model: 'm', messages: [{ role: 'user', content }] });
    assert.equal(reply.status, 413);
    assert.equal(typeof reply.body.error.message, 'string');
    assert.equal((await fetch(`${server.url}/health`)).status, 200);
  });

  test('with --api-key, a missing or wrong key is an AuthenticationError (401); the right key works', bounded,
    async (t) => {
      const keyed = await serverFor(t, ['--api-key', 'sesame']);
      const body = { model: 'm', prompt: 'Once', max_tokens: 2 };
      await expectApiError(clientFor(keyed, { apiKey: 'wrong' }).completions.create(body), OpenAI.AuthenticationError, 401);
      const response = await fetch(`${keyed.url}/v1/models`);
      assert.equal(response.status, 401);
      assert.equal(typeof (await response.json()).error.message, 'string');
      const right = clientFor(keyed, { apiKey: 'sesame' });
      assert.equal((await right.completions.create(body)).usage.completion_tokens, 2);
      assert.equal((await right.models.list()).data.length, 1);
      assert.equal((await fetch(`${keyed.url}/health`)).status, 200);
    });

  test('malformed requests do not disturb the requests running beside them', bounded, async () => {
    const body = { model: 'm', prompt: golden.prompt, max_tokens: 60, ...greedy };
    const expected = (await client.completions.create(body)).choices[0].text;
    const good = Array.from({ length: 4 }, () => client.completions.create(body));
    await runPool(60, 8, async (i) => {
      const [bad] = badChat[i % badChat.length];
      await assert.rejects(client.chat.completions.create({ model: 'm', ...bad }), OpenAI.BadRequestError);
    });
    for (const reply of await Promise.all(good)) assert.equal(reply.choices[0].text, expected);
  });
});
