// The orchestrator put together: the model, its cache shards (gRPC clients,
// or one CacheCore in this process), an allocator (gRPC or local) and the
// scheduler. `npm start` runs it split; --in-process runs the same code with
// local adapters.
import { basename } from 'node:path';
import { randomUUID } from 'node:crypto';

import { CacheCore } from '../cache/cache-core.js';
import type { ShardStats } from '../cache/cache-api.js';
import type { KvEngineConfig } from '../../native/kv-engine.js';
import { GrpcAllocator, LocalAllocator, type Allocator } from './allocator-client.js';
import { GrpcCacheShard } from './cache-client.js';
import { Model } from './model/model.js';
import { Scheduler, type ShardHandle } from './scheduler.js';
import type { ServerDefaults } from './settings.js';
import type { GenerationContext } from './generation-server.js';

export interface OrchestratorOptions {
  modelDir: string;
  defaults: ServerDefaults;
  modelThreads?: number;
  /** Split: cache-service addresses and the allocator's. */
  cacheAddresses?: string[];
  allocatorAddress?: string;
  /** In-process: the engine settings of the one local cache. */
  local?: { engine: Omit<KvEngineConfig, 'layers' | 'qHeads' | 'kvHeads' | 'headDim'>; memoryLimitBytes: number };
  log: (line: string) => void;
}

export class Orchestrator {
  private constructor(
    readonly model: Model,
    readonly scheduler: Scheduler,
    readonly context: GenerationContext,
    private readonly closers: (() => Promise<void> | void)[],
  ) {}

  static async create(o: OrchestratorOptions): Promise<Orchestrator> {
    const model = Model.load(o.modelDir, { threads: o.modelThreads ?? 0 });
    const c = model.config;
    const closers: (() => Promise<void> | void)[] = [];
    let shards: ShardHandle[];
    let allocator: Allocator;
    if (o.local) {
      const core = new CacheCore({ ...o.local.engine, layers: c.layers, qHeads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim }, o.local.memoryLimitBytes);
      shards = [{ shard: core, address: 'in-process' }];
      allocator = new LocalAllocator();
      closers.push(() => core.close());
    } else {
      if (!o.cacheAddresses?.length) throw new Error('no cache service addresses (--cache host:port[,host:port…])');
      if (!o.allocatorAddress) throw new Error('no allocator address (--allocator host:port)');
      const owner = `orchestrator-${randomUUID()}`;
      const grpcShards = o.cacheAddresses.map((a) => new GrpcCacheShard(a, owner));
      shards = grpcShards.map((s) => ({ shard: s, address: s.address }));
      const ga = new GrpcAllocator(o.allocatorAddress);
      allocator = ga;
      closers.push(() => grpcShards.forEach((s) => s.close()), () => ga.close());
    }
    const first = await firstAnswer(shards, o.log);
    const scheduler = new Scheduler({
      model,
      shards,
      allocator,
      defaults: o.defaults,
      blockTokens: first.blockTokens,
      log: o.log,
    });
    const context: GenerationContext = {
      model,
      modelName: basename(o.modelDir),
      scheduler,
      defaults: { ...o.defaults, cache: { ...o.defaults.cache, gamma: first.gamma } },
      shardAddresses: shards.map((s) => s.address),
    };
    return new Orchestrator(model, scheduler, context, closers);
  }

  /** Finishes or cancels running requests (graceMs), then closes the shards. */
  async close(graceMs: number): Promise<void> {
    await this.scheduler.drain(graceMs);
    for (const c of this.closers) await c();
  }
}

/** Engine settings from the first shard that answers; waits up to 30 s for one. */
async function firstAnswer(shards: ShardHandle[], log: (l: string) => void): Promise<ShardStats> {
  const until = Date.now() + 30_000;
  for (let attempt = 0; ; attempt++) {
    for (const s of shards) {
      try {
        return await s.shard.stats(undefined, 2000);
      } catch {
        // try the next one
      }
    }
    if (Date.now() > until) throw new Error(`no cache shard answered within 30 s: ${shards.map((s) => s.address).join(', ')}`);
    if (attempt === 0) log(`waiting for a cache shard (${shards.map((s) => s.address).join(', ')})`);
    await new Promise((r) => setTimeout(r, 250));
  }
}
