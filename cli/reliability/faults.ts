// Faults: a killed shard, a hung shard (SIGSTOP), a killed allocator, and
// SIGTERM with streams in flight. Only the requests that depended on the
// failed part may fail, with a clean status and quickly; the others keep
// streaming; the part comes back (a restart, SIGCONT) and serves again.
import { Status } from '../../services/common/rpc-error.js';
import type { ServiceProcess } from '../../services/launcher/cluster.js';
import { rssMb } from './raw-client.js';
import { Tally, type Miss } from './report.js';
import { finish, longRequest, type Ctx, type Outcome, type Scenario } from './scenario.js';
import { maxGapAfter, maxGapBefore, openStream, sleep, type OpenStream, type StreamResult } from './streams.js';

/** Long streams, started together; resolves once each has a token (or ended). */
async function streams(ctx: Ctx, n: number, maxTokens: number): Promise<{ open: OpenStream[]; close: () => void }> {
  const client = ctx.sys.publicClient();
  const open = Array.from({ length: n }, (_, i) => openStream(client, longRequest(ctx, maxTokens, 200 + i)));
  await Promise.all(open.map((s) => Promise.race([s.firstToken, s.done])));
  return { open, close: () => client.close() };
}

/** A few requests after recovery: each must be served (retried while the part comes back). */
async function servedAgain(ctx: Ctx, t: Tally, n: number, retryCodes: number[], withinMs: number): Promise<void> {
  const client = ctx.sys.publicClient();
  const until = Date.now() + withinMs;
  for (let i = 0; i < n; i++) {
    for (;;) {
      const r = await openStream(client, longRequest(ctx, 8, 300 + i)).done;
      const retry = r.code !== 0 && retryCodes.includes(r.code) && Date.now() < until;
      t.add(r.code, `after recovery: ${r.details}`, retry ? retryCodes : []);
      if (!retry) break;
      await sleep(500);
    }
  }
  client.close();
}

/** Splits results into those of the shard at `address` (failed, naming it) and the rest. */
function byShard(results: StreamResult[], address: string): { onIt: StreamResult[]; others: StreamResult[] } {
  const onIt = results.filter((r) => r.code !== 0 && r.details.includes(address));
  return { onIt, others: results.filter((r) => !onIt.includes(r)) };
}

async function shardFault(ctx: Ctx, name: 'killed_shard' | 'hung_shard'): Promise<Outcome> {
  const t = new Tally([Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED]);
  const rss = ctx.sys.rssMb();
  const victim: ServiceProcess = ctx.sys.shards[1];
  // 8 × 300 tokens fit the shards' 4 MB (8 × 400 reserved ~1 MB each: one of
  // the healthy shard's was refused for memory). Streams must outlast the
  // fault: 60 tokens at ~1.5 ms a step were all done before it on a fast
  // machine, so --quick runs fewer streams of the same length.
  const { open, close } = await streams(ctx, ctx.quick ? 6 : 8, 300);
  await sleep(ctx.quick ? 100 : 300); // token gaps before the fault, to compare with those after it
  const runningOnVictim = await ctx.sys.sequencesOn(victim);
  const t0 = performance.now();
  const hangMs = ctx.quick ? 4000 : 20_000;
  let resumed: Promise<void> = Promise.resolve();
  if (name === 'killed_shard') {
    ctx.sys.stoppedOnPurpose.add(victim);
    victim.kill('SIGKILL');
  } else {
    victim.kill('SIGSTOP');
    resumed = sleep(hangMs).then(() => void victim.kill('SIGCONT'));
  }
  const results = await Promise.all(open.map((s) => s.done));
  close();
  const { onIt, others } = byShard(results, victim.address);
  const misses: Miss[] = [];
  for (const r of onIt) {
    t.add(r.code, r.details);
    const ms = r.endedAt - t0;
    if (ms > 5000) misses.push({ scenario: name, what: `a request on the failed shard ended ${ms.toFixed(0)} ms after the fault (goal ≤ 5000)`, timing: true });
  }
  for (const r of others) {
    t.add(r.code, `healthy shard: ${r.details}`, []); // requests elsewhere must complete
    if (r.code === 0) t.stall(r.maxGapMs);
  }
  if (onIt.length === 0) {
    const doneBefore = results.filter((r) => r.endedAt < t0).length;
    misses.push({
      scenario: name,
      what: `no request failed on the failed shard (it held ${runningOnVictim} sequences just before the fault; ${doneBefore} of ${results.length} requests had ended before it)`,
      timing: false,
    });
  }
  if (t.maxStallMs > 2000) misses.push({ scenario: name, what: `a healthy-shard request stalled ${t.maxStallMs.toFixed(0)} ms (goal ≤ 2000)`, timing: true });
  // The gap the fault caused, apart from those the machine's load causes anyway.
  const healthy = others.filter((r) => r.code === 0);
  const before = Math.max(0, ...healthy.map((r) => maxGapBefore(r, t0)));
  const after = Math.max(0, ...healthy.map((r) => maxGapAfter(r, t0)));
  ctx.progress(
    `  ${name}: ${onIt.length} requests on the failed shard ended in ≤ ${Math.round(Math.max(0, ...onIt.map((r) => r.endedAt - t0)))} ms; ` +
      `${others.length} elsewhere, longest token gap ${Math.round(t.maxStallMs)} ms (${Math.round(before)} ms before the fault, ${Math.round(after)} ms from it on)`,
  );
  await resumed;
  if (name === 'killed_shard') {
    const r0 = performance.now();
    await ctx.sys.cluster.restartCache(1);
    ctx.sys.stoppedOnPurpose.delete(victim);
    ctx.progress(`  killed_shard: restarted in ${Math.round(performance.now() - r0)} ms`);
  }
  await ctx.sys.allShardsServing();
  await servedAgain(ctx, t, 2, [Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED], 15_000);
  return finish(ctx, name, t, rss, misses);
}

export const killedShard: Scenario = { name: 'killed_shard', run: (ctx) => shardFault(ctx, 'killed_shard') };
export const hungShard: Scenario = { name: 'hung_shard', run: (ctx) => shardFault(ctx, 'hung_shard') };

/** The allocator is killed while requests plan their caches: those that
 * needed a plan end UNAVAILABLE (never INTERNAL), the rest finish; once it
 * is back on its port, requests are served again. */
export const killedAllocator: Scenario = {
  name: 'killed_allocator',
  async run(ctx) {
    const t = new Tally([Status.UNAVAILABLE]);
    const rss = ctx.sys.rssMb();
    const a = ctx.sys.cluster.allocator;
    const { open, close } = await streams(ctx, ctx.quick ? 4 : 8, ctx.quick ? 40 : 300);
    ctx.sys.stoppedOnPurpose.add(a);
    a.kill('SIGKILL');
    await a.exited;
    for (const r of await Promise.all(open.map((s) => s.done))) {
      t.add(r.code, r.details);
      if (r.code === 0) t.stall(r.maxGapMs);
    }
    close();
    await a.start(60_000);
    ctx.sys.stoppedOnPurpose.delete(a);
    await servedAgain(ctx, t, 2, [Status.UNAVAILABLE], 20_000);
    return finish(ctx, 'killed_allocator', t, rss);
  },
};

/** SIGTERM to the orchestrator with streams running and queued: queued ones
 * end UNAVAILABLE at once, running ones finish within the grace time or end
 * UNAVAILABLE, new ones get UNAVAILABLE, and every process exits within its
 * grace time + 1 s. The system is gone afterwards: this runs last. */
export const sigtermDrain: Scenario = {
  name: 'sigterm_drain',
  async run(ctx) {
    // RESOURCE_EXHAUSTED: refused for memory before the drain (the shards' limit is small).
    const t = new Tally([Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED]);
    const s = ctx.sys.settings;
    const orch = ctx.sys.cluster.orchestrator;
    const others = ctx.sys.processes.filter((p) => p !== orch);
    const rssOthers = () => others.reduce((a, p) => a + (p.running && p.pid ? rssMb(p.pid) : 0), 0);
    const rss = rssOthers();
    const client = ctx.sys.publicClient();
    // More than a batch: some wait in the queue (short ones, so that memory
    // does not refuse them first). Two long ones run past the grace time.
    const open = Array.from({ length: s.maxBatch + 6 }, (_, i) => openStream(client, longRequest(ctx, i < 2 ? 300 : 16, 400 + i)));
    await Promise.race([Promise.all(open.slice(0, 2).map((o) => o.firstToken)), sleep(20_000)]);
    for (const p of ctx.sys.processes) ctx.sys.stoppedOnPurpose.add(p);
    const t0 = performance.now();
    orch.kill('SIGTERM');
    await sleep(200);
    const late = await Promise.all(Array.from({ length: 4 }, (_, i) => openStream(client, longRequest(ctx, 8, 500 + i)).done));
    const misses: Miss[] = [];
    for (const r of late) {
      t.add(r.code, `new during drain: ${r.details}`);
      if (r.code !== Status.UNAVAILABLE) misses.push({ scenario: 'sigterm_drain', what: `a new request during the drain got ${r.code}, not UNAVAILABLE`, timing: false });
    }
    const ended = await Promise.all(open.map((o) => o.done));
    for (const r of ended) {
      t.add(r.code, r.details);
      if (r.code === 0) t.stall(r.maxGapMs);
      if (r.endedAt - t0 > s.orchestratorGraceMs + 1000)
        misses.push({ scenario: 'sigterm_drain', what: `a stream ended ${(r.endedAt - t0).toFixed(0)} ms after SIGTERM (grace ${s.orchestratorGraceMs} ms)`, timing: true });
    }
    client.close();
    await orch.exited;
    const orchMs = performance.now() - t0;
    if (orchMs > s.orchestratorGraceMs + 1000) misses.push({ scenario: 'sigterm_drain', what: `the orchestrator exited ${orchMs.toFixed(0)} ms after SIGTERM (grace ${s.orchestratorGraceMs} ms)`, timing: true });
    // Its attend streams are gone: the shards must have freed its sequences.
    const leaks = await ctx.sys.leaks(5000);
    const rssGrowthMb = rssOthers() - rss;
    const t1 = performance.now();
    await Promise.all(others.map((p) => p.stop(10_000)));
    const othersMs = performance.now() - t1;
    if (othersMs > 2000 + 1000) misses.push({ scenario: 'sigterm_drain', what: `the shards and the allocator exited ${othersMs.toFixed(0)} ms after SIGTERM (grace 2000 ms)`, timing: true });
    // Queued ones (the scheduler's "shutting down") end at once; running ones finish or end at the grace time.
    const queued = ended.filter((r) => r.code === Status.UNAVAILABLE && /shutting down/.test(r.details));
    const cut = ended.filter((r) => r.code === Status.UNAVAILABLE && !queued.includes(r));
    const finished = ended.filter((r) => r.code === 0);
    const lastEnd = (rs: StreamResult[]) => Math.round(Math.max(0, ...rs.map((r) => r.endedAt - t0)));
    if (lastEnd(queued) > 1000) misses.push({ scenario: 'sigterm_drain', what: `a queued request ended ${lastEnd(queued)} ms after SIGTERM (goal: at once)`, timing: true });
    ctx.progress(
      `  sigterm_drain: orchestrator exited after ${Math.round(orchMs)} ms (grace ${s.orchestratorGraceMs}), the others ${Math.round(othersMs)} ms after theirs; ` +
        `${queued.length} queued requests ended ≤ ${lastEnd(queued)} ms after SIGTERM, ${finished.length} finished ≤ ${lastEnd(finished)} ms, ${cut.length} cut at the grace time ≤ ${lastEnd(cut)} ms`,
    );
    return finish(ctx, 'sigterm_drain', t, 0, misses, { leaks, rssGrowthMb });
  },
};
