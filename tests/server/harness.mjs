// What the server tests share: starting `tessera serve` on the stories260K fixture (TESSERA_BINARY,
// TESSERA_FIXTURES, as in tests/web) with any extra options, an openai client for it, and readers for its
// /metrics and its resident memory.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import OpenAI from 'openai';

const readyLine = /^listening on (http:\/\/127\.0\.0\.1:\d+)$/m;

// Servers still running when the test process exits (a test that timed out, say) go with it.
const runningServers = new Set();
process.on('exit', () => {
  for (const child of runningServers) child.kill('SIGKILL');
});

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
  const child = spawn(binary, fullArgs, { stdio: ['ignore', 'pipe', 'pipe'] });
  runningServers.add(child);
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      runningServers.delete(child);
      resolve({ code, signal });
    });
  });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (data) => { stderr = (stderr + data).slice(-8192); });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error('no "listening on" line within 30 s')), 30_000);
    function fail(error) {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${binary} ${fullArgs.join(' ')}: ${error.message}\nstdout: ${stdout}\nstderr: ${stderr}`));
    }
    const exitedEarly = (code, signal) => fail(new Error(`exited (${code ?? signal}) before listening`));
    child.on('error', fail);
    child.on('exit', exitedEarly);
    child.stdout.on('data', (data) => {
      stdout += data;
      const match = readyLine.exec(stdout);
      if (match) {
        clearTimeout(timer);
        child.off('exit', exitedEarly);
        child.stdout.removeAllListeners('data');
        child.stdout.resume();
        resolve(match[1]);
      }
    });
  });
  return {
    url,
    pid: child.pid,
    child,
    exited,
    stderr: () => stderr,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
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

// The server's Prometheus text as { series: value }, labels included in the series name as written.
export async function readMetrics(url) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const values = {};
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (match) values[match[1]] = Number(match[2]);
  }
  return values;
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

// Samples a /metrics series in a worker thread (whose event loop the test's streams cannot starve). Resolves
// once the first sample is in, to { stop() }, which resolves to the largest value seen.
export async function sampleMetric(url, series) {
  const worker = new Worker(`
    const { parentPort, workerData: { url, series } } = require('node:worker_threads');
    let max = -Infinity;
    let stopped = false;
    parentPort.on('message', () => { stopped = true; });
    (async () => {
      while (!stopped) {
        const text = await (await fetch(url + '/metrics')).text();
        const line = text.split('\\n').find((l) => l.startsWith(series + ' '));
        if (max === -Infinity) parentPort.postMessage('ready');
        if (line) max = Math.max(max, Number(line.slice(series.length + 1)));
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
      parentPort.postMessage(max);
    })();
  `, { eval: true, workerData: { url, series } });
  const messages = [];
  let deliver = null;
  worker.on('message', (m) => (deliver ? deliver(m) : messages.push(m)));
  const next = () => new Promise((resolve, reject) => {
    if (messages.length) return resolve(messages.shift());
    deliver = (m) => { deliver = null; resolve(m); };
    worker.once('error', reject);
  });
  assert.equal(await next(), 'ready');
  return {
    async stop() {
      worker.postMessage('stop');
      let max = await next();
      while (max === 'ready') max = await next();
      await worker.terminate();
      return max;
    },
  };
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
