// The chat page of `tessera serve`: conversations kept in localStorage, replies streamed from the server's
// /v1/chat/completions, rendered with the Markdown renderer in markdown.js.
import { HttpError, listModels, openChat, readChatStream } from './api.js';
import { renderMarkdown } from './markdown.js';

const storageKeys = {
  conversations: 'tessera.conversations',
  current: 'tessera.current',
  settings: 'tessera.settings',
  apiKey: 'tessera.apiKey',
};
const samplingFields = [
  { name: 'temperature', integer: false },
  { name: 'top_p', integer: false },
  { name: 'top_k', integer: true },
  { name: 'min_p', integer: false },
  { name: 'max_tokens', integer: true },
  { name: 'seed', integer: true },
];
const exportFormat = 'tessera-conversations';

const byId = (id) => document.getElementById(id);
const dom = {
  app: byId('app'),
  backdrop: byId('backdrop'),
  list: byId('conversation-list'),
  title: byId('chat-title'),
  messages: byId('messages'),
  composer: byId('composer'),
  prompt: byId('prompt'),
  send: byId('send'),
  status: byId('status'),
  settingsDialog: byId('settings-dialog'),
  settingsForm: byId('settings-form'),
  keyDialog: byId('key-dialog'),
  keyForm: byId('key-form'),
  importFile: byId('import-file'),
};

const state = {
  conversations: loadStored(storageKeys.conversations, []),
  currentId: localStorage.getItem(storageKeys.current),
  settings: loadStored(storageKeys.settings, {}),
  apiKey: localStorage.getItem(storageKeys.apiKey),
  model: null, // the server's first entry of /v1/models
  generation: null, // { controller, conversation, message } while a reply streams
  keyRequest: null, // the open API key dialog's promise, shared by every request that was refused
};
const bodyOfMessage = new WeakMap(); // message -> its body element on the page

// The stored value, or `fallback` when there is none; a value that is not JSON of the fallback's shape (a list
// or an object) is kept aside under KEY.unreadable rather than overwritten by the next save.
function loadStored(key, fallback) {
  const text = localStorage.getItem(key);
  if (text === null) return fallback;
  try {
    const value = JSON.parse(text);
    if (Array.isArray(value) === Array.isArray(fallback) && value !== null && typeof value === 'object') {
      return value;
    }
  } catch {
    // Handled below, as a value of the wrong shape is.
  }
  localStorage.setItem(`${key}.unreadable`, text);
  return fallback;
}

function store(key, value) {
  try {
    localStorage.setItem(key, typeof value === 'string' ? value : JSON.stringify(value));
  } catch (error) {
    showStatusError(`Could not save in this browser: ${error.message}`);
  }
}

function saveConversations() {
  store(storageKeys.conversations, state.conversations);
  if (state.currentId) store(storageKeys.current, state.currentId);
  else localStorage.removeItem(storageKeys.current);
}

function newId() {
  // crypto.randomUUID exists only in secure contexts, and the page may be opened over plain http on a LAN.
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

function currentConversation() {
  return state.conversations.find((c) => c.id === state.currentId) ?? null;
}

function titleFrom(text) {
  const line = text.trim().split('\n')[0];
  return line.length > 48 ? `${line.slice(0, 47)}…` : line || 'New chat';
}

// ---- status line

function setStat(name, text) {
  dom.status.querySelector(`[data-stat="${name}"]`).textContent = text;
}

function showStatusError(text) {
  setStat('error', text);
}

function showModel() {
  setStat('model', state.model ? state.model.id : '');
}

function showReplyStats(usage, pieces, seconds) {
  const generated = usage?.completion_tokens ?? pieces;
  setStat('speed', seconds > 0 && generated > 1 ? `${((generated - 1) / seconds).toFixed(1)} tokens/s` : '');
  if (usage) {
    const cached = usage.prompt_tokens_details?.cached_tokens ?? 0;
    setStat('prompt', `prompt ${usage.prompt_tokens} tokens (${cached} cached)`);
    const limit = state.model?.context_length;
    const used = usage.prompt_tokens + usage.completion_tokens;
    setStat('context', limit ? `context ${used} / ${limit}` : `context ${used}`);
  } else {
    setStat('prompt', '');
    setStat('context', '');
  }
}

// ---- API key

function askForKey(refused) {
  state.keyRequest ??= new Promise((resolve) => {
    byId('key-reason').textContent = refused
      ? 'The server refused that key. Enter the key it was started with (--api-key).'
      : 'This server needs an API key (it was started with --api-key). It is kept in this browser.';
    dom.keyForm.reset();
    // A dialog closed with Escape keeps the returnValue of its last submit.
    dom.keyDialog.returnValue = '';
    dom.keyDialog.addEventListener('close', () => {
      state.keyRequest = null;
      const key = dom.keyDialog.returnValue === 'save' ? byId('key-input').value.trim() : '';
      if (key) {
        state.apiKey = key;
        store(storageKeys.apiKey, key);
      }
      resolve(key || null);
    }, { once: true });
    dom.keyDialog.showModal();
  });
  return state.keyRequest;
}

// Runs call(apiKey); a 401 asks for the key and tries again, until the key works or the dialog is cancelled.
async function withApiKey(call) {
  for (;;) {
    try {
      return await call(state.apiKey);
    } catch (error) {
      if (!(error instanceof HttpError && error.status === 401)) throw error;
      if ((await askForKey(Boolean(state.apiKey))) === null) throw error;
    }
  }
}

async function loadModel() {
  const models = await withApiKey((key) => listModels(key));
  state.model = models[0] ?? null;
  showModel();
}

// ---- sidebar

function icon(path) {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  const shape = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  shape.setAttribute('d', path);
  svg.append(shape);
  return svg;
}
const icons = {
  rename: 'M4 20h4L19 9l-4-4L4 16zM14 6l4 4',
  delete: 'M5 7h14M10 7V4h4v3M7 7l1 13h8l1-13',
};

function iconButton(label, path, onClick) {
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'icon-button';
  button.setAttribute('aria-label', label);
  button.title = label;
  button.append(icon(path));
  button.addEventListener('click', onClick);
  return button;
}

function renderSidebar() {
  dom.list.replaceChildren();
  const ordered = [...state.conversations].sort((a, b) => b.updated - a.updated);
  for (const conversation of ordered) {
    const item = document.createElement('li');
    item.className = 'conversation';
    const open = document.createElement('button');
    open.type = 'button';
    open.className = 'conversation-open';
    open.textContent = conversation.title;
    if (conversation.id === state.currentId) open.setAttribute('aria-current', 'true');
    open.addEventListener('click', () => openConversation(conversation.id));
    item.append(open,
      iconButton(`Rename “${conversation.title}”`, icons.rename, () => startRename(item, conversation)),
      iconButton(`Delete “${conversation.title}”`, icons.delete, () => deleteConversation(conversation)));
    dom.list.append(item);
  }
}

function startRename(item, conversation) {
  const input = document.createElement('input');
  input.className = 'rename-input';
  input.value = conversation.title;
  input.setAttribute('aria-label', 'New name');
  let done = false;
  const finish = (keep) => {
    if (done) return;
    done = true;
    const title = input.value.trim();
    if (keep && title) {
      conversation.title = title;
      saveConversations();
      if (conversation.id === state.currentId) dom.title.textContent = title;
    }
    renderSidebar();
  };
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') finish(true);
    if (event.key === 'Escape') {
      event.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener('blur', () => finish(true));
  item.replaceChildren(input);
  input.focus();
  input.select();
}

function deleteConversation(conversation) {
  if (!confirm(`Delete the conversation “${conversation.title}”?`)) return;
  if (state.generation?.conversation === conversation) state.generation.controller.abort();
  state.conversations = state.conversations.filter((c) => c !== conversation);
  if (state.currentId === conversation.id) state.currentId = null;
  saveConversations();
  renderSidebar();
  renderConversation();
}

function openConversation(id) {
  state.currentId = id;
  saveConversations();
  renderSidebar();
  renderConversation();
  closeSidebar();
  dom.prompt.focus();
}

function openSidebar() {
  dom.app.classList.add('sidebar-open');
  dom.backdrop.hidden = false;
  byId('toggle-sidebar').setAttribute('aria-expanded', 'true');
}

function closeSidebar() {
  dom.app.classList.remove('sidebar-open');
  dom.backdrop.hidden = true;
  byId('toggle-sidebar').setAttribute('aria-expanded', 'false');
}

// ---- export and import

function exportConversations() {
  const file = { format: exportFormat, version: 1, conversations: state.conversations };
  const url = URL.createObjectURL(new Blob([JSON.stringify(file, null, 2)], { type: 'application/json' }));
  const link = document.createElement('a');
  link.href = url;
  link.download = `tessera-conversations-${new Date().toISOString().slice(0, 10)}.json`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// The conversations of an exported file, checked field by field; throws with the first problem found.
function conversationsFromFile(text) {
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new Error('the file is not JSON');
  }
  const list = Array.isArray(parsed) ? parsed : parsed?.conversations;
  if (!Array.isArray(list)) throw new Error('the file has no list of conversations');
  const ids = new Set(state.conversations.map((c) => c.id));
  return list.map((conversation, i) => {
    if (!Array.isArray(conversation?.messages)) throw new Error(`conversation ${i + 1} has no messages`);
    const messages = conversation.messages.map((m, j) => {
      if (!['user', 'assistant'].includes(m?.role) || typeof m.content !== 'string') {
        throw new Error(`message ${j + 1} of conversation ${i + 1} needs a role (user or assistant) and a text`);
      }
      const message = { role: m.role, content: m.content };
      if (typeof m.finish === 'string') message.finish = m.finish;
      if (typeof m.error === 'string') message.error = m.error;
      return message;
    });
    const id = typeof conversation.id === 'string' && !ids.has(conversation.id) ? conversation.id : newId();
    ids.add(id);
    return {
      id,
      title: typeof conversation.title === 'string' && conversation.title ? conversation.title
        : titleFrom(messages.find((m) => m.role === 'user')?.content ?? ''),
      updated: Number.isFinite(conversation.updated) ? conversation.updated : Date.now(),
      messages,
    };
  });
}

async function importConversations(file) {
  try {
    const imported = conversationsFromFile(await file.text());
    state.conversations.push(...imported);
    showStatusError('');
    if (imported.length > 0) state.currentId = imported[0].id;
    saveConversations();
    renderSidebar();
    renderConversation();
  } catch (error) {
    showStatusError(`Could not import ${file.name}: ${error.message}`);
  }
}

// ---- messages

async function copyText(text, button) {
  try {
    if (navigator.clipboard) {
      await navigator.clipboard.writeText(text);
    } else {
      // navigator.clipboard exists only in secure contexts (not plain http on a LAN address).
      const area = document.createElement('textarea');
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand('copy');
      area.remove();
    }
    button.textContent = 'Copied';
  } catch {
    button.textContent = 'Copy failed';
  }
  setTimeout(() => { button.textContent = 'Copy'; }, 1500);
}

function actionButton(label, onClick) {
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'message-action';
  button.textContent = label;
  button.addEventListener('click', onClick);
  return button;
}

function fillBody(body, message) {
  if (message.role === 'assistant') body.replaceChildren(renderMarkdown(message.content));
  else body.textContent = message.content;
}

function noteFor(message) {
  if (message.error) return { text: message.error, className: 'message-error' };
  if (message.finish === 'stopped') return { text: 'Stopped.', className: 'message-note' };
  if (message.finish === 'length') return { text: 'Cut off at the token limit.', className: 'message-note' };
  return null;
}

function messageView(conversation, message, index) {
  const article = document.createElement('article');
  article.className = `message ${message.role}`;
  const role = document.createElement('div');
  role.className = 'message-role';
  role.textContent = message.role === 'user' ? 'You' : state.model?.id ?? 'Assistant';
  const body = document.createElement('div');
  body.className = 'message-body';
  fillBody(body, message);
  bodyOfMessage.set(message, body);
  article.append(role, body);

  const generating = state.generation?.message === message;
  if (generating) {
    article.classList.add('streaming');
    return article;
  }
  const note = noteFor(message);
  if (note) {
    const line = document.createElement('p');
    line.className = note.className;
    line.textContent = note.text;
    article.append(line);
  }
  const actions = document.createElement('div');
  actions.className = 'message-actions';
  actions.append(actionButton('Copy', (event) => copyText(message.content, event.currentTarget)));
  const isLast = index === conversation.messages.length - 1;
  if (message.role === 'user') {
    actions.append(actionButton('Edit', () => startEdit(article, conversation, message)));
  } else if (isLast) {
    actions.append(actionButton('Regenerate', () => regenerate(conversation)));
  }
  article.append(actions);
  return article;
}

function renderConversation() {
  const conversation = currentConversation();
  dom.title.textContent = conversation?.title ?? 'New chat';
  dom.messages.replaceChildren();
  if (!conversation || conversation.messages.length === 0) {
    const hint = document.createElement('p');
    hint.className = 'empty-hint';
    hint.textContent = 'Ask anything. Enter sends, Shift+Enter starts a new line, Escape stops a reply.';
    dom.messages.append(hint);
    return;
  }
  conversation.messages.forEach((message, i) => dom.messages.append(messageView(conversation, message, i)));
  dom.messages.scrollTop = dom.messages.scrollHeight;
}

function startEdit(article, conversation, message) {
  if (state.generation) return;
  const body = bodyOfMessage.get(message);
  const editor = document.createElement('textarea');
  editor.className = 'edit-input';
  editor.value = message.content;
  editor.setAttribute('aria-label', 'Edit message');
  editor.rows = Math.min(10, message.content.split('\n').length + 1);
  const send = actionButton('Send', () => finishEdit(true));
  const cancel = actionButton('Cancel', () => finishEdit(false));
  const actions = article.querySelector('.message-actions');
  actions.replaceChildren(send, cancel);
  body.replaceChildren(editor);
  editor.focus();
  function finishEdit(resend) {
    const text = editor.value.trim();
    if (!resend || !text || state.generation) {
      renderConversation();
      return;
    }
    // Everything after the edited message answered the old text, so it goes.
    message.content = text;
    conversation.messages.splice(conversation.messages.indexOf(message) + 1);
    generate(conversation);
  }
  editor.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      finishEdit(true);
    } else if (event.key === 'Escape') {
      event.stopPropagation();
      finishEdit(false);
    }
  });
}

function regenerate(conversation) {
  if (state.generation) return;
  if (conversation.messages.at(-1)?.role === 'assistant') conversation.messages.pop();
  generate(conversation);
}

// ---- generation

function requestMessages(messages) {
  const list = [];
  const system = state.settings.system?.trim();
  if (system) list.push({ role: 'system', content: system });
  for (const m of messages) {
    // A reply that failed before its first token has nothing to tell the model.
    if (m.role === 'user' || m.content !== '') list.push({ role: m.role, content: m.content });
  }
  return list;
}

function samplingSettings() {
  const values = {};
  for (const { name } of samplingFields) {
    if (typeof state.settings[name] === 'number') values[name] = state.settings[name];
  }
  return values;
}

function setGenerating(generating) {
  dom.send.textContent = generating ? 'Stop' : 'Send';
  dom.send.classList.toggle('stop', generating);
  dom.send.setAttribute('aria-label', generating ? 'Stop the reply' : 'Send');
}

let renderQueued = false;
function queueRender(message) {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    const body = bodyOfMessage.get(message);
    if (!body) return;
    const nearBottom = dom.messages.scrollHeight - dom.messages.scrollTop - dom.messages.clientHeight < 80;
    fillBody(body, message);
    if (nearBottom) dom.messages.scrollTop = dom.messages.scrollHeight;
  });
}

async function generate(conversation) {
  const message = { role: 'assistant', content: '' };
  const history = requestMessages(conversation.messages);
  conversation.messages.push(message);
  conversation.updated = Date.now();
  const controller = new AbortController();
  state.generation = { controller, conversation, message };
  setGenerating(true);
  showStatusError('');
  saveConversations();
  renderSidebar();
  renderConversation();

  let usage = null;
  let pieces = 0;
  let firstAt = 0;
  let lastAt = 0;
  try {
    if (!state.model) await loadModel();
    const body = { model: state.model?.id, messages: history, ...samplingSettings() };
    const response = await withApiKey((key) => openChat(body, key, controller.signal));
    for await (const chunk of readChatStream(response, controller.signal)) {
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (choice?.delta?.content) {
        lastAt = performance.now();
        if (pieces++ === 0) firstAt = lastAt;
        message.content += choice.delta.content;
        queueRender(message);
      }
      if (choice?.finish_reason) message.finish = choice.finish_reason;
    }
    showReplyStats(usage, pieces, (lastAt - firstAt) / 1000);
  } catch (error) {
    if (error.name === 'AbortError') message.finish = 'stopped';
    else message.error = error.message;
  }
  state.generation = null;
  setGenerating(false);
  conversation.updated = Date.now();
  saveConversations();
  if (conversation.id === state.currentId) renderConversation();
  dom.prompt.focus();
}

function sendPrompt() {
  const text = dom.prompt.value.trim();
  if (!text || state.generation) return;
  let conversation = currentConversation();
  if (!conversation) {
    conversation = { id: newId(), title: titleFrom(text), updated: Date.now(), messages: [] };
    state.conversations.push(conversation);
    state.currentId = conversation.id;
  }
  conversation.messages.push({ role: 'user', content: text });
  dom.prompt.value = '';
  resizePrompt();
  generate(conversation);
}

function stop() {
  state.generation?.controller.abort();
}

function resizePrompt() {
  dom.prompt.style.height = 'auto';
  dom.prompt.style.height = `${Math.min(dom.prompt.scrollHeight, 200)}px`;
}

// ---- settings

function openSettings() {
  const fields = dom.settingsForm.elements;
  fields.system.value = state.settings.system ?? '';
  for (const { name } of samplingFields) fields[name].value = state.settings[name] ?? '';
  dom.settingsDialog.returnValue = '';
  dom.settingsDialog.showModal();
}

function saveSettings() {
  const fields = dom.settingsForm.elements;
  const settings = { system: fields.system.value };
  for (const { name, integer } of samplingFields) {
    const text = fields[name].value.trim();
    if (text !== '') settings[name] = integer ? parseInt(text, 10) : parseFloat(text);
  }
  state.settings = settings;
  store(storageKeys.settings, settings);
}

// ---- wiring

dom.composer.addEventListener('submit', (event) => {
  event.preventDefault();
  if (state.generation) stop();
  else sendPrompt();
});
dom.prompt.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendPrompt();
  }
});
dom.prompt.addEventListener('input', resizePrompt);
document.addEventListener('keydown', (event) => {
  if (event.key !== 'Escape' || document.querySelector('dialog[open]')) return;
  if (state.generation) {
    event.preventDefault();
    stop();
  } else if (dom.app.classList.contains('sidebar-open')) {
    closeSidebar();
  }
});
dom.messages.addEventListener('click', (event) => {
  const button = event.target.closest('.code-copy');
  if (button) copyText(button.closest('.code-block').querySelector('code').textContent, button);
});
byId('new-chat').addEventListener('click', () => {
  state.currentId = null;
  saveConversations();
  renderSidebar();
  renderConversation();
  closeSidebar();
  dom.prompt.focus();
});
byId('toggle-sidebar').addEventListener('click', () => {
  if (dom.app.classList.contains('sidebar-open')) closeSidebar();
  else openSidebar();
});
dom.backdrop.addEventListener('click', closeSidebar);
byId('export').addEventListener('click', exportConversations);
byId('import').addEventListener('click', () => dom.importFile.click());
dom.importFile.addEventListener('change', () => {
  const [file] = dom.importFile.files;
  dom.importFile.value = '';
  if (file) importConversations(file);
});
byId('open-settings').addEventListener('click', openSettings);
byId('settings-clear').addEventListener('click', () => dom.settingsForm.reset());
// Cancel is not a submit button, so that Enter in a field submits the form's one submit button.
for (const button of document.querySelectorAll('[data-close-dialog]')) {
  button.addEventListener('click', () => button.closest('dialog').close());
}
dom.settingsDialog.addEventListener('close', () => {
  if (dom.settingsDialog.returnValue === 'save') saveSettings();
});

renderSidebar();
renderConversation();
dom.prompt.focus();
loadModel().catch((error) => showStatusError(error.message));
