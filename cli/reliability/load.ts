// Scenarios of load: a cancel storm, an overload, and a soak at twice the
// system's capacity. Nothing may leak, nothing may fail after its first
// token for want of memory, and memory must stay flat.
import { Status } from '../../services/common/rpc-error.js';
import { GrpcCacheShard } from '../../services/orchestrator/cache-client.js';
import { Tally, type Miss } from './report.js';
import { finish, longRequest, prompt, type Ctx, type Outcome, type Scenario } from './scenario.js';
import { openStream, pool, sleep, type StreamPlan, type StreamResult } from './streams.js';

const REFUSED = [Status.RESOURCE_EXHAUSTED]; // memory or queue full: refused before the first token
const CLIENT_ENDED = [Status.CANCELLED, Status.DEADLINE_EXCEEDED];

function count(t: Tally, r: StreamResult, allowed: number[]): void {
  t.add(r.code, r.details, allowed);
  if (r.failedAfterFirstToken) t.flag(`failed after ${r.tokens} tokens: ${r.details}`);
  if (r.code === 0) t.stall(r.maxGapMs);
}

/** Streams cancelled at random moments: before the first token, mid-prefill,
 * mid-decode, or by a deadline. */
export const cancelStorm: Scenario = {
  name: 'cancel_storm',
  async run(ctx) {
    const t = new Tally([...CLIENT_ENDED, ...REFUSED]);
    const rss = ctx.sys.rssMb();
    const client = ctx.sys.publicClient();
    const n = ctx.quick ? 40 : 512;
    const r = ctx.rand;
    await pool(n, ctx.quick ? 16 : 32, async (i) => {
      let plan: StreamPlan;
      switch (i % 4) {
        case 0: // before the first token
          plan = { prompt: prompt(r), maxTokens: 32, cancelAfterMs: Math.floor(r() * 30) };
          break;
        case 1: // mid-prefill: a long prompt, read in several chunks
          plan = { prompt: prompt(r, 700), maxTokens: 16, cancelAfterMs: 20 + Math.floor(r() * 300) };
          break;
        case 2: // mid-decode
          plan = { prompt: prompt(r), maxTokens: 64, temperature: 0.8, seed: i, cancelAfterTokens: 1 + Math.floor(r() * 20) };
          break;
        default: // a deadline
          plan = { prompt: prompt(r, 200), maxTokens: 64, deadlineMs: 50 + Math.floor(r() * 1500) };
      }
      count(t, await openStream(client, plan).done, [...CLIENT_ENDED, ...REFUSED]);
    });
    client.close();
    return finish(ctx, 'cancel_storm', t, rss);
  },
};

/** Many more long requests at once than memory and batch slots hold: the
 * excess is refused at once (RESOURCE_EXHAUSTED), and nothing admitted
 * fails later. */
export const overload: Scenario = {
  name: 'overload',
  async run(ctx) {
    const t = new Tally(REFUSED);
    const rss = ctx.sys.rssMb();
    const client = ctx.sys.publicClient();
    const n = ctx.quick ? 32 : 128;
    const refusedMs: number[] = [];
    const results = await Promise.all(
      Array.from({ length: n }, (_, i) => openStream(client, longRequest(ctx, ctx.quick ? 12 : 120, i)).done),
    );
    for (const r of results) {
      count(t, r, REFUSED);
      if (r.code === Status.RESOURCE_EXHAUSTED) refusedMs.push(r.endedAt - r.openedAt);
    }
    client.close();
    const misses: Miss[] = [];
    if (t.ok === 0) misses.push({ scenario: 'overload', what: 'no request was served', timing: false });
    if (refusedMs.length === 0) misses.push({ scenario: 'overload', what: `nothing was refused: ${n} requests fit (raise the count or lower the memory limit)`, timing: false });
    ctx.progress(`  overload: ${t.ok} served, ${refusedMs.length} refused, slowest refusal ${Math.round(Math.max(0, ...refusedMs))} ms`);
    return finish(ctx, 'overload', t, rss, misses);
  },
};

/** How many long requests the shards' memory holds at once (capped by the
 * batch): one is started and its reservation read from the shards. */
async function capacity(ctx: Ctx, plan: StreamPlan): Promise<number> {
  const client = ctx.sys.publicClient();
  const s = openStream(client, plan);
  await Promise.race([s.firstToken, s.done]);
  let reserved = 0;
  for (const p of ctx.sys.shards) {
    const c = new GrpcCacheShard(p.address, '');
    reserved += (await c.reservations(5000).catch(() => ({ reservedBytes: 0 }))).reservedBytes;
    c.close();
  }
  s.cancel();
  await s.done;
  client.close();
  const perShard = reserved > 0 ? Math.floor(ctx.sys.settings.memoryLimitBytes / reserved) : ctx.sys.settings.maxBatch;
  return Math.max(1, Math.min(ctx.sys.settings.maxBatch, perShard * ctx.sys.shards.length));
}

/** Twice the system's capacity, continuously, for minutes: every finished
 * request is replaced at once; a tenth are cancelled at a random moment.
 * Resident memory after warm-up must stay within 10 %. */
export const soak: Scenario = {
  name: 'soak',
  async run(ctx): Promise<Outcome> {
    const durationMs = ctx.quick ? 10_000 : 600_000;
    const warmupMs = ctx.quick ? 4_000 : 60_000;
    const maxTokens = ctx.quick ? 16 : 160;
    const cap = await capacity(ctx, longRequest(ctx, maxTokens, 1));
    const workers = 2 * cap;
    ctx.progress(`  soak: capacity ${cap} long requests; ${workers} at once for ${durationMs / 1000} s`);
    const t = new Tally([...REFUSED, ...CLIENT_ENDED]);
    const client = ctx.sys.publicClient();
    const t0 = Date.now();
    let rssWarm = 0;
    const warm = setTimeout(() => (rssWarm = ctx.sys.rssMb()), warmupMs);
    const tick = setInterval(
      () => ctx.progress(`  soak: ${Math.round((Date.now() - t0) / 1000)} s, ${t.requests} requests (${t.ok} ok), RSS ${ctx.sys.rssMb().toFixed(0)} MB`),
      ctx.quick ? 5_000 : 30_000,
    );
    let seed = 100;
    await Promise.all(
      Array.from({ length: workers }, async () => {
        while (Date.now() - t0 < durationMs) {
          const plan = longRequest(ctx, 8 + Math.floor(ctx.rand() * maxTokens), seed++);
          if (ctx.rand() < 0.1) plan.cancelAfterMs = Math.floor(ctx.rand() * 2000);
          const r = await openStream(client, plan).done;
          count(t, r, [...REFUSED, ...CLIENT_ENDED]);
          if (r.code === Status.RESOURCE_EXHAUSTED) await sleep(50); // a refused client backs off a little
        }
      }),
    );
    clearTimeout(warm);
    clearInterval(tick);
    client.close();
    const rssEnd = ctx.sys.rssMb();
    if (rssWarm === 0) rssWarm = rssEnd;
    const misses: Miss[] = [];
    if (rssEnd - rssWarm > 0.1 * rssWarm) misses.push({ scenario: 'soak', what: `RSS grew ${(rssEnd - rssWarm).toFixed(1)} MB after warm-up (${rssWarm.toFixed(0)} MB), over 10 %`, timing: false });
    return finish(ctx, 'soak', t, 0, misses, { rssGrowthMb: rssEnd - rssWarm });
  },
};
