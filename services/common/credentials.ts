// Who may talk to whom: the one place that builds gRPC credentials.
//
//   internal (orchestrator ⇄ cache, orchestrator → allocator, probes):
//     mutual TLS — every server requires a client certificate signed by the
//     deployment's CA, every client checks the server's; plaintext only with
//     an explicit --plaintext.
//   public (clients → orchestrator): plaintext on loopback by default, or TLS
//     (--api-tls tls) or mutual TLS (--api-tls mtls) with the same
//     certificate, and optionally a bearer token (--api-token-file) that every
//     call must carry in `authorization: Bearer …` (health and reflection stay
//     open for probes).
//
// Certificates come from a directory (--tls-dir): ca.pem, cert.pem, key.pem,
// or a Kubernetes TLS secret's ca.crt, tls.crt, tls.key. `npm start` makes a
// throwaway CA and one certificate for 127.0.0.1/localhost with the openssl
// CLI (generateLocalTls) unless it is given a directory.
//
// A process sets how it reaches SmartKV once (useClientSecurity); the clients
// it makes (rpc.ts makeClient, the health probes) read it from here, so the
// call sites only name which side they talk to.
import { execFileSync } from 'node:child_process';
import { timingSafeEqual } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';

import { RpcError, Status } from './rpc-error.js';

/** PEM bytes of a CA, and this process's certificate chain and key. */
export interface TlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  dir: string; // where they were read from (for messages and child processes)
}

export type ApiTls = 'off' | 'tls' | 'mtls';

export const PUBLIC_SERVICE = 'smartkv.v1.GenerationService';

const NAMES = { ca: ['ca.pem', 'ca.crt'], cert: ['cert.pem', 'tls.crt'], key: ['key.pem', 'tls.key'] } as const;

/** Reads ca/cert/key from `dir`; throws naming the file that is missing. */
export function readTlsDir(dir: string): TlsMaterial {
  const read = (what: keyof typeof NAMES) => {
    const f = NAMES[what].map((n) => join(dir, n)).find((p) => existsSync(p));
    if (!f) throw new Error(`--tls-dir ${dir}: no ${NAMES[what].join(' or ')}`);
    return readFileSync(f);
  };
  return { ca: read('ca'), cert: read('cert'), key: read('key'), dir };
}

/** The TLS a service process was told to use: --tls-dir, or null with an explicit --plaintext. */
export function tlsFromOptions(o: Record<string, unknown>, what: string): TlsMaterial | null {
  const dir = o['tls-dir'] as string | undefined;
  if (dir && o.plaintext) throw new Error('give --tls-dir or --plaintext, not both');
  if (dir) return readTlsDir(dir);
  if (o.plaintext) return null;
  throw new Error(`${what} needs certificates for mutual TLS between the services: --tls-dir DIR (ca.pem, cert.pem, key.pem); or --plaintext to run without TLS`);
}

// --- servers ---------------------------------------------------------------

/** An internal server: mutual TLS (client certificates required), or plaintext. */
export function internalServerCredentials(tls: TlsMaterial | null): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  return grpc.ServerCredentials.createSsl(tls.ca, [{ cert_chain: tls.cert, private_key: tls.key }], true);
}

/** The public API's server: plaintext, TLS, or TLS that also requires a client certificate. */
export function publicServerCredentials(tls: TlsMaterial | null, mode: ApiTls): grpc.ServerCredentials {
  if (mode === 'off') return grpc.ServerCredentials.createInsecure();
  if (!tls) throw new Error(`--api-tls ${mode} needs certificates (--tls-dir)`);
  return grpc.ServerCredentials.createSsl(mode === 'mtls' ? tls.ca : null, [{ cert_chain: tls.cert, private_key: tls.key }], mode === 'mtls');
}

/** Wraps handlers so that every call must carry `authorization: Bearer <token>`; UNAUTHENTICATED otherwise. */
export function requireBearer(impl: grpc.UntypedServiceImplementation, token: string): grpc.UntypedServiceImplementation {
  const want = Buffer.from(`Bearer ${token}`);
  const ok = (md: grpc.Metadata) => {
    const got = Buffer.from(String(md.get('authorization')[0] ?? ''));
    return got.length === want.length && timingSafeEqual(got, want);
  };
  const refusal = () => new RpcError(Status.UNAUTHENTICATED, 'authorization: this server needs a bearer token (authorization: Bearer <token>, smartkv --token)');
  const out: grpc.UntypedServiceImplementation = {};
  for (const [name, fn] of Object.entries(impl)) {
    out[name] = ((call: grpc.ServerUnaryCall<unknown, unknown>, cb?: grpc.sendUnaryData<unknown>) => {
      if (ok(call.metadata)) return (fn as (c: unknown, cb?: unknown) => void)(call, cb);
      const e = refusal();
      if (cb) cb({ code: e.code, details: e.message });
      else (call as unknown as NodeJS.EventEmitter).emit('error', { code: e.code, details: e.message });
    }) as grpc.UntypedHandleCall;
  }
  return out;
}

/** Reads a bearer token file (one line); refuses tokens too short to be secret. */
export function readToken(file: string): string {
  const t = readFileSync(file, 'utf8').trim();
  if (t.length < 16) throw new Error(`--api-token-file ${file}: the token has ${t.length} characters; use at least 16 (e.g. openssl rand -hex 32)`);
  return t;
}

// --- clients ---------------------------------------------------------------

interface ClientSecurity {
  internal: TlsMaterial | null; // null: plaintext
  publicTls: TlsMaterial | null; // the CA (and, for mtls, the certificate) to reach the public API over TLS
  token?: string; // bearer token for the public API
}

let security: ClientSecurity = { internal: null, publicTls: null };

/** How this process reaches SmartKV's services from now on. */
export function useClientSecurity(s: Partial<ClientSecurity>): void {
  security = { ...security, ...s };
}

/** Credentials for a channel to `serviceTypeName` (the public API or an internal service). */
export function channelCredentials(serviceTypeName: string): grpc.ChannelCredentials {
  const tls = serviceTypeName === PUBLIC_SERVICE ? security.publicTls : security.internal;
  return tls ? grpc.credentials.createSsl(tls.ca, tls.key, tls.cert) : grpc.credentials.createInsecure();
}

/** Channel options for it: the bearer token rides on every call of the public API. */
export function channelInterceptors(serviceTypeName: string): grpc.Interceptor[] {
  const token = serviceTypeName === PUBLIC_SERVICE ? security.token : undefined;
  if (!token) return [];
  return [
    (options, next) =>
      new grpc.InterceptingCall(next(options), {
        start: (metadata, listener, start) => {
          metadata.set('authorization', `Bearer ${token}`);
          start(metadata, listener);
        },
      }),
  ];
}

// --- a throwaway CA for a local run ------------------------------------------

/** A new CA and one certificate (server and client use) for `hosts` in a
 * fresh temporary directory; the caller removes it (removeLocalTls). Needs
 * the openssl CLI (node:crypto cannot issue certificates). */
export function generateLocalTls(hosts: string[] = []): TlsMaterial {
  const dir = mkdtempSync(join(tmpdir(), 'smartkv-tls-'));
  const ossl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const names = [...new Set(['127.0.0.1', '::1', 'localhost', ...hosts])].filter((h) => h && h !== '0.0.0.0' && h !== '::');
  const san = names.map((h) => (/^[\d.]+$|:/.test(h) ? `IP:${h}` : `DNS:${h}`)).join(',');
  try {
    ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca-key.pem', '-out', 'ca.pem', '-days', '7', '-subj', '/CN=smartkv local CA');
    ossl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'key.pem', '-out', 'cert.csr', '-subj', '/CN=smartkv');
    writeFileSync(join(dir, 'ext.cnf'), `subjectAltName=${san}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n`);
    ossl('x509', '-req', '-in', 'cert.csr', '-CA', 'ca.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-out', 'cert.pem', '-days', '7', '-extfile', 'ext.cnf');
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    const why = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'the openssl command was not found' : String((e as { stderr?: Buffer }).stderr ?? (e as Error).message);
    throw new Error(`could not make certificates for a local run (${why.trim()}); give --tls-dir DIR or --plaintext`);
  }
  rmSync(join(dir, 'ca-key.pem')); // nothing more will be signed: the CA's key goes now
  return readTlsDir(dir);
}

export function removeLocalTls(tls: TlsMaterial | null): void {
  if (tls) rmSync(tls.dir, { recursive: true, force: true });
}
