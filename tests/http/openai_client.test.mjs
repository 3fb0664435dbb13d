// llava-pipe's OpenAI-compatible server through the official `openai` client (node --test).
// tests/http/run.sh starts two servers on 127.0.0.1 with the tiny demo checkpoint and sets:
//   LLAVA_HTTP_URL         configs/tiny-random.yaml, default limits
//   LLAVA_HTTP_LIMITS_URL  the same model with server.api_key, a 64 KiB body cap and
//                          coordinator.queue_capacity 1 (for 401, 413 and 429)
//   LLAVA_HTTP_KEY         that server's key
//   LLAVA_HTTP_MAX_BODY    its server.max_body_bytes
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import OpenAI from 'openai';

const here = path.dirname(fileURLToPath(import.meta.url));
const baseURL = process.env.LLAVA_HTTP_URL;
const limitsURL = process.env.LLAVA_HTTP_LIMITS_URL;
const key = process.env.LLAVA_HTTP_KEY;
const maxBody = Number(process.env.LLAVA_HTTP_MAX_BODY);
assert.ok(baseURL && limitsURL && key, 'run through tests/http/run.sh (it starts the servers)');

const client = new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: 'unused', maxRetries: 0 });
const image = (name) =>
  `data:image/${name.endsWith('.png') ? 'png' : 'jpeg'};base64,` +
  readFileSync(path.join(here, '..', 'data', 'images', name)).toString('base64');
const jpeg = image('img01_320x240_RGB.jpg');
const png = image('img00_64x48_RGB.png');
const greedy = { model: 'tiny-llava', temperature: 0, max_tokens: 12 };

const userWith = (...parts) => [{ role: 'user', content: parts }];
const text = (t) => ({ type: 'text', text: t });
const img = (url) => ({ type: 'image_url', image_url: { url } });

async function metric(name, url = baseURL) {
  const body = await (await fetch(`${url}/metrics`)).text();
  const line = body.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : 0;
}

// Waits (up to `ms`) for `check` to hold, re-reading between tries: the server's counters
// change when it has handled the client's disconnect, after the client's call returned.
async function eventually(check, ms = 10000) {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 25));
  }
  return true;
}

async function rawStream(body, url = baseURL, headers = {}) {
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ ...greedy, ...body, stream: true }),
  });
  return { status: response.status, type: response.headers.get('content-type'), text: await response.text() };
}

test('models.list names the one model, after the checkpoint folder', async () => {
  const models = [];
  for await (const model of client.models.list()) models.push(model);
  assert.equal(models.length, 1);
  assert.equal(models[0].id, 'tiny-llava');
  assert.equal(models[0].object, 'model');
});

test('a non-streaming chat with a data-URI image is answered with usage counting the image tokens', async () => {
  const withImage = await client.chat.completions.create({
    ...greedy, messages: userWith(img(jpeg), text('What is in the picture?')),
  });
  const textOnly = await client.chat.completions.create({
    ...greedy, messages: userWith(text('What is in the picture?')),
  });
  assert.equal(withImage.object, 'chat.completion');
  assert.match(withImage.id, /^chatcmpl-/);
  assert.equal(withImage.model, 'tiny-llava');
  assert.equal(typeof withImage.created, 'number');
  const choice = withImage.choices[0];
  assert.equal(choice.message.role, 'assistant');
  assert.equal(typeof choice.message.content, 'string');
  assert.ok(['stop', 'length'].includes(choice.finish_reason));
  const u = withImage.usage;
  assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens);
  assert.ok(u.completion_tokens > 0 && u.completion_tokens <= 12);
  // The image adds its embeddings (many tokens), not one placeholder.
  assert.ok(u.prompt_tokens > textOnly.usage.prompt_tokens + 10, `${u.prompt_tokens} vs ${textOnly.usage.prompt_tokens}`);
});

test('a streamed chat gives the same text and, with include_usage, the same usage as the whole answer', async () => {
  const messages = userWith(img(png), text('Describe it.'));
  const whole = await client.chat.completions.create({ ...greedy, messages });
  const stream = await client.chat.completions.create({
    ...greedy, messages, stream: true, stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk'));
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  const streamed = chunks.flatMap((c) => c.choices.map((x) => x.delta.content ?? '')).join('');
  assert.equal(streamed, whole.choices[0].message.content);
  const finishes = chunks.flatMap((c) => c.choices.map((x) => x.finish_reason)).filter(Boolean);
  assert.deepEqual(finishes, [whole.choices[0].finish_reason]);
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.deepEqual(last.usage, whole.usage);
});

test('two images in one message are both given to the model', async () => {
  const one = await client.chat.completions.create({ ...greedy, messages: userWith(img(jpeg), text('Compare.')) });
  const two = await client.chat.completions.create({
    ...greedy, messages: userWith(img(jpeg), img(png), text('Compare.')),
  });
  const perImage = one.usage.prompt_tokens - (await client.chat.completions.create({
    ...greedy, messages: userWith(text('Compare.')),
  })).usage.prompt_tokens;
  assert.ok(perImage > 10);
  // One more image: its embeddings, give or take the newline token after a placeholder.
  assert.ok(Math.abs(two.usage.prompt_tokens - one.usage.prompt_tokens - perImage) <= 2,
            `${two.usage.prompt_tokens} - ${one.usage.prompt_tokens} vs ${perImage}`);
});

test('a JPEG tagged with Exif orientation 6 is seen upright, as the same picture stored upright', async () => {
  const tagged = image('exif/o6.jpg');
  const upright = image('exif/o6_upright.png');
  const unturned = image('exif/o1.jpg');
  const ask = async (url) => (await client.chat.completions.create({
    ...greedy, messages: userWith(img(url), text('What is in the picture?')),
  })).choices[0].message.content;
  const [a, b, c] = [await ask(tagged), await ask(upright), await ask(unturned)];
  assert.equal(a, b);
  assert.notEqual(a, c);  // the turn matters to this model: ignoring the tag would show
});

test('a multi-turn conversation (system, user, assistant, user) is answered', async () => {
  const first = await client.chat.completions.create({ ...greedy, messages: userWith(img(jpeg), text('Hi.')) });
  const conversation = await client.chat.completions.create({
    ...greedy,
    messages: [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: [img(jpeg), text('Hi.')] },
      { role: 'assistant', content: first.choices[0].message.content },
      { role: 'user', content: 'And the colours?' },
    ],
  });
  assert.equal(typeof conversation.choices[0].message.content, 'string');
  assert.ok(conversation.usage.prompt_tokens > first.usage.prompt_tokens);
});

test('a stop string ends the answer just before it, with finish_reason stop', async () => {
  const messages = userWith(text('Count with me.'));
  const whole = await client.chat.completions.create({ ...greedy, max_tokens: 24, messages });
  const full = whole.choices[0].message.content;
  assert.ok(full.length >= 6, `the greedy answer is too short to cut: ${JSON.stringify(full)}`);
  const stop = full.slice(3, 5);
  const cut = await client.chat.completions.create({ ...greedy, max_tokens: 24, messages, stop: [stop] });
  assert.equal(cut.choices[0].message.content, full.slice(0, full.indexOf(stop)));
  assert.equal(cut.choices[0].finish_reason, 'stop');
});

// Aborts a streamed request once `when(chunk)` holds; the server must cancel it (each of its
// n choices) and free its place.
async function abortedStream(request, when) {
  const before = await metric('llava_requests_cancelled_total');
  const controller = new AbortController();
  const stream = await client.chat.completions.create({ ...request, stream: true }, { signal: controller.signal });
  let aborted = false;
  try {  // the client ends its iteration quietly on an abort, or throws its abort error
    for await (const chunk of stream) {
      if (!aborted && when(chunk)) {
        aborted = true;
        controller.abort();
      }
    }
  } catch (e) {
    if (!(e instanceof OpenAI.APIUserAbortError) && e.name !== 'AbortError') throw e;
  }
  assert.ok(aborted, 'the stream ended before the moment to abort');
  const choices = request.n ?? 1;
  assert.ok(await eventually(async () => (await metric('llava_requests_cancelled_total')) === before + choices),
            `the cancelled-requests counter did not rise by ${choices}`);
  assert.ok(await eventually(async () => (await metric('llava_requests_running')) === 0 &&
                                         (await metric('llava_requests_waiting')) === 0),
            'the aborted request still holds its place');
}

test('a client that aborts before its first token has its request cancelled', async () => {
  // An image request: the vision stage starts first, so the role chunk comes long before text.
  await abortedStream({ ...greedy, messages: userWith(img(jpeg), text('Describe.')) },
                      (chunk) => chunk.choices[0]?.delta?.role === 'assistant');
});

test('a client that aborts mid-stream has its request cancelled, and its slot serves the next', async () => {
  await abortedStream({ ...greedy, max_tokens: 230, messages: userWith(text('Talk for a long time.')) },
                      (chunk) => Boolean(chunk.choices[0]?.delta?.content));
  const after = await client.chat.completions.create({ ...greedy, messages: userWith(text('Still there?')) });
  assert.ok(after.usage.completion_tokens > 0);
});

test('a client that aborts a stream of 4 choices mid-stream has all 4 cancelled', async () => {
  await abortedStream({ ...greedy, n: 4, temperature: 0.9, max_tokens: 230, ignore_eos: true,
                        messages: userWith(img(png), text('Talk for a long time.')) },
                      (chunk) => Boolean(chunk.choices[0]?.delta?.content));
});

test('a bad base64 image is refused with 400 naming the part', async () => {
  await assert.rejects(
    client.chat.completions.create({ ...greedy, messages: userWith(img('data:image/png;base64,@@@not-base64'), text('x')) }),
    (e) => e.status === 400 && /base64/.test(e.message) && e.param === 'messages[0].content[0]');
});

test('too many images are refused with 400', async () => {
  const parts = Array.from({ length: 9 }, () => img(png));
  await assert.rejects(
    client.chat.completions.create({ ...greedy, messages: userWith(...parts, text('x')) }),
    (e) => e.status === 400 && /at most 8/.test(e.message));
});

test('an unknown role is refused with 400 naming the field', async () => {
  await assert.rejects(
    client.chat.completions.create({ ...greedy, messages: [{ role: 'wizard', content: 'x' }] }),
    (e) => e.status === 400 && e.param === 'messages[0].role' && /wizard/.test(e.message));
});

test('an unsupported parameter is refused with 400 naming it', async () => {
  await assert.rejects(
    client.chat.completions.create({ ...greedy, messages: userWith(text('x')), functions: [{ name: 'f' }] }),
    (e) => e.status === 400 && e.param === 'functions');
  await assert.rejects(
    client.chat.completions.create({ ...greedy, messages: userWith(text('x')), presence_penalty: 2.5 }),
    (e) => e.status === 400 && e.param === 'presence_penalty' && /\[-2, 2\]/.test(e.message));
});

test('logit_bias moves the tokens it names: +100 makes one the answer, -100 bans one; an id past the vocabulary is 400', async () => {
  const ids = async (extra) => {
    const r = await client.completions.create({ ...greedy, prompt: 'USER: Hello ASSISTANT:', max_tokens: 8,
      ignore_eos: true, logprobs: 0, return_tokens_as_token_ids: true, ...extra });
    return r.choices[0].logprobs.tokens.map((t) => Number(t.slice('token_id:'.length)));
  };
  const plain = await ids({});
  const banned = await ids({ logit_bias: { [plain[0]]: -100 } });
  assert.notEqual(banned[0], plain[0]);
  assert.ok(!banned.includes(plain[0]), banned.join(' '));
  const forced = await ids({ logit_bias: { [plain[1]]: 100 } });
  assert.deepEqual(forced, Array(8).fill(plain[1]));
  await assert.rejects(client.completions.create({ ...greedy, prompt: 'x', logit_bias: { 99999: 1 } }),
    (e) => e.status === 400 && /outside the model's 1024-token vocabulary/.test(e.message));
  await assert.rejects(client.completions.create({ ...greedy, prompt: 'x', logit_bias: { 5: 101 } }),
    (e) => e.status === 400 && e.param === 'logit_bias');
});

test('presence_penalty and frequency_penalty weigh against the answer\'s own tokens, not the prompt\'s', async () => {
  const ids = async (extra) => {
    const r = await client.completions.create({ ...greedy, prompt: 'USER: Hello ASSISTANT:', max_tokens: 64,
      ignore_eos: true, logprobs: 0, return_tokens_as_token_ids: true, ...extra });
    return r.choices[0].logprobs.tokens;
  };
  const most = (tokens) => Math.max(...Object.values(tokens.reduce((n, t) => ({ ...n, [t]: (n[t] ?? 0) + 1 }), {})));
  const plain = await ids({});
  const penalized = await ids({ presence_penalty: 2, frequency_penalty: 2 });
  assert.ok(most(plain) >= 2, `the plain answer repeats a token: ${plain.join(' ')}`);
  assert.equal(most(penalized), 1, `no token twice: ${penalized.join(' ')}`);
  assert.equal(penalized[0], plain[0]);  // nothing of the answer yet: the prompt's tokens do not count
  // Negative values favour repeats; a streamed answer is the same.
  const favoured = await ids({ frequency_penalty: -2 });
  assert.ok(most(favoured) > most(plain), favoured.join(' '));
  const stream = await client.completions.create({ ...greedy, prompt: 'USER: Hello ASSISTANT:', max_tokens: 64,
    ignore_eos: true, presence_penalty: 2, frequency_penalty: 2, stream: true });
  let streamed = '';
  for await (const chunk of stream) streamed += chunk.choices[0]?.text ?? '';
  const whole = await client.completions.create({ ...greedy, prompt: 'USER: Hello ASSISTANT:', max_tokens: 64,
    ignore_eos: true, presence_penalty: 2, frequency_penalty: 2 });
  assert.equal(streamed, whole.choices[0].text);
});

test('a missing or wrong API key gets 401; the right one is served', async () => {
  const missing = await fetch(`${limitsURL}/v1/models`);
  assert.equal(missing.status, 401);
  assert.equal((await missing.json()).error.type, 'authentication_error');
  const wrong = new OpenAI({ baseURL: `${limitsURL}/v1`, apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(wrong.models.list(), (e) => e.status === 401);
  const right = new OpenAI({ baseURL: `${limitsURL}/v1`, apiKey: key, maxRetries: 0 });
  const models = await right.models.list();
  assert.equal(models.data[0].id, 'tiny-llava');
});

test('a body over server.max_body_bytes gets 413', async () => {
  const right = new OpenAI({ baseURL: `${limitsURL}/v1`, apiKey: key, maxRetries: 0 });
  await assert.rejects(
    right.chat.completions.create({ ...greedy, messages: userWith(text('x'.repeat(maxBody + 1))) }),
    (e) => e.status === 413 && /max_body_bytes/.test(e.message));
});

test('past coordinator.queue_capacity a request gets 429', async () => {
  const right = new OpenAI({ baseURL: `${limitsURL}/v1`, apiKey: key, maxRetries: 0 });
  const outcomes = await Promise.allSettled(Array.from({ length: 6 }, () =>
    right.chat.completions.create({ ...greedy, max_tokens: 24, messages: userWith(img(jpeg), text('x')) })));
  const refused = outcomes.filter((o) => o.status === 'rejected');
  assert.ok(refused.length > 0, 'no request was refused');
  assert.ok(refused.every((o) => o.reason.status === 429 && /overloaded/.test(o.reason.message)));
  assert.ok(outcomes.some((o) => o.status === 'fulfilled'));
});

test('n: each choice samples with seed + its index, as that one request alone would; usage counts them together', async () => {
  const ask = { ...greedy, temperature: 0.9, seed: 7, messages: userWith(img(png), text('Describe it.')) };
  const three = await client.chat.completions.create({ ...ask, n: 3 });
  assert.deepEqual(three.choices.map((c) => c.index), [0, 1, 2]);
  const singles = [];
  for (let i = 0; i < 3; i++) singles.push(await client.chat.completions.create({ ...ask, seed: 7 + i }));
  three.choices.forEach((c, i) => {
    assert.equal(c.message.content, singles[i].choices[0].message.content, `choice ${i}`);
    assert.equal(c.finish_reason, singles[i].choices[0].finish_reason, `choice ${i}`);
  });
  assert.ok(new Set(three.choices.map((c) => c.message.content)).size > 1, 'three seeds gave one answer');
  assert.equal(three.usage.prompt_tokens, singles[0].usage.prompt_tokens);  // one prompt
  assert.equal(three.usage.completion_tokens, singles.reduce((sum, x) => sum + x.usage.completion_tokens, 0));
  await assert.rejects(client.chat.completions.create({ ...ask, n: 129 }), (e) => e.status === 400 && e.param === 'n');
});

test('n: a stream names each chunk\'s choice; each streams its whole answer, its role first and one finish', async () => {
  const ask = { ...greedy, temperature: 0.9, seed: 3, n: 2, messages: userWith(text('Tell me more.')) };
  const whole = await client.chat.completions.create(ask);
  const stream = await client.chat.completions.create({ ...ask, stream: true, stream_options: { include_usage: true } });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  for (const index of [0, 1]) {
    const mine = chunks.flatMap((c) => c.choices.filter((x) => x.index === index));
    assert.equal(mine[0].delta.role, 'assistant');
    assert.equal(mine.map((x) => x.delta.content ?? '').join(''), whole.choices[index].message.content);
    assert.deepEqual(mine.map((x) => x.finish_reason).filter(Boolean), [whole.choices[index].finish_reason]);
  }
  assert.ok(chunks.every((c) => c.choices.every((x) => x.index === 0 || x.index === 1)));
  assert.deepEqual(chunks.at(-1).choices, []);
  assert.deepEqual(chunks.at(-1).usage, whole.usage);
});

test('n: /v1/completions echoes the prompt in every choice, each with its own logprobs', async () => {
  const ask = { ...greedy, prompt: 'USER: Hello ASSISTANT:', echo: true, logprobs: 1, temperature: 0.9, seed: 11 };
  const two = await client.completions.create({ ...ask, n: 2 });
  assert.equal(two.choices.length, 2);
  for (const [i, c] of two.choices.entries()) {
    const alone = (await client.completions.create({ ...ask, seed: 11 + i })).choices[0];
    assert.equal(c.index, i);
    assert.ok(c.text.startsWith(ask.prompt));
    assert.equal(c.text, alone.text);
    assert.deepEqual(c.logprobs.tokens, alone.logprobs.tokens);
    assert.deepEqual(c.logprobs.text_offset, alone.logprobs.text_offset);
  }
});

test('n past coordinator.queue_capacity is refused whole (429) and its accepted choice is cancelled, not left running', async () => {
  const right = new OpenAI({ baseURL: `${limitsURL}/v1`, apiKey: key, maxRetries: 0 });
  const cancelled = await metric('llava_requests_cancelled_total', limitsURL);
  await assert.rejects(
    right.chat.completions.create({ ...greedy, max_tokens: 400, ignore_eos: true, n: 2, messages: userWith(text('x')) }),
    (e) => e.status === 429 && /overloaded/.test(e.message));
  assert.ok(await eventually(async () => (await metric('llava_requests_cancelled_total', limitsURL)) === cancelled + 1),
            'the first choice was not cancelled');
  const after = await right.chat.completions.create({ ...greedy, messages: userWith(text('y')) });
  assert.equal(after.choices.length, 1);
});

// A token id of `piece` alone (how the vocabulary splits "a" + piece: its last token).
async function tokenOf(piece) {
  const response = await fetch(`${baseURL}/tokenize`, {
    method: 'POST', body: JSON.stringify({ prompt: `a${piece}`, add_special_tokens: false }),
  });
  return (await response.json()).tokens.at(-1);
}

test('response_format json_object: the answer is one JSON object, then the end; streamed, sampled and on /v1/completions alike', async () => {
  // The random model never closes a string by itself: a bias towards '"' and '}' makes
  // it, and the object; the same bias without JSON mode gives no JSON at all.
  const [quote, close] = [await tokenOf('"'), await tokenOf('}')];
  const ask = { ...greedy, max_tokens: 60, response_format: { type: 'json_object' },
                logit_bias: { [quote]: 30, [close]: 20 }, messages: userWith(img(png), text('Describe it as JSON.')) };
  const isObject = (answer) => {
    const parsed = JSON.parse(answer);
    return typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed);
  };
  const whole = await client.chat.completions.create(ask);
  const answer = whole.choices[0].message.content;
  assert.equal(whole.choices[0].finish_reason, 'stop', answer);
  assert.ok(isObject(answer), answer);
  assert.ok(Object.keys(JSON.parse(answer)).length >= 1, answer);
  const free = await client.chat.completions.create({ ...ask, response_format: { type: 'text' } });
  assert.throws(() => JSON.parse(free.choices[0].message.content));

  const stream = await client.chat.completions.create({ ...ask, stream: true });
  let streamed = '';
  for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? '';
  assert.equal(streamed, answer);

  const sampled = await client.chat.completions.create({ ...ask, temperature: 0.8, seed: 2, n: 3 });
  for (const c of sampled.choices) {
    assert.equal(c.finish_reason, 'stop', c.message.content);
    assert.ok(isObject(c.message.content), c.message.content);
  }
  const completion = await client.completions.create({
    ...greedy, max_tokens: 60, prompt: 'USER: JSON please. ASSISTANT:', response_format: { type: 'json_object' },
    logit_bias: { [quote]: 30, [close]: 20 },
  });
  assert.equal(completion.choices[0].finish_reason, 'stop');
  assert.ok(isObject(completion.choices[0].text), completion.choices[0].text);

  await assert.rejects(client.chat.completions.create({ ...ask, ignore_eos: true }),
    (e) => e.status === 400 && /ignore_eos/.test(e.message));
  await assert.rejects(
    client.chat.completions.create({ ...ask, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: {} } } }),
    (e) => e.status === 400 && e.param === 'response_format');
});

test('response_format json_schema: the answer is an object of the schema, its properties in the order given; streamed and sampled alike; what it cannot follow is a 400', async () => {
  const [quote, close, comma, bracket] = [await tokenOf('"'), await tokenOf('}'), await tokenOf(','), await tokenOf(']')];
  const schema = {
    type: 'object',
    properties: {
      verdict: { enum: ['yes', 'no'] },
      count: { type: 'integer' },
      tags: { type: 'array', items: { type: 'string' }, maxItems: 2 },
      color: { anyOf: [{ type: 'string' }, { type: 'null' }] },
    },
    required: ['verdict', 'count', 'tags'],
    additionalProperties: false,
  };
  const ask = { ...greedy, max_tokens: 80, response_format: { type: 'json_schema', json_schema: { name: 'answer', strict: true, schema } },
                logit_bias: { [quote]: 30, [close]: 20, [comma]: 15, [bracket]: 15 },
                messages: userWith(img(png), text('Answer in JSON.')) };
  const check = (answer) => {
    const parsed = JSON.parse(answer);
    assert.deepEqual(Object.keys(parsed).slice(0, 3), ['verdict', 'count', 'tags'], answer);
    assert.ok(['yes', 'no'].includes(parsed.verdict), answer);
    assert.ok(Number.isInteger(parsed.count), answer);
    assert.ok(Array.isArray(parsed.tags) && parsed.tags.length <= 2 && parsed.tags.every((t) => typeof t === 'string'), answer);
    assert.ok(!('color' in parsed) || parsed.color === null || typeof parsed.color === 'string', answer);
    assert.ok(Object.keys(parsed).every((k) => k in schema.properties), answer);
  };
  const whole = await client.chat.completions.create(ask);
  const answer = whole.choices[0].message.content;
  assert.equal(whole.choices[0].finish_reason, 'stop', answer);
  check(answer);

  const stream = await client.chat.completions.create({ ...ask, stream: true });
  let streamed = '';
  for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? '';
  assert.equal(streamed, answer);

  const sampled = await client.chat.completions.create({ ...ask, temperature: 0.8, seed: 5, n: 3 });
  for (const c of sampled.choices) {
    assert.equal(c.finish_reason, 'stop', c.message.content);
    check(c.message.content);
  }
  const format = (s) => ({ type: 'json_schema', json_schema: { name: 'x', schema: s } });
  // Formats and patterns, held character by character: an RFC 3339 date-time, a UUID and a
  // pattern's code, sampled, n 3.
  const zed = await tokenOf('Z');
  const dated = await client.chat.completions.create({ ...ask, temperature: 0.8, seed: 6, n: 3, max_tokens: 100,
    logit_bias: { ...ask.logit_bias, [zed]: 20 },
    response_format: format({ type: 'object', properties: { when: { type: 'string', format: 'date-time' }, id: { type: 'string', format: 'uuid' },
                                                            code: { type: 'string', pattern: '^[A-Z]{3}-\\d{3}$' } },
                              required: ['when', 'id', 'code'] }) });
  for (const c of dated.choices) {
    assert.equal(c.finish_reason, 'stop', c.message.content);
    const { when, id, code } = JSON.parse(c.message.content);
    assert.match(code, /^[A-Z]{3}-\d{3}$/);
    assert.match(when, /^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$/);
    assert.match(id, /^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$/);
  }
  await assert.rejects(client.chat.completions.create({ ...ask, response_format: format({ type: 'object', properties: { a: { type: 'string', format: 'email' } } }) }),
    (e) => e.status === 400 && e.param === 'response_format' && /format "email" is not supported \(only "date", "time", "date-time", "uuid" and "ipv4"\) \(at #\/properties\/a\/format\)/.test(e.message));
  await assert.rejects(client.chat.completions.create({ ...ask, response_format: format({ type: 'string' }) }),
    (e) => e.status === 400 && /root \(#\) must be an object/.test(e.message));
});

test('tools: a named function\'s call and "required" calls hold to the tools\' schemas, whole, streamed and sampled; the conversation goes on after a call; "auto" and what a schema cannot follow are 400s', async () => {
  // The random model closes no string by itself: a bias towards '"', '}' and ']' (the
  // constraint forces the commas between required properties).
  const [quote, close, bracket] = [await tokenOf('"'), await tokenOf('}'), await tokenOf(']')];
  const tools = [
    { type: 'function', function: { name: 'get_weather', description: 'The weather in a city',
      parameters: { type: 'object', properties: { city: { type: 'string', maxLength: 12 }, unit: { enum: ['C', 'F'] } },
                    required: ['city', 'unit'] } } },
    { type: 'function', function: { name: 'count_shapes',
      parameters: { type: 'object', properties: { shape: { enum: ['circle', 'square'] }, at_least: { type: 'integer', minimum: 0, maximum: 9 } },
                    required: ['shape', 'at_least'] } } },
  ];
  const holds = (name, text) => {
    const args = JSON.parse(text);
    if (name === 'get_weather') {
      assert.deepEqual(Object.keys(args), ['city', 'unit'], text);
      assert.ok(typeof args.city === 'string' && [...args.city].length <= 12 && ['C', 'F'].includes(args.unit), text);
    } else {
      assert.equal(name, 'count_shapes');
      assert.deepEqual(Object.keys(args), ['shape', 'at_least'], text);
      assert.ok(['circle', 'square'].includes(args.shape) && Number.isInteger(args.at_least) && args.at_least >= 0 && args.at_least <= 9, text);
    }
  };
  const ask = { ...greedy, max_tokens: 120, tools, logit_bias: { [quote]: 30, [close]: 20, [bracket]: 25 },
                messages: userWith(img(png), text('Call a tool.')) };
  const named = { ...ask, tool_choice: { type: 'function', function: { name: 'get_weather' } } };
  const whole = await client.chat.completions.create(named);
  const message = whole.choices[0].message;
  assert.equal(whole.choices[0].finish_reason, 'tool_calls');
  assert.equal(message.content, null);
  assert.equal(message.tool_calls.length, 1);
  const [call] = message.tool_calls;
  assert.equal(call.type, 'function');
  assert.match(call.id, /^call_[A-Za-z0-9]{24}$/);
  assert.equal(call.function.name, 'get_weather');
  holds('get_weather', call.function.arguments);

  // Streamed: the call's id and name first, its arguments in pieces that add up to the same.
  let id, name, args = '', finish, pieces = 0;
  for await (const chunk of await client.chat.completions.create({ ...named, stream: true })) {
    for (const delta of chunk.choices[0]?.delta?.tool_calls ?? []) {
      assert.equal(delta.index, 0);
      id ??= delta.id;
      name ??= delta.function?.name;
      args += delta.function?.arguments ?? '';
      pieces += 1;
    }
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.match(id, /^call_/);
  assert.equal(name, 'get_weather');
  assert.equal(args, call.function.arguments);
  assert.ok(pieces > 1, `${pieces} pieces`);
  assert.equal(finish, 'tool_calls');

  // "required": one or more calls of any tool, each held to its own schema; sampled, n 3.
  const required = await client.chat.completions.create({ ...ask, tool_choice: 'required', temperature: 0.8, seed: 4, n: 3 });
  for (const c of required.choices) {
    assert.equal(c.finish_reason, 'tool_calls', JSON.stringify(c.message));
    assert.ok(c.message.tool_calls.length >= 1);
    for (const t of c.message.tool_calls) holds(t.function.name, t.function.arguments);
  }
  const first = await client.chat.completions.create({ ...ask, tool_choice: 'required', parallel_tool_calls: false });
  assert.equal(first.choices[0].message.tool_calls.length, 1);
  // Streamed, "required"'s calls come as they are written: a call's id and name once its
  // name is whole, then its arguments in pieces that add up to the whole answer's.
  const streamedCalls = [];
  let requiredPieces = 0, requiredFinish;
  for await (const chunk of await client.chat.completions.create({ ...ask, tool_choice: 'required', parallel_tool_calls: false, stream: true })) {
    for (const delta of chunk.choices[0]?.delta?.tool_calls ?? []) {
      requiredPieces += 1;
      if (delta.id !== undefined) {
        assert.equal(delta.index, streamedCalls.length);
        assert.match(delta.id, /^call_[A-Za-z0-9]{24}$/);
        streamedCalls.push([delta.index, delta.function.name, delta.function.arguments ?? '']);
      } else {
        assert.equal(delta.index, streamedCalls.length - 1, 'arguments of the last call begun');
        streamedCalls.at(-1)[2] += delta.function.arguments;
      }
    }
    requiredFinish = chunk.choices[0]?.finish_reason ?? requiredFinish;
  }
  assert.deepEqual(streamedCalls,
    first.choices[0].message.tool_calls.map((t, i) => [i, t.function.name, t.function.arguments]));
  assert.ok(requiredPieces > streamedCalls.length, `${requiredPieces} pieces`);
  assert.equal(requiredFinish, 'tool_calls');

  // The conversation goes on: the assistant's call and the tool's answer in the history.
  const next = await client.chat.completions.create({ ...greedy, tools, messages: [
    ...userWith(img(png), text('Weather in Oslo?')), message, { role: 'tool', tool_call_id: call.id, content: '12 C' }] });
  assert.equal(typeof next.choices[0].message.content, 'string');
  assert.equal(next.choices[0].message.tool_calls, undefined);

  await assert.rejects(client.chat.completions.create({ ...ask, tool_choice: 'auto' }),
    (e) => e.status === 400 && e.param === 'tool_choice' && /'auto'/.test(e.message));
  await assert.rejects(client.chat.completions.create({ ...ask, tool_choice: { type: 'function', function: { name: 'fly' } } }),
    (e) => e.status === 400 && /no tool is named 'fly'/.test(e.message));
  await assert.rejects(client.chat.completions.create({ ...ask, tool_choice: 'required',
    tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { a: { type: 'string', format: 'email' } } } } }] }),
    (e) => e.status === 400 && e.param === 'tools[0].function.parameters' && /format "email" is not supported/.test(e.message));
});

test('min_tokens (vLLM\'s): no stop id, end-of-sequence token or stop string ends the answer before that many tokens; above max_tokens or with a JSON format it is a 400', async () => {
  const ask = { ...greedy, prompt: 'USER: Hello ASSISTANT:', max_tokens: 12, logprobs: 0, ignore_eos: true };
  const asIds = { ...ask, return_tokens_as_token_ids: true };
  const idsOf = (choice) => choice.logprobs.tokens.map((t) => Number(t.slice('token_id:'.length)));
  const whole = (await client.completions.create(asIds)).choices[0];
  const first = idsOf(whole)[0];
  const cut = (await client.completions.create({ ...asIds, stop_token_ids: [first] })).choices[0];
  assert.deepEqual(idsOf(cut), [first]);
  const held = (await client.completions.create({ ...asIds, stop_token_ids: [first], min_tokens: 4 })).choices[0];
  const heldIds = idsOf(held);
  assert.ok(heldIds.length >= 4, `${heldIds}`);
  assert.ok(heldIds.slice(0, 4).every((id) => id !== first), `${heldIds}`);

  // A stop string that the first token's text holds: cut at once, or not within min_tokens.
  const texts = (await client.completions.create(ask)).choices[0].logprobs.tokens;
  const j = texts.findIndex((t) => t.length > 0);  // the first token with text of its own
  assert.ok(j >= 0 && j < 8, JSON.stringify(texts));
  const stop = texts[j];
  const atOnce = (await client.completions.create({ ...ask, stop: [stop] })).choices[0];
  assert.ok(atOnce.text.length < texts.slice(0, j + 1).join('').length, JSON.stringify(atOnce.text));
  const later = (await client.completions.create({ ...ask, stop: [stop], min_tokens: j + 3 })).choices[0];
  assert.ok(later.text.startsWith(texts.slice(0, j + 3).join('')), `${JSON.stringify(later.text)} vs ${JSON.stringify(texts)}`);

  await assert.rejects(client.completions.create({ ...ask, min_tokens: 13 }),
    (e) => e.status === 400 && /min_tokens \(13\) is above max_new_tokens \(12\)/.test(e.message));
  await assert.rejects(client.completions.create({ ...ask, ignore_eos: false, min_tokens: 2, response_format: { type: 'json_object' } }),
    (e) => e.status === 400 && /min_tokens cannot go with response_format/.test(e.message));
  await assert.rejects(client.completions.create({ ...ask, min_tokens: -1 }), (e) => e.status === 400 && e.param === 'min_tokens');
});

test('stop_token_ids (vLLM\'s) end the answer at the first of them, counted in completion_tokens; an id past the vocabulary is a 400', async () => {
  const ask = { ...greedy, prompt: 'USER: Hello ASSISTANT:', max_tokens: 12, logprobs: 0, return_tokens_as_token_ids: true };
  const whole = (await client.completions.create({ ...ask, ignore_eos: true })).choices[0];
  const ids = whole.logprobs.tokens.map((t) => Number(t.slice('token_id:'.length)));
  const at = ids.findIndex((id, i) => i >= 2 && ids.indexOf(id) === i);  // a third-or-later token not seen before
  assert.ok(at >= 2, `${ids}`);
  const cut = (await client.completions.create({ ...ask, stop_token_ids: [ids[at]] })).choices[0];
  assert.equal(cut.finish_reason, 'stop');
  assert.deepEqual(cut.logprobs.tokens, whole.logprobs.tokens.slice(0, at + 1));
  await assert.rejects(client.completions.create({ ...ask, stop_token_ids: [1 << 30] }),
    (e) => e.status === 400 && /stop_token_ids: token id 1073741824 is outside/.test(e.message));
});

test('32 concurrent streaming clients are all answered, each stream complete and ending in [DONE]', async () => {
  const streams = await Promise.all(Array.from({ length: 32 }, (_, i) =>
    rawStream({ messages: userWith(text(`Client ${i} says hello.`)), max_tokens: 8 })));
  for (const s of streams) {
    assert.equal(s.status, 200);
    assert.match(s.type, /^text\/event-stream/);
    const events = s.text.split('\n\n').filter(Boolean);
    assert.equal(events.at(-1), 'data: [DONE]');
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e.replace(/^data: /, '')));
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    assert.ok(['stop', 'length'].includes(chunks.at(-1).choices[0].finish_reason));
  }
});

test('/v1/completions answers a text prompt, whole and streamed alike', async () => {
  const whole = await client.completions.create({ ...greedy, prompt: 'USER: Hello ASSISTANT:' });
  assert.equal(whole.object, 'text_completion');
  const stream = await client.completions.create({ ...greedy, prompt: 'USER: Hello ASSISTANT:', stream: true });
  let streamed = '';
  for await (const chunk of stream) streamed += chunk.choices[0]?.text ?? '';
  assert.equal(streamed, whole.choices[0].text);
});

test('/v1/completions answers a prompt of token ids (from /tokenize) as the text they encode', async () => {
  const prompt = 'USER: Hello ASSISTANT:';
  const { tokens } = await (await fetch(`${baseURL}/tokenize`, { method: 'POST', body: JSON.stringify({ prompt }) })).json();
  const asText = await client.completions.create({ ...greedy, prompt });
  for (const ids of [tokens, [tokens]]) {
    const asIds = await client.completions.create({ ...greedy, prompt: ids });
    assert.equal(asIds.choices[0].text, asText.choices[0].text);
    assert.equal(asIds.usage.prompt_tokens, tokens.length);
    assert.equal(asIds.usage.prompt_tokens, asText.usage.prompt_tokens);
  }
  await assert.rejects(client.completions.create({ ...greedy, prompt: [tokens[0], 1 << 30] }),
    (e) => e.status === 400 && /outside the model's/.test(e.message));
  await assert.rejects(client.completions.create({ ...greedy, prompt: ['a', 'b'] }),
    (e) => e.status === 400 && e.param === 'prompt' && /2 prompts/.test(e.message));
});

test('ignore_eos (as vLLM\'s benchmarks send it) generates max_tokens tokens', async () => {
  const answer = await client.completions.create({ ...greedy, prompt: 'USER: Hello ASSISTANT:', ignore_eos: true });
  assert.equal(answer.usage.completion_tokens, greedy.max_tokens);
  assert.equal(answer.choices[0].finish_reason, 'length');
  const plain = await client.completions.create({ ...greedy, prompt: 'USER: Hello ASSISTANT:', ignore_eos: false });
  assert.ok(plain.usage.completion_tokens <= greedy.max_tokens);
});

test('logprobs: a chat\'s tokens, whole and streamed alike, each with its bytes and alternatives', async () => {
  const messages = userWith(img(png), text('Describe it.'));
  const ask = { ...greedy, messages, logprobs: true, top_logprobs: 3 };
  const whole = await client.chat.completions.create(ask);
  const content = whole.choices[0].logprobs.content;
  assert.equal(content.length, whole.usage.completion_tokens);
  for (const t of content) {
    assert.ok(t.logprob <= 0 && Number.isFinite(t.logprob));
    assert.equal(t.top_logprobs.length, 3);
    assert.equal(t.top_logprobs[0].token, t.token);  // greedy: the most likely
    assert.equal(t.top_logprobs[0].logprob, t.logprob);
    assert.ok(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob);
    assert.ok(Array.isArray(t.bytes));
  }
  // The tokens' bytes make the answer (the first one's space aside; </s> is not text).
  const bytes = Buffer.from(content.filter((t) => t.token !== '</s>').flatMap((t) => t.bytes));
  assert.equal(bytes.toString('utf8').replace(/^ /, ''), whole.choices[0].message.content.replace(/^ /, ''));
  const stream = await client.chat.completions.create({ ...ask, stream: true });
  const streamed = [];
  for await (const chunk of stream) streamed.push(...(chunk.choices[0]?.logprobs?.content ?? []));
  assert.deepEqual(streamed, content);
  const none = await client.chat.completions.create({ ...greedy, messages });
  assert.equal(none.choices[0].logprobs, null);
  await assert.rejects(client.chat.completions.create({ ...greedy, messages, top_logprobs: 2 }),
    (e) => e.status === 400 && e.param === 'top_logprobs');
});

test('logprobs: /v1/completions gives the legacy lists, the chosen token among its alternatives', async () => {
  const ask = { ...greedy, prompt: 'USER: Hello ASSISTANT:', logprobs: 2, temperature: 0.9, seed: 5 };
  const whole = await client.completions.create(ask);
  const lp = whole.choices[0].logprobs;
  const n = whole.usage.completion_tokens;
  for (const list of [lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset]) assert.equal(list.length, n);
  lp.tokens.forEach((t, i) => {
    assert.equal(lp.top_logprobs[i][t], lp.token_logprobs[i]);
    assert.ok(Object.keys(lp.top_logprobs[i]).length <= 3);
    if (i > 0) assert.ok(lp.text_offset[i] >= lp.text_offset[i - 1]);
  });
  const stream = await client.completions.create({ ...ask, stream: true });
  const tokens = [];
  for await (const chunk of stream) tokens.push(...(chunk.choices[0]?.logprobs?.tokens ?? []));
  assert.deepEqual(tokens, lp.tokens);  // seeded: the same draws
  await assert.rejects(client.completions.create({ ...ask, logprobs: 21 }),
    (e) => e.status === 400 && e.param === 'logprobs');
});

test('echo: the prompt\'s text and logprobs first, with max_tokens 0 its logprobs alone, as evaluation harnesses ask', async () => {
  const prompt = 'USER: What is in the picture? ASSISTANT: A red circle.';
  const scored = await client.completions.create({ ...greedy, prompt, echo: true, logprobs: 1, max_tokens: 0 });
  const lp = scored.choices[0].logprobs;
  assert.equal(scored.choices[0].text, prompt);
  assert.equal(scored.usage.completion_tokens, 0);
  assert.equal(lp.tokens.length, scored.usage.prompt_tokens);
  assert.equal(lp.token_logprobs[0], null);  // nothing comes before the first
  assert.equal(lp.top_logprobs[0], null);
  assert.ok(lp.token_logprobs.slice(1).every((x) => x <= 0));
  // Each token lies at its text_offset (the first text token's space is the text's start's).
  lp.tokens.forEach((t, i) => {
    if (t === '<s>') return;
    const at = prompt.slice(lp.text_offset[i]);
    assert.ok(at.startsWith(t) || (i <= 1 && at.startsWith(t.replace(/^ /, ''))), `${t} at ${lp.text_offset[i]}`);
  });
  // The same prompt's tokens as ids: the same logprobs.
  const { tokens } = await (await fetch(`${baseURL}/tokenize`, { method: 'POST', body: JSON.stringify({ prompt }) })).json();
  const asIds = await client.completions.create({ ...greedy, prompt: tokens, echo: true, logprobs: 1, max_tokens: 0 });
  assert.equal(asIds.choices[0].text, prompt);
  assert.deepEqual(asIds.choices[0].logprobs.token_logprobs, lp.token_logprobs);
  // vLLM's return_tokens_as_token_ids: the tokens named by id are the prompt's ids, and each
  // token is among its alternatives under that name (streamed chat too).
  const named = await client.completions.create({ ...greedy, prompt: tokens, echo: true, logprobs: 2, max_tokens: 3,
    return_tokens_as_token_ids: true });
  const nlp = named.choices[0].logprobs;
  assert.deepEqual(nlp.tokens.slice(0, tokens.length), tokens.map((id) => `token_id:${id}`));
  assert.deepEqual(nlp.token_logprobs.slice(0, tokens.length), lp.token_logprobs);
  nlp.tokens.forEach((t, i) => assert.ok(i === 0 || t in nlp.top_logprobs[i], `${t} at ${i}`));
  const chat = await client.chat.completions.create({ ...greedy, messages: [{ role: 'user', content: 'Hello' }],
    logprobs: true, top_logprobs: 1, return_tokens_as_token_ids: true, stream: true });
  const ids = [];
  for await (const chunk of chat) ids.push(...(chunk.choices[0]?.logprobs?.content ?? []).map((c) => c.token));
  assert.ok(ids.length > 0 && ids.every((t) => /^token_id:\d+$/.test(t)), ids.join(' '));
  // With an answer: the prompt's logprobs, then the answer's; streamed alike.
  const ask = { ...greedy, prompt: 'USER: Hello ASSISTANT:', echo: true, logprobs: 2 };
  const whole = await client.completions.create(ask);
  const all = whole.choices[0].logprobs;
  assert.equal(all.tokens.length, whole.usage.prompt_tokens + whole.usage.completion_tokens);
  // The answer follows the prompt as it would in a text (LLaMA keeps its first space then).
  const plain = await client.completions.create({ ...greedy, prompt: ask.prompt });
  assert.ok([ask.prompt + plain.choices[0].text, `${ask.prompt} ${plain.choices[0].text}`].includes(whole.choices[0].text));
  const stream = await client.completions.create({ ...ask, stream: true });
  let text = '';
  const offsets = [];
  for await (const chunk of stream) {
    text += chunk.choices[0]?.text ?? '';
    offsets.push(...(chunk.choices[0]?.logprobs?.text_offset ?? []));
  }
  assert.equal(text, whole.choices[0].text);
  assert.deepEqual(offsets, all.text_offset);
  await assert.rejects(client.completions.create({ ...greedy, prompt, max_tokens: 0 }),
    (e) => e.status === 400 && e.param === 'max_tokens');
});

test('/tokenize and /detokenize round-trip a prompt with the server\'s tokenizer', async () => {
  const post = async (path, body) =>
    (await fetch(`${baseURL}${path}`, { method: 'POST', body: JSON.stringify(body) })).json();
  const { tokens, count } = await post('/tokenize', { prompt: 'Hello world', add_special_tokens: false });
  assert.equal(count, tokens.length);
  assert.ok(count > 0);
  assert.equal((await post('/detokenize', { tokens })).prompt, 'Hello world');
  const bad = await fetch(`${baseURL}/detokenize`, { method: 'POST', body: '{"tokens":[-1]}' });
  assert.equal(bad.status, 400);
});

test('/health says ok, and /metrics passes promtool check metrics', async () => {
  const health = await fetch(`${baseURL}/health`);
  assert.equal(health.status, 200);
  const body = await (await fetch(`${baseURL}/metrics`)).text();
  assert.match(body, /^llava_request_success_total\{finish_reason="(stop|length)"\} [1-9]/m);
  assert.match(body, /^llava_time_to_first_token_seconds_bucket\{le="\+Inf"\} [1-9]/m);
  // Figures the workers send with their heartbeats and results, through the coordinator.
  assert.match(body, /^llava_images_encoded_total\{stage="vision",replica="0"\} [1-9]/m);
  assert.match(body, /^llava_vision_encode_seconds_count\{stage="vision",replica="0"\} [1-9]/m);
  assert.match(body, /^llava_image_preprocess_seconds_count\{stage="vision",replica="0"\} [1-9]/m);
  assert.match(body, /^llava_embedding_handoff_bytes_total [1-9]/m);
  assert.match(body, /^llava_request_queue_seconds_count [1-9]/m);
  assert.match(body, /^llava_prefill_seconds_count [1-9]/m);  // the language worker's own time, from its Done
  assert.match(body, /^llava_stage_queue_depth\{stage="vision"\} 0$/m);
  assert.match(body, /^llava_kv_cache_usage_ratio\{stage="language",replica="0"\} (0|1|0\.\d+)$/m);  // as last beaten
  assert.match(body, /^llava_worker_device_memory_bytes\{stage="language",replica="0",device="cpu"\} [1-9]/m);
  assert.match(body, /^llava_worker_up\{stage="vision",replica="0"\} [01]$/m);  // sequential: up in its turns
  let promtool = true;
  try {
    execFileSync('promtool', ['--version'], { stdio: 'ignore' });
  } catch {
    promtool = false;
  }
  assert.ok(promtool, 'promtool is missing (Debian package prometheus)');
  execFileSync('promtool', ['check', 'metrics'], { input: body });  // throws on a problem
});
