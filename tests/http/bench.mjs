// HTTP figures beside `llava-pipe bench`'s, for the README (GPU machine, random 7B shape):
// time to first token over HTTP (sequential streamed requests, the median), and streamed
// decode throughput with N concurrent clients.
//   node tests/http/bench.mjs URL IMAGE [--runs 20] [--clients 64] [--tokens 64]
// e.g. with `llava-pipe serve CONFIG --http 127.0.0.1:8000` running:
//   node tests/http/bench.mjs http://127.0.0.1:8000 tests/data/images/img01_320x240_RGB.jpg
// Compare: `llava-pipe bench CONFIG --image IMAGE --ttft-runs 20 --throughput 64 --new-tokens 64`.
import { readFileSync } from 'node:fs';

const [url, imagePath, ...rest] = process.argv.slice(2);
if (!url || !imagePath) {
  console.error('usage: node tests/http/bench.mjs URL IMAGE [--runs N] [--clients N] [--tokens N]');
  process.exit(2);
}
const option = (name, fallback) => {
  const at = rest.indexOf(`--${name}`);
  return at >= 0 ? Number(rest[at + 1]) : fallback;
};
const runs = option('runs', 20), clients = option('clients', 64), tokens = option('tokens', 64);
const image = `data:image/jpeg;base64,${readFileSync(imagePath).toString('base64')}`;

// One streamed request: ms to the first text, and the completion tokens (include_usage).
async function streamed(maxTokens, prompt) {
  const start = performance.now();
  const response = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'm', max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true },
      messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: image } }, { type: 'text', text: prompt }] }],
    }),
  });
  if (response.status !== 200) throw new Error(`HTTP ${response.status}: ${await response.text()}`);
  let first = 0, completion = 0, buffer = '';
  const decoder = new TextDecoder();
  for await (const bytes of response.body) {
    buffer += decoder.decode(bytes, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end).replace(/^data: /, '');
      buffer = buffer.slice(end + 2);
      if (event === '[DONE]') continue;
      const chunk = JSON.parse(event);
      // The first event after the role's: the first token's text, or the finish chunk when
      // that token is not whole text yet (a byte of a UTF-8 character).
      if (!first && chunk.choices.length && !('role' in (chunk.choices[0].delta ?? {}))) first = performance.now() - start;
      if (chunk.usage) completion = chunk.usage.completion_tokens;
    }
  }
  return { ttft: first, completion };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
await streamed(4, 'warm-up');
const ttfts = [];
for (let i = 0; i < runs; ++i) ttfts.push((await streamed(1, `Run ${i}: describe it.`)).ttft);
const start = performance.now();
const all = await Promise.all(Array.from({ length: clients }, (_, i) => streamed(tokens, `Client ${i}: describe it.`)));
const seconds = (performance.now() - start) / 1000;
const generated = all.reduce((sum, r) => sum + r.completion, 0);
console.log(JSON.stringify({
  ttft_ms: { median: median(ttfts), min: Math.min(...ttfts), max: Math.max(...ttfts), runs },
  throughput: { clients, tokens_per_client: tokens, generated, seconds, tokens_per_s: generated / seconds },
}, null, 1));
