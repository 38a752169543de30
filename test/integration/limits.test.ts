// Limits on every message (issue 18), against real processes: each server's
// message limit is sized from the served model and reported (Info, Stats);
// an oversized message to any service is refused with RESOURCE_EXHAUSTED
// from its length prefix, without the service's memory growing by the
// message; a malformed message to any method answers INVALID_ARGUMENT (not
// grpc-js's INTERNAL "Error deserializing request"); a long prompt is refused
// before it is tokenised; rows per Attend are bounded. Afterwards every
// process is healthy and a request is served.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';

import { CreateSequenceResponseSchema, FreeSequenceRequestSchema, StatsResponseSchema } from '../../gen/smartkv/v1/cache_pb.js';
import { GenerateRequestSchema } from '../../gen/smartkv/v1/generation_pb.js';
import { encodeAttendRequest } from '../../services/cache/attend-codec.js';
import { cacheLimits, defaultPromptBytes, publicLimits } from '../../services/common/limits.js';
import { checkHealth } from '../../services/common/health-client.js';
import { Cluster } from '../../services/launcher/cluster.js';
import { parseModelConfig } from '../../services/orchestrator/model/config.js';
import { defaultModelDir } from '../../services/orchestrator/model/paths.js';
import { collectLogs, generateRequest, SmartKvClient } from '../helpers/services.js';
import { RawClient, rssMb } from '../helpers/raw-client.js';

const CACHE = '/smartkv.v1.CacheService/';
const ALLOCATOR = '/smartkv.v1.AllocatorService/';
const PUBLIC = '/smartkv.v1.GenerationService/';
// Field 1, length-delimited, says 5 bytes and has 1: no parser can read it.
const MALFORMED = Buffer.from([0x0a, 0x05, 0x01]);
const OWNER = 'limits-test-owner-0123456789abcdef0123456789abcdef';

describe('limits on every message', () => {
  const logs = collectLogs();
  const cfgFile = join(defaultModelDir(), 'config.json');
  const shape = parseModelConfig(JSON.parse(readFileSync(cfgFile, 'utf8')), cfgFile);
  let cluster: Cluster;
  let pub: SmartKvClient;
  const raw: Record<'allocator' | 'cache' | 'orchestrator', RawClient> = {} as never;

  before(async () => {
    cluster = await Cluster.start({ cacheShards: 1, log: logs.log, orchestratorArgs: ['--threads', '1'], cacheArgs: ['--threads', '1'] });
    pub = new SmartKvClient(cluster.address);
    raw.allocator = new RawClient(cluster.allocator.address);
    raw.cache = new RawClient(cluster.caches[0].address);
    raw.orchestrator = new RawClient(cluster.address);
  });

  after(async () => {
    pub?.close();
    for (const r of Object.values(raw)) r.close();
    await cluster?.stop();
  });

  const owned = () => {
    const md = new grpc.Metadata();
    md.set('smartkv-owner', OWNER);
    return md;
  };

  test('the limits follow the model and are reported in Info and Stats', async () => {
    const info = await pub.info();
    const promptBytes = defaultPromptBytes(shape);
    assert.equal(Number(info.limits?.maxPromptBytes), promptBytes);
    assert.equal(Number(info.limits?.maxRequestBytes), publicLimits(shape, promptBytes).receiveBytes);
    const r = await raw.cache.unary(CACHE + 'Stats', Buffer.alloc(0));
    assert.equal(r.code, 0, r.details);
    const st = fromBinary(StatsResponseSchema, r.body!);
    assert.equal(st.maxAttendRows, 1024);
    assert.equal(Number(st.maxRequestBytes), cacheLimits(shape, 1024).receiveBytes);
    // What admission asks: counts and reservations only, no bytes (no walk).
    const ro = await raw.cache.unary(CACHE + 'Stats', Buffer.from([0x10, 0x01]));
    const rs = fromBinary(StatsResponseSchema, ro.body!);
    assert.deepEqual([rs.sequences, rs.reservedBytes, rs.bytes, rs.maxRequestBytes], [st.sequences, st.reservedBytes, undefined, st.maxRequestBytes]);
    // A few MB for the reference model, not the 256 MiB it used to accept.
    assert.ok(Number(st.maxRequestBytes) < 8 << 20, `cache limit ${st.maxRequestBytes}`);
  });

  test('an oversized message to any service: RESOURCE_EXHAUSTED, before it is read into memory', async (t) => {
    const big = Buffer.alloc(64 << 20); // 64 MiB of zeros: a valid length prefix, far over every limit
    const cases: [keyof typeof raw, string, number][] = [
      ['allocator', ALLOCATOR + 'Allocate', cluster.allocator.pid!],
      ['cache', CACHE + 'ApplyPlan', cluster.caches[0].pid!],
      ['cache', CACHE + 'Attend', cluster.caches[0].pid!],
      ['orchestrator', PUBLIC + 'Complete', cluster.orchestrator.pid!],
    ];
    for (const [who, path, pid] of cases) {
      const before = rssMb(pid);
      const t0 = performance.now();
      const r = await raw[who].unary(path, big);
      const ms = performance.now() - t0;
      const grew = rssMb(pid) - before;
      t.diagnostic(`${path}: ${grpc.status[r.code]} in ${ms.toFixed(0)} ms; ${who} RSS ${before.toFixed(1)} → ${(before + grew).toFixed(1)} MB`);
      assert.equal(r.code, grpc.status.RESOURCE_EXHAUSTED, `${path}: ${r.details}`);
      assert.ok(grew < 16, `${who} RSS grew ${grew.toFixed(1)} MB for a 64 MiB message it refused`);
    }
    const s = await raw.orchestrator.serverStream(PUBLIC + 'Generate', big);
    assert.equal(s.code, grpc.status.RESOURCE_EXHAUSTED, s.details);
    const b = await raw.cache.bidi(CACHE + 'AttendStream', [big]);
    assert.equal(b.code, grpc.status.RESOURCE_EXHAUSTED, b.details);
  });

  test('a malformed message to any method: INVALID_ARGUMENT naming the message', async () => {
    const unary: [keyof typeof raw, string][] = [
      ['allocator', ALLOCATOR + 'Allocate'],
      ...['CreateSequence', 'FreeSequence', 'Attend', 'ExportImportance', 'ApplyPlan', 'Stats'].map((m): [keyof typeof raw, string] => ['cache', CACHE + m]),
      ...['Complete', 'Score', 'Info'].map((m): [keyof typeof raw, string] => ['orchestrator', PUBLIC + m]),
    ];
    for (const [who, path] of unary) {
      const r = await raw[who].unary(path, MALFORMED, owned());
      assert.equal(r.code, grpc.status.INVALID_ARGUMENT, `${path}: ${grpc.status[r.code]} ${r.details}`);
      assert.match(r.details, /^malformed \w+Request \(3 bytes\): /, path);
    }
    const g = await raw.orchestrator.serverStream(PUBLIC + 'Generate', MALFORMED);
    assert.equal(g.code, grpc.status.INVALID_ARGUMENT, g.details);
    const a = await raw.cache.bidi(CACHE + 'AttendStream', [MALFORMED]);
    assert.equal(a.code, grpc.status.INVALID_ARGUMENT, a.details);
    assert.match(a.details, /malformed AttendRequest/);
  });

  test('a prompt over the byte limit is refused before it is tokenised', async () => {
    const limit = defaultPromptBytes(shape);
    const req = generateRequest({ prompt: 'a'.repeat(limit + 1), maxTokens: 1 });
    const t0 = performance.now();
    const r = await raw.orchestrator.unary(PUBLIC + 'Complete', Buffer.from(toBinary(GenerateRequestSchema, req)));
    assert.equal(r.code, grpc.status.INVALID_ARGUMENT, r.details);
    assert.match(r.details, new RegExp(`prompt: ${limit + 1} bytes exceed the limit of ${limit} bytes \\(max_prompt_bytes`));
    assert.ok(performance.now() - t0 < 2000);
    // A prompt within the byte limit but over the context still gets the token check.
    const long = await raw.orchestrator.unary(PUBLIC + 'Complete', Buffer.from(toBinary(GenerateRequestSchema, generateRequest({ prompt: 'a'.repeat(shape.maxPositions + 10), maxTokens: 1 }))));
    assert.equal(long.code, grpc.status.INVALID_ARGUMENT);
    assert.match(long.details, /context/);
  });

  test('rows per Attend are bounded: RESOURCE_EXHAUSTED naming max_attend_rows', async () => {
    const c = await raw.cache.unary(CACHE + 'CreateSequence', Buffer.alloc(0), owned());
    assert.equal(c.code, 0, c.details);
    const seq = fromBinary(CreateSequenceResponseSchema, c.body!).sequenceId;
    const rows = 1100; // over 1024 rows, under the message limit (sized for 1024 × 1.25)
    const f = (heads: number) => new Float32Array(rows * heads * shape.headDim);
    const body = encodeAttendRequest({ id: 1n, layer: 0, traceparent: '', items: [{ sequenceId: seq, rows, q: f(shape.heads), kNew: f(shape.kvHeads), vNew: f(shape.kvHeads) }] });
    const r = await raw.cache.unary(CACHE + 'Attend', body, owned());
    assert.equal(r.code, grpc.status.RESOURCE_EXHAUSTED, r.details);
    assert.match(r.details, /1100 query rows in one Attend exceed the limit of 1024 \(max_attend_rows/);
    const free = await raw.cache.unary(CACHE + 'FreeSequence', Buffer.from(toBinary(FreeSequenceRequestSchema, create(FreeSequenceRequestSchema, { sequenceId: seq }))), owned());
    assert.equal(free.code, 0, free.details);
  });

  test('afterwards every process is healthy and serves', async () => {
    for (const p of [cluster.allocator, cluster.caches[0], cluster.orchestrator]) {
      assert.ok(p.running, `${p.name} exited`);
      assert.equal(await checkHealth(p.address), 'SERVING', p.name);
    }
    const out = await pub.generate(generateRequest({ prompt: 'The old man said', maxTokens: 4 }));
    assert.equal(out.ids.length, 4);
  });
});
