// `smartkv eval ppl`: held-out perplexity of the served model under each cache
// policy and budget, through the Score API.
//
// Text: the held-out split of the reference model's corpus, regenerated here
// from the npm corpora with the training split rule. Windows: non-overlapping,
// each filled to the model's context (BOS + max_positions − 1 bytes for the
// byte-level model), a fixed, evenly spaced choice in document order; every
// row scores the same windows. Score feeds a window the way generation does:
// the first prefill chunk at once, then one token at a time with a
// reallocation every R steps, and returns every token's log-probability.
import { ImportanceMode, LayerMode, type BitHistogram } from '../gen/smartkv/v1/common_pb.js';
import type { InfoResponse, ScoreResponse } from '../gen/smartkv/v1/generation_pb.js';
import { addBudget, budgetRowFields, corpusModule, DEFAULT_SIZE, emptyBudgetAcc, evalConfigs, heldOutText, mean, round, runPool, withServer, type BudgetAcc, type EvalConfig, type EvalIo, type EvalOptions } from './eval-common.js';
import type { ModeName } from '../services/common/policy.js';
import { formatDuration, Progress } from './eval-progress.js';
import { fixed, modelLine, nowIso, pct, textReport, markdownReport, writeMarkdownSection, type Report } from './eval-report.js';

const QUICK_WINDOW_TOKENS = 256;

export interface Window {
  index: number; // among all full windows of the held-out text, in document order
  start: number; // byte offset
  text: string;
  bytes: number;
}

/**
 * `count` windows of at most `windowBytes` UTF-8 bytes: the held-out text cut
 * at multiples of windowBytes (each cut moved back to a character boundary),
 * full windows only, chosen evenly spaced (numpy linspace, as training/train.py
 * subsets them).
 */
export function heldOutWindows(text: string, windowBytes: number, count: number): { windows: Window[]; available: number } {
  const buf = Buffer.from(text, 'utf8');
  const available = Math.floor(buf.length / windowBytes);
  const snap = (p: number) => {
    while (p > 0 && p < buf.length && (buf[p] & 0xc0) === 0x80) p--; // not inside a UTF-8 sequence
    return p;
  };
  const n = Math.min(count, available);
  const picks = n <= 1 ? [0] : Array.from({ length: n }, (_, i) => Math.floor((i * (available - 1)) / (n - 1)));
  const windows = picks.map((index) => {
    const start = snap(index * windowBytes), end = snap((index + 1) * windowBytes);
    return { index, start, text: buf.subarray(start, end).toString('utf8'), bytes: end - start };
  });
  return { windows, available };
}

export interface Histogram {
  bits16: number;
  bits8: number;
  bits4: number;
  bits2: number;
  kivi: number;
}

export interface PplRow {
  eval: 'ppl';
  policy: string;
  target_beta: number | null;
  achieved_beta: number; // mean over windows of the summaries' achieved_beta (bytes held / FP16 bytes at the end)
  max_beta: number; // the largest β seen after any reallocation, over all windows
  budget_missed: number; // reallocations whose plan could not meet β, summed over windows
  reallocations: number;
  ppl: number; // exp(mean NLL per predicted token)
  ppl_increase: number | null; // ppl − ppl(fp16), when fp16 ran
  ppl_increase_se: number | null; // paired standard error of ppl_increase over windows
  bits_per_byte: number; // NLL / ln 2 per predicted byte
  nll_per_token: number;
  histogram: Histogram; // fractions of token-layers at the end of each window, over all windows
  windows: number;
  tokens: number; // predicted tokens, all windows
  bytes: number;
  mode: string; // downgrade-only | reversible
  hot_bytes: number; // mean over windows at the end: the cache's bytes (what β counts)
  master_bytes: number; // mean over windows: the master tier (reversible only)
  fp16_bytes: number; // mean over windows: the same tokens in FP16
  budget_met: boolean; // every window's summary met β (where it binds)
  budget_met_share: number; // share of windows that met it
  allocate_calls: number; // Allocate calls, all windows (one per reallocation)
}

interface Acc {
  nll: number[]; // [windows] nats
  tokens: number[]; // [windows] predicted tokens
  bytes: number;
  beta: number[];
  maxBeta: number;
  missed: number;
  reallocations: number;
  hist: Histogram; // counts
  budget: BudgetAcc;
}

function histogramCounts(h: BitHistogram | undefined): Histogram {
  return { bits16: Number(h?.bits16 ?? 0), bits8: Number(h?.bits8 ?? 0), bits4: Number(h?.bits4 ?? 0), bits2: Number(h?.bits2 ?? 0), kivi: Number(h?.kivi ?? 0) };
}

function rowOf(c: EvalConfig, a: Acc, fp16: Acc | undefined, mode: ModeName): PplRow {
  const tokens = a.tokens.reduce((x, y) => x + y, 0);
  const nll = a.nll.reduce((x, y) => x + y, 0);
  const ppl = Math.exp(nll / tokens);
  let inc: number | null = null, se: number | null = null;
  if (fp16) {
    const fpTokens = fp16.tokens.reduce((x, y) => x + y, 0);
    const fpPpl = Math.exp(fp16.nll.reduce((x, y) => x + y, 0) / fpTokens);
    inc = ppl - fpPpl;
    // Per-window differences of mean NLL: the windows are shared, so the pairing removes their variance.
    const d = a.nll.map((x, w) => x / a.tokens[w] - fp16.nll[w] / fp16.tokens[w]);
    const m = mean(d);
    se = d.length > 1 ? ppl * Math.sqrt(d.reduce((s, x) => s + (x - m) ** 2, 0) / (d.length - 1) / d.length) : null;
  }
  const h = a.hist, total = h.bits16 + h.bits8 + h.bits4 + h.bits2 + h.kivi || 1;
  return {
    eval: 'ppl',
    policy: c.policy,
    target_beta: c.targetBeta,
    achieved_beta: round(mean(a.beta), 4),
    max_beta: round(a.maxBeta, 4),
    budget_missed: a.missed,
    reallocations: a.reallocations,
    ppl: round(ppl, 4),
    ppl_increase: inc === null ? null : round(inc, 4),
    ppl_increase_se: se === null ? null : round(se, 4),
    bits_per_byte: round(nll / Math.LN2 / a.bytes, 4),
    nll_per_token: round(nll / tokens, 5),
    histogram: { bits16: round(h.bits16 / total, 4), bits8: round(h.bits8 / total, 4), bits4: round(h.bits4 / total, 4), bits2: round(h.bits2 / total, 4), kivi: round(h.kivi / total, 4) },
    windows: a.nll.length,
    tokens,
    bytes: a.bytes,
    ...budgetRowFields(a.budget, mode),
  };
}

export async function evalPpl(o: EvalOptions, io: EvalIo, command: string): Promise<PplRow[]> {
  const configs = evalConfigs(o);
  const corpus = await corpusModule();
  const held = await heldOutText(corpus);
  return withServer(o, io, async ({ client, info, where }) => {
    const windowTokens = o.quick ? Math.min(QUICK_WINDOW_TOKENS, info.maxPositions) : info.maxPositions;
    // Byte-level model: one token per byte, plus BOS.
    const { windows, available } = heldOutWindows(held.text, windowTokens - 1, o.size ?? (o.quick ? 1 : DEFAULT_SIZE.ppl));
    const items = windows.flatMap((w, wi) => configs.map((c, ci) => ({ w, wi, c, ci }))); // window-major: a steady ETA
    const accs: Acc[] = configs.map(() => ({ nll: [], tokens: [], bytes: 0, beta: [], maxBeta: 0, missed: 0, reallocations: 0, hist: histogramCounts(undefined), budget: emptyBudgetAcc() }));
    const inFlight = Math.max(1, Math.min(16, info.maxBatch));
    io.err.write(`eval ppl: ${configs.length} rows × ${windows.length} windows of ${windowTokens} tokens = ${items.length} Score requests, ${inFlight} in flight\n`);
    const progress = new Progress('eval ppl', items.length, io.err);
    let scored: ScoreResponse[];
    try {
      scored = await runPool(items, inFlight, (it) => client.score(it.w.text, it.c), () => progress.tick());
    } finally {
      progress.finish();
    }
    items.forEach((it, k) => {
      const r = scored[k], a = accs[it.ci], s = r.summary!;
      a.nll[it.wi] = -r.logprobs.reduce((x, y) => x + y, 0);
      a.tokens[it.wi] = r.logprobs.length;
      a.bytes += it.w.bytes;
      a.beta.push(s.achievedBeta);
      a.maxBeta = Math.max(a.maxBeta, s.maxBeta);
      a.missed += s.budgetMissed;
      a.reallocations += s.reallocations;
      addBudget(a.budget, s);
      const h = histogramCounts(s.histogram);
      for (const key of Object.keys(h) as (keyof Histogram)[]) a.hist[key] += h[key];
    });
    const fp16 = configs.findIndex((c) => c.policy === 'fp16');
    const rows = configs.map((c, i) => rowOf(c, accs[i], fp16 >= 0 ? accs[fp16] : undefined, o.mode));
    const elapsedMs = progress.elapsedMs;
    const prefill = Math.min(windowTokens - 1, info.prefillChunk);
    const report: Report = {
      title: 'SmartKV evaluation: held-out perplexity',
      date: nowIso(),
      command,
      settings: [
        ['model', modelLine(info)],
        ['served by', where],
        [
          'text',
          `${windows.length} windows of ${windowTokens} tokens (BOS + ${windowTokens - 1} bytes), non-overlapping, evenly spaced in document order over ` +
            `the ${available} full windows of the held-out split (${held.documents} documents, ${held.bytes.toLocaleString('en-US')} bytes; ` +
            `regenerated from the npm corpora with training/corpus.mjs, never trained on); the same windows for every row`,
        ],
        [
          'scored',
          `Score with prefill_tokens 0 (the server's prefill chunk): the first ${prefill} tokens as one prefill chunk, the remaining ` +
            `${windowTokens - 1 - prefill} one at a time with a reallocation every R steps; every predicted token counts (${windowTokens - 1} per window)`,
        ],
        ['cache', cacheLine(info, o.gamma)],
        ['mode', modeLine(o.mode)],
        ['rows', `${configs.map((c) => (c.targetBeta === null ? c.policy : `${c.policy}@${c.targetBeta}`)).join(', ')}; ${inFlight} requests in flight`],
      ],
      sections: [{ title: `Perplexity by policy and budget, mode ${o.mode}`, table: pplTable(rows), notes: pplNotes(rows) }],
      footer: [`elapsed ${formatDuration(elapsedMs)} (${items.length} Score requests)`],
    };
    if (o.json) for (const r of rows) io.out(JSON.stringify(r));
    else for (const l of textReport(report)) io.out(l);
    if (o.markdown) writeMarkdownSection(o.markdown, 'ppl', markdownReport(report, '###'));
    io.err.write(`eval ppl: done in ${formatDuration(elapsedMs)}\n`);
    return rows;
  });
}

/** What the run's precision mode means, for the report. */
export function modeLine(mode: ModeName): string {
  return mode === 'reversible'
    ? 'reversible (sent with every request): an FP16 master copy of every token in the cache service\'s file-backed master tier, outside β and reported as master_bytes; plans may raise precision again'
    : 'downgrade-only (sent with every request; npm start\'s default): no master copy, precision only goes down, the hot bytes are all the bytes';
}

/** gamma: the γ sent with every request, when the run overrides the server's. */
export function cacheLine(info: InfoResponse, gamma?: number): string {
  const d = info.defaults!;
  return (
    `R = ${d.reallocInterval} decode steps between reallocations, ${d.sinks} sink tokens and a window of ${d.window} recent tokens kept at 16 bits, ` +
    `γ = ${gamma ?? d.gamma}${gamma === undefined ? '' : ' (sent with every request)'}, importance ${ImportanceMode[d.importance]?.toLowerCase() ?? d.importance}, layers ${LayerMode[d.layers]?.toLowerCase().replace('_', '-') ?? d.layers} ` +
    `(the server's defaults); β = bytes held (scales and bookkeeping included) / FP16 bytes; unbudgeted rows are sent β = 1 (their plans do not consult it)`
  );
}

function pplTable(rows: PplRow[]) {
  const hist = (r: PplRow) => [r.histogram.bits16, r.histogram.bits8, r.histogram.bits4, r.histogram.bits2, r.histogram.kivi].map((x) => pct(x, 0));
  return {
    columns: [
      { title: 'policy' },
      { title: 'β target', right: true },
      { title: 'β achieved', right: true },
      { title: 'missed', right: true },
      { title: 'met', right: true },
      { title: 'hot kB', right: true },
      { title: 'master kB', right: true },
      { title: 'ppl', right: true },
      { title: 'Δppl vs fp16', right: true },
      { title: 'bits/byte', right: true },
      ...['16b', '8b', '4b', '2b', 'kivi'].map((title) => ({ title, right: true })),
    ],
    rows: rows.map((r) => [
      r.policy,
      fixed(r.target_beta, 2),
      fixed(r.achieved_beta, 3),
      r.target_beta === null ? '—' : `${r.budget_missed}/${r.reallocations}`,
      r.target_beta === null ? '—' : pct(r.budget_met_share, 0),
      (r.hot_bytes / 1000).toFixed(1),
      (r.master_bytes / 1000).toFixed(1),
      fixed(r.ppl, 4),
      r.ppl_increase === null ? '—' : `${r.ppl_increase >= 0 ? '+' : ''}${r.ppl_increase.toFixed(4)}${r.ppl_increase_se !== null ? ` ± ${r.ppl_increase_se.toFixed(4)}` : ''}`,
      fixed(r.bits_per_byte, 4),
      ...hist(r),
    ]),
  };
}

function pplNotes(rows: PplRow[]): string[] {
  const notes = [
    '  β achieved: mean over windows at the end of each window. missed: reallocations whose plan did not meet β / all reallocations',
    '  (summary.budget_missed / summary.reallocations, summed over windows). met: share of windows whose summary says budget_met',
    '  (β met at the end and by every plan at a length from which it binds). hot kB: the cache\'s bytes (what β counts), master kB:',
    '  the master tier (reversible mode), both means per window at its end. Δppl ± its paired standard error over windows.',
    '  16b … kivi: share of token-layers at each precision at the end of each window.',
  ];
  return rows.length ? notes : [];
}
