// A stand-in for `tessera serve` that speaks the same HTTP contract (the page, /health, /v1/models, streaming
// /v1/chat/completions, /metrics, --api-key) with made-up text. The browser tests use it for the faults the real
// server cannot be made to produce on demand (a 5xx, a stream cut mid-reply, a reply holding HTML) and, with
// TESSERA_WEB_MOCK=1, for every test while working on the page without a built binary.
//
//   node mock-server.mjs [--host 127.0.0.1] [--port 0] [--api-key KEY]
//
// POST /mock/next-reply {"text", "token_delay_ms", "fault", "status", "message", "cut_after"} scripts the next
// chat completion: `text` is streamed in 4-character pieces instead of made-up words, `token_delay_ms` apart;
// fault "status" answers HTTP `status` with `message`, "cut" closes the connection after `cut_after` pieces,
// "stream-error" sends an error event after `cut_after` pieces.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

const webDir = fileURLToPath(new URL('../../web/', import.meta.url));
const contentTypes = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};
// The policy docs/WEB.md suggests for the real server: the page's own files only, no inline code.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
  "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
const modelId = 'mock-stories';
const contextLength = 512;
const kvBlockTokens = 16;
const kvBlocksTotal = 64;

function parseArgs(argv) {
  const options = { host: '127.0.0.1', port: 0, apiKey: null };
  for (let i = 0; i < argv.length; i += 2) {
    const [name, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${name} needs a value`);
    if (name === '--host') options.host = value;
    else if (name === '--port') options.port = Number(value);
    else if (name === '--api-key') options.apiKey = value;
    else throw new Error(`unknown option ${name}`);
  }
  return options;
}

// mulberry32: a small seeded generator, so that a seed gives the same words every time.
function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function hashText(text) {
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619);
  return h >>> 0;
}

const words = ('the little girl saw a big red ball in the park and she was very happy . one day a cat ' +
  'wanted to play with the dog but it was too small . they went home and had a nice nap').split(' ');

// Made-up reply pieces, as many as the "model" wants to say (20 to 59): greedy (temperature 0) depends on the
// prompt only, sampling on prompt and seed.
function inventPieces(body, promptText) {
  const greedy = body.temperature === 0;
  const seed = greedy ? 0 : Number.isInteger(body.seed) ? body.seed : Math.floor(Math.random() * 2 ** 32);
  const random = seededRandom(hashText(promptText) ^ seed);
  const count = 20 + Math.floor(random() * 40);
  const pieces = [];
  for (let i = 0; i < count; i++) pieces.push((i === 0 ? '' : ' ') + words[Math.floor(random() * words.length)]);
  return pieces;
}

function splitIntoPieces(text) {
  return text.match(/[\s\S]{1,4}/g) ?? [];
}

function sendJson(res, status, value) {
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify(value));
}

function sendError(res, status, message, type = 'invalid_request_error') {
  sendJson(res, status, { error: { message, type, param: null, code: null } });
}

async function readBody(req) {
  const parts = [];
  for await (const part of req) parts.push(part);
  return Buffer.concat(parts).toString('utf8');
}

async function startMockServer(options) {
  const scripted = [];
  const running = new Set(); // of functions that give a running request's tokens in the KV cache
  // Requests by how they ended, as the server's tessera_requests_total counts them.
  const ended = { ok: 0, stopped: 0, invalid: 0, rejected: 0, error: 0 };
  let generatedTokens = 0;
  let previousPromptWords = [];

  async function chatCompletions(req, res) {
    let body;
    try {
      body = JSON.parse(await readBody(req));
    } catch {
      return sendError(res, 400, 'the request body is not valid JSON');
    }
    if (!Array.isArray(body.messages) || body.messages.length === 0) {
      return sendError(res, 400, "'messages' must be a non-empty array", 'invalid_request_error');
    }
    const script = scripted.shift() ?? {};
    if (script.fault === 'status') return sendError(res, script.status, script.message, 'server_error');

    const promptText = body.messages.map((m) => `${m.role}: ${m.content}`).join('\n');
    const promptWords = promptText.split(/\s+/);
    let cached = 0;
    while (cached < promptWords.length && promptWords[cached] === previousPromptWords[cached]) cached++;
    previousPromptWords = promptWords;
    const wanted = script.text !== undefined ? splitIntoPieces(script.text) : inventPieces(body, promptText);
    const limit = Math.min(Number.isInteger(body.max_tokens) ? body.max_tokens : Infinity,
      contextLength - promptWords.length);
    const pieces = wanted.slice(0, limit);
    const finishReason = pieces.length < wanted.length ? 'length' : 'stop';
    const tokenDelayMs = script.token_delay_ms ?? 10;

    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
    const id = `chatcmpl-${Date.now()}`;
    const created = Math.floor(Date.now() / 1000);
    const chunk = (delta, finish) => ({ id, object: 'chat.completion.chunk', created, model: modelId,
      choices: [{ index: 0, delta, finish_reason: finish }] });
    const send = (value) => res.write(`data: ${JSON.stringify(value)}\n\n`);

    // A request counts as running from its first byte until its reply ends or its client goes away.
    let sent = 0;
    let timer = null;
    const tokensHeld = () => promptWords.length + sent;
    running.add(tokensHeld);
    const release = (status) => {
      if (!running.delete(tokensHeld)) return;
      clearTimeout(timer);
      ended[status]++;
      generatedTokens += sent;
    };
    res.on('close', () => release('stopped'));
    send(chunk({ role: 'assistant', content: '' }, null));
    const step = () => {
      if (res.destroyed) return;
      if ((script.fault === 'cut' || script.fault === 'stream-error') && sent === (script.cut_after ?? 3)) {
        release('error');
        if (script.fault === 'cut') {
          res.socket.destroy();
          return;
        }
        send({ error: { message: script.message ?? 'the model failed', type: 'server_error', code: null } });
        res.end('data: [DONE]\n\n');
        return;
      }
      if (sent < pieces.length) {
        send(chunk({ content: pieces[sent++] }, null));
        timer = setTimeout(step, tokenDelayMs);
        return;
      }
      send(chunk({}, finishReason));
      if (body.stream_options?.include_usage) {
        send({ id, object: 'chat.completion.chunk', created, model: modelId, choices: [],
          usage: { prompt_tokens: promptWords.length, completion_tokens: sent,
            total_tokens: promptWords.length + sent, prompt_tokens_details: { cached_tokens: cached } } });
      }
      release('ok');
      res.end('data: [DONE]\n\n');
    };
    timer = setTimeout(step, tokenDelayMs);
  }

  function metrics(res) {
    let used = 0;
    for (const tokensHeld of running) used += Math.ceil(tokensHeld() / kvBlockTokens);
    res.writeHead(200, { 'Content-Type': 'text/plain; version=0.0.4' });
    res.end([
      '# TYPE tessera_requests_total counter',
      ...Object.entries(ended).map(([status, n]) => `tessera_requests_total{status="${status}"} ${n}`),
      '# TYPE tessera_requests_running gauge', `tessera_requests_running ${running.size}`,
      '# TYPE tessera_requests_waiting gauge', 'tessera_requests_waiting 0',
      '# TYPE tessera_kv_blocks_used gauge', `tessera_kv_blocks_used ${used}`,
      '# TYPE tessera_kv_blocks_total gauge', `tessera_kv_blocks_total ${kvBlocksTotal}`,
      '# TYPE tessera_generated_tokens_total counter', `tessera_generated_tokens_total ${generatedTokens}`,
      ''].join('\n'));
  }

  async function staticFile(path, res) {
    const file = normalize(path === '/' ? '/index.html' : path);
    const type = contentTypes[extname(file)];
    if (file.includes('..') || !type) return sendError(res, 404, `no such page: ${path}`);
    try {
      const bytes = await readFile(join(webDir, file));
      res.writeHead(200, { 'Content-Type': type, 'Content-Security-Policy': contentSecurityPolicy });
      res.end(bytes);
    } catch {
      sendError(res, 404, `no such page: ${path}`);
    }
  }

  const server = createServer(async (req, res) => {
    const path = new URL(req.url, 'http://localhost').pathname;
    if (path.startsWith('/v1/') && options.apiKey && req.headers.authorization !== `Bearer ${options.apiKey}`) {
      return sendJson(res, 401, { error: { message: "a valid API key is needed: send it as 'Authorization: Bearer KEY'",
        type: 'invalid_request_error', param: null, code: 'invalid_api_key' } });
    }
    if (req.method === 'GET' && path === '/health') return sendJson(res, 200, { status: 'ok' });
    if (req.method === 'GET' && path === '/metrics') return metrics(res);
    if (req.method === 'GET' && path === '/v1/models') {
      return sendJson(res, 200, { object: 'list', data: [{ id: modelId, object: 'model',
        created: Math.floor(Date.now() / 1000), owned_by: 'tessera', context_length: contextLength }] });
    }
    if (req.method === 'POST' && path === '/v1/chat/completions') return chatCompletions(req, res);
    if (req.method === 'POST' && path === '/mock/next-reply') {
      scripted.push(JSON.parse(await readBody(req)));
      return sendJson(res, 200, { queued: scripted.length });
    }
    if (req.method === 'GET') return staticFile(path, res);
    sendError(res, 404, `no such endpoint: ${req.method} ${path}`);
  });
  await new Promise((resolve) => server.listen(options.port, options.host, resolve));
  return server;
}

const server = await startMockServer(parseArgs(process.argv.slice(2)));
const { address, port } = server.address();
process.stdout.write(`listening on http://${address}:${port}\n`);
