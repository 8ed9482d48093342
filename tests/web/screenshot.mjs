// Makes docs/web-chat-light.png and docs/web-chat-dark.png, the README's pictures of the chat page: a
// conversation imported from JSON to show Markdown and a code block, then one message answered live by the
// server (so the last reply and the status line are the server's own).
//
//   TESSERA_BINARY=build/tessera TESSERA_FIXTURES=../shared/fixtures node tests/web/screenshot.mjs
//   TESSERA_WEB_MOCK=1 node tests/web/screenshot.mjs        (the mock server's made-up reply instead)
import { fileURLToPath } from 'node:url';
import { changeSettings, launchBrowser, openPage, sendMessage, startServer, waitForReplies } from './harness.mjs';

const docsDir = fileURLToPath(new URL('../../docs/', import.meta.url));
const hour = 3_600_000;
const examples = [
  {
    title: 'Reversing a list in Python',
    updated: Date.now() - hour,
    messages: [
      { role: 'user', content: 'How do I reverse a list in Python?' },
      { role: 'assistant', content: [
        'Two common ways:',
        '',
        '1. **Slicing** makes a reversed *copy*: `items[::-1]`',
        '2. `list.reverse()` reverses the list **in place**',
        '',
        '```python',
        'items = [1, 2, 3]',
        'print(items[::-1])  # [3, 2, 1]',
        'items.reverse()     # items is now [3, 2, 1]',
        '```',
      ].join('\n') },
    ],
  },
  {
    title: 'A story about a red ball',
    updated: Date.now() - 2 * hour,
    messages: [{ role: 'user', content: 'Tom had a red ball' }],
  },
  {
    title: 'Names for a cat',
    updated: Date.now() - 3 * hour,
    messages: [{ role: 'user', content: 'Give me three names for a cat' }],
  },
];

const server = await startServer();
const browser = await launchBrowser({ viewport: { width: 1000, height: 800 } });
try {
  const { page } = await openPage(browser, server);
  await page.setInputFiles('#import-file', { name: 'examples.json', mimeType: 'application/json',
    buffer: Buffer.from(JSON.stringify({ format: 'tessera-conversations', version: 1, conversations: examples })) });
  await changeSettings(page, { temperature: 0, max_tokens: 60 });
  await sendMessage(page, 'Now tell me a short story.');
  await waitForReplies(page, 2);
  await page.evaluate(() => document.activeElement.blur());
  for (const scheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme: scheme });
    await page.screenshot({ path: `${docsDir}web-chat-${scheme}.png` });
    console.log(`wrote docs/web-chat-${scheme}.png`);
  }
} finally {
  await browser.close();
  await server.stop();
}
