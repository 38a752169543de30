// Paired statistics for comparing two policies on the same samples.
//
// Every evaluated sample is scored under every row, so two rows are compared
// sample by sample (paired), never as two independent proportions:
//   - accuracy: McNemar's exact test on the discordant pairs (b = only A right,
//     c = only B right; under H0 each discordant pair is a fair coin), and a
//     paired bootstrap interval for the difference in accuracy;
//   - bits per byte: a paired bootstrap of the mean per-sample difference,
//     with a two-sided p-value from the bootstrap distribution shifted to H0.
// The bootstrap is seeded, so a rerun on the same outcomes gives the same
// interval and p-value.
import { mulberry32 } from '../services/common/random.js';

export interface PairedResult {
  n: number; // paired samples
  diff: number; // mean(A) − mean(B): accuracy points as a fraction, or bits per byte
  ci95: [number, number]; // paired bootstrap percentile interval of diff
  pValue: number; // two-sided
}

/** log(k!) for k = 0..n, by summing logs (exact enough for n up to millions). */
function logFactorials(n: number): Float64Array {
  const lf = new Float64Array(n + 1); // [n+1] lf[k] = ln k!
  for (let k = 2; k <= n; k++) lf[k] = lf[k - 1] + Math.log(k);
  return lf;
}

/**
 * Two-sided exact McNemar p-value: P(X ≤ min(b, c)) · 2 for X ~ Binomial(b + c, ½),
 * capped at 1. b + c = 0 (no discordant pairs) gives 1.
 */
export function mcnemarExact(b: number, c: number): number {
  const n = b + c;
  if (n === 0) return 1;
  const k = Math.min(b, c);
  const lf = logFactorials(n);
  const logHalfN = -n * Math.LN2;
  let tail = 0;
  for (let i = 0; i <= k; i++) tail += Math.exp(lf[n] - lf[i] - lf[n - i] + logHalfN);
  return Math.min(1, 2 * tail);
}

/** Mean of resampled paired differences, `reps` times (seeded). */
function bootstrapMeans(d: readonly number[], reps: number, seed: number): Float64Array {
  const rng = mulberry32(seed);
  const n = d.length;
  const out = new Float64Array(reps); // [reps] mean of one resample of the differences
  for (let r = 0; r < reps; r++) {
    let s = 0;
    for (let i = 0; i < n; i++) s += d[Math.floor(rng() * n)];
    out[r] = s / n;
  }
  return out.sort();
}

function quantile(sorted: Float64Array, q: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))));
  return sorted[i];
}

/** Paired bootstrap of mean(a − b): interval, and p = share of |mean* − mean| ≥ |mean| (H0-shifted). */
export function pairedBootstrap(a: readonly number[], b: readonly number[], reps = 4000, seed = 12345): PairedResult {
  if (a.length !== b.length) throw new Error(`paired samples differ in length: ${a.length} vs ${b.length}`);
  const n = a.length;
  if (n === 0) return { n, diff: NaN, ci95: [NaN, NaN], pValue: NaN };
  const d = a.map((x, i) => x - b[i]);
  const diff = d.reduce((s, x) => s + x, 0) / n;
  const means = bootstrapMeans(d, reps, seed);
  let extreme = 0;
  for (const m of means) if (Math.abs(m - diff) >= Math.abs(diff) - 1e-15) extreme++;
  return { n, diff, ci95: [quantile(means, 0.025), quantile(means, 0.975)], pValue: Math.min(1, (extreme + 1) / (reps + 1)) };
}

/** Accuracy of A vs B on the same samples (1 = right, 0 = wrong): McNemar p, bootstrap interval. */
export function pairedAccuracy(a: readonly boolean[], b: readonly boolean[], reps = 4000, seed = 12345): PairedResult & { onlyA: number; onlyB: number } {
  if (a.length !== b.length) throw new Error(`paired samples differ in length: ${a.length} vs ${b.length}`);
  let onlyA = 0, onlyB = 0;
  a.forEach((x, i) => {
    if (x && !b[i]) onlyA++;
    else if (!x && b[i]) onlyB++;
  });
  const boot = pairedBootstrap(a.map(Number), b.map(Number), reps, seed);
  return { ...boot, pValue: mcnemarExact(onlyA, onlyB), onlyA, onlyB };
}
