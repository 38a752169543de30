// Sequences bound to the caller that created them, under a lease (issue 18),
// against a real cache service: a stranger (another owner token, or none)
// gets NOT_FOUND for every call on someone else's sequence — Attend, an
// AttendStream message, ExportImportance, ApplyPlan, ShrinkReservation,
// FreeSequence, Stats —
// and the victim's sequence is untouched; CreateSequence without a token of
// 128 bits is refused; sequences of an owner that goes away without a stream
// are freed when its lease runs out, while an owner that sends heartbeats,
// or holds an attend stream, keeps its own; sequences and reserved bytes per
// caller are bounded.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import { CreateSequenceRequestSchema } from '../../gen/smartkv/v1/cache_pb.js';
import { ServiceProcess } from '../../services/launcher/cluster.js';
import { GrpcCacheShard } from '../../services/orchestrator/cache-client.js';
import { cacheStats, collectLogs, eventually } from '../helpers/services.js';

const LEASE_MS = 1000;
// CreateSequence without opening an attend stream (GrpcCacheShard.createSequence opens one).
const unaryCreate = (c: GrpcCacheShard) => c['unary']('createSequence', create(CreateSequenceRequestSchema, {}));
const token = () => `test-${randomBytes(16).toString('hex')}`;

// The reference model's shape (4 layers, 4 query heads, 2 kv heads × 64).
const LAYERS = 4;
const row = (heads: number) => new Float32Array(heads * 64).fill(0.125);
const item = (seq: number) => ({ seq, rows: 1, q: row(4), kNew: row(2), vNew: row(2) });

describe('sequences belong to their creator, under a lease', () => {
  const logs = collectLogs();
  let cache: ServiceProcess;
  const open: GrpcCacheShard[] = [];
  const client = (owner: string) => {
    const c = new GrpcCacheShard(cache.address, owner);
    open.push(c);
    return c;
  };

  before(async () => {
    cache = new ServiceProcess('cache', 'cache', ['--port', '0', '--threads', '1', '--lease-ms', String(LEASE_MS), '--max-sequences-per-owner', '3', '--max-reserved-per-owner', '5000', '--plaintext'], undefined, logs.log);
    await cache.start(60_000);
  });

  after(async () => {
    for (const c of open) c.close();
    await cache?.stop();
  });

  test('a stranger gets NOT_FOUND for every call on another caller\'s sequence', async () => {
    const victim = client(token());
    const { seq } = await victim.createSequence('mixed', 0);
    for (let l = 0; l < LAYERS; l++) await victim.attend(l, [item(seq)]); // over its stream
    for (const stranger of [client(token()), client('')]) {
      const refused: [string, () => Promise<unknown>][] = [
        ['attend (stream)', () => stranger.attend(0, [item(seq)])],
        ['exportImportance', () => stranger.exportImportance(seq)],
        ['applyPlan', () => stranger.applyPlan(seq, [{ layer: -1, positions: new Uint32Array([0]), formats: new Uint8Array([3]) }])],
        // A batch answers each sequence in its place: the stranger's one is NOT_FOUND there.
        ['exportImportanceBatch', () => stranger.exportImportanceBatch([seq]).then((r) => Promise.reject(r.results[0]))],
        ['applyPlanBatch', () => stranger.applyPlanBatch([{ seq, plans: [{ layer: -1, positions: new Uint32Array([0]), formats: new Uint8Array([3]) }] }]).then((r) => Promise.reject(r[0]))],
        ['stats', () => stranger.stats(seq)],
        ['shrinkReservation', () => stranger.shrinkReservation(seq, 0)],
        ['freeSequence', () => stranger.freeSequence(seq)],
      ];
      for (const [what, call] of refused)
        await assert.rejects(call, (e: { code?: number; message: string }) => e.code === grpc.status.NOT_FOUND && /no sequence \d+ of this caller/.test(e.message), what);
    }
    // Untouched: one token per layer, nothing freed, and the owner goes on
    // (its own shrink past its reservation of 0 is its own mistake: INVALID_ARGUMENT).
    await assert.rejects(victim.shrinkReservation(seq, 1), (e: { code?: number; message: string }) => e.code === grpc.status.INVALID_ARGUMENT && /only shrinks/.test(e.message));
    const r = await victim.exportImportance(seq);
    assert.deepEqual([r.tokens, r.formats[0]], [1, 0]);
    await victim.attend(0, [item(seq)]);
    await victim.freeSequence(seq);
  });

  test('CreateSequence needs an owner token of 128 bits', async () => {
    for (const owner of ['', 'short-token'])
      await assert.rejects(client(owner).createSequence('mixed', 0), (e: { code?: number; message: string }) => e.code === grpc.status.UNAUTHENTICATED && /smartkv-owner header: .* at least 32 characters/.test(e.message));
  });

  test('sequences per caller are bounded: RESOURCE_EXHAUSTED naming the limit', async () => {
    const greedy = client(token()), other = client(token());
    const seqs = [];
    for (let i = 0; i < 3; i++) seqs.push((await greedy.createSequence('mixed', 0)).seq);
    await assert.rejects(greedy.createSequence('mixed', 0), (e: { code?: number; message: string }) => e.code === grpc.status.RESOURCE_EXHAUSTED && /holds 3 sequences, the limit per caller \(max_sequences_per_owner/.test(e.message));
    const o = await other.createSequence('mixed', 0); // others are not affected
    await greedy.freeSequence(seqs.pop()!);
    seqs.push((await greedy.createSequence('mixed', 0)).seq); // a freed place is free again
    for (const s of seqs) await greedy.freeSequence(s);
    await other.freeSequence(o.seq);
  });

  test('bytes reserved per caller are bounded: RESOURCE_EXHAUSTED naming the limit, and Stats tells the caller its own', async () => {
    const greedy = client(token()), other = client(token());
    const a = await greedy.createSequence('mixed', 3000);
    await assert.rejects(greedy.createSequence('mixed', 3000), (e: { code?: number; message: string }) => e.code === grpc.status.RESOURCE_EXHAUSTED && /3000 bytes reserved .* at most 5000 \(max_reserved_bytes_per_owner/.test(e.message));
    const r = await greedy.reservations();
    assert.deepEqual([r.maxReservedPerOwner, r.callerReservedBytes], [5000, 3000]);
    const o = await other.createSequence('mixed', 3000); // others are not affected
    assert.equal((await other.reservations()).callerReservedBytes, 3000);
    await greedy.freeSequence(a.seq);
    const b = await greedy.createSequence('mixed', 5000); // freed bytes are free again
    await greedy.freeSequence(b.seq);
    await other.freeSequence(o.seq);
  });

  test('sequences of an owner that goes away are freed when its lease runs out; heartbeats and streams keep theirs', async () => {
    const base = (await cacheStats(cache.address)).sequences;
    // Gone: three sequences by unary calls only, then silence.
    const gone = client(token());
    for (let i = 0; i < 3; i++) await unaryCreate(gone);
    // Heartbeat: unary only too, but it calls Stats with its token every 300 ms.
    const beating = client(token());
    await unaryCreate(beating);
    const beat = setInterval(() => beating.stats().catch(() => {}), 300);
    // Streaming: holds an attend stream open, and is otherwise idle.
    const streaming = client(token());
    const { seq } = await streaming.createSequence('mixed', 0);
    try {
      assert.equal((await cacheStats(cache.address)).sequences, base + 5);
      const t0 = Date.now();
      await eventually(() => cacheStats(cache.address), (s) => s.sequences === base + 2, 4 * LEASE_MS);
      const waited = Date.now() - t0;
      assert.ok(waited >= LEASE_MS * 0.5, `freed after ${waited} ms, before the lease of ${LEASE_MS} ms ran out`);
      await new Promise((r) => setTimeout(r, 2 * LEASE_MS));
      assert.equal((await cacheStats(cache.address)).sequences, base + 2, 'the heartbeat and the stream keep their sequences');
      assert.equal((await streaming.stats(seq)).bytes.tokens, 0);
    } finally {
      clearInterval(beat);
    }
    // The heartbeat stops: its sequence goes too. The stream closes: its goes at once.
    await eventually(() => cacheStats(cache.address), (s) => s.sequences === base + 1, 4 * LEASE_MS);
    streaming.close();
    await eventually(() => cacheStats(cache.address), (s) => s.sequences === base, 2000);
    assert.ok(logs.lines.some((l) => /owner#[0-9a-f]{8} not heard from for 1000 ms \(lease expired\): freed 3 sequence/.test(l)), logs.lines.join('\n'));
    assert.ok(!logs.lines.some((l) => l.includes(gone['owner'] as string)), 'the owner token is a secret: never logged');
  });
});
