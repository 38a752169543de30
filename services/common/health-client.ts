// A gRPC health check (grpc.health.v1.Health/Check) against a service, the
// same probe Kubernetes and grpc_health_probe use.
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';

import { channelCredentials } from './credentials.js';

const HealthClient = grpc.makeGenericClientConstructor(healthService as grpc.ServiceDefinition, 'Health');

/** 'SERVING', 'NOT_SERVING', … or the error's message when the call fails.
 * side: the service the address serves, for the credentials (credentials.ts). */
export function checkHealth(address: string, service = '', deadlineMs = 2000, side = 'smartkv.v1.CacheService'): Promise<string> {
  const client = new HealthClient(address, channelCredentials(side));
  return new Promise<string>((resolve) => {
    (client as unknown as { check: (r: unknown, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: { status: string }) => void) => void }).check(
      { service },
      { deadline: Date.now() + deadlineMs },
      (err, res) => {
        client.close();
        resolve(err ? `error: ${err.details || err.message}` : String(res?.status));
      },
    );
  });
}

/** Polls until the service reports SERVING; rejects after timeoutMs. */
export async function waitHealthy(address: string, timeoutMs: number, side?: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < until) {
    last = await checkHealth(address, '', 2000, side);
    if (last === 'SERVING') return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${address} did not report SERVING within ${timeoutMs} ms (last: ${last})`);
}
