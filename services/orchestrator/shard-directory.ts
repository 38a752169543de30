// Which cache shards the orchestrator may place new sequences on. Shards come
// from a fixed address list (--cache) and/or a DNS name (--cache-dns
// HOST:PORT, e.g. a Kubernetes headless Service) whose every address is one
// shard; the name is resolved again every `resolveEveryMs`, so shards join
// and leave at run time. Every known shard is probed with grpc.health.v1
// every `healthEveryMs`:
//
//   listed (static, or in the last DNS answer) ─┐
//   last health check SERVING ──────────────────┼─► eligible: new sequences may go there
//   same engine settings as the first shard ────┘
//
// A shard that leaves the DNS answer or fails a check only stops receiving
// new sequences: the ones it holds keep running on their client, so a
// draining shard finishes its work and a dead one fails only its own
// requests (UNAVAILABLE, from the client). Each address keeps the number it
// got when first seen, so a shard's number in a summary never changes.
import { Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';

import type { ShardStats } from '../cache/cache-api.js';
import { joinHostPort, type DnsTarget } from '../common/host-port.js';
import { channelCredentials } from '../common/credentials.js';
import type { ShardHandle } from './scheduler.js';

export type { DnsTarget };

/** What placement reads: the shards a new sequence may go to now. */
export interface ShardSet {
  eligible(): ShardHandle[];
}

/** A fixed set (the in-process cache). */
export class FixedShards implements ShardSet {
  constructor(private readonly shards: ShardHandle[]) {}
  eligible(): ShardHandle[] {
    return this.shards;
  }
}

/** A DNS answer: the addresses, or null when the lookup failed without an
 * authoritative answer (timeout, SERVFAIL, refused): keep the previous set. */
export type Lookup = (host: string) => Promise<string[] | null>;

/** A health probe: 'SERVING', 'NOT_SERVING', or an error message. */
export interface HealthProbe {
  check(deadlineMs: number): Promise<string>;
  close(): void;
}

export type ConnectedShard = ShardHandle['shard'] & { close(): void };

export interface ShardDirectoryOptions {
  addresses?: string[]; // fixed shards, always listed
  dns?: DnsTarget; // every address HOST resolves to, at PORT
  dnsServers?: string[]; // resolvers to ask (IP or IP:PORT); default: the system's
  resolveEveryMs?: number; // default 5000
  healthEveryMs?: number; // default 1000
  healthDeadlineMs?: number; // default 1000
  connect: (address: string) => ConnectedShard;
  probe?: (address: string) => HealthProbe; // default: grpc.health.v1 Check of smartkv.v1.CacheService
  lookup?: Lookup; // default: A and AAAA records through node:dns
  log: (line: string) => void;
}

interface Entry {
  handle: ShardHandle & { shard: ConnectedShard };
  probe: HealthProbe;
  listed: boolean;
  healthy: boolean;
  compatible: boolean | null; // null: not checked yet
  goneSince: number; // when it left the listing (0: listed)
}

/** Engine settings every shard must share (the scheduler plans with them; the
 * precision mode is per sequence, so shards need not agree on their default). */
function settingsOf(s: ShardStats): string {
  return `block ${s.blockTokens} tokens`;
}

/** How long an unlisted shard's client is kept for the sequences it may still hold. */
const RETAIN_UNLISTED_MS = 10 * 60_000;

export class ShardDirectory implements ShardSet {
  private readonly entries = new Map<string, Entry>();
  private readonly fixed: string[];
  private readonly lookup: Lookup;
  private readonly numbers = new Map<string, number>(); // address → its number, kept for good
  private reference: ShardStats | null = null;
  private timers: NodeJS.Timeout[] = [];
  private closed = false;
  private dnsTrouble = ''; // the last lookup failure, logged once until lookups work again

  constructor(private readonly o: ShardDirectoryOptions) {
    this.fixed = [...new Set(o.addresses ?? [])];
    if (!this.fixed.length && !o.dns) throw new Error('no cache shards: give addresses (--cache) or a DNS name (--cache-dns)');
    this.lookup = o.lookup ?? dnsLookup(o.dnsServers);
    for (const a of this.fixed) this.entry(a).listed = true;
  }

  /** Resolves and checks once, then keeps doing so in the background. */
  async start(): Promise<void> {
    await this.refresh();
    if (this.o.dns) this.every(this.o.resolveEveryMs ?? 5000, () => this.resolve());
    this.every(this.o.healthEveryMs ?? 1000, () => this.checkAll());
  }

  /** Settings of the first shard that answers Stats; waits up to timeoutMs.
   * Later shards must match them to become eligible. */
  async firstStats(timeoutMs: number): Promise<ShardStats> {
    const until = Date.now() + timeoutMs;
    for (let attempt = 0; ; attempt++) {
      for (const e of this.entries.values()) {
        if (!e.listed) continue;
        try {
          this.reference ??= await e.handle.shard.stats(undefined, 2000);
          await this.checkAll(); // the shards that share its settings become eligible
          return this.reference;
        } catch {
          // try the next one
        }
      }
      if (Date.now() > until) throw new Error(`no cache shard answered within ${timeoutMs} ms: ${this.describe()}`);
      if (attempt === 0) this.o.log(`waiting for a cache shard (${this.describe()})`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  /** One round now: resolve the name, then check every listed shard. */
  async refresh(): Promise<void> {
    await this.resolve();
    await this.checkAll();
  }

  eligible(): ShardHandle[] {
    return [...this.entries.values()].filter((e) => e.listed && e.healthy && e.compatible === true).map((e) => e.handle);
  }

  /** Every shard known, for logs and tests. */
  states(): { address: string; index: number; listed: boolean; healthy: boolean; compatible: boolean | null }[] {
    return [...this.entries.values()].map((e) => ({ address: e.handle.address, index: e.handle.index, listed: e.listed, healthy: e.healthy, compatible: e.compatible }));
  }

  close(): void {
    this.closed = true;
    for (const t of this.timers) clearInterval(t);
    for (const e of this.entries.values()) {
      e.probe.close();
      e.handle.shard.close();
    }
    this.entries.clear();
  }

  private describe(): string {
    const names = [...this.fixed];
    if (this.o.dns) names.push(`DNS ${joinHostPort(this.o.dns.host, this.o.dns.port)}`);
    return names.join(', ');
  }

  private every(ms: number, fn: () => Promise<void>): void {
    let busy = false;
    const t = setInterval(() => {
      if (busy || this.closed) return;
      busy = true;
      fn()
        .catch((e) => this.o.log(`shard directory: ${(e as Error).message}`))
        .finally(() => (busy = false));
    }, ms);
    t.unref();
    this.timers.push(t);
  }

  private entry(address: string): Entry {
    let e = this.entries.get(address);
    if (!e) {
      const shard = this.o.connect(address);
      e = {
        handle: { shard, address, index: this.numberOf(address) },
        probe: (this.o.probe ?? grpcHealthProbe)(address),
        listed: false,
        healthy: false,
        compatible: null,
        goneSince: 0,
      };
      this.entries.set(address, e);
    }
    return e;
  }

  private numberOf(address: string): number {
    if (!this.numbers.has(address)) this.numbers.set(address, this.numbers.size);
    return this.numbers.get(address)!;
  }

  private async resolve(): Promise<void> {
    const dns = this.o.dns;
    if (!dns) return;
    let trouble = '';
    const found = await this.lookup(dns.host).catch((e) => {
      trouble = (e as Error).message;
      return null;
    });
    if (found === null) {
      if (trouble && trouble !== this.dnsTrouble) this.o.log(`resolving ${dns.host} failed (${trouble}); keeping the shards known`);
      this.dnsTrouble = trouble || this.dnsTrouble;
      return;
    }
    if (this.dnsTrouble) this.o.log(`resolving ${dns.host} works again`);
    this.dnsTrouble = '';
    const now = new Set(found.map((ip) => joinHostPort(ip, dns.port)));
    for (const a of now) {
      const e = this.entry(a);
      if (!e.listed) {
        e.listed = true;
        e.goneSince = 0;
        this.o.log(`cache shard ${a} joined (DNS ${dns.host})`);
        await this.check(e);
      }
    }
    for (const [a, e] of this.entries) {
      if (now.has(a) || this.fixed.includes(a)) continue;
      if (e.listed) {
        e.listed = false;
        e.goneSince = Date.now();
        this.o.log(`cache shard ${a} left (DNS ${dns.host}); no new sequences go there`);
      } else if (e.goneSince && Date.now() - e.goneSince > RETAIN_UNLISTED_MS) {
        // Long gone from the name: drop its client unless it still serves
        // (then a sequence may still run there; look again later).
        if ((await e.probe.check(this.o.healthDeadlineMs ?? 1000)) === 'SERVING') e.goneSince = Date.now();
        else {
          e.probe.close();
          e.handle.shard.close();
          this.entries.delete(a);
        }
      }
    }
  }

  private async checkAll(): Promise<void> {
    await Promise.all([...this.entries.values()].filter((e) => e.listed).map((e) => this.check(e)));
  }

  private async check(e: Entry): Promise<void> {
    const status = await e.probe.check(this.o.healthDeadlineMs ?? 1000);
    const healthy = status === 'SERVING';
    if (healthy && e.compatible === null && this.reference) {
      // A shard that joins must run the engine the scheduler plans for.
      const s = await e.handle.shard.stats(undefined, 2000).catch(() => null);
      if (!s) return; // not answering yet: checked again next round
      e.compatible = settingsOf(s) === settingsOf(this.reference);
      if (!e.compatible) this.o.log(`cache shard ${e.handle.address} runs ${settingsOf(s)}, the others ${settingsOf(this.reference)}: no sequences go there`);
    }
    if (healthy !== e.healthy && e.listed) this.o.log(`cache shard ${e.handle.address} ${healthy ? 'is serving' : `failed its health check (${status}); no new sequences go there`}`);
    e.healthy = healthy;
  }
}

/** A and AAAA records through node:dns (c-ares; /etc/hosts is not read). NXDOMAIN
 * and "no data" are answers (no shard); anything else keeps the previous set. */
export function dnsLookup(servers?: string[]): Lookup {
  const r = new Resolver({ timeout: 2000, tries: 2 });
  if (servers?.length) r.setServers(servers);
  const none = (e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOTFOUND' || e.code === 'ENODATA') return [];
    throw e;
  };
  return async (host) => {
    if (isIP(host)) return [host];
    try {
      const [v4, v6] = await Promise.all([r.resolve4(host).catch(none), r.resolve6(host).catch(none)]);
      return [...v4, ...v6];
    } catch (e) {
      throw new Error(`${(e as NodeJS.ErrnoException).code ?? ''} ${(e as Error).message}`.trim());
    }
  };
}

const HealthClient = grpc.makeGenericClientConstructor(healthService as grpc.ServiceDefinition, 'Health');

/** grpc.health.v1 Check of the cache service over one long-lived channel. */
export function grpcHealthProbe(address: string): HealthProbe {
  const client = new HealthClient(address, channelCredentials('smartkv.v1.CacheService'), { 'grpc.initial_reconnect_backoff_ms': 200, 'grpc.max_reconnect_backoff_ms': 1000 });
  type Check = (r: unknown, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: { status: string }) => void) => void;
  return {
    check: (deadlineMs) =>
      new Promise<string>((resolve) =>
        (client as unknown as { check: Check }).check({ service: 'smartkv.v1.CacheService' }, { deadline: Date.now() + deadlineMs }, (err, res) =>
          resolve(err ? `error: ${err.details || err.message}` : String(res?.status)),
        ),
      ),
    close: () => client.close(),
  };
}
