// The shared-memory data plane (issue 16) against a real cache service in
// its own process: attends through a region — rung by the futex doorbell or
// by an Attend carrying offsets — give the same outputs as attends that
// carry bytes; an offset outside the registered region is INVALID_ARGUMENT
// and the shard keeps serving; a region the service cannot trust is refused
// and the client carries bytes; a region torn down mid-stream fails its
// request cleanly and the sequence's cache is freed; and greedy generation
// through the split system with the data plane on equals in-process, with
// the step's reallocations batched (importance through the region).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync, rmSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import { RegisterRegionRequestSchema, UnregisterRegionRequestSchema } from '../../gen/smartkv/v1/cache_pb.js';
import { checkHealth } from '../../services/common/health-client.js';
import { ServiceProcess } from '../../services/launcher/cluster.js';
import { GrpcCacheShard } from '../../services/orchestrator/cache-client.js';
import { Orchestrator } from '../../services/orchestrator/orchestrator.js';
import { defaultModelDir } from '../../services/orchestrator/model/paths.js';
import { DEFAULTS, type GenerateJobSpec } from '../../services/orchestrator/settings.js';
import type { StepRealloc } from '../../services/orchestrator/scheduler.js';
import type { DataPlaneMode, RegionClient } from '../../services/orchestrator/region-client.js';
import type { ShardAttendItem } from '../../services/cache/cache-api.js';
import { cacheStats, codeOf, collectLogs, eventually } from '../helpers/services.js';

const token = () => `test-${randomBytes(16).toString('hex')}`;
// The reference model's shape: 4 layers, 4 query heads, 2 kv heads × 64.
const LAYERS = 4;
const row = (heads: number, s: number) => Float32Array.from({ length: heads * 64 }, (_, i) => Math.sin(i * 0.37 + s));
const item = (seq: number, s: number): ShardAttendItem => ({ seq, rows: 1, q: row(4, s), kNew: row(2, s + 1), vNew: row(2, s + 2) });
const regionOf = (c: GrpcCacheShard) => (c as unknown as { region: RegionClient | null }).region;
const unary = (c: GrpcCacheShard, method: string, req: unknown) => (c as unknown as { unary: (m: string, r: unknown) => Promise<unknown> }).unary(method, req);

describe('the shared-memory data plane', () => {
  const logs = collectLogs();
  let cache: ServiceProcess;
  let allocator: ServiceProcess;
  const open: GrpcCacheShard[] = [];
  const client = (dataPlane: DataPlaneMode, log?: (l: string) => void) => {
    const c = new GrpcCacheShard(cache.address, token(), { dataPlane, log });
    open.push(c);
    return c;
  };

  before(async () => {
    cache = new ServiceProcess('cache', 'cache', ['--port', '0', '--threads', '1', '--plaintext'], undefined, logs.log);
    allocator = new ServiceProcess('allocator', 'allocator', ['--port', '0', '--plaintext'], undefined, logs.log);
    await Promise.all([cache.start(60_000), allocator.start(60_000)]);
  });

  after(async () => {
    for (const c of open) c.close();
    await cache?.stop();
    await allocator?.stop();
  });

  test('attends through the region (futex or gRPC doorbell) equal attends that carry bytes', async () => {
    const outs: Record<string, number[]> = {};
    for (const mode of ['off', 'futex', 'grpc'] as const) {
      const c = client(mode);
      const { seq } = await c.createSequence('mixed', 0);
      const got: number[] = [];
      for (let step = 0; step < 6; step++)
        for (let l = 0; l < LAYERS; l++) {
          // A caller-owned output buffer is written in place.
          const out = new Float32Array(4 * 64);
          const r = await c.attend(l, [{ ...item(seq, step), out }]);
          assert.equal(r.out[0], out);
          got.push(...out);
        }
      outs[mode] = got;
      assert.equal(regionOf(c) !== null, mode !== 'off', `${mode}: a region is registered only with a data plane`);
    }
    assert.deepEqual(outs.futex, outs.off);
    assert.deepEqual(outs.grpc, outs.off);
  });

  test('an offset outside the registered region is INVALID_ARGUMENT and the shard stays healthy', async () => {
    const c = client('futex');
    const { seq } = await c.createSequence('mixed', 0);
    await c.attend(0, [item(seq, 0)]); // registers the region
    const region = regionOf(c)!;
    const ok = { qOffset: 65536, kOffset: 65536 + 1024, vOffset: 65536 + 1536, outOffset: 65536 + 2048 };
    const empty = new Float32Array(0);
    const send = (offsets: Partial<typeof ok>) =>
      unary(c, 'attend', { id: 1n, layer: 1, traceparent: '', regionId: region.id, items: [{ sequenceId: seq, rows: 1, q: empty, kNew: empty, vNew: empty, ...ok, ...offsets }] });
    for (const [what, offsets, field] of [
      ['past the end', { qOffset: region.bytes - 512 }, /q_offset/],
      ['far past the end (beyond 32 bits)', { vOffset: 2 ** 40 }, /v_offset/],
      ['inside the control block (the futex words)', { outOffset: 64 }, /out_offset/],
      ['not a multiple of 4', { kOffset: 65536 + 1025 }, /k_offset/],
    ] as const) {
      await assert.rejects(send(offsets), (e: Error) => {
        assert.equal(codeOf(e), grpc.status.INVALID_ARGUMENT, `${what}: ${e.message}`);
        assert.match(e.message, field, what);
        return true;
      });
    }
    // The same through the futex doorbell: the descriptor names an output past the end.
    const items = [item(seq, 1)];
    assert.ok(region.place(items));
    (region as unknown as { placed: { out: number }[] }).placed[0].out = region.bytes - 4;
    const r = await region.ring(1, items, '', 5000);
    assert.ok(typeof r === 'object' && r.code === grpc.status.INVALID_ARGUMENT && /out_offset/.test(r.message), JSON.stringify(r));
    // Nothing was appended by the refused requests, and the shard serves on.
    assert.equal(await checkHealth(cache.address, 'smartkv.v1.CacheService', 5000), 'SERVING');
    for (let l = 1; l < LAYERS; l++) await c.attend(l, [item(seq, 0)]); // layer 0 has one token: the others catch up
    const s = await c.stats(seq);
    assert.equal(s.bytes.tokens, LAYERS, 'one token per layer');
    const other = client('futex');
    const o = await other.createSequence('mixed', 0);
    assert.equal((await other.attend(0, [item(o.seq, 2)])).out[0].length, 4 * 64);
  });

  test('a region the service cannot trust is refused; the client then carries bytes', async () => {
    const c = client('futex');
    await c.createSequence('mixed', 0);
    const file = join(tmpdir(), `smartkv-not-a-memfd-${process.pid}`);
    writeFileSync(file, Buffer.alloc(1 << 17));
    const fd = openSync(file, 'r+');
    try {
      const refuse = async (req: object, why: RegExp) =>
        assert.rejects(unary(c, 'registerRegion', create(RegisterRegionRequestSchema, req)), (e: Error) => {
          assert.equal(codeOf(e), grpc.status.FAILED_PRECONDITION, e.message);
          assert.match(e.message, why);
          return true;
        });
      // A plain file could be truncated under the service's mapping (SIGBUS): only sealed memfds are mapped.
      await refuse({ path: `/proc/${process.pid}/fd/${fd}`, byteSize: BigInt(1 << 17), nonce: randomBytes(16) }, /sealed/);
      await refuse({ path: `/proc/${process.pid}/fd/999999`, byteSize: BigInt(1 << 17), nonce: randomBytes(16) }, /cannot be mapped/);
    } finally {
      closeSync(fd);
      rmSync(file, { force: true });
    }
    // A wrong nonce: the path names some region, but not the one this caller wrote.
    const { RegionClient } = await import('../../services/orchestrator/region-client.js');
    const mine = new RegionClient(1 << 17);
    try {
      await assert.rejects(unary(c, 'registerRegion', create(RegisterRegionRequestSchema, { ...mine.registration(), byteSize: BigInt(mine.bytes), nonce: randomBytes(16) })), (e: Error) => {
        assert.equal(codeOf(e), grpc.status.FAILED_PRECONDITION);
        assert.match(e.message, /nonce/);
        return true;
      });
    } finally {
      mine.close();
    }
    // A shard that cannot map regions (another host): attends go as bytes and still work.
    const lines: string[] = [];
    const far = client('futex', (l) => lines.push(l));
    const farUnary = (far as unknown as { unary: (m: string, r: unknown) => Promise<unknown> }).unary.bind(far);
    (far as unknown as { unary: unknown }).unary = (m: string, r: unknown) =>
      m === 'registerRegion' ? Promise.reject(Object.assign(new Error('cannot be mapped here'), { code: grpc.status.FAILED_PRECONDITION })) : farUnary(m, r);
    const { seq } = await far.createSequence('mixed', 0);
    const r = await far.attend(0, [item(seq, 0)]);
    assert.equal(r.out[0].length, 4 * 64);
    assert.equal(regionOf(far), null);
    assert.match(lines.join('\n'), /no shared-memory data plane .*attends carry bytes/);
  });

  test('unregistering another caller\'s region is NOT_FOUND', async () => {
    const victim = client('futex');
    const { seq } = await victim.createSequence('mixed', 0);
    await victim.attend(0, [item(seq, 0)]);
    const stranger = client('off');
    await assert.rejects(unary(stranger, 'unregisterRegion', create(UnregisterRegionRequestSchema, { regionId: regionOf(victim)!.id })), (e: Error) => codeOf(e) === grpc.status.NOT_FOUND);
    await victim.attend(1, [item(seq, 0)]); // untouched
  });

  test('one owner holds at most MAX_REGIONS_PER_OWNER regions', async () => {
    const { RegionClient } = await import('../../services/orchestrator/region-client.js');
    const { MAX_REGIONS_PER_OWNER } = await import('../../services/cache/region-table.js');
    const c = client('off');
    await c.createSequence('mixed', 0); // opens the owner's stream
    const made = Array.from({ length: MAX_REGIONS_PER_OWNER + 1 }, () => new RegionClient(1 << 17));
    try {
      const register = (r: InstanceType<typeof RegionClient>) => unary(c, 'registerRegion', create(RegisterRegionRequestSchema, { ...r.registration(), byteSize: BigInt(r.bytes) }));
      for (const r of made.slice(0, -1)) await register(r);
      await assert.rejects(register(made[made.length - 1]), (e: Error) => codeOf(e) === grpc.status.RESOURCE_EXHAUSTED && /regions/.test(e.message));
    } finally {
      made.forEach((r) => r.close());
    }
  });

  for (const dataPlane of ['futex', 'grpc'] as const)
  test(`a region torn down mid-stream fails its request cleanly and the sequence is freed (${dataPlane} doorbell)`, async () => {
    const orch = await Orchestrator.create({ modelDir: defaultModelDir(), defaults: DEFAULTS, cacheAddresses: [cache.address], allocatorAddress: allocator.address, dataPlane, log: () => undefined });
    try {
      const spec = (maxTokens: number): GenerateJobSpec => ({
        kind: 'generate',
        prompt: [256, ...Buffer.from('The committee met on Tuesday and said that')],
        maxTokens,
        sampling: { temperature: 0, topK: 0, topP: 1, seed: 1 },
        stop: [],
        cache: { ...DEFAULTS.cache },
      });
      const before = (await cacheStats(cache.address)).sequences;
      const job = orch.scheduler.submit(spec(60), {});
      let steps = 0;
      orch.scheduler.onStep = () => {
        if (++steps !== 4) return;
        // The service tears the region down between two layers' attends: the
        // next doorbell finds it closed (the client still holds it).
        const shard = (orch.scheduler as unknown as { active: { job: { shard: GrpcCacheShard } }[] }).active[0].job.shard;
        const region = regionOf(shard)!;
        void unary(shard, 'unregisterRegion', create(UnregisterRegionRequestSchema, { regionId: region.id }));
      };
      await assert.rejects(job.done, (e: Error) => {
        assert.equal(codeOf(e), grpc.status.UNAVAILABLE, e.message);
        assert.match(e.message, /data-plane region was torn down/);
        return true;
      });
      orch.scheduler.onStep = null;
      await eventually(() => cacheStats(cache.address), (s) => s.sequences === before, 10_000);
      // The next request sets up a new region and runs to the end.
      const next = await orch.scheduler.submit(spec(8), {}).done;
      assert.equal(next.generated.length + (next.finish === 'eos' ? 1 : 0) > 0, true);
    } finally {
      await orch.close(1000);
    }
  });

  test('greedy output of the split system with the data plane on (or off) equals in-process; one reallocation call of each kind per step', async () => {
    const prompts = ['The old man said', 'Once upon a time', 'In the beginning the'];
    const run = async (orch: Orchestrator) => {
      const steps: StepRealloc[] = [];
      orch.scheduler.onStep = ({ realloc }) => void steps.push(realloc);
      const jobs = prompts.map((p, i) =>
        orch.scheduler.submit({ kind: 'generate', prompt: [256, ...Buffer.from(p)], maxTokens: 48, sampling: { temperature: 0, topK: 0, topP: 1, seed: i }, stop: [], cache: { ...DEFAULTS.cache, beta: 0.4 } }, {}).done,
      );
      const generated = (await Promise.all(jobs)).map((o) => o.generated);
      orch.scheduler.onStep = null;
      return { generated, steps };
    };
    const local = await Orchestrator.create({ modelDir: defaultModelDir(), defaults: DEFAULTS, local: { engine: { quant: 'symmetric', rotateKv: true, mode: DEFAULTS.cache.mode }, memoryLimitBytes: 0 }, log: () => undefined });
    const want = (await run(local)).generated;
    await local.close(1000);
    for (const dataPlane of ['futex', 'grpc', 'off'] as const) {
      const split = await Orchestrator.create({ modelDir: defaultModelDir(), defaults: DEFAULTS, cacheAddresses: [cache.address], allocatorAddress: allocator.address, dataPlane, log: () => undefined });
      try {
        const { generated, steps } = await run(split);
        assert.deepEqual(generated, want, `data plane ${dataPlane}`);
        // The three requests' plans fall in the same steps: one batch each time, on the one shard.
        const withPlans = steps.filter((s) => s.sequences > 0);
        assert.ok(withPlans.some((s) => s.sequences === 3), `${dataPlane}: three reallocations in one step`);
        for (const s of withPlans) {
          assert.deepEqual([s.shards, s.exportCalls, s.allocateCalls], [1, 1, 1], `${dataPlane}: ${JSON.stringify(s)}`);
          assert.ok(s.applyCalls <= 1);
        }
      } finally {
        await split.close(1000);
      }
    }
  });
});
