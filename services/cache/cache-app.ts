// The cache service application: its engine, shaped by the model's config,
// and the gRPC server. Loaded by main.ts after telemetry has started.
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { CacheService } from '../../gen/smartkv/v1/cache_pb.js';
import { UsageError, type Options } from '../common/args.js';
import type { Telemetry } from '../telemetry/start.js';
import { LISTEN, log, runService, SERVED, type ListenOptions } from '../common/service-app.js';
import { parseModelConfig } from '../orchestrator/model/config.js';
import { defaultModelDir } from '../orchestrator/model/paths.js';
import { CacheCore } from './cache-core.js';
import { blockTokensProblem, PRECISION_MODES, type PrecisionMode } from '../../native/kv-engine.js';
import { cacheHandlers } from './cache-server.js';
import { ATTEND_CODECS } from './cache-proto.js';
import { instruments } from '../telemetry/spans.js';
import { cacheLimits } from '../common/limits.js';
import { OwnerLeases } from './owners.js';
import { internalServerCredentials, tlsFromOptions } from '../common/credentials.js';
import { RegionTable } from './region-table.js';

export async function runCache(o: Options, telemetry: Telemetry): Promise<void> {
  const modelDir = (o.model as string | undefined) ?? defaultModelDir();
  const cfgFile = join(modelDir, 'config.json');
  const cfg = parseModelConfig(JSON.parse(readFileSync(cfgFile, 'utf8')), cfgFile);
  const quant = o.quant as string;
  if (quant !== 'symmetric' && quant !== 'asymmetric') throw new UsageError(`--quant must be symmetric or asymmetric, got ${quant}`);
  const mode = o.mode as string;
  const blockTokens = o['block-tokens'] as number;
  const wrongBlock = blockTokensProblem(blockTokens);
  if (wrongBlock) throw new UsageError(`--block-tokens ${wrongBlock}`);
  if (!(PRECISION_MODES as readonly string[]).includes(mode)) throw new UsageError(`--mode must be downgrade-only or reversible, got ${mode}`);
  // The master tier's directory: ours (made here, removed on stop) unless given.
  const given = o['master-dir'] as string | undefined;
  const masterDir = given ?? join(tmpdir(), `smartkv-master-${process.pid}`);
  mkdirSync(masterDir, { recursive: true });
  const removeDir = () => {
    if (!given) rmSync(masterDir, { recursive: true, force: true });
  };
  process.once('exit', removeDir);
  const core = new CacheCore(
    {
      layers: cfg.layers,
      qHeads: cfg.heads,
      kvHeads: cfg.kvHeads,
      headDim: cfg.headDim,
      quant,
      gamma: o.gamma as number,
      mode: mode as PrecisionMode,
      masterDir,
      rotateKv: o['rotate-kv'] as boolean,
      threads: o.threads as number,
      blockTokens,
      device: o.device as 'cpu' | 'cuda' | 'auto',
    },
    o['memory-limit'] as number,
    o['max-reserved-per-owner'] as number,
  );
  const ownerBytes = o['max-reserved-per-owner'] as number;
  if (!(ownerBytes >= 0)) throw new UsageError(`--max-reserved-per-owner must be ≥ 0, got ${ownerBytes}`);
  const rows = o['max-attend-rows'] as number;
  if (!(rows >= 1)) throw new UsageError(`--max-attend-rows must be ≥ 1, got ${rows}`);
  const perOwner = o['max-sequences-per-owner'] as number;
  if (!(perOwner >= 1)) throw new UsageError(`--max-sequences-per-owner must be ≥ 1, got ${perOwner}`);
  const limits = cacheLimits(cfg, rows, perOwner);
  const leaseMs = o['lease-ms'] as number;
  if (!(leaseMs >= 100)) throw new UsageError(`--lease-ms must be ≥ 100, got ${leaseMs}`);
  const leases = new OwnerLeases(leaseMs);
  let tls;
  try {
    tls = tlsFromOptions(o, 'the cache service');
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const security = { credentials: internalServerCredentials(tls) };
  const regions = new RegionTable(core.engine.config, (l) => log('cache', l));
  const listen: ListenOptions = { role: 'cache', host: o.host as string, port: o.port as number, graceMs: o['grace-ms'] as number, limits, security, afterStop: async () => {
    leases.stop();
    regions.closeAll(); // callers waiting on a doorbell fail at once
    await core.close(); // frees every sequence: their master tier files close with them
    removeDir();
    await telemetry.shutdown();
  } };
  log('cache', `${core.engine.backendName} engine for ${modelDir}: ${cfg.layers} layers, ${cfg.kvHeads} kv-heads × ${cfg.headDim}, blocks of ${blockTokens} tokens; memory limit ${o['memory-limit'] || 'none'} (hot bytes); default mode ${mode}, master tier in ${masterDir}; requests ≤ ${limits.receiveBytes} bytes, Attend ≤ ${rows} rows, ≤ ${perOwner} sequences per owner${ownerBytes ? ` and ${ownerBytes} bytes reserved` : ''}; owner lease ${leaseMs} ms; ${tls ? `mutual TLS (${tls.dir})` : 'plaintext (--plaintext)'}`);
  // Bytes held, read from the engine when Prometheus scrapes.
  instruments()
    .meter.createObservableGauge('smartkv_cache_bytes_held', { unit: 'By', description: 'KV bytes held by this cache service (payload, scales, bookkeeping)' })
    .addCallback(async (r) => r.observe((await core.stats()).bytes.heldBytes));
  instruments()
    .meter.createObservableGauge('smartkv_cache_bytes_master', { unit: 'By', description: 'FP16 master copies of reversible sequences, in the master tier (not under the memory limit)' })
    .addCallback(async (r) => r.observe((await core.stats()).bytes.masterBytes));
  instruments()
    .meter.createObservableGauge('smartkv_cache_sequences', { description: 'live sequences in this cache service' })
    .addCallback((r) => r.observe(core.sequenceIds.length));
  await runService('cache', [
    { provide: LISTEN, useValue: listen },
    { provide: SERVED, useValue: [{ service: CacheService, implementation: cacheHandlers(core, (l) => log('cache', l), limits, leases, regions), codecs: ATTEND_CODECS }] },
    { provide: CacheCore, useValue: core },
  ]);
}
