// Loading Hugging Face checkpoints: a real-layout model with a tokenizer.json
// loads and runs through the same code as the bundled model, and every kind
// of bad folder stops with an error naming the file and the tensor.
import assert from 'node:assert/strict';
import { rmSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { KvEngine } from '../../native/kv-engine.js';
import { ModelLoadError } from '../../services/orchestrator/model/model-error.js';
import { Model } from '../../services/orchestrator/model/model.js';
import { argmax } from '../../services/orchestrator/model/sampler.js';
import { TINY, writeTinyCheckpoint } from '../helpers/tiny-checkpoint.js';

const dirs: string[] = [];
const tiny = (...args: Parameters<typeof writeTinyCheckpoint>) => {
  const d = writeTinyCheckpoint(...args);
  dirs.push(d);
  return d;
};
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

function engineFor(m: Model) {
  const c = m.config;
  return new KvEngine({ layers: c.layers, qHeads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, quant: 'symmetric', queryInt8: false });
}

function expectLoadError(dir: string, file: RegExp, message: RegExp, tensor?: string) {
  assert.throws(
    () => Model.load(dir),
    (e: unknown) => {
      assert.ok(e instanceof ModelLoadError, `expected ModelLoadError, got ${String(e)}`);
      assert.match(e.file, file);
      assert.match(e.message, message);
      assert.equal(e.tensor, tensor);
      return true;
    },
  );
}

describe('Hugging Face checkpoint loading', () => {
  it('loads a BF16 llama folder with tokenizer.json and generates through the runtime', async () => {
    const m = Model.load(tiny());
    assert.equal(m.config.layers, TINY.layers);
    const ids = m.tokenizer.encode('the cat');
    assert.equal(ids[0], 0); // <s> from the post-processor
    assert.ok(ids.length < 1 + 'the cat'.length, 'merges applied');
    assert.equal(m.tokenizer.decode(ids), 'the cat');
    const engine = engineFor(m);
    const runGreedy = async () => {
      const seq = await engine.createSequence();
      let logits = await m.step(engine, [{ seq, tokens: ids }]);
      const out: number[] = [];
      for (let i = 0; i < 6; i++) {
        assert.equal(logits.length, m.config.vocab);
        assert.ok(logits.every(Number.isFinite));
        out.push(argmax(logits));
        logits = await m.step(engine, [{ seq, tokens: [out[out.length - 1]] }]);
      }
      await engine.freeSequence(seq);
      return out;
    };
    const a = await runGreedy(), b = await runGreedy();
    assert.deepEqual(a, b);
    await engine.close();
  });

  it('prefill in one chunk equals token-by-token decoding', async () => {
    const m = Model.load(tiny({ ...TINY, dtype: 'F32', tied: true }));
    const engine = engineFor(m);
    const ids = [0, 5, 77, 120, 33, 9, 250, 41];
    const s1 = await engine.createSequence();
    const all = await m.step(engine, [{ seq: s1, tokens: ids }], { allRows: true }); // [8][vocab]
    const s2 = await engine.createSequence();
    for (let i = 0; i < ids.length; i++) {
      const one = await m.step(engine, [{ seq: s2, tokens: [ids[i]] }]);
      const row = all.subarray(i * m.config.vocab, (i + 1) * m.config.vocab);
      let worst = 0;
      for (let j = 0; j < one.length; j++) worst = Math.max(worst, Math.abs(one[j] - row[j]));
      assert.ok(worst < 1e-3, `position ${i}: max diff ${worst}`);
    }
    await engine.close();
  });

  it('rejects bad step input with INVALID_ARGUMENT and leaves the sequence as it was', async () => {
    const m = Model.load(tiny());
    const engine = engineFor(m);
    const seq = await engine.createSequence();
    await m.step(engine, [{ seq, tokens: [0, 5] }]);
    for (const tokens of [[], [TINY.vocab], [-1], [1.5]])
      await assert.rejects(m.step(engine, [{ seq, tokens }]), (e: { code?: string }) => e.code === 'INVALID_ARGUMENT');
    await assert.rejects(m.step(engine, [{ seq, tokens: new Array(255).fill(3) }]), /exceed the model's 256 positions/);
    assert.equal(engine.length(seq, 0), 2);
    await engine.close();
  });

  it('names the file for a missing config or weights', () => {
    const d1 = tiny();
    unlinkSync(join(d1, 'config.json'));
    expectLoadError(d1, /config\.json$/, /missing file/);
    const d2 = tiny();
    unlinkSync(join(d2, 'model.safetensors'));
    expectLoadError(d2, /smartkv-tiny-/, /no \*\.safetensors/);
  });

  it('rejects truncated and malformed safetensors', () => {
    expectLoadError(tiny(TINY, { truncateTo: 5 }), /model\.safetensors$/, /truncated/);
    expectLoadError(tiny(TINY, { truncateTo: 2000 }), /model\.safetensors$/, /truncated|malformed header/);
    expectLoadError(
      tiny(TINY, { header: (h) => ((h['model.norm.weight'] as { data_offsets: number[] }).data_offsets = [0, 3]) }),
      /model\.safetensors$/, /data_offsets span/, 'model.norm.weight');
  });

  it('rejects an unsupported dtype, naming the tensor', () => {
    const d = tiny(TINY, { header: (h) => ((h['model.layers.1.mlp.up_proj.weight'] as { dtype: string }).dtype = 'I8') });
    expectLoadError(d, /model\.safetensors$/, /unsupported dtype "I8"/, 'model.layers.1.mlp.up_proj.weight');
  });

  it('rejects a tensor whose shape disagrees with the config', () => {
    const d = tiny(TINY, { config: (c) => (c.intermediate_size = 128) });
    expectLoadError(d, /model\.safetensors$/, /disagrees with config\.json/, 'model.layers.0.mlp.gate_proj.weight');
  });

  it('rejects a missing tensor and an unsupported model_type', () => {
    expectLoadError(tiny(TINY, { tensors: (t) => delete t['model.layers.0.self_attn.k_proj.weight'] }), /model\.safetensors$/, /missing tensor/, 'model.layers.0.self_attn.k_proj.weight');
    expectLoadError(tiny(TINY, { config: (c) => (c.model_type = 'gpt2') }), /config\.json$/, /unsupported model_type "gpt2"/);
  });
});
