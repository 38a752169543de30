#!/usr/bin/env node
// One step's batched reallocation (ExportImportanceBatch, AllocateBatch,
// ApplyPlanBatch) against a cache service and an allocator in their own
// processes, with the calls as unary RPCs (as before issue 16's streams) and
// as messages on ReallocStream / AllocateStream (what the orchestrator does
// now), interleaved round by round in one process so that the host's load
// hits both alike; 5 ms idle between rounds (a decode step's worth, as the
// calls come every R steps). 8 sequences of 200 tokens (the reference
// model's shape: 4 layers, 4 query heads, 2 KV heads × 64), data plane
// `futex` (importance through the region). Prints the p50 and p90 wall time
// of the three calls per way. Needs `npm run build`. Cited in
// docs/services.md ("Reallocation calls on streams").
//   node scripts/realloc-call-probe.mjs [rounds]
import { randomBytes } from 'node:crypto';
import { create } from '@bufbuild/protobuf';

const ROOT = new URL('../dist/', import.meta.url).href;
const { ServiceProcess } = await import(ROOT + 'services/launcher/cluster.js');
const { waitHealthy } = await import(ROOT + 'services/common/health-client.js');
const { GrpcCacheShard } = await import(ROOT + 'services/orchestrator/cache-client.js');
const { reallocateBatch } = await import(ROOT + 'services/orchestrator/reallocate.js');
const { GrpcAllocator, allocateRequest, resultFromPb } = await import(ROOT + 'services/orchestrator/allocator-client.js');
const { callUnary, makeClient } = await import(ROOT + 'services/common/rpc.js');
const { AllocateBatchRequestSchema, AllocatorService } = await import(ROOT + 'gen/smartkv/v1/allocator_pb.js');

const ROUNDS = Number(process.argv[2] ?? 40), SEQS = 8, TOKENS = 200, L = 4;
const quiet = () => undefined;
const cache = new ServiceProcess('cache', 'cache', ['--port', '0', '--threads', '1', '--plaintext'], undefined, quiet);
const allocatorProc = new ServiceProcess('allocator', 'allocator', ['--port', '0', '--plaintext'], undefined, quiet);
await Promise.all([cache.start(60_000), allocatorProc.start(60_000)]);
await Promise.all([waitHealthy(cache.address, 30_000), waitHealthy(allocatorProc.address, 30_000)]);

const tensor = (rows, heads, s) => Float32Array.from({ length: rows * heads * 64 }, (_, i) => Math.sin(i * 0.37 + s * 1.7) + Math.cos(i * 0.011 * (s + 1)));

/** A shard with SEQS sequences of TOKENS tokens; unary: its reallocation calls go as unary RPCs. */
async function shardWith(unary) {
  const c = new GrpcCacheShard(cache.address, `probe-${randomBytes(16).toString('hex')}`, { dataPlane: 'futex' });
  if (unary) c.reallocCall = (kind, req) => c.unary(kind, req);
  const seqs = [];
  let tokenBytes = [];
  for (let i = 0; i < SEQS; i++) {
    const r = await c.createSequence('mixed', 0);
    seqs.push(r.seq);
    tokenBytes = r.tokenBytes;
  }
  const CHUNK = 25; // rows per sequence per attend: 8 × 25 rows stay under the service's message limit
  for (let k = 0; k < TOKENS / CHUNK; k++)
    for (let l = 0; l < L; l++) await c.attend(l, seqs.map((seq, i) => ({ seq, rows: CHUNK, q: tensor(CHUNK, 4, i + l + k), kNew: tensor(CHUNK, 2, i + l + k + 1), vNew: tensor(CHUNK, 2, i + l + k + 2) })));
  const layout = { layers: L, fp16TokenBytes: 2 * 2 * 64 * 2, tokenBytes, blockTokens: (await c.stats()).blockTokens };
  return { c, seqs, layout };
}

const streamAllocator = new GrpcAllocator(allocatorProc.address);
// planBatch as it was before the streams: one AllocateBatch unary call.
const unaryAllocator = {
  client: makeClient(AllocatorService, allocatorProc.address),
  async planBatch(problems) {
    const req = create(AllocateBatchRequestSchema, { requests: problems.map(allocateRequest) });
    const r = await callUnary(this.client, 'allocateBatch', req, { deadlineMs: 30_000 });
    return r.results.map((x) => (x.errorCode ? new Error(x.errorMessage) : resultFromPb(x.plan)));
  },
};

const ways = { unary: { shard: await shardWith(true), allocator: unaryAllocator }, stream: { shard: await shardWith(false), allocator: streamAllocator } };
const times = { unary: [], stream: [] };
const options = (seq) => ({ policy: 'smartkv', beta: 0.4, sinks: 4, window: 16, ahead: 16, seed: seq, gamma: 0.9, normalised: false, perLayer: false });
for (let round = 0; round < ROUNDS + 3; round++)
  for (const name of round % 2 ? ['unary', 'stream'] : ['stream', 'unary']) {
    const { shard, allocator } = ways[name];
    await new Promise((r) => setTimeout(r, 5));
    const entries = shard.seqs.map((seq) => ({ seq, tokens: TOKENS, layout: shard.layout, options: options(seq), reversible: false }));
    const t0 = performance.now();
    const { outcomes } = await reallocateBatch(shard.c, allocator, entries);
    const us = (performance.now() - t0) * 1000;
    const bad = outcomes.find((o) => o instanceof Error);
    if (bad) throw bad;
    if (round >= 3) times[name].push(us); // the first rounds warm up both ways
  }
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))];
for (const name of ['unary', 'stream'])
  console.log(`${name.padEnd(6)} export + allocate + apply, ${SEQS} sequences × ${TOKENS} tokens: p50 ${pct(times[name], 0.5).toFixed(0)} µs, p90 ${pct(times[name], 0.9).toFixed(0)} µs (${times[name].length} rounds)`);
console.log(`stream / unary p50 = ${(pct(times.stream, 0.5) / pct(times.unary, 0.5)).toFixed(2)}`);
for (const w of Object.values(ways)) w.shard.c.close();
streamAllocator.close();
unaryAllocator.client.close();
await cache.stop();
await allocatorProc.stop();
