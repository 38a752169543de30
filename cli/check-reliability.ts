// `smartkv check reliability [--json] [--quick] [--only a,b]`: starts its own
// local system (allocator, two cache shards under a small memory limit,
// orchestrator — separate processes) and runs issue 18's scenarios against
// it, in an order where each leaves the system whole for the next (the
// SIGTERM drain, which ends it, last). One row per scenario (cli/reliability/
// report.ts); the exit code is 1 when a goal is missed, and each miss is
// printed on stderr as "MISSED [timing|correctness] scenario: what".
import { cancelStorm, overload, soak } from './reliability/load.js';
import { fuzz, stranger } from './reliability/hostile.js';
import { hungShard, killedAllocator, killedShard, sigtermDrain } from './reliability/faults.js';
import { table, type Miss, type Row } from './reliability/report.js';
import type { Scenario } from './reliability/scenario.js';
import { rng } from './reliability/streams.js';
import { SETTINGS, System } from './reliability/system.js';

export const SCENARIOS: Scenario[] = [cancelStorm, overload, fuzz, stranger, soak, killedShard, hungShard, killedAllocator, sigtermDrain];

export interface CheckOptions {
  json: boolean;
  quick: boolean;
  only?: string[]; // scenario names (default: all)
  seed?: number;
}

interface Io {
  out: (line: string) => void;
  progress: (line: string) => void;
}

export async function checkReliability(o: CheckOptions, io: Io): Promise<{ rows: Row[]; misses: Miss[] }> {
  const chosen = o.only?.length ? SCENARIOS.filter((s) => o.only!.includes(s.name)) : SCENARIOS;
  const unknown = (o.only ?? []).filter((n) => !SCENARIOS.some((s) => s.name === n));
  if (unknown.length) throw new Error(`unknown scenario ${unknown[0]} (known: ${SCENARIOS.map((s) => s.name).join(', ')})`);
  const t0 = Date.now();
  io.progress(`reliability: starting the system (2 cache shards, ${SETTINGS.memoryLimitBytes} bytes each) …`);
  const sys = await System.start(SETTINGS, io.progress);
  const rows: Row[] = [];
  const misses: Miss[] = [];
  const ctx = { sys, quick: o.quick, rand: rng(o.seed ?? 18), progress: io.progress };
  try {
    for (const s of chosen) {
      const s0 = Date.now();
      io.progress(`reliability: ${s.name} …`);
      const r = await s.run(ctx);
      rows.push(r.row);
      misses.push(...r.misses);
      io.progress(`reliability: ${s.name} done in ${((Date.now() - s0) / 1000).toFixed(1)} s: ${r.row.requests} requests, ${r.row.unexpected} unexpected, ${r.row.leaked_sequences} leaked`);
      if (o.json) io.out(JSON.stringify(r.row));
    }
  } catch (e) {
    io.progress(`reliability: a scenario failed to run: ${(e as Error).stack ?? e}\nlast log lines:\n${sys.recentLogs()}`);
    misses.push({ scenario: 'suite', what: `could not run: ${(e as Error).message}`, timing: false });
  } finally {
    await sys.stop();
  }
  if (!o.json) io.out(table(rows));
  for (const m of misses) io.progress(`MISSED [${m.timing ? 'timing' : 'correctness'}] ${m.scenario}: ${m.what}`);
  io.progress(`reliability: ${rows.length} scenarios in ${((Date.now() - t0) / 1000).toFixed(0)} s; ${misses.length ? `${misses.length} goals missed` : 'every goal met'}`);
  return { rows, misses };
}
