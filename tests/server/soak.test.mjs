// A bounded soak: 2,000 requests of every kind at concurrency 32 on the tiny stories260K model, with no error
// and resident memory steady from after a warm-up to the end.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { clientFor, collectStream, residentKiB, runPool, serverFor, waitForMetrics } from './harness.mjs';

const prompts = ['Once upon a time', 'The cat sat', 'Lily and Tom went to the park.', 'One day, a big dog',
  'The sun was hot and the bird'];

// The i-th request of the mix: chat and completions, whole and streamed, with n, stop, logprobs, usage and seeds.
async function mixedRequest(client, i) {
  const prompt = prompts[i % prompts.length];
  const common = { model: 'm', max_tokens: 4 + (i % 9), seed: i, temperature: i % 3 === 0 ? 0 : 0.8 };
  switch (i % 6) {
    case 0: {
      const reply = await client.completions.create({ ...common, prompt });
      assert.equal(reply.choices.length, 1);
      return reply.usage.completion_tokens;
    }
    case 1: {
      const { chunks, finishes } = await collectStream(await client.completions.create({ ...common, prompt, n: 2,
        stream: true, stream_options: { include_usage: true } }));
      assert.equal(finishes.length, 2);
      return chunks.at(-1).usage.completion_tokens;
    }
    case 2: {
      const reply = await client.chat.completions.create({ ...common, messages: [{ role: 'user', content: prompt }],
        logprobs: true, top_logprobs: 2 });
      assert.equal(reply.choices[0].logprobs.content.length, reply.usage.completion_tokens);
      return reply.usage.completion_tokens;
    }
    case 3: {
      const { texts, finishes } = await collectStream(await client.chat.completions.create({ ...common,
        messages: [{ role: 'system', content: 'Be kind.' }, { role: 'user', content: prompt }], stop: ['.', 'and'],
        stream: true }));
      assert.equal(finishes.length, 1);
      assert.ok(!texts[0].includes('.'));
      return 1;
    }
    case 4: {
      const reply = await client.completions.create({ ...common, prompt: [prompt, 'Tom'], logprobs: 1 });
      assert.equal(reply.choices.length, 2);
      return reply.usage.completion_tokens;
    }
    default: {
      // Requests the server refuses are part of the mix too.
      await assert.rejects(client.chat.completions.create({ ...common, messages: [{ role: 'robot', content: 'x' }] }),
        (error) => error.status === 400);
      return 0;
    }
  }
}

test('2,000 requests at concurrency 32: no error, and memory steady after a warm-up', { timeout: 150_000 },
  async (t) => {
    const server = await serverFor(t);
    const client = clientFor(server);
    await runPool(500, 32, (i) => mixedRequest(client, i));
    await waitForMetrics(server.url, (m) => m.tessera_requests_running === 0 && m.tessera_requests_waiting === 0);
    const warm = residentKiB(server.pid);
    const started = performance.now();
    const tokens = await runPool(2000, 32, (i) => mixedRequest(client, 500 + i));
    const seconds = (performance.now() - started) / 1000;
    const m = await waitForMetrics(server.url, (m) => m.tessera_requests_running === 0
      && m.tessera_requests_waiting === 0 && m.tessera_kv_blocks_used === 0);
    const after = residentKiB(server.pid);
    t.diagnostic(`2,000 requests in ${seconds.toFixed(1)} s; RSS ${warm} KiB after the warm-up, ${after} KiB after`);
    assert.ok(tokens.reduce((a, b) => a + b, 0) > 2000);
    assert.equal(m['tessera_requests_total{status="error"}'], 0);
    assert.equal(m['tessera_requests_total{status="stopped"}'], 0);
    assert.equal(m['tessera_requests_total{status="rejected"}'], 0);
    assert.equal(m['tessera_requests_total{status="ok"}'] + m['tessera_requests_total{status="invalid"}'], 2500);
    // Within 4 MiB: a leak of 2 KiB a request (a lost request object with its tokens and text, say) shows.
    assert.ok(Math.abs(after - warm) < 4 * 1024, `RSS went from ${warm} KiB to ${after} KiB`);
  });
