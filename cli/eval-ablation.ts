// `smartkv eval ablation`: the method's knobs one at a time, each as a row
// scored on the same samples as the default smartkv configuration, with the
// suite's statistics (exact McNemar for accuracy, paired bootstrap for bits
// per byte) and its JSON conventions.
//
//   rows      fp16 (the reference for Δ bits/byte), `default` (smartkv at β,
//             every knob at the server default, sent explicitly), and one row
//             per variant of each asked ablation:
//               gamma       γ ∈ {0.85, 0.95}            (default 0.9)
//               interval    R ∈ {4, 8, 32, 64}          (default 16)
//               window      window ∈ {0, 16, 256}       (default 64)
//               sinks       sinks ∈ {0, 16}             (default 4)
//               importance  normalised                  (default accumulated)
//               layers      per-layer                   (default shared)
//               horizon     now, prompt, end: when β binds during the prefill (default prompt)
//               random      policy random: smartkv's bit histogram on random tokens
//             A variant changes one knob; everything else is the default row's.
//   samples   the suite's (eval-tasks.ts), the same for every row; `longppl`
//             gives bits per byte per position band (0–1K, ≥1K, ≥4K, all),
//             the ablation's signal while the model cannot do the retrieval tasks.
//   outputs   <out>/samples.jsonl  one line per (sample, row)
//             <out>/rows.jsonl     one line per (task, context, row)
//             <out>/compare.jsonl  each variant vs default (and default vs fp16), per band for longppl
//             <out>/ablation.svg   Δ against default with 95 % intervals
//             <out>/command.txt
//
// Every knob travels in the request's CacheSettings, so the driver measures
// through any running orchestrator (--server) as well as a local split system.
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';

import { CacheSettingsSchema, ImportanceMode, LayerMode } from '../gen/smartkv/v1/common_pb.js';
import { ScoreRequestSchema } from '../gen/smartkv/v1/generation_pb.js';
import { parseOptions, UsageError, type OptionSpec } from '../services/common/args.js';
import { isModeName, MODE_NAMES, modeToPb, policyToPb, type ModeName, type PolicyName } from '../services/common/policy.js';
import { DEFAULTS, HORIZON_NAMES, horizonToPb, type HorizonName } from '../services/orchestrator/settings.js';
import { budgetFields } from './budget-fields.js';
import { round, runPool, withServer, type EvalIo } from './eval-common.js';
import { ablationSpec, renderSvg, type AblationPoint } from './eval-plot.js';
import { formatDuration, Progress } from './eval-progress.js';
import { fixed, markdownReport, modelLine, nowIso, pText, textReport, writeMarkdownSection, type Report, type Table } from './eval-report.js';
import { pairedAccuracy, pairedBootstrap } from './eval-stats.js';
import { aggregate, type SampleOutcome, type SuiteResultRow } from './eval-suite.js';
import { buildSamples, CONT_BAND, isPplTask, PPL_BANDS, scoreOutcome, SUITE_TASKS, type SeedSet, type SuiteTask, type TaskSample } from './eval-tasks.js';

export const ABLATION_NAMES = ['gamma', 'interval', 'window', 'sinks', 'importance', 'layers', 'horizon', 'random'] as const;
export type AblationName = (typeof ABLATION_NAMES)[number];

/** What one row sends: the policy and every knob (nothing is left to the server's defaults). */
export interface Knobs {
  policy: PolicyName;
  gamma: number;
  interval: number; // reallocation interval R (decode steps)
  window: number; // recent tokens kept at 16 bits
  sinks: number; // first tokens kept at 16 bits
  importance: 'accumulated' | 'normalised';
  layers: 'shared' | 'per-layer';
  horizon: HorizonName; // when β binds during the prefill
}

export const DEFAULT_KNOBS: Knobs = {
  policy: 'smartkv',
  gamma: DEFAULTS.cache.gamma,
  interval: DEFAULTS.cache.reallocInterval,
  window: DEFAULTS.cache.window,
  sinks: DEFAULTS.cache.sinks,
  importance: DEFAULTS.cache.normalised ? 'normalised' : 'accumulated',
  layers: DEFAULTS.cache.perLayer ? 'per-layer' : 'shared',
  horizon: DEFAULTS.cache.horizon,
};

/** The grid per ablation; values equal to the default are the default row itself. */
const GRID: Record<AblationName, (Partial<Knobs> & { label: string })[]> = {
  gamma: [0.85, 0.9, 0.95].map((gamma) => ({ gamma, label: `gamma=${gamma}` })),
  interval: [4, 8, 16, 32, 64].map((interval) => ({ interval, label: `R=${interval}` })),
  window: [0, 16, 64, 256].map((window) => ({ window, label: `window=${window}` })),
  sinks: [0, 4, 16].map((sinks) => ({ sinks, label: `sinks=${sinks}` })),
  importance: [{ importance: 'accumulated', label: 'importance=accumulated' }, { importance: 'normalised', label: 'importance=normalised' }],
  layers: [{ layers: 'shared', label: 'layers=shared' }, { layers: 'per-layer', label: 'layers=per-layer' }],
  horizon: [{ horizon: 'now', label: 'horizon=now' }, { horizon: 'prompt', label: 'horizon=prompt' }, { horizon: 'end', label: 'horizon=end' }],
  random: [{ policy: 'random', label: 'policy=random' }],
};

export interface AblationRow {
  ablation: AblationName | null; // null: a reference row (fp16, default)
  variant: string; // fp16 | default | e.g. gamma=0.85
  knobs: Knobs;
}

const sameKnobs = (a: Knobs, b: Knobs) => (Object.keys(a) as (keyof Knobs)[]).every((k) => a[k] === b[k]);

/** fp16, default, then each asked ablation's variants that differ from the default. */
export function ablationRows(names: readonly AblationName[], base: Knobs = DEFAULT_KNOBS): AblationRow[] {
  const rows: AblationRow[] = [
    { ablation: null, variant: 'fp16', knobs: { ...base, policy: 'fp16' } },
    { ablation: null, variant: 'default', knobs: base },
  ];
  for (const name of ABLATION_NAMES.filter((n) => names.includes(n)))
    for (const { label, ...change } of GRID[name]) {
      const knobs = { ...base, ...change };
      if (!sameKnobs(knobs, base)) rows.push({ ablation: name, variant: label, knobs });
    }
  return rows;
}

/** The request's cache settings for a row: every knob explicit. */
export function ablationSettings(k: Knobs, beta: number, mode: ModeName) {
  return create(CacheSettingsSchema, {
    policy: policyToPb(k.policy),
    budget: k.policy === 'fp16' ? 1 : beta,
    mode: modeToPb(mode),
    gamma: k.gamma,
    reallocInterval: k.interval,
    window: k.window,
    sinks: k.sinks,
    importance: k.importance === 'normalised' ? ImportanceMode.NORMALISED : ImportanceMode.ACCUMULATED,
    layers: k.layers === 'per-layer' ? LayerMode.PER_LAYER : LayerMode.SHARED,
    horizon: horizonToPb(k.horizon),
  });
}

export interface AblationOptions {
  ablations: AblationName[];
  tasks: SuiteTask[];
  contexts: number[];
  budget: number;
  mode: ModeName;
  seeds: SeedSet;
  samples: number;
  concurrency: number;
  out: string | null;
  json: boolean;
  quick: boolean;
  server?: string;
  model?: string;
  markdown?: string;
  horizon: HorizonName; // the default row's budget horizon (every variant keeps it unless the horizon ablation changes it)
}

export const ABLATION_DEFAULTS = { tasks: ['longppl', 'multikey'] as SuiteTask[], contexts: [4096], budget: 0.25, samples: 4 };

export const ABLATION_OPTIONS: Record<string, OptionSpec> = {
  ablation: { kind: 'multi', help: `only this ablation (repeatable; default all): ${ABLATION_NAMES.join(', ')}` },
  task: { kind: 'multi', help: `task (repeatable; default ${ABLATION_DEFAULTS.tasks.join(', ')}): ${SUITE_TASKS.join(', ')}` },
  context: { kind: 'multi', help: `context length in tokens (repeatable; default ${ABLATION_DEFAULTS.contexts.join(', ')})` },
  budget: { kind: 'number', default: ABLATION_DEFAULTS.budget, help: 'β of every budgeted row' },
  mode: { kind: 'string', default: 'downgrade-only', help: `precision mode of every row: ${MODE_NAMES.join(' or ')}` },
  seeds: { kind: 'string', default: 'dev', help: 'dev (tuning; the default) or test (published tables: run once)' },
  samples: { kind: 'int', help: `samples per task × context (default ${ABLATION_DEFAULTS.samples}; --quick 1)` },
  concurrency: { kind: 'int', default: 4, help: 'requests in flight (results do not depend on it: Score is batch-invariant)' },
  out: { kind: 'string', help: 'folder for samples.jsonl, rows.jsonl, compare.jsonl, ablation.svg (default: none)' },
  json: { kind: 'bool', default: false, help: 'rows and comparisons as JSON lines instead of tables' },
  quick: { kind: 'bool', default: false, help: 'a tiny run (smoke test): importance and random at 512 tokens, passkey and longppl, 1 sample' },
  server: { kind: 'string', help: 'measure through this running orchestrator (default: start a local split system)' },
  model: { kind: 'string', help: 'model folder of the local split system (default: models/smartkv-ref-8k, the bundled 8K model)' },
  markdown: { kind: 'string', help: 'also write the tables as a Markdown section into FILE' },
  horizon: { kind: 'string', default: DEFAULT_KNOBS.horizon, help: `budget horizon of the default row and its variants: ${HORIZON_NAMES.join(', ')}` },
  help: { kind: 'bool', help: 'print this help' },
};

export function parseAblationOptions(argv: readonly string[]): AblationOptions {
  const o = parseOptions(argv, ABLATION_OPTIONS);
  const list = (k: string) => (o[k] as string[] | undefined) ?? [];
  for (const a of list('ablation')) if (!(ABLATION_NAMES as readonly string[]).includes(a)) throw new UsageError(`--ablation: unknown ablation ${a}; one of ${ABLATION_NAMES.join(', ')}`);
  for (const t of list('task')) if (!(SUITE_TASKS as readonly string[]).includes(t)) throw new UsageError(`--task: unknown task ${t}; one of ${SUITE_TASKS.join(', ')}`);
  const contexts = list('context').map((v) => {
    const x = Number(v);
    if (!(Number.isInteger(x) && x >= 64 && x <= 1 << 20)) throw new UsageError(`--context must be an integer in [64, 1048576], got ${v}`);
    return x;
  });
  const budget = o.budget as number;
  if (!(budget > 0 && budget <= 1)) throw new UsageError(`--budget must be in (0, 1], got ${budget}`);
  const mode = o.mode as string;
  if (!isModeName(mode)) throw new UsageError(`--mode must be ${MODE_NAMES.join(' or ')}, got ${mode}`);
  const seeds = o.seeds as string;
  if (seeds !== 'dev' && seeds !== 'test') throw new UsageError(`--seeds must be dev or test, got ${seeds}`);
  const quick = o.quick as boolean;
  const samples = (o.samples as number | undefined) ?? (quick ? 1 : ABLATION_DEFAULTS.samples);
  if (samples < 1) throw new UsageError(`--samples must be ≥ 1, got ${samples}`);
  const concurrency = o.concurrency as number;
  if (!(concurrency >= 1 && concurrency <= 64)) throw new UsageError(`--concurrency must be in [1, 64], got ${concurrency}`);
  const named = list('ablation') as AblationName[];
  const horizon = o.horizon as string;
  if (!(HORIZON_NAMES as readonly string[]).includes(horizon)) throw new UsageError(`--horizon must be ${HORIZON_NAMES.join(', ')}; got ${horizon}`);
  return {
    ablations: named.length ? ABLATION_NAMES.filter((n) => named.includes(n)) : quick ? ['importance', 'random'] : [...ABLATION_NAMES],
    tasks: list('task').length ? [...new Set(list('task'))] as SuiteTask[] : quick ? ['passkey', 'longppl'] : ABLATION_DEFAULTS.tasks,
    contexts: contexts.length ? [...new Set(contexts)].sort((a, b) => a - b) : quick ? [512] : ABLATION_DEFAULTS.contexts,
    budget,
    mode,
    seeds,
    samples,
    concurrency,
    out: (o.out as string | undefined) ?? null,
    json: o.json as boolean,
    quick,
    server: o.server as string | undefined,
    model: o.model as string | undefined,
    markdown: o.markdown as string | undefined,
    horizon: horizon as HorizonName,
  };
}

/** One line of samples.jsonl: the suite's sample line, plus which ablation row it is. */
export interface AblationSample extends SampleOutcome {
  ablation: AblationName | null;
  variant: string;
}

/** One line of rows.jsonl: the suite's row, plus the ablation, the variant and every knob it sent. */
export interface AblationResultRow extends SuiteResultRow {
  ablation: AblationName | null;
  variant: string;
  settings: { gamma: number; realloc_interval: number; window: number; sinks: number; importance: string; layers: string };
}

/** One line of compare.jsonl. */
export interface AblationComparison {
  compare: string; // "<variant>-vs-default" or "default-vs-fp16"
  ablation: AblationName | null;
  variant: string;
  task: SuiteTask;
  context: number;
  mode: ModeName;
  target_beta: number;
  n: number;
  diff: number; // the row minus the reference: accuracy (fraction) or bits per byte (negative is better)
  ci95: [number, number];
  p_value: number;
  metric: string; // accuracy | answer_bits | bits_per_byte <band>
}

/** Position bands a context reaches (a band needs at least one prediction in it). */
/** The bands a perplexity task reports at a context. */
export const bandsOf = (task: SuiteTask, context: number): string[] => (task === 'contppl' ? [CONT_BAND] : bandsAt(context));

export function bandsAt(context: number): string[] {
  return Object.entries(PPL_BANDS).filter(([, [a]]) => a < context - 1).map(([b]) => b);
}

/** The band that says most about long context: the farthest one the context reaches. */
export function focusBand(context: number): string {
  return context > 4096 + 1 ? '≥4K' : context > 1024 + 1 ? '≥1K' : 'all';
}

function compareRows(task: SuiteTask, context: number, mine: AblationSample[], theirs: AblationSample[], base: Omit<AblationComparison, 'task' | 'context' | 'n' | 'diff' | 'ci95' | 'p_value' | 'metric'>): AblationComparison[] {
  const head = { ...base, task, context, n: mine.length };
  if (!isPplTask(task)) {
    const p = pairedAccuracy(mine.map((x) => x.correct), theirs.map((x) => x.correct));
    const b = pairedBootstrap(mine.map((x) => x.answerBits ?? NaN), theirs.map((x) => x.answerBits ?? NaN));
    return [
      { ...head, diff: round(p.diff, 4), ci95: [round(p.ci95[0], 4), round(p.ci95[1], 4)], p_value: p.pValue, metric: 'accuracy' },
      { ...head, diff: round(b.diff, 5), ci95: [round(b.ci95[0], 5), round(b.ci95[1], 5)], p_value: b.pValue, metric: 'answer_bits' },
    ];
  }
  return bandsOf(task, context).map((band) => {
    const p = pairedBootstrap(mine.map((x) => x.bitsPerByte![band]), theirs.map((x) => x.bitsPerByte![band]));
    return { ...head, diff: round(p.diff, 5), ci95: [round(p.ci95[0], 5), round(p.ci95[1], 5)], p_value: p.pValue, metric: `bits_per_byte ${band}` };
  });
}

const settingsOf = (k: Knobs): AblationResultRow['settings'] => ({ gamma: k.gamma, realloc_interval: k.interval, window: k.window, sinks: k.sinks, importance: k.importance, layers: k.layers });

export async function evalAblation(o: AblationOptions, io: EvalIo, command: string): Promise<{ rows: AblationResultRow[]; compare: AblationComparison[] }> {
  const rows = ablationRows(o.ablations, { ...DEFAULT_KNOBS, horizon: o.horizon });
  const local = { server: o.server, model: o.model, mode: o.mode, rotateKv: true, quant: 'symmetric', importance: 'accumulated', layers: 'shared', window: undefined, gamma: undefined };
  return withServer(local, io, async ({ client, info, where }) => {
    if (info.vocab !== 258) throw new Error(`the ablations score bytes: they need the byte-level reference model (vocabulary 258), the server has ${info.vocab}`);
    const contexts = o.contexts.filter((c) => c <= info.maxPositions);
    const skipped = o.contexts.filter((c) => c > info.maxPositions);
    if (skipped.length) io.err.write(`eval ablation: skipping context ${skipped.join(', ')} (the model holds ${info.maxPositions} positions)\n`);
    if (!contexts.length) throw new Error(`no context of ${o.contexts.join(', ')} tokens fits the model's ${info.maxPositions} positions`);
    const samples = await buildSamples(o.tasks, contexts, o.samples, o.seeds);
    if (o.out) {
      mkdirSync(o.out, { recursive: true });
      writeFileSync(join(o.out, 'command.txt'), `${command}\n# ${nowIso()}; seeds: ${o.seeds} (declared in cli/eval-tasks.ts); ${samples.length} samples × ${rows.length} rows; β ${o.budget}, ${o.mode}\n`);
      writeFileSync(join(o.out, 'samples.jsonl'), '');
    }
    const items = samples.flatMap((s, si) => rows.map((r, ri) => ({ s, si, r, ri }))); // sample-major: a steady ETA
    io.err.write(`eval ablation: ${rows.length} rows (${rows.map((r) => r.variant).join(', ')}) × ${samples.length} samples = ${items.length} Score requests, ${o.concurrency} in flight (${where})\n`);
    const work = (it: { s: TaskSample }) => it.s.text.length;
    const progress = new Progress('eval ablation', items.length, io.err, items.reduce((a, it) => a + work(it), 0));
    const outcomes = rows.map(() => new Array<AblationSample>(samples.length)); // [row][sample]
    try {
      await runPool(items, o.concurrency, async (it) => {
        const res = await client.scoreRequest(create(ScoreRequestSchema, { text: it.s.text, prefillTokens: it.s.prefillTokens, cache: ablationSettings(it.r.knobs, o.budget, o.mode) }));
        const b = budgetFields(res.summary?.budget);
        const out: AblationSample = {
          task: it.s.task, context: it.s.context, seed: it.s.seed, depth: it.s.depth === null ? null : round(it.s.depth, 4),
          ablation: it.r.ablation, variant: it.r.variant,
          policy: it.r.knobs.policy, mode: o.mode, target_beta: it.r.knobs.policy === 'fp16' ? null : o.budget, achieved_beta: round(b.achieved_beta, 4),
          hot_bytes: b.hot_bytes, peak_hot_bytes: b.peak_hot_bytes, master_bytes: b.master_bytes, fp16_bytes: b.fp16_bytes, budget_met: b.budget_met, ...scoreOutcome(it.s, res),
        };
        outcomes[it.ri][it.si] = out;
        if (o.out) appendFileSync(join(o.out, 'samples.jsonl'), JSON.stringify(out) + '\n');
      }, (_r, it) => progress.tick(work(it)));
    } finally {
      progress.finish();
    }
    const results: AblationResultRow[] = [];
    const compare: AblationComparison[] = [];
    for (const task of o.tasks) {
      for (const context of contexts) {
        const pick = rows.map((_r, ri) => outcomes[ri].filter((x) => x.task === task && x.context === context));
        rows.forEach((r, ri) => {
          const row = aggregate(task, context, { policy: r.knobs.policy, targetBeta: r.knobs.policy === 'fp16' ? null : o.budget, mode: o.mode }, pick[ri]);
          results.push({ ...row, ablation: r.ablation, variant: r.variant, settings: settingsOf(r.knobs) });
        });
        const def = pick[1]; // rows[1] is the default row
        const baseOf = (r: AblationRow, vs: string) => ({ compare: `${r.variant}-vs-${vs}`, ablation: r.ablation, variant: r.variant, mode: o.mode, target_beta: o.budget });
        compare.push(...compareRows(task, context, def, pick[0], baseOf(rows[1], 'fp16')));
        rows.forEach((r, ri) => {
          if (ri >= 2) compare.push(...compareRows(task, context, pick[ri], def, baseOf(r, 'default')));
        });
      }
    }
    if (o.out) {
      writeFileSync(join(o.out, 'rows.jsonl'), results.map((r) => JSON.stringify(r)).join('\n') + '\n');
      writeFileSync(join(o.out, 'compare.jsonl'), compare.map((r) => JSON.stringify(r)).join('\n') + '\n');
      const points: AblationPoint[] = compare.filter((c) => c.compare.endsWith('-vs-default')).map((c) => ({ panel: `${c.task} @ ${c.context}: ${c.metric}`, variant: c.variant, diff: c.diff, lo: c.ci95[0], hi: c.ci95[1] }));
      if (points.length) writeFileSync(join(o.out, 'ablation.svg'), await renderSvg(ablationSpec(points, `Ablations against smartkv's defaults at β ${o.budget} (${o.mode}): difference with 95 % paired interval`)));
    }
    const report = ablationReport(o, results, compare, { info, where, command, samples: samples.length, contexts, elapsedMs: progress.elapsedMs, requests: items.length, rows });
    if (o.json) for (const r of [...results, ...compare]) io.out(JSON.stringify(r));
    else for (const l of textReport(report)) io.out(l);
    if (o.markdown) writeMarkdownSection(o.markdown, 'ablation', markdownReport(report, '###'));
    io.err.write(`eval ablation: done in ${formatDuration(progress.elapsedMs)}\n`);
    return { rows: results, compare };
  });
}

interface RunInfo { info: import('../gen/smartkv/v1/generation_pb.js').InfoResponse; where: string; command: string; samples: number; contexts: number[]; elapsedMs: number; requests: number; rows: AblationRow[] }

const signed = (x: number, digits: number) => `${x >= 0 ? '+' : ''}${x.toFixed(digits)}`;

function ablationReport(o: AblationOptions, results: AblationResultRow[], compare: AblationComparison[], run: RunInfo): Report {
  const sections: Report['sections'] = [];
  for (const task of o.tasks) {
    for (const context of run.contexts) {
      const mine = results.filter((r) => r.task === task && r.context === context);
      const cmp = compare.filter((c) => c.task === task && c.context === context);
      sections.push({ title: `${task} @ ${context} tokens: every row on the same ${mine[0]?.n ?? 0} samples`, table: isPplTask(task) ? pplTable(mine, cmp, task, context) : accuracyTable(mine, cmp), notes: [
        `  Δ: the row minus default (default: minus fp16) ${isPplTask(task) ? 'in bits per byte, negative is better; paired bootstrap p' : 'in accuracy points, positive is better; exact McNemar p'}; 95 % paired bootstrap interval.`,
      ] });
    }
  }
  const k = { ...DEFAULT_KNOBS, horizon: o.horizon };
  return {
    title: 'SmartKV ablations: one knob at a time against the default configuration, paired',
    date: nowIso(),
    command: run.command,
    settings: [
      ['model', modelLine(run.info)],
      ['served by', run.where],
      ['samples', `${run.samples} (${o.samples} per task × context); ${o.seeds} seeds; held-out phrasings and documents; the same samples for every row`],
      ['default row', `smartkv β ${o.budget}, ${o.mode}, γ ${k.gamma}, R ${k.interval}, window ${k.window}, sinks ${k.sinks}, ${k.importance} importance, ${k.layers} plans, budget horizon ${k.horizon} (every knob sent with each request)`],
      ['rows', run.rows.map((r) => r.variant).join(', ')],
    ],
    sections,
    footer: [`elapsed ${formatDuration(run.elapsedMs)} (${run.requests} Score requests, ${o.concurrency} in flight)`],
  };
}

function deltaCell(c: AblationComparison | undefined, digits: number, scale = 1): string {
  if (!c) return '—';
  return `${signed(scale * c.diff, digits)} [${signed(scale * c.ci95[0], digits)}, ${signed(scale * c.ci95[1], digits)}]`;
}

function pplTable(rows: AblationResultRow[], cmp: AblationComparison[], task: SuiteTask, context: number): Table {
  const bands = bandsOf(task, context), focus = task === 'contppl' ? CONT_BAND : focusBand(context);
  return {
    columns: [{ title: 'row' }, { title: 'β achieved', right: true }, { title: 'hot kB', right: true }, ...bands.map((b) => ({ title: `bpb ${b}`, right: true })), { title: `Δ ${focus} [95 % CI]`, right: true }, { title: 'p', right: true }],
    rows: rows.map((r) => {
      const c = cmp.find((x) => x.variant === r.variant && x.metric === `bits_per_byte ${focus}`);
      return [r.variant, fixed(r.achieved_beta, 3), (r.hot_bytes / 1e3).toFixed(0), ...bands.map((b) => fixed(r.bits_per_byte?.[b] ?? null, 4)), deltaCell(c, 4), c ? pText(c.p_value) : '—'];
    }),
  };
}

function accuracyTable(rows: AblationResultRow[], cmp: AblationComparison[]): Table {
  return {
    columns: [{ title: 'row' }, { title: 'β achieved', right: true }, { title: 'hot kB', right: true }, { title: 'accuracy', right: true }, { title: 'Δ points [95 % CI]', right: true }, { title: 'p', right: true }, { title: 'answer bits', right: true }, { title: 'Δ bits [95 % CI]', right: true }, { title: 'p', right: true }],
    rows: rows.map((r) => {
      const c = cmp.find((x) => x.variant === r.variant && x.metric === 'accuracy');
      const b = cmp.find((x) => x.variant === r.variant && x.metric === 'answer_bits');
      return [r.variant, fixed(r.achieved_beta, 3), (r.hot_bytes / 1e3).toFixed(0), `${(100 * (r.accuracy ?? NaN)).toFixed(1)} %`, deltaCell(c, 1, 100), c ? pText(c.p_value) : '—', fixed(r.answer_bits ?? null, 3), deltaCell(b, 3), b ? pText(b.p_value) : '—'];
    }),
  };
}
