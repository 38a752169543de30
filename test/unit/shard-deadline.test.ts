// The deadline of a call to a cache shard: the floor until calls are slow,
// then 10 × the slowest of the last 64, capped; old slow calls age out.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ShardDeadline } from '../../services/orchestrator/shard-deadline.js';

test('shard deadline: floor, 10 × the slowest recent call, cap, window', () => {
  const d = new ShardDeadline(2000);
  assert.equal(d.ms, 2000, 'no calls yet: the floor');
  for (let i = 0; i < 10; i++) d.record(3);
  assert.equal(d.ms, 2000, 'fast calls: the floor');
  d.record(450);
  assert.equal(d.ms, 4500, 'a slow call raises it');
  d.record(20_000);
  assert.equal(d.ms, 60_000, 'capped');
  for (let i = 0; i < 64; i++) d.record(5);
  assert.equal(d.ms, 2000, 'slow calls age out after 64 others');
});
