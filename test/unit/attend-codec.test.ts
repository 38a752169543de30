// The hand-written attend codec speaks protobuf exactly: checked against
// @bufbuild/protobuf in both directions, with unaligned buffers, unknown
// fields and truncated input.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';

import { AttendItemSchema, AttendRequestSchema, AttendResponseSchema } from '../../gen/smartkv/v1/cache_pb.js';
import { decodeAttendRequest, decodeAttendResponse, encodeAttendRequest, encodeAttendResponse, WireError } from '../../services/cache/attend-codec.js';

const floats = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(seed * 131 + i) * 10);
const bytes = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

test('requests encoded here decode with @bufbuild/protobuf, and the reverse', () => {
  const items = [1, 3].map((rows, i) => ({ sequenceId: 7 + i * 300, rows, q: floats(rows * 256, i), kNew: floats(rows * 128, i + 5), vNew: floats(rows * 128, i + 9) }));
  const mine = encodeAttendRequest({ id: 2n ** 40n + 5n, layer: 3, items, traceparent: '00-abc-def-01' });
  const theirs = fromBinary(AttendRequestSchema, mine);
  assert.equal(theirs.id, 2n ** 40n + 5n);
  assert.equal(theirs.layer, 3);
  assert.equal(theirs.traceparent, '00-abc-def-01');
  assert.equal(theirs.items.length, 2);
  theirs.items.forEach((it, i) => {
    assert.equal(it.sequenceId, items[i].sequenceId);
    assert.equal(it.rows, items[i].rows);
    assert.deepEqual(new Uint8Array(it.q), bytes(items[i].q));
    assert.deepEqual(new Uint8Array(it.vNew), bytes(items[i].vNew));
  });
  const pb = toBinary(AttendRequestSchema, create(AttendRequestSchema, {
    id: 9n, layer: 0, items: items.map((it) => create(AttendItemSchema, { sequenceId: it.sequenceId, rows: it.rows, q: bytes(it.q), kNew: bytes(it.kNew), vNew: bytes(it.vNew) })),
  }));
  assert.deepEqual(new Uint8Array(encodeAttendRequest({ id: 9n, layer: 0, items, traceparent: '' })), pb, 'byte-identical to the reference encoder');
  // Decode from an odd offset: the floats cannot be views and must be copied.
  const odd = new Uint8Array(pb.length + 1);
  odd.set(pb, 1);
  const back = decodeAttendRequest(odd.subarray(1));
  assert.equal(back.id, 9n);
  assert.deepEqual(back.items[1].kNew, items[1].kNew);
  assert.deepEqual(back.items[0].q, items[0].q);
});

test('responses round-trip, errors included', () => {
  const out = [floats(256, 1), floats(768, 2)];
  const mine = encodeAttendResponse({ id: 77n, out, engineUs: 1234, errorCode: 0, errorMessage: '' });
  const theirs = fromBinary(AttendResponseSchema, mine);
  assert.equal(theirs.engineUs, 1234n);
  assert.deepEqual(new Uint8Array(theirs.out[1]), bytes(out[1]));
  const err = toBinary(AttendResponseSchema, create(AttendResponseSchema, { id: 3n, errorCode: 5, errorMessage: 'unknown sequence 4 — gone' }));
  const back = decodeAttendResponse(err);
  assert.deepEqual([back.id, back.errorCode, back.errorMessage, back.out.length], [3n, 5, 'unknown sequence 4 — gone', 0]);
});

test('unknown fields are skipped; truncated or malformed input is refused', () => {
  const base = encodeAttendResponse({ id: 1n, out: [floats(4, 3)], engineUs: 2, errorCode: 0, errorMessage: '' });
  // field 9 varint, field 10 fixed64, field 11 bytes, field 12 fixed32: a newer sender's additions
  const extra = Buffer.from([0x48, 0x96, 0x01, 0x51, 1, 2, 3, 4, 5, 6, 7, 8, 0x5a, 2, 0xaa, 0xbb, 0x65, 1, 2, 3, 4]);
  const r = decodeAttendResponse(Buffer.concat([base, extra]));
  assert.deepEqual(r.out[0], floats(4, 3));
  assert.equal(r.engineUs, 2);
  assert.throws(() => decodeAttendResponse(base.subarray(0, base.length - 3)), WireError);
  assert.throws(() => decodeAttendRequest(Buffer.from([0x1a, 0x05, 0x2a, 0x03, 1, 2, 3])), /multiple of 4/);
});

test('a request naming a region carries offsets, not bytes, byte-identical to the reference encoder', () => {
  const empty = new Float32Array(0);
  const items = [
    { sequenceId: 4, rows: 1, q: empty, kNew: empty, vNew: empty, qOffset: 65536, kOffset: 66560, vOffset: 67072, outOffset: 67584 },
    { sequenceId: 9, rows: 3, q: empty, kNew: empty, vNew: empty, qOffset: 2 ** 40, kOffset: 70000, vOffset: 80000, outOffset: 90000 },
  ];
  const mine = encodeAttendRequest({ id: 5n, layer: 2, items, traceparent: '', regionId: 3 });
  const pb = toBinary(AttendRequestSchema, create(AttendRequestSchema, {
    id: 5n, layer: 2, regionId: 3,
    items: items.map((it) => create(AttendItemSchema, { sequenceId: it.sequenceId, rows: it.rows, qOffset: BigInt(it.qOffset), kOffset: BigInt(it.kOffset), vOffset: BigInt(it.vOffset), outOffset: BigInt(it.outOffset) })),
  }));
  assert.deepEqual(new Uint8Array(mine), pb);
  const back = decodeAttendRequest(pb);
  assert.equal(back.regionId, 3);
  // Offsets decode as full 64-bit values: one beyond 32 bits is not silently wrapped into range.
  assert.deepEqual(back.items.map((it) => [it.qOffset, it.kOffset, it.vOffset, it.outOffset, it.q.length]), items.map((it) => [it.qOffset, it.kOffset, it.vOffset, it.outOffset, 0]));
});
