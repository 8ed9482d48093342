// The chat page in headless Chromium against the mock server, for what the real server cannot be made to do on
// demand: reply with HTML, reply slowly enough to stop by hand, fail with a 4xx/5xx, cut a stream, go away.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  assertHealthyPage, launchBrowser, openPage, readMetrics, replyNote, replyTexts, scriptNextReply, sendMessage,
  startServer, waitForReplies,
} from './harness.mjs';

const bounded = { timeout: 60_000 };
let browser;

before(async () => {
  browser = await launchBrowser({ viewport: { width: 1100, height: 800 } });
});
after(() => browser?.close());

async function mockFor(t) {
  const server = await startServer({ mock: true });
  t.after(() => server.stop());
  const opened = await openPage(browser, server);
  t.after(() => opened.page.close());
  return { server, ...opened };
}

async function waitForRunning(server, count) {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const running = (await readMetrics(server.url)).tessera_requests_running;
    if (running === count) return;
    if (Date.now() > deadline) throw new Error(`${running} requests running, not ${count}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test('a streamed reply holding <script> and <img onerror> shows them as text', bounded, async (t) => {
  const { server, page, record } = await mockFor(t);
  const text = 'Try <script>window.injected = 1; alert("script")</script> or <img src=x onerror="alert(\'img\')">!';
  await scriptNextReply(server, { text });
  await sendMessage(page, 'Say something dangerous');
  await waitForReplies(page, 1);
  assert.deepEqual(await replyTexts(page), [text]);
  assert.equal(await page.locator('#messages script, #messages img').count(), 0);
  await page.waitForTimeout(300);
  assert.equal(await page.evaluate(() => window.injected), undefined);
  assertHealthyPage(record);
});

test('Escape stops a reply; the text stops growing and the server ends the request', bounded, async (t) => {
  const { server, page, record } = await mockFor(t);
  await scriptNextReply(server, { text: 'word '.repeat(400), token_delay_ms: 25 });
  await sendMessage(page, 'Talk for a long time');
  await page.waitForFunction(() => document.querySelector('.message.streaming .message-body')?.textContent);
  await waitForRunning(server, 1);
  await page.keyboard.press('Escape');
  await waitForReplies(page, 1);
  await waitForRunning(server, 0);
  const [stopped] = await replyTexts(page);
  assert.ok(stopped.length > 0 && stopped.length < 'word '.repeat(400).trim().length, `${stopped.length} chars`);
  assert.equal(await replyNote(page), 'Stopped.');
  await page.waitForTimeout(300);
  assert.deepEqual(await replyTexts(page), [stopped]);
  assertHealthyPage(record);
});

test('an unreachable server is reported in place, and Regenerate retries', bounded, async (t) => {
  const { server, page, record } = await mockFor(t);
  await server.stop();
  await sendMessage(page, 'Hello?');
  await waitForReplies(page, 1);
  assert.match(await replyNote(page, 'error'), /^Cannot reach the server/);
  assert.equal(await page.textContent('.message.user .message-body'), 'Hello?');
  assert.equal(await page.locator('.message.assistant .message-action:text-is("Regenerate")').count(), 1);
  assertHealthyPage(record);
});

test('a 4xx or 5xx reply shows the server\'s own message', bounded, async (t) => {
  const { server, page, record } = await mockFor(t);
  await scriptNextReply(server, { fault: 'status', status: 503, message: 'the KV cache is full, try later' });
  await sendMessage(page, 'Hello');
  await waitForReplies(page, 1);
  assert.equal(await replyNote(page, 'error'), 'The server answered 503: the KV cache is full, try later');

  await scriptNextReply(server, { fault: 'status', status: 400, message: "'max_tokens' must be at least 1" });
  await page.click('.message-action:text-is("Regenerate")');
  await waitForReplies(page, 1);
  assert.equal(await replyNote(page, 'error'), "The server answered 400: 'max_tokens' must be at least 1");

  await page.click('.message-action:text-is("Regenerate")');
  await waitForReplies(page, 1);
  assert.equal(await page.locator('.message-error').count(), 0);
  assert.ok((await replyTexts(page))[0].length > 0);
  assertHealthyPage(record);
});

test('a stream cut mid-reply keeps the text so far and says it was cut', bounded, async (t) => {
  const { server, page, record } = await mockFor(t);
  await scriptNextReply(server, { text: 'The quick brown fox jumps over the lazy dog', fault: 'cut', cut_after: 3 });
  await sendMessage(page, 'Tell me about the fox');
  await waitForReplies(page, 1);
  assert.deepEqual(await replyTexts(page), ['The quick br']);
  assert.equal(await replyNote(page, 'error'), 'The connection was cut before the reply was finished.');

  await scriptNextReply(server, { text: 'Once there was', fault: 'stream-error', cut_after: 2,
    message: 'decoding failed' });
  await page.click('.message-action:text-is("Regenerate")');
  await waitForReplies(page, 1);
  assert.deepEqual(await replyTexts(page), ['Once the']);
  assert.equal(await replyNote(page, 'error'), 'The server stopped the reply: decoding failed');
  assertHealthyPage(record);
});
