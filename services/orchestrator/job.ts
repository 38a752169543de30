// One request inside the scheduler: its spec, where its KV lives, how far it
// got, and the cache statistics its summary reports. Events go to a sink
// (the gRPC handler); the scheduler drives every transition.
import { context as otelContext, type Context, type Span } from '@opentelemetry/api';

import type { Bytes, CacheShard } from '../cache/cache-api.js';
import type { CacheChoice, JobSpec } from './settings.js';
import type { ModeName } from '../common/policy.js';
import type { SequenceLayout } from './reallocate.js';

export type FinishReason = 'length' | 'eos' | 'stop' | 'context';

export interface JobSink {
  /** A generated token: id, the text it completes (may be ''), log-probability. */
  token?(id: number, text: string, logprob: number): void;
  /** Scoring: log p(token at position pos) for a run of consecutive positions starting at pos,
   * and the most likely token at each of those positions (the greedy choice). */
  logprobs?(pos: number, values: number[], top: number[]): void;
}

export interface CacheReport {
  reallocations: number;
  allocateCalls: number; // Allocate requests (one per reallocation, each in its shard's AllocateBatch of the step)
  applyCalls: number; // plans applied (at most one per reallocation, each in its shard's ApplyPlanBatch)
  allocateUs: number;
  applyUs: number;
  tokensChanged: number;
  bytesMoved: number;
  maxBeta: number; // largest β right after a plan that changed precision
  budgetMissed: number; // plans whose exact bytes exceed β (now or before the next plan)
  budgetMissedBinding: number; // of those, plans at a length from which β can bind (a real miss)
  bindsFrom: number; // the shortest length from which β can bind (from the last plan)
  bytes: Bytes | null; // at the end
  peakHotBytes: number; // the most hot bytes held: right before a plan, or at the end
}

/** The bytes behind a result, under the names every report uses (BudgetReport). */
export interface BudgetSummary {
  targetBeta: number; // 0: the policy takes no budget
  achievedBeta: number; // hot / FP16 at the end
  hotBytes: number;
  masterBytes: number;
  fp16Bytes: number;
  mode: ModeName;
  budgetMet: boolean;
  bindsFrom: number;
  peakHotBytes: number; // the most hot bytes held at any time
}

const BUDGETED = new Set(['smartkv', 'random', 'tiered']);

/** β is met when the end is within it and no plan missed it at a length
 * from which it can bind (shorter sequences cannot meet it: bindsFrom says so). */
export function budgetReport(r: CacheReport, cache: CacheChoice): BudgetSummary {
  const b = r.bytes;
  const budgeted = BUDGETED.has(cache.policy);
  const achievedBeta = b && b.fp16Bytes > 0 ? b.heldBytes / b.fp16Bytes : 0;
  const targetBeta = budgeted ? cache.beta : 0;
  return {
    targetBeta,
    achievedBeta,
    hotBytes: b?.heldBytes ?? 0,
    masterBytes: b?.masterBytes ?? 0,
    fp16Bytes: b?.fp16Bytes ?? 0,
    mode: cache.mode,
    budgetMet: !budgeted || (achievedBeta <= targetBeta && r.budgetMissedBinding === 0),
    bindsFrom: budgeted ? r.bindsFrom : 0,
    peakHotBytes: Math.max(r.peakHotBytes, b?.heldBytes ?? 0),
  };
}

export interface JobOutcome {
  promptTokens: number;
  generated: number[];
  trailingText: string;
  finish: FinishReason;
  prefillUs: number;
  decodeUs: number;
  cache: CacheReport;
  shard: number;
  shardAddress: string; // the cache service that held the sequence
  peakBatch: number;
}

export class Job {
  shardIndex = -1;
  shardAddress = '';
  shard: CacheShard | null = null;
  seq = -1;
  layout: SequenceLayout | null = null;
  reservedBytes = 0; // hot bytes reserved on the shard for the sequence now
  reserveAfterPrompt = 0; // what it keeps reserved after the plan that ends its prefill (less with the `end` horizon)
  cached = 0; // tokens in the cache
  fed = 0; // tokens of `input` fed so far
  readonly input: number[]; // the tokens to feed: prompt (+ forced tokens when scoring)
  readonly generated: number[] = [];
  trailingText = ''; // text held back (a possible stop-string start) when generation ended
  stepsSincePlan = 0;
  peakBatch = 0; // most sequences in one step this job was part of
  cancelled: Error | null = null;
  finish: FinishReason | null = null;
  readonly admittedAt = performance.now();
  firstTokenAt = 0;
  readonly report: CacheReport = {
    reallocations: 0, allocateCalls: 0, applyCalls: 0, allocateUs: 0, applyUs: 0, tokensChanged: 0, bytesMoved: 0, maxBeta: 0,
    budgetMissed: 0, budgetMissedBinding: 0, bindsFrom: 0, bytes: null, peakHotBytes: 0,
  };
  /** The job's span (generate or score) and its context; steps are its children. */
  span: Span | null = null;
  ctx: Context = otelContext.active();
  stepSpan: Span | null = null; // the step this job is in, while it runs
  readonly done: Promise<JobOutcome>;
  resolve!: (o: JobOutcome) => void;
  reject!: (e: Error) => void;

  constructor(
    readonly id: number,
    readonly spec: JobSpec,
    readonly sink: JobSink,
  ) {
    this.input = spec.kind === 'generate' ? spec.prompt : spec.tokens;
    this.done = new Promise<JobOutcome>((res, rej) => {
      this.resolve = res;
      this.reject = rej;
    });
    this.done.catch(() => undefined); // the handler observes it; never an unhandled rejection
  }

  get promptLength(): number {
    return this.spec.kind === 'generate' ? this.spec.prompt.length : this.spec.prefillTokens;
  }

  /** Still feeding the prompt in chunks. */
  get prefilling(): boolean {
    return this.fed < this.promptLength;
  }

  /** Cancel from outside (client gone, deadline, shutdown); takes effect between steps. */
  cancel(reason: Error): void {
    this.cancelled ??= reason;
  }

  /** Cancels and ends the request now (its caller sees the reason at once);
   * the scheduler still frees its sequence between steps. */
  endNow(reason: Error): void {
    this.cancel(reason);
    this.reject(this.cancelled!);
  }
}
