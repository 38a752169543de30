// One gRPC server per process: our services, plus gRPC health checking and
// server reflection so that grpcurl and standard probes work against it.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import type { DescService } from '@bufbuild/protobuf';

import type { MessageLimits } from './limits.js';
import { serverOptions } from './limits.js';
import { requireBearer } from './credentials.js';
import { grpcDefinition, MalformedMessage, malformedStatus, type MethodCodec } from './rpc.js';

export interface ServedService {
  service: DescService;
  implementation: grpc.UntypedServiceImplementation;
  codecs?: Record<string, MethodCodec>;
}

export interface RunningServer {
  readonly server: grpc.Server;
  readonly address: string; // host:port actually bound
  readonly health: HealthImplementation;
  /** Health checks answer NOT_SERVING from now on (probes and load balancers stop sending work). */
  markNotServing(): void;
  /** Stops accepting calls, lets in-flight ones finish for up to graceMs, then cancels them. */
  shutdown(graceMs: number): Promise<void>;
}

/** Unary and server-streaming handlers never see a MalformedMessage: the
 * call ends with INVALID_ARGUMENT. Streaming requests (AttendStream) get
 * their messages as they come and check each one themselves. */
function guardMalformed(def: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation): grpc.UntypedServiceImplementation {
  const out: grpc.UntypedServiceImplementation = {};
  for (const [name, fn] of Object.entries(impl)) {
    const m = def[name];
    if (!m || m.requestStream) out[name] = fn;
    else if (m.responseStream)
      out[name] = ((call: grpc.ServerWritableStream<unknown, unknown>) =>
        call.request instanceof MalformedMessage ? call.emit('error', malformedStatus(call.request)) : (fn as grpc.handleServerStreamingCall<unknown, unknown>)(call)) as grpc.UntypedHandleCall;
    else
      out[name] = ((call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) =>
        call.request instanceof MalformedMessage ? cb(malformedStatus(call.request)) : (fn as grpc.handleUnaryCall<unknown, unknown>)(call, cb)) as grpc.UntypedHandleCall;
  }
  return out;
}

/** proto/ in the repository, found from this file (source or dist). */
export function protoDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'proto', 'smartkv', 'v1', 'common.proto'))) return join(dir, 'proto');
    dir = dirname(dir);
  }
  throw new Error('proto/smartkv/v1 not found above ' + fileURLToPath(import.meta.url));
}

/** Who may call: the transport (credentials.ts: mutual TLS, TLS or plaintext)
 * and, optionally, a bearer token every call of our services must carry. */
export interface ServerSecurity {
  credentials: grpc.ServerCredentials;
  bearerToken?: string;
}

/** limits: sized from the served model (limits.ts); a larger message is
 * refused with RESOURCE_EXHAUSTED from its length prefix, before it is read. */
export async function startServer(host: string, port: number, services: ServedService[], limits: MessageLimits, security?: ServerSecurity): Promise<RunningServer> {
  const server = new grpc.Server(serverOptions(limits));
  const health = new HealthImplementation({ '': 'NOT_SERVING' });
  for (const s of services) {
    const def = grpcDefinition(s.service, s.codecs);
    const impl = security?.bearerToken ? requireBearer(s.implementation, security.bearerToken) : s.implementation;
    server.addService(def, guardMalformed(def, impl));
    health.setStatus(s.service.typeName, 'NOT_SERVING');
  }
  health.addToServer(server);
  // Reflection reads .proto sources (proto-loader): ours (the files buf
  // compiles) and the health service's; it lists what this server serves.
  const files = ['smartkv/v1/generation.proto', 'smartkv/v1/cache.proto', 'smartkv/v1/allocator.proto', 'health/v1/health.proto'];
  const healthProtoDir = join(dirname(createRequire(import.meta.url).resolve('grpc-health-check/package.json')), 'proto');
  const pkg = protoLoader.loadSync(files, { includeDirs: [protoDir(), healthProtoDir], keepCase: true });
  new ReflectionService(pkg, { services: [...services.map((s) => s.service.typeName), 'grpc.health.v1.Health'] }).addToServer(server);

  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:${port}`, security?.credentials ?? grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  health.setStatus('', 'SERVING');
  for (const s of services) health.setStatus(s.service.typeName, 'SERVING');

  const markNotServing = () => {
    health.setStatus('', 'NOT_SERVING');
    for (const s of services) health.setStatus(s.service.typeName, 'NOT_SERVING');
  };
  return {
    server,
    address: `${host}:${bound}`,
    health,
    markNotServing,
    shutdown: (graceMs) =>
      new Promise<void>((resolve) => {
        markNotServing();
        const timer = setTimeout(() => server.forceShutdown(), graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      }),
  };
}
