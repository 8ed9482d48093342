// What the server tests share: starting `tessera serve` on the stories260K fixture (TESSERA_BINARY,
// TESSERA_FIXTURES, as in tests/web) with any extra options, an openai client for it, and readers for its
// /metrics and its resident memory.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import OpenAI from 'openai';
import { readMetrics, spawnServer } from '../common/server_process.mjs';

export { readMetrics };

export function fixtureModel() {
  const fixtures = process.env.TESSERA_FIXTURES;
  if (!fixtures) throw new Error('set TESSERA_FIXTURES (the fixtures folder) and TESSERA_BINARY (the built tessera)');
  return join(fixtures, 'trained', 'stories260K.gguf');
}

// Starts `tessera serve -m stories260K.gguf --port 0 -t 1 ARGS...` and waits for its "listening on" line.
// Returns { url, pid, child, stderr(), exited, stop() }. Its output keeps being read, so that a server that logs
// never blocks on a full pipe.
export async function startServer(args = []) {
  const binary = process.env.TESSERA_BINARY;
  if (!binary) throw new Error('set TESSERA_BINARY (the built tessera) and TESSERA_FIXTURES (the fixtures folder)');
  const fullArgs = ['serve', '-m', fixtureModel(), '--host', '127.0.0.1', '--port', '0', '-t', '1', ...args];
  const server = await spawnServer(binary, fullArgs);
  return { ...server, pid: server.child.pid };
}

// A server for one test (or one describe block's `before`), stopped when it ends.
export async function serverFor(t, args) {
  const server = await startServer(args);
  t.after(() => server.stop());
  return server;
}

// The official client on the server. No retries: a test must see the first answer.
export function clientFor(server, options = {}) {
  return new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000, ...options });
}

// Polls /metrics until `done(metrics)` holds; throws with the last metrics after `timeoutMs`.
export async function waitForMetrics(url, done, timeoutMs = 5_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const metrics = await readMetrics(url);
    if (done(metrics)) return metrics;
    if (Date.now() > deadline) throw new Error(`metrics did not settle: ${JSON.stringify(metrics)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

// The resident memory of a process in KiB (VmRSS in /proc/PID/status).
export function residentKiB(pid) {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!match) throw new Error(`no VmRSS for process ${pid}`);
  return Number(match[1]);
}

// Runs `count` tasks (task(i) returns a promise) with at most `concurrency` at once; resolves to their results
// in order, or rejects with the first failure once every started task has settled.
export async function runPool(count, concurrency, task) {
  const results = new Array(count);
  let next = 0;
  let failure = null;
  async function worker() {
    while (next < count && !failure) {
      const i = next++;
      try {
        results[i] = await task(i);
      } catch (error) {
        failure ??= error;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  if (failure) throw failure;
  return results;
}

// Everything a streamed chat or completion request gives: the chunks, each choice's text, finish reasons.
export async function collectStream(stream) {
  const chunks = [];
  const texts = [];
  const finishes = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
    for (const choice of chunk.choices) {
      const piece = choice.delta ? choice.delta.content : choice.text;
      texts[choice.index] = (texts[choice.index] ?? '') + (piece ?? '');
      if (choice.finish_reason) finishes[choice.index] = choice.finish_reason;
    }
  }
  return { chunks, texts, finishes };
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
