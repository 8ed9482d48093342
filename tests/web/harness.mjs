// What the browser tests share: starting a server (the real `tessera serve`, or the mock), the system's
// Chromium with a fresh profile, and reading the server's /metrics.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { readMetrics, spawnServer } from '../common/server_process.mjs';

export { readMetrics };

const mockScript = fileURLToPath(new URL('./mock-server.mjs', import.meta.url));

export const usingMock = process.env.TESSERA_WEB_MOCK === '1';

function serverCommand({ mock, apiKey }) {
  const keyArgs = apiKey ? ['--api-key', apiKey] : [];
  if (mock) return [process.execPath, [mockScript, '--host', '127.0.0.1', '--port', '0', ...keyArgs]];
  const binary = process.env.TESSERA_BINARY;
  const fixtures = process.env.TESSERA_FIXTURES;
  if (!binary || !fixtures) {
    throw new Error('set TESSERA_BINARY and TESSERA_FIXTURES (or TESSERA_WEB_MOCK=1 to test against the mock)');
  }
  const model = join(fixtures, 'trained', 'stories260K.gguf');
  return [binary, ['serve', '-m', model, '--host', '127.0.0.1', '--port', '0', ...keyArgs]];
}

// Starts `tessera serve` (or, with mock: true or TESSERA_WEB_MOCK=1, the mock server) on a free port and waits
// for its "listening on" line. Returns { url, mock, stop }. Its output keeps being read, so that a server that
// logs never blocks on a full pipe.
export async function startServer({ mock = usingMock, apiKey = null } = {}) {
  const [command, args] = serverCommand({ mock, apiKey });
  const server = await spawnServer(command, args, { killAfterMs: 5_000 });
  return { url: server.url, mock, stop: async () => { await server.stop(); } };
}

// The system's Chromium (downloads of browser builds do not work here) with a new empty profile.
export async function launchBrowser(options = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'tessera-web-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    acceptDownloads: true,
    ...options,
  });
  context.setDefaultTimeout(15_000);
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

// The server's Prometheus text as { series: value }, a series named with its labels as the text writes them:
// Scripts the mock's next chat completion (see mock-server.mjs).
export async function scriptNextReply(server, script) {
  if (!server.mock) throw new Error('only the mock server takes scripted replies');
  const response = await fetch(`${server.url}/mock/next-reply`, { method: 'POST', body: JSON.stringify(script) });
  if (!response.ok) throw new Error(`scripting the mock failed: ${response.status}`);
}

// Opens the page in a new tab and records what every test checks afterwards with assertHealthyPage: requests
// to anywhere but the server, failed loads, script errors and Content-Security-Policy violations, and browser
// dialogs (which are accepted). The chat requests are kept for the tests to read.
export async function openPage(browser, server, { waitForModel = true } = {}) {
  const page = await browser.context.newPage();
  const record = { foreign: [], failed: [], errors: [], dialogs: [], chatRequests: [] };
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(`${server.url}/`) && !/^(data|blob):/.test(url)) record.foreign.push(url);
    if (url === `${server.url}/v1/chat/completions`) record.chatRequests.push(request);
  });
  page.on('response', (response) => {
    if (response.status() >= 400 && !response.url().includes('/v1/')) {
      record.failed.push(`${response.status()} ${response.url()}`);
    }
  });
  page.on('pageerror', (error) => record.errors.push(error.message));
  page.on('console', (message) => {
    if (message.type() === 'error' && /Content Security Policy/.test(message.text())) record.errors.push(message.text());
  });
  page.on('dialog', (dialog) => {
    record.dialogs.push(dialog.message());
    dialog.accept();
  });
  await page.goto(server.url);
  if (waitForModel) await page.waitForFunction(() => document.querySelector('[data-stat="model"]').textContent);
  return { page, record };
}

export function assertHealthyPage(record, { dialogs = 0 } = {}) {
  const problems = [...record.foreign.map((u) => `request outside the server: ${u}`),
    ...record.failed.map((f) => `failed load: ${f}`), ...record.errors.map((e) => `script error: ${e}`)];
  if (record.dialogs.length !== dialogs) problems.push(`dialogs: ${JSON.stringify(record.dialogs)}`);
  if (problems.length) throw new Error(problems.join('\n'));
}

// The body of the n-th chat request the page sent (-1: the last).
export function chatRequestBody(record, n = -1) {
  const request = record.chatRequests.at(n);
  if (!request) throw new Error(`the page sent ${record.chatRequests.length} chat requests`);
  return request.postDataJSON();
}

export async function sendMessage(page, text) {
  await page.fill('#prompt', text);
  await page.press('#prompt', 'Enter');
}

// Waits until `count` replies are on the page and none is streaming.
export async function waitForReplies(page, count, timeout = 30_000) {
  await page.waitForFunction((n) => !document.querySelector('.message.streaming')
    && document.querySelectorAll('.message.assistant').length === n, count, { timeout });
}

export function replyTexts(page) {
  return page.locator('.message.assistant .message-body').allTextContents();
}

// The note ("Stopped.", ...) or error under the last reply, or null when there is none.
export function replyNote(page, kind = 'note') {
  return page.evaluate((selector) => document.querySelector(selector)?.textContent ?? null,
    `.message.assistant:last-child .message-${kind}`);
}

// Opens Settings, fills the given fields (name -> text; '' empties one) and saves.
export async function changeSettings(page, values) {
  await page.click('#open-settings');
  for (const [name, value] of Object.entries(values)) {
    await page.fill(`#settings-form [name="${name}"]`, String(value));
  }
  await page.click('#settings-form button[value="save"]');
  await page.waitForFunction(() => !document.querySelector('#settings-dialog').open);
}
