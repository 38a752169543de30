// gRPC plumbing shared by the three services: grpc-js service definitions
// built from the @bufbuild/protobuf descriptors (buf-generated, gen/), typed
// unary calls, and the mapping between our error codes and gRPC status codes.
import * as grpc from '@grpc/grpc-js';
import { fromBinary, toBinary, type DescMessage, type DescService, type MessageShape } from '@bufbuild/protobuf';

import { channelCredentials, channelInterceptors } from './credentials.js';

/** A hand-written codec for one method's messages (same wire format). */
export interface MethodCodec {
  serializeRequest: (m: never) => Buffer;
  deserializeRequest: (b: Buffer) => unknown;
  serializeResponse: (m: never) => Buffer;
  deserializeResponse: (b: Buffer) => unknown;
}

/** A grpc-js service definition keyed by each method's localName. grpc-js
 * needs serializers that return a Buffer, not the Uint8Array toBinary makes.
 * `codecs` (by localName) replace the reflection-based codec on hot paths. */
export function grpcDefinition(service: DescService, codecs: Record<string, MethodCodec> = {}): grpc.ServiceDefinition {
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const m of service.methods) {
    const c = codecs[m.localName];
    def[m.localName] = {
      path: `/${service.typeName}/${m.name}`,
      originalName: m.name,
      requestStream: m.methodKind === 'client_streaming' || m.methodKind === 'bidi_streaming',
      responseStream: m.methodKind === 'server_streaming' || m.methodKind === 'bidi_streaming',
      requestSerialize: c?.serializeRequest ?? serializer(m.input),
      requestDeserialize: guarded(m.input.typeName, c?.deserializeRequest ?? deserializer(m.input)),
      responseSerialize: c?.serializeResponse ?? serializer(m.output),
      responseDeserialize: c?.deserializeResponse ?? deserializer(m.output),
    } as grpc.MethodDefinition<unknown, unknown>;
  }
  return def as grpc.ServiceDefinition;
}

/** A request that did not parse. grpc-js answers a deserializer that throws
 * with INTERNAL ("Error deserializing request"), which alerting reads as a
 * server bug; so the server's deserializers return this instead, and the
 * handlers (guardMalformed in server.ts, AttendStream itself) answer
 * INVALID_ARGUMENT naming the message and what was wrong. */
export class MalformedMessage {
  constructor(readonly details: string) {}
}

function guarded(typeName: string, decode: (b: Buffer) => unknown): (b: Buffer) => unknown {
  return (b) => {
    try {
      return decode(b);
    } catch (e) {
      return new MalformedMessage(`malformed ${typeName.split('.').pop()} (${b.length} bytes): ${(e as Error)?.message ?? e}`);
    }
  };
}

/** The status a malformed request gets. */
export function malformedStatus(m: MalformedMessage): Partial<grpc.StatusObject> {
  return { code: grpc.status.INVALID_ARGUMENT, details: m.details };
}

function serializer<D extends DescMessage>(schema: D) {
  return (msg: MessageShape<D>): Buffer => {
    const bytes = toBinary(schema, msg);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

function deserializer<D extends DescMessage>(schema: D) {
  return (buf: Buffer): MessageShape<D> => fromBinary(schema, buf);
}

/** A generic grpc-js client for `service` at `address` (host:port), with
 * the credentials this process uses for that service (credentials.ts). */
export function makeClient(service: DescService, address: string, options: grpc.ClientOptions = {}, codecs: Record<string, MethodCodec> = {}): grpc.Client {
  const Ctor = grpc.makeGenericClientConstructor(grpcDefinition(service, codecs), service.name);
  return new Ctor(address, channelCredentials(service.typeName), {
    interceptors: channelInterceptors(service.typeName),
    'grpc.max_receive_message_length': 256 << 20,
    'grpc.max_send_message_length': 256 << 20,
    ...options,
  });
}

type UnaryFn = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: unknown) => void) => grpc.ClientUnaryCall;

/** Calls a unary method by localName; rejects with the ServiceError grpc-js gives.
 * waitForReady: wait (within the deadline) for a connection that is down
 * or backing off, instead of failing at once with its last error. */
export function callUnary<O>(client: grpc.Client, method: string, req: unknown, opts: { deadlineMs?: number; metadata?: grpc.Metadata; waitForReady?: boolean } = {}): Promise<O> {
  const fn = (client as unknown as Record<string, UnaryFn>)[method];
  const callOpts: grpc.CallOptions = opts.deadlineMs ? { deadline: Date.now() + opts.deadlineMs } : {};
  let metadata = opts.metadata ?? new grpc.Metadata();
  if (opts.waitForReady) {
    metadata = metadata.clone(); // grpc-js carries the flag on the metadata: the caller's stays as it was
    metadata.setOptions({ ...metadata.getOptions(), waitForReady: true });
  }
  return new Promise<O>((resolve, reject) => {
    fn.call(client, req, metadata, callOpts, (err, res) => (err ? reject(err) : resolve(res as O)));
  });
}

export { RpcError, invalidArgument } from './rpc-error.js';

/** Our string codes (KvEngineError, ModelLoadError …) to gRPC status codes. */
export function statusOf(err: unknown): grpc.status {
  const code = (err as { code?: unknown })?.code;
  if (typeof code === 'number' && grpc.status[code] !== undefined) return code;
  if (typeof code === 'string' && code in grpc.status) return grpc.status[code as keyof typeof grpc.status] as grpc.status;
  return grpc.status.INTERNAL;
}

/** What a handler returns to grpc-js for a failure. */
export function toServiceError(err: unknown): Partial<grpc.StatusObject> {
  const message = err instanceof Error ? err.message : String(err);
  const code = statusOf(err);
  // An INTERNAL error is a bug: keep its stack in the service's log.
  if (code === grpc.status.INTERNAL) process.stderr.write(`internal error: ${(err as Error)?.stack ?? message}\n`);
  return { code, details: message };
}


/** Typed-array views of protobuf bytes: copies when the offset is unaligned.
 * (new Uint8Array(x) copies into a buffer of exactly x's length; Buffer's
 * own slice() would not copy.) */
export function f32(bytes: Uint8Array): Float32Array {
  if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 2);
  return new Float32Array(new Uint8Array(bytes).buffer);
}

export function u32(bytes: Uint8Array): Uint32Array {
  if (bytes.byteOffset % 4 === 0) return new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 2);
  return new Uint32Array(new Uint8Array(bytes).buffer);
}

/** The bytes of a typed array (no copy). */
export function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}
