// One model step for a batch of sequences with attention in cache shards:
// the dense part of every layer runs here (NativeModel, off the main thread),
// each layer's attention is one call per shard carrying that shard's part of
// the batch. A shard that fails fails only its own sequences: rows do not
// interact outside attention, so the others finish the step unchanged.
import { trace, type Context, type Link } from '@opentelemetry/api';

import type { CacheShard } from '../cache/cache-api.js';
import { childOf, instruments, traceparentOf } from '../telemetry/spans.js';
import type { Model } from './model/model.js';

export interface StepItem {
  shard: CacheShard;
  seq: number;
  start: number; // position of the first new token (tokens already cached)
  tokens: number[]; // new tokens: a prefill chunk or one decode token
  allLogits: boolean; // logits for every row (scoring a chunk), else only the last
  trace?: Context; // the item's step span: attend spans are its children (or link to it)
}

/** Per-layer attend spans cost (measured with `smartkv bench e2e --tracing`),
 * so by default a step records its layers' attend times as attributes of its
 * span; SMARTKV_TRACE_ATTEND=spans records a span per layer and shard (and the
 * cache service one per request) instead. */
const ATTEND_SPANS = process.env.SMARTKV_TRACE_ATTEND === 'spans';

export interface StepResult {
  /** Per item: [rows or 1][vocab] f32 logits, or the error that failed it. */
  logits: (Float32Array | Error)[];
  attendUs: number[]; // wall time of each per-layer attention round (all shards)
  engineUs: number[]; // per layer: the slowest shard's engine time (attendUs − engineUs: transport)
}

export async function runStep(model: Model, items: readonly StepItem[]): Promise<StepResult> {
  const buf = stepBuffers(model, items.reduce((a, it) => a + it.tokens.length, 0));
  try {
    return await runStepIn(model, items, buf);
  } finally {
    buf.release();
  }
}

async function runStepIn(model: Model, items: readonly StepItem[], buf: StepBuffers): Promise<StepResult> {
  const c = model.config, m = model.native;
  const H = c.heads, KV = c.kvHeads, D = c.headDim;
  const total = items.reduce((a, it) => a + it.tokens.length, 0);
  const rowStart: number[] = [];
  const { tokens, positions, x, q, k, v, o } = buf;
  let r = 0;
  for (const it of items) {
    rowStart.push(r);
    it.tokens.forEach((t, i) => {
      tokens[r] = t;
      positions[r++] = it.start + i;
    });
  }
  const failed: (Error | null)[] = items.map(() => null);
  const attendUs: number[] = [];
  const engineUs: number[] = [];

  await m.embed(tokens, x);
  for (let l = 0; l < c.layers; l++) {
    await m.preAttention(l, x, positions, q, k, v);
    const byShard = new Map<CacheShard, number[]>();
    items.forEach((it, i) => {
      if (failed[i]) return;
      const list = byShard.get(it.shard) ?? [];
      list.push(i);
      byShard.set(it.shard, list);
    });
    o.fill(0);
    const t0 = performance.now();
    let engine = 0;
    await Promise.all(
      [...byShard].map(async ([shard, idx]) => {
        const part = idx.map((i) => {
          const r0 = rowStart[i], rows = items[i].tokens.length;
          return {
            seq: items[i].seq,
            rows,
            q: q.subarray(r0 * H * D, (r0 + rows) * H * D),
            kNew: k.subarray(r0 * KV * D, (r0 + rows) * KV * D),
            vNew: v.subarray(r0 * KV * D, (r0 + rows) * KV * D),
            out: o.subarray(r0 * H * D, (r0 + rows) * H * D), // written in place where the shard can
          };
        });
        // One span per shard and layer, under the first sequence's step, linked to the others'.
        const first = items[idx[0]].trace;
        const links: Link[] = idx.slice(1).flatMap((i) => {
          const sc = items[i].trace && trace.getSpanContext(items[i].trace!);
          return sc ? [{ context: sc }] : [];
        });
        const span = ATTEND_SPANS && first ? childOf(first, 'attend', { 'smartkv.layer': l, 'smartkv.sequences': idx.length, 'smartkv.rows': part.reduce((a, p) => a + p.rows, 0) }, links) : undefined;
        const ta = performance.now();
        try {
          const res = await shard.attend(l, part, traceparentOf(span));
          idx.forEach((i, j) => res.out[j] !== part[j].out && o.set(res.out[j], rowStart[i] * H * D));
          span?.setAttribute('smartkv.engine_us', res.engineUs);
          engine = Math.max(engine, res.engineUs);
        } catch (e) {
          for (const i of idx) failed[i] = e as Error;
          span?.recordException(e as Error);
        } finally {
          span?.end();
          instruments().attendDuration.record((performance.now() - ta) * 1000, { side: 'orchestrator' });
        }
      }),
    );
    attendUs.push(Math.round((performance.now() - t0) * 1000));
    engineUs.push(engine);
    await m.postAttention(l, o, total, x);
  }

  // Logits only for the rows someone reads: the last row, or all for scoring.
  const want: number[] = []; // row indices
  items.forEach((it, i) => {
    if (failed[i]) return;
    const rows = it.tokens.length;
    if (it.allLogits) for (let j = 0; j < rows; j++) want.push(rowStart[i] + j);
    else want.push(rowStart[i] + rows - 1);
  });
  const xs = new Float32Array(want.length * c.dModel); // [want][dModel]
  want.forEach((row, j) => xs.set(x.subarray(row * c.dModel, (row + 1) * c.dModel), j * c.dModel));
  const logits = new Float32Array(want.length * c.vocab); // [want][vocab]
  if (want.length > 0) await m.logits(xs, want.length, logits);

  let w = 0;
  const out = items.map((it, i) => {
    const err = failed[i];
    if (err) return err;
    const n = it.allLogits ? it.tokens.length : 1;
    const part = logits.subarray(w * c.vocab, (w + n) * c.vocab);
    w += n;
    return part;
  });
  return { logits: out, attendUs, engineUs };
}

/** A step's working buffers, views of exactly `rows` rows. */
interface StepBuffers {
  tokens: Uint32Array; // [rows]
  positions: Uint32Array; // [rows]
  x: Float32Array; // [rows][dModel] residual stream
  q: Float32Array; // [rows][H][D]
  k: Float32Array; // [rows][KV][D]
  v: Float32Array; // [rows][KV][D]
  o: Float32Array; // [rows][H*D] attention output
  release(): void;
}

interface Held {
  rows: number; // capacity
  busy: boolean;
  whole: Omit<StepBuffers, 'release'>;
}

/** Per model: buffers kept from step to step and grown when a step has more
 * rows, so a decode step allocates nothing here (a step that runs while
 * another holds them, which one scheduler never does, gets its own). */
const held = new WeakMap<Model, Held>();

function stepBuffers(model: Model, rows: number): StepBuffers {
  const c = model.config, H = c.heads, KV = c.kvHeads, D = c.headDim;
  const make = (n: number): Omit<StepBuffers, 'release'> => ({
    tokens: new Uint32Array(n),
    positions: new Uint32Array(n),
    x: new Float32Array(n * c.dModel),
    q: new Float32Array(n * H * D),
    k: new Float32Array(n * KV * D),
    v: new Float32Array(n * KV * D),
    o: new Float32Array(n * H * D),
  });
  let h = held.get(model);
  if (h?.busy) return { ...make(rows), release: () => undefined };
  if (!h || h.rows < rows) held.set(model, (h = { rows: Math.max(rows, 2 * (h?.rows ?? 0)), busy: false, whole: make(Math.max(rows, 2 * (h?.rows ?? 0))) }));
  const w = h.whole, hh = h;
  hh.busy = true;
  return {
    tokens: w.tokens.subarray(0, rows),
    positions: w.positions.subarray(0, rows),
    x: w.x.subarray(0, rows * c.dModel),
    q: w.q.subarray(0, rows * H * D),
    k: w.k.subarray(0, rows * KV * D),
    v: w.v.subarray(0, rows * KV * D),
    o: w.o.subarray(0, rows * H * D),
    release: () => (hh.busy = false),
  };
}

/** log softmax(logits)[token], in float64. */
export function logProb(logits: Float32Array, token: number): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return logits[token] - max - Math.log(sum);
}
