// Markdown in replies, rendered as DOM nodes. Model text reaches the page only through text nodes and
// textContent, never through innerHTML, so HTML a model writes is shown as text and never runs.
//
// Blocks: paragraphs (a single newline is a line break, as chat users expect), ATX headings, fenced code blocks
// (an unclosed fence runs to the end, which is how a code block looks while it streams), bullet and numbered
// lists (nested by indentation), block quotes, rules. Inline: code spans, **strong**, *emphasis*, backslash
// escapes, and [links](https://...) whose target is http or https.

const fenceOpen = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)/;
const heading = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const rule = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const listItem = /^( *)([-*+]|\d{1,9}[.)])(?: +(.*))?$/;
const quote = /^ {0,3}> ?(.*)$/;

export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  renderBlocks(source.replace(/\r\n?/g, '\n').split('\n'), fragment);
  return fragment;
}

function element(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function startsBlock(line) {
  return fenceOpen.test(line) || heading.test(line) || rule.test(line) || quote.test(line) || listItem.test(line);
}

function indentOf(line) {
  return line.length - line.trimStart().length;
}

function renderBlocks(lines, parent) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.trim() === '') {
      i++;
    } else if (fenceOpen.test(line)) {
      i = codeBlock(lines, i, parent);
    } else if (heading.test(line)) {
      const [, hashes, text] = heading.exec(line);
      const node = element(`h${hashes.length}`);
      renderInline(text, node);
      parent.append(node);
      i++;
    } else if (rule.test(line)) {
      parent.append(element('hr'));
      i++;
    } else if (quote.test(line)) {
      const inner = [];
      while (i < lines.length && quote.test(lines[i])) inner.push(quote.exec(lines[i++])[1]);
      const node = element('blockquote');
      renderBlocks(inner, node);
      parent.append(node);
    } else if (listItem.test(line)) {
      i = list(lines, i, parent);
    } else {
      const paragraph = [];
      while (i < lines.length && lines[i].trim() !== '' && (paragraph.length === 0 || !startsBlock(lines[i]))) {
        paragraph.push(lines[i++].trim());
      }
      const node = element('p');
      renderInline(paragraph.join('\n'), node);
      parent.append(node);
    }
  }
}

function codeBlock(lines, start, parent) {
  const [, fence, language] = fenceOpen.exec(lines[start]);
  const indent = indentOf(lines[start]);
  const closing = new RegExp(`^ {0,3}${fence[0] === '`' ? '`' : '~'}{${fence.length},}\\s*$`);
  const body = [];
  let i = start + 1;
  while (i < lines.length && !closing.test(lines[i])) {
    const line = lines[i++];
    body.push(line.slice(Math.min(indent, indentOf(line))));
  }
  const block = element('div', 'code-block');
  const head = element('div', 'code-head');
  const label = element('span', 'code-language');
  label.textContent = language;
  const copy = element('button', 'code-copy');
  copy.type = 'button';
  copy.textContent = 'Copy';
  copy.setAttribute('aria-label', 'Copy code');
  head.append(label, copy);
  const pre = element('pre');
  const code = element('code');
  code.textContent = body.join('\n');
  pre.append(code);
  block.append(head, pre);
  parent.append(block);
  return i + 1;
}

function list(lines, start, parent) {
  const first = listItem.exec(lines[start]);
  const ordered = /\d/.test(first[2]);
  const node = element(ordered ? 'ol' : 'ul');
  if (ordered && parseInt(first[2], 10) !== 1) node.start = parseInt(first[2], 10);
  const baseIndent = first[1].length;
  let i = start;
  while (i < lines.length) {
    const match = listItem.exec(lines[i]);
    if (!match || match[1].length !== baseIndent || /\d/.test(match[2]) !== ordered) break;
    const contentIndent = baseIndent + match[2].length + 1;
    const itemLines = [match[3] ?? ''];
    i++;
    while (i < lines.length) {
      const line = lines[i];
      const indent = indentOf(line);
      if (line.trim() === '') {
        // A blank line ends the item unless the next text is indented under it.
        let next = i + 1;
        while (next < lines.length && lines[next].trim() === '') next++;
        if (next >= lines.length || indentOf(lines[next]) < contentIndent) break;
        itemLines.push('');
        i++;
      } else if (indent >= contentIndent || (indent > baseIndent && listItem.test(line))) {
        // Models often indent a nested list by fewer spaces than the item's text; deeper is enough.
        itemLines.push(line.slice(Math.min(indent, contentIndent)));
        i++;
      } else if (startsBlock(line)) {
        break;
      } else {
        itemLines.push(line.trim());
        i++;
      }
    }
    const item = element('li');
    renderBlocks(itemLines, item);
    node.append(item);
  }
  parent.append(node);
  return i;
}

const escapable = /[\\`*_{}[\]()#+\-.!>~|<]/;
const link = /^\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/;
const wordChar = /[\p{L}\p{N}]/u;

// Where the emphasis whose text starts at `from` closes with `marker` (after at least one character), or -1.
// `failedAfter` remembers, per marker, a position after which no closer exists, so a paragraph full of unmatched
// markers is still scanned in linear time.
function findCloser(text, from, marker, failedAfter) {
  if ((failedAfter.get(marker) ?? Infinity) <= from) return -1;
  for (let j = text.indexOf(marker, from + 1); j !== -1; j = text.indexOf(marker, j + 1)) {
    if (/\s/.test(text[j - 1])) continue;
    if (marker.length === 1 && text[j + 1] === marker) {
      j++;
      continue;
    }
    if (marker[0] === '_' && wordChar.test(text[j + marker.length] ?? '')) continue;
    return j;
  }
  failedAfter.set(marker, from);
  return -1;
}

function renderInline(text, parent) {
  let plain = '';
  const flush = () => {
    if (plain) parent.append(document.createTextNode(plain));
    plain = '';
  };
  const failedAfter = new Map();
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === '\\' && escapable.test(text[i + 1] ?? '')) {
      plain += text[i + 1];
      i += 2;
    } else if (c === '\n') {
      flush();
      parent.append(element('br'));
      i++;
    } else if (c === '`') {
      const ticks = /^`+/.exec(text.slice(i))[0];
      const end = text.indexOf(ticks, i + ticks.length);
      if (end === -1) {
        plain += ticks;
        i += ticks.length;
        continue;
      }
      flush();
      const code = element('code');
      const inner = text.slice(i + ticks.length, end).replace(/\n/g, ' ');
      code.textContent = /^ .*[^ ].* $/.test(inner) ? inner.slice(1, -1) : inner;
      parent.append(code);
      i = end + ticks.length;
    } else if (c === '*' || c === '_') {
      const marker = text[i + 1] === c ? c + c : c;
      const opensWord = !/\s/.test(text[i + marker.length] ?? ' ');
      const insideWord = c === '_' && wordChar.test(text[i - 1] ?? '');
      const close = opensWord && !insideWord ? findCloser(text, i + marker.length, marker, failedAfter) : -1;
      if (close === -1) {
        plain += marker;
        i += marker.length;
        continue;
      }
      flush();
      const node = element(marker.length === 2 ? 'strong' : 'em');
      renderInline(text.slice(i + marker.length, close), node);
      parent.append(node);
      i = close + marker.length;
    } else if (c === '[' && link.test(text.slice(i, i + 2048))) {
      const [whole, label, href] = link.exec(text.slice(i, i + 2048));
      flush();
      const anchor = element('a');
      anchor.href = href;
      anchor.target = '_blank';
      anchor.rel = 'noopener noreferrer';
      renderInline(label, anchor);
      parent.append(anchor);
      i += whole.length;
    } else {
      plain += c;
      i++;
    }
  }
  flush();
}
