// Batched reallocation (issue 16) over gRPC, against a cache service and an
// allocator service in their own processes: one ExportImportanceBatch, one
// AllocateBatch and one ApplyPlanBatch give every sequence the plan the
// single-sequence calls give it, with the data plane off (bytes) and on
// (importance through the shared region); a sequence freed between export
// and apply gets its own NOT_FOUND and leaves nothing behind while the
// others apply; malformed batches and arenas outside the region are
// refused with an error naming the field, and the shard serves on.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import { AllocateBatchRequestSchema, AllocateStreamRequestSchema, type AllocateStreamRequest, type AllocateStreamResponse } from '../../gen/smartkv/v1/allocator_pb.js';
import {
  ApplyPlanBatchRequestSchema,
  CacheService,
  ExportImportanceBatchRequestSchema,
  ReallocStreamRequestSchema,
  type ExportImportanceBatchResponse,
  type ReallocStreamRequest,
  type ReallocStreamResponse,
} from '../../gen/smartkv/v1/cache_pb.js';
import { CallStream } from '../../services/common/call-stream.js';
import { checkHealth } from '../../services/common/health-client.js';
import { callUnary, makeClient, type MethodCodec } from '../../services/common/rpc.js';
import { AllocatorService } from '../../gen/smartkv/v1/allocator_pb.js';
import { ServiceProcess } from '../../services/launcher/cluster.js';
import { GrpcAllocator, type PlanProblem } from '../../services/orchestrator/allocator-client.js';
import { GrpcCacheShard } from '../../services/orchestrator/cache-client.js';
import { reallocate, reallocateBatch, type BatchEntry, type ReallocOptions, type SequenceLayout } from '../../services/orchestrator/reallocate.js';
import type { DataPlaneMode, RegionClient } from '../../services/orchestrator/region-client.js';
import type { ImportanceReport, PlanApplied } from '../../services/cache/cache-api.js';
import { cacheStats, codeOf, collectLogs, eventually } from '../helpers/services.js';

// The reference model's shape: 4 layers, 4 query heads, 2 kv heads × 64.
const LAYERS = 4, ROWS = 24, CHUNKS = 4;
const tensor = (rows: number, heads: number, s: number) => Float32Array.from({ length: rows * heads * 64 }, (_, i) => Math.sin(i * 0.37 + s * 1.7) + Math.cos(i * 0.011 * (s + 1)));
const token = () => `test-${randomBytes(16).toString('hex')}`;
const regionOf = (c: GrpcCacheShard) => (c as unknown as { region: RegionClient | null }).region;
type Unary = (m: string, r: unknown) => Promise<unknown>;
const unaryOf = (c: GrpcCacheShard): Unary => (c as unknown as { unary: Unary }).unary.bind(c);

/** Counts the client's calls by method (and what they asked): unary ones, and those on its ReallocStream. */
function spy(c: GrpcCacheShard): { method: string; req: unknown; stream: boolean }[] {
  const calls: { method: string; req: unknown; stream: boolean }[] = [];
  const real = unaryOf(c);
  const shard = c as unknown as { unary: Unary; reallocCall: Unary };
  const realStream = shard.reallocCall.bind(c);
  shard.unary = (m, r) => {
    calls.push({ method: m, req: r, stream: false });
    return real(m, r);
  };
  shard.reallocCall = (m, r) => {
    calls.push({ method: m, req: r, stream: true });
    return realStream(m, r);
  };
  return calls;
}

const options = (seq: number): ReallocOptions => ({ policy: 'smartkv', beta: 0.4, sinks: 4, window: 16, ahead: 8, seed: seq * 7919, gamma: 0.9, normalised: true, perLayer: false });

describe('batched reallocation over gRPC', () => {
  const logs = collectLogs();
  let cache: ServiceProcess;
  let allocatorProc: ServiceProcess;
  let allocator: GrpcAllocator;
  const open: GrpcCacheShard[] = [];
  const client = (dataPlane: DataPlaneMode) => {
    const c = new GrpcCacheShard(cache.address, token(), { dataPlane });
    open.push(c);
    return c;
  };

  before(async () => {
    cache = new ServiceProcess('cache', 'cache', ['--port', '0', '--threads', '1', '--plaintext'], undefined, logs.log);
    allocatorProc = new ServiceProcess('allocator', 'allocator', ['--port', '0', '--plaintext'], undefined, logs.log);
    await Promise.all([cache.start(60_000), allocatorProc.start(60_000)]);
    allocator = new GrpcAllocator(allocatorProc.address);
  });

  after(async () => {
    allocator?.close();
    for (const c of open) c.close();
    await cache?.stop();
    await allocatorProc?.stop();
  });

  /** `pairs` × 2 sequences; both of a pair get the same tensors (so the same importance). */
  async function twins(c: GrpcCacheShard, pairs: number): Promise<{ a: number[]; b: number[]; layout: SequenceLayout }> {
    const a: number[] = [], b: number[] = [];
    let tokenBytes: number[] = [];
    for (let p = 0; p < pairs; p++) {
      const x = await c.createSequence('mixed', 0);
      const y = await c.createSequence('mixed', 0);
      a.push(x.seq);
      b.push(y.seq);
      tokenBytes = x.tokenBytes;
    }
    for (let k = 0; k < CHUNKS; k++)
      for (let l = 0; l < LAYERS; l++) {
        const items = [...a, ...b].map((seq, i) => {
          const s = (i % pairs) * 100 + k * 10 + l;
          return { seq, rows: ROWS, q: tensor(ROWS, 4, s), kNew: tensor(ROWS, 2, s + 1), vNew: tensor(ROWS, 2, s + 2) };
        });
        await c.attend(l, items);
      }
    const blockTokens = (await c.stats()).blockTokens;
    return { a, b, layout: { layers: LAYERS, fp16TokenBytes: 2 * 2 * 64 * 2, tokenBytes, blockTokens } };
  }

  for (const dataPlane of ['off', 'futex'] as const)
    test(`data plane ${dataPlane}: one call of each kind per batch, the plans the single calls give`, async () => {
      const c = client(dataPlane);
      const { a, b, layout } = await twins(c, 3);
      const calls = spy(c);
      const singles = [];
      for (const seq of a) singles.push(await reallocate(c, seq, allocator, layout, options(seq), false));
      const singleCalls = calls.splice(0).map((x) => x.method);
      assert.equal(singleCalls.filter((m) => m === 'exportImportance').length, 3);
      // Same seeds as the singles: only the ids differ, and the smartkv policy takes no seed.
      const entries: BatchEntry[] = b.map((seq, i) => ({ seq, tokens: ROWS * CHUNKS, layout, options: options(a[i]), reversible: false }));
      const { outcomes, cost } = await reallocateBatch(c, allocator, entries);
      const methods = calls.map((x) => x.method);
      assert.deepEqual(methods, ['exportImportanceBatch', 'applyPlanBatch'], 'one export and one apply for the batch');
      assert.ok(calls.every((x) => x.stream), 'both as messages on the ReallocStream, not unary calls');
      assert.deepEqual([cost.export.calls, cost.allocate.calls, cost.apply.calls], [1, 1, 1]);
      const exportReq = calls[0].req as { regionId: number };
      assert.equal(exportReq.regionId !== 0, dataPlane !== 'off', 'importance comes through the region exactly when the data plane is on');
      for (const [i, o] of outcomes.entries()) {
        assert.ok(!(o instanceof Error), `${o}`);
        assert.deepEqual([...o.formats], [...singles[i].formats], `pair ${i}: the same plan`);
        assert.equal(o.bytes.heldBytes, singles[i].bytes.heldBytes);
        assert.ok(o.tokensChanged > 0, 'the plan changed precision');
      }
      // Importance read back through the region equals the message's bytes.
      if (dataPlane === 'futex') {
        const viaRegion = (await c.exportImportanceBatch(b)).results as ImportanceReport[];
        for (const [i, seq] of b.entries()) {
          const bytes = await c.exportImportance(seq);
          assert.deepEqual(viaRegion[i].importance, bytes.importance);
          assert.deepEqual(viaRegion[i].sqError, bytes.sqError);
          assert.deepEqual(viaRegion[i].formats, bytes.formats);
        }
      }
      for (const seq of [...a, ...b]) await c.freeSequence(seq);
    });

  test('a sequence freed between export and apply answers NOT_FOUND alone; the others apply; nothing is left', async () => {
    const before = await cacheStats(cache.address);
    const c = client('futex');
    const { a, b, layout } = await twins(c, 2);
    const seqs = [...a, ...b];
    const victim = seqs[1];
    // Freed as a cancelled request's sequence is, right after the export.
    const exportBatch = c.exportImportanceBatch.bind(c);
    c.exportImportanceBatch = async (ids) => {
      const r = await exportBatch(ids);
      await c.freeSequence(victim);
      return r;
    };
    const { outcomes } = await reallocateBatch(c, allocator, seqs.map((seq) => ({ seq, tokens: ROWS * CHUNKS, layout, options: options(seq), reversible: false })));
    const gone = outcomes[1];
    assert.ok(gone instanceof Error);
    assert.equal(codeOf(gone), grpc.status.NOT_FOUND, gone.message);
    assert.match(gone.message, new RegExp(`sequence ${victim}`));
    for (const i of [0, 2, 3]) {
      const o = outcomes[i];
      assert.ok(!(o instanceof Error), `${o}`);
      assert.ok(o.tokensChanged > 0);
    }
    const mid = await cacheStats(cache.address);
    assert.equal(mid.sequences, before.sequences + 3);
    for (const seq of seqs) if (seq !== victim) await c.freeSequence(seq);
    const end = await eventually(() => cacheStats(cache.address), (s) => s.sequences === before.sequences, 5000);
    assert.deepEqual([end.reservedBytes, end.heldBytes], [before.reservedBytes, before.heldBytes], 'nothing left of the batch');
  });

  test('malformed batches are refused naming the field; strangers\' and unknown sequences fail alone', async () => {
    const c = client('futex');
    const { a, b } = await twins(c, 1);
    const [x, y] = [a[0], b[0]];
    const stranger = client('off');
    const theirs = (await stranger.createSequence('mixed', 0)).seq;
    const unary = unaryOf(c);
    const onStream = (c as unknown as { reallocCall: Unary }).reallocCall.bind(c);
    // The unary call and the same call as a ReallocStream message fail alike.
    const refused = async (method: string, req: unknown, code: grpc.status, what: RegExp) => {
      for (const call of [unary, onStream])
        await assert.rejects(call(method, req), (e: Error) => {
          assert.equal(codeOf(e), code, e.message);
          assert.match(e.message, what);
          return true;
        });
    };
    const exportReq = (ids: number[], more = {}) => create(ExportImportanceBatchRequestSchema, { sequenceIds: ids, ...more });
    await refused('exportImportanceBatch', exportReq([]), grpc.status.INVALID_ARGUMENT, /sequence_ids: the batch is empty/);
    await refused('exportImportanceBatch', exportReq([x, y, x]), grpc.status.INVALID_ARGUMENT, /sequence_ids\[2\].*already sequence_ids\[0\]/);
    await refused('exportImportanceBatch', exportReq(Array.from({ length: 257 }, (_, i) => i + 1)), grpc.status.RESOURCE_EXHAUSTED, /257 sequences.*256/);
    const region = regionOf(c)!;
    for (const [offset, bytes] of [[64, 1024], [65536 + 2, 1024], [65536, region.bytes], [2 ** 40, 4]])
      await refused('exportImportanceBatch', exportReq([x], { regionId: region.id, arenaOffset: BigInt(offset), arenaBytes: BigInt(bytes) }), grpc.status.INVALID_ARGUMENT, /arena_offset/);
    await refused('exportImportanceBatch', exportReq([x], { regionId: 999_999, arenaOffset: 65536n, arenaBytes: 4n }), grpc.status.NOT_FOUND, /region_id/);
    const plan = (seq: number) => ({ sequenceId: seq, layer: -1, positions: new Uint8Array(Uint32Array.from([30]).buffer), formats: Uint8Array.from([2]) });
    await refused('applyPlanBatch', create(ApplyPlanBatchRequestSchema, { plans: [] }), grpc.status.INVALID_ARGUMENT, /plans: the batch is empty/);
    await refused('applyPlanBatch', create(ApplyPlanBatchRequestSchema, { plans: [plan(x), plan(x)] }), grpc.status.INVALID_ARGUMENT, /plans\[1\].*already plans\[0\]/);
    // Another caller's sequence and an unknown one answer NOT_FOUND in their places.
    for (const call of [unary, onStream]) {
      const res = (await call('exportImportanceBatch', exportReq([x, theirs, 424242]))) as ExportImportanceBatchResponse;
      assert.deepEqual(res.results.map((r) => r.errorCode), [0, grpc.status.NOT_FOUND, grpc.status.NOT_FOUND]);
      assert.match(res.results[1].errorMessage, /sequence_ids\[1\]/);
      assert.equal(res.results[0].report?.tokens, ROWS * CHUNKS);
    }
    // A malformed plan fails alone (nothing of it moves); the other applies.
    const bad = { ...plan(y), positions: new Uint8Array(3) };
    const applied = await c.applyPlanBatch([{ seq: x, plans: [{ layer: -1, positions: Uint32Array.from([30]), formats: Uint8Array.from([2]) }] }, { seq: theirs, plans: [] }]);
    assert.equal((applied[0] as PlanApplied).tokensChanged, LAYERS);
    assert.equal(codeOf(applied[1]), grpc.status.NOT_FOUND);
    const r = (await unary('applyPlanBatch', create(ApplyPlanBatchRequestSchema, { plans: [bad, plan(x)] }))) as { results: { errorCode: number; errorMessage: string }[] };
    assert.equal(r.results[0].errorCode, grpc.status.INVALID_ARGUMENT);
    assert.match(r.results[0].errorMessage, /plans\[0\]\.positions has 3 bytes/);
    assert.equal(r.results[1].errorCode, 0);
    assert.equal(await checkHealth(cache.address, 'smartkv.v1.CacheService', 5000), 'SERVING');
    for (const seq of [x, y]) await c.freeSequence(seq);
    await stranger.freeSequence(theirs);
  });

  test('the reallocation streams: a message naming no call, a bad batch or a malformed message fails alone; the streams and the services serve on', async () => {
    const c = client('off');
    const { a } = await twins(c, 1);
    const owner = (c as unknown as { owner: string }).owner;
    const md = () => {
      const m = new grpc.Metadata();
      m.set('smartkv-owner', owner);
      return m;
    };
    const raw = makeClient(CacheService, cache.address);
    const stream = new CallStream<ReallocStreamRequest, ReallocStreamResponse>(raw, 'reallocStream', md, 'cache');
    try {
      await assert.rejects(stream.call((id) => create(ReallocStreamRequestSchema, { id }), 5000, 'nothing'), (e: Error) => {
        assert.equal(codeOf(e), grpc.status.INVALID_ARGUMENT, e.message);
        assert.match(e.message, /call: the message names no call/);
        return true;
      });
      // The same stream answers the next message.
      const ok = await stream.call((id) => create(ReallocStreamRequestSchema, { id, call: { case: 'exportImportanceBatch', value: create(ExportImportanceBatchRequestSchema, { sequenceIds: a }) } }), 5000, 'export');
      assert.equal(ok.result.case, 'exportImportanceBatch');
      assert.equal((ok.result.value as ExportImportanceBatchResponse).results[0].report?.tokens, ROWS * CHUNKS);
    } finally {
      stream.close();
      raw.close();
    }
    // Bytes that are no ReallocStreamRequest end that stream only, with INVALID_ARGUMENT.
    const garbage: MethodCodec = { serializeRequest: ((b: Buffer) => b) as never, deserializeRequest: (b) => b, serializeResponse: ((b: Buffer) => b) as never, deserializeResponse: (b) => b };
    const bad = makeClient(CacheService, cache.address, {}, { reallocStream: garbage });
    const badStream = new CallStream<Buffer, ReallocStreamResponse>(bad, 'reallocStream', md, 'cache');
    try {
      await assert.rejects(badStream.call(() => Buffer.from([0xff, 0xff, 0xff, 0xff]), 5000, 'garbage'), (e: Error) => {
        assert.equal(codeOf(e), grpc.status.INVALID_ARGUMENT, e.message);
        assert.match(e.message, /malformed ReallocStreamRequest/);
        return true;
      });
    } finally {
      badStream.close();
      bad.close();
    }
    assert.equal(await checkHealth(cache.address, 'smartkv.v1.CacheService', 5000), 'SERVING');
    assert.equal(((await c.exportImportanceBatch(a)).results[0] as ImportanceReport).tokens, ROWS * CHUNKS, 'the orchestrator\'s own stream is untouched');
    // AllocateStream: an empty batch fails that message; the next is planned.
    const allocRaw = makeClient(AllocatorService, allocatorProc.address);
    const plans = new CallStream<AllocateStreamRequest, AllocateStreamResponse>(allocRaw, 'allocateStream', () => new grpc.Metadata(), 'allocator');
    try {
      await assert.rejects(plans.call((id) => create(AllocateStreamRequestSchema, { id }), 5000, 'empty'), (e: Error) => {
        assert.equal(codeOf(e), grpc.status.INVALID_ARGUMENT, e.message);
        assert.match(e.message, /requests: the batch is empty/);
        return true;
      });
      const one = await plans.call((id) => create(AllocateStreamRequestSchema, { id, batch: { requests: [{}] } }), 5000, 'one');
      assert.equal(one.batch?.results.length, 1, 'the stream answers after a refused message');
      assert.equal(one.batch?.results[0].errorCode, grpc.status.INVALID_ARGUMENT, 'an empty request fails alone, as in AllocateBatch');
    } finally {
      plans.close();
      allocRaw.close();
    }
    for (const seq of a) await c.freeSequence(seq);
  });

  test('AllocateBatch plans each request as Allocate does; a bad one fails alone, a bad batch as a whole', async () => {
    const c = client('off');
    const { a, layout } = await twins(c, 2);
    // The real problems of two sequences, captured on their way to the allocator.
    let problems: readonly PlanProblem[] = [];
    const capture = { plan: allocator.plan.bind(allocator), planBatch: (p: readonly PlanProblem[]) => ((problems = p), allocator.planBatch(p)), close: () => undefined };
    await reallocateBatch(c, capture, a.map((seq) => ({ seq, tokens: ROWS * CHUNKS, layout, options: options(seq), reversible: false })));
    assert.equal(problems.length, 2);
    const alone = await Promise.all(problems.map((p) => allocator.plan(p.policy, p.input, p.layout, p.current)));
    const broken: PlanProblem = { ...problems[1], input: { ...problems[1].input, sqError: problems[1].input.sqError.subarray(3) } };
    const got = await allocator.planBatch([problems[0], broken, problems[1]]);
    assert.ok(!(got[0] instanceof Error) && !(got[2] instanceof Error));
    assert.deepEqual([...got[0].formats], [...alone[0].formats]);
    assert.deepEqual([...got[2].formats], [...alone[1].formats]);
    assert.ok(got[1] instanceof Error);
    assert.equal(codeOf(got[1]), grpc.status.INVALID_ARGUMENT);
    assert.match(got[1].message, /requests\[1\]\.sq_error has/);
    const raw = makeClient(AllocatorService, allocatorProc.address);
    try {
      for (const [n, code, what] of [[0, grpc.status.INVALID_ARGUMENT, /requests: the batch is empty/], [257, grpc.status.RESOURCE_EXHAUSTED, /257 in one batch.*256/]] as const)
        await assert.rejects(callUnary(raw, 'allocateBatch', create(AllocateBatchRequestSchema, { requests: Array.from({ length: n }, () => ({})) }), { deadlineMs: 5000 }), (e: Error) => {
          assert.equal(codeOf(e), code, e.message);
          assert.match(e.message, what);
          return true;
        });
    } finally {
      raw.close();
    }
    for (const seq of a) await c.freeSequence(seq);
  });
});
