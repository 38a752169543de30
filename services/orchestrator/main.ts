// The orchestrator process: `node dist/services/orchestrator/main.js --cache A[,B] --allocator C [--port N]`,
// `--cache-dns NAME:PORT` (every address NAME resolves to is a cache shard;
// re-resolved at run time) or `--in-process` (one process, local cache and allocator). Telemetry
// starts first; the application (and @grpc/grpc-js with it) loads after.
import { mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { blockTokensProblem } from '../../native/formats.js';
import { isModeName, isPolicyName } from '../common/policy.js';
import { parseOptions, TLS_OPTIONS, usage, UsageError, type OptionSpec } from '../common/args.js';
import { startTelemetry } from '../telemetry/start.js';
import { DEFAULTS, HORIZON_NAMES, type HorizonName, type ServerDefaults } from './settings.js';
import { parseDnsTarget, type DnsTarget } from '../common/host-port.js';
import type { ServerSecurity } from '../common/server.js';

const D = DEFAULTS;
export const ORCHESTRATOR_OPTIONS: Record<string, OptionSpec> = {
  host: { kind: 'string', default: '127.0.0.1', help: 'address to listen on' },
  port: { kind: 'int', default: 50051, help: 'port (0: any free port, printed on the READY line)' },
  model: { kind: 'string', help: 'model folder (default: models/smartkv-ref-8k, the bundled 8K model)' },
  cache: { kind: 'list', help: 'cache service addresses, comma-separated' },
  'cache-dns': { kind: 'string', help: 'HOST:PORT: every address HOST resolves to is a cache service on PORT (e.g. a headless Service); re-resolved at run time' },
  'cache-dns-server': { kind: 'list', help: 'DNS servers to ask for --cache-dns, IP[:PORT] comma-separated (default: the system resolver)' },
  'cache-resolve-ms': { kind: 'int', default: 5000, help: 'how often --cache-dns is resolved again' },
  'cache-health-ms': { kind: 'int', default: 1000, help: 'how often each cache shard is health-checked (grpc.health.v1); a shard that fails takes no new sequences' },
  'shard-deadline-ms': { kind: 'int', default: 2000, help: 'the least deadline of a call to a cache shard; the deadline is 10 × the slowest of its last 64 calls of the same method when that is more. A shard that misses it fails only its own requests (DEADLINE_EXCEEDED)' },
  'shard-hang-ms': { kind: 'int', default: 1000, help: 'a call to a cache shard unanswered for 30 % of this, and no answer to a health check in the other 70 %: the shard is hung, its calls fail now (DEADLINE_EXCEEDED) and new ones at once until it answers again; a busy shard that answers keeps its calls\' deadlines' },
  'cache-wait-ms': { kind: 'int', default: 30000, help: 'how long to wait at start for a first cache shard' },
  allocator: { kind: 'string', help: 'allocator service address' },
  'data-plane': { kind: 'string', default: 'futex', help: 'how attends reach cache services on this host: futex (tensors in a shared-memory region, rung by a futex), grpc (the same region, rung by an Attend carrying offsets) or off (tensors in every Attend, as across hosts)' },
  'in-process': { kind: 'bool', default: false, help: 'run the cache and the allocator in this process' },
  policy: { kind: 'string', default: D.cache.policy, help: 'default cache policy' },
  budget: { kind: 'number', default: D.cache.beta, help: 'default budget β' },
  'realloc-interval': { kind: 'int', default: D.cache.reallocInterval, help: 'default decode steps between reallocations' },
  sinks: { kind: 'int', default: D.cache.sinks, help: 'default sink tokens kept at 16 bits' },
  window: { kind: 'int', default: D.cache.window, help: 'default recent tokens kept at 16 bits' },
  importance: { kind: 'string', default: 'accumulated', help: 'default importance: accumulated or normalised' },
  layers: { kind: 'string', default: 'shared', help: 'default bit-widths: shared (per token) or per-layer' },
  'max-batch': { kind: 'int', default: D.maxBatch, help: 'most sequences in one step' },
  'prefill-chunk': { kind: 'int', default: D.prefillChunk, help: 'prompt tokens per prefill chunk' },
  threads: { kind: 'int', default: 0, help: 'model threads (0: all cores)' },
  'memory-limit': { kind: 'int', default: 0, help: 'in-process: hot KV bytes the cache may hold (the master tier is not counted)' },
  gamma: { kind: 'number', default: 0.9, help: 'in-process: importance EMA factor γ' },
  mode: { kind: 'string', default: D.cache.mode, help: 'default precision mode: downgrade-only (no master copy; what docs/evaluation.md\'s headline tables measure) or reversible (an FP16 master copy in the cache\'s master tier, so plans may raise precision)' },
  horizon: { kind: 'string', default: D.cache.horizon, help: 'default budget horizon: now (every plan meets β over the tokens it holds), prompt (plans between prefill chunks may hold up to β × the whole prompt; β binds from the end of the prefill; the default) or end (no plan until the prompt is read: it is held at 16 bits until then, and one plan spreads β over all of it by importance)' },
  'master-dir': { kind: 'string', help: 'in-process: directory of the master tier (default: <tmpdir>/smartkv-master-<pid>, removed on stop)' },
  'rotate-kv': { kind: 'bool', default: true, help: 'in-process: store K and V rotated (randomised Hadamard; --rotate-kv=false: off)' },
  'block-tokens': { kind: 'int', default: 32, help: 'in-process: token slots per storage block (multiple of 16, 16–1024; docs/engine.md, "Block size")' },
  'max-prompt-bytes': { kind: 'int', default: 0, help: 'UTF-8 bytes of a prompt or Score text, checked before tokenising; also sizes the request limit (0: 16 per token of context, at least 64 KiB)' },
  'max-queue': { kind: 'int', default: D.maxQueue, help: 'requests that may wait for a batch slot; one more gets RESOURCE_EXHAUSTED' },
  'max-streams-per-client': { kind: 'int', default: D.maxStreamsPerClient, help: 'requests one client (its bearer token, certificate, or IP address) may have in flight; one more gets RESOURCE_EXHAUSTED' },
  'grace-ms': { kind: 'int', default: 10000, help: 'how long running requests may finish on shutdown' },
  'metrics-port': { kind: 'int', default: 0, help: 'serve Prometheus metrics on this port (0: off)' },
  ...TLS_OPTIONS,
  'api-tls': { kind: 'string', default: 'off', help: 'the public API: off (plaintext), tls, or mtls (clients need a certificate of the --tls-dir CA); uses the --tls-dir certificate' },
  'api-token-file': { kind: 'string', help: 'the public API requires `authorization: Bearer <token>` with the token in this file (health and reflection stay open)' },
  help: { kind: 'bool', help: 'print this help' },
};

export function defaultsFrom(o: Record<string, unknown>): ServerDefaults {
  const policy = o.policy as string;
  if (!isPolicyName(policy)) throw new UsageError(`--policy: unknown policy ${policy}`);
  const beta = o.budget as number;
  if (!(beta > 0 && beta <= 1)) throw new UsageError(`--budget must be in (0, 1], got ${beta}`);
  const importance = o.importance as string, layers = o.layers as string;
  if (importance !== 'accumulated' && importance !== 'normalised') throw new UsageError(`--importance must be accumulated or normalised, got ${importance}`);
  if (layers !== 'shared' && layers !== 'per-layer') throw new UsageError(`--layers must be shared or per-layer, got ${layers}`);
  const mode = o.mode as string;
  if (!isModeName(mode)) throw new UsageError(`--mode must be downgrade-only or reversible, got ${mode}`);
  const horizon = o.horizon as HorizonName;
  if (!HORIZON_NAMES.includes(horizon)) throw new UsageError(`--horizon must be ${HORIZON_NAMES.join(', ')}; got ${horizon}`);
  return {
    ...DEFAULTS,
    cache: {
      policy,
      beta,
      gamma: o.gamma as number,
      reallocInterval: o['realloc-interval'] as number,
      sinks: o.sinks as number,
      window: o.window as number,
      normalised: importance === 'normalised',
      perLayer: layers === 'per-layer',
      mode,
      horizon,
    },
    maxBatch: o['max-batch'] as number,
    prefillChunk: o['prefill-chunk'] as number,
    maxPromptBytes: Math.max(0, (o['max-prompt-bytes'] as number | undefined) ?? 0),
    maxQueue: (o['max-queue'] as number | undefined) ?? D.maxQueue,
    maxStreamsPerClient: (o['max-streams-per-client'] as number | undefined) ?? D.maxStreamsPerClient,
  };
}

/** In-process: the master tier's directory, made now and (when it is ours) removed at exit. */
function localMasterDir(given: string | undefined): string {
  const dir = given ?? join(tmpdir(), `smartkv-master-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  if (!given) process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2), ORCHESTRATOR_OPTIONS);
  if (o.help) return void process.stdout.write(usage('smartkv orchestrator', ORCHESTRATOR_OPTIONS));
  const inProcess = o['in-process'] as boolean;
  const wrongBlock = blockTokensProblem(o['block-tokens'] as number);
  if (wrongBlock) throw new UsageError(`--block-tokens ${wrongBlock}`);
  if (!inProcess && !(o.cache as string[] | undefined)?.length && !o['cache-dns'])
    throw new UsageError('give --cache ADDRESS[,ADDRESS…] or --cache-dns HOST:PORT, and --allocator ADDRESS; or --in-process');
  let cacheDns: DnsTarget | undefined;
  try {
    cacheDns = o['cache-dns'] ? parseDnsTarget(o['cache-dns'] as string) : undefined;
  } catch (e) {
    throw new UsageError(`--cache-dns: ${(e as Error).message}`);
  }
  for (const k of ['cache-resolve-ms', 'cache-health-ms', 'shard-deadline-ms', 'shard-hang-ms'])
    if ((o[k] as number) < 50) throw new UsageError(`--${k} must be ≥ 50, got ${o[k]}`);
  const dataPlane = o['data-plane'] as string;
  if (!['off', 'futex', 'grpc'].includes(dataPlane)) throw new UsageError(`--data-plane must be futex, grpc or off, got ${dataPlane}`);
  const defaults = defaultsFrom(o);
  if (!(defaults.maxQueue >= 0)) throw new UsageError(`--max-queue must be ≥ 0, got ${defaults.maxQueue}`);
  if (!(defaults.maxStreamsPerClient >= 1)) throw new UsageError(`--max-streams-per-client must be ≥ 1, got ${defaults.maxStreamsPerClient}`);
  const apiTls = o['api-tls'] as string;
  if (apiTls !== 'off' && apiTls !== 'tls' && apiTls !== 'mtls') throw new UsageError(`--api-tls must be off, tls or mtls, got ${apiTls}`);
  const telemetry = startTelemetry('smartkv-orchestrator', { metricsPort: o['metrics-port'] as number, metricsHost: o.host as string });
  const { GenerationService } = await import('../../gen/smartkv/v1/generation_pb.js');
  const { LISTEN, log, runService, SERVED } = await import('../common/service-app.js');
  const { generationHandlers } = await import('./generation-server.js');
  const { defaultModelDir } = await import('./model/paths.js');
  const { Orchestrator } = await import('./orchestrator.js');
  const modelDir = (o.model as string | undefined) ?? defaultModelDir();
  const say = (l: string) => log('orchestrator', l);
  const { publicServerCredentials, readToken, tlsFromOptions, useClientSecurity } = await import('../common/credentials.js');
  let tls, token, security: ServerSecurity;
  try {
    // In one process there is no internal channel: TLS is only for the public API then.
    tls = inProcess && !o['tls-dir'] ? null : tlsFromOptions(o, 'the orchestrator');
    token = o['api-token-file'] ? readToken(o['api-token-file'] as string) : undefined;
    useClientSecurity({ internal: tls });
    security = { credentials: publicServerCredentials(tls, apiTls as 'off' | 'tls' | 'mtls'), bearerToken: token };
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const orch = await Orchestrator.create({
    modelDir,
    defaults,
    modelThreads: o.threads as number,
    cacheAddresses: o.cache as string[] | undefined,
    cacheDns,
    cacheDnsServers: o['cache-dns-server'] as string[] | undefined,
    resolveEveryMs: o['cache-resolve-ms'] as number,
    healthEveryMs: o['cache-health-ms'] as number,
    shardDeadlineMs: o['shard-deadline-ms'] as number,
    shardHangMs: o['shard-hang-ms'] as number,
    cacheWaitMs: o['cache-wait-ms'] as number,
    allocatorAddress: o.allocator as string | undefined,
    dataPlane: dataPlane as 'off' | 'futex' | 'grpc',
    local: inProcess ? { engine: { quant: 'symmetric', gamma: o.gamma as number, mode: defaults.cache.mode, masterDir: localMasterDir(o['master-dir'] as string | undefined), rotateKv: o['rotate-kv'] as boolean, blockTokens: o['block-tokens'] as number }, memoryLimitBytes: o['memory-limit'] as number } : undefined,
    log: say,
  });
  const graceMs = o['grace-ms'] as number;
  const { publicLimits } = await import('../common/limits.js');
  const limits = publicLimits(orch.context.model.config, orch.context.defaults.maxPromptBytes);
  const listen = {
    limits,
    security,
    role: 'orchestrator',
    host: o.host as string,
    port: o.port as number,
    graceMs,
    beforeStop: () => orch.close(graceMs),
    afterStop: () => telemetry.shutdown(),
  };
  const caches = [...((o.cache as string[] | undefined) ?? []), ...(o['cache-dns'] ? [`DNS ${o['cache-dns']}`] : [])];
  say(`model ${modelDir}; ${inProcess ? 'in-process cache and allocator' : `cache ${caches.join(', ')}, allocator ${o.allocator}`}; requests ≤ ${limits.receiveBytes} bytes, prompts ≤ ${limits.promptBytes} bytes; services: ${tls ? `mutual TLS (${tls.dir})` : 'plaintext'}; public API: ${apiTls === 'off' ? 'plaintext' : apiTls}${token ? ', bearer token' : ''}`);
  await runService('orchestrator', [
    { provide: LISTEN, useValue: listen },
    { provide: SERVED, useValue: [{ service: GenerationService, implementation: generationHandlers(orch.context) }] },
    { provide: 'orchestrator', useValue: orch },
  ]);
}

main().catch((e) => {
  process.stderr.write(`smartkv-orchestrator: ${e instanceof UsageError ? e.message + '\n\n' + usage('smartkv orchestrator', ORCHESTRATOR_OPTIONS) : (e as Error).stack ?? e}\n`);
  process.exit(2);
});
