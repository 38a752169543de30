// Output of `smartkv bench attention`: a fixed-width table for people, one
// JSON object per line for machines.

export interface BenchRow {
  shape: 'mha' | 'gqa';
  q_heads: number;
  kv_heads: number;
  head_dim: number;
  n: number; // cached tokens per sequence before the timed calls
  batch: number;
  variant: string;
  block_tokens: number | null; // the engine's storage block (null: dense rows, plain arrays)
  target_beta: number | null; // SmartKV mixes only
  achieved_beta: number; // bytes held / FP16 bytes of the same tokens (dense fp32: 2)
  hot_bytes: number; // bytes the call reads (the engine's held bytes, or the dense arrays)
  master_bytes: number; // 0: no master copies in the benchmark
  fp16_bytes: number; // the same tokens in FP16
  mode: string; // 'downgrade-only'
  budget_met: boolean; // achieved_beta ≤ target_beta (true for rows without a target)
  us: number; // median µs per call
  reps: number;
  bytes: number; // bytes the call reads: engine held bytes, or the dense arrays
  gbps: number; // bytes / time
  bandwidth_gbps: number; // the probe's result in this run
  pct_bandwidth: number; // gbps as % of the probe
  speedup_vs_fp16: number; // fp16-dense µs / this row's µs, same shape, n and batch: for engine rows the median over
  // calls made alternately with fp16-dense (speedup_paired), so that load drift between the two rows cancels
  speedup_paired: boolean;
}

const COLUMNS: [string, number, (r: BenchRow) => string][] = [
  ['shape', 5, (r) => r.shape],
  ['n', 6, (r) => String(r.n)],
  ['batch', 5, (r) => String(r.batch)],
  ['variant', 14, (r) => r.variant],
  ['β target', 8, (r) => (r.target_beta === null ? '-' : r.target_beta.toFixed(2))],
  ['β', 6, (r) => r.achieved_beta.toFixed(3)],
  ['µs/call', 10, (r) => r.us.toFixed(0)],
  ['MB read', 9, (r) => (r.bytes / 1e6).toFixed(1)],
  ['GB/s', 7, (r) => r.gbps.toFixed(1)],
  ['% bw', 6, (r) => r.pct_bandwidth.toFixed(0)],
  ['vs fp16', 8, (r) => `${r.speedup_vs_fp16.toFixed(2)}x`],
];

export function tableHeader(): string {
  const head = COLUMNS.map(([name, w], i) => (i < 4 ? name.padEnd(w) : name.padStart(w))).join(' ');
  return `${head}\n${'-'.repeat(head.length)}`;
}

export function tableRow(r: BenchRow): string {
  return COLUMNS.map(([, w, f], i) => (i < 4 ? f(r).padEnd(w) : f(r).padStart(w))).join(' ');
}
