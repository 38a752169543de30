// Calls on one long-lived bidirectional stream, answered by id — the client
// side of ReallocStream (cache) and AllocateStream (allocator), and of the
// server helper answerCalls below.
//
// Why a stream: on one host a grpc-js unary call costs ~0.9 ms back to back
// and ~1.7–2.2 ms after a few idle milliseconds (a new HTTP/2 stream, its
// headers and trailers, per call), a message on an open stream ~0.3 / 0.7 ms
// (scratch probe in docs/services.md, "Reallocation calls on streams"). A
// reallocating step makes three such calls in a row.
//
// Each call has its own deadline (a timer: a stream has none per message); a
// late answer finds no pending entry and is dropped. When the stream fails or
// ends, every pending call fails with the stream's status and the next call
// opens a new stream.
import * as grpc from '@grpc/grpc-js';

import { RpcError } from './rpc-error.js';

/** What every answer on such a stream carries. */
export interface StreamAnswer {
  id: bigint;
  errorCode: number;
  errorMessage: string;
}

interface Waiting<Res> {
  resolve: (r: Res) => void;
  reject: (e: Error) => void;
}

export class CallStream<Req, Res extends StreamAnswer> {
  private stream: grpc.ClientDuplexStream<Req, Res> | null = null;
  private readonly pending = new Map<bigint, Waiting<Res>>();
  private nextId = 1n;

  /** name: who answers, for error messages ("cache shard 127.0.0.1:5"). */
  constructor(
    private readonly client: grpc.Client,
    private readonly method: string,
    private readonly metadata: () => grpc.Metadata,
    private readonly name: string,
  ) {}

  /** Sends build(id) and resolves with its answer; an answer with an error code rejects with it. */
  call(build: (id: bigint) => Req, deadlineMs: number, what: string): Promise<Res> {
    const s = this.open();
    const id = this.nextId++;
    return new Promise<Res>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending.delete(id)) reject(new RpcError(grpc.status.DEADLINE_EXCEEDED, `${this.name}: no answer to ${what} within ${deadlineMs} ms`));
      }, deadlineMs);
      this.pending.set(id, {
        resolve: (r) => (clearTimeout(timer), resolve(r)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      s.write(build(id));
    });
  }

  /** Fails every pending call with e (a hung peer); the stream stays. */
  failAll(e: Error): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  close(): void {
    this.stream?.end();
    this.stream = null;
    this.failAll(new RpcError(grpc.status.CANCELLED, `${this.name}: the client was closed`));
  }

  private open(): grpc.ClientDuplexStream<Req, Res> {
    if (this.stream) return this.stream;
    const fn = (this.client as unknown as Record<string, (md: grpc.Metadata) => grpc.ClientDuplexStream<Req, Res>>)[this.method];
    const s = fn.call(this.client, this.metadata());
    this.stream = s;
    const fail = (e: grpc.ServiceError | Error) => {
      if (this.stream === s) this.stream = null;
      const se = e as grpc.ServiceError;
      const code = typeof se.code === 'number' ? se.code : grpc.status.UNAVAILABLE;
      this.failAll(new RpcError(code, `${this.name}: ${se.details ?? se.message}`));
    };
    s.on('data', (res: Res) => {
      const p = this.pending.get(res.id);
      if (!p) return;
      this.pending.delete(res.id);
      if (res.errorCode !== 0) p.reject(new RpcError(res.errorCode, `${this.name}: ${res.errorMessage}`));
      else p.resolve(res);
    });
    s.on('error', fail);
    s.on('end', () => fail(Object.assign(new Error(`${this.method} ended`), { code: grpc.status.UNAVAILABLE })));
    return s;
  }
}
