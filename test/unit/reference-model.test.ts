// The bundled reference models (models/smartkv-ref, the 1K default, and
// models/smartkv-ref-8k, the long-context model with llama3 RoPE scaling)
// through the native forward with an uncompressed cache, against PyTorch's
// logits for fixed prompts (reference-logits.json/.bin, written by
// training/evaluate.py; the 8K model's include a 1,301-token prompt, past the
// scaling's original 1,024 positions), and greedy generation against the
// stored golden continuation.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { KvEngine } from '../../native/kv-engine.js';
import { Fp32Cache } from '../../services/orchestrator/model/fp32-cache.js';
import { Model } from '../../services/orchestrator/model/model.js';
import { defaultModelDir, shortModelDir } from '../../services/orchestrator/model/paths.js';
import { argmax } from '../../services/orchestrator/model/sampler.js';

interface RefPrompt { name: string; token_ids: number[]; n_tokens: number; logits_offset_floats: number }
interface RefFile {
  vocab_size: number;
  prompts: RefPrompt[];
  greedy_continuation: { prompt_token_ids: number[]; token_ids: number[]; n_new_tokens: number };
}

// Both bundled models: the served 8K one and the 1K fixture.
for (const dir of new Set([defaultModelDir(), shortModelDir()])) describeModel(dir);

function describeModel(dir: string): void {
const ref = JSON.parse(readFileSync(join(dir, 'reference-logits.json'), 'utf8')) as RefFile;
const bin = readFileSync(join(dir, 'reference-logits.bin'));
const refLogits = new Float32Array(bin.buffer, bin.byteOffset, bin.byteLength / 4);

let model: Model;
let engine: KvEngine;
describe(`reference model ${dir.split('/').pop()}`, () => {
before(() => {
  model = Model.load(dir);
  const c = model.config;
  // FP32 semantics: keys stay fp16 (as every token is protected), the query stays float.
  engine = new KvEngine({ layers: c.layers, qHeads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, quant: 'symmetric', queryInt8: false });
});
after(() => engine.close());

  it('tokenises bytes with BOS like the training recipe', () => {
    assert.deepEqual(model.tokenizer.encode('The jury said'), ref.prompts.find((p) => p.name === 'jury')?.token_ids);
  });

  for (const p of ref.prompts) {
    it(`logits for the "${p.name}" prompt with an FP32 cache match PyTorch (max |diff| <= 1e-3, same argmax)`, async () => {
      const V = ref.vocab_size;
      const got = await new Fp32Cache(model).forward(p.token_ids); // [n][V]
      let worst = 0;
      for (let t = 0; t < p.n_tokens; t++) {
        const want = refLogits.subarray(p.logits_offset_floats + t * V, p.logits_offset_floats + (t + 1) * V);
        const row = got.subarray(t * V, (t + 1) * V);
        for (let j = 0; j < V; j++) worst = Math.max(worst, Math.abs(row[j] - want[j]));
        assert.equal(argmax(row), argmax(want), `argmax at position ${t}`);
      }
      assert.ok(worst <= 1e-3, `max |logit diff| ${worst}`);
    });
  }

  it('the KV engine with every token at fp16 stays close to PyTorch', async () => {
    const V = ref.vocab_size, p = ref.prompts[0];
    const seq = await engine.createSequence();
    const got = await model.step(engine, [{ seq, tokens: p.token_ids }], { allRows: true });
    await engine.freeSequence(seq);
    let worst = 0;
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i] - refLogits[p.logits_offset_floats + i]));
    assert.ok(worst <= 0.05, `max |logit diff| ${worst}`); // fp16 keys and values: a few 1e-3 relative
    assert.equal(argmax(got.subarray(got.length - V)), argmax(refLogits.subarray(p.logits_offset_floats + got.length - V, p.logits_offset_floats + got.length)));
  });

  it('greedy generation with an FP32 cache reproduces the golden continuation', async () => {
    const g = ref.greedy_continuation;
    const cache = new Fp32Cache(model);
    const V = ref.vocab_size;
    let logits = await cache.forward(g.prompt_token_ids);
    const out: number[] = [];
    for (let i = 0; i < g.n_new_tokens; i++) {
      out.push(argmax(logits.subarray(logits.length - V)));
      if (i + 1 < g.n_new_tokens) logits = await cache.forward([out[i]]);
    }
    assert.deepEqual(out, g.token_ids);
  });

  it('greedy generation through the KV engine reproduces the golden continuation', async () => {
    const g = ref.greedy_continuation;
    const seq = await engine.createSequence();
    let logits = await model.step(engine, [{ seq, tokens: g.prompt_token_ids }]);
    const out: number[] = [];
    for (let i = 0; i < g.n_new_tokens; i++) {
      out.push(argmax(logits));
      if (i + 1 < g.n_new_tokens) logits = await model.step(engine, [{ seq, tokens: [out[i]] }]);
    }
    await engine.freeSequence(seq);
    assert.deepEqual(out, g.token_ids);
  });
});
}
