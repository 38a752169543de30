// Concurrent requests per client on the public API: one client cannot take
// every queue place and batch slot. A client is its bearer token when the
// server requires one, else its certificate's subject (mutual TLS), else its
// IP address (every port of a host is one client). One request over the
// limit is refused at once with RESOURCE_EXHAUSTED naming the limit.
import { createHash } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';

import { RpcError, Status } from '../common/rpc-error.js';

type Call = Pick<grpc.ServerUnaryCall<unknown, unknown>, 'metadata' | 'getPeer'> & { getAuthContext?: () => { sslPeerCertificate?: { subject?: object } } };

/** Who a call comes from, for counting. */
export function clientKey(call: Call): string {
  const auth = String(call.metadata.get('authorization')[0] ?? '');
  if (auth) return 'token:' + createHash('sha256').update(auth).digest('hex').slice(0, 16);
  const subject = call.getAuthContext?.()?.sslPeerCertificate?.subject;
  if (subject && Object.keys(subject).length) return 'cert:' + JSON.stringify(subject);
  const peer = call.getPeer(); // "ipv4:127.0.0.1:54321", "ipv6:[::1]:54321"
  return 'ip:' + peer.replace(/:\d+$/, '');
}

export class ClientLimits {
  private readonly inFlight = new Map<string, number>();

  constructor(readonly perClient: number) {}

  /** Counts a request of `call`'s client; returns its release (call it once, when the request ends). */
  enter(call: Call): () => void {
    const key = clientKey(call);
    const n = this.inFlight.get(key) ?? 0;
    if (n >= this.perClient)
      throw new RpcError(Status.RESOURCE_EXHAUSTED, `this client has ${n} requests in flight, the limit per client (max_streams_per_client, --max-streams-per-client); wait for one to end`);
    this.inFlight.set(key, n + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const m = (this.inFlight.get(key) ?? 1) - 1;
      if (m > 0) this.inFlight.set(key, m);
      else this.inFlight.delete(key);
    };
  }

  /** Clients with requests in flight (for tests and metrics). */
  get clients(): number {
    return this.inFlight.size;
  }
}
