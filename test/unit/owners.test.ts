// OwnerLeases with a hand-driven clock: a stream holds the lease however long
// it idles, any call renews it, and only owners without a stream expire.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { OwnerLeases, ownerTag, validOwner } from '../../services/cache/owners.js';

const A = 'a'.repeat(32), B = 'b'.repeat(32), C = 'c'.repeat(32);

test('leases: streams hold, calls renew, silence expires', () => {
  let now = 0;
  const l = new OwnerLeases(1000, () => now);
  l.touch(A); // unary only
  l.openStream(B); // a stream, then silence
  l.touch(C);
  now = 900;
  l.touch(C); // C's heartbeat
  assert.deepEqual(l.expired(), []);
  now = 1001;
  assert.deepEqual(l.expired(), [A], 'A was not heard from for more than the lease');
  now = 5000;
  assert.deepEqual(l.expired(), [C]);
  assert.equal(l.closeStream(B), true, 'B\'s last stream closed: free now');
  assert.equal(l.closeStream(B), false, 'only once');
  l.openStream(A);
  l.openStream(A);
  assert.equal(l.closeStream(A), false, 'A still has a stream');
  assert.equal(l.closeStream(A), true);
});

test('short or missing tokens own nothing, and tokens are never printed', () => {
  const l = new OwnerLeases(10, () => 1e9);
  l.touch('');
  l.touch('short');
  l.openStream('');
  assert.equal(l.closeStream(''), false);
  assert.deepEqual(l.expired(), []);
  assert.equal(validOwner('x'.repeat(31)), false);
  assert.match(ownerTag(A), /^owner#[0-9a-f]{8}$/);
  assert.ok(!ownerTag(A).includes('aaaa'));
});
