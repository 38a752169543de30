// Hostile clients: malformed and oversized messages to every method of every
// service, and strangers that try to act on other callers' sequences. The
// services must answer each with a clean status (never INTERNAL or UNKNOWN),
// read no oversized message into memory, let no stranger in, and keep
// serving the requests of everyone else.
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { create, type DescService } from '@bufbuild/protobuf';

import { AllocatorService } from '../../gen/smartkv/v1/allocator_pb.js';
import { CacheService, CreateSequenceRequestSchema } from '../../gen/smartkv/v1/cache_pb.js';
import { GenerationService } from '../../gen/smartkv/v1/generation_pb.js';
import { Status } from '../../services/common/rpc-error.js';
import type { GrpcCacheShard } from '../../services/orchestrator/cache-client.js';
import { fuzzBody } from './fuzz.js';
import { RawClient, rssMb } from './raw-client.js';
import { generateLocalTls, removeLocalTls } from '../../services/common/credentials.js';
import { Tally, type Miss } from './report.js';
import { finish, longRequest, type Scenario } from './scenario.js';
import { openStream, pool } from './streams.js';

const FUZZ_ALLOWED = [
  Status.INVALID_ARGUMENT,
  Status.RESOURCE_EXHAUSTED,
  Status.NOT_FOUND,
  Status.UNAUTHENTICATED,
  Status.PERMISSION_DENIED,
  Status.FAILED_PRECONDITION,
  Status.OUT_OF_RANGE,
  Status.DEADLINE_EXCEEDED, // a fuzzed Generate that is valid and runs past the call's deadline
  Status.CANCELLED,
];

const ownerToken = () => `stranger-${randomBytes(16).toString('hex')}`;

function withOwner(owner: string): grpc.Metadata {
  const md = new grpc.Metadata();
  if (owner) md.set('smartkv-owner', owner);
  return md;
}

async function call(raw: RawClient, service: DescService, method: DescService['methods'][number], body: Buffer, md: grpc.Metadata): Promise<{ code: number; details: string }> {
  const path = `/${service.typeName}/${method.name}`;
  if (method.methodKind === 'unary') return raw.unary(path, body, md, 3000);
  if (method.methodKind === 'server_streaming') return raw.serverStream(path, body, 3000, md);
  return raw.bidi(path, [body, body], 3000, md, true);
}

/** Malformed, absurd and oversized messages to every RPC of every service. */
export const fuzz: Scenario = {
  name: 'fuzz',
  async run(ctx) {
    const t = new Tally(FUZZ_ALLOWED);
    const rss = ctx.sys.rssMb();
    const c = ctx.sys.cluster;
    const targets: [DescService, string, number | undefined][] = [
      [GenerationService, c.address, c.orchestrator.pid],
      [AllocatorService, c.allocator.address, c.allocator.pid],
      ...c.caches.map((p): [DescService, string, number | undefined] => [CacheService, p.address, p.pid]),
    ];
    const perMethod = ctx.quick ? 12 : 200;
    const misses: Miss[] = [];
    for (const [service, address, pid] of targets) {
      const raw = ctx.sys.raw(address, service.typeName);
      for (const m of service.methods) {
        await pool(perMethod, 8, async () => {
          const owner = service === CacheService && ctx.rand() < 0.7 ? ownerToken() : '';
          const r = await call(raw, service, m, fuzzBody(ctx.rand, m.input), withOwner(owner));
          t.add(r.code, `${m.name}: ${r.details}`);
        });
      }
      // Oversized: refused from the length prefix, so the target's memory does not grow by it.
      const big = Buffer.alloc(16 << 20);
      for (const m of ctx.quick ? service.methods.slice(0, 1) : service.methods) {
        const before = pid ? rssMb(pid) : 0;
        const r = await call(raw, service, m, big, withOwner(ownerToken()));
        t.add(r.code, `${m.name} (16 MiB): ${r.details}`, [Status.RESOURCE_EXHAUSTED]);
        const grew = pid ? rssMb(pid) - before : 0;
        if (grew > 12) misses.push({ scenario: 'fuzz', what: `${service.name}.${m.name}: RSS grew ${grew.toFixed(1)} MB for a 16 MiB message it refused`, timing: false });
      }
      raw.close();
    }
    return finish(ctx, 'fuzz', t, rss, misses);
  },
};

/** Strangers (another owner token, or none) try every call on the sequences
 * of live requests, guessing their ids, while those requests stream; a
 * stranger also creates sequences by unary calls and goes away; callers
 * without the deployment's client certificate (none, or another CA's) try
 * the cache and the allocator. */
export const stranger: Scenario = {
  name: 'stranger',
  async run(ctx) {
    const refusals = [Status.NOT_FOUND, Status.UNAUTHENTICATED, Status.PERMISSION_DENIED, Status.INVALID_ARGUMENT];
    const t = new Tally(refusals);
    const rss = ctx.sys.rssMb();
    const client = ctx.sys.publicClient();
    // The victims must all fit: 10 × 200 tokens reserve ~3.7 MB per 4 MB shard
    // (12 did not: two were refused for memory, not by a stranger).
    const victims = Array.from({ length: ctx.quick ? 4 : 10 }, (_, i) => openStream(client, longRequest(ctx, ctx.quick ? 32 : 200, 50 + i)));
    await Promise.all(victims.map((v) => Promise.race([v.firstToken, v.done])));
    const ids = ctx.quick ? 24 : 256;
    const row = (heads: number) => new Float32Array(heads * 64).fill(0.5); // the reference model: 4 q-heads, 2 kv-heads × 64
    let letIn = 0;
    for (const shard of ctx.sys.shards) {
      for (const owner of [ownerToken(), '']) {
        const s: GrpcCacheShard = ctx.sys.shardClient(shard.address, owner);
        const tries: [string, (seq: number) => Promise<unknown>][] = [
          ['attend', (seq) => s.attend(0, [{ seq, rows: 1, q: row(4), kNew: row(2), vNew: row(2) }])],
          ['exportImportance', (seq) => s.exportImportance(seq)],
          ['applyPlan', (seq) => s.applyPlan(seq, [{ layer: -1, positions: new Uint32Array([0]), formats: new Uint8Array([3]) }])],
          // Batches answer per sequence: a stranger's result in its place must be an error too.
          ['exportImportanceBatch', (seq) => s.exportImportanceBatch([seq]).then((r) => (r.results[0] instanceof Error ? Promise.reject(r.results[0]) : r))],
          ['applyPlanBatch', (seq) => s.applyPlanBatch([{ seq, plans: [{ layer: -1, positions: new Uint32Array([0]), formats: new Uint8Array([3]) }] }]).then((r) => (r[0] instanceof Error ? Promise.reject(r[0]) : r))],
          ['stats', (seq) => s.stats(seq, 3000)],
          ['freeSequence', (seq) => s.freeSequence(seq)],
        ];
        for (const [name, f] of tries)
          await pool(ids, 8, async (seq) => {
            try {
              await f(seq);
              letIn++;
              t.flag(`a stranger's ${name} on sequence ${seq} of ${shard.name} succeeded`);
              t.requests++;
            } catch (e) {
              t.add((e as { code?: number }).code ?? Status.UNKNOWN, `${name}: ${(e as Error).message}`);
            }
          });
        s.close();
      }
      // A stranger that creates sequences by unary calls, hits the per-caller limit or not, and leaves: its lease frees them.
      const owner = ownerToken();
      const s = ctx.sys.shardClient(shard.address, owner);
      for (let i = 0; i < 8; i++) {
        try {
          await s['unary']('createSequence', create(CreateSequenceRequestSchema, { reserveBytes: 1000n }));
          t.add(0);
        } catch (e) {
          t.add((e as { code?: number }).code ?? Status.UNKNOWN, (e as Error).message, [Status.RESOURCE_EXHAUSTED]);
        }
      }
      s.close();
    }
    // Callers without a certificate of the deployment's CA: no certificate, or one from another CA.
    if (ctx.sys.cluster.tls) {
      const foreign = generateLocalTls();
      try {
        for (const p of [...ctx.sys.shards, ctx.sys.cluster.allocator]) {
          for (const creds of [grpc.credentials.createInsecure(), grpc.credentials.createSsl(ctx.sys.cluster.tls.ca, foreign.key, foreign.cert)]) {
            const raw = new RawClient(p.address, creds);
            const r = await raw.unary(p === ctx.sys.cluster.allocator ? '/smartkv.v1.AllocatorService/Allocate' : '/smartkv.v1.CacheService/Stats', Buffer.alloc(0), new grpc.Metadata(), 3000);
            raw.close();
            if (r.code === 0) {
              letIn++;
              t.flag(`a caller without the deployment's certificate reached ${p.name}`);
              t.requests++;
            } else t.add(r.code, `no certificate: ${r.details}`, [Status.UNAVAILABLE]);
          }
        }
      } finally {
        removeLocalTls(foreign);
      }
    }
    for (const v of victims) {
      const r = await v.done;
      t.add(r.code, `victim: ${r.details}`, []); // a victim must finish
      if (r.code === 0) t.stall(r.maxGapMs);
    }
    client.close();
    const misses: Miss[] = letIn > 0 ? [{ scenario: 'stranger', what: `${letIn} stranger calls succeeded`, timing: false }] : [];
    return finish(ctx, 'stranger', t, rss, misses);
  },
};
