// `smartkv bench e2e`: decode throughput of the reference model with the cache
// and the allocator in this process vs in their own processes over gRPC, at
// batch 1 and 8, and the per-layer attend round trip (all shards of a step,
// from the orchestrator's side). The orchestrator's scheduler runs in this
// process in both modes, so the only difference is the local adapters vs the
// gRPC clients; the public API layer is not in the loop. The split system is
// measured with each data plane (region-client.ts): tensors in every Attend
// (off, as across hosts), in a shared region rung by a futex, and in the
// region rung by an Attend carrying offsets — against the same two services.
import { createServer } from 'node:http';

import { Cluster, ServiceProcess } from '../services/launcher/cluster.js';
import { waitHealthy } from '../services/common/health-client.js';
import { Orchestrator } from '../services/orchestrator/orchestrator.js';
import { SmartKvClient, generateRequest } from '../services/common/generation-client.js';
import { defaultModelDir } from '../services/orchestrator/model/paths.js';
import { DEFAULTS, type GenerateJobSpec } from '../services/orchestrator/settings.js';
import { isPolicyName, type PolicyName } from '../services/common/policy.js';
import { budgetReport } from '../services/orchestrator/job.js';
import type { StepRealloc } from '../services/orchestrator/scheduler.js';
import { DATA_PLANE_MODES, DEFAULT_DATA_PLANE, type DataPlaneMode } from '../services/orchestrator/region-client.js';
import { GrpcCacheShard } from '../services/orchestrator/cache-client.js';
import { parseModelConfig } from '../services/orchestrator/model/config.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

export interface BenchE2eOptions {
  json: boolean;
  quick: boolean;
  tracing?: boolean; // also: the whole split system through its API, tracing off vs on
  model?: string;
  policy?: string;
  budget?: number;
  rounds?: number; // paired rounds of in-process vs split (default 5; --quick 2)
}

interface Io {
  out: (line: string) => void;
  progress: (line: string) => void;
}

export interface E2eRow {
  system: 'in-process' | 'split';
  data_plane: DataPlaneMode | 'none'; // split: how attends travel (none: in-process)
  batch: number;
  policy: PolicyName;
  mode: string; // precision mode of the sequences (downgrade-only, the default)
  target_beta: number;
  achieved_beta: number; // mean over the sequences at their end
  hot_bytes: number; // mean per sequence at its end
  master_bytes: number;
  fp16_bytes: number;
  budget_met: boolean; // every sequence's summary met β
  reallocations: number; // over all sequences
  allocate_calls: number; // Allocate calls over all sequences (one per reallocation)
  realloc_us_mean: number; // allocate + apply time per reallocation (µs)
  tokens_per_s: number;
  step_p50_us: number;
  attend_p50_us: number;
  attend_p99_us: number;
  engine_p50_us: number; // the cache engine's time within an attend (what the shard reports)
  transport_p50_us: number; // p50 of (attend − engine) per layer: what crossing processes costs
  steps: number;
  realloc_steps: number; // measured steps after which reallocations ran (all due ones batched per shard)
  realloc_calls_per_step: number; // Export, Allocate and Apply calls per such step (3 per shard at most)
  realloc_step_p50_us: number; // p50 wall time of a step's reallocations
  realloc_transport_p50_us: number; // p50 of their round trips minus the services' compute
  // Per kind of call in a reallocating step: p50 round trip and p50 of the service's part of it
  // (steps whose plans changed nothing make no ApplyPlan call: apply is over the steps that did).
  realloc_stage_p50_us: { export: number; allocate: number; apply: number };
  realloc_stage_compute_p50_us: { export: number; allocate: number; apply: number };
  realloc_other_p50_us: number; // p50 of the step's reallocation wall time minus its calls: the orchestrator's own work
}

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * s.length))] : 0;
}

type Stages = StepRealloc['stageUs'];

/** p50 of each kind of call over the reallocating steps (apply: over those that applied a plan). */
function stageP50<R extends { applied: boolean }>(steps: R[], f: (r: R) => Stages): Stages {
  return {
    export: percentile(steps.map((r) => f(r).export), 0.5),
    allocate: percentile(steps.map((r) => f(r).allocate), 0.5),
    apply: percentile(steps.filter((r) => r.applied).map((r) => f(r).apply), 0.5),
  };
}

async function measure(orch: Orchestrator, system: E2eRow['system'], dataPlane: E2eRow['data_plane'], batch: number, o: { tokens: number; policy: PolicyName; beta: number }): Promise<E2eRow> {
  const attend: number[] = [];
  const engine: number[] = [];
  const transport: number[] = [];
  const steps: number[] = [];
  const realloc: { us: number; transportUs: number; calls: number; stageUs: StepRealloc['stageUs']; stageComputeUs: StepRealloc['stageComputeUs']; applied: boolean }[] = [];
  let decodeStart = 0, decodeEnd = 0, decodeTokens = 0;
  orch.scheduler.onStep = (s) => {
    if (s.rows !== batch || s.batch !== batch) return; // prefill steps and ramp-up excluded
    const r = s.realloc;
    if (r.sequences > 0) realloc.push({ us: r.us, transportUs: r.transportUs, calls: r.exportCalls + r.allocateCalls + r.applyCalls, stageUs: r.stageUs, stageComputeUs: r.stageComputeUs, applied: r.applyCalls > 0 });
    const now = performance.now();
    if (decodeStart === 0) decodeStart = now - s.stepUs / 1000;
    decodeEnd = now;
    decodeTokens += batch;
    steps.push(s.stepUs);
    attend.push(...s.attendUs);
    engine.push(...s.engineUs);
    s.attendUs.forEach((a, l) => transport.push(a - s.engineUs[l]));
  };
  const prompt = (i: number) => [256, ...Buffer.from(`Benchmark prompt ${i}: the committee met on Tuesday and said that`)];
  const jobs = Array.from({ length: batch }, (_, i) => {
    const spec: GenerateJobSpec = {
      kind: 'generate',
      prompt: prompt(i),
      maxTokens: o.tokens,
      sampling: { temperature: 0, topK: 0, topP: 1, seed: i },
      stop: [],
      cache: { ...DEFAULTS.cache, policy: o.policy, beta: o.beta },
    };
    return orch.scheduler.submit(spec, {}).done;
  });
  const outcomes = await Promise.all(jobs);
  orch.scheduler.onStep = null;
  const cache = { ...DEFAULTS.cache, policy: o.policy, beta: o.beta };
  const budgets = outcomes.map((x) => budgetReport(x.cache, cache));
  const mean = (f: (b: (typeof budgets)[number]) => number) => budgets.reduce((a, b) => a + f(b), 0) / Math.max(1, budgets.length);
  const reallocs = outcomes.reduce((a, x) => a + x.cache.reallocations, 0);
  return {
    system,
    data_plane: dataPlane,
    batch,
    policy: o.policy,
    mode: cache.mode,
    target_beta: o.beta,
    achieved_beta: mean((b) => b.achievedBeta),
    hot_bytes: Math.round(mean((b) => b.hotBytes)),
    master_bytes: Math.round(mean((b) => b.masterBytes)),
    fp16_bytes: Math.round(mean((b) => b.fp16Bytes)),
    budget_met: budgets.every((b) => b.budgetMet),
    reallocations: reallocs,
    allocate_calls: outcomes.reduce((a, x) => a + x.cache.allocateCalls, 0),
    realloc_us_mean: reallocs ? Math.round(outcomes.reduce((a, x) => a + x.cache.allocateUs + x.cache.applyUs, 0) / reallocs) : 0,
    tokens_per_s: decodeTokens > 0 ? (decodeTokens * 1000) / (decodeEnd - decodeStart) : 0,
    step_p50_us: percentile(steps, 0.5),
    attend_p50_us: percentile(attend, 0.5),
    attend_p99_us: percentile(attend, 0.99),
    engine_p50_us: percentile(engine, 0.5),
    transport_p50_us: percentile(transport, 0.5),
    steps: steps.length,
    realloc_steps: realloc.length,
    realloc_calls_per_step: realloc.length ? realloc.reduce((a, r) => a + r.calls, 0) / realloc.length : 0,
    realloc_step_p50_us: percentile(realloc.map((r) => r.us), 0.5),
    realloc_transport_p50_us: percentile(realloc.map((r) => r.transportUs), 0.5),
    realloc_stage_p50_us: stageP50(realloc, (r) => r.stageUs),
    realloc_stage_compute_p50_us: stageP50(realloc, (r) => r.stageComputeUs),
    realloc_other_p50_us: percentile(realloc.map((r) => r.us - r.stageUs.export - r.stageUs.allocate - r.stageUs.apply), 0.5),
  };
}

export async function benchE2e(opts: BenchE2eOptions, io: Io): Promise<E2eRow[]> {
  const policy = opts.policy ?? 'smartkv';
  if (!isPolicyName(policy)) throw new Error(`unknown policy ${policy}`);
  const beta = opts.budget ?? 0.5;
  const modelDir = opts.model ?? defaultModelDir();
  const tokens = opts.quick ? 24 : 192;
  const batches = [1, 8];
  const rows: E2eRow[] = [];
  const transport: RoundTripRow[] = [];
  const paired: PairedRow[] = [];
  const rounds = opts.rounds ?? (opts.quick ? 2 : 5);
  const log = (l: string) => io.progress(l);
  const quiet = () => undefined;

  io.progress(`in-process: model ${modelDir}, ${tokens} tokens per sequence, policy ${policy} β ${beta}`);
  const local = await Orchestrator.create({ modelDir, defaults: DEFAULTS, local: { engine: { quant: 'symmetric', rotateKv: true, mode: DEFAULTS.cache.mode }, memoryLimitBytes: 0 }, log });
  for (const b of batches) {
    await measure(local, 'in-process', 'none', b, { tokens: 8, policy, beta }); // warm-up
    rows.push(await measure(local, 'in-process', 'none', b, { tokens, policy, beta }));
    io.progress(`  batch ${b}: ${rows[rows.length - 1].tokens_per_s.toFixed(1)} tokens/s`);
  }

  io.progress('split: starting an allocator and a cache service …');
  const model = opts.model ? ['--model', opts.model] : [];
  const allocator = new ServiceProcess('allocator', 'allocator', ['--port', '0', '--plaintext'], undefined, quiet);
  const cache = new ServiceProcess('cache', 'cache', ['--port', '0', '--plaintext', ...model], undefined, quiet);
  try {
    await allocator.start(60_000);
    await cache.start(60_000);
    await Promise.all([waitHealthy(allocator.address, 30_000), waitHealthy(cache.address, 30_000)]);
    for (const dataPlane of DATA_PLANE_MODES) {
      io.progress(` data plane ${dataPlane}`);
      const split = await Orchestrator.create({ modelDir, defaults: DEFAULTS, cacheAddresses: [cache.address], allocatorAddress: allocator.address, dataPlane, log });
      for (const b of batches) {
        await measure(split, 'split', dataPlane, b, { tokens: 8, policy, beta });
        rows.push(await measure(split, 'split', dataPlane, b, { tokens, policy, beta }));
        io.progress(`  batch ${b}: ${rows[rows.length - 1].tokens_per_s.toFixed(1)} tokens/s`);
      }
      await split.close(1000);
    }
    io.progress('attend round trips by data plane, interleaved …');
    transport.push(...(await roundTrips(cache.address, modelDir, opts.quick ? 5 : 20)));
    if (rounds > 0) {
      io.progress(`paired rounds, in-process vs split (data plane ${DEFAULT_DATA_PLANE}) …`);
      const split = await Orchestrator.create({ modelDir, defaults: DEFAULTS, cacheAddresses: [cache.address], allocatorAddress: allocator.address, dataPlane: DEFAULT_DATA_PLANE, log });
      try {
        paired.push(...(await pairedRounds(local, split, batches, rounds, { tokens, policy, beta }, io)));
      } finally {
        await split.close(1000);
      }
    }
  } finally {
    await local.close(1000);
    await cache.stop();
    await allocator.stop();
  }

  const tracingRows = opts.tracing ? await tracingCost(opts, tokens, io) : [];

  if (opts.json) for (const r of [...rows, ...transport, ...paired, ...tracingRows]) io.out(JSON.stringify(r));
  else {
    io.out(`SmartKV end to end: reference model, decode ${tokens} tokens per sequence, policy ${policy} β ${beta}`);
    io.out('system     data plane  batch   tokens/s   step p50 µs   attend p50 µs   attend p99 µs   engine p50 µs   transport p50 µs   β achieved   met   Allocate/realloc   realloc µs   realloc calls/step   realloc step p50 µs   realloc transport p50 µs');
    for (const r of rows)
      io.out(
        `${r.system.padEnd(10)} ${r.data_plane.padEnd(10)} ${String(r.batch).padStart(6)} ${r.tokens_per_s.toFixed(1).padStart(10)} ${r.step_p50_us.toFixed(0).padStart(13)} ${r.attend_p50_us.toFixed(0).padStart(15)} ${r.attend_p99_us.toFixed(0).padStart(15)} ` +
          `${r.engine_p50_us.toFixed(0).padStart(15)} ${r.transport_p50_us.toFixed(0).padStart(18)} ` +
          `${r.achieved_beta.toFixed(3).padStart(12)} ${String(r.budget_met).padStart(5)} ${(r.reallocations ? r.allocate_calls / r.reallocations : 0).toFixed(2).padStart(18)} ${String(r.realloc_us_mean).padStart(12)} ` +
          `${r.realloc_calls_per_step.toFixed(1).padStart(20)} ${r.realloc_step_p50_us.toFixed(0).padStart(21)} ${r.realloc_transport_p50_us.toFixed(0).padStart(26)}`,
      );
    for (const b of batches) {
      const l = rows.find((r) => r.system === 'in-process' && r.batch === b)!;
      for (const s of rows.filter((r) => r.system === 'split' && r.batch === b))
        io.out(
          `batch ${b}, data plane ${s.data_plane}: split / in-process throughput = ${(s.tokens_per_s / l.tokens_per_s).toFixed(2)}; ` +
            `split attend p50 − in-process attend p50 = ${(s.attend_p50_us - l.attend_p50_us).toFixed(0)} µs`,
        );
    }
    io.out('');
    io.out('reallocating steps, p50 per kind of call: round trip (the service\'s part of it), and the orchestrator\'s own work between the calls');
    io.out('system     data plane  batch   steps   export µs         allocate µs       apply µs          other µs');
    const cell = (rt: number, c: number) => `${rt.toFixed(0)} (${c.toFixed(0)})`.padEnd(17);
    for (const r of rows.filter((x) => x.realloc_steps > 0))
      io.out(
        `${r.system.padEnd(10)} ${r.data_plane.padEnd(10)} ${String(r.batch).padStart(6)} ${String(r.realloc_steps).padStart(7)}   ` +
          `${cell(r.realloc_stage_p50_us.export, r.realloc_stage_compute_p50_us.export)} ${cell(r.realloc_stage_p50_us.allocate, r.realloc_stage_compute_p50_us.allocate)} ` +
          `${cell(r.realloc_stage_p50_us.apply, r.realloc_stage_compute_p50_us.apply)} ${r.realloc_other_p50_us.toFixed(0)}`,
      );
    io.out('');
    io.out('attend round trips alone (no model), one cache service, the data planes interleaved in rounds of 50 so that load drift hits all alike');
    io.out('data plane  batch   round trip p50 µs   engine p50 µs   transport p50 µs');
    for (const r of transport)
      io.out(`${r.data_plane.padEnd(10)} ${String(r.batch).padStart(6)} ${r.round_trip_p50_us.toFixed(0).padStart(19)} ${r.engine_p50_us.toFixed(0).padStart(15)} ${r.transport_p50_us.toFixed(0).padStart(18)}`);
    if (paired.length) {
      io.out('');
      io.out(`split (data plane ${DEFAULT_DATA_PLANE}) / in-process throughput, paired: the two measured back to back in each round, which goes first alternating, so that load drift between rounds cancels`);
      io.out('batch   rounds   ratio p50   min     max     in-process tokens/s p50   split tokens/s p50   per round');
      for (const r of paired)
        io.out(
          `${String(r.batch).padStart(5)} ${String(r.rounds).padStart(8)} ${r.ratio_p50.toFixed(3).padStart(11)}   ${r.ratio_min.toFixed(3)}   ${r.ratio_max.toFixed(3)}   ${r.in_process_tokens_per_s_p50.toFixed(1).padStart(23)} ${r.split_tokens_per_s_p50.toFixed(1).padStart(20)}   ${r.ratios.map((x) => x.toFixed(2)).join(' ')}`,
        );
    }
    if (tracingRows.length) {
      io.out('');
      io.out('the split system through its public API, batch 8 (Generate streams), tracing off vs on (OTLP/HTTP to a local sink, every span sampled)');
      for (const r of tracingRows)
        io.out(`  tracing ${r.tracing.padEnd(20)} ${r.tokens_per_s.toFixed(1).padStart(8)} tokens/s   ${(r.tokens_per_s / tracingRows[0].tokens_per_s).toFixed(3)} of off`);
    }
  }
  return rows;
}

export interface PairedRow {
  system: 'paired';
  data_plane: DataPlaneMode;
  batch: number;
  rounds: number;
  tokens: number; // decoded per sequence in each measurement
  ratios: number[]; // split / in-process tokens/s, one per round
  ratio_p50: number;
  ratio_min: number;
  ratio_max: number;
  in_process_tokens_per_s_p50: number;
  split_tokens_per_s_p50: number;
}

/** In-process and split decode throughput measured back to back, `rounds`
 * times per batch size, the first of each pair alternating: the ratio of a
 * pair sees (nearly) the same host load, so its spread is the method's, not
 * the VM's minute-to-minute drift that separate runs pick up. */
async function pairedRounds(local: Orchestrator, split: Orchestrator, batches: number[], rounds: number, o: { tokens: number; policy: PolicyName; beta: number }, io: Io): Promise<PairedRow[]> {
  const out: PairedRow[] = [];
  for (const batch of batches) {
    await measure(split, 'split', DEFAULT_DATA_PLANE, batch, { ...o, tokens: 8 }); // warm-up
    const ratios: number[] = [], inProcess: number[] = [], splitTps: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const runLocal = () => measure(local, 'in-process', 'none', batch, o);
      const runSplit = () => measure(split, 'split', DEFAULT_DATA_PLANE, batch, o);
      let l: E2eRow, sp: E2eRow;
      if (r % 2 === 0) {
        l = await runLocal();
        sp = await runSplit();
      } else {
        sp = await runSplit();
        l = await runLocal();
      }
      inProcess.push(l.tokens_per_s);
      splitTps.push(sp.tokens_per_s);
      ratios.push(sp.tokens_per_s / l.tokens_per_s);
      io.progress(`  batch ${batch} round ${r + 1}/${rounds}: in-process ${l.tokens_per_s.toFixed(1)}, split ${sp.tokens_per_s.toFixed(1)} tokens/s (${ratios[r].toFixed(3)})`);
    }
    out.push({
      system: 'paired',
      data_plane: DEFAULT_DATA_PLANE,
      batch,
      rounds,
      tokens: o.tokens,
      ratios,
      ratio_p50: median(ratios),
      ratio_min: Math.min(...ratios),
      ratio_max: Math.max(...ratios),
      in_process_tokens_per_s_p50: median(inProcess),
      split_tokens_per_s_p50: median(splitTps),
    });
  }
  return out;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export interface RoundTripRow {
  system: 'round-trip';
  data_plane: DataPlaneMode;
  batch: number;
  round_trip_p50_us: number; // one attend (one decode row per sequence) as the orchestrator sees it
  engine_p50_us: number;
  transport_p50_us: number; // p50 of round trip − engine
}

/** Attend round trips against one cache service through each data plane,
 * `rounds` rounds of 50 per plane and batch, interleaved: on a loaded host
 * the load changes by the second, and interleaving spreads it evenly. */
async function roundTrips(address: string, modelDir: string, rounds: number): Promise<RoundTripRow[]> {
  const file = join(modelDir, 'config.json');
  const c = parseModelConfig(JSON.parse(readFileSync(file, 'utf8')), file);
  const rowOf = (heads: number, s: number) => Float32Array.from({ length: heads * c.headDim }, (_, i) => Math.sin(i * 0.37 + s) * 0.5);
  const out: RoundTripRow[] = [];
  const clients = DATA_PLANE_MODES.map((m) => new GrpcCacheShard(address, `bench-${randomBytes(16).toString('hex')}`, { dataPlane: m }));
  try {
    for (const batch of [1, 8]) {
      const seqs = await Promise.all(clients.map(async (cl) => Promise.all(Array.from({ length: batch }, async () => (await cl.createSequence('mixed', 0)).seq))));
      const samples = clients.map(() => ({ rt: [] as number[], engine: [] as number[], transport: [] as number[] }));
      const q = rowOf(c.heads, 1), k = rowOf(c.kvHeads, 2), v = rowOf(c.kvHeads, 3);
      const outs = Array.from({ length: batch }, () => new Float32Array(c.heads * c.headDim));
      for (let round = 0; round < rounds; round++)
        for (const [m, cl] of clients.entries())
          for (let i = 0; i < 50; i++) {
            const layer = i % c.layers;
            const items = seqs[m].map((seq, j) => ({ seq, rows: 1, q, kNew: k, vNew: v, out: outs[j] }));
            const t0 = performance.now();
            const r = await cl.attend(layer, items);
            const us = (performance.now() - t0) * 1000;
            if (round === 0) continue; // warm-up: the region is set up on the first call
            samples[m].rt.push(us);
            samples[m].engine.push(r.engineUs);
            samples[m].transport.push(us - r.engineUs);
          }
      clients.forEach((cl, m) =>
        out.push({
          system: 'round-trip',
          data_plane: DATA_PLANE_MODES[m],
          batch,
          round_trip_p50_us: percentile(samples[m].rt, 0.5),
          engine_p50_us: percentile(samples[m].engine, 0.5),
          transport_p50_us: percentile(samples[m].transport, 0.5),
        }),
      );
      await Promise.all(clients.map((cl, m) => Promise.all(seqs[m].map((s) => cl.freeSequence(s)))));
    }
  } finally {
    clients.forEach((cl) => cl.close());
  }
  return out;
}

export interface TracingRow {
  system: 'split-api';
  tracing: 'off' | 'on' | 'on, per-layer spans';
  batch: number;
  tokens_per_s: number;
}

/** Tokens/s of 8 concurrent Generate streams through a started split system,
 * with and without OTLP export. The sink accepts and drops what it gets. */
async function tracingCost(opts: BenchE2eOptions, tokens: number, io: Io): Promise<TracingRow[]> {
  const sink = createServer((req, res) => {
    req.resume();
    req.on('end', () => res.end('{}'));
  });
  await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
  const endpoint = `http://127.0.0.1:${(sink.address() as { port: number }).port}`;
  const rows: TracingRow[] = [];
  try {
    const otlp = { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' };
    const configs: [TracingRow['tracing'], NodeJS.ProcessEnv][] = [
      ['off', {}],
      ['on', otlp],
      ['on, per-layer spans', { ...otlp, SMARTKV_TRACE_ATTEND: 'spans' }],
    ];
    for (const [tracing, env] of configs) {
      io.progress(`split system, tracing ${tracing} …`);
      const cluster = await Cluster.start({ env, model: opts.model, log: () => undefined });
      const client = new SmartKvClient(cluster.address);
      try {
        const run = async (n: number) => {
          const t0 = performance.now();
          const res = await Promise.all(Array.from({ length: 8 }, (_, i) => client.generate(generateRequest({ prompt: `Benchmark prompt ${i}: the committee said`, maxTokens: n, seed: i }))));
          return (res.reduce((a, r) => a + r.ids.length, 0) * 1000) / (performance.now() - t0);
        };
        await run(8); // warm-up
        rows.push({ system: 'split-api', tracing, batch: 8, tokens_per_s: await run(tokens) });
      } finally {
        client.close();
        await cluster.stop();
      }
    }
  } finally {
    sink.close();
  }
  return rows;
}
