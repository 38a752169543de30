// `smartkv bench latency`: the latency sweep — decode latency of one sequence
// at long contexts through the model loop (the orchestrator's scheduler, its
// cache and allocator), per cache policy and budget, in-process and split
// into processes over gRPC; with the bytes each tier holds (hot, master) and
// the bit-width histogram at the end.
//
//   contexts  4K, 8K, 16K, 32K, 48K by default: the prompt's length in tokens.
//             Positions beyond the model's trained length are fine for timing:
//             the run uses a copy of the model folder (links to its weights)
//             whose config allows the longest context; RoPE frequencies do not
//             depend on that limit, so the arithmetic is the model's own.
//   rows      fp16, uniform-8, and smartkv at each β (0.25, 0.33, 0.40, 0.50),
//             budgeted rows in each asked precision mode.
//   one cell  a fresh sequence: the prompt is prefilled (in --prefill-chunk
//             chunks, a plan after each; not timed), then warm-up steps
//             (default 10) and measured decode steps (default 80), with a
//             reallocation every R steps as served. decode_ms_mean is the
//             wall time per token over the measured steps (model step, plans,
//             sampling: what a client waits per token); step_ms_mean the
//             model step alone.
import { appendFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { parseOptions, UsageError, type OptionSpec } from '../services/common/args.js';
import { isModeName, MODE_NAMES, type ModeName, type PolicyName } from '../services/common/policy.js';
import { budgetReport } from '../services/orchestrator/job.js';
import { defaultModelDir } from '../services/orchestrator/model/paths.js';
import type { Orchestrator } from '../services/orchestrator/orchestrator.js';
import { DEFAULTS, type GenerateJobSpec, type ServerDefaults } from '../services/orchestrator/settings.js';
import { median } from './bench-stats.js';
import { startInProcess, startSplit, type BenchSystem } from './bench-systems.js';
import { textTable } from './eval-report.js';
import { formatDuration } from './eval-progress.js';

export const LATENCY_CONTEXTS = [4096, 8192, 16384, 32768, 49152];
export const LATENCY_BUDGETS = [0.25, 0.33, 0.4, 0.5];
const SYSTEMS = ['in-process', 'split'] as const;
type SystemName = (typeof SYSTEMS)[number];

export interface LatencyOptions {
  contexts: number[];
  budgets: number[];
  systems: SystemName[];
  modes: ModeName[];
  warmup: number;
  steps: number;
  prefillChunk: number;
  model: string;
  json: boolean;
  quick: boolean;
  out?: string;
}

export const LATENCY_OPTIONS: Record<string, OptionSpec> = {
  context: { kind: 'multi', help: `prompt length in tokens (repeatable; default ${LATENCY_CONTEXTS.join(', ')}; --quick 256)` },
  budget: { kind: 'multi', help: `β of the smartkv rows (repeatable; default ${LATENCY_BUDGETS.join(', ')}; --quick 0.25)` },
  system: { kind: 'multi', help: `in-process or split (repeatable; default both)` },
  mode: { kind: 'multi', help: `precision mode of the smartkv rows (repeatable; default downgrade-only): ${MODE_NAMES.join(', ')}` },
  warmup: { kind: 'int', default: 10, help: 'decode steps before the measured ones' },
  steps: { kind: 'int', help: 'measured decode steps (default 80; --quick 8)' },
  'prefill-chunk': { kind: 'int', default: 1024, help: 'prompt tokens per prefill chunk (the prefill is not timed; larger chunks, fewer plans before decode starts)' },
  model: { kind: 'string', help: 'model folder (default: models/smartkv-ref-8k, the bundled 8K model)' },
  json: { kind: 'bool', default: false, help: 'one JSON object per cell instead of the table' },
  quick: { kind: 'bool', default: false, help: 'a tiny run (smoke test): context 256, fp16 / uniform-8 / smartkv β 0.25, 8 steps' },
  out: { kind: 'string', help: 'also write the rows as JSON lines into FILE (a line per cell as it is measured)' },
  help: { kind: 'bool', help: 'print this help' },
};

/** The served model (models/smartkv-ref-8k when present). */
function defaultLatencyModel(): string {
  return defaultModelDir();
}

export function parseLatencyOptions(argv: readonly string[]): LatencyOptions {
  const o = parseOptions(argv, LATENCY_OPTIONS);
  const list = (k: string) => (o[k] as string[] | undefined) ?? [];
  const quick = o.quick as boolean;
  const ints = list('context').map((v) => {
    const x = Number(v);
    if (!(Number.isInteger(x) && x >= 16 && x <= 1 << 20)) throw new UsageError(`--context must be an integer in [16, 1048576], got ${v}`);
    return x;
  });
  const budgets = list('budget').map((v) => {
    const x = Number(v);
    if (!(x > 0 && x <= 1)) throw new UsageError(`--budget must be a number in (0, 1], got ${v}`);
    return x;
  });
  for (const s of list('system')) if (!(SYSTEMS as readonly string[]).includes(s)) throw new UsageError(`--system must be ${SYSTEMS.join(' or ')}, got ${s}`);
  for (const m of list('mode')) if (!isModeName(m)) throw new UsageError(`--mode must be ${MODE_NAMES.join(' or ')}, got ${m}`);
  const warmup = o.warmup as number;
  if (!(warmup >= 0 && warmup <= 10_000)) throw new UsageError(`--warmup must be in [0, 10000], got ${warmup}`);
  const steps = (o.steps as number | undefined) ?? (quick ? 8 : 80);
  if (!(steps >= 1 && steps <= 100_000)) throw new UsageError(`--steps must be in [1, 100000], got ${steps}`);
  const prefillChunk = o['prefill-chunk'] as number;
  if (!(prefillChunk >= 16 && prefillChunk <= 8192)) throw new UsageError(`--prefill-chunk must be in [16, 8192], got ${prefillChunk}`);
  return {
    contexts: ints.length ? [...new Set(ints)].sort((a, b) => a - b) : quick ? [256] : LATENCY_CONTEXTS,
    budgets: budgets.length ? [...new Set(budgets)].sort((a, b) => a - b) : quick ? [0.25] : LATENCY_BUDGETS,
    systems: list('system').length ? SYSTEMS.filter((s) => list('system').includes(s)) : [...SYSTEMS],
    modes: list('mode').length ? MODE_NAMES.filter((m) => list('mode').includes(m)) : ['downgrade-only'],
    warmup: quick && o.warmup === LATENCY_OPTIONS.warmup.default ? 2 : warmup,
    steps,
    prefillChunk,
    model: (o.model as string | undefined) ?? defaultLatencyModel(),
    json: o.json as boolean,
    quick,
    out: o.out as string | undefined,
  };
}

export interface LatencyRow {
  system: SystemName;
  context: number; // prompt tokens before the first decode step
  policy: PolicyName;
  mode: ModeName;
  target_beta: number | null;
  achieved_beta: number; // hot / FP16 bytes at the end, metadata included
  hot_bytes: number; // the cache itself at the end (payload, scales, metadata)
  master_bytes: number; // the master tier (reversible only)
  fp16_bytes: number;
  budget_met: boolean;
  bits: { '16': number; '8': number; '4': number; '2': number; kivi: number }; // (token, layer) entries per bit-width at the end, as the cache counts them
  warmup: number;
  steps: number;
  decode_ms_mean: number; // wall time per measured token (step, plans, sampling)
  decode_ms_p50: number;
  step_ms_mean: number; // the model step alone
  tokens_per_s: number; // 1000 / decode_ms_mean
  reallocations: number; // over the whole sequence, prefill included
  prefill_s: number; // the prompt, not part of the latency
}

interface Cell { policy: PolicyName; beta: number | null; mode: ModeName }

export function latencyCells(o: Pick<LatencyOptions, 'budgets' | 'modes'>): Cell[] {
  const cells: Cell[] = [{ policy: 'fp16', beta: null, mode: 'downgrade-only' }, { policy: 'uniform-8', beta: null, mode: 'downgrade-only' }];
  for (const mode of o.modes) for (const beta of o.budgets) cells.push({ policy: 'smartkv', beta, mode });
  return cells;
}

/**
 * A folder that is `model` with max_position_embeddings raised to `positions`
 * (links to every other file). Timing only: RoPE frequencies do not depend on
 * that limit. The caller removes it.
 */
export function longPositionCopy(model: string, positions: number): string {
  const dir = mkdtempSync(join(tmpdir(), 'smartkv-latency-model-'));
  for (const f of readdirSync(model)) if (f !== 'config.json') symlinkSync(resolve(model, f), join(dir, f));
  const cfg = JSON.parse(readFileSync(join(model, 'config.json'), 'utf8')) as Record<string, unknown>;
  cfg.max_position_embeddings = Math.max(Number(cfg.max_position_embeddings ?? 0), positions);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
  return dir;
}

/** One sequence: prefill `context` tokens, then warm-up and measured decode steps at batch 1. */
async function measureCell(orch: Orchestrator, system: SystemName, context: number, cell: Cell, o: LatencyOptions): Promise<LatencyRow> {
  const steps: { rows: number; end: number; stepMs: number }[] = []; // [model steps] in order
  orch.scheduler.onStep = (s) => steps.push({ rows: s.rows, end: performance.now(), stepMs: s.stepUs / 1000 });
  // Ordinary text bytes (one token each for the byte-level model), BOS first.
  const text = Buffer.from('The committee met on Tuesday and said that the new bridge would open next spring. '.repeat(Math.ceil(context / 80) + 1));
  const spec: GenerateJobSpec = {
    kind: 'generate',
    prompt: [256, ...text.subarray(0, context - 1)],
    maxTokens: 1 + o.warmup + o.steps, // the first token comes from the prefill's last chunk
    sampling: { temperature: 0, topK: 0, topP: 1, seed: 1 },
    stop: [],
    cache: { ...DEFAULTS.cache, policy: cell.policy, beta: cell.beta ?? 1, mode: cell.mode },
  };
  let outcome;
  try {
    outcome = await orch.scheduler.submit(spec, {}).done;
  } finally {
    orch.scheduler.onStep = null;
  }
  // The last warmup + steps model steps are the decode steps (one row each); the ones before, the prefill.
  const decodeSteps = steps.slice(-(o.warmup + o.steps));
  const prefillMs = steps.slice(0, steps.length - decodeSteps.length).reduce((a, s) => a + s.stepMs, 0);
  // A measured step's latency: from the end of the step before it (so plans and sampling count).
  const lat: number[] = []; // [measured steps] ms
  for (let i = o.warmup; i < decodeSteps.length; i++) lat.push(i > 0 ? decodeSteps[i].end - decodeSteps[i - 1].end : decodeSteps[i].stepMs);
  const measuredSteps = decodeSteps.slice(o.warmup).map((s) => s.stepMs);
  const b = budgetReport(outcome.cache, spec.cache);
  const fmt = outcome.cache.bytes?.tokensByFormat ?? [0, 0, 0, 0];
  const mean = (xs: number[]) => (xs.length ? xs.reduce((a, x) => a + x, 0) / xs.length : NaN);
  const r3 = (x: number) => Math.round(x * 1000) / 1000;
  const decode = mean(lat);
  return {
    system, context, policy: cell.policy, mode: cell.mode, target_beta: cell.beta,
    achieved_beta: Math.round(b.achievedBeta * 1e4) / 1e4, hot_bytes: b.hotBytes, master_bytes: b.masterBytes, fp16_bytes: b.fp16Bytes, budget_met: b.budgetMet,
    bits: { '16': fmt[0], '8': fmt[1], '4': fmt[2], '2': fmt[3], kivi: outcome.cache.bytes?.kiviTokens ?? 0 },
    warmup: o.warmup, steps: lat.length,
    decode_ms_mean: r3(decode), decode_ms_p50: r3(median(lat)), step_ms_mean: r3(mean(measuredSteps)), tokens_per_s: r3(1000 / decode),
    reallocations: outcome.cache.reallocations, prefill_s: r3(prefillMs / 1000),
  };
}

interface Io {
  out: (line: string) => void;
  progress: (line: string) => void;
}

export async function benchLatency(o: LatencyOptions, io: Io): Promise<LatencyRow[]> {
  const longest = Math.max(...o.contexts) + 1 + o.warmup + o.steps;
  const model = longPositionCopy(o.model, longest);
  const defaults: ServerDefaults = { ...DEFAULTS, prefillChunk: o.prefillChunk, maxBatch: 1 };
  const cells = latencyCells(o);
  const rows: LatencyRow[] = [];
  const total = o.systems.length * o.contexts.length * cells.length;
  if (o.out) writeFileSync(o.out, ''); // a line per cell as it is measured: an interrupted run keeps what it measured
  const t0 = performance.now();
  io.progress(`bench latency: ${o.model} (positions raised to ${longest} for timing), ${o.systems.join(' and ')}, contexts ${o.contexts.join(', ')}, ${cells.length} rows, ${o.warmup} warm-up + ${o.steps} measured decode steps: ${total} sequences`);
  try {
    for (const system of o.systems) {
      let sys: BenchSystem | null = null;
      try {
        sys = system === 'in-process'
          ? await startInProcess(model, defaults, () => undefined)
          : await startSplit(model, defaults, ['--max-attend-rows', String(o.prefillChunk + defaults.maxBatch)], () => undefined);
        for (const context of o.contexts) {
          for (const cell of cells) {
            const row = await measureCell(sys.orch, system, context, cell, o);
            rows.push(row);
            if (o.out) appendFileSync(o.out, JSON.stringify(row) + '\n');
            const elapsed = performance.now() - t0;
            io.progress(
              `[${rows.length}/${total}] ${system} ${context} ${label(row)}: ${row.decode_ms_mean.toFixed(2)} ms/token (step ${row.step_ms_mean.toFixed(2)} ms), β ${row.achieved_beta.toFixed(3)}, ` +
                `hot ${(row.hot_bytes / 1e6).toFixed(2)} MB, master ${(row.master_bytes / 1e6).toFixed(2)} MB; prefill ${row.prefill_s.toFixed(1)} s; elapsed ${formatDuration(elapsed)}, ETA ${formatDuration((elapsed * (total - rows.length)) / rows.length)}`,
            );
          }
        }
      } finally {
        await sys?.stop();
      }
    }
  } finally {
    rmSync(model, { recursive: true, force: true });
  }
  if (o.json) for (const r of rows) io.out(JSON.stringify(r));
  else for (const l of latencyTable(rows, o)) io.out(l);
  return rows;
}

const label = (r: Pick<LatencyRow, 'policy' | 'target_beta' | 'mode'>) => (r.target_beta === null ? r.policy : `${r.policy} β ${r.target_beta}`) + (r.mode === 'reversible' ? ' (rev)' : '');

/** The table: one line per cell, with its latency relative to fp16 at the same system and context. */
export function latencyTable(rows: LatencyRow[], o: Pick<LatencyOptions, 'model' | 'warmup' | 'steps'>): string[] {
  const pct = (n: number, of: number) => (of > 0 ? `${Math.round((100 * n) / of)}` : '0');
  const out = [`SmartKV latency sweep: ${o.model}, batch 1, mean over ${o.steps} decode steps after ${o.warmup} warm-up; wall time per token (step, plans, sampling)`, ''];
  const table = {
    columns: [
      { title: 'system' }, { title: 'context', right: true }, { title: 'row' }, { title: 'ms/token', right: true }, { title: '× fp16', right: true }, { title: 'step ms', right: true },
      { title: 'β achieved', right: true }, { title: 'hot MB', right: true }, { title: 'master MB', right: true }, { title: '% 16/8/4/2 bits', right: true },
    ],
    rows: rows.map((r) => {
      const fp16 = rows.find((x) => x.system === r.system && x.context === r.context && x.policy === 'fp16');
      const n = r.bits['16'] + r.bits['8'] + r.bits['4'] + r.bits['2'];
      return [
        r.system, String(r.context), label(r), r.decode_ms_mean.toFixed(2), fp16 ? (r.decode_ms_mean / fp16.decode_ms_mean).toFixed(2) : '—', r.step_ms_mean.toFixed(2),
        r.achieved_beta.toFixed(3), (r.hot_bytes / 1e6).toFixed(2), (r.master_bytes / 1e6).toFixed(2),
        [r.bits['16'], r.bits['8'], r.bits['4'], r.bits['2']].map((x) => pct(x, n)).join('/'),
      ];
    }),
  };
  return [...out, ...textTable(table)];
}
