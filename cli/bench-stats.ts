// Timing helpers for the benchmarks: run a call after a warm-up, take the median.

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Median µs of `reps` awaited calls of fn after `warmup` untimed ones. */
export async function timeCalls(fn: () => Promise<unknown>, warmup: number, reps: number): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  const us: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    us.push(Number(process.hrtime.bigint() - t0) / 1e3);
  }
  return median(us);
}

/** `base` and `fn` called alternately, `reps` pairs after `warmup` of each:
 * the median µs of each and the median over pairs of base µs / fn µs. On a
 * host whose load drifts between seconds a pair sees nearly the same load,
 * so the ratio holds where two medians taken apart do not. */
export async function timePairedCalls(base: () => Promise<unknown>, fn: () => Promise<unknown>, warmup: number, reps: number): Promise<{ us: number; baseUs: number; ratio: number }> {
  for (let i = 0; i < warmup; i++) {
    await base();
    await fn();
  }
  const time = async (f: () => Promise<unknown>) => {
    const t0 = process.hrtime.bigint();
    await f();
    return Number(process.hrtime.bigint() - t0) / 1e3;
  };
  const us: number[] = [], baseUs: number[] = [], ratio: number[] = [];
  for (let i = 0; i < reps; i++) {
    baseUs.push(await time(base));
    us.push(await time(fn));
    ratio.push(baseUs[i] / us[i]);
  }
  return { us: median(us), baseUs: median(baseUs), ratio: median(ratio) };
}
