// Batched reallocation (issue 16) against real engines (CacheCore) and the
// local allocator: one batch per shard per step makes one call of each kind
// and gives every sequence exactly the plan it gets alone (batch
// invariance); a sequence freed between the export and the apply gets its
// own NOT_FOUND while the others apply, and nothing is left behind; a
// malformed batch is refused as a whole with an error naming what is wrong.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CacheCore } from '../../services/cache/cache-core.js';
import type { ImportanceBatch, PlanApplied, SequencePlan } from '../../services/cache/cache-api.js';
import { MAX_BATCH_SEQUENCES } from '../../services/common/limits.js';
import { LocalAllocator } from '../../services/orchestrator/allocator-client.js';
import { reallocate, reallocateBatch, type BatchEntry, type ReallocOptions, type SequenceLayout } from '../../services/orchestrator/reallocate.js';
import { KvEngineError } from '../../native/kv-engine.js';
import { rng } from '../helpers/random.js';

const L = 3, QH = 4, KV = 2, D = 64, FP16_TOKEN = 2 * KV * D * 2;
const LENGTHS = [90, 260, 400, 700];
const g = (u: () => number, n: number) => Float32Array.from({ length: n }, () => (u() - 0.5) * 4);
const newCore = () => new CacheCore({ layers: L, qHeads: QH, kvHeads: KV, headDim: D, quant: 'symmetric', threads: 1 });

async function filledSequence(core: CacheCore, n: number, seed: number): Promise<number> {
  const { seq } = await core.createSequence('mixed', 1000 + n, undefined, '', 'downgrade-only');
  const u = rng(seed);
  for (let l = 0; l < L; l++) await core.engine.append(seq, l, g(u, n * KV * D), g(u, n * KV * D));
  for (let s = 0; s < 8; s++)
    for (let l = 0; l < L; l++) await core.attend(l, [{ seq, rows: 1, q: g(u, QH * D), kNew: g(u, KV * D), vNew: g(u, KV * D) }]);
  return seq;
}

const layout = (core: CacheCore): SequenceLayout => ({ layers: L, fp16TokenBytes: FP16_TOKEN, tokenBytes: core.engine.tokenBytes(), blockTokens: 32 });
const options = (seq: number, perLayer: boolean): ReallocOptions => ({
  policy: 'smartkv', beta: 0.33, sinks: 4, window: 64, ahead: 16, seed: seq * 7919, gamma: 0.9, normalised: !perLayer, perLayer,
});
const entry = (core: CacheCore, seq: number, n: number, perLayer: boolean): BatchEntry => ({ seq, tokens: n + 8, layout: layout(core), options: options(seq, perLayer), reversible: false });

/** A shard that counts its batched calls (and may act between them). */
function counting(core: CacheCore, afterExport?: () => Promise<void>) {
  const c = Object.assign(Object.create(core) as CacheCore, { exportCalls: 0, applyCalls: 0 });
  c.exportImportanceBatch = async (seqs: readonly number[]): Promise<ImportanceBatch> => {
    c.exportCalls++;
    const r = await core.exportImportanceBatch(seqs);
    await afterExport?.();
    return r;
  };
  c.applyPlanBatch = (plans: readonly SequencePlan[]): Promise<(PlanApplied | Error)[]> => {
    c.applyCalls++;
    return core.applyPlanBatch(plans);
  };
  return c;
}

/** Every layer's formats of a sequence, as a string to compare. */
async function formatsOf(core: CacheCore, seq: number): Promise<string> {
  return (await core.exportImportance(seq)).formats.join('');
}

for (const perLayer of [false, true])
  test(`${perLayer ? 'per-layer' : 'shared'}: one call of each kind for the whole batch, each plan the one it gets alone`, async () => {
    const alone = newCore(), batched = newCore();
    const seqsAlone: number[] = [], seqsBatched: number[] = [];
    for (const n of LENGTHS) {
      seqsAlone.push(await filledSequence(alone, n, n));
      seqsBatched.push(await filledSequence(batched, n, n));
    }
    // Alone: one reallocation per sequence with the single-sequence calls.
    const single: Awaited<ReturnType<typeof reallocate>>[] = [];
    for (const seq of seqsAlone) single.push(await reallocate(alone, seq, new LocalAllocator(), layout(alone), options(seq, perLayer), false));
    // Batched: the same sequences in one batch.
    const shard = counting(batched), allocator = new LocalAllocator();
    const { outcomes, cost } = await reallocateBatch(shard, allocator, seqsBatched.map((s, i) => entry(batched, s, LENGTHS[i], perLayer)));
    assert.equal(shard.exportCalls, 1, 'one ExportImportanceBatch');
    assert.equal(allocator.calls, 1, 'one AllocateBatch');
    assert.equal(shard.applyCalls, 1, 'one ApplyPlanBatch');
    assert.deepEqual([cost.export.calls, cost.allocate.calls, cost.apply.calls], [1, 1, 1]);
    assert.equal(cost.sequences, LENGTHS.length);
    for (const [i, o] of outcomes.entries()) {
      assert.ok(!(o instanceof Error), `sequence ${i}: ${o}`);
      const a = single[i];
      assert.deepEqual([...o.formats], [...a.formats], `sequence ${i}: the same plan as alone`);
      assert.deepEqual([o.fits, o.tokensChanged, o.bytesMoved, o.bytes.heldBytes], [a.fits, a.tokensChanged, a.bytesMoved, a.bytes.heldBytes]);
      assert.equal(await formatsOf(batched, seqsBatched[i]), await formatsOf(alone, seqsAlone[i]));
    }
    assert.ok(outcomes.some((o) => !(o instanceof Error) && o.tokensChanged > 0), 'some plan changed precision');
    await alone.close();
    await batched.close();
  });

test('batch invariance: a sequence gets the same plan whichever others share its batch', async () => {
  const plans: string[][] = [];
  for (const company of [[], [260], [260, 700, 90]]) {
    const core = newCore();
    const subject = await filledSequence(core, 400, 400);
    const others = [];
    for (const n of company) others.push({ seq: await filledSequence(core, n, n), n });
    // The subject in the middle of the batch when it has company.
    const entries = [...others.slice(0, 1).map((o) => entry(core, o.seq, o.n, false)), entry(core, subject, 400, false), ...others.slice(1).map((o) => entry(core, o.seq, o.n, false))];
    const { outcomes } = await reallocateBatch(core, new LocalAllocator(), entries);
    const mine = outcomes[others.length ? 1 : 0];
    assert.ok(!(mine instanceof Error));
    plans.push([[...mine.formats].join(''), await formatsOf(core, subject)]);
    await core.close();
  }
  // Sequence ids differ between runs only where company was created first; the subject is always created first.
  assert.deepEqual(plans[1], plans[0]);
  assert.deepEqual(plans[2], plans[0]);
});

test('a sequence freed between export and apply gets its own NOT_FOUND; the others apply and nothing leaks', async () => {
  const core = newCore(), twin = newCore();
  const seqs: number[] = [], twins: number[] = [];
  for (const n of LENGTHS) {
    seqs.push(await filledSequence(core, n, n));
    twins.push(await filledSequence(twin, n, n));
  }
  const victim = 2;
  // The client cancels the request of seqs[victim] while its batch is being planned: it is freed.
  const shard = counting(core, () => core.freeSequence(seqs[victim]));
  const { outcomes } = await reallocateBatch(shard, new LocalAllocator(), seqs.map((s, i) => entry(core, s, LENGTHS[i], false)));
  const gone = outcomes[victim];
  assert.ok(gone instanceof KvEngineError, `the freed sequence fails alone: ${gone}`);
  assert.equal(gone.code, 'NOT_FOUND');
  assert.equal(shard.applyCalls, 1, 'the other plans still go in one call');
  // The others got exactly the plans they get without the victim.
  const { outcomes: want } = await reallocateBatch(twin, new LocalAllocator(), twins.filter((_, i) => i !== victim).map((s) => entry(twin, s, LENGTHS[twins.indexOf(s)], false)));
  const got = outcomes.filter((_, i) => i !== victim);
  for (const [k, o] of got.entries()) {
    assert.ok(!(o instanceof Error), `${o}`);
    const w = want[k] as Exclude<(typeof want)[number], Error>;
    assert.deepEqual([...o.formats], [...w.formats]);
    assert.equal(o.bytes.heldBytes, w.bytes.heldBytes);
  }
  // Nothing of the victim is left: its reservation went, and the shard holds exactly the others.
  const s = await core.stats();
  assert.equal(s.sequences, LENGTHS.length - 1);
  assert.equal(s.reservedBytes, LENGTHS.filter((_, i) => i !== victim).reduce((a, n) => a + 1000 + n, 0));
  const perSeq = await Promise.all(seqs.filter((_, i) => i !== victim).map((q) => core.stats(q)));
  assert.equal(s.bytes.heldBytes, perSeq.reduce((a, x) => a + x.bytes.heldBytes, 0));
  for (const q of seqs) if (q !== seqs[victim]) await core.freeSequence(q);
  const empty = await core.stats();
  assert.deepEqual([empty.sequences, empty.reservedBytes, empty.bytes.heldBytes], [0, 0, 0]);
  await core.close();
  await twin.close();
});

test('a malformed batch is refused as a whole, naming what is wrong; unknown sequences fail alone', async () => {
  const core = newCore();
  const a = await filledSequence(core, 90, 1), b = await filledSequence(core, 100, 2);
  const refused = async (p: Promise<unknown>, code: string, what: RegExp) =>
    assert.rejects(p, (e: KvEngineError) => {
      assert.equal(e.code, code, e.message);
      assert.match(e.message, what);
      return true;
    });
  await refused(core.exportImportanceBatch([]), 'INVALID_ARGUMENT', /sequence_ids: the batch is empty/);
  await refused(core.exportImportanceBatch([a, b, a]), 'INVALID_ARGUMENT', /sequence_ids\[2\]: sequence \d+ is already sequence_ids\[0\]/);
  await refused(core.exportImportanceBatch(Array.from({ length: MAX_BATCH_SEQUENCES + 1 }, (_, i) => i)), 'RESOURCE_EXHAUSTED', /257 sequences.*256/);
  await refused(core.exportImportanceBatch([a, b], 150), 'RESOURCE_EXHAUSTED', /206 tokens per layer.*150/);
  await refused(core.applyPlanBatch([{ seq: b, plans: [] }, { seq: b, plans: [] }]), 'INVALID_ARGUMENT', /plans\[1\]: sequence \d+ is already plans\[0\]/);
  // An unknown id answers in its place; the rest are exported.
  const r = await core.exportImportanceBatch([a, 999, b]);
  assert.equal((r.results[1] as KvEngineError).code, 'NOT_FOUND');
  assert.equal((r.results[0] as { tokens: number }).tokens, 98);
  assert.equal((r.results[2] as { tokens: number }).tokens, 108);
  // A malformed plan is refused alone, and moves nothing; the other applies.
  const before = await formatsOf(core, a);
  const applied = await core.applyPlanBatch([
    { seq: a, plans: [{ layer: -1, positions: Uint32Array.from([5000]), formats: Uint8Array.from([1]) }] },
    { seq: b, plans: [{ layer: -1, positions: Uint32Array.from([10]), formats: Uint8Array.from([2]) }] },
  ]);
  assert.match((applied[0] as Error).message, /positions\[0\] is 5000/);
  assert.equal(await formatsOf(core, a), before);
  assert.equal((applied[1] as PlanApplied).tokensChanged, L);
  await core.close();
});

test('a batch over one context of tokens goes in several calls, each within it', async () => {
  const core = newCore();
  const seqs = [];
  for (const n of LENGTHS) seqs.push(await filledSequence(core, n, n));
  const shard = counting(core);
  const allocator = new LocalAllocator();
  // 98 + 268 + 408 + 708 tokens: at most 800 per call → [98, 268, 408], [708].
  const { outcomes, cost } = await reallocateBatch(shard, allocator, seqs.map((s, i) => entry(core, s, LENGTHS[i], false)), 800);
  assert.equal(cost.export.calls, 2);
  assert.equal(allocator.calls, 2);
  assert.ok(outcomes.every((o) => !(o instanceof Error)));
  await core.close();
});
