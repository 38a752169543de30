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
