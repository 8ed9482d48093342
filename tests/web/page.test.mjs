// The chat page in headless Chromium against `tessera serve` on the stories260K fixture (TESSERA_BINARY,
// TESSERA_FIXTURES), or against the mock server with TESSERA_WEB_MOCK=1.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import {
  assertHealthyPage, changeSettings, chatRequestBody, launchBrowser, openPage, readMetrics, replyNote, replyTexts,
  sendMessage, startServer, waitForReplies,
} from './harness.mjs';

const bounded = { timeout: 90_000 };
let browser;

before(async () => {
  browser = await launchBrowser({ viewport: { width: 1100, height: 800 } });
  await browser.context.grantPermissions(['clipboard-read', 'clipboard-write']);
});
after(() => browser?.close());

async function serverFor(t, options) {
  const server = await startServer(options);
  t.after(() => server.stop());
  return server;
}

async function pageFor(t, server, options) {
  const opened = await openPage(browser, server, options);
  t.after(() => opened.page.close());
  return opened;
}

test('a message gets a reply that streams in pieces, and the status line describes it', bounded, async (t) => {
  const server = await serverFor(t);
  const { page, record } = await pageFor(t, server);
  const model = (await (await fetch(`${server.url}/v1/models`)).json()).data[0];
  // The fixture model seldom ends a story by itself: without a limit it writes until the context is full, which
  // under the slow link below takes half a minute.
  await changeSettings(page, { max_tokens: 120 });

  // The fixture model can finish a reply within a frame or two; a slow link (as from a phone) spreads the
  // stream out in time, so that the page has to show it in pieces if it renders as data arrives.
  const devtools = await browser.context.newCDPSession(page);
  await devtools.send('Network.emulateNetworkConditions',
    { offline: false, latency: 0, downloadThroughput: 20_000, uploadThroughput: -1 });
  // Every text the reply shows while it streams, as the page renders it.
  await page.evaluate(() => {
    window.seenReplies = [];
    new MutationObserver(() => {
      const body = document.querySelector('.message.assistant .message-body');
      if (body && body.textContent !== window.seenReplies.at(-1)) window.seenReplies.push(body.textContent);
    }).observe(document.querySelector('#messages'), { childList: true, subtree: true, characterData: true });
  });
  await sendMessage(page, 'Once upon a time');
  await waitForReplies(page, 1);

  const [reply] = await replyTexts(page);
  assert.ok(reply.length > 0, 'the reply is empty');
  const partial = (await page.evaluate(() => window.seenReplies)).filter((text) => text !== '' && text !== reply);
  assert.ok(partial.length >= 2, `the reply appeared in ${partial.length + 1} piece(s): ${JSON.stringify(partial)}`);
  assert.equal(await page.textContent('.message.user .message-body'), 'Once upon a time');
  assert.deepEqual(await page.locator('.conversation-open').allTextContents(), ['Once upon a time']);

  const body = chatRequestBody(record);
  assert.deepEqual(body.messages, [{ role: 'user', content: 'Once upon a time' }]);
  assert.equal(body.model, model.id);
  assert.equal(body.stream, true);
  assert.deepEqual(body.stream_options, { include_usage: true });
  assert.equal(body.max_tokens, 120);

  const stat = (name) => page.textContent(`[data-stat="${name}"]`);
  assert.equal(await stat('model'), model.id);
  assert.match(await stat('speed'), /^\d+\.\d tokens\/s$/);
  const [, prompt, cached] = /^prompt (\d+) tokens \((\d+) cached\)$/.exec(await stat('prompt')).map(Number);
  assert.ok(prompt > 0 && cached <= prompt, `prompt ${prompt}, cached ${cached}`);
  const [, used, limit] = /^context (\d+) \/ (\d+)$/.exec(await stat('context')).map(Number);
  assert.equal(limit, model.context_length);
  assert.ok(used > prompt && used <= prompt + 120, `context ${used} of ${limit}, prompt ${prompt}`);
  assertHealthyPage(record);
});

test('Stop ends a reply mid-way, the server frees the request, and the next message works', bounded, async (t) => {
  const server = await serverFor(t);
  const { page, record } = await pageFor(t, server);
  // The fixture model writes hundreds of tokens a second, faster than a key press could be timed from here, so
  // the page itself presses Escape the moment the first piece of the reply is on screen.
  await page.evaluate(() => {
    new MutationObserver((_, observer) => {
      if (document.querySelector('.message.streaming .message-body')?.textContent) {
        observer.disconnect();
        document.dispatchEvent(new KeyboardEvent('keydown', { key: 'Escape', bubbles: true }));
      }
    }).observe(document.querySelector('#messages'), { childList: true, subtree: true, characterData: true });
  });
  await sendMessage(page, 'Once upon a time');
  await waitForReplies(page, 1);
  assert.equal(await replyNote(page), 'Stopped.');
  assert.ok((await replyTexts(page))[0].length > 0, 'the text before the stop was kept');
  assert.equal(await page.textContent('#send'), 'Send');

  // The server learns of the stop when the closed connection fails its next write; then it cancels the request
  // and frees its sequence. Without the stop the fixture would write until its context is full.
  const stopped = 'tessera_requests_total{status="stopped"}';
  const deadline = Date.now() + 5_000;
  let metrics = await readMetrics(server.url);
  while ((metrics.tessera_requests_running !== 0 || metrics[stopped] !== 1) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    metrics = await readMetrics(server.url);
  }
  assert.equal(metrics[stopped], 1, 'the server did not count the request as stopped');
  assert.equal(metrics.tessera_requests_running, 0, 'the server still runs the stopped request');
  assert.equal(metrics.tessera_requests_waiting, 0);
  assert.equal(metrics.tessera_kv_blocks_used, 0, 'the stopped request still holds KV cache blocks');
  const model = (await (await fetch(`${server.url}/v1/models`)).json()).data[0];
  // A loaded host may let the browser's stop arrive late, but never after the context was full.
  assert.ok(metrics.tessera_generated_tokens_total < model.context_length - 64,
    `${metrics.tessera_generated_tokens_total} tokens generated: the request ran on after the stop`);

  await sendMessage(page, 'The end');
  await waitForReplies(page, 2);
  assert.equal(await page.locator('.message-error').count(), 0);
  assert.ok((await replyTexts(page))[1].length > 0);
  assertHealthyPage(record);
});

test('Regenerate replaces the last reply; the same seed gives the same reply, another seed another', bounded,
  async (t) => {
    const server = await serverFor(t);
    const { page, record } = await pageFor(t, server);
    await changeSettings(page, { temperature: 1, seed: 1234, max_tokens: 48 });
    await sendMessage(page, 'Once upon a time');
    await waitForReplies(page, 1);
    const [first] = await replyTexts(page);

    await page.click('.message.assistant .message-action:text-is("Regenerate")');
    await waitForReplies(page, 1);
    assert.deepEqual(await replyTexts(page), [first]);
    assert.equal(record.chatRequests.length, 2);
    assert.deepEqual(chatRequestBody(record, 1), chatRequestBody(record, 0));
    assert.deepEqual(chatRequestBody(record, 1).messages, [{ role: 'user', content: 'Once upon a time' }]);

    await changeSettings(page, { seed: 99 });
    await page.click('.message.assistant .message-action:text-is("Regenerate")');
    await waitForReplies(page, 1);
    assert.equal(chatRequestBody(record).seed, 99);
    assert.notEqual((await replyTexts(page))[0], first);
    assert.equal(await page.locator('.message').count(), 2);
    assertHealthyPage(record);
  });

test('editing a user message resends it and drops what came after it', bounded, async (t) => {
  const server = await serverFor(t);
  const { page, record } = await pageFor(t, server);
  await sendMessage(page, 'Once upon a time');
  await waitForReplies(page, 1);
  await sendMessage(page, 'The end');
  await waitForReplies(page, 2);
  assert.deepEqual(chatRequestBody(record).messages.map((m) => m.role), ['user', 'assistant', 'user']);

  // Escape leaves the message as it was.
  await page.click('.message.user >> nth=0 >> .message-action:text-is("Edit")');
  await page.fill('.edit-input', 'changed my mind');
  await page.press('.edit-input', 'Escape');
  assert.equal(await page.textContent('.message.user >> nth=0 >> .message-body'), 'Once upon a time');
  assert.equal(await page.locator('.message').count(), 4);

  await page.click('.message.user >> nth=0 >> .message-action:text-is("Edit")');
  await page.fill('.edit-input', 'A little dog');
  await page.press('.edit-input', 'Enter');
  await waitForReplies(page, 1);
  assert.equal(await page.locator('.message').count(), 2);
  assert.equal(await page.textContent('.message.user .message-body'), 'A little dog');
  assert.deepEqual(chatRequestBody(record).messages, [{ role: 'user', content: 'A little dog' }]);
  assert.equal(record.chatRequests.length, 3);
  assertHealthyPage(record);
});

test('conversations survive a reload and can be renamed, deleted, exported and imported', bounded, async (t) => {
  const server = await serverFor(t);
  const { page, record } = await pageFor(t, server);
  await sendMessage(page, 'Once upon a time');
  await waitForReplies(page, 1);
  const [firstReply] = await replyTexts(page);
  await page.click('#new-chat');
  await sendMessage(page, 'Tom had a red ball');
  await waitForReplies(page, 1);

  await page.reload();
  const titles = () => page.locator('.conversation-open').allTextContents();
  assert.deepEqual(await titles(), ['Tom had a red ball', 'Once upon a time']);
  assert.equal(await page.textContent('.message.user .message-body'), 'Tom had a red ball');
  await page.click('.conversation-open:text-is("Once upon a time")');
  assert.deepEqual(await replyTexts(page), [firstReply]);

  await page.click('.conversation:has-text("Once upon a time") [aria-label^="Rename"]');
  await page.fill('.rename-input', 'Story one');
  await page.press('.rename-input', 'Enter');
  assert.equal(await page.textContent('#chat-title'), 'Story one');
  await page.reload();
  assert.deepEqual(await titles(), ['Tom had a red ball', 'Story one']);

  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export')]);
  const exported = JSON.parse(await readFile(await download.path(), 'utf8'));
  assert.equal(exported.format, 'tessera-conversations');
  assert.deepEqual(exported.conversations.map((c) => c.title).sort(), ['Story one', 'Tom had a red ball']);

  await page.click('.conversation:has-text("Story one") [aria-label^="Delete"]');
  assert.deepEqual(await titles(), ['Tom had a red ball']);
  await page.reload();
  assert.deepEqual(await titles(), ['Tom had a red ball']);

  await page.setInputFiles('#import-file', await download.path());
  // The page reads the file asynchronously: wait for the imported conversations to be listed.
  await page.waitForFunction(() => document.querySelectorAll('.conversation-open').length === 3, null,
    { timeout: 10_000 });
  assert.deepEqual((await titles()).sort(), ['Story one', 'Tom had a red ball', 'Tom had a red ball']);
  await page.click('.conversation-open:text-is("Story one")');
  assert.deepEqual(await replyTexts(page), [firstReply]);

  await page.setInputFiles('#import-file', { name: 'broken.json', mimeType: 'application/json',
    buffer: Buffer.from('{"conversations": [{"messages": [{"role": "robot", "content": "hi"}]}]}') });
  await page.waitForFunction(() => document.querySelector('[data-stat="error"]')?.textContent.startsWith('Could not'),
    null, { timeout: 10_000 });
  assert.match(await page.textContent('[data-stat="error"]'), /^Could not import broken\.json: message 1 of/);
  assert.equal((await titles()).length, 3);
  assertHealthyPage(record, { dialogs: 1 });
});

const markdownReply = [
  '## A title',
  '',
  'Some **bold**, some *emphasis*, `inline code` and a [link](https://example.org/).',
  '',
  '- first',
  '- second',
  '  - nested',
  '',
  '1. one',
  '2. two',
  '',
  '> a quote',
  '',
  '```python',
  'def greet(name):',
  '    return f"<b>{name}</b>"',
  '```',
  '',
  'Now <script>window.injected = "script"</script> and <img src="x" onerror="window.injected = \'img\'; alert(1)">.',
].join('\n');

test('Markdown renders, code blocks copy, and HTML in a reply stays text', bounded, async (t) => {
  const server = await serverFor(t);
  const { page, record } = await pageFor(t, server);
  const conversation = { title: 'Markdown', messages: [{ role: 'user', content: 'Show me <b>everything</b>' },
    { role: 'assistant', content: markdownReply }] };
  await page.setInputFiles('#import-file', { name: 'markdown.json', mimeType: 'application/json',
    buffer: Buffer.from(JSON.stringify({ format: 'tessera-conversations', version: 1,
      conversations: [conversation] })) });

  const reply = page.locator('.message.assistant .message-body');
  assert.equal(await reply.locator('h2').textContent(), 'A title');
  assert.equal(await reply.locator('strong').textContent(), 'bold');
  assert.equal(await reply.locator('em').textContent(), 'emphasis');
  assert.equal(await reply.locator('p > code').textContent(), 'inline code');
  assert.equal(await reply.locator('a').getAttribute('href'), 'https://example.org/');
  assert.deepEqual(await reply.locator('ul > li > ul > li').allTextContents(), ['nested']);
  assert.deepEqual(await reply.locator('ol > li').allTextContents(), ['one', 'two']);
  assert.equal(await reply.locator('blockquote').textContent(), 'a quote');
  assert.equal(await reply.locator('.code-language').textContent(), 'python');
  const code = 'def greet(name):\n    return f"<b>{name}</b>"';
  assert.equal(await reply.locator('pre > code').textContent(), code);
  assert.equal(await page.evaluate(() => getComputedStyle(document.querySelector('pre code')).fontFamily
    .includes('monospace')), true);

  // The HTML is on the page as text; nothing of it became an element or ran.
  assert.equal(await page.locator('#messages script, #messages img, #messages b').count(), 0);
  assert.match(await reply.locator('p').last().textContent(), /<script>window\.injected = "script"<\/script>/);
  assert.match(await reply.locator('p').last().textContent(), /<img src="x" onerror=/);
  assert.equal(await page.textContent('.message.user .message-body'), 'Show me <b>everything</b>');
  await page.waitForTimeout(300);
  assert.equal(await page.evaluate(() => window.injected), undefined);

  await page.click('.code-copy');
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), code);
  await page.click('.message.user .message-action:text-is("Copy")');
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), 'Show me <b>everything</b>');
  assertHealthyPage(record);
});

// Each case's HTML is what CommonMark gives for it, but for single newlines: chat text uses them as line breaks.
const markdownCases = [
  ['a\nb', '<p>a<br>b</p>'],
  ['snake_case_name and _em_', '<p>snake_case_name and <em>em</em></p>'],
  ['2 * 3 * 4', '<p>2 * 3 * 4</p>'],
  ['\\*not em\\*', '<p>*not em*</p>'],
  ['`a` and ``b ` c``', '<p><code>a</code> and <code>b ` c</code></p>'],
  ['**bold** and *em*', '<p><strong>bold</strong> and <em>em</em></p>'],
  ['[x](javascript:alert(1))', '<p>[x](javascript:alert(1))</p>'],
  ['<b>x</b> &amp;', '<p>&lt;b&gt;x&lt;/b&gt; &amp;amp;</p>'],
  ['# Title #', '<h1>Title</h1>'],
  ['---', '<hr>'],
  ['3. three\n4. four', '<ol start="3"><li><p>three</p></li><li><p>four</p></li></ol>'],
  ['- a\n\n  more\n- b', '<ul><li><p>a</p><p>more</p></li><li><p>b</p></li></ul>'],
  ['> q\n> r', '<blockquote><p>q<br>r</p></blockquote>'],
  ['text\n- item', '<p>text</p><ul><li><p>item</p></li></ul>'],
];

test('the Markdown renderer, case by case', bounded, async (t) => {
  const server = await serverFor(t);
  const { page, record } = await pageFor(t, server);
  const rendered = await page.evaluate(async (cases) => {
    const { renderMarkdown } = await import('./markdown.js');
    const html = (source) => {
      const box = document.createElement('div');
      box.append(renderMarkdown(source));
      return box;
    };
    // Every '*' opens emphasis that never closes: the renderer must not search the rest of the text each time.
    const stars = '*a '.repeat(20_000).trim();
    const started = performance.now();
    const starsText = html(stars).textContent;
    return {
      cases: cases.map(([source]) => html(source).innerHTML),
      // While a reply streams, an unclosed fence is a code block that runs to the end.
      unclosedFence: html('```js\nlet a = 1;\n  b();').querySelector('pre code').textContent,
      fenceLanguage: html('~~~rust\nfn main() {}\n~~~\nafter').querySelector('.code-language').textContent,
      starsIntact: starsText === stars,
      starsMs: performance.now() - started,
    };
  }, markdownCases);
  markdownCases.forEach(([source, expected], i) => assert.equal(rendered.cases[i], expected, source));
  assert.equal(rendered.unclosedFence, 'let a = 1;\n  b();');
  assert.equal(rendered.fenceLanguage, 'rust');
  assert.ok(rendered.starsIntact);
  assert.ok(rendered.starsMs < 1000, `20000 unclosed emphasis markers took ${rendered.starsMs} ms`);
  assertHealthyPage(record);
});

test('conversations stored in a shape the page cannot read are kept aside, not overwritten', bounded,
  async (t) => {
    const server = await serverFor(t);
    const { page, record } = await pageFor(t, server);
    await page.evaluate(() => localStorage.setItem('tessera.conversations', '{"truncated": '));
    await page.reload();
    await page.waitForFunction(() => document.querySelector('[data-stat="model"]').textContent);
    await sendMessage(page, 'Once upon a time');
    await waitForReplies(page, 1);
    assert.equal(await page.evaluate(() => localStorage.getItem('tessera.conversations.unreadable')),
      '{"truncated": ');
    assert.equal(await page.evaluate(() => JSON.parse(localStorage.getItem('tessera.conversations')).length), 1);
    assertHealthyPage(record);
  });

test('settings are kept in the browser and reach the request; temperature 0 repeats itself', bounded,
  async (t) => {
    const server = await serverFor(t);
    const { page, record } = await pageFor(t, server);
    const settings = { system: 'You are a storyteller.', temperature: 0, top_p: 0.9, top_k: 20, min_p: 0.05,
      max_tokens: 16, seed: 7 };
    await changeSettings(page, settings);
    await sendMessage(page, 'Once upon a time');
    await waitForReplies(page, 1);
    const body = chatRequestBody(record);
    assert.deepEqual(body.messages, [{ role: 'system', content: 'You are a storyteller.' },
      { role: 'user', content: 'Once upon a time' }]);
    for (const name of ['temperature', 'top_p', 'top_k', 'min_p', 'max_tokens', 'seed']) {
      assert.equal(body[name], settings[name], name);
    }
    const [, prompt] = /^prompt (\d+)/.exec(await page.textContent('[data-stat="prompt"]')).map(Number);
    const [, used] = /^context (\d+)/.exec(await page.textContent('[data-stat="context"]')).map(Number);
    assert.ok(used - prompt <= 16, `${used - prompt} tokens generated with max_tokens 16`);
    const [first] = await replyTexts(page);

    await page.reload();
    await page.click('#new-chat');
    await sendMessage(page, 'Once upon a time');
    await waitForReplies(page, 1);
    assert.deepEqual(await replyTexts(page), [first]);
    assert.deepEqual(chatRequestBody(record), body);

    await page.click('#open-settings');
    for (const [name, value] of Object.entries(settings)) {
      assert.equal(await page.inputValue(`#settings-form [name="${name}"]`), String(value), name);
    }
    await page.click('#settings-clear');
    await page.click('#settings-form button[value="save"]');
    await page.click('.message.assistant .message-action:text-is("Regenerate")');
    await waitForReplies(page, 1);
    assert.deepEqual(Object.keys(chatRequestBody(record)).sort(),
      ['messages', 'model', 'stream', 'stream_options']);
    assertHealthyPage(record);
  });

test('with --api-key the page asks for the key once and sends it as a Bearer token', bounded, async (t) => {
  const server = await serverFor(t, { apiKey: 'open-sesame' });
  const { page, record } = await pageFor(t, server, { waitForModel: false });
  await page.waitForSelector('#key-dialog[open]');
  assert.match(await page.textContent('#key-reason'), /needs an API key/);
  await page.fill('#key-input', 'wrong-key');
  await page.press('#key-input', 'Enter');
  await page.waitForFunction(() => /refused/.test(document.querySelector('#key-reason').textContent));
  assert.equal(await page.evaluate(() => document.querySelector('#key-dialog').open), true);
  await page.fill('#key-input', 'open-sesame');
  await page.press('#key-input', 'Enter');
  await page.waitForFunction(() => document.querySelector('[data-stat="model"]').textContent);

  await sendMessage(page, 'Once upon a time');
  await waitForReplies(page, 1);
  assert.equal(await page.locator('.message-error').count(), 0);
  assert.equal((await record.chatRequests.at(-1).allHeaders()).authorization, 'Bearer open-sesame');

  await page.reload();
  await page.waitForFunction(() => document.querySelector('[data-stat="model"]').textContent);
  assert.equal(await page.evaluate(() => document.querySelector('#key-dialog').open), false);
  assertHealthyPage(record);
});

test('a phone-sized screen, the keyboard alone, and the dark theme', bounded, async (t) => {
  const server = await serverFor(t);
  const { page, record } = await pageFor(t, server);
  await page.setViewportSize({ width: 390, height: 760 });
  assert.equal(await page.isVisible('#sidebar'), false);
  await page.click('#toggle-sidebar');
  assert.equal(await page.isVisible('#sidebar'), true);
  await page.keyboard.press('Escape');
  assert.equal(await page.isVisible('#sidebar'), false);

  await page.focus('#prompt');
  await page.keyboard.type('Line one');
  await page.keyboard.press('Shift+Enter');
  await page.keyboard.type('line two');
  assert.equal(await page.inputValue('#prompt'), 'Line one\nline two');
  assert.equal(record.chatRequests.length, 0);
  await page.keyboard.press('Enter');
  await waitForReplies(page, 1);
  assert.equal(await page.textContent('.message.user .message-body'), 'Line one\nline two');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'prompt');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'send');
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth),
    'the page scrolls sideways on a phone');
  assert.ok(await page.isVisible('#send'));

  const background = () => page.evaluate(() => {
    const [r, g, b] = getComputedStyle(document.body).backgroundColor.match(/\d+/g).map(Number);
    return (r + g + b) / 3;
  });
  await page.emulateMedia({ colorScheme: 'light' });
  assert.ok(await background() > 200, 'the light theme is light');
  await page.emulateMedia({ colorScheme: 'dark' });
  assert.ok(await background() < 50, 'the dark theme is dark');
  assertHealthyPage(record);
});
