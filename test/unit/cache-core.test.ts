// CacheCore's totals while sequences come and go: a Stats walk that meets a
// sequence freed meanwhile (a client cancelled) skips it instead of failing.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CacheCore } from '../../services/cache/cache-core.js';

test('total Stats does not fail when a sequence is freed during the walk', async () => {
  const core = new CacheCore({ layers: 2, qHeads: 4, kvHeads: 2, headDim: 64, quant: 'symmetric', threads: 1 }, 0);
  try {
    const a = await core.createSequence('mixed', 1000);
    const b = await core.createSequence('mixed', 2000);
    const kv = new Float32Array(10 * 2 * 64).fill(0.5);
    for (const s of [a.seq, b.seq]) for (let l = 0; l < 2; l++) await core.engine.append(s, l, kv, kv);
    // The walk asks for a's bytes first; b's free is queued before b's turn.
    const walking = core.stats();
    const freeing = core.freeSequence(b.seq);
    const [s] = await Promise.all([walking, freeing]);
    const aBytes = (await core.stats(a.seq)).bytes.heldBytes;
    assert.equal(s.bytes.heldBytes, aBytes, 'the freed sequence is not counted');
    const after = await core.stats();
    assert.deepEqual([after.sequences, after.reservedBytes, after.bytes.heldBytes], [1, 1000, aBytes]);
  } finally {
    await core.close();
  }
});

// A client can attend a step on some layers only (issue 18: ExportImportance
// then answered INTERNAL "layer 1 holds 40 tokens, layer 0 41"). That is the
// caller's state: FAILED_PRECONDITION naming the layers, for export and plans,
// and the sequence is usable again once every layer has the same rows.
test('ExportImportance and ApplyPlan after an attend on some layers only: FAILED_PRECONDITION', async () => {
  const core = new CacheCore({ layers: 2, qHeads: 4, kvHeads: 2, headDim: 64, quant: 'symmetric', threads: 1 }, 0);
  try {
    const { seq } = await core.createSequence('mixed', 0);
    const row = (n: number, heads: number) => new Float32Array(n * heads * 64).fill(0.25);
    const step = (layer: number, n: number) => core.attend(layer, [{ seq, rows: n, q: row(n, 4), kNew: row(n, 2), vNew: row(n, 2) }]);
    await step(0, 3);
    await step(1, 3);
    await step(0, 1); // layer 0: 4 tokens, layer 1: 3
    const plan = [{ layer: -1, positions: new Uint32Array([0]), formats: new Uint8Array([1]) }];
    for (const call of [() => core.exportImportance(seq), () => core.applyPlan(seq, plan)])
      await assert.rejects(call, (e: Error & { code?: string }) => e.code === 'FAILED_PRECONDITION' && /layer 1 holds 3 tokens but layer 0 holds 4/.test(e.message));
    await step(1, 1);
    assert.equal((await core.exportImportance(seq)).tokens, 4);
    assert.equal((await core.applyPlan(seq, plan)).tokensChanged, 2);
  } finally {
    await core.close();
  }
});

// Admission asks for reservations on every request (issue 18: with 20,000
// sequences held, a Stats walk per admission made 50 short requests take
// 43.8 s). reservations() reads counters kept as sequences come and go.
test('reservations() is O(1): it reads counters, it does not walk the sequences', async () => {
  const core = new CacheCore({ layers: 2, qHeads: 4, kvHeads: 2, headDim: 64, quant: 'symmetric', threads: 1 }, 5000);
  try {
    const a = await core.createSequence('mixed', 1000);
    await core.createSequence('mixed', 2000);
    let walked = 0;
    const stats = core.engine.stats.bind(core.engine);
    core.engine.stats = ((seq: number) => (walked++, stats(seq))) as typeof core.engine.stats;
    assert.deepEqual(await core.reservations(), { sequences: 2, reservedBytes: 3000, memoryLimitBytes: 5000, maxReservedPerOwner: 0, callerReservedBytes: 3000 });
    assert.equal(walked, 0);
    await core.stats();
    assert.equal(walked, 2, 'the full Stats walks every sequence');
    await core.freeSequence(a.seq);
    assert.deepEqual(await core.reservations(), { sequences: 1, reservedBytes: 2000, memoryLimitBytes: 5000, maxReservedPerOwner: 0, callerReservedBytes: 2000 });
  } finally {
    await core.close();
  }
});

// One caller could reserve a whole shard's memory limit (issue 18: an
// anonymous reservation filled it, and every Generate got RESOURCE_EXHAUSTED).
test('reservations per owner: one owner is refused past its cap, another still has room', async () => {
  const core = new CacheCore({ layers: 2, qHeads: 4, kvHeads: 2, headDim: 64, quant: 'symmetric', threads: 1 }, 10_000, 4000);
  try {
    const a1 = await core.createSequence('mixed', 3000, undefined, 'owner-a');
    await assert.rejects(core.createSequence('mixed', 1001, undefined, 'owner-a'), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'RESOURCE_EXHAUSTED');
      assert.match(e.message, /3000 bytes reserved.*1001 more.*at most 4000 \(max_reserved_bytes_per_owner, --max-reserved-per-owner\)/);
      return true;
    });
    await core.createSequence('mixed', 1000, undefined, 'owner-a'); // exactly the cap
    const b = await core.createSequence('mixed', 4000, undefined, 'owner-b');
    assert.deepEqual(core.reservationsOf('owner-a'), { sequences: 3, reservedBytes: 8000, memoryLimitBytes: 10_000, maxReservedPerOwner: 4000, callerReservedBytes: 4000 });
    assert.equal(core.reservationsOf('owner-b').callerReservedBytes, 4000);
    // The shard's limit still binds across owners.
    await assert.rejects(core.createSequence('mixed', 2001, undefined, 'owner-c'), /cache memory limit/);
    await core.freeSequence(a1.seq);
    assert.equal(core.reservedBy('owner-a'), 1000, 'a free gives the owner its bytes back');
    await core.createSequence('mixed', 2000, undefined, 'owner-a');
    await core.freeSequence(b.seq);
    assert.equal(core.reservedBy('owner-b'), 0);
  } finally {
    await core.close();
  }
});

// The `end` budget horizon reserves a prompt at 16 bits and gives the excess
// back after the first plan: a reservation only shrinks, never below what the
// sequence holds, and only the named sequence's and its owner's totals move.
test('shrinkReservation lowers one reservation and refuses growth, undershoot and unknown sequences', async () => {
  const core = new CacheCore({ layers: 2, qHeads: 4, kvHeads: 2, headDim: 64, quant: 'symmetric', threads: 1 }, 300_000);
  try {
    const a = await core.createSequence('mixed', 150_000, undefined, 'owner-a');
    await core.createSequence('mixed', 100_000, undefined, 'owner-b');
    const kv = new Float32Array(10 * 2 * 64).fill(0.5); // [10 tokens][2 KV heads][64]
    for (let l = 0; l < 2; l++) await core.engine.append(a.seq, l, kv, kv);
    const holds = (await core.stats(a.seq)).bytes.heldBytes;
    assert.ok(holds > 0 && holds < 60_000, `held ${holds}`); // [layers][blocks of 10 tokens] at FP16, with their bookkeeping
    await assert.rejects(core.createSequence('mixed', 60_000), (e: Error & { code?: string }) => e.code === 'RESOURCE_EXHAUSTED');
    const code = (c: string) => (e: Error & { code?: string }) => e.code === c;
    await assert.rejects(core.shrinkReservation(a.seq, 150_001), code('INVALID_ARGUMENT'));
    await assert.rejects(core.shrinkReservation(a.seq, holds - 1), code('INVALID_ARGUMENT'));
    await assert.rejects(core.shrinkReservation(999, 0), code('NOT_FOUND'));
    assert.equal(core.reservationsOf('').reservedBytes, 250_000, 'a refused shrink changes nothing');
    assert.equal(await core.shrinkReservation(a.seq, 60_000), 160_000);
    assert.deepEqual([core.reservedBy('owner-a'), core.reservedBy('owner-b')], [60_000, 100_000]);
    await core.createSequence('mixed', 60_000); // the room given back admits another
    await core.freeSequence(a.seq);
    assert.equal(core.reservationsOf('').reservedBytes, 160_000, 'the free returns the shrunk reservation, not the first');
  } finally {
    await core.close();
  }
});
