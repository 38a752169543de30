// A client of the public Generation API with promise and stream helpers:
// what the end-to-end benchmark and the integration tests talk to the
// orchestrator with.
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import { CacheSettingsSchema, type CachePolicy, type PrecisionMode } from '../../gen/smartkv/v1/common_pb.js';
import {
  GenerateRequestSchema,
  GenerationService,
  InfoRequestSchema,
  ScoreRequestSchema,
  type CompleteResponse,
  type GenerateRequest,
  type GenerateResponse,
  type GenerationSummary,
  type InfoResponse,
  type ScoreResponse,
} from '../../gen/smartkv/v1/generation_pb.js';
import { callUnary, makeClient } from './rpc.js';

export interface GenerateOptions {
  prompt?: string;
  tokenIds?: number[];
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  stop?: string[];
  seed?: number;
  policy?: CachePolicy;
  budget?: number;
  gamma?: number;
  mode?: PrecisionMode;
}

export function generateRequest(o: GenerateOptions): GenerateRequest {
  return create(GenerateRequestSchema, {
    prompt: o.prompt ?? '',
    tokenIds: o.tokenIds ?? [],
    maxTokens: o.maxTokens ?? 16,
    temperature: o.temperature ?? 0,
    topP: o.topP,
    stop: o.stop ?? [],
    seed: BigInt(o.seed ?? 0),
    cache: create(CacheSettingsSchema, { policy: o.policy ?? 0, budget: o.budget, gamma: o.gamma, mode: o.mode ?? 0 }),
  });
}

export interface Streamed {
  ids: number[];
  text: string;
  summary: GenerationSummary;
}

export class SmartKvClient {
  readonly client: grpc.Client;
  constructor(readonly address: string) {
    this.client = makeClient(GenerationService, address);
  }

  /** Opens a Generate stream; `onToken` sees each token message. */
  stream(req: GenerateRequest, opts: { deadlineMs?: number } = {}): grpc.ClientReadableStream<GenerateResponse> {
    const fn = (this.client as unknown as Record<string, (r: unknown, o: grpc.CallOptions) => grpc.ClientReadableStream<GenerateResponse>>).generate;
    return fn.call(this.client, req, opts.deadlineMs ? { deadline: Date.now() + opts.deadlineMs } : {});
  }

  async generate(req: GenerateRequest): Promise<Streamed> {
    const out: Streamed = { ids: [], text: '', summary: undefined as unknown as GenerationSummary };
    for await (const m of this.stream(req) as AsyncIterable<GenerateResponse>) {
      if (m.kind.case === 'token') {
        out.ids.push(m.kind.value.id);
        out.text += m.kind.value.text;
      } else if (m.kind.case === 'summary') out.summary = m.kind.value;
    }
    return out;
  }

  complete(req: GenerateRequest): Promise<CompleteResponse> {
    return callUnary<CompleteResponse>(this.client, 'complete', req, { deadlineMs: 120_000 });
  }

  score(text: string, cache: { policy?: CachePolicy; budget?: number; window?: number; sinks?: number; gamma?: number } = {}): Promise<ScoreResponse> {
    const req = create(ScoreRequestSchema, { text, cache: create(CacheSettingsSchema, { policy: cache.policy ?? 0, budget: cache.budget, window: cache.window, sinks: cache.sinks, gamma: cache.gamma }) });
    return callUnary<ScoreResponse>(this.client, 'score', req, { deadlineMs: 120_000 });
  }

  info(): Promise<InfoResponse> {
    return callUnary<InfoResponse>(this.client, 'info', create(InfoRequestSchema, {}), { deadlineMs: 10_000 });
  }

  close(): void {
    this.client.close();
  }
}
