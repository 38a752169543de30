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
