// The server's OpenAI-compatible API: the model list and streamed chat completions (server-sent events).
// Every failure becomes one of the errors below, so the page can say in place what went wrong.

export class UnreachableError extends Error {
  constructor() {
    super('Cannot reach the server. Is `tessera serve` still running?');
  }
}

export class HttpError extends Error {
  constructor(status, message) {
    super(`The server answered ${status}: ${message}`);
    this.status = status;
  }
}

export class StreamCutError extends Error {
  constructor() {
    super('The connection was cut before the reply was finished.');
  }
}

export class StreamError extends Error {
  constructor(message) {
    super(`The server stopped the reply: ${message}`);
  }
}

function headers(apiKey, extra = {}) {
  return apiKey ? { ...extra, Authorization: `Bearer ${apiKey}` } : extra;
}

async function request(path, options, signal) {
  let response;
  try {
    response = await fetch(path, { ...options, signal });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new UnreachableError();
  }
  if (!response.ok) {
    const text = await response.text().catch(() => '');
    let message = text.trim() || response.statusText;
    try {
      message = JSON.parse(text).error.message ?? message;
    } catch {
      // Not the server's error object (a proxy's page, say): its text is the message.
    }
    throw new HttpError(response.status, message);
  }
  return response;
}

export async function listModels(apiKey) {
  const response = await request('v1/models', { headers: headers(apiKey) });
  return (await response.json()).data;
}

// Starts a streamed chat completion; its reply is read with readChatStream.
export function openChat(body, apiKey, signal) {
  return request('v1/chat/completions', {
    method: 'POST',
    headers: headers(apiKey, { 'Content-Type': 'application/json' }),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  }, signal);
}

// Yields each parsed chunk of a streamed chat completion until the server's [DONE].
export async function* readChatStream(response, signal) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = '';
  for (;;) {
    let part;
    try {
      part = await reader.read();
    } catch (error) {
      if (signal.aborted) throw error;
      throw new StreamCutError();
    }
    if (part.done) throw new StreamCutError();
    buffered += part.value;
    const events = buffered.split(/\r?\n\r?\n/);
    buffered = events.pop();
    for (const event of events) {
      const data = event.split(/\r?\n/).filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(5).replace(/^ /, '')).join('\n');
      if (data === '') continue;
      if (data === '[DONE]') return;
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch {
        throw new StreamError('it sent an event that is not JSON');
      }
      if (chunk.error) throw new StreamError(chunk.error.message ?? 'unknown error');
      yield chunk;
    }
  }
}
