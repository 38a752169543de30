// What `smartkv eval ppl` and `smartkv eval needle` share: their options,
// the (policy, budget) rows they measure, the server they measure through
// (a running orchestrator, or a local split system started and stopped here),
// a bounded pool of concurrent requests, and the held-out text of the
// reference model's corpus.
//
// Every number comes through the public gRPC API (Score, Complete, Info), so
// the evaluation measures what a client of the running services gets.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import { CacheSettingsSchema } from '../gen/smartkv/v1/common_pb.js';
import {
  GenerateRequestSchema,
  GenerationService,
  InfoRequestSchema,
  ScoreRequestSchema,
  type CompleteResponse,
  type InfoResponse,
  type ScoreRequest,
  type ScoreResponse,
} from '../gen/smartkv/v1/generation_pb.js';
import { parseOptions, UsageError, type OptionSpec } from '../services/common/args.js';
import { makeClient } from '../services/common/rpc.js';
import { isPolicyName, MODE_NAMES, modeToPb, policyToPb, POLICY_NAMES, type ModeName, type PolicyName } from '../services/common/policy.js';
import { budgetFields } from './budget-fields.js';
import type { GenerationSummary } from '../gen/smartkv/v1/generation_pb.js';
import { Cluster } from '../services/launcher/cluster.js';
import type { ProgressSink } from './eval-progress.js';

/** Policies that take a budget β; the others run once, whatever the budget. */
export const BUDGETED: readonly PolicyName[] = ['random', 'tiered', 'smartkv'];
export const DEFAULT_BUDGETS = [0.25, 0.33, 0.5];

export type EvalKind = 'ppl' | 'needle';

/** Default sizes (held-out windows per row; samples per context × depth cell),
 * each measured to finish in about 10 minutes on the shared 2-core build machine. */
export const DEFAULT_SIZE: Record<EvalKind, number> = { ppl: 24, needle: 4 };

export interface EvalOptions {
  kind: EvalKind;
  json: boolean;
  quick: boolean;
  policies: PolicyName[]; // in POLICY_NAMES order
  budgets: number[]; // ascending
  server?: string;
  mode: ModeName; // precision mode sent with every request (and the local services' default)
  importance: string; // the local orchestrator's default importance mode (accumulated | normalised)
  layers: string; // the local orchestrator's default layer mode (shared | per-layer)
  rotateKv: boolean; // the local cache service stores K and V rotated (randomised Hadamard)
  quant: string; // the local cache service's quantisation: symmetric or asymmetric
  window?: number; // the local orchestrator's default recent window (16-bit tokens)
  gamma?: number; // importance EMA factor sent with every request (default: the server's)
  markdown?: string;
  size?: number; // --windows (ppl) or --seeds (needle): overrides the default size
}

export interface EvalIo {
  out: (line: string) => void; // stdout: the table or JSON lines
  err: ProgressSink; // stderr: progress and notes
}

/** One row of an evaluation: a policy, and its budget when it takes one. */
export interface EvalConfig {
  policy: PolicyName;
  targetBeta: number | null;
}

export function configLabel(c: EvalConfig): string {
  return c.targetBeta === null ? c.policy : `${c.policy} β=${c.targetBeta}`;
}

export function evalOptionSpec(kind: EvalKind): Record<string, OptionSpec> {
  const size: Record<string, OptionSpec> =
    kind === 'ppl' ? { windows: { kind: 'int', help: `held-out windows per row (default ${DEFAULT_SIZE.ppl}; --quick 1)` } } : { seeds: { kind: 'int', help: `samples per (context, depth) cell (default ${DEFAULT_SIZE.needle}; --quick 1)` } };
  return {
    json: { kind: 'bool', default: false, help: 'one JSON object per line instead of the table' },
    quick: { kind: 'bool', default: false, help: 'a tiny run (smoke test)' },
    policy: { kind: 'multi', help: `only this policy (repeatable): ${POLICY_NAMES.join(', ')}` },
    budget: { kind: 'multi', help: `only this budget β for ${BUDGETED.join(', ')} (repeatable; default ${DEFAULT_BUDGETS.join(', ')})` },
    server: { kind: 'string', help: 'measure through this running orchestrator (default: start a local split system)' },
    importance: { kind: 'string', default: 'accumulated', help: 'importance for the local system: accumulated or normalised (an ablation)' },
    layers: { kind: 'string', default: 'shared', help: 'bit-widths for the local system: shared (per token) or per-layer (an ablation)' },
    mode: { kind: 'string', default: 'downgrade-only', help: 'precision mode of every request: downgrade-only (no master copy; npm start\'s default) or reversible (an FP16 master copy in the cache\'s file-backed master tier, reported as master_bytes)' },
    'no-rotate-kv': { kind: 'bool', default: false, help: 'start the local cache service with --rotate-kv=false (K and V stored as they are; an ablation)' },
    quant: { kind: 'string', default: 'symmetric', help: 'the local cache service\'s quantisation: symmetric or asymmetric (an ablation)' },
    gamma: { kind: 'number', help: 'importance EMA factor γ in [0, 1) sent with every request (default: the server\'s, 0.9)' },
    window: { kind: 'int', help: 'the local system\'s recent window kept at 16 bits (default: the server\'s, 64)' },
    markdown: { kind: 'string', help: 'also write the table as a Markdown section into FILE' },
    ...size,
    help: { kind: 'bool', help: 'print this help' },
  };
}

export function parseEvalOptions(kind: EvalKind, argv: readonly string[]): EvalOptions {
  const o = parseOptions(argv, evalOptionSpec(kind));
  const named = (o.policy as string[] | undefined) ?? [];
  for (const p of named) if (!isPolicyName(p)) throw new UsageError(`--policy: unknown policy ${p}; one of ${POLICY_NAMES.join(', ')}`);
  const budgets = ((o.budget as string[] | undefined) ?? []).map((b) => {
    const x = Number(b);
    if (!(x > 0 && x <= 1)) throw new UsageError(`--budget must be a number in (0, 1], got ${b}`);
    return x;
  });
  const sizeName = kind === 'ppl' ? 'windows' : 'seeds';
  const size = o[sizeName] as number | undefined;
  if (size !== undefined && size < 1) throw new UsageError(`--${sizeName} must be ≥ 1, got ${size}`);
  return {
    kind,
    json: o.json as boolean,
    quick: o.quick as boolean,
    policies: named.length ? POLICY_NAMES.filter((p) => named.includes(p)) : [...POLICY_NAMES],
    budgets: budgets.length ? [...new Set(budgets)].sort((a, b) => a - b) : DEFAULT_BUDGETS,
    server: o.server as string | undefined,
    mode: checkMode('mode', o.mode as string, [...MODE_NAMES]) as ModeName,
    rotateKv: !(o['no-rotate-kv'] as boolean),
    quant: checkMode('quant', o.quant as string, ['symmetric', 'asymmetric']),
    window: checkWindow(o.window as number | undefined),
    gamma: checkGamma(o.gamma as number | undefined),
    importance: checkMode('importance', o.importance as string, ['accumulated', 'normalised']),
    layers: checkMode('layers', o.layers as string, ['shared', 'per-layer']),
    markdown: o.markdown as string | undefined,
    size,
  };
}

function checkWindow(w: number | undefined): number | undefined {
  if (w !== undefined && !(w >= 0 && w <= 4096)) throw new UsageError(`--window must be in [0, 4096], got ${w}`);
  return w;
}

function checkGamma(g: number | undefined): number | undefined {
  if (g !== undefined && !(g >= 0 && g < 1)) throw new UsageError(`--gamma must be in [0, 1), got ${g}`);
  return g;
}

function checkMode(name: string, v: string, allowed: string[]): string {
  if (!allowed.includes(v)) throw new UsageError(`--${name} must be ${allowed.join(' or ')}, got ${v}`);
  return v;
}

/** The rows of a run: unbudgeted policies once, budgeted ones at each β. */
export function evalConfigs(o: Pick<EvalOptions, 'policies' | 'budgets'>): EvalConfig[] {
  return o.policies.flatMap((policy): EvalConfig[] => (BUDGETED.includes(policy) ? o.budgets.map((b) => ({ policy, targetBeta: b })) : [{ policy, targetBeta: null }]));
}

// --- the server --------------------------------------------------------------

export class InterruptedError extends Error {}

type UnaryFn = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: unknown) => void) => grpc.ClientUnaryCall;

/** A Generation client that can cancel everything it has in flight. */
export class EvalClient {
  private readonly client: grpc.Client;
  private readonly inFlight = new Set<grpc.ClientUnaryCall>();

  /** gamma: sent with every request when set (else the server's default applies); mode: always sent. */
  constructor(readonly address: string, private readonly gamma: number | undefined, private readonly mode: ModeName) {
    this.client = makeClient(GenerationService, address);
  }

  private call<O>(method: string, req: unknown, deadlineMs: number): Promise<O> {
    const fn = (this.client as unknown as Record<string, UnaryFn>)[method];
    return new Promise<O>((resolve, reject) => {
      const call = fn.call(this.client, req, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (err, res) => {
        this.inFlight.delete(call);
        if (err) reject(err);
        else resolve(res as O);
      });
      this.inFlight.add(call);
    });
  }

  info(): Promise<InfoResponse> {
    return this.call('info', create(InfoRequestSchema, {}), 10_000);
  }

  /** Score and Complete wait this long: a Score of 8K tokens, one at a time, with 16 in flight on a
   * loaded 2-core machine took over 10 minutes. */
  static readonly SCORE_DEADLINE_MS = 3_600_000;

  /** Score with the server's prefill (prefill_tokens 0 = its chunk size). */
  score(text: string, c: EvalConfig): Promise<ScoreResponse> {
    return this.call('score', create(ScoreRequestSchema, { text, cache: cacheSettings(c, this.gamma, this.mode) }), EvalClient.SCORE_DEADLINE_MS);
  }

  /** A Score request as given (its own cache settings and prefill split). */
  scoreRequest(req: ScoreRequest): Promise<ScoreResponse> {
    return this.call('score', req, EvalClient.SCORE_DEADLINE_MS);
  }

  /** Greedy completion of `maxTokens` tokens. */
  complete(prompt: string, maxTokens: number, c: EvalConfig): Promise<CompleteResponse> {
    const req = create(GenerateRequestSchema, { prompt, maxTokens, temperature: 0, topK: 0, seed: 0n, cache: cacheSettings(c, this.gamma, this.mode) });
    return this.call('complete', req, EvalClient.SCORE_DEADLINE_MS);
  }

  cancelAll(): void {
    for (const c of this.inFlight) c.cancel();
  }

  close(): void {
    this.cancelAll();
    this.client.close();
  }
}

/** Unbudgeted rows send β = 1: uniform plans never consult it, and no plan then counts as a missed budget. */
function cacheSettings(c: EvalConfig, gamma: number | undefined, mode: ModeName) {
  return create(CacheSettingsSchema, { policy: policyToPb(c.policy), budget: c.targetBeta ?? 1, gamma, mode: modeToPb(mode) });
}

/** The bytes of a row's requests: sums of each summary's budget report. */
export interface BudgetAcc {
  n: number;
  hot: number;
  master: number;
  fp16: number;
  met: number; // requests whose summary says budget_met
  allocateCalls: number;
}

export const emptyBudgetAcc = (): BudgetAcc => ({ n: 0, hot: 0, master: 0, fp16: 0, met: 0, allocateCalls: 0 });

export function addBudget(a: BudgetAcc, s: GenerationSummary): void {
  const f = budgetFields(s.budget);
  a.n++;
  a.hot += f.hot_bytes;
  a.master += f.master_bytes;
  a.fp16 += f.fp16_bytes;
  a.met += f.budget_met ? 1 : 0;
  a.allocateCalls += s.allocateCalls;
}

/** A row's bytes under the report names: means per request, and whether every request met β. */
export function budgetRowFields(a: BudgetAcc, mode: ModeName) {
  const per = (x: number) => (a.n ? Math.round(x / a.n) : 0);
  return {
    mode,
    hot_bytes: per(a.hot),
    master_bytes: per(a.master),
    fp16_bytes: per(a.fp16),
    budget_met: a.n > 0 && a.met === a.n,
    budget_met_share: a.n ? round(a.met / a.n, 4) : 0,
    allocate_calls: a.allocateCalls,
  };
}

export interface EvalServer {
  client: EvalClient;
  info: InfoResponse;
  where: string; // how the services run, for the report
}

/**
 * Runs `fn` against `--server` or a local split system (allocator, one cache
 * service, orchestrator; quiet logs; `model` or the bundled reference model) that is stopped afterwards, also on an
 * error or Ctrl-C. An interrupted run ends with an InterruptedError.
 */
export async function withServer<T>(o: Pick<EvalOptions, 'server' | 'mode' | 'rotateKv' | 'quant' | 'importance' | 'layers' | 'window' | 'gamma'> & { model?: string }, io: EvalIo, fn: (s: EvalServer) => Promise<T>): Promise<T> {
  const logs: string[] = []; // the services' last lines, shown if something fails
  let cluster: Cluster | null = null;
  let client: EvalClient | null = null;
  let interrupted: string | null = null;
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) process.exit(130); // a second Ctrl-C: the services exit with their parent
    interrupted = sig;
    io.err.write(`\n${sig}: cancelling the requests in flight${cluster ? ' and stopping the services' : ''} …\n`);
    client?.cancelAll();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    let where: string;
    if (o.server) {
      where = `the orchestrator at ${o.server}`;
      client = new EvalClient(o.server, o.gamma, o.mode);
    } else {
      io.err.write('starting a local split system (allocator, 1 cache service, orchestrator) …\n');
      const t0 = performance.now();
      const log = (role: string, line: string) => {
        logs.push(`${role}: ${line}`);
        if (logs.length > 200) logs.shift();
      };
      cluster = await Cluster.start({
        cacheShards: 1,
        log,
        model: o.model, // undefined: the bundled reference model
        cacheArgs: ['--mode', o.mode, ...(o.rotateKv ? [] : ['--rotate-kv=false']), '--quant', o.quant],
        orchestratorArgs: ['--mode', o.mode, '--importance', o.importance, '--layers', o.layers, ...(o.window !== undefined ? ['--window', String(o.window)] : [])],
      });
      if (interrupted) throw new InterruptedError(interrupted);
      io.err.write(`  ready at ${cluster.address} in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
      where = `a local split system started for this run (allocator, 1 cache service, ${o.rotateKv ? 'K and V stored rotated (randomised Hadamard of q, k and v, clipped 2-bit scales; kivi-2/4 as published, kivi-2-rot/4-rot rotated too)' : 'with --rotate-kv=false: K and V stored as they are'}, ${o.quant} quantisation, orchestrator; separate processes over gRPC)`;
      client = new EvalClient(cluster.address, o.gamma, o.mode);
    }
    const info = await client.info();
    return await fn({ client, info, where });
  } catch (e) {
    if (interrupted) throw new InterruptedError(`interrupted (${interrupted})`);
    if (logs.length) io.err.write(`service logs (last ${Math.min(logs.length, 20)} lines):\n${logs.slice(-20).join('\n')}\n`);
    throw e;
  } finally {
    client?.close();
    if (cluster) await cluster.stop();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/**
 * Runs fn over items with at most `limit` in flight, in item order; the
 * results are in item order. The first failure stops new requests and rejects.
 */
export async function runPool<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>, onDone?: (r: R, item: T) => void): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i], i);
      } catch (e) {
        failed = true;
        throw e;
      }
      onDone?.(out[i], items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return out;
}

// --- the held-out text ---------------------------------------------------------

export interface PasskeySample {
  text: string;
  passkey: string;
  promptText: string;
  depth: number;
  totalBytes: number;
}

/** The parts of training/corpus.mjs (plain ESM, not compiled) used here. */
interface CorpusModule {
  loadDocuments(): { name: string; text: string }[];
  splitDocuments(docs: { name: string; text: string }[]): { train: { name: string; text: string }[]; heldout: { name: string; text: string }[] };
  makePasskeySample(o: { seed: number; totalBytes: number; depth: number; fillerText: string }): PasskeySample;
  EVAL_SEED_BASE: number;
}

/** training/corpus.mjs, found by walking up from this file (source or dist). */
export async function corpusModule(): Promise<CorpusModule> {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const f = join(dir, 'training', 'corpus.mjs');
    if (existsSync(f)) return (await import(pathToFileURL(f).href)) as CorpusModule;
    dir = resolve(dir, '..');
  }
  throw new Error('training/corpus.mjs not found above ' + dirname(fileURLToPath(import.meta.url)));
}

export interface HeldOut {
  text: string; // the held-out documents joined as training/prepare-data.mjs writes heldout.txt
  documents: number;
  bytes: number;
}

/** The held-out split, regenerated from the npm corpora with the training split rule (never training text). */
export async function heldOutText(corpus: CorpusModule): Promise<HeldOut> {
  const { heldout } = corpus.splitDocuments(corpus.loadDocuments());
  const text = heldout.map((d) => d.text).join('\n\n') + '\n';
  return { text, documents: heldout.length, bytes: Buffer.byteLength(text) };
}

// --- small numeric helpers -----------------------------------------------------

export function mean(xs: readonly number[]): number {
  return xs.length ? xs.reduce((a, x) => a + x, 0) / xs.length : NaN;
}

export function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
