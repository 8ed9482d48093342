// Faults, through the openai client where a client can make them and plain HTTP where it cannot: clients that
// leave mid-stream, a queue flood, a KV cache too small for the requests, a thousand malformed requests, a 100 MB
// body, slow and stalled readers, and SIGTERM during a stream.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { test } from 'node:test';
import { gzipSync } from 'node:zlib';
import OpenAI from 'openai';
import {
  clientFor, collectStream, readMetrics, residentKiB, runPool, serverFor, sleep, waitForMetrics,
} from './harness.mjs';

const bounded = { timeout: 90_000 };
const greedy = { temperature: 0 };
const noEos = { 2: -100 };  // stories260K's end-of-sequence token

// The engine holds nothing once every request has ended; blocks kept only for the prefix cache are not "used".
const idle = (m) => m.tessera_kv_blocks_used === 0 && m.tessera_requests_running === 0 && m.tessera_requests_waiting === 0;

function rawRequest(url, { method = 'POST', path, headers = {}, body }) {
  return new Promise((resolve, reject) => {
    const request = http.request(`${url}${path}`, { method, headers }, (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (data) => { text += data; });
      response.on('end', () => resolve({ status: response.statusCode, text }));
    });
    request.on('error', reject);
    request.end(body);
  });
}

test('clients that leave mid-stream free their blocks, and /metrics counts them as stopped', bounded, async (t) => {
  const server = await serverFor(t);
  const client = clientFor(server);
  const before = await readMetrics(server.url);
  const body = { model: 'm', max_tokens: 1900, logit_bias: noEos, stream: true, ...greedy };
  await Promise.all([5, 20, 60, 1].map(async (after, i) => {
    const stream = i % 2
      ? await client.completions.create({ ...body, prompt: `Once upon a time ${i}`, n: 2 })
      : await client.chat.completions.create({ ...body, messages: [{ role: 'user', content: `Tell me ${i}` }] });
    let n = 0;
    for await (const chunk of stream) {
      assert.equal(chunk.choices[0].finish_reason, null);
      if (++n === after) break;  // leaving the loop aborts the request
    }
  }));
  const m = await waitForMetrics(server.url, (m) => idle(m)
    && m['tessera_requests_total{status="stopped"}'] === before['tessera_requests_total{status="stopped"}'] + 4);
  // Stopped long before their 1,900 tokens.
  assert.ok(m.tessera_generated_tokens_total - before.tessera_generated_tokens_total < 5 * 1900);
  // The server goes on serving.
  const reply = await client.completions.create({ model: 'm', prompt: 'Once upon a time', max_tokens: 5, ...greedy });
  assert.equal(reply.usage.completion_tokens, 5);
});

test('a queue flood beyond --max-queue is refused with 429 and the accepted requests complete', bounded, async (t) => {
  const server = await serverFor(t, ['--max-sequences', '2', '--max-queue', '4']);
  const client = clientFor(server);
  const body = { model: 'm', max_tokens: 300, logit_bias: noEos, ...greedy };
  const outcomes = await Promise.all(Array.from({ length: 30 }, async (_, i) => {
    try {
      const reply = await client.completions.create({ ...body, prompt: `Once upon a time ${i % 3}` });
      assert.equal(reply.usage.completion_tokens, 300);
      return 'completed';
    } catch (error) {
      assert.ok(error instanceof OpenAI.RateLimitError, `${error.constructor.name}: ${error.message}`);
      assert.equal(error.status, 429);
      assert.equal(error.code, 'queue_full');
      return 'refused';
    }
  }));
  const completed = outcomes.filter((o) => o === 'completed').length;
  const refused = outcomes.length - completed;
  assert.ok(completed >= 6, `${completed} completed`);
  assert.ok(refused >= 1, 'some were refused');
  const m = await waitForMetrics(server.url, idle);
  assert.equal(m['tessera_requests_total{status="rejected"}'], refused);
  assert.equal(m['tessera_requests_total{status="ok"}'], completed);

  // A burst of streams, refused the same way before their stream starts. A stream's headers come as soon as it
  // is queued, so once all have answered, the accepted ones are the running and queued ones (at most 2 + 4)
  // and any that already finished.
  const streams = await Promise.allSettled(Array.from({ length: 40 }, () => client.completions.create({ model: 'm',
    prompt: 'Once upon a time', max_tokens: 2000, logit_bias: noEos, stream: true, ...greedy })));
  const finishedMeanwhile = (await readMetrics(server.url))['tessera_requests_total{status="ok"}'] - completed;
  const accepted = streams.filter((s) => s.status === 'fulfilled').map((s) => s.value);
  for (const s of streams) {
    if (s.status === 'rejected') assert.ok(s.reason instanceof OpenAI.RateLimitError, String(s.reason));
  }
  assert.ok(accepted.length >= 6);
  assert.ok(accepted.length <= 6 + finishedMeanwhile, `${accepted.length} accepted, ${finishedMeanwhile} finished`);
  for (const stream of accepted) stream.controller.abort();
  await waitForMetrics(server.url, idle);
});

test('a burst no larger than --max-sequences plus --max-queue is accepted whole', bounded, async (t) => {
  // Requests that arrive together wait for the engine's next step before they run: while they wait they must not
  // count against the queue alone, or sequences would stand idle while requests are refused.
  const server = await serverFor(t, ['--max-sequences', '16', '--max-queue', '4']);
  const client = clientFor(server);
  for (let round = 0; round < 3; ++round) {
    const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => client.completions.create({ model: 'm',
      prompt: `Once upon a time ${i}`, max_tokens: 4, ...greedy })));
    assert.ok(replies.every((r) => r.usage.completion_tokens === 4));
  }
  assert.equal((await readMetrics(server.url))['tessera_requests_total{status="rejected"}'], 0);
});

test('a KV cache too small for the batch preempts requests, and all complete with their own output', bounded,
  async (t) => {
    const server = await serverFor(t, ['--kv-size', '64']);
    const client = clientFor(server);
    const requests = Array.from({ length: 8 }, (_, i) => ({ model: 'm', prompt: `Once upon a time ${['Tom', 'Sue'][i % 2]}`,
      max_tokens: 40 + i, logit_bias: noEos, ...greedy }));
    const alone = [];
    for (const r of requests) alone.push((await client.completions.create(r)).choices[0].text);
    const together = await Promise.all(requests.map((r) => client.completions.create(r)));
    for (let i = 0; i < requests.length; ++i) {
      assert.equal(together[i].choices[0].text, alone[i], `request ${i}`);
      assert.equal(together[i].usage.completion_tokens, requests[i].max_tokens);
      assert.equal(together[i].choices[0].finish_reason, 'length');
    }
    await waitForMetrics(server.url, idle);
    // A request that cannot fit in the whole cache is refused up front.
    await assert.rejects(client.completions.create({ model: 'm', prompt: 'Once upon a time '.repeat(30), max_tokens: 2 }),
      OpenAI.BadRequestError);
  });

// A thousand malformed requests of many kinds, each expected to be a 4xx.
function malformedRequests() {
  const chat = '/v1/chat/completions';
  const completions = '/v1/completions';
  const messages = [{ role: 'user', content: 'Hi' }];
  const json = (path, body) => ({ path, body: JSON.stringify(body), headers: { 'Content-Type': 'application/json' } });
  const kinds = [
    // Not JSON, or not an object.
    ...['', '{', '}', '{"messages":', 'nul', '[1,2', '"\\ud800"', '{"a":1,}', '\u00ff\u00fe', '{"messages": [{]}', '123',
      'true', '[]', '{"messages": [{"role": "user", "content": "x"}]', '\u0000\u0001'].map((body) => ({ path: chat, body })),
    ...['', '{"prompt"', 'null', '{"prompt": "a" "b"}'].map((body) => ({ path: completions, body })),
    // Missing and wrongly typed fields.
    json(chat, {}), json(chat, { messages: null }), json(chat, { messages: {} }), json(chat, { messages: [null] }),
    json(chat, { messages: [{}] }), json(chat, { messages: [{ role: 5, content: 'x' }] }),
    json(chat, { messages: [{ role: 'user', content: { text: 'x' } }] }),
    json(chat, { messages: [{ role: 'user', content: [{ type: 'text' }] }] }),
    json(chat, { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: 'x' }] }] }),
    json(chat, { messages: [{ role: 'user', content: ['x'] }] }),
    json(completions, {}), json(completions, { prompt: null, max_tokens: 1 }), json(completions, { prompt: [[1, 2]] }),
    json(completions, { prompt: {} }), json(completions, { prompt: [] }),
    // Bad roles.
    ...['', 'User', 'robot', 'function ', 'assistant\u0000'].map((role) => json(chat, { messages: [{ role, content: 'x' }] })),
    // Out of range and wrong types, field by field.
    ...['1e999', '-1e999', 'NaN', 'Infinity', '1e-999999999'].map((value) => ({ path: chat,
      body: `{"messages":[{"role":"user","content":"Hi"}],"temperature":${value},"top_p":0}` })),
    ...[['temperature', [-0.1, 2.01, '1', []]], ['top_p', [0, -1, 1.01, 'x']], ['top_k', [-1, 0.5, 'x', 1e12]],
      ['min_p', [-0.1, 1.5, {}]], ['n', [0, -1, 17, 1e9, 2.5, '2', true]], ['max_tokens', [0, -1, 1.5, 'x', 2 ** 31, 1e20]],
      ['max_completion_tokens', [0, 'x', -3]], ['seed', [1.5, 'x', {}, 1e30]], ['presence_penalty', [2.5, -2.5, 'x']],
      ['frequency_penalty', [9, 'x']], ['repeat_penalty', [0, -1, 11, 'x']], ['stop', [5, [1], ['a', 'b', 'c', 'd', 'e'], {}]],
      ['logit_bias', [[], 'x', 5, { a: 1 }, { '-1': 1 }, { 512: 1 }, { 1: 'x' }, { 1: 101 }, { 1: -101 }, { '1.5': 1 },
        { ' 1': 1 }, { 1: null }, { 99999999999999999999: 1 }, { '': 1 }, { 1: [1] }]],
      ['logprobs', ['x', 1, {}]], ['top_logprobs', [1]], ['stream', ['true', 1]], ['stream_options', [{ include_usage: true }]],
      ['model', [5, {}, []]]].flatMap(([field, values]) => values.map((value) => json(chat, { messages, [field]: value }))),
    ...[['logprobs', [-1, 21, true, 'x']], ['prompt', [5, true, [1]]], ['echo', []]].flatMap(([field, values]) =>
      values.map((value) => json(completions, { prompt: 'Hi', [field]: value }))),
    json(chat, { messages, logprobs: true, top_logprobs: 21 }), json(chat, { messages, logprobs: true, top_logprobs: -1 }),
    json(chat, { messages, stream: false, stream_options: { include_usage: true } }),
    json(chat, { messages, stream: true, stream_options: 'x' }),
    json(chat, { messages, stream: true, stream_options: { include_usage: 'x' } }),
    // Beyond the context.
    json(completions, { prompt: 'Hi', max_tokens: 5000 }), json(chat, { messages, max_tokens: 2048 }),
    json(completions, { prompt: 'Once upon a time '.repeat(600) }),
    // /tokenize and /detokenize.
    json('/tokenize', {}), json('/tokenize', { content: 5 }), { path: '/tokenize', body: '{' },
    json('/tokenize', { content: 'a', add_special: 'x' }), json('/tokenize', { content: 'a', parse_special: 1 }),
    json('/detokenize', {}), json('/detokenize', { tokens: [1, -1] }), json('/detokenize', { tokens: [1e10] }),
    json('/detokenize', { tokens: 'abc' }), { path: '/detokenize', body: 'x' },
    // Unknown routes and wrong methods.
    { method: 'GET', path: chat }, { method: 'GET', path: completions }, { method: 'PUT', path: chat, body: '{}' },
    { method: 'DELETE', path: '/v1/models' }, { method: 'PATCH', path: completions, body: '{}' },
    { method: 'POST', path: '/v1/models', body: '{}' }, { method: 'POST', path: '/health', body: '{}' },
    { method: 'GET', path: '/v1/embeddings' }, json('/v1/embeddings', { input: 'x' }), json('/v1/chat', { messages }),
    json('/v1/chat/completions/x', { messages }), { method: 'GET', path: '/../../etc/passwd' },
    { method: 'GET', path: '/%00' }, { method: 'GET', path: `/${'a'.repeat(4000)}` }, { method: 'OPTIONS', path: chat },
    { method: 'POST', path: chat, headers: { 'Content-Type': 'multipart/form-data; boundary=x' }, body: '--x--' },
    { method: 'POST', path: chat, headers: { 'Content-Encoding': 'gzip' }, body: 'not gzip' },
  ];
  return Array.from({ length: 1000 }, (_, i) => kinds[i % kinds.length]);
}

test('1,000 malformed requests are each a 4xx in OpenAI\'s error shape, and the server still serves', bounded,
  async (t) => {
    const server = await serverFor(t);
    const client = clientFor(server);
    const expected = (await client.completions.create({ model: 'm', prompt: 'Once upon a time', max_tokens: 30,
      ...greedy })).choices[0].text;
    // Good requests run all the while.
    let stop = false;
    const good = (async () => {
      let n = 0;
      while (!stop) {
        const reply = await client.completions.create({ model: 'm', prompt: 'Once upon a time', max_tokens: 30, ...greedy });
        assert.equal(reply.choices[0].text, expected);
        ++n;
      }
      return n;
    })();
    const requests = malformedRequests();
    await runPool(requests.length, 16, async (i) => {
      const { method = 'POST', path, headers, body } = requests[i];
      const reply = await rawRequest(server.url, { method, path, headers, body });
      const what = `${method} ${path.slice(0, 40)} ${String(body).slice(0, 120)}`;
      assert.ok(reply.status >= 400 && reply.status < 500, `${reply.status} for ${what}`);
      const parsed = JSON.parse(reply.text);
      assert.equal(typeof parsed.error.message, 'string', what);
      assert.ok(parsed.error.message.length > 0, what);
    });
    stop = true;
    assert.ok(await good >= 1);
    // Bytes that are not HTTP at all.
    for (const garbage of ['GARBAGE\r\n\r\n', 'POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n',
      'POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', '\u0000\u0001\u0002\r\n\r\n',
      `GET /health HTTP/1.1\r\n${'X-A: b\r\n'.repeat(2000)}\r\n`]) {
      const answer = await new Promise((resolve) => {
        const socket = net.connect(new URL(server.url).port, '127.0.0.1', () => socket.end(garbage));
        let data = '';
        socket.on('data', (d) => { data += d; });
        socket.on('close', () => resolve(data));
        socket.on('error', () => resolve(data));
      });
      assert.ok(answer === '' || /^HTTP\/1\.1 4\d\d /.test(answer), JSON.stringify(answer.slice(0, 80)));
    }
    const health = await fetch(`${server.url}/health`);
    assert.equal(health.status, 200);
    const reply = await client.completions.create({ model: 'm', prompt: 'Once upon a time', max_tokens: 30, ...greedy });
    assert.equal(reply.choices[0].text, expected);
    await waitForMetrics(server.url, idle);
  });

// Sends a POST with a body of `size` bytes (Content-Length, or chunked when `chunked`) through a raw socket and
// resolves to the status the server answers with, which may come (and the connection close) before all is sent.
function sendLargeBody(url, path, { size, chunked = false, headers = {} }) {
  const { port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let answer = '';
    let sent = 0;
    const piece = Buffer.alloc(1 << 20, 'a');
    const lines = [`POST ${path} HTTP/1.1`, `Host: 127.0.0.1:${port}`, 'Content-Type: application/json',
      chunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${size}`,
      ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)];
    function pump() {
      while (sent < size && !answer) {
        const n = Math.min(piece.length, size - sent);
        sent += n;
        const data = chunked ? Buffer.concat([Buffer.from(`${n.toString(16)}\r\n`), piece.subarray(0, n),
          Buffer.from('\r\n')]) : piece.subarray(0, n);
        if (!socket.write(data)) return socket.once('drain', pump);
      }
      if (sent >= size && chunked) socket.write('0\r\n\r\n');
    }
    socket.on('connect', () => {
      socket.write(`${lines.join('\r\n')}\r\n\r\n`);
      pump();
    });
    socket.on('data', (data) => {
      answer += data;
      const match = /^HTTP\/1\.1 (\d+) [^]*?Content-Length: (\d+)\r\n[^]*?\r\n\r\n([^]*)$/.exec(answer);
      if (match && match[3].length >= Number(match[2])) {
        socket.destroy();
        resolve({ status: Number(match[1]), body: JSON.parse(match[3].slice(0, Number(match[2]))), sent });
      }
    });
    // The server may close while we are still sending: its answer has come by then.
    socket.on('error', () => {});
    socket.on('close', () => reject(new Error(`closed with no whole answer: ${JSON.stringify(answer.slice(0, 200))}`)));
  });
}

test('a 100 MB body is a 413, however it is sent, and is not kept', bounded, async (t) => {
  const server = await serverFor(t);
  // A chunked body is cut off at the limit: what it leaves in memory is far less than its 100 MB. (What one
  // request read, up to 8 MiB, can stay in its thread's malloc arena for the next one.)
  const before = residentKiB(server.pid);
  assert.equal((await sendLargeBody(server.url, '/v1/completions', { size: 100 << 20, chunked: true })).status, 413);
  const grown = residentKiB(server.pid) - before;
  assert.ok(grown < 40 * 1024, `RSS grew by ${grown} KiB`);
  for (const path of ['/v1/chat/completions', '/v1/completions', '/tokenize', '/detokenize']) {
    for (const chunked of [false, true]) {
      const reply = await sendLargeBody(server.url, path, { size: 100 << 20, chunked });
      assert.equal(reply.status, 413, `${path}, chunked: ${chunked}`);
      assert.match(reply.body.error.message, /limit/);
    }
  }
  // 20 MB of zeros in 20 kB of gzip: the limit counts what it inflates to.
  const bomb = gzipSync(Buffer.alloc(20 << 20));
  const inflated = await rawRequest(server.url, { path: '/v1/completions', body: bomb,
    headers: { 'Content-Encoding': 'gzip', 'Content-Type': 'application/json' } });
  assert.equal(inflated.status, 413);
  // A body typed as a form (what curl -d sends) is read as JSON too, past cpp-httplib's 8 KiB for forms: here
  // its prompt is then too long for the context.
  const formTyped = await rawRequest(server.url, { path: '/v1/completions', headers: {
    'Content-Type': 'application/x-www-form-urlencoded' }, body: JSON.stringify({ model: 'm',
    prompt: 'Once upon a time'.padEnd(200_000, ' '), max_tokens: 1 }) });
  assert.equal(formTyped.status, 400, formTyped.text);
  assert.equal(JSON.parse(formTyped.text).error.code, 'context_length_exceeded');
  const reply = await clientFor(server).completions.create({ model: 'm', prompt: 'Once', max_tokens: 3 });
  assert.equal(reply.usage.completion_tokens, 3);
});

// Reads a streamed request through plain HTTP, pausing `pauseMs` after every `every` bytes; `stallMs` first.
// Returns { port: the client's local port (once connected), text: the whole reply }.
function slowStream(url, body, { every, pauseMs, stallMs = 0 }) {
  let connected;
  const port = new Promise((resolve) => { connected = resolve; });
  const text = new Promise((resolve, reject) => {
    const request = http.request(`${url}/v1/completions`, { method: 'POST',
      headers: { 'Content-Type': 'application/json' } }, (response) => {
      let received = '';
      let since = 0;
      response.setEncoding('utf8');
      response.pause();
      setTimeout(() => response.resume(), stallMs);
      response.on('data', (data) => {
        received += data;
        since += data.length;
        if (since >= every) {
          since = 0;
          response.pause();
          setTimeout(() => response.resume(), pauseMs);
        }
      });
      response.on('end', () => resolve(received));
      response.on('error', reject);
    });
    request.on('socket', (socket) => socket.on('connect', () => connected(socket.localPort)));
    request.on('error', reject);
    request.end(JSON.stringify({ ...body, stream: true }));
  });
  return { port, text };
}

// Bytes the kernel holds for a loopback TCP connection: unread at the client's end, unsent at the server's.
function queuedBytes(serverPort, clientPort) {
  let queued = 0;
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 5) continue;
    const local = parseInt(fields[1].split(':')[1], 16);
    const remote = parseInt(fields[2].split(':')[1], 16);
    const [tx, rx] = fields[4].split(':').map((x) => parseInt(x, 16));
    if (local === clientPort && remote === serverPort) queued += rx;
    if (local === serverPort && remote === clientPort) queued += tx;
  }
  return queued;
}

// Each choice's text, the tokens its logprobs list, and its finish_reason, from a completions stream's events.
function streamedChoices(sse) {
  const choices = [];
  for (const event of sse.split('\n\n')) {
    if (!event.startsWith('data: {')) continue;
    for (const { index, text, logprobs, finish_reason: finish } of JSON.parse(event.slice(6)).choices) {
      choices[index] ??= { text: '', tokens: [], finish: null };
      choices[index].text += text;
      choices[index].tokens.push(...(logprobs?.tokens ?? []));
      choices[index].finish ??= finish;
    }
  }
  return choices;
}

test('slow readers do not hold up the other requests, and get all their text', bounded, async (t) => {
  const server = await serverFor(t);
  const client = clientFor(server);
  // Large streams (four choices with 20 alternatives per token: megabytes) fill the socket buffers, so the
  // server's writes wait on these readers.
  const big = { model: 'm', prompt: 'Once upon a time', n: 4, max_tokens: 1500, logprobs: 20, logit_bias: noEos,
    ...greedy };
  const expected = (await client.completions.create({ ...big, n: 1, logprobs: null, max_tokens: 100 })).choices[0].text;
  const slow = slowStream(server.url, big, { every: 64 * 1024, pauseMs: 100 });
  const stalled = slowStream(server.url, big, { every: 1 << 30, pauseMs: 0, stallMs: 3_000 });
  await sleep(300);
  const started = performance.now();
  const others = await runPool(16, 4, () => client.completions.create({ model: 'm', prompt: 'The cat', max_tokens: 20,
    ...greedy }));
  const othersSeconds = (performance.now() - started) / 1000;
  assert.ok(others.every((r) => r.usage.completion_tokens === 20));
  assert.ok(othersSeconds < 3, `the other requests took ${othersSeconds} s beside the slow readers`);
  // The stalled reader's stream piled up between the server and it: the server's writes were held back.
  await sleep(Math.max(0, 2_500 - (performance.now() - started)));
  const serverPort = Number(new URL(server.url).port);
  const backlog = queuedBytes(serverPort, await stalled.port);
  assert.ok(backlog > 1 << 20, `${backlog} bytes queued for the stalled reader`);
  for (const sse of await Promise.all([slow.text, stalled.text])) {
    assert.ok(sse.length > 4 << 20, `${sse.length} bytes`);
    assert.ok(sse.endsWith('data: [DONE]\n\n'));
    const choices = streamedChoices(sse);
    assert.equal(choices.length, 4);
    for (const choice of choices) {
      // Nothing lost or repeated: the text is its tokens, all 1,500 of them. (Only the start is compared with
      // the request alone: after a few hundred tokens a near-tie can go either way in another batch.)
      assert.equal(choice.tokens.length, 1500);
      assert.equal(choice.text, choice.tokens.join(''));
      assert.equal(choice.finish, 'length');
      assert.ok(choice.text.startsWith(expected), choice.text.slice(0, 400));
    }
  }
  await waitForMetrics(server.url, idle);
});

test('SIGTERM during streams: new requests are refused, the streams end, the server exits 0', bounded, async (t) => {
  const server = await serverFor(t);
  const client = clientFor(server);
  const ends = Promise.all(Array.from({ length: 4 }, async (_, i) => {
    const stream = await client.completions.create({ model: 'm', prompt: `Once upon a time ${i}`, max_tokens: 1900,
      logit_bias: noEos, stream: true, ...greedy });
    try {
      const { finishes } = await collectStream(stream);
      return finishes[0];
    } catch (error) {
      // Cancelled at the end of the grace period: an error event, then [DONE].
      assert.ok(error instanceof OpenAI.APIError, `${error.constructor.name}: ${error.message}`);
      return 'error event';
    }
  }));
  await waitForMetrics(server.url, (m) => m.tessera_requests_running === 4);
  const signalled = performance.now();
  server.child.kill('SIGTERM');
  await sleep(100);
  const health = await fetch(`${server.url}/health`).catch(() => null);
  if (health) assert.equal(health.status, 503);
  await assert.rejects(client.completions.create({ model: 'm', prompt: 'Once', max_tokens: 2 }),
    (error) => error instanceof OpenAI.APIConnectionError || error.status === 503);
  for (const end of await ends) assert.ok(['length', 'error event'].includes(end), end);
  const { code, signal } = await server.exited;
  const seconds = (performance.now() - signalled) / 1000;
  assert.equal(signal, null);
  assert.equal(code, 0);
  assert.ok(seconds < 9, `exited ${seconds} s after SIGTERM`);
});
