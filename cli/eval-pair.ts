// `smartkv eval pair A B --row R [--row-b R]`: one row of one saved run against
// one row of another, paired on the samples they share (same task, context and
// seed) — e.g. the same policy under two budget horizons that ran as two
// campaigns on the same seeds. It reads only the runs' samples.jsonl (what
// `eval suite --out` and `eval ablation --out` write) and reruns nothing, so
// the comparison is of the outcomes as they were saved.
//
// A row is `policy`, `policy@β` or either with `/reversible`
// (e.g. smartkv@0.25, fp16, random@0.2/reversible); in an ablation run, a
// variant name (default, gamma=0.85, …) picks its rows. Samples that are in
// only one run are counted and left out; none in common is an error.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { parseOptions, UsageError, type OptionSpec } from '../services/common/args.js';
import { round, type EvalIo } from './eval-common.js';
import { fixed, nowIso, pText, textReport, type Report } from './eval-report.js';
import { pairedAccuracy, pairedBootstrap } from './eval-stats.js';
import { isPplTask, type SuiteTask } from './eval-tasks.js';

export const PAIR_OPTIONS: Record<string, OptionSpec> = {
  row: { kind: 'string', help: 'the row of run A (and of run B unless --row-b): policy[@β][/reversible], or an ablation variant' },
  'row-b': { kind: 'string', help: 'the row of run B, when it differs' },
  json: { kind: 'bool', default: false, help: 'one JSON line per comparison instead of a table' },
  help: { kind: 'bool', help: 'print this help' },
};

/** What pair compares: the fields of a samples.jsonl line it reads. */
export interface SavedSample {
  task: SuiteTask;
  context: number;
  seed: number;
  policy: string;
  mode: string;
  target_beta: number | null;
  variant?: string; // ablation runs
  correct: boolean;
  answerBits?: number | null;
  bitsPerByte?: Record<string, number> | null;
}

export interface RowSpec {
  policy: string;
  beta: number | null; // null: any (the policy takes none, or a variant name)
  mode: string;
  variant?: string;
}

export interface PairComparison {
  compare: string; // "<A dir>:<row> vs <B dir>:<row>"
  task: SuiteTask;
  context: number;
  n: number;
  only_a: number; // samples of the cell in A alone
  only_b: number;
  metric: string; // accuracy | answer_bits | bits_per_byte <band>
  a: number; // A's mean
  b: number;
  diff: number; // A minus B
  ci95: [number, number];
  p_value: number;
}

export function parseRow(text: string): RowSpec {
  const [head, mode = 'downgrade-only'] = text.split('/');
  if (mode !== 'downgrade-only' && mode !== 'reversible') throw new UsageError(`--row ${text}: the mode after / must be reversible or downgrade-only`);
  const [policy, beta] = head.split('@');
  if (!policy) throw new UsageError(`--row ${text}: no policy or variant`);
  if (beta === undefined) return { policy, beta: null, mode, variant: policy.includes('=') || policy === 'default' ? policy : undefined };
  const b = Number(beta);
  if (!(b > 0 && b <= 1)) throw new UsageError(`--row ${text}: β must be a number in (0, 1], got ${beta}`);
  return { policy, beta: b, mode };
}

function matches(s: SavedSample, r: RowSpec): boolean {
  if (r.variant !== undefined) return s.variant === r.variant;
  if (s.variant !== undefined && s.variant !== 'default' && s.variant !== 'fp16') return false;
  return s.policy === r.policy && s.mode === r.mode && (r.beta === null || s.target_beta === r.beta);
}

export function readSamples(dir: string): SavedSample[] {
  const file = join(dir, 'samples.jsonl');
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new UsageError(`${file}: cannot be read (a folder written by eval suite --out or eval ablation --out)`);
  }
  return text.split('\n').filter((l) => l.trim()).map((l, i) => {
    try {
      return JSON.parse(l) as SavedSample;
    } catch {
      throw new UsageError(`${file}:${i + 1}: not a JSON line`);
    }
  });
}

const cellKey = (s: SavedSample) => `${s.task}|${s.context}`;

/** The paired comparisons of row `ra` of A with row `rb` of B, per task × context. */
export function pairRuns(a: SavedSample[], b: SavedSample[], ra: RowSpec, rb: RowSpec, label: string): PairComparison[] {
  const mine = a.filter((s) => matches(s, ra)), theirs = b.filter((s) => matches(s, rb));
  for (const [rows, r, which] of [[mine, ra, 'A'], [theirs, rb, 'B']] as const) {
    if (!rows.length) throw new UsageError(`run ${which} has no samples of row ${r.variant ?? `${r.policy}${r.beta === null ? '' : `@${r.beta}`}/${r.mode}`}`);
    const betas = new Set(rows.map((s) => s.target_beta));
    if (betas.size > 1) throw new UsageError(`run ${which} has row ${r.policy} at several β (${[...betas].join(', ')}): name one, e.g. ${r.policy}@${[...betas][0]}`);
  }
  const out: PairComparison[] = [];
  const cells = [...new Set(mine.map(cellKey))].filter((k) => theirs.some((s) => cellKey(s) === k));
  if (!cells.length) throw new UsageError('the two runs share no task × context');
  for (const cell of cells) {
    const bySeed = new Map(theirs.filter((s) => cellKey(s) === cell).map((s) => [s.seed, s]));
    const ours = mine.filter((s) => cellKey(s) === cell);
    const pairs = ours.filter((s) => bySeed.has(s.seed)).map((s) => [s, bySeed.get(s.seed)!] as const);
    if (!pairs.length) throw new UsageError(`${cell.replace('|', ' @ ')}: the runs share no seed (dev against test?)`);
    const { task, context } = pairs[0][0];
    const head = { compare: label, task, context, n: pairs.length, only_a: ours.length - pairs.length, only_b: bySeed.size - pairs.length };
    const mean = (xs: number[]) => xs.reduce((x, y) => x + y, 0) / xs.length;
    const push = (metric: string, xa: number[], xb: number[], r: { diff: number; ci95: [number, number]; pValue: number }, digits: number) =>
      out.push({ ...head, metric, a: round(mean(xa), digits), b: round(mean(xb), digits), diff: round(r.diff, digits), ci95: [round(r.ci95[0], digits), round(r.ci95[1], digits)], p_value: r.pValue });
    if (isPplTask(task)) {
      for (const band of Object.keys(pairs[0][0].bitsPerByte ?? {})) {
        const xa = pairs.map(([x]) => x.bitsPerByte![band]), xb = pairs.map(([, y]) => y.bitsPerByte![band]);
        push(`bits_per_byte ${band}`, xa, xb, pairedBootstrap(xa, xb), 5);
      }
    } else {
      const ca = pairs.map(([x]) => x.correct), cb = pairs.map(([, y]) => y.correct);
      push('accuracy', ca.map(Number), cb.map(Number), pairedAccuracy(ca, cb), 4);
      const xa = pairs.map(([x]) => x.answerBits ?? NaN), xb = pairs.map(([, y]) => y.answerBits ?? NaN);
      push('answer_bits', xa, xb, pairedBootstrap(xa, xb), 5);
    }
  }
  return out;
}

/** `smartkv eval pair A B --row R [--row-b R] [--json]`; argv starts after "pair". */
export function evalPair(argv: readonly string[], io: EvalIo): number {
  // The two folders are the arguments that are neither options nor an option's value.
  const positional: string[] = [], options: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) positional.push(a);
    else {
      options.push(a);
      const spec = PAIR_OPTIONS[a.slice(2)];
      if (spec && spec.kind !== 'bool' && i + 1 < argv.length) options.push(argv[++i]);
    }
  }
  const o = parseOptions(options, PAIR_OPTIONS);
  if (o.help) return 0;
  if (positional.length !== 2) throw new UsageError(`two result folders, A and B, got ${positional.length}`);
  if (!o.row) throw new UsageError('--row is required (e.g. --row smartkv@0.25)');
  const ra = parseRow(o.row as string), rb = parseRow((o['row-b'] as string | undefined) ?? (o.row as string));
  const [da, db] = positional;
  const label = `${da}:${o.row} vs ${db}:${o['row-b'] ?? o.row}`;
  const cmp = pairRuns(readSamples(da), readSamples(db), ra, rb, label);
  if (o.json) for (const c of cmp) io.out(JSON.stringify(c));
  else for (const l of textReport(pairReport(cmp, label, ['npx smartkv eval pair', ...argv].join(' ')))) io.out(l);
  return 0;
}

function pairReport(cmp: PairComparison[], label: string, command: string): Report {
  const num = (c: PairComparison, x: number) => (c.metric === 'accuracy' ? `${(100 * x).toFixed(1)}` : fixed(x, 4));
  return {
    title: 'SmartKV paired comparison of two saved runs',
    date: nowIso(),
    command,
    settings: [['rows', label], ['pairing', 'the samples both runs hold (same task, context and seed); A minus B']],
    sections: [{
      title: 'per task and context',
      table: {
        columns: [{ title: 'task' }, { title: 'context', right: true }, { title: 'scored' }, { title: 'n', right: true }, { title: 'A', right: true }, { title: 'B', right: true }, { title: 'A − B', right: true }, { title: '95 % CI', right: true }, { title: 'p', right: true }],
        rows: cmp.map((c) => [c.task, String(c.context), c.metric.replace('_', ' '), `${c.n}${c.only_a || c.only_b ? ` (+${c.only_a}/${c.only_b} unpaired)` : ''}`, num(c, c.a), num(c, c.b), num(c, c.diff), `[${num(c, c.ci95[0])}, ${num(c, c.ci95[1])}]`, pText(c.p_value)]),
      },
      notes: ['  accuracy in points (exact McNemar p); answer bits and bits/byte: paired bootstrap, lower is better.'],
    }],
    footer: [],
  };
}
