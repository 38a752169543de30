// `smartkv eval suite` (and `smartkv eval <task>`): long-context tasks that can
// tell policies apart, every row at its honest bytes, with paired statistics
// and the accuracy–memory frontier.
//
//   samples  (task × context × seed, eval-tasks.ts)   the same for every row
//   rows     policy × β × mode (uniform and KIVI rows never raise precision, so
//            they run in downgrade-only only)
//   outputs  <out>/samples.jsonl   one line per (sample, row): the outcome and its bytes
//            <out>/rows.jsonl      one line per (task, context, row)
//            <out>/compare.jsonl   smartkv vs random / uniform-2 / uniform-4, paired
//            <out>/frontier-*.svg  accuracy against hot (end), total and peak bytes; answer bits
//            <out>/command.txt     the command and the declared seeds
//
// Several requests are in flight (--concurrency, default 4). The scheduler is batch-invariant for a
// sequence (prefill chunks and plans depend on the sequence alone, the dense
// kernels compute every row alike), and test/integration/eval-suite.test.ts
// checks that Score results are identical alone and in a batch; --concurrency
// raises throughput on that basis.
import { mkdirSync, writeFileSync, appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';

import { CacheSettingsSchema } from '../gen/smartkv/v1/common_pb.js';
import { ScoreRequestSchema, type ScoreResponse } from '../gen/smartkv/v1/generation_pb.js';
import { parseOptions, UsageError, type OptionSpec } from '../services/common/args.js';
import { isModeName, isPolicyName, MODE_NAMES, modeToPb, policyToPb, POLICY_NAMES, type ModeName, type PolicyName } from '../services/common/policy.js';
import { HORIZON_NAMES, horizonToPb, type HorizonName } from '../services/orchestrator/settings.js';
import { budgetFields } from './budget-fields.js';
import { BUDGETED, mean, round, runPool, withServer, type EvalIo } from './eval-common.js';
import { renderSvg, frontierSpec, type PlotRow } from './eval-plot.js';
import { formatDuration, Progress } from './eval-progress.js';
import { fixed, markdownReport, modelLine, nowIso, textReport, writeMarkdownSection, type Report, type Table } from './eval-report.js';
import { pairedAccuracy, pairedBootstrap } from './eval-stats.js';
import { buildSamples, CONT_BAND, isPplTask, scoreOutcome, SUITE_TASKS, type Scored, type SeedSet, type SuiteTask, type TaskSample } from './eval-tasks.js';

export const SUITE_BUDGETS = [0.2, 0.25, 0.33, 0.4, 0.5];
export const SUITE_CONTEXTS = [2048, 4096, 8192];
const NEVER_UPGRADE: readonly PolicyName[] = ['fp16', 'uniform-8', 'uniform-4', 'uniform-2', 'kivi-2', 'kivi-4', 'kivi-2-rot', 'kivi-4-rot'];
// fp16 too: the reversible mode's goal is to stay within a point of it.
const COMPARE_WITH: readonly PolicyName[] = ['random', 'uniform-2', 'uniform-4', 'fp16'];

export interface SuiteOptions {
  tasks: SuiteTask[];
  contexts: number[];
  policies: PolicyName[];
  budgets: number[];
  modes: ModeName[];
  seeds: SeedSet;
  samples: number; // per (task, context)
  concurrency: number;
  out: string | null;
  json: boolean;
  quick: boolean;
  server?: string;
  model?: string; // model folder of the local split system
  markdown?: string;
  gamma?: number;
  interval?: number;
  window?: number;
  sinks?: number;
  horizon?: HorizonName; // sent with every request; unset: the server's default
}

export const SUITE_OPTIONS: Record<string, OptionSpec> = {
  task: { kind: 'multi', help: `only this task (repeatable): ${SUITE_TASKS.join(', ')}` },
  context: { kind: 'multi', help: `context length in tokens (repeatable; default ${SUITE_CONTEXTS.join(', ')}, those the model holds)` },
  policy: { kind: 'multi', help: `only this policy (repeatable): ${POLICY_NAMES.join(', ')}` },
  budget: { kind: 'multi', help: `β for ${BUDGETED.join(', ')} (repeatable; default ${SUITE_BUDGETS.join(', ')})` },
  mode: { kind: 'multi', help: `precision mode of the budgeted rows (repeatable; default both: ${MODE_NAMES.join(', ')})` },
  seeds: { kind: 'string', default: 'dev', help: 'dev (tuning; the default) or test (the published tables: run once, never tune on them)' },
  samples: { kind: 'int', help: 'samples per task × context (default 4; --quick 1)' },
  concurrency: { kind: 'int', default: 4, help: 'requests in flight (results do not depend on it: Score is batch-invariant, tested)' },
  out: { kind: 'string', help: 'folder for samples.jsonl, rows.jsonl, compare.jsonl and the SVG plots (default: none)' },
  json: { kind: 'bool', default: false, help: 'rows and comparisons as JSON lines instead of tables' },
  quick: { kind: 'bool', default: false, help: 'a tiny run (smoke test): 2 tasks, 1 sample, 3 rows' },
  server: { kind: 'string', help: 'measure through this running orchestrator (default: start a local split system)' },
  model: { kind: 'string', help: 'model folder of the local split system (default: models/smartkv-ref-8k, the bundled 8K model)' },
  markdown: { kind: 'string', help: 'also write the tables as a Markdown section into FILE' },
  gamma: { kind: 'number', help: 'importance EMA factor γ sent with every request (ablation)' },
  interval: { kind: 'int', help: 'reallocation interval R sent with every request (ablation)' },
  window: { kind: 'int', help: 'recent window kept at 16 bits, sent with every request (ablation)' },
  sinks: { kind: 'int', help: 'sink tokens kept at 16 bits, sent with every request (ablation)' },
  horizon: { kind: 'string', help: `budget horizon sent with every request: ${HORIZON_NAMES.join(', ')} (default: the server's, prompt unless started otherwise)` },
  help: { kind: 'bool', help: 'print this help' },
};

export function parseSuiteOptions(argv: readonly string[], onlyTask?: SuiteTask): SuiteOptions {
  const o = parseOptions(argv, SUITE_OPTIONS);
  const list = (k: string) => (o[k] as string[] | undefined) ?? [];
  const tasks = onlyTask ? [onlyTask] : list('task');
  for (const t of tasks) if (!(SUITE_TASKS as readonly string[]).includes(t)) throw new UsageError(`--task: unknown task ${t}; one of ${SUITE_TASKS.join(', ')}`);
  for (const p of list('policy')) if (!isPolicyName(p)) throw new UsageError(`--policy: unknown policy ${p}; one of ${POLICY_NAMES.join(', ')}`);
  for (const m of list('mode')) if (!isModeName(m)) throw new UsageError(`--mode must be ${MODE_NAMES.join(' or ')}, got ${m}`);
  const num = (k: string, lo: number, hi: number) => list(k).map((v) => {
    const x = Number(v);
    if (!(x >= lo && x <= hi)) throw new UsageError(`--${k} must be a number in [${lo}, ${hi}], got ${v}`);
    return x;
  });
  const seeds = o.seeds as string;
  if (seeds !== 'dev' && seeds !== 'test') throw new UsageError(`--seeds must be dev or test, got ${seeds}`);
  const quick = o.quick as boolean;
  const samples = (o.samples as number | undefined) ?? (quick ? 1 : 4);
  if (samples < 1) throw new UsageError(`--samples must be ≥ 1, got ${samples}`);
  const concurrency = o.concurrency as number;
  if (!(concurrency >= 1 && concurrency <= 64)) throw new UsageError(`--concurrency must be in [1, 64], got ${concurrency}`);
  const named = list('policy') as PolicyName[];
  const policies = named.length ? POLICY_NAMES.filter((p) => named.includes(p)) : quick ? (['fp16', 'uniform-2', 'smartkv'] as PolicyName[]) : [...POLICY_NAMES];
  const budgets = num('budget', 0.01, 1);
  const contexts = num('context', 64, 1 << 20).map(Math.round);
  const gamma = o.gamma as number | undefined;
  if (gamma !== undefined && !(gamma >= 0 && gamma < 1)) throw new UsageError(`--gamma must be in [0, 1), got ${gamma}`);
  const horizon = o.horizon as string | undefined;
  if (horizon !== undefined && !(HORIZON_NAMES as readonly string[]).includes(horizon)) throw new UsageError(`--horizon must be ${HORIZON_NAMES.join(', ')}; got ${horizon}`);
  return {
    tasks: tasks.length ? (tasks as SuiteTask[]) : quick ? ['passkey', 'multikey'] : [...SUITE_TASKS],
    contexts: contexts.length ? [...new Set(contexts)].sort((a, b) => a - b) : quick ? [1024] : SUITE_CONTEXTS,
    policies,
    budgets: budgets.length ? [...new Set(budgets)].sort((a, b) => a - b) : quick ? [0.33] : SUITE_BUDGETS,
    modes: list('mode').length ? [...new Set(list('mode'))] as ModeName[] : quick ? ['downgrade-only'] : [...MODE_NAMES],
    seeds,
    samples,
    concurrency,
    out: (o.out as string | undefined) ?? null,
    json: o.json as boolean,
    quick,
    server: o.server as string | undefined,
    model: o.model as string | undefined,
    markdown: o.markdown as string | undefined,
    gamma,
    interval: o.interval as number | undefined,
    window: o.window as number | undefined,
    sinks: o.sinks as number | undefined,
    horizon: horizon as HorizonName | undefined,
  };
}

export interface SuiteRow { policy: PolicyName; targetBeta: number | null; mode: ModeName }

const rowKey = (r: SuiteRow) => `${r.policy}|${r.targetBeta ?? '-'}|${r.mode}`;
const rowLabel = (r: SuiteRow) => (r.targetBeta === null ? r.policy : `${r.policy}@${r.targetBeta}`) + (r.mode === 'reversible' ? ' (rev)' : '');

export function suiteRows(o: Pick<SuiteOptions, 'policies' | 'budgets' | 'modes'>): SuiteRow[] {
  const rows: SuiteRow[] = [];
  for (const policy of o.policies) {
    const modes = NEVER_UPGRADE.includes(policy) ? (['downgrade-only'] as ModeName[]) : o.modes;
    for (const mode of modes) {
      if (BUDGETED.includes(policy)) for (const b of o.budgets) rows.push({ policy, targetBeta: b, mode });
      else rows.push({ policy, targetBeta: null, mode });
    }
  }
  return rows;
}

/** What every sample line and every row says about a row's bytes (the report names). */
interface RowBytes {
  task: SuiteTask;
  context: number;
  policy: PolicyName;
  mode: ModeName;
  target_beta: number | null;
  achieved_beta: number;
  hot_bytes: number; // at the end
  peak_hot_bytes: number; // the most held at any time (the prompt at 16 bits, with the `end` horizon)
  master_bytes: number;
  fp16_bytes: number;
}

/** One line of samples.jsonl. */
export interface SampleOutcome extends Scored, RowBytes {
  seed: number;
  depth: number | null;
  budget_met: boolean;
}

/** One line of rows.jsonl: a row's result on one task at one context. */
export interface SuiteResultRow extends RowBytes {
  budget_met_share: number;
  n: number;
  accuracy?: number;
  answer_bits?: number; // retrieval: mean over samples of −log2 p per answer byte
  bits_per_byte?: Record<string, number>;
}

/** One line of compare.jsonl. */
export interface SuiteComparison {
  compare: string; // smartkv-vs-random | smartkv-vs-uniform-2 | smartkv-vs-uniform-4
  task: SuiteTask;
  context: number;
  mode: ModeName;
  target_beta: number;
  n: number;
  diff: number; // accuracy (fraction) or bits/byte, smartkv minus the other row
  ci95: [number, number];
  p_value: number;
  metric: string; // accuracy | answer_bits | bits_per_byte ≥1K | bits_per_byte ≥4K | bits_per_byte all
}

/** A row's result on one task at one context, from its samples' outcomes (also used by `eval ablation`). */
export function aggregate(task: SuiteTask, context: number, row: SuiteRow, xs: SampleOutcome[]): SuiteResultRow {
  const r: SuiteResultRow = {
    task, context, policy: row.policy, mode: row.mode, target_beta: row.targetBeta,
    achieved_beta: round(mean(xs.map((x) => x.achieved_beta)), 4),
    hot_bytes: Math.round(mean(xs.map((x) => x.hot_bytes))),
    peak_hot_bytes: Math.round(mean(xs.map((x) => x.peak_hot_bytes))),
    master_bytes: Math.round(mean(xs.map((x) => x.master_bytes))),
    fp16_bytes: Math.round(mean(xs.map((x) => x.fp16_bytes))),
    budget_met_share: round(xs.filter((x) => x.budget_met).length / xs.length, 4),
    n: xs.length,
  };
  if (isPplTask(task)) {
    const bands = Object.keys(xs[0].bitsPerByte ?? {});
    r.bits_per_byte = Object.fromEntries(bands.map((b) => [b, round(mean(xs.map((x) => x.bitsPerByte![b])), 5)]));
  } else {
    r.accuracy = round(xs.filter((x) => x.correct).length / xs.length, 4);
    r.answer_bits = round(mean(xs.map((x) => x.answerBits ?? NaN)), 4);
  }
  return r;
}

/** The perplexity bands compared at a context: predictions far enough from the
 *  window that what the plan kept matters (≥1K; ≥4K too once the context has them). */
export function comparedBands(context: number): string[] {
  if (context <= 1024) return ['all'];
  return context > 4096 ? ['≥1K', '≥4K'] : ['≥1K'];
}

/** smartkv against random (same β and mode), uniform-2, uniform-4 and fp16, on the same samples. */
function comparisons(task: SuiteTask, context: number, rows: SuiteRow[], outcomes: Map<string, SampleOutcome[]>): SuiteComparison[] {
  const out: SuiteComparison[] = [];
  const find = (p: PolicyName, b: number | null, m: ModeName) => outcomes.get(rowKey({ policy: p, targetBeta: b, mode: m }));
  for (const r of rows.filter((x) => x.policy === 'smartkv')) {
    const mine = find('smartkv', r.targetBeta, r.mode)!;
    for (const other of COMPARE_WITH) {
      const theirs = other === 'random' ? find('random', r.targetBeta, r.mode) : find(other, null, 'downgrade-only');
      if (!theirs) continue;
      const base = { compare: `smartkv-vs-${other}`, task, context, mode: r.mode, target_beta: r.targetBeta!, n: mine.length };
      if (isPplTask(task)) {
        for (const band of task === 'contppl' ? [CONT_BAND] : comparedBands(context)) {
          const p = pairedBootstrap(mine.map((x) => x.bitsPerByte![band]), theirs.map((x) => x.bitsPerByte![band]));
          out.push({ ...base, diff: round(p.diff, 5), ci95: [round(p.ci95[0], 5), round(p.ci95[1], 5)], p_value: p.pValue, metric: `bits_per_byte ${band}` });
        }
      } else {
        const p = pairedAccuracy(mine.map((x) => x.correct), theirs.map((x) => x.correct));
        out.push({ ...base, diff: round(p.diff, 4), ci95: [round(p.ci95[0], 4), round(p.ci95[1], 4)], p_value: p.pValue, metric: 'accuracy' });
        const b = pairedBootstrap(mine.map((x) => x.answerBits ?? NaN), theirs.map((x) => x.answerBits ?? NaN));
        out.push({ ...base, diff: round(b.diff, 5), ci95: [round(b.ci95[0], 5), round(b.ci95[1], 5)], p_value: b.pValue, metric: 'answer_bits' });
      }
    }
  }
  return out;
}

export async function evalSuite(o: SuiteOptions, io: EvalIo, command: string): Promise<{ rows: SuiteResultRow[]; compare: SuiteComparison[] }> {
  const rows = suiteRows(o);
  const local = { server: o.server, model: o.model, mode: 'downgrade-only' as ModeName, rotateKv: true, quant: 'symmetric', importance: 'accumulated', layers: 'shared', window: undefined, gamma: undefined };
  return withServer(local, io, async ({ client, info, where }) => {
    if (info.vocab !== 258) throw new Error(`the suite scores bytes: it needs the byte-level reference model (vocabulary 258), the server has ${info.vocab}`);
    const contexts = o.contexts.filter((c) => c <= info.maxPositions);
    const skipped = o.contexts.filter((c) => c > info.maxPositions);
    if (skipped.length) io.err.write(`eval suite: skipping context ${skipped.join(', ')} (the model holds ${info.maxPositions} positions)\n`);
    if (!contexts.length) throw new Error(`no context of ${o.contexts.join(', ')} tokens fits the model's ${info.maxPositions} positions`);
    const samples = await buildSamples(o.tasks, contexts, o.samples, o.seeds);
    if (o.out) {
      mkdirSync(o.out, { recursive: true });
      writeFileSync(join(o.out, 'command.txt'), `${command}\n# ${nowIso()}; seeds: ${o.seeds} (declared in cli/eval-tasks.ts); ${samples.length} samples × ${rows.length} rows\n`);
      writeFileSync(join(o.out, 'samples.jsonl'), '');
    }
    const items = samples.flatMap((s, si) => rows.map((r, ri) => ({ s, si, r, ri }))); // sample-major: a steady ETA
    io.err.write(`eval suite: ${rows.length} rows × ${samples.length} samples = ${items.length} Score requests, ${o.concurrency} in flight (${where})\n`);
    const work = (it: { s: TaskSample }) => it.s.text.length;
    const progress = new Progress('eval suite', items.length, io.err, items.reduce((a, it) => a + work(it), 0));
    const outcomes = rows.map(() => new Array<SampleOutcome>(samples.length)); // [row][sample]
    try {
      await runPool(items, o.concurrency, async (it) => {
        const res: ScoreResponse = await client.scoreRequest(create(ScoreRequestSchema, { text: it.s.text, prefillTokens: it.s.prefillTokens, cache: settingsOf(it.r, o) }));
        const b = budgetFields(res.summary?.budget);
        const out: SampleOutcome = {
          task: it.s.task, context: it.s.context, seed: it.s.seed, depth: it.s.depth === null ? null : round(it.s.depth, 4),
          policy: it.r.policy, mode: it.r.mode, target_beta: it.r.targetBeta, achieved_beta: round(b.achieved_beta, 4),
          hot_bytes: b.hot_bytes, peak_hot_bytes: b.peak_hot_bytes, master_bytes: b.master_bytes, fp16_bytes: b.fp16_bytes, budget_met: b.budget_met, ...scoreOutcome(it.s, res),
        };
        outcomes[it.ri][it.si] = out;
        if (o.out) appendFileSync(join(o.out, 'samples.jsonl'), JSON.stringify(out) + '\n');
      }, (_r, it) => progress.tick(work(it)));
    } finally {
      progress.finish();
    }
    const results: SuiteResultRow[] = [];
    const compare: SuiteComparison[] = [];
    for (const task of o.tasks) {
      for (const context of contexts) {
        const pick = new Map(rows.map((r, ri) => [rowKey(r), outcomes[ri].filter((x) => x.task === task && x.context === context)]));
        for (const r of rows) results.push(aggregate(task, context, r, pick.get(rowKey(r))!));
        compare.push(...comparisons(task, context, rows, pick));
      }
    }
    if (o.out) await writeOutputs(o.out, results, compare);
    const report = suiteReport(o, results, compare, { info, where, command, samples: samples.length, contexts, elapsedMs: progress.elapsedMs, requests: items.length });
    if (o.json) for (const r of [...results, ...compare]) io.out(JSON.stringify(r));
    else for (const l of textReport(report)) io.out(l);
    if (o.markdown) writeMarkdownSection(o.markdown, 'suite', markdownReport(report, '###'));
    io.err.write(`eval suite: done in ${formatDuration(progress.elapsedMs)}\n`);
    return { rows: results, compare };
  });
}

function settingsOf(r: SuiteRow, o: SuiteOptions) {
  return create(CacheSettingsSchema, {
    policy: policyToPb(r.policy), budget: r.targetBeta ?? 1, mode: modeToPb(r.mode),
    gamma: o.gamma, reallocInterval: o.interval, window: o.window, sinks: o.sinks,
    horizon: o.horizon === undefined ? undefined : horizonToPb(o.horizon),
  });
}

async function writeOutputs(dir: string, results: SuiteResultRow[], compare: SuiteComparison[]): Promise<void> {
  writeFileSync(join(dir, 'rows.jsonl'), results.map((r) => JSON.stringify(r)).join('\n') + '\n');
  writeFileSync(join(dir, 'compare.jsonl'), compare.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const plotRows = (metric: (r: SuiteResultRow) => number | undefined): PlotRow[] =>
    results.flatMap((r) => {
      const value = metric(r);
      return value === undefined ? [] : [{ ...r, value }];
    });
  const acc = plotRows((r) => r.accuracy);
  if (acc.length) {
    const what = { hot: 'hot bytes at the end', total: 'hot + master bytes', peak: 'peak hot bytes' } as const;
    for (const axis of ['hot', 'total', 'peak'] as const)
      writeFileSync(join(dir, `frontier-${axis}.svg`), await renderSvg(frontierSpec(acc, axis, 'accuracy', `Retrieval accuracy against ${what[axis]}`)));
    // Graded where accuracy saturates at 0 or 1: −log2 p per answer byte (lower is better).
    const bits = plotRows((r) => r.answer_bits);
    writeFileSync(join(dir, 'frontier-answer-bits.svg'), await renderSvg(frontierSpec(bits, 'hot', 'bits per answer byte', 'Answer bits against hot bytes at the end')));
  }
  const band = (r: SuiteResultRow) => r.bits_per_byte?.[r.task === 'contppl' ? CONT_BAND : 'all']; // one value per perplexity row
  const fp16 = new Map(results.filter((r) => r.policy === 'fp16' && band(r) !== undefined).map((r) => [`${r.task}|${r.context}`, band(r)!]));
  const ppl = plotRows((r) => (band(r) !== undefined && fp16.has(`${r.task}|${r.context}`) ? band(r)! - fp16.get(`${r.task}|${r.context}`)! : undefined));
  if (ppl.length) writeFileSync(join(dir, 'frontier-ppl.svg'), await renderSvg(frontierSpec(ppl, 'hot', 'Δ bits/byte vs fp16', 'Long-text perplexity cost against hot bytes')));
}

interface RunInfo { info: import('../gen/smartkv/v1/generation_pb.js').InfoResponse; where: string; command: string; samples: number; contexts: number[]; elapsedMs: number; requests: number }

function suiteReport(o: SuiteOptions, results: SuiteResultRow[], compare: SuiteComparison[], run: RunInfo): Report {
  const sections: Report['sections'] = [];
  for (const task of o.tasks) {
    const mine = results.filter((r) => r.task === task);
    const label = task === 'longppl' ? 'bits/byte ≥1K [≥4K] (all)' : task === 'contppl' ? 'bits/byte over the last 1/8, after the prefill' : 'accuracy (bits per answer byte)';
    sections.push({
      title: `${task}: ${label} by row and context (tokens); β achieved, hot (end and peak) and master kB at the largest context`,
      table: resultTable(task, mine, run.contexts),
    });
    const cmp = compare.filter((c) => c.task === task);
    if (cmp.length) sections.push({ title: `${task}: smartkv against other rows on the same samples (paired)`, table: compareTable(cmp), notes: [
      `  diff: smartkv minus the other row (${isPplTask(task) ? 'bits per byte; negative is better' : 'accuracy points, positive is better; answer bits per answer byte, negative is better'}); 95 % paired bootstrap interval;`,
      `  p: ${isPplTask(task) ? 'paired bootstrap' : 'exact McNemar on the discordant pairs (accuracy), paired bootstrap (answer bits)'}, two-sided.`,
    ] });
  }
  return {
    title: 'SmartKV evaluation suite: long-context tasks at honest bytes',
    date: nowIso(),
    command: run.command,
    settings: [
      ['model', modelLine(run.info)],
      ['served by', run.where],
      ['samples', `${run.samples} (${o.samples} per task × context); ${o.seeds} seeds; held-out phrasings and documents (training/tasks.mjs); the same samples for every row`],
      ['scoring', `Score with prefill = BOS + context (chunks; ${o.horizon === 'end' ? 'no plan until the last one is read' : 'plans between them'}), questions and answers one token at a time; a turn is right iff every answer byte is the greedy choice`],
      ['rows', `${suiteRows(o).map(rowLabel).join(', ')}`],
      ['per request', `γ ${o.gamma ?? 'server default'}, R ${o.interval ?? 'server default'}, window ${o.window ?? 'server default'}, sinks ${o.sinks ?? 'server default'}, budget horizon ${o.horizon ?? 'server default'}; ${o.concurrency} in flight`],
    ],
    sections,
    footer: [`elapsed ${formatDuration(run.elapsedMs)} (${run.requests} Score requests)`],
  };
}

function resultTable(task: SuiteTask, rows: SuiteResultRow[], contexts: number[]): Table {
  const keys = [...new Map(rows.map((r) => [`${r.policy}|${r.target_beta}|${r.mode}`, r])).values()];
  const top = Math.max(...contexts);
  const value = (r: SuiteResultRow | undefined) => (!r ? '—' : r.accuracy !== undefined ? `${(100 * r.accuracy).toFixed(1)} % (${fixed(r.answer_bits ?? null, 3)})` : task === 'contppl' ? fixed(r.bits_per_byte?.[CONT_BAND] ?? null, 4) : `${fixed(r.bits_per_byte?.['≥1K'] ?? null, 4)}${r.context > 4096 ? ` [${fixed(r.bits_per_byte?.['≥4K'] ?? null, 4)}]` : ''} (${fixed(r.bits_per_byte?.all ?? null, 4)})`);
  return {
    columns: [{ title: 'policy' }, { title: 'mode' }, { title: 'β target', right: true }, ...contexts.map((c) => ({ title: String(c), right: true })), { title: 'β achieved', right: true }, { title: 'hot kB', right: true }, { title: 'peak hot kB', right: true }, { title: 'master kB', right: true }, { title: 'β met', right: true }],
    rows: keys.map((k) => {
      const at = (c: number) => rows.find((r) => r.context === c && r.policy === k.policy && r.target_beta === k.target_beta && r.mode === k.mode);
      const big = at(top)!;
      return [k.policy, k.mode, fixed(k.target_beta, 2), ...contexts.map((c) => value(at(c))), fixed(big.achieved_beta, 3), (big.hot_bytes / 1e3).toFixed(0), (big.peak_hot_bytes / 1e3).toFixed(0), (big.master_bytes / 1e3).toFixed(0), `${(100 * big.budget_met_share).toFixed(0)} %`];
    }),
  };
}

function compareTable(cmp: SuiteComparison[]): Table {
  const num = (c: SuiteComparison, x: number) => (c.metric === 'accuracy' ? `${x >= 0 ? '+' : ''}${(100 * x).toFixed(1)}` : `${x >= 0 ? '+' : ''}${x.toFixed(4)}`);
  return {
    columns: [{ title: 'comparison' }, { title: 'context', right: true }, { title: 'scored' }, { title: 'mode' }, { title: 'β', right: true }, { title: 'n', right: true }, { title: 'diff', right: true }, { title: '95 % CI', right: true }, { title: 'p', right: true }],
    rows: cmp.map((c) => [c.compare, String(c.context), c.metric.replace('bits_per_byte ', 'bits/byte ').replace('answer_bits', 'answer bits'), c.mode, fixed(c.target_beta, 2), String(c.n), num(c, c.diff), `[${num(c, c.ci95[0])}, ${num(c, c.ci95[1])}]`, c.p_value < 1e-4 ? c.p_value.toExponential(1) : c.p_value.toFixed(4)]),
  };
}
