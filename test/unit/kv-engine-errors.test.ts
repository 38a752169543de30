// Bad input: every case rejects with a KvEngineError of the right code, and
// leaves the engine exactly as it was (stats, lengths, KV, importance).
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';

import { loadAddon } from '../../native/binding.js';
import { KvEngine, KvEngineError, type KvEngineConfig, type KvErrorCode } from '../../native/kv-engine.js';
import { budgetForBeta } from '../../services/allocator/greedy.js';
import { gaussian } from '../helpers/random.js';

const CONFIG: KvEngineConfig = { layers: 2, qHeads: 4, kvHeads: 2, headDim: 64, quant: 'symmetric', threads: 2 };
const KV = 2 * 64;
const Q = 4 * 64;

function isCode(code: KvErrorCode, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof KvEngineError, `not a KvEngineError: ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

describe('config errors', () => {
  const bad: [string, Partial<KvEngineConfig> | Record<string, unknown>, RegExp][] = [
    ['head_dim not a multiple of 32', { headDim: 100 }, /headDim must be a multiple of 32/],
    ['qHeads not a multiple of kvHeads', { qHeads: 6, kvHeads: 4 }, /multiple of kvHeads/],
    ['no layers', { layers: 0 }, /layers/],
    ['unknown quant', { quant: 'nf4' }, /quant must be one of/],
    ['unknown device', { device: 'tpu' }, /device must be one of/],
    ['gamma out of range', { gamma: 1 }, /gamma/],
    ['fractional threads', { threads: 1.5 }, /threads/],
    ['non-boolean flag', { rotateKv: 'yes' }, /rotateKv must be a boolean/],
    ['unknown precision mode', { mode: 'both' }, /mode must be one of 'downgrade-only', 'reversible'/],
    ['non-string master directory', { masterDir: 7 }, /masterDir must be a string/],
  ];
  for (const [name, patch, pattern] of bad)
    it(name, () => assert.throws(() => new KvEngine({ ...CONFIG, ...patch } as KvEngineConfig), isCode('INVALID_ARGUMENT', pattern)));

  it("device 'cuda' without a CUDA device is FAILED_PRECONDITION; 'auto' falls back to the CPU", (t) => {
    if (loadAddon().cudaDevicePresent()) {
      t.diagnostic('a CUDA device is present');
      assert.equal(new KvEngine({ ...CONFIG, device: 'cuda' }).backendName, 'cuda');
      assert.equal(new KvEngine({ ...CONFIG, device: 'auto' }).backendName, 'cuda');
      return;
    }
    const why = loadAddon().cudaCompiled ? /no CUDA device is present/ : /no CUDA backend/;
    assert.throws(() => new KvEngine({ ...CONFIG, device: 'cuda' }), isCode('FAILED_PRECONDITION', why));
    assert.equal(new KvEngine({ ...CONFIG, device: 'auto' }).backendName, 'cpu');
  });
});

describe('operation errors change nothing', () => {
  let eng: KvEngine;
  let seq: number;
  let kivi: number;

  before(async () => {
    eng = new KvEngine(CONFIG);
    seq = await eng.createSequence();
    kivi = await eng.createSequence({ storage: 'kivi-2' });
    await eng.append(seq, 0, gaussian(70 * KV, 1), gaussian(70 * KV, 2));
    await eng.append(seq, 1, gaussian(50 * KV, 3), gaussian(50 * KV, 4));
    await eng.applyPlan(seq, 0, Uint32Array.of(5, 6), ['int4', 'int2']);
    await eng.attend([{ seq, layer: 0, q: gaussian(Q, 5), kNew: gaussian(KV, 6), vNew: gaussian(KV, 7) }]);
  });

  /** Everything observable about the sequence, to compare before and after. */
  async function snapshot() {
    const layers = await Promise.all([0, 1].map(async (l) => ({ kv: await eng.readKv(seq, l), r: await eng.exportImportance(seq, l) })));
    return { stats: await eng.stats(seq), lengths: [eng.length(seq, 0), eng.length(seq, 1)], layers };
  }

  const kv = (rows: number) => gaussian(rows * KV, 9);
  const attendReq = (over: Record<string, unknown> = {}) => ({ seq, layer: 0, q: gaussian(Q, 8), kNew: kv(1), vNew: kv(1), ...over });

  const cases: [string, KvErrorCode, RegExp, () => Promise<unknown>][] = [
    ['unknown sequence', 'NOT_FOUND', /unknown sequence 999/, () => eng.stats(999)],
    ['append to an unknown sequence', 'NOT_FOUND', /unknown sequence/, () => eng.append(12345, 0, kv(1), kv(1))],
    ['layer out of range', 'INVALID_ARGUMENT', /layer must be an integer in \[0, 1\]/, () => eng.append(seq, 2, kv(1), kv(1))],
    ['negative layer', 'INVALID_ARGUMENT', /layer/, () => eng.exportImportance(seq, -1)],
    ['fractional layer', 'INVALID_ARGUMENT', /layer/, () => eng.readKv(seq, 0.5)],
    ['k of the wrong type', 'INVALID_ARGUMENT', /k must be a Float32Array, got Float64Array/, () =>
      eng.append(seq, 0, new Float64Array(KV) as unknown as Float32Array, kv(1))],
    ['k not a whole number of rows', 'INVALID_ARGUMENT', /multiple of 128/, () => eng.append(seq, 0, new Float32Array(KV + 1), kv(1))],
    ['v of the wrong length', 'INVALID_ARGUMENT', /v has 256 elements, expected 128/, () => eng.append(seq, 0, kv(1), kv(2))],
    ['rows = 0 (empty buffers)', 'INVALID_ARGUMENT', /rows must be ≥ 1/, () => eng.append(seq, 0, new Float32Array(0), new Float32Array(0))],
    ['explicit rows ≤ 0', 'INVALID_ARGUMENT', /rows must be a positive integer/, () => eng.append(seq, 0, kv(1), kv(1), 0)],
    ['explicit rows that disagree with k', 'INVALID_ARGUMENT', /expected 2 rows/, () => eng.append(seq, 0, kv(1), kv(1), 2)],
    ['attend: empty batch', 'INVALID_ARGUMENT', /non-empty/, () => eng.attend([])],
    ['attend: rows ≤ 0', 'INVALID_ARGUMENT', /rows must be a positive integer/, () => eng.attend([attendReq({ rows: -1 })])],
    ['attend: q of the wrong length', 'INVALID_ARGUMENT', /q has 255 elements/, () => eng.attend([attendReq({ q: new Float32Array(Q - 1) })])],
    ['attend: q a plain array', 'INVALID_ARGUMENT', /q must be a Float32Array, got Array/, () => eng.attend([attendReq({ q: [1, 2] })])],
    ['attend: kNew of the wrong length', 'INVALID_ARGUMENT', /kNew has 256 elements, expected 128/, () => eng.attend([attendReq({ kNew: kv(2) })])],
    ['attend: out of the wrong length', 'INVALID_ARGUMENT', /out has 10 elements/, () => eng.attend([attendReq({ out: new Float32Array(10) })])],
    ['attend: probs of the wrong length', 'INVALID_ARGUMENT', /probs has 5 elements, expected 72/, () => eng.attend([attendReq({ probs: new Float32Array(5) })])],
    ['attend: the same (seq, layer) twice', 'INVALID_ARGUMENT', /appears twice in one batch/, () => eng.attend([attendReq(), attendReq()])],
    ['attend: a bad request after a good one', 'NOT_FOUND', /unknown sequence 77/, () => eng.attend([attendReq(), attendReq({ seq: 77 })])],
    ['attend: layer out of range', 'INVALID_ARGUMENT', /layer/, () => eng.attend([attendReq({ layer: 9 })])],
    ['plan naming a token that does not exist', 'INVALID_ARGUMENT', /names token 71 but layer 0 holds 71/, () =>
      eng.applyPlan(seq, 0, Uint32Array.of(3, 71), ['int8', 'int8'])],
    ["plan for 'all' beyond the shortest layer", 'INVALID_ARGUMENT', /names token 60 but every layer holds 50/, () =>
      eng.applyPlan(seq, 'all', Uint32Array.of(60), ['int4'])],
    ['plan with an unknown format name', 'INVALID_ARGUMENT', /'int3', not one of/, () =>
      eng.applyPlan(seq, 0, Uint32Array.of(3), ['int3' as 'int4'])],
    ['plan with an unknown format code', 'INVALID_ARGUMENT', /formats\[1\] is 7/, () => eng.applyPlan(seq, 0, Uint32Array.of(3, 4), Uint8Array.of(2, 7))],
    ['plan with formats of the wrong length', 'INVALID_ARGUMENT', /expected 2/, () => eng.applyPlan(seq, 0, Uint32Array.of(3, 4), ['int4'])],
    ['plan positions of the wrong type', 'INVALID_ARGUMENT', /positions must be a Uint32Array, got Int32Array/, () =>
      eng.applyPlan(seq, 0, Int32Array.of(3) as unknown as Uint32Array, ['int4'])],
    ['plan naming a token twice', 'INVALID_ARGUMENT', /token 3 appears twice/, () => eng.applyPlan(seq, 0, Uint32Array.of(3, 3), ['int4', 'int2'])],
    ['plan raising precision without a master copy', 'FAILED_PRECONDITION', /master copy/, () =>
      eng.applyPlan(seq, 0, Uint32Array.of(3, 6), ['int2', 'int8'])],
    ['plan on a KIVI sequence', 'FAILED_PRECONDITION', /kivi-2 storage/, () => eng.applyPlan(kivi, 0, Uint32Array.of(), [])],
    ['unknown storage kind', 'INVALID_ARGUMENT', /storage must be one of/, () => eng.createSequence({ storage: 'kivi-3' as 'kivi-2' })],
    ['unknown precision mode of a sequence', 'INVALID_ARGUMENT', /mode must be one of/, () => eng.createSequence({ mode: 'up' as 'reversible' })],
  ];
  for (const [name, code, pattern, call] of cases)
    it(`${name}: ${code}`, async () => {
      const beforeState = await snapshot();
      await assert.rejects(call(), isCode(code, pattern));
      assert.deepEqual(await snapshot(), beforeState);
    });

  it('a budget outside (0, 1] is INVALID_ARGUMENT', () => {
    const base = { n: 100, fp16TokenBytes: 512, tokenBytes: [512, 264, 136, 72], metaBytesPerToken: 8, blockTokens: 32, extraBytes: 0, sinks: 4, window: 8 };
    for (const beta of [0, -0.1, 1.01, Number.NaN])
      assert.throws(() => budgetForBeta({ ...base, beta }), isCode('INVALID_ARGUMENT', /budget in \(0, 1\]/));
    assert.ok(budgetForBeta({ ...base, beta: 1 }) > 0);
  });
});

describe('limits, freeing and closing', () => {
  it('the memory limit is RESOURCE_EXHAUSTED and the failed append is not counted', async () => {
    const eng = new KvEngine({ ...CONFIG, memoryLimitBytes: 120_000 });
    const seq = await eng.createSequence();
    await eng.append(seq, 0, gaussian(32 * KV, 1), gaussian(32 * KV, 2));
    const before = await eng.stats(seq);
    await assert.rejects(eng.append(seq, 0, gaussian(200 * KV, 1), gaussian(200 * KV, 2)), isCode('RESOURCE_EXHAUSTED', /limit/));
    assert.deepEqual(await eng.stats(seq), before);
    assert.equal(eng.length(seq, 0), 32);
    // the length model was rolled back: a plan on token 31 is fine, on 32 not
    await eng.applyPlan(seq, 0, Uint32Array.of(31), ['int8']);
    await assert.rejects(eng.applyPlan(seq, 0, Uint32Array.of(32), ['int8']), isCode('INVALID_ARGUMENT'));
    await eng.close();
  });

  it('a freed sequence is NOT_FOUND; a closed engine is FAILED_PRECONDITION', async () => {
    const eng = new KvEngine(CONFIG);
    const seq = await eng.createSequence();
    await eng.freeSequence(seq);
    await assert.rejects(eng.stats(seq), isCode('NOT_FOUND'));
    await assert.rejects(eng.freeSequence(seq), isCode('NOT_FOUND'));
    await eng.close();
    await assert.rejects(eng.createSequence(), isCode('FAILED_PRECONDITION', /closed/));
    await eng.close(); // twice is fine
  });
});
