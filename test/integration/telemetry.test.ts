// Traces and metrics across the three processes: OTLP/HTTP to a receiver
// this test runs, and each service's Prometheus endpoint.
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { after, before, describe, test } from 'node:test';

import { CachePolicy } from '../../gen/smartkv/v1/common_pb.js';
import { Cluster } from '../../services/launcher/cluster.js';
import { OtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver.js';
import { collectLogs, eventually, generateRequest, SmartKvClient } from '../helpers/services.js';

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

describe('telemetry across the services', () => {
  const rx = new OtlpReceiver();
  const logs = collectLogs();
  let cluster: Cluster;
  let client: SmartKvClient;
  const ports: number[] = [];

  before(async () => {
    await rx.start();
    for (let i = 0; i < 3; i++) ports.push(await freePort());
    cluster = await Cluster.start({
      log: logs.log,
      env: { OTEL_EXPORTER_OTLP_ENDPOINT: rx.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_BSP_SCHEDULE_DELAY: '100', SMARTKV_TRACE_ATTEND: 'spans' },
      allocatorArgs: ['--metrics-port', String(ports[0])],
      cacheArgs: ['--metrics-port', String(ports[1])],
      orchestratorArgs: ['--metrics-port', String(ports[2])],
    });
    client = new SmartKvClient(cluster.address);
  });

  after(async () => {
    client?.close();
    await cluster?.stop();
    await rx.stop();
  });

  test('one generation is one trace with spans from all three services, correctly nested', async () => {
    // A prompt past the protected tokens so that plans change precision.
    const prompt = 'The committee met on Tuesday. '.repeat(8);
    const r = await client.generate(generateRequest({ prompt, maxTokens: 40, policy: CachePolicy.SMARTKV, budget: 0.5 }));
    assert.equal(r.ids.length, 40);
    const gen = await eventually(
      async () => rx.spans.find((s) => s.name === 'generate' && s.service === 'smartkv-orchestrator'),
      (s) => s !== undefined,
      10_000,
    );
    const inTrace = () => rx.spans.filter((s) => s.traceId === gen!.traceId);
    // Wait until every process's batches have arrived (exports run concurrently,
    // so a later batch can land first): one attend per layer per step on both sides.
    const count = (ss: ReceivedSpan[], name: string) => ss.filter((s) => s.name === name).length;
    const spans = await eventually(
      async () => inTrace(),
      (ss) => new Set(ss.map((s) => s.service)).size === 3 && count(ss, 'step') >= 40 && count(ss, 'attend') === 4 * count(ss, 'step') && count(ss, 'cache.attend') === count(ss, 'attend'),
      15_000,
    );
    const byId = new Map(spans.map((s) => [s.spanId, s]));
    const parent = (s: ReceivedSpan) => byId.get(s.parentSpanId);

    assert.deepEqual([...new Set(spans.map((s) => s.service))].sort(), ['smartkv-allocator', 'smartkv-cache', 'smartkv-orchestrator']);
    // generate is the child of the Generate server span, the root of the trace.
    assert.equal(parent(gen!)?.name, 'grpc.smartkv.v1.GenerationService/Generate');
    const steps = spans.filter((s) => s.name === 'step');
    assert.ok(steps.length >= 40, `${steps.length} steps`);
    for (const s of steps) assert.equal(parent(s)?.name, 'generate');
    const attends = spans.filter((s) => s.name === 'attend');
    assert.equal(attends.length, steps.length * 4, 'one attend span per layer per step');
    for (const a of attends) assert.equal(parent(a)?.name, 'step');
    const serverAttends = spans.filter((s) => s.name === 'cache.attend');
    assert.equal(serverAttends.length, attends.length);
    for (const a of serverAttends) {
      assert.equal(a.service, 'smartkv-cache');
      assert.equal(parent(a)?.name, 'attend');
    }
    const reallocs = spans.filter((s) => s.name === 'reallocate');
    assert.ok(reallocs.length >= 3, `${reallocs.length} reallocations`);
    for (const re of reallocs) assert.equal(parent(re)?.name, 'step');
    // The reallocation calls travel as messages on two long-lived streams
    // (ReallocStream, AllocateStream): each has the orchestrator's span for
    // its round trip under the reallocation, and the service's span for its
    // work under that. The reallocations due in a step go to each shard as one
    // batch (one request here, so one sequence a batch): exactly one export
    // and one allocate per reallocation, at most one apply.
    const allocs = spans.filter((s) => s.service === 'smartkv-allocator' && s.name === 'allocator.allocate_batch');
    assert.equal(allocs.length, reallocs.length, `${allocs.length} AllocateBatch calls for ${reallocs.length} reallocations`);
    for (const a of allocs) {
      assert.equal(parent(a)?.name, 'allocate_batch');
      assert.equal(parent(parent(a)!)?.name, 'reallocate');
    }
    const under = (re: ReceivedSpan, name: string) =>
      spans.filter((s) => s.service === 'smartkv-cache' && s.name === `cache.${name}` && parent(s)?.name === name && parent(parent(s)!)?.spanId === re.spanId);
    for (const re of reallocs) {
      const applies = under(re, 'apply_plan_batch');
      assert.equal(under(re, 'export_importance_batch').length, 1, 'one ExportImportanceBatch per batch');
      assert.ok(applies.length <= 1, `${applies.length} ApplyPlanBatch calls in one reallocation`);
      assert.equal(re.attributes['smartkv.allocate_calls'], 1);
      assert.equal(Number(re.attributes['smartkv.apply_calls']), applies.length);
      assert.equal(Number(re.attributes['smartkv.realloc_apply_calls']), applies.length);
      // The batch's cost, split into the services' compute and the transport around it.
      const wall = Number(re.attributes['smartkv.realloc_batch_us']), compute = Number(re.attributes['smartkv.realloc_batch_compute_us']);
      const transport = Number(re.attributes['smartkv.realloc_batch_transport_us']);
      assert.ok(compute > 0 && transport >= 0 && compute + transport <= wall * 1.05 + 50, `compute ${compute} + transport ${transport} within the batch's ${wall} µs`);
      const step = parent(re)!;
      assert.ok(Number(step.attributes['smartkv.realloc_us']) >= wall * 0.95 - 50, 'the step carries its reallocations\' wall time');
      assert.ok('smartkv.realloc_transport_us' in step.attributes && 'smartkv.realloc_compute_us' in step.attributes);
    }
    // The generate span carries the bytes under the report names.
    for (const k of ['smartkv.target_beta', 'smartkv.achieved_beta', 'smartkv.hot_bytes', 'smartkv.master_bytes', 'smartkv.fp16_bytes', 'smartkv.mode', 'smartkv.budget_met'])
      assert.ok(k in gen!.attributes, `${k} on the generate span`);
    assert.equal(gen!.attributes['smartkv.mode'], 'downgrade-only');
    assert.equal(Number(gen!.attributes['smartkv.master_bytes']), 0);

    // The cost attributes, with plausible values.
    const applied = reallocs.filter((s) => Number(s.attributes['smartkv.tokens_changed']) > 0);
    assert.ok(applied.length >= 1, 'some reallocation changed precision');
    for (const re of applied) {
      const a = re.attributes;
      assert.ok(Number(a['smartkv.allocate_us']) > 0 && Number(a['smartkv.allocate_us']) < 5e6);
      assert.ok(Number(a['smartkv.apply_us']) > 0 && Number(a['smartkv.apply_us']) < 5e6);
      assert.ok(Number(a['smartkv.bytes_moved']) > 0);
      const beta = Number(a['smartkv.achieved_beta']);
      assert.ok(beta > 0.1 && beta < 1.5, `β ${beta}`);
      const hist = ['smartkv.bits16_tokens', 'smartkv.bits8_tokens', 'smartkv.bits4_tokens', 'smartkv.bits2_tokens'].map((k) => Number(a[k]));
      assert.equal(hist.reduce((x, y) => x + y, 0), 4 * Number(a['smartkv.tokens']), 'histogram covers every token of every layer');
    }
  });

  test('every service serves its metrics for Prometheus', async () => {
    const text = await Promise.all(ports.map((p) => fetch(`http://127.0.0.1:${p}/metrics`).then((r) => r.text())));
    const [allocator, cache, orchestrator] = text;
    const value = (t: string, name: string, labels = '') => {
      const m = new RegExp(`^${name}\\{([^}]*)\\} (\\S+)$`, 'm').exec(t.split('\n').filter((l) => l.startsWith(name + '{') && l.includes(labels)).join('\n'));
      assert.ok(m, `${name}{${labels}} in\n${t.slice(0, 400)}`);
      return Number(m[2]);
    };
    assert.ok(value(orchestrator, 'smartkv_tokens_generated_total') >= 40);
    assert.ok(value(orchestrator, 'smartkv_requests_total', 'method="Generate",status="OK"') >= 1);
    assert.ok(value(orchestrator, 'smartkv_step_duration_count') >= 40);
    assert.ok(value(orchestrator, 'smartkv_achieved_beta_count') >= 1);
    assert.ok(value(orchestrator, 'smartkv_attend_duration_count', 'side="orchestrator"') >= 160);
    assert.ok(value(cache, 'smartkv_attend_duration_count', 'side="cache"') >= 160);
    assert.equal(value(cache, 'smartkv_cache_bytes_held'), 0, 'all freed after the request');
    assert.ok(value(allocator, 'smartkv_allocate_duration_count', 'policy="smartkv"') >= 1);
    // The allocator's own count of Allocate calls equals the orchestrator's reallocations.
    assert.equal(value(allocator, 'smartkv_allocate_duration_count', 'policy="smartkv"'), value(orchestrator, 'smartkv_reallocation_duration_count'));
    assert.equal(value(cache, 'smartkv_cache_bytes_master'), 0);
  });
});
