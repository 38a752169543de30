// `smartkv eval needle`: pass-key retrieval under each cache policy and
// budget, through the Complete API.
//
// Samples: training/corpus.mjs's makePasskeySample with evaluation seeds
// (EVAL_SEED_BASE + k, disjoint from training) and held-out filler, on a grid
// of context lengths (UTF-8 bytes of the whole sample) × needle depths × seeds;
// every row answers the same samples. The prompt ends with "The pass key is ";
// the server decodes 5 tokens greedily and the answer is correct iff they are
// the 5 digits of the key.
import type { CompleteResponse, GenerationSummary } from '../gen/smartkv/v1/generation_pb.js';
import type { ModeName } from '../services/common/policy.js';
import { addBudget, budgetRowFields, corpusModule, DEFAULT_SIZE, emptyBudgetAcc, evalConfigs, heldOutText, mean, round, runPool, withServer, type EvalConfig, type EvalIo, type EvalOptions, type PasskeySample } from './eval-common.js';
import { cacheLine, modeLine } from './eval-ppl.js';
import { formatDuration, Progress } from './eval-progress.js';
import { fixed, markdownReport, modelLine, nowIso, pct, textReport, writeMarkdownSection, type Report, type Table } from './eval-report.js';

export const NEEDLE_CONTEXTS = [256, 448, 640, 832, 1024]; // bytes; 1024 fills the reference model's context (BOS + prompt + 5 tokens)
export const NEEDLE_DEPTHS = [0, 0.25, 0.5, 0.75, 1];
const QUICK = { contexts: [160, 256], depths: [0, 1], seeds: 1 };
const ANSWER_TOKENS = 5;

interface Sample extends PasskeySample {
  seed: number;
  context: number;
  depthTarget: number;
}

export interface NeedleRow {
  eval: 'needle';
  kind: 'cell' | 'context' | 'policy'; // one (context, depth) cell; one context, all depths; all samples
  policy: string;
  target_beta: number | null;
  context_bytes: number | null;
  depth: number | null;
  accuracy: number;
  correct: number;
  samples: number;
  achieved_beta: number; // mean of the summaries' achieved_beta (at the end of each answer)
  budget_missed: number; // reallocations that could not meet β, summed
  reallocations: number;
  mode: string; // downgrade-only | reversible
  hot_bytes: number; // mean at the end of each answer: the cache's bytes (what β counts)
  master_bytes: number; // mean: the master tier (reversible only)
  fp16_bytes: number; // mean: the same tokens in FP16
  budget_met: boolean; // every sample's summary met β (where it binds)
  budget_met_share: number;
  allocate_calls: number; // Allocate calls, summed (one per reallocation)
}

interface Outcome {
  correct: boolean;
  beta: number;
  missed: number;
  reallocations: number;
  summary: GenerationSummary;
}

function rowOf(kind: NeedleRow['kind'], c: EvalConfig, context: number | null, depth: number | null, xs: Outcome[], mode: ModeName): NeedleRow {
  const correct = xs.filter((x) => x.correct).length;
  const budget = emptyBudgetAcc();
  for (const x of xs) addBudget(budget, x.summary);
  return {
    eval: 'needle',
    kind,
    policy: c.policy,
    target_beta: c.targetBeta,
    context_bytes: context,
    depth,
    accuracy: round(correct / xs.length, 4),
    correct,
    samples: xs.length,
    achieved_beta: round(mean(xs.map((x) => x.beta)), 4),
    budget_missed: xs.reduce((a, x) => a + x.missed, 0),
    reallocations: xs.reduce((a, x) => a + x.reallocations, 0),
    ...budgetRowFields(budget, mode),
  };
}

export async function evalNeedle(o: EvalOptions, io: EvalIo, command: string): Promise<NeedleRow[]> {
  const configs = evalConfigs(o);
  const corpus = await corpusModule();
  const held = await heldOutText(corpus);
  return withServer(o, io, async ({ client, info, where }) => {
    const grid = o.quick ? QUICK : { contexts: NEEDLE_CONTEXTS, depths: NEEDLE_DEPTHS, seeds: DEFAULT_SIZE.needle };
    const seeds = o.size ?? grid.seeds;
    // Byte-level model: BOS + the prompt's bytes + the answer's tokens must fit; the sample's bytes include "NNNNN." (6).
    const contexts = grid.contexts.filter((b) => b - 6 + 1 + ANSWER_TOKENS <= info.maxPositions);
    if (contexts.length === 0) throw new Error(`no context length of ${grid.contexts.join(', ')} bytes fits the model's ${info.maxPositions} positions`);
    const samples: Sample[] = [];
    contexts.forEach((context, ci) =>
      grid.depths.forEach((depthTarget, di) => {
        for (let j = 0; j < seeds; j++) {
          const seed = corpus.EVAL_SEED_BASE + (ci * grid.depths.length + di) * seeds + j;
          samples.push({ ...corpus.makePasskeySample({ seed, totalBytes: context, depth: depthTarget, fillerText: held.text }), seed, context, depthTarget });
        }
      }),
    );
    const items = samples.flatMap((s, si) => configs.map((c, ci) => ({ s, si, c, ci }))); // sample-major: a steady ETA
    const inFlight = Math.max(1, Math.min(16, info.maxBatch));
    io.err.write(`eval needle: ${configs.length} rows × ${samples.length} samples = ${items.length} Complete requests, ${inFlight} in flight\n`);
    const work = (it: { s: Sample }) => it.s.context;
    const progress = new Progress('eval needle', items.length, io.err, items.reduce((a, it) => a + work(it), 0));
    let answers: CompleteResponse[];
    try {
      answers = await runPool(items, inFlight, (it) => client.complete(it.s.promptText, ANSWER_TOKENS, it.c), (_r, it) => progress.tick(work(it)));
    } finally {
      progress.finish();
    }
    const outcomes: Outcome[][] = configs.map(() => new Array<Outcome>(samples.length)); // [config][sample]
    items.forEach((it, k) => {
      const r = answers[k], s = r.summary!;
      outcomes[it.ci][it.si] = { correct: r.text.slice(0, 5) === it.s.passkey, beta: s.achievedBeta, missed: s.budgetMissed, reallocations: s.reallocations, summary: s };
    });
    const rows: NeedleRow[] = [];
    const pick = (ci: number, f: (s: Sample) => boolean) => outcomes[ci].filter((_x, si) => f(samples[si]));
    configs.forEach((c, ci) => {
      for (const ctx of contexts) {
        for (const d of grid.depths) rows.push(rowOf('cell', c, ctx, d, pick(ci, (s) => s.context === ctx && s.depthTarget === d), o.mode));
        rows.push(rowOf('context', c, ctx, null, pick(ci, (s) => s.context === ctx), o.mode));
      }
      rows.push(rowOf('policy', c, null, null, outcomes[ci], o.mode));
    });
    const elapsedMs = progress.elapsedMs;
    const report: Report = {
      title: 'SmartKV evaluation: pass-key retrieval (needle)',
      date: nowIso(),
      command,
      settings: [
        ['model', modelLine(info)],
        ['served by', where],
        [
          'samples',
          `${samples.length} per row: context ${contexts.join(', ')} bytes × needle depth ${grid.depths.join(', ')} × ${seeds} seed(s); ` +
            `makePasskeySample (training/corpus.mjs) with seeds ${corpus.EVAL_SEED_BASE.toLocaleString('en-US')} + k (disjoint from training) and held-out filler ` +
            `(${held.documents} documents, ${held.bytes.toLocaleString('en-US')} bytes); the same samples for every row`,
        ],
        ['answer', `Complete, greedy (temperature 0), ${ANSWER_TOKENS} tokens after the prompt "… The pass key is "; correct iff they are the 5 digits of the key`],
        ['cache', cacheLine(info, o.gamma)],
        ['mode', modeLine(o.mode)],
        ['rows', `${configs.map((c) => (c.targetBeta === null ? c.policy : `${c.policy}@${c.targetBeta}`)).join(', ')}; ${inFlight} requests in flight`],
      ],
      sections: [
        { title: `Accuracy by policy and budget, and by context length (bytes), mode ${o.mode}`, table: summaryTable(rows, contexts), notes: summaryNotes(samples.length, contexts, grid.depths, seeds) },
        { title: `Accuracy by needle depth (all context lengths), mode ${o.mode}`, table: depthTable(rows, configs, contexts, grid.depths) },
        ...(configs.some((c) => c.targetBeta !== null) ? [{ title: `Achieved β by context length (budgeted rows; mean at the end of each answer), mode ${o.mode}`, table: betaTable(rows, contexts) }] : []),
      ],
      footer: [`elapsed ${formatDuration(elapsedMs)} (${items.length} Complete requests)`],
    };
    if (o.json) for (const r of rows) io.out(JSON.stringify(r));
    else for (const l of textReport(report)) io.out(l);
    if (o.markdown) writeMarkdownSection(o.markdown, 'needle', markdownReport(report, '###'));
    io.err.write(`eval needle: done in ${formatDuration(elapsedMs)}\n`);
    return rows;
  });
}

const isRow = (r: NeedleRow, kind: NeedleRow['kind'], policy: string, beta: number | null) => r.kind === kind && r.policy === policy && r.target_beta === beta;

function summaryTable(rows: NeedleRow[], contexts: number[]): Table {
  const all = rows.filter((r) => r.kind === 'policy');
  const fp16 = all.find((r) => r.policy === 'fp16');
  return {
    columns: [
      { title: 'policy' },
      { title: 'β target', right: true },
      { title: 'β achieved', right: true },
      { title: 'met', right: true },
      { title: 'hot kB', right: true },
      { title: 'master kB', right: true },
      { title: 'accuracy', right: true },
      { title: 'vs fp16', right: true },
      ...contexts.map((c) => ({ title: String(c), right: true })),
    ],
    rows: all.map((r) => [
      r.policy,
      fixed(r.target_beta, 2),
      fixed(r.achieved_beta, 3),
      r.target_beta === null ? '—' : pct(r.budget_met_share, 0),
      (r.hot_bytes / 1000).toFixed(1),
      (r.master_bytes / 1000).toFixed(1),
      `${pct(r.accuracy)} (${r.correct}/${r.samples})`,
      fp16 ? `${r.accuracy >= fp16.accuracy ? '+' : ''}${(100 * (r.accuracy - fp16.accuracy)).toFixed(1)} pts` : '—',
      ...contexts.map((c) => pct(rows.find((x) => isRow(x, 'context', r.policy, r.target_beta) && x.context_bytes === c)!.accuracy, 0)),
    ]),
  };
}

function summaryNotes(n: number, contexts: number[], depths: number[], seeds: number): string[] {
  return [
    `  ${n} samples per row (${contexts.length} contexts × ${depths.length} depths × ${seeds}); per context: ${depths.length * seeds} samples. β achieved: mean at the end of each answer.`,
    '  met: share of samples whose summary says budget_met (β met at the end and by every plan at a length from which it binds;',
    '  short contexts cannot meet small β). hot kB: the cache\'s bytes (what β counts); master kB: the master tier (reversible); means per sample.',
    '  vs fp16: accuracy difference in percentage points on the same samples.',
  ];
}

function depthTable(rows: NeedleRow[], configs: EvalConfig[], contexts: number[], depths: number[]): Table {
  return {
    columns: [{ title: 'policy' }, { title: 'β target', right: true }, ...depths.map((d) => ({ title: `depth ${d}`, right: true }))],
    rows: configs.map((c) => {
      const cells = rows.filter((r) => isRow(r, 'cell', c.policy, c.targetBeta));
      return [
        c.policy,
        fixed(c.targetBeta, 2),
        ...depths.map((d) => {
          const xs = cells.filter((r) => r.depth === d && contexts.includes(r.context_bytes!));
          const correct = xs.reduce((a, r) => a + r.correct, 0), total = xs.reduce((a, r) => a + r.samples, 0);
          return pct(correct / total, 0);
        }),
      ];
    }),
  };
}

function betaTable(rows: NeedleRow[], contexts: number[]): Table {
  const budgeted = rows.filter((r) => r.kind === 'policy' && r.target_beta !== null);
  return {
    columns: [{ title: 'policy' }, { title: 'β target', right: true }, ...contexts.map((c) => ({ title: String(c), right: true })), { title: 'missed', right: true }],
    rows: budgeted.map((r) => [
      r.policy,
      fixed(r.target_beta, 2),
      ...contexts.map((c) => fixed(rows.find((x) => isRow(x, 'context', r.policy, r.target_beta) && x.context_bytes === c)!.achieved_beta, 3)),
      `${r.budget_missed}/${r.reallocations}`,
    ]),
  };
}
