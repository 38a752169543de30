// Tells a hung cache shard (SIGSTOPped, its host frozen) from a busy one
// without waiting out the calls' own deadlines. Those follow what the
// shard's calls have been taking (shard-deadline.ts: 10 × the slowest recent
// call), which a loaded host inflates to several seconds; and while one
// shard's attend is outstanding, every request in the step waits, those on
// healthy shards too (measured: 3.0 s token gaps with a 1 s floor).
//
// So: once any call has been outstanding for `suspectMs`, the shard is asked
// a grpc.health.v1 Check (answered on the service's event loop, never behind
// its engine) with `pingMs` to answer. A shard that answers is busy: its
// calls keep their own deadlines. One that does not is hung: every call in
// flight fails now (DEADLINE_EXCEEDED, or UNAVAILABLE when the connection
// is refused), new ones fail at once, and a Check every `pingMs` clears it
// when the shard answers again. suspect + ping = --shard-hang-ms (1 s), so a
// stopped shard is given up on within it whatever the load did to deadlines.
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';

import { channelCredentials } from '../common/credentials.js';
import { RpcError } from '../common/rpc.js';

/** Asks the shard whether it is there: null when it answered (whatever its status), else why not. */
export type Ping = (deadlineMs: number) => Promise<{ code: number; details: string } | null>;

interface InFlight {
  startedAt: number; // performance.now()
  reject: (e: Error) => void;
}

export class ShardWatch {
  private readonly inFlight = new Set<InFlight>();
  private timer: NodeJS.Timeout | null = null;
  private pinging = false;
  private lastPingAt = -Infinity;
  private hungError: RpcError | null = null;
  private closed = false;
  /** Called when the shard is found hung (the owner drops what the shard may still write into). */
  onHung: (e: RpcError) => void = () => undefined;

  constructor(
    readonly address: string,
    private readonly ping: Ping,
    readonly suspectMs: number,
    readonly pingMs: number,
    private readonly log: (line: string) => void = () => undefined,
  ) {}

  /** A shard is given up within `hangMs`: 30 % waiting, 70 % for the Check to answer. */
  static within(address: string, ping: Ping, hangMs: number, log?: (line: string) => void): ShardWatch {
    return new ShardWatch(address, ping, Math.round(0.3 * hangMs), Math.round(0.7 * hangMs), log);
  }

  /** The error calls get while the shard is hung (null: it answers). */
  get hung(): RpcError | null {
    return this.hungError;
  }

  /** Runs a call to the shard under watch: it fails at once while the shard is hung, and when the shard is found hung while it waits. */
  run<T>(call: () => Promise<T>): Promise<T> {
    if (this.hungError) return Promise.reject(this.hungError);
    return new Promise<T>((resolve, reject) => {
      const entry: InFlight = { startedAt: performance.now(), reject };
      this.inFlight.add(entry);
      this.arm();
      call().then(
        (v) => {
          this.inFlight.delete(entry);
          resolve(v);
        },
        (e) => {
          this.inFlight.delete(entry);
          reject(e);
        },
      );
    });
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Looks at the calls in flight a few times per suspectMs while there are any. */
  private arm(): void {
    if (this.timer || this.closed) return;
    this.timer = setInterval(() => this.tick(), Math.max(10, Math.round(this.suspectMs / 3)));
    this.timer.unref();
  }

  private tick(): void {
    if (this.inFlight.size === 0 && !this.hungError) {
      clearInterval(this.timer!);
      this.timer = null;
      return;
    }
    if (this.pinging) return;
    const now = performance.now();
    let oldest = now;
    for (const c of this.inFlight) oldest = Math.min(oldest, c.startedAt);
    // Hung: ask again every pingMs (a refused connection answers at once).
    if (this.hungError ? now - this.lastPingAt >= this.pingMs : now - oldest >= this.suspectMs) void this.check(now - oldest);
  }

  private async check(waitedMs: number): Promise<void> {
    this.pinging = true;
    this.lastPingAt = performance.now();
    try {
      const failed = await this.ping(this.pingMs);
      if (this.closed) return;
      if (!failed) {
        if (this.hungError) this.log(`cache shard ${this.address} answers again`);
        this.hungError = null;
        return;
      }
      if (this.hungError) return;
      const code = failed.code === grpc.status.UNAVAILABLE ? grpc.status.UNAVAILABLE : grpc.status.DEADLINE_EXCEEDED;
      const e = new RpcError(
        code,
        `cache shard ${this.address}: a call waited ${Math.round(waitedMs)} ms and the shard did not answer a health check within ${this.pingMs} ms (${failed.details}); given up as hung`,
      );
      this.hungError = e;
      this.log(e.message);
      const calls = [...this.inFlight];
      this.inFlight.clear();
      this.onHung(e);
      for (const c of calls) c.reject(e);
    } finally {
      this.pinging = false;
    }
  }
}

const HealthClient = grpc.makeGenericClientConstructor(healthService as grpc.ServiceDefinition, 'Health');

/** A grpc.health.v1 Check of the cache service over its own channel; close() closes it. */
export function grpcPing(address: string): Ping & { close(): void } {
  const client = new HealthClient(address, channelCredentials('smartkv.v1.CacheService'), { 'grpc.initial_reconnect_backoff_ms': 200, 'grpc.max_reconnect_backoff_ms': 1000 });
  type Check = (r: unknown, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null) => void) => void;
  const ping = (deadlineMs: number) =>
    new Promise<{ code: number; details: string } | null>((resolve) =>
      (client as unknown as { check: Check }).check({ service: 'smartkv.v1.CacheService' }, { deadline: Date.now() + deadlineMs }, (err) =>
        // NOT_FOUND would be an unknown service name: the shard answered all the same.
        resolve(err && err.code !== grpc.status.NOT_FOUND ? { code: err.code, details: err.details || err.message } : null),
      ),
    );
  return Object.assign(ping, { close: () => client.close() });
}
