// The local system the reliability suite runs against: an allocator, two
// cache shards under a small memory limit and an orchestrator, as separate
// processes (services/launcher/cluster.ts), with short leases and deadlines so
// that the scenarios see their effects within seconds. It also answers the
// questions every scenario asks afterwards: did anything leak, did a process
// crash, how much memory do the processes hold.
import { readFileSync } from 'node:fs';

import { Cluster, type ServiceProcess } from '../../services/launcher/cluster.js';
import { SmartKvClient } from '../../services/common/generation-client.js';
import { GrpcCacheShard } from '../../services/orchestrator/cache-client.js';
import { RawClient } from './raw-client.js';
import { channelCredentials } from '../../services/common/credentials.js';
import { sleep } from './streams.js';

export interface SystemSettings {
  memoryLimitBytes: number; // per shard
  leaseMs: number; // cache: an owner not heard from for this long loses its sequences
  orchestratorGraceMs: number; // SIGTERM: running requests may finish for this long
  shardDeadlineMs: number; // the least deadline of an orchestrator→shard call
  maxQueue: number;
  maxBatch: number;
  maxStreamsPerClient: number; // the suite is one client: overload and soak meet this limit too
}

export const SETTINGS: SystemSettings = {
  memoryLimitBytes: 4_000_000,
  leaseMs: 2000,
  orchestratorGraceMs: 3000,
  shardDeadlineMs: 1000,
  maxQueue: 24,
  maxBatch: 16,
  maxStreamsPerClient: 28,
};

export class System {
  /** Processes a scenario stopped on purpose (not crashes). */
  readonly stoppedOnPurpose = new Set<ServiceProcess>();

  private constructor(
    readonly cluster: Cluster,
    readonly settings: SystemSettings,
    readonly progress: (line: string) => void,
    private readonly logTail: string[], // the processes' last log lines
  ) {}

  static async start(settings: SystemSettings, progress: (line: string) => void): Promise<System> {
    const tail: string[] = [];
    const cluster = await Cluster.start({
      cacheShards: 2,
      tls: 'generate', // mutual TLS between the services, as npm start runs them
      log: (name, line) => {
        tail.push(`${name}: ${line}`);
        if (tail.length > 400) tail.shift();
        // A server bug is worth seeing at once.
        if (/internal error|uncaught/i.test(line)) progress(`  ${name}: ${line}`);
      },
      allocatorArgs: ['--grace-ms', '2000'],
      cacheArgs: ['--threads', '1', '--memory-limit', String(settings.memoryLimitBytes), '--lease-ms', String(settings.leaseMs), '--grace-ms', '2000'],
      orchestratorArgs: [
        ...['--threads', '1', '--grace-ms', String(settings.orchestratorGraceMs)],
        ...['--shard-deadline-ms', String(settings.shardDeadlineMs), '--cache-health-ms', '500'],
        ...['--max-queue', String(settings.maxQueue), '--max-batch', String(settings.maxBatch)],
        ...['--max-streams-per-client', String(settings.maxStreamsPerClient)],
      ],
    });
    return new System(cluster, settings, progress, tail);
  }

  get processes(): ServiceProcess[] {
    const c = this.cluster;
    return [c.allocator, ...c.caches, c.orchestrator];
  }

  get shards(): ServiceProcess[] {
    return this.cluster.caches;
  }

  publicClient(): SmartKvClient {
    return new SmartKvClient(this.cluster.address);
  }

  /** A raw client with the credentials this process uses for `serviceTypeName`. */
  raw(address: string, serviceTypeName: string): RawClient {
    return new RawClient(address, channelCredentials(serviceTypeName));
  }

  shardClient(address: string, owner: string): GrpcCacheShard {
    return new GrpcCacheShard(address, owner);
  }

  private readonly reported = new Set<ServiceProcess>();

  /** Processes that exited without a scenario stopping them (each reported once). */
  crashed(): string[] {
    const now = this.processes.filter((p) => !p.running && !this.stoppedOnPurpose.has(p) && !this.reported.has(p));
    for (const p of now) this.reported.add(p);
    return now.map((p) => p.name);
  }

  /** Resident memory of every running process, MB. */
  rssMb(): number {
    return this.processes.reduce((a, p) => a + (p.running && p.pid ? rssOf(p.pid) : 0), 0);
  }

  /** Sequences `shard` holds now (-1 when it does not answer). */
  async sequencesOn(shard: ServiceProcess): Promise<number> {
    const c = new GrpcCacheShard(shard.address, '');
    try {
      return (await c.stats(undefined, 5000)).sequences;
    } catch {
      return -1;
    } finally {
      c.close();
    }
  }

  /** What the running shards still hold: sequences, and bytes held or reserved. */
  async held(): Promise<{ sequences: number; bytes: number }> {
    let sequences = 0, bytes = 0;
    for (const p of this.shards) {
      if (!p.running || this.stoppedOnPurpose.has(p)) continue;
      const c = new GrpcCacheShard(p.address, '');
      try {
        const s = await c.stats(undefined, 5000);
        sequences += s.sequences;
        bytes += Math.max(s.bytes.heldBytes, s.reservedBytes);
      } catch {
        // a shard that does not answer holds nothing we can count; crashed() says so
      } finally {
        c.close();
      }
    }
    return { sequences, bytes };
  }

  /** Waits until nothing is held (leases run out, frees land); what is left after timeoutMs leaked. */
  async leaks(timeoutMs = this.settings.leaseMs * 2 + 5000): Promise<{ sequences: number; bytes: number }> {
    const until = Date.now() + timeoutMs;
    let h = await this.held();
    while ((h.sequences > 0 || h.bytes > 0) && Date.now() < until) {
      await sleep(200);
      h = await this.held();
    }
    return h;
  }

  /** Waits until the orchestrator places on every shard again (health checks pass). */
  async allShardsServing(timeoutMs = 30_000): Promise<void> {
    const client = this.publicClient();
    try {
      const until = Date.now() + timeoutMs;
      while (Date.now() < until) {
        const info = await client.info().catch(() => null);
        if (info && this.shards.every((s) => info.cacheShards.includes(s.address))) return;
        await sleep(200);
      }
      throw new Error(`the orchestrator did not list every shard within ${timeoutMs} ms`);
    } finally {
      client.close();
    }
  }

  recentLogs(n = 40): string {
    return this.logTail.slice(-n).join('\n');
  }

  async stop(): Promise<void> {
    for (const s of this.shards) if (s.running) s.kill('SIGCONT');
    await this.cluster.stop();
  }
}

function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}
