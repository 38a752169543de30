// The orchestrator put together: the model, its cache shards (gRPC clients,
// or one CacheCore in this process), an allocator (gRPC or local) and the
// scheduler. `npm start` runs it split; --in-process runs the same code with
// local adapters.
import { basename } from 'node:path';
import { randomBytes } from 'node:crypto';

import { CacheCore } from '../cache/cache-core.js';
import { defaultPromptBytes } from '../common/limits.js';
import type { ShardStats } from '../cache/cache-api.js';
import type { KvEngineConfig } from '../../native/kv-engine.js';
import { GrpcAllocator, LocalAllocator, type Allocator } from './allocator-client.js';
import { GrpcCacheShard } from './cache-client.js';
import { DEFAULT_DATA_PLANE, type DataPlaneMode } from './region-client.js';
import { Model } from './model/model.js';
import { Scheduler } from './scheduler.js';
import { FixedShards, ShardDirectory, type DnsTarget, type ShardSet } from './shard-directory.js';
import type { ServerDefaults } from './settings.js';
import type { GenerationContext } from './generation-server.js';

export interface OrchestratorOptions {
  modelDir: string;
  defaults: ServerDefaults;
  modelThreads?: number;
  /** Split: cache-service addresses and/or a DNS name whose every address is
   * one (re-resolved at run time), and the allocator's address. */
  cacheAddresses?: string[];
  cacheDns?: DnsTarget;
  cacheDnsServers?: string[]; // resolvers to ask (default: the system's)
  resolveEveryMs?: number;
  healthEveryMs?: number;
  shardDeadlineMs?: number; // the least deadline of a call to a cache shard (shard-deadline.ts)
  shardHangMs?: number; // a call this long unanswered, and no answer to a health check: the shard is hung (shard-watch.ts)
  cacheWaitMs?: number; // how long to wait for a first shard at start (default 30 s)
  allocatorAddress?: string;
  /** How attends reach shards on this host (region-client.ts); default futex. Shards elsewhere get bytes. */
  dataPlane?: DataPlaneMode;
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
    let shards: ShardSet;
    let allocator: Allocator;
    let first: ShardStats;
    if (o.local) {
      const core = new CacheCore({ ...o.local.engine, layers: c.layers, qHeads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim }, o.local.memoryLimitBytes);
      shards = new FixedShards([{ shard: core, address: 'in-process', index: 0 }]);
      allocator = new LocalAllocator();
      closers.push(() => core.close());
      first = await core.stats();
    } else {
      if (!o.cacheAddresses?.length && !o.cacheDns) throw new Error('no cache services (--cache host:port[,host:port…] or --cache-dns host:port)');
      if (!o.allocatorAddress) throw new Error('no allocator address (--allocator host:port)');
      // The secret that makes this process's sequences its own on every shard
      // (128 random bits; services/cache/owners.ts).
      const owner = `orchestrator-${randomBytes(16).toString('hex')}`;
      const directory = new ShardDirectory({
        addresses: o.cacheAddresses,
        dns: o.cacheDns,
        dnsServers: o.cacheDnsServers,
        resolveEveryMs: o.resolveEveryMs,
        healthEveryMs: o.healthEveryMs,
        connect: (a) => new GrpcCacheShard(a, owner, { deadlineFloorMs: o.shardDeadlineMs, hangMs: o.shardHangMs, dataPlane: o.dataPlane ?? DEFAULT_DATA_PLANE, log: o.log }),
        log: o.log,
      });
      closers.push(() => directory.close());
      await directory.start();
      first = await directory.firstStats(o.cacheWaitMs ?? 30_000);
      shards = directory;
      const ga = new GrpcAllocator(o.allocatorAddress);
      allocator = ga;
      closers.push(() => ga.close());
    }
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
      // The prompt limit resolved here, so Info, the check and the server's message limit agree.
      defaults: { ...o.defaults, maxPromptBytes: o.defaults.maxPromptBytes || defaultPromptBytes(c), cache: { ...o.defaults.cache, gamma: first.gamma } },
      get shardAddresses() {
        return shards.eligible().map((s) => s.address);
      },
    };
    return new Orchestrator(model, scheduler, context, closers);
  }

  /** Finishes or cancels running requests (graceMs), then closes the shards. */
  async close(graceMs: number): Promise<void> {
    await this.scheduler.drain(graceMs);
    for (const c of this.closers) await c();
  }
}
