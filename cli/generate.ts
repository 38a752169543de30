// `smartkv generate "prompt"`: the client. Streams the generated text to the
// terminal as it comes and ends with a one-line summary.
import type * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import { CacheSettingsSchema } from '../gen/smartkv/v1/common_pb.js';
import { FinishReason, GenerateRequestSchema, GenerationService, type GenerateResponse, type GenerationSummary } from '../gen/smartkv/v1/generation_pb.js';
import { parseOptions, UsageError, type OptionSpec } from '../services/common/args.js';
import { isModeName, isPolicyName, modeToPb, policyToPb, POLICY_NAMES } from '../services/common/policy.js';
import { budgetFields, budgetPhrase } from './budget-fields.js';
import { makeClient } from '../services/common/rpc.js';
import { readTlsDir, readToken, useClientSecurity } from '../services/common/credentials.js';

export const GENERATE_OPTIONS: Record<string, OptionSpec> = {
  server: { kind: 'string', default: '127.0.0.1:50051', help: "the orchestrator's address" },
  'max-tokens': { kind: 'int', default: 128, help: 'tokens to generate' },
  temperature: { kind: 'number', default: 0.8, help: '0 = greedy' },
  'top-k': { kind: 'int', default: 0, help: '0 = no cut' },
  'top-p': { kind: 'number', default: 1, help: 'nucleus cut in (0, 1]' },
  seed: { kind: 'int', default: 0, help: 'sampling seed' },
  stop: { kind: 'multi', help: 'stop string (repeatable)' },
  policy: { kind: 'string', help: `cache policy: ${POLICY_NAMES.join(', ')} (default: the server's)` },
  budget: { kind: 'number', help: "budget β in (0, 1] (default: the server's)" },
  'realloc-interval': { kind: 'int', help: 'decode steps between reallocations' },
  mode: { kind: 'string', help: "precision mode: downgrade-only or reversible (default: the server's)" },
  json: { kind: 'bool', default: false, help: 'print the summary as JSON' },
  'token-file': { kind: 'string', help: 'a server with --api-token-file: send the bearer token in this file (or set SMARTKV_API_TOKEN)' },
  'tls-dir': { kind: 'string', help: 'a server with --api-tls tls|mtls: its CA (ca.pem) and, for mtls, this client\'s cert.pem and key.pem' },
};

export function summaryLine(s: GenerationSummary): string {
  const h = s.histogram;
  const hist = h ? `16b ${h.bits16} · 8b ${h.bits8} · 4b ${h.bits4} · 2b ${h.bits2}${h.kivi ? ` · kivi ${h.kivi}` : ''}` : '';
  return (
    `[${s.generatedTokens} tokens (${FinishReason[s.finishReason].toLowerCase()}), prompt ${s.promptTokens}, ` +
    `${s.tokensPerS.toFixed(1)} tok/s, prefill ${(Number(s.prefillUs) / 1000).toFixed(0)} ms; ` +
    `${budgetPhrase(budgetFields(s.budget), s.promptTokens + s.generatedTokens)}; max β after a plan ${s.maxBeta.toFixed(3)}; ${hist} (token-layers); ` +
    `${s.reallocations} reallocations, ${(Number(s.allocateUs) / 1000).toFixed(1)} ms allocating, ${(Number(s.applyUs) / 1000).toFixed(1)} ms applying; shard ${s.shardAddress || s.shard}]`
  );
}

export async function generate(argv: string[], out: (s: string) => void, err: (s: string) => void): Promise<number> {
  const words = argv.filter((a, i) => !a.startsWith('--') && !(argv[i - 1]?.startsWith('--') && GENERATE_OPTIONS[argv[i - 1].slice(2)]?.kind !== 'bool'));
  if (words.length !== 1) throw new UsageError('generate takes one prompt argument (quote it)');
  const o = parseOptions(argv.filter((a) => a !== words[0]), GENERATE_OPTIONS);
  const policy = o.policy as string | undefined;
  if (policy !== undefined && !isPolicyName(policy)) throw new UsageError(`--policy: unknown policy ${policy}; one of ${POLICY_NAMES.join(', ')}`);
  const mode = o.mode as string | undefined;
  if (mode !== undefined && !isModeName(mode)) throw new UsageError(`--mode must be downgrade-only or reversible, got ${mode}`);
  const req = create(GenerateRequestSchema, {
    prompt: words[0],
    maxTokens: o['max-tokens'] as number,
    temperature: o.temperature as number,
    topK: o['top-k'] as number,
    topP: o['top-p'] as number,
    seed: BigInt(o.seed as number),
    stop: (o.stop as string[] | undefined) ?? [],
    cache: create(CacheSettingsSchema, {
      policy: policy ? policyToPb(policy) : 0,
      budget: o.budget as number | undefined,
      reallocInterval: o['realloc-interval'] as number | undefined,
      mode: mode ? modeToPb(mode) : 0,
    }),
  });
  const token = o['token-file'] ? readToken(o['token-file'] as string) : process.env.SMARTKV_API_TOKEN || undefined;
  useClientSecurity({ token, publicTls: o['tls-dir'] ? readTlsDir(o['tls-dir'] as string) : null });
  const client = makeClient(GenerationService, o.server as string);
  const call = (client as unknown as { generate: (r: unknown) => grpc.ClientReadableStream<GenerateResponse> }).generate(req);
  process.once('SIGINT', () => call.cancel());
  out(words[0]);
  try {
    for await (const msg of call as AsyncIterable<GenerateResponse>) {
      if (msg.kind.case === 'token') out(msg.kind.value.text);
      else if (msg.kind.case === 'summary') {
        const s = msg.kind.value;
        out(s.trailingText + '\n');
        err(o.json ? summaryJson(s) + '\n' : summaryLine(s) + '\n');
      }
    }
    return 0;
  } catch (e) {
    const se = e as grpc.ServiceError;
    err(`\nsmartkv generate: ${se.code !== undefined ? `${codeName(se.code)}: ` : ''}${se.details ?? se.message}\n`);
    return 1;
  } finally {
    client.close();
  }
}

/** The summary as JSON, with the budget's fields under their report names at the top level;
 * `shard` is the cache service's address (host:port) and `shardIndex` its number in the orchestrator. */
export function summaryJson(s: GenerationSummary): string {
  const plain = JSON.parse(JSON.stringify(s, (_k, v) => (typeof v === 'bigint' ? Number(v) : v))) as Record<string, unknown>;
  delete plain.budget;
  delete plain.shardAddress;
  return JSON.stringify({ ...plain, shard: s.shardAddress, shardIndex: s.shard, ...budgetFields(s.budget) });
}

function codeName(code: number): string {
  const names = ['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED'];
  return names[code] ?? String(code);
}
