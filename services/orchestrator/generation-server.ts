// The orchestrator's public gRPC API over the scheduler. A client that
// cancels, or whose deadline passes, cancels its job; the scheduler frees its
// KV before the next step.
import * as grpc from '@grpc/grpc-js';
import { context } from '@opentelemetry/api';
import { create } from '@bufbuild/protobuf';

import { BitHistogramSchema, BudgetReportSchema, CacheSettingsSchema, ImportanceMode, LayerMode, type BudgetReport, type CacheSettings } from '../../gen/smartkv/v1/common_pb.js';
import {
  CompleteResponseSchema,
  FinishReason,
  GenerateResponseSchema,
  GeneratedTokenSchema,
  GenerationSummarySchema,
  InfoResponseSchema,
  ScoreResponseSchema,
  type GenerateRequest,
  type GenerateResponse,
  type GenerationSummary,
  type InfoResponse,
  type ScoreRequest,
} from '../../gen/smartkv/v1/generation_pb.js';
import { bytesToPb } from '../cache/cache-proto.js';
import { modeToPb, POLICY_NAMES, policyToPb } from '../common/policy.js';
import { RpcError, statusOf, toServiceError } from '../common/rpc.js';
import { statusName } from '../common/rpc-error.js';
import { instruments } from '../telemetry/spans.js';
import { publicLimits } from '../common/limits.js';
import { budgetReport, type BudgetSummary, type Job, type JobOutcome } from './job.js';
import type { Model } from './model/model.js';
import type { Scheduler } from './scheduler.js';
import { generateSpec, horizonToPb, scoreSpec, type CacheChoice, type ServerDefaults } from './settings.js';
import { ClientLimits } from './client-limits.js';

export interface GenerationContext {
  /** Requests in flight per client (client-limits.ts). */
  clients?: ClientLimits;
  model: Model;
  modelName: string;
  scheduler: Scheduler;
  defaults: ServerDefaults;
  shardAddresses: string[];
}

const FINISH: Record<JobOutcome['finish'], FinishReason> = {
  length: FinishReason.LENGTH,
  eos: FinishReason.EOS,
  stop: FinishReason.STOP,
  context: FinishReason.CONTEXT,
};

export function cacheToPb(c: CacheChoice): CacheSettings {
  return create(CacheSettingsSchema, {
    policy: policyToPb(c.policy),
    budget: c.beta,
    gamma: c.gamma,
    reallocInterval: c.reallocInterval,
    sinks: c.sinks,
    window: c.window,
    importance: c.normalised ? ImportanceMode.NORMALISED : ImportanceMode.ACCUMULATED,
    layers: c.perLayer ? LayerMode.PER_LAYER : LayerMode.SHARED,
    mode: modeToPb(c.mode),
    horizon: horizonToPb(c.horizon),
  });
}

export function summaryOf(o: JobOutcome, cache: CacheChoice): GenerationSummary {
  const b = o.cache.bytes;
  const gen = o.generated.length;
  return create(GenerationSummarySchema, {
    promptTokens: o.promptTokens,
    generatedTokens: gen,
    finishReason: FINISH[o.finish],
    prefillUs: BigInt(o.prefillUs),
    decodeUs: BigInt(o.decodeUs),
    tokensPerS: o.decodeUs > 0 && gen > 1 ? ((gen - 1) * 1e6) / o.decodeUs : 0,
    achievedBeta: b && b.fp16Bytes > 0 ? b.heldBytes / b.fp16Bytes : 0,
    maxBeta: o.cache.maxBeta,
    histogram: create(BitHistogramSchema, {
      bits16: BigInt(b?.tokensByFormat[0] ?? 0),
      bits8: BigInt(b?.tokensByFormat[1] ?? 0),
      bits4: BigInt(b?.tokensByFormat[2] ?? 0),
      bits2: BigInt(b?.tokensByFormat[3] ?? 0),
      kivi: BigInt(b ? b.tokens - b.tokensByFormat.reduce((a, x) => a + x, 0) : 0),
    }),
    reallocations: o.cache.reallocations,
    allocateUs: BigInt(o.cache.allocateUs),
    applyUs: BigInt(o.cache.applyUs),
    tokensChanged: BigInt(o.cache.tokensChanged),
    cacheBytes: b ? bytesToPb(b) : undefined,
    cache: cacheToPb(cache),
    shard: Math.max(0, o.shard),
    shardAddress: o.shardAddress,
    trailingText: o.trailingText,
    budgetMissed: o.cache.budgetMissed,
    peakBatch: o.peakBatch,
    budget: budgetToPb(budgetReport(o.cache, cache)),
    allocateCalls: o.cache.allocateCalls,
  });
}

export function budgetToPb(b: BudgetSummary): BudgetReport {
  return create(BudgetReportSchema, {
    targetBeta: b.targetBeta,
    achievedBeta: b.achievedBeta,
    hotBytes: BigInt(b.hotBytes),
    masterBytes: BigInt(b.masterBytes),
    fp16Bytes: BigInt(b.fp16Bytes),
    mode: modeToPb(b.mode),
    budgetMet: b.budgetMet,
    bindsFromTokens: b.bindsFrom,
    peakHotBytes: BigInt(b.peakHotBytes),
  });
}

/** Counts a finished request by method and gRPC status. */
function counted<T>(method: string, p: Promise<T>): Promise<T> {
  p.then(
    () => instruments().requests.add(1, { method, status: 'OK' }),
    (e) => instruments().requests.add(1, { method, status: statusName(statusOf(e)) }),
  );
  return p;
}

function cancelOn(call: NodeJS.EventEmitter, job: Job): void {
  call.on('cancelled', () => job.cancel(new RpcError(grpc.status.CANCELLED, 'the client cancelled the request or its deadline passed')));
}

export function generationHandlers(ctx: GenerationContext): grpc.UntypedServiceImplementation {
  const { model, scheduler, defaults } = ctx;
  const clients = (ctx.clients ??= new ClientLimits(defaults.maxStreamsPerClient));
  /** Counts the call against its client until `job` ends. */
  const admitted = (call: Parameters<ClientLimits['enter']>[0], start: () => Job): Job => {
    const release = clients.enter(call);
    try {
      const job = start();
      job.done.then(release, release);
      return job;
    } catch (e) {
      release();
      throw e;
    }
  };
  return {
    generate: (call: grpc.ServerWritableStream<GenerateRequest, GenerateResponse>) => {
      let job: Job;
      try {
        const spec = generateSpec(call.request, model.config, model.tokenizer, defaults);
        job = admitted(call, () =>
          scheduler.submit(
            spec,
            {
              token: (id, text, logprob) => {
                if (!call.cancelled) call.write(create(GenerateResponseSchema, { kind: { case: 'token', value: create(GeneratedTokenSchema, { id, text, logprob }) } }));
              },
            },
            context.active(),
          ),
        );
        cancelOn(call, job);
        counted('Generate', job.done).then(
          (o) => {
            call.write(create(GenerateResponseSchema, { kind: { case: 'summary', value: summaryOf(o, spec.cache) } }));
            call.end();
          },
          (e) => call.emit('error', toServiceError(e)),
        );
      } catch (e) {
        instruments().requests.add(1, { method: 'Generate', status: statusName(statusOf(e)) });
        call.emit('error', toServiceError(e));
      }
    },
    complete: (call: grpc.ServerUnaryCall<GenerateRequest, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      try {
        const spec = generateSpec(call.request, model.config, model.tokenizer, defaults);
        let text = '';
        const job = admitted(call, () => scheduler.submit(spec, { token: (_id, t) => (text += t) }, context.active()));
        cancelOn(call, job);
        counted('Complete', job.done).then(
          (o) => cb(null, create(CompleteResponseSchema, { text: text + o.trailingText, tokenIds: o.generated, summary: summaryOf(o, spec.cache) })),
          (e) => cb(toServiceError(e)),
        );
      } catch (e) {
        cb(toServiceError(e));
      }
    },
    score: (call: grpc.ServerUnaryCall<ScoreRequest, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      try {
        const spec = scoreSpec(call.request, model.config, model.tokenizer, defaults);
        const logprobs = new Float32Array(spec.tokens.length - 1); // [n-1]: logprobs[i] = log p(token i+1 | ...)
        const topIds = new Uint32Array(spec.tokens.length - 1); // [n-1]: topIds[i] = argmax p(. | tokens 0..i)
        const sink = {
          logprobs: (pos: number, values: number[], top: number[]) => {
            values.forEach((v, k) => (logprobs[pos - 1 + k] = v));
            top.forEach((t, k) => (topIds[pos - 1 + k] = t));
          },
        };
        const job = admitted(call, () => scheduler.submit(spec, sink, context.active()));
        cancelOn(call, job);
        counted('Score', job.done).then(
          (o) => {
            instruments().tokensScored.add(o.promptTokens);
            let nll = 0;
            for (const v of logprobs) nll -= v;
            cb(null, create(ScoreResponseSchema, { logprobs: [...logprobs], tokenIds: spec.tokens, topTokenIds: [...topIds], nll, summary: summaryOf(o, spec.cache) }));
          },
          (e) => cb(toServiceError(e)),
        );
      } catch (e) {
        cb(toServiceError(e));
      }
    },
    info: (_call: grpc.ServerUnaryCall<unknown, InfoResponse>, cb: grpc.sendUnaryData<InfoResponse>) => {
      const c = model.config;
      cb(
        null,
        create(InfoResponseSchema, {
          model: ctx.modelName,
          maxPositions: c.maxPositions,
          vocab: c.vocab,
          layers: c.layers,
          heads: c.heads,
          kvHeads: c.kvHeads,
          headDim: c.headDim,
          defaults: cacheToPb(defaults.cache),
          policies: POLICY_NAMES.map(policyToPb),
          cacheShards: ctx.shardAddresses,
          maxBatch: defaults.maxBatch,
          prefillChunk: defaults.prefillChunk,
          maxStopStrings: defaults.maxStopStrings,
          limits: { maxRequestBytes: BigInt(publicLimits(c, defaults.maxPromptBytes).receiveBytes), maxPromptBytes: BigInt(defaults.maxPromptBytes), maxQueued: defaults.maxQueue, maxStreamsPerClient: defaults.maxStreamsPerClient },
        }),
      );
    },
  };
}
