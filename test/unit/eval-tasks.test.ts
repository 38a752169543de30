// Perplexity samples of the evaluation suite (cli/eval-tasks.ts): dev and test
// windows never share text, and `contppl` scores exactly the bytes after its
// prefill.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { create } from '@bufbuild/protobuf';

import { ScoreResponseSchema } from '../../gen/smartkv/v1/generation_pb.js';
import { buildSamples, CONT_BAND, pplWindow, scoreOutcome } from '../../cli/eval-tasks.js';

describe('perplexity windows', () => {
  // Distinct words, so a window's text says where it came from.
  const held = Array.from({ length: 20000 }, (_, i) => `w${i}`).join(' ');

  it('dev windows come from the first half, test windows from the second: never the same text', () => {
    for (const [context, n] of [[1024, 4], [4096, 8], [8192, 3]] as const) {
      const dev = Array.from({ length: n }, (_, i) => pplWindow(held, context, 'dev', i, n).text);
      const test = Array.from({ length: n }, (_, i) => pplWindow(held, context, 'test', i, n).text);
      const half = Buffer.byteLength(held) / 2;
      for (const t of dev) assert.ok(Buffer.from(held).indexOf(t) + Buffer.byteLength(t) <= half, 'a dev window reaches the second half');
      for (const t of test) assert.ok(Buffer.from(held).indexOf(t) >= half - 1, 'a test window starts in the first half');
      for (const t of [...dev, ...test]) assert.equal(Buffer.byteLength(t), context - 1);
    }
  });

  it('a context longer than half the held-out text is an error, not a shared window', () => {
    assert.throws(() => pplWindow('short text '.repeat(10), 1024, 'test', 0, 1), /do not fit/);
  });

  it('contppl prefills 7/8 of the window and scores the rest, longppl scores every band', async () => {
    const [c] = await buildSamples(['contppl'], [1024], 1, 'dev');
    const [l] = await buildSamples(['longppl'], [1024], 1, 'dev');
    assert.equal(c.text, l.text, 'the same window');
    const bytes = Buffer.byteLength(c.text);
    assert.equal(c.prefillTokens, 1 + Math.floor((7 / 8) * bytes));
    assert.equal(l.prefillTokens, 0);
    // logprobs[i] predicts token i+1: −1 nat before the prefill's end, −2 after it
    const logprobs = Array.from({ length: bytes }, (_, i) => (i < c.prefillTokens ? -1 : -2));
    const r = create(ScoreResponseSchema, { logprobs, tokenIds: [], topTokenIds: [] });
    const out = scoreOutcome(c, r);
    assert.deepEqual(Object.keys(out.bitsPerByte!), [CONT_BAND]);
    assert.ok(Math.abs(out.bitsPerByte![CONT_BAND] - 2 / Math.LN2) < 1e-12);
    assert.ok(scoreOutcome(l, r).bitsPerByte!.all < 2 / Math.LN2);
  });
});

describe('retrieval scoring', () => {
  it('answer bits are −log2 p of the answer bytes only, per answer byte; accuracy needs every answer byte as the greedy choice', async () => {
    const [s] = await buildSamples(['passkey'], [1024], 1, 'dev');
    const bytes = [...Buffer.from(s.text)];
    const ids = [256, ...bytes]; // BOS + the text
    const inAnswer = (i: number) => s.answerSpans.some(([a, e]) => i >= a && i < e);
    // logprobs[i] predicts token i+1 = byte i: −3 nats on answer bytes, −1 elsewhere
    const logprobs = bytes.map((_, i) => (inAnswer(i) ? -3 : -1));
    const right = create(ScoreResponseSchema, { logprobs, tokenIds: ids, topTokenIds: ids.slice(1) });
    const out = scoreOutcome(s, right);
    assert.ok(s.answerSpans.length > 0);
    assert.ok(Math.abs(out.answerBits! - 3 / Math.LN2) < 1e-12, `answer bits ${out.answerBits}`);
    assert.equal(out.correct, true);
    // one wrong greedy byte inside the answer: not correct; the answer bits do not change
    const [a] = s.answerSpans[0];
    const top = ids.slice(1);
    top[a] = (top[a] + 1) % 256;
    const wrong = scoreOutcome(s, create(ScoreResponseSchema, { logprobs, tokenIds: ids, topTokenIds: top }));
    assert.equal(wrong.correct, false);
    assert.equal(wrong.answerBits, out.answerBits);
  });
});
