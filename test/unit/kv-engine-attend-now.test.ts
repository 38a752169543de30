// KvEngine.attendNow, the data plane's attend on the calling thread
// (services/cache/region-table.ts): the same outputs and bookkeeping as
// attend(), null while another operation is queued (so it never jumps the
// engine's order), and a refused request changes nothing.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { KvEngine } from '../../native/kv-engine.js';
import { gaussian } from '../helpers/random.js';

const config = { layers: 2, qHeads: 4, kvHeads: 2, headDim: 32, quant: 'symmetric' as const, threads: 1 };
const Q = 4 * 32, KV = 2 * 32;

test('attendNow equals attend, keeps the lengths, and yields to queued operations', async () => {
  const a = new KvEngine(config), b = new KvEngine(config);
  try {
    const sa = await a.createSequence(), sb = await b.createSequence();
    for (let step = 0; step < 5; step++) {
      const req = { layer: 0, q: gaussian(Q, step), kNew: gaussian(KV, step + 10), vNew: gaussian(KV, step + 20) };
      const [want] = await a.attend([{ seq: sa, ...req }]);
      const out = new Float32Array(Q);
      const got = b.attendNow([{ seq: sb, ...req, out }]);
      assert.ok(got, 'an idle engine answers at once');
      assert.equal(got[0], out, 'written in place');
      assert.deepEqual(out, want);
    }
    assert.equal(b.length(sb, 0), 5);
    // With an operation queued, attendNow declines (the caller then uses attend()).
    const pending = b.exportImportance(sb, 0);
    assert.equal(b.attendNow([{ seq: sb, layer: 1, q: gaussian(Q, 1), kNew: gaussian(KV, 2), vNew: gaussian(KV, 3) }]), null);
    await pending;
    // A refused request (unknown sequence after a good one) appends nothing.
    assert.throws(() => b.attendNow([{ seq: sb, layer: 1, q: gaussian(Q, 1), kNew: gaussian(KV, 2), vNew: gaussian(KV, 3) }, { seq: 77, layer: 1, q: gaussian(Q, 1), kNew: gaussian(KV, 2), vNew: gaussian(KV, 3) }]), { code: 'NOT_FOUND' });
    assert.equal(b.length(sb, 1), 0);
  } finally {
    await a.close();
    await b.close();
  }
});
