// Continuous batching: requests join and leave between steps. Each step runs
// every active sequence at once — one prefill chunk in all (so decode latency
// stays bounded while a long prompt is read) plus one token for each decoding
// sequence — then samples, streams, and runs the reallocations that are due
// (after each prefill chunk, and every R decode steps) before the next step,
// so the budget holds while the cache grows. The reallocations due in a step
// go to each shard together: one ExportImportanceBatch, one AllocateBatch and
// one ApplyPlanBatch per shard per step (reallocate.ts), the shards at once.
import * as grpc from '@grpc/grpc-js';
import { SpanStatusCode, trace, type Context, type Span } from '@opentelemetry/api';

import { isPlanPolicy } from '../allocator/policies.js';
import type { CacheShard, ShardReservations } from '../cache/cache-api.js';
import type { StorageKind } from '../../native/kv-engine.js';
import { RpcError } from '../common/rpc.js';
import { isKiviPolicy } from '../common/policy.js';
import type { Allocator } from './allocator-client.js';
import { budgetReport, Job, type JobOutcome, type JobSink } from './job.js';
import type { Model } from './model/model.js';
import { argmax, sample, seededRng } from './model/sampler.js';
import { minimumBeta, reallocateBatch, type BatchCost, type BatchEntry, type ReallocOutcome } from './reallocate.js';
import { reservationBytes } from '../allocator/plan-cost.js';
import { formatBlockTokens, META_PAGE_TOKENS, TABLE_ENTRY_BYTES, TOKEN_META_BYTES, tokenBytes as layoutTokenBytes } from '../../native/formats.js';
import { logProb, runStep, type StepItem } from './runner.js';
import type { CacheChoice, JobSpec, ServerDefaults } from './settings.js';
import type { ShardSet } from './shard-directory.js';
import { StopText } from './stop-text.js';
import { childOf, instruments, withSpan } from '../telemetry/spans.js';

export interface ShardHandle {
  shard: CacheShard & { stats(seq?: number, deadlineMs?: number): ReturnType<CacheShard['stats']>; reservations(deadlineMs?: number): ReturnType<CacheShard['reservations']> };
  address: string;
  index: number; // the shard's number, fixed when the orchestrator first saw it
}

export interface SchedulerOptions {
  model: Model;
  shards: ShardSet; // placement asks it which shards may take a new sequence
  allocator: Allocator;
  defaults: ServerDefaults;
  blockTokens: number; // the cache engines' storage block
  log: (line: string) => void;
}

/** A shard as one admission pass sees it. */
interface ShardRoom {
  handle: ShardHandle;
  stats: ShardReservations | null;
}

/** Per-job state only the scheduler touches. */
interface Running {
  job: Job;
  rng: () => number;
  stop: StopText | null; // generation only: what text may be streamed yet
}

/** After a drain's grace time: how long the exit waits for the step loop to free what ended. */
const FREE_AFTER_GRACE_MS = 500;

/** The reallocations run after a step: per shard that had any due, one batch. */
export interface StepRealloc {
  sequences: number; // reallocations due in the step
  shards: number; // shards they were on
  exportCalls: number; // ExportImportanceBatch calls, all shards (one per shard unless a batch exceeds a context)
  allocateCalls: number; // AllocateBatch calls
  applyCalls: number; // ApplyPlanBatch calls (none on a shard where no plan changed anything)
  us: number; // wall time of the step's reallocations (the shards run at once)
  computeUs: number; // the services' time in them, all shards and calls
  transportUs: number; // round trips minus computeUs, all shards and calls
  stageUs: { export: number; allocate: number; apply: number }; // round trips of each kind of call, all shards
  stageComputeUs: { export: number; allocate: number; apply: number }; // the services' part of each
}

export interface StepObserver {
  (info: { batch: number; rows: number; stepUs: number; attendUs: number[]; engineUs: number[]; realloc: StepRealloc }): void;
}

export class Scheduler {
  private readonly queue: Job[] = [];
  private readonly active: Running[] = [];
  private loopRunning = false;
  private nextId = 1;
  private closing: Error | null = null;
  private graceOver: Error | null = null; // set when a drain's grace time is over: every job ends with it
  private idle: Promise<void> = Promise.resolve();
  onStep: StepObserver | null = null;

  constructor(private readonly o: SchedulerOptions) {}

  get load(): { queued: number; active: number } {
    return { queued: this.queue.length, active: this.active.length };
  }

  /** parent: the trace context of the request (the gRPC server span). */
  submit(spec: JobSpec, sink: JobSink, parent?: Context): Job {
    const job = new Job(this.nextId++, spec, sink);
    const c = spec.cache;
    job.span = childOf(parent ?? job.ctx, spec.kind, {
      'smartkv.prompt_tokens': job.input.length,
      'smartkv.max_tokens': spec.kind === 'generate' ? spec.maxTokens : 0,
      'smartkv.policy': c.policy,
      'smartkv.budget': c.beta,
      'smartkv.realloc_interval': c.reallocInterval,
    });
    job.ctx = trace.setSpan(parent ?? job.ctx, job.span);
    if (this.closing) {
      job.reject(this.closing);
      return job;
    }
    // Bounded: 2,000 concurrent streams used to be queued. Jobs cancelled
    // while queued are dropped first so they do not hold places.
    if (this.queue.length >= this.o.defaults.maxQueue) this.dropQueued((j) => j.cancelled !== null);
    if (this.queue.length >= this.o.defaults.maxQueue) {
      job.span?.end();
      job.reject(new RpcError(grpc.status.RESOURCE_EXHAUSTED, `the queue is full: ${this.queue.length} requests wait for the ${this.o.defaults.maxBatch} batch slots (max_queued, --max-queue); retry later`));
      return job;
    }
    this.queue.push(job);
    this.kick();
    return job;
  }

  /** Stops admitting; lets running jobs finish for up to graceMs, then ends them (UNAVAILABLE). */
  async drain(graceMs: number): Promise<void> {
    this.closing = new RpcError(grpc.status.UNAVAILABLE, 'the server is shutting down');
    // Queued jobs end now (they used to wait for a batch slot, i.e. the whole
    // grace time); running ones may finish within it, else UNAVAILABLE, which
    // a client may retry elsewhere (CANCELLED would say the client gave up).
    this.dropQueued(() => true);
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<void>((r) => (timer = setTimeout(r, graceMs)));
    await Promise.race([this.settled(), graceOver]);
    clearTimeout(timer);
    if (!this.loopRunning) return;
    // Grace over: running requests end now, not when the step in progress
    // does (a step, its frees and the plans due after it took the exit to
    // 6.8 s after SIGTERM with a 3 s grace), and so do any the admission pass
    // in progress places (the loop ends those at its next turn).
    this.graceOver = new RpcError(grpc.status.UNAVAILABLE, `the server shut down before the request finished (grace ${graceMs} ms); retry`);
    for (const r of this.active) r.job.endNow(this.graceOver);
    // The loop frees their sequences between steps. Waited for briefly, not
    // for a stuck shard: the shards free this process's sequences anyway
    // when its attend streams close as it exits.
    await Promise.race([this.settled(), new Promise<void>((r) => setTimeout(r, FREE_AFTER_GRACE_MS).unref())]);
  }

  /** Resolves when the step loop has stopped (it restarts itself while there is work). */
  private async settled(): Promise<void> {
    while (this.loopRunning) await this.idle;
  }

  /** Removes the queued jobs `which` selects; each ends with its cancel reason (or the shutdown). */
  private dropQueued(which: (j: Job) => boolean): void {
    const keep = this.queue.filter((j) => !which(j));
    for (const j of this.queue) {
      if (keep.includes(j)) continue;
      j.span?.end();
      j.reject(j.cancelled ?? this.closing ?? new RpcError(grpc.status.CANCELLED, 'cancelled while queued'));
    }
    this.queue.splice(0, this.queue.length, ...keep);
  }

  private kick(): void {
    if (this.loopRunning) return;
    this.loopRunning = true;
    this.idle = this.loop()
      .catch((e) => this.o.log(`scheduler loop failed: ${(e as Error).stack ?? e}`))
      .finally(() => {
        this.loopRunning = false;
        if (this.queue.length || this.active.length) this.kick();
      });
  }

  private async loop(): Promise<void> {
    while (this.queue.length || this.active.length) {
      if (this.graceOver) for (const r of this.active) r.job.endNow(this.graceOver);
      await this.retire((r) => r.job.cancelled !== null);
      await this.admit();
      if (this.active.length === 0) continue;
      await this.step();
      await this.retire((r) => r.job.finish !== null || r.job.cancelled !== null);
    }
  }

  // --- admission -----------------------------------------------------------

  private async admit(): Promise<void> {
    // One reservations call per shard per pass, kept current here as the pass
    // places jobs: a burst of requests refused for memory used to cost two
    // calls each, one after another, while every running stream waited for
    // the next step (11.8 s token gaps in the reliability suite's overload).
    let room: ShardRoom[] | null = null;
    while (this.queue.length && this.active.length < this.o.defaults.maxBatch) {
      const job = this.queue.shift()!;
      if (job.cancelled) {
        job.span?.end();
        job.reject(job.cancelled);
        continue;
      }
      try {
        room ??= await this.shardRoom();
        await this.place(job, room);
        const seed = job.spec.kind === 'generate' ? job.spec.sampling.seed : 0;
        const stop = job.spec.kind === 'generate' ? new StopText(job.spec.stop) : null;
        this.active.push({ job, rng: seededRng(seed), stop });
      } catch (e) {
        job.span?.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error).message });
        job.span?.end();
        job.reject(e as Error);
      }
    }
  }

  /** Reserves what the sequence will hold at its longest on the eligible shard
   * (listed, healthy: shard-directory.ts) with the most room for it (memory
   * limit − reservations; without limits, the fewest bytes reserved), so that
   * nothing can fail for memory after the first token: RESOURCE_EXHAUSTED here
   * when no shard has room. */
  /** The eligible shards and their reservations (null: the shard did not answer). */
  private async shardRoom(): Promise<ShardRoom[]> {
    const shards = this.o.shards.eligible();
    // Reservations only: O(1) per shard, however many sequences it holds.
    const stats = await Promise.all(shards.map((h) => h.shard.reservations(2000).catch(() => null)));
    return shards.map((handle, i) => ({ handle, stats: stats[i] }));
  }

  private async place(job: Job, shards: ShardRoom[]): Promise<void> {
    const c = this.o.model.config, cache = job.spec.cache;
    const storage: StorageKind = isKiviPolicy(cache.policy) ? cache.policy : 'mixed';
    const { reserve, afterPrompt } = this.reservation(job);
    let best = -1, room = -Infinity;
    shards.forEach(({ stats: s }, i) => {
      if (!s) return;
      let free = s.memoryLimitBytes > 0 ? s.memoryLimitBytes - s.reservedBytes : -s.reservedBytes;
      // A shard may cap what one owner (this process) reserves below its limit.
      const cap = s.maxReservedPerOwner ?? 0;
      if (cap > 0) free = Math.min(free, cap - (s.callerReservedBytes ?? 0));
      if ((s.memoryLimitBytes > 0 || cap > 0) && free < reserve) return;
      if (free > room) (best = i), (room = free);
    });
    if (best < 0) {
      if (shards.every((s) => !s.stats)) throw new RpcError(grpc.status.UNAVAILABLE, `no cache shard answers (${shards.map((s) => s.handle.address).join(', ') || 'none is healthy'})`);
      throw new RpcError(grpc.status.RESOURCE_EXHAUSTED, `no cache shard has room for this request within its memory limit (or what it lets one caller reserve): it may hold ${reserve} hot bytes ${reserve > afterPrompt ? `while its prompt is read at 16 bits (${job.promptLength} tokens, budget horizon end; ${afterPrompt} after the first plan)` : `at its maximum length (${this.maxTokens(job)} tokens, mode ${cache.mode})`}; retry later or lower max_tokens or cache.budget${reserve > afterPrompt ? ', or use another budget horizon' : ''}`);
    }
    const { handle, stats } = shards[best];
    const shard = handle.shard;
    const created = await shard.createSequence(storage, reserve, cache.gamma, cache.mode);
    stats!.reservedBytes += reserve; // the rest of this pass sees it
    if (stats!.callerReservedBytes !== undefined) stats!.callerReservedBytes += reserve;
    job.shard = shard;
    job.shardIndex = handle.index;
    job.shardAddress = handle.address;
    job.seq = created.seq;
    job.reservedBytes = reserve;
    job.reserveAfterPrompt = afterPrompt;
    job.layout = { layers: c.layers, fp16TokenBytes: 2 * c.kvHeads * c.headDim * 2, tokenBytes: created.tokenBytes, blockTokens: this.o.blockTokens };
    if (isPlanPolicy(cache.policy)) {
      // Below this no length of sequence can meet the budget. Above it, a
      // short sequence may still miss it (its protected tokens alone exceed
      // β); plans are then best effort and the summary says from which length β binds.
      const min = minimumBeta(job.layout);
      if (cache.beta < min) {
        await this.free(job);
        throw new RpcError(
          grpc.status.INVALID_ARGUMENT,
          `cache.budget ${cache.beta} is below ${min.toFixed(3)}, what storing every token at 2 bits takes (scales and bookkeeping included)`,
        );
      }
    }
  }

  private maxTokens(job: Job): number {
    return job.input.length + (job.spec.kind === 'generate' ? job.spec.maxTokens : 0);
  }

  /** Hot bytes the sequence may hold at most (plan-cost.ts: reservationBytes):
   * `reserve` from the start, `afterPrompt` once the plan after the prefill has
   * run (less only with the `end` horizon, which holds the prompt at 16 bits until then). */
  private reservation(job: Job): { reserve: number; afterPrompt: number } {
    const c = this.o.model.config, cache = job.spec.cache, T = this.o.blockTokens;
    const tb = layoutTokenBytes({ headDim: c.headDim, kvHeads: c.kvHeads, blockTokens: T, quant: 'symmetric' });
    const fp16TokenBytes = 2 * c.kvHeads * c.headDim * 2;
    const budgeted = cache.policy === 'smartkv' || cache.policy === 'random' || cache.policy === 'tiered';
    // Tokens that arrive at 16 bits before a plan: a prefill chunk (no longer than the prompt) or R
    // decode steps; with the `end` horizon no plan falls between chunks, so after the prompt only R.
    const end = cache.horizon === 'end' && isPlanPolicy(cache.policy);
    const ahead = end ? cache.reallocInterval : Math.max(Math.min(this.o.defaults.prefillChunk, job.promptLength), cache.reallocInterval);
    const reserve = (beta: number, tokens: number) => reservationBytes({
      layers: c.layers,
      fp16TokenBytes,
      blockTokens: T,
      blockBytes: tb.map((t, code) => t * formatBlockTokens(code, T)),
      tokenMetaBytes: TOKEN_META_BYTES,
      metaPageTokens: META_PAGE_TOKENS,
      tableEntryBytes: TABLE_ENTRY_BYTES,
      beta,
      tokens,
      ahead,
      protectedTokens: cache.sinks + cache.window,
    });
    // Unbudgeted policies hold at most FP16 blocks (uniform plans never exceed leaving tokens alone).
    const longest = budgeted ? reserve(cache.beta, this.maxTokens(job)) : reserve(1, this.maxTokens(job));
    // With the `end` horizon the whole prompt is held at 16 bits until the first plan.
    const prompt = end ? reserve(1, job.promptLength) : 0;
    return { reserve: Math.max(longest, prompt), afterPrompt: longest };
  }

  /** `end` horizon: once the plan after the prefill has run, the sequence
   * needs only its budgeted reservation; the rest goes back to the shard. */
  private async releasePromptReservations(due: readonly { job: Job }[]): Promise<void> {
    const done = due.filter(({ job: j }) => !j.cancelled && !j.prefilling && j.reservedBytes > j.reserveAfterPrompt);
    await Promise.all(done.map(async ({ job: j }) => {
      try {
        await j.shard!.shrinkReservation(j.seq, j.reserveAfterPrompt);
        j.reservedBytes = j.reserveAfterPrompt;
      } catch (e) {
        // It keeps the larger reservation (nothing is lost but room for others), and is not asked again.
        j.reserveAfterPrompt = j.reservedBytes;
        this.o.log(`sequence ${j.seq} keeps its prompt reservation: ${(e as Error).message}`);
      }
    }));
  }

  // --- one step ------------------------------------------------------------

  private async step(): Promise<void> {
    const items: StepItem[] = [];
    const who: Running[] = [];
    let prefillLeft = this.o.defaults.prefillChunk;
    for (const r of this.active) {
      const j = r.job;
      if (j.finish || j.cancelled) continue;
      let tokens: number[];
      if (j.prefilling) {
        // Batch invariance: a sequence's prefill chunks are always `prefillChunk` tokens (the
        // last one shorter), whoever else is in the step, so where its plans fall — and so its
        // results — never depend on which requests shared its steps. A chunk that does not fit
        // in what is left of this step's prefill rows waits for the next step.
        const n = Math.min(j.promptLength - j.fed, this.o.defaults.prefillChunk);
        if (n === 0 || n > prefillLeft) continue;
        prefillLeft -= n;
        tokens = j.input.slice(j.fed, j.fed + n);
      } else if (j.spec.kind === 'generate') {
        tokens = [j.generated[j.generated.length - 1]];
      } else {
        tokens = [j.input[j.fed]];
      }
      items.push({ shard: j.shard!, seq: j.seq, start: j.cached, tokens, allLogits: j.prefilling && j.spec.kind === 'score' });
      who.push(r);
    }
    if (items.length === 0) return;
    const rowsInStep = items.reduce((a, it) => a + it.tokens.length, 0);
    for (const [i, r] of who.entries()) {
      r.job.peakBatch = Math.max(r.job.peakBatch, items.length);
      r.job.stepSpan = childOf(r.job.ctx, 'step', {
        'smartkv.batch_size': items.length,
        'smartkv.step_tokens': rowsInStep,
        'smartkv.rows': items[i].tokens.length,
        'smartkv.sequence': r.job.seq,
        'smartkv.prefill': r.job.prefilling,
      });
      items[i].trace = trace.setSpan(r.job.ctx, r.job.stepSpan);
    }
    const t0 = performance.now();
    const res = await runStep(this.o.model, items);
    const stepUs = Math.round((performance.now() - t0) * 1000);
    // Per layer: the round trip, the shard's engine time, and what is left, the transport.
    const transportUs = res.attendUs.map((a, l) => Math.max(0, a - res.engineUs[l]));
    for (const r of who) r.job.stepSpan?.setAttributes({ 'smartkv.step_us': stepUs, 'smartkv.attend_us': res.attendUs, 'smartkv.attend_engine_us': res.engineUs, 'smartkv.attend_transport_us': transportUs });
    const m = instruments();
    m.stepDuration.record(stepUs / 1000);
    m.batchSize.record(items.length);

    const due: { job: Job; ahead: number }[] = [];
    who.forEach((r, i) => {
      const out = res.logits[i];
      const j = r.job;
      if (out instanceof Error) {
        j.cancel(out);
        return;
      }
      // Cancelled during the step (the client, or a drain that already ended
      // its call): nothing more goes to the client, and no plan is worth making.
      if (j.cancelled) return;
      const rows = items[i].tokens.length;
      const wasPrefill = j.prefilling;
      j.cached += rows;
      if (j.spec.kind === 'score') this.scored(j, out, rows, wasPrefill);
      else if (wasPrefill) j.fed += rows;
      if (j.spec.kind === 'generate' && !j.prefilling) this.sampled(r, out);
      // Reallocate between prefill chunks, right after prefill, and every R decode steps.
      // With the `end` horizon, not between prefill chunks: the prompt stays at 16 bits until it is read.
      let ahead = 0;
      const planWhilePrefilling = j.spec.cache.horizon !== 'end';
      if (wasPrefill && j.prefilling) ahead = planWhilePrefilling ? Math.min(this.o.defaults.prefillChunk, j.promptLength - j.fed) : 0;
      else if (wasPrefill) ahead = j.spec.cache.reallocInterval;
      else if (++j.stepsSincePlan >= j.spec.cache.reallocInterval) ahead = j.spec.cache.reallocInterval;
      if (ahead > 0 && !j.finish && isPlanPolicy(j.spec.cache.policy)) due.push({ job: j, ahead });
    });
    const realloc = await this.reallocateDue(due);
    await this.releasePromptReservations(due);
    for (const r of who) r.job.stepSpan?.setAttributes({ 'smartkv.realloc_us': realloc.us, 'smartkv.realloc_compute_us': realloc.computeUs, 'smartkv.realloc_transport_us': realloc.transportUs });
    this.onStep?.({ batch: items.length, rows: rowsInStep, stepUs, attendUs: res.attendUs, engineUs: res.engineUs, realloc });
    for (const r of who) {
      r.job.stepSpan?.end();
      r.job.stepSpan = null;
    }
  }

  private scored(j: Job, logits: Float32Array, rows: number, wasPrefill: boolean): void {
    const V = this.o.model.config.vocab;
    const first = j.fed; // position of the first row fed
    const values: number[] = [];
    const top: number[] = [];
    for (let k = 0; k < rows; k++) {
      const target = first + k + 1;
      if (target >= j.input.length) break;
      const row = logits.subarray(k * V, (k + 1) * V); // [V] next-token logits after position first + k
      values.push(logProb(row, j.input[target]));
      top.push(argmax(row));
    }
    j.fed += rows;
    if (!wasPrefill && j.firstTokenAt === 0) j.firstTokenAt = performance.now();
    j.sink.logprobs?.(first + 1, values, top);
    if (j.fed >= j.input.length - 1) j.finish = 'length';
  }

  private sampled(r: Running, logits: Float32Array): void {
    const j = r.job;
    if (j.spec.kind !== 'generate') return;
    const c = this.o.model.config, tok = this.o.model.tokenizer;
    const id = sample(logits, j.spec.sampling, r.rng);
    const lp = logProb(logits, id);
    if (j.firstTokenAt === 0) j.firstTokenAt = performance.now();
    if (tok.eosIds.includes(id)) {
      j.finish = 'eos';
      return;
    }
    j.generated.push(id);
    instruments().tokensGenerated.add(1);
    const { emit, stopped } = r.stop!.next(tok.decode(j.generated));
    j.sink.token?.(id, emit, lp);
    if (stopped) j.finish = 'stop';
    else if (j.generated.length >= j.spec.maxTokens) j.finish = 'length';
    else if (j.cached + 1 > c.maxPositions) j.finish = 'context';
  }

  /** The step's due reallocations: one batch per shard, the shards at once. */
  private async reallocateDue(due: readonly { job: Job; ahead: number }[]): Promise<StepRealloc> {
    const byShard = new Map<CacheShard, { job: Job; ahead: number }[]>();
    for (const d of due) {
      const list = byShard.get(d.job.shard!);
      if (list) list.push(d);
      else byShard.set(d.job.shard!, [d]);
    }
    const t0 = performance.now();
    const costs = await Promise.all([...byShard].map(([shard, list]) => this.reallocateOnShard(shard, list)));
    const sum = (f: (c: BatchCost) => number) => costs.reduce((a, c) => a + f(c), 0);
    const computeUs = sum((c) => c.export.computeUs + c.allocate.computeUs + c.apply.computeUs);
    return {
      sequences: due.length,
      shards: byShard.size,
      exportCalls: sum((c) => c.export.calls),
      allocateCalls: sum((c) => c.allocate.calls),
      applyCalls: sum((c) => c.apply.calls),
      us: due.length ? Math.round((performance.now() - t0) * 1000) : 0,
      computeUs,
      transportUs: Math.max(0, sum((c) => c.export.us + c.allocate.us + c.apply.us) - computeUs),
      stageUs: { export: sum((c) => c.export.us), allocate: sum((c) => c.allocate.us), apply: sum((c) => c.apply.us) },
      stageComputeUs: { export: sum((c) => c.export.computeUs), allocate: sum((c) => c.allocate.computeUs), apply: sum((c) => c.apply.computeUs) },
    };
  }

  /** One shard's batch; each job gets its own reallocate span and report, or its own error. */
  private async reallocateOnShard(shard: CacheShard, due: readonly { job: Job; ahead: number }[]): Promise<BatchCost> {
    const entries: BatchEntry[] = [];
    const spans = due.map(({ job: j }) => {
      const cache = j.spec.cache;
      return childOf(j.stepSpan ? trace.setSpan(j.ctx, j.stepSpan) : j.ctx, 'reallocate', {
        'smartkv.policy': cache.policy,
        'smartkv.budget': cache.beta,
        'smartkv.target_beta': cache.beta,
        'smartkv.mode': cache.mode,
        'smartkv.tokens': j.cached,
        'smartkv.realloc_batch_size': due.length,
      });
    });
    for (const { job: j, ahead } of due) {
      const cache = j.spec.cache;
      const beta = planBeta(cache, j.prefilling, j.cached, ahead, j.promptLength);
      if (beta !== cache.beta) spans[entries.length].setAttribute('smartkv.plan_beta', beta);
      entries.push({
        seq: j.seq,
        tokens: j.cached,
        layout: j.layout!,
        options: {
          policy: cache.policy as BatchEntry['options']['policy'],
          beta,
          sinks: cache.sinks,
          window: cache.window,
          ahead,
          seed: j.seq * 7919, // one per sequence: the random policy keeps favouring the same tokens
          gamma: cache.gamma,
          normalised: cache.normalised,
          perLayer: cache.perLayer,
        },
        reversible: cache.mode === 'reversible',
      });
    }
    const t0 = performance.now();
    // The batch's RPC spans hang under the first job's reallocate span (one
    // call serves them all; the others carry the batch's cost as attributes).
    const { outcomes, cost } = await withSpan(spans[0], () => reallocateBatch(shard, this.o.allocator, entries, this.o.model.config.maxPositions));
    const ms = performance.now() - t0;
    const compute = cost.export.computeUs + cost.allocate.computeUs + cost.apply.computeUs;
    const batchAttrs = {
      'smartkv.realloc_export_calls': cost.export.calls,
      'smartkv.realloc_allocate_calls': cost.allocate.calls,
      'smartkv.realloc_apply_calls': cost.apply.calls,
      'smartkv.realloc_batch_us': Math.round(ms * 1000),
      'smartkv.realloc_batch_compute_us': compute,
      'smartkv.realloc_batch_transport_us': Math.max(0, cost.export.us + cost.allocate.us + cost.apply.us - compute),
    };
    due.forEach(({ job: j }, i) => {
      const span = spans[i], r = outcomes[i];
      span.setAttributes(batchAttrs);
      if (r instanceof Error) {
        span.recordException(r);
        span.setStatus({ code: SpanStatusCode.ERROR, message: r.message });
        j.cancel(r);
      } else this.recordRealloc(j, r, span, ms);
      span.end();
    });
    return cost;
  }

  /** A reallocation's outcome into the job's report, the metrics and its span. */
  private recordRealloc(j: Job, r: ReallocOutcome, span: Span, ms: number): void {
    const policy = j.spec.cache.policy;
    j.stepsSincePlan = 0;
    const rep = j.report;
    rep.reallocations++;
    rep.allocateCalls += r.allocateCalls;
    rep.applyCalls += r.applyCalls;
    rep.allocateUs += r.allocateUs;
    rep.applyUs += r.applyUs;
    rep.tokensChanged += r.tokensChanged;
    rep.bytesMoved += r.bytesMoved;
    rep.bindsFrom = r.bindsFrom;
    // Hot bytes only grow between plans (tokens arrive), so the peak is right before one (or at the end).
    rep.peakHotBytes = Math.max(rep.peakHotBytes, r.bytesBefore.heldBytes, r.bytes.heldBytes);
    const beta = r.bytes.fp16Bytes > 0 ? r.bytes.heldBytes / r.bytes.fp16Bytes : 0;
    if (r.tokensChanged > 0) rep.maxBeta = Math.max(rep.maxBeta, beta);
    const budgeted = policy === 'smartkv' || policy === 'random' || policy === 'tiered';
    if (budgeted && !r.fits) {
      rep.budgetMissed++;
      if (r.bindsFrom > 0 && j.cached >= r.bindsFrom) rep.budgetMissedBinding++;
    }
    const m = instruments();
    m.reallocationDuration.record(ms);
    m.achievedBeta.record(beta);
    span.setAttributes(reallocAttributes(r, beta, !budgeted || r.fits));
  }

  // --- leaving -------------------------------------------------------------

  private async retire(pred: (r: Running) => boolean): Promise<void> {
    const leaving = this.active.filter(pred);
    if (leaving.length === 0) return;
    for (const r of leaving) this.active.splice(this.active.indexOf(r), 1);
    await Promise.all(leaving.map((r) => this.finishJob(r)));
  }

  private async finishJob(r: Running): Promise<void> {
    const j = r.job;
    if (!j.cancelled) {
      try {
        j.report.bytes = (await j.shard!.stats(j.seq)).bytes;
        j.report.peakHotBytes = Math.max(j.report.peakHotBytes, j.report.bytes.heldBytes);
      } catch {
        // the summary goes without final bytes
      }
      if (r.stop) {
        const rest = r.stop.flush(this.o.model.tokenizer.decode(j.generated));
        if (rest && j.finish !== 'stop') j.trailingText = rest;
      }
    }
    await this.free(j);
    if (j.cancelled) {
      j.span?.setStatus({ code: SpanStatusCode.ERROR, message: j.cancelled.message });
      j.span?.end();
      return j.reject(j.cancelled);
    }
    const end = performance.now();
    const outcome: JobOutcome = {
      promptTokens: j.spec.kind === 'generate' ? j.spec.prompt.length : j.input.length,
      generated: j.generated,
      trailingText: j.trailingText,
      finish: j.finish ?? 'length',
      prefillUs: Math.round(((j.firstTokenAt || end) - j.admittedAt) * 1000),
      decodeUs: Math.round((end - (j.firstTokenAt || end)) * 1000),
      cache: j.report,
      shard: j.shardIndex,
      shardAddress: j.shardAddress,
      peakBatch: j.peakBatch,
    };
    const budget = budgetReport(j.report, j.spec.cache);
    j.span?.setAttributes({
      'smartkv.generated_tokens': j.generated.length,
      'smartkv.finish_reason': outcome.finish,
      'smartkv.reallocations': j.report.reallocations,
      'smartkv.allocate_calls': j.report.allocateCalls,
      'smartkv.allocate_us': j.report.allocateUs,
      'smartkv.apply_us': j.report.applyUs,
      'smartkv.target_beta': budget.targetBeta,
      'smartkv.achieved_beta': budget.achievedBeta,
      'smartkv.hot_bytes': budget.hotBytes,
      'smartkv.master_bytes': budget.masterBytes,
      'smartkv.fp16_bytes': budget.fp16Bytes,
      'smartkv.mode': budget.mode,
      'smartkv.budget_met': budget.budgetMet,
      'smartkv.binds_from_tokens': budget.bindsFrom,
      'smartkv.shard': j.shardIndex,
      'smartkv.shard_address': j.shardAddress,
    });
    j.span?.end();
    j.resolve(outcome);
  }

  private async free(j: Job): Promise<void> {
    if (!j.shard || j.seq < 0) return;
    const seq = j.seq, shard = j.shard;
    j.seq = -1;
    const code = (j.cancelled as RpcError | null)?.code;
    // A job that failed because its shard missed a deadline: that shard may
    // be hung, so the free must not hold up the step loop (the others' requests).
    if (code === grpc.status.DEADLINE_EXCEEDED) return void this.freeLater(shard, seq, 30);
    try {
      await shard.freeSequence(seq);
    } catch (e) {
      // A shard that died took the sequence with it; anything else is worth a line.
      if ((e as RpcError).code === grpc.status.DEADLINE_EXCEEDED) this.freeLater(shard, seq, 30);
      else if ((e as RpcError).code !== grpc.status.UNAVAILABLE) this.o.log(`freeing sequence ${seq}: ${(e as Error).message}`);
    }
  }

  /** Frees in the background, retrying every 2 s while the shard misses deadlines (a hung shard that comes back). */
  private freeLater(shard: CacheShard, seq: number, tries: number): void {
    shard.freeSequence(seq).catch((e) => {
      const code = (e as RpcError).code;
      if (code === grpc.status.DEADLINE_EXCEEDED && tries > 1) setTimeout(() => this.freeLater(shard, seq, tries - 1), 2000).unref();
      else if (code !== grpc.status.UNAVAILABLE && code !== grpc.status.NOT_FOUND) this.o.log(`freeing sequence ${seq}: ${(e as Error).message}`);
    });
  }
}

/** The reallocate span's attributes: its cost, and the bytes under the report names. */
function reallocAttributes(r: ReallocOutcome, beta: number, met: boolean): Record<string, number | boolean> {
  return {
    'smartkv.allocate_us': r.allocateUs,
    'smartkv.apply_us': r.applyUs,
    'smartkv.allocate_calls': r.allocateCalls,
    'smartkv.apply_calls': r.applyCalls,
    'smartkv.tokens_changed': r.tokensChanged,
    'smartkv.bytes_moved': r.bytesMoved,
    'smartkv.within_budget': r.fits,
    'smartkv.budget_met': met,
    'smartkv.binds_from_tokens': r.bindsFrom,
    'smartkv.planned_beta': r.achievedBeta,
    'smartkv.achieved_beta': beta,
    'smartkv.hot_bytes': r.bytes.heldBytes,
    'smartkv.master_bytes': r.bytes.masterBytes,
    'smartkv.fp16_bytes': r.bytes.fp16Bytes,
    'smartkv.bytes_held': r.bytes.heldBytes,
    'smartkv.bits16_tokens': r.bytes.tokensByFormat[0],
    'smartkv.bits8_tokens': r.bytes.tokensByFormat[1],
    'smartkv.bits4_tokens': r.bytes.tokensByFormat[2],
    'smartkv.bits2_tokens': r.bytes.tokensByFormat[3],
  };
}

/**
 * The β a plan is made for. With the `prompt` horizon, a plan made between
 * prefill chunks may hold β × the whole prompt's FP16 bytes, and the next
 * chunk arrives at 16 bits on top of that, as the sequence's reservation
 * allows (plan-cost.ts reservationBytes: β × its longest length plus the
 * tokens ahead of a plan at FP16); the allocator prices the tokens held and
 * those ahead against β × (held + ahead), hence the ratio below, at most 1.
 * Every other plan, and every plan with the `now` horizon, meets β itself.
 * Why: with `now`, a downgrade-only plan made while a long prompt is fed must
 * leave room for the next chunk at 16 bits within β of what is held, which
 * squeezes every token held to 2 bits, for good.
 */
export function planBeta(cache: CacheChoice, prefilling: boolean, cached: number, ahead: number, promptLength: number): number {
  if (cache.horizon !== 'prompt' || !prefilling) return cache.beta;
  return Math.min(1, Math.max(cache.beta, (cache.beta * promptLength + ahead) / (cached + ahead)));
}
