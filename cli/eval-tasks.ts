// The samples of `smartkv eval suite` and how one sample is scored under one row.
//
// Retrieval tasks come from training/tasks.mjs with its HELD-OUT phrasings and
// held-out documents, never the training ones. Seeds are declared up front:
//   dev  = TASK_DEV_SEED_BASE  + k   (for tuning the method)
//   test = TASK_TEST_SEED_BASE + k   (published tables, run once)
// with k = task index · 1e6 + context index · 1e5 + sample index, where the
// task index is the task's place in SUITE_TASKS and the context index is
// round(log2(context / 256)) (1K → 2, 2K → 3, 4K → 4, 8K → 5): every
// (task, context) cell has its own disjoint seeds, and a cell gets the same
// samples whichever other tasks and contexts a run (suite or ablation) asks for.
//
// Scoring goes through the public Score API with prefill_tokens = BOS + the
// context: the context is prefilled in chunks with plans between them, then
// the questions and answers are fed one token at a time, with reallocation
// every R steps — so the cache is planned before any question arrives. A turn
// is right iff the greedy choice (top_token_ids) is the answer's byte at every
// position of the answer, given the text before it (earlier turns included,
// with their correct answers). `longppl` scores held-out text and reports bits
// per byte by position band; `contppl` prefills the first 7/8 of such a window
// (in chunks, with plans between them, as a retrieval context) and scores
// only the last 1/8, fed one token at a time after the plan at the end of the
// prefill: what the cache kept of the prompt decides it, as for a question.
//
// Perplexity windows: dev windows come from the first half of the held-out
// text and test windows from the second half, spread evenly in each. (Before
// 2026-12-02 20:30 UTC both seed sets used the same windows over the whole
// text; docs/results/campaign-test-8k-2026-12-02 ran on those.)
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import type { ScoreResponse } from '../gen/smartkv/v1/generation_pb.js';

export const RETRIEVAL_TASKS = ['passkey', 'multikey', 'multivalue', 'multiquery', 'vartrack', 'multiturn'] as const;
export const PPL_TASKS = ['longppl', 'contppl'] as const;
export const SUITE_TASKS = [...RETRIEVAL_TASKS, ...PPL_TASKS] as const;
export type SuiteTask = (typeof SUITE_TASKS)[number];
export type SeedSet = 'dev' | 'test';

/** Perplexity tasks report bits per byte per band; retrieval tasks, accuracy. */
export const isPplTask = (t: SuiteTask): boolean => (PPL_TASKS as readonly string[]).includes(t);
/** `contppl`'s one band: the bytes after the prefill. */
export const CONT_BAND = 'cont';
/** Share of a `contppl` window that is prefilled. */
const CONT_PREFILL = 7 / 8;

/** Position bands of `longppl` (token positions of the predicted byte; BOS = 0): [from, to). */
export const PPL_BANDS: Record<string, [number, number]> = { '0-1K': [1, 1024], '≥1K': [1024, Infinity], '≥4K': [4096, Infinity], all: [1, Infinity] };

export interface TaskSample {
  task: SuiteTask;
  context: number; // tokens the sample fills (BOS + text), at most
  seed: number;
  depth: number | null; // depth of the asked fact (retrieval tasks)
  text: string;
  prefillTokens: number; // BOS + the context before the first question
  answerSpans: [number, number][]; // byte ranges of the answers in text (retrieval tasks)
}

interface Doc { name: string; text: string }

interface TasksModule {
  makeTaskSample(o: { task: string; seed: number; totalBytes: number; phrasing: 'train' | 'heldout'; documents: Doc[]; depth?: number }): {
    text: string; context: string; answerSpans: [number, number][];
  };
  TASK_DEV_SEED_BASE: number;
  TASK_TEST_SEED_BASE: number;
}

interface CorpusModule {
  loadDocuments(): Doc[];
  splitDocuments(docs: Doc[]): { train: Doc[]; heldout: Doc[] };
}

async function trainingModule<T>(file: string): Promise<T> {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const f = join(dir, 'training', file);
    if (existsSync(f)) return (await import(pathToFileURL(f).href)) as T;
    dir = resolve(dir, '..');
  }
  throw new Error(`training/${file} not found above ${dirname(fileURLToPath(import.meta.url))}`);
}

const byteLen = (s: string) => Buffer.byteLength(s, 'utf8');
// Low-discrepancy depths: sample i of a cell sits at frac(0.5 + i·φ), so any n samples spread over [0, 1).
const depthOf = (i: number) => (0.5 + i * 0.6180339887498949) % 1;

/** A context's place in the seed formula: round(log2(context / 256)), clamped to [0, 9]. */
export function contextSeedIndex(context: number): number {
  return Math.max(0, Math.min(9, Math.round(Math.log2(context / 256))));
}

/** Every sample of the run, in (task, context, index) order; the same for every row. */
export async function buildSamples(tasks: readonly SuiteTask[], contexts: readonly number[], perCell: number, seeds: SeedSet): Promise<TaskSample[]> {
  const tm = await trainingModule<TasksModule>('tasks.mjs');
  const corpus = await trainingModule<CorpusModule>('corpus.mjs');
  const { heldout } = corpus.splitDocuments(corpus.loadDocuments());
  const base = seeds === 'dev' ? tm.TASK_DEV_SEED_BASE : tm.TASK_TEST_SEED_BASE;
  const heldText = heldout.map((d) => d.text.replace(/\s+/g, ' ').trim()).join(' ');
  const out: TaskSample[] = [];
  tasks.forEach((task) => {
    const ti = SUITE_TASKS.indexOf(task);
    contexts.forEach((context) => {
      const ci = contextSeedIndex(context);
      for (let i = 0; i < perCell; i++) {
        const seed = base + ti * 1_000_000 + ci * 100_000 + i;
        if (isPplTask(task)) {
          const w = pplWindow(heldText, context, seeds, i, perCell);
          // BOS + the first 7/8 of the window; the rest is scored
          if (task === 'contppl') w.prefillTokens = 1 + Math.floor(CONT_PREFILL * Buffer.byteLength(w.text, 'utf8'));
          out.push({ task, context, seed, depth: null, ...w });
          continue;
        }
        const depth = depthOf(i);
        // BOS + text must fit in `context` tokens (byte-level model: one token per byte).
        const s = tm.makeTaskSample({ task, seed, totalBytes: context - 2, phrasing: 'heldout', documents: heldout, depth });
        out.push({ task, context, seed, depth, text: s.text, prefillTokens: 1 + byteLen(s.context), answerSpans: s.answerSpans });
      }
    });
  });
  return out;
}

/** Held-out text windows of `context` − 1 bytes, spread evenly over the
 *  first (dev) or second (test) half of the held-out documents. */
export function pplWindow(held: string, context: number, seeds: SeedSet, i: number, n: number): Pick<TaskSample, 'text' | 'prefillTokens' | 'answerSpans'> {
  const all = Buffer.from(held, 'utf8');
  const half = Math.floor(all.length / 2);
  const bytes = seeds === 'dev' ? all.subarray(0, half) : all.subarray(half);
  const len = context - 1;
  if (bytes.length < len) throw new Error(`${seeds} perplexity windows of ${len} bytes do not fit in ${bytes.length} bytes of held-out text`);
  const span = Math.max(0, bytes.length - len);
  let start = Math.floor(((i + 0.5) / n) * span);
  while (start < bytes.length && (bytes[start] & 0xc0) === 0x80) start++;
  let end = Math.min(bytes.length, start + len);
  while (end > start && (bytes[end] & 0xc0) === 0x80) end--;
  return { text: bytes.subarray(start, end).toString('utf8'), prefillTokens: 0, answerSpans: [] };
}

export interface Scored {
  turns: boolean[]; // per answer: every byte the greedy choice
  correct: boolean; // every turn right
  bitsPerByte: Record<string, number> | null; // longppl, contppl: band → bits per byte
  // Retrieval tasks: −log2 p of the right answer bytes, per answer byte (teacher
  // forced, as for `correct`). Graded where accuracy is all-or-nothing: it tells
  // rows apart when the model is unsure, e.g. when every row misses a first digit.
  answerBits: number | null;
}

/** Outcome of one Score response for one sample. Token i+1 is byte i of the text (token 0 = BOS). */
export function scoreOutcome(s: TaskSample, r: ScoreResponse): Scored {
  if (s.task === 'contppl') {
    // logprobs[i] predicts token i+1; score from the first token fed after the prefill's last plan
    let nll = 0;
    for (let i = s.prefillTokens; i < r.logprobs.length; i++) nll -= r.logprobs[i];
    const n = r.logprobs.length - s.prefillTokens;
    return { turns: [], correct: true, bitsPerByte: { [CONT_BAND]: n > 0 ? nll / n / Math.LN2 : NaN }, answerBits: null };
  }
  if (s.task === 'longppl') {
    const bands: Record<string, number> = {};
    for (const [name, [a, b]] of Object.entries(PPL_BANDS)) {
      // logprobs[i] predicts token i+1 (position i+1)
      const lo = a - 1, hi = Math.min(b, r.logprobs.length + 1) - 1;
      if (hi <= lo) continue;
      let nll = 0;
      for (let i = lo; i < hi; i++) nll -= r.logprobs[i];
      bands[name] = nll / (hi - lo) / Math.LN2;
    }
    return { turns: [], correct: true, bitsPerByte: bands, answerBits: null };
  }
  const ids = r.tokenIds, top = r.topTokenIds;
  const turns = s.answerSpans.map(([a, e]) => {
    for (let i = a; i < e; i++) if (top[i] !== ids[i + 1]) return false;
    return true;
  });
  // top[i] and logprobs[i] are the prediction at position i, of token i+1 = byte i
  let nll = 0, n = 0;
  for (const [a, e] of s.answerSpans) for (let i = a; i < e; i++, n++) nll -= r.logprobs[i];
  return { turns, correct: turns.every(Boolean), bitsPerByte: null, answerBits: n > 0 ? nll / n / Math.LN2 : null };
}
