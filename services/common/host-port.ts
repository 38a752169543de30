// HOST:PORT strings. No gRPC here: the services' main.ts parse options with
// it before telemetry starts (and before @grpc/grpc-js may load).
import { isIP } from 'node:net';

export interface DnsTarget {
  host: string;
  port: number;
}

/** "HOST:PORT" → { host, port }; a bracketed IPv6 host is unwrapped. */
export function parseDnsTarget(s: string): DnsTarget {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(s.trim());
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port > 0 && port < 65536)) throw new Error(`expected HOST:PORT, got "${s}"`);
  return { host: m[1], port };
}

export function joinHostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}
