// Clients for the integration tests: the Generation client (re-exported from
// services/common/generation-client.ts) and a cache-shard client for Stats,
// over real gRPC.
import type * as grpc from '@grpc/grpc-js';

import { GrpcCacheShard } from '../../services/orchestrator/cache-client.js';

export { generateRequest, SmartKvClient, type GenerateOptions, type Streamed } from '../../services/common/generation-client.js';

/** Live sequences and bytes held by one cache service. */
export async function cacheStats(address: string): Promise<{ sequences: number; heldBytes: number; reservedBytes: number }> {
  const shard = new GrpcCacheShard(address, '');
  try {
    const s = await shard.stats(undefined, 5000);
    return { sequences: s.sequences, heldBytes: s.bytes.heldBytes, reservedBytes: s.reservedBytes };
  } finally {
    shard.close();
  }
}

/** Polls until cond() holds; fails after timeoutMs with the last value. */
export async function eventually<T>(fn: () => Promise<T>, cond: (v: T) => boolean, timeoutMs: number): Promise<T> {
  const until = Date.now() + timeoutMs;
  let v = await fn();
  while (!cond(v)) {
    if (Date.now() > until) throw new Error(`condition not met within ${timeoutMs} ms; last value ${JSON.stringify(v)}`);
    await new Promise((r) => setTimeout(r, 50));
    v = await fn();
  }
  return v;
}

export function codeOf(e: unknown): number | undefined {
  return (e as grpc.ServiceError)?.code;
}

/** Quiet logs for tests: keep them for a failure message. */
export function collectLogs(): { log: (role: string, line: string) => void; lines: string[] } {
  const lines: string[] = [];
  return { lines, log: (role, line) => lines.push(`${role}: ${line}`) };
}
