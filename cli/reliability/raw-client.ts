// Raw gRPC calls for the reliability suite and the hostile-client tests: any
// bytes to any method, with no codec in the way, so they can send what no
// generated client would (oversized or malformed messages, someone else's
// sequence id).
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';

const same = (b: Buffer) => b;

export class RawClient {
  private readonly client: grpc.Client;

  constructor(address: string, credentials = grpc.credentials.createInsecure()) {
    // No send limit here: the server's limit is what is under test.
    this.client = new grpc.Client(address, credentials, { 'grpc.max_send_message_length': -1, 'grpc.max_receive_message_length': -1 });
  }

  /** Resolves with the status code and details (0 = OK) of a unary call. */
  unary(path: string, body: Buffer, metadata = new grpc.Metadata(), deadlineMs = 30_000): Promise<{ code: number; details: string; body?: Buffer }> {
    return new Promise((resolve) => {
      this.client.makeUnaryRequest(path, same, same, body, metadata, { deadline: Date.now() + deadlineMs }, (err, res) =>
        resolve(err ? { code: err.code, details: err.details } : { code: 0, details: '', body: res }),
      );
    });
  }

  /** A server-streaming call: its final status. */
  serverStream(path: string, body: Buffer, deadlineMs = 30_000, metadata = new grpc.Metadata()): Promise<{ code: number; details: string }> {
    return new Promise((resolve) => {
      const call = this.client.makeServerStreamRequest(path, same, same, body, metadata, { deadline: Date.now() + deadlineMs });
      call.on('data', () => {});
      call.on('error', () => {});
      call.on('status', (s: grpc.StatusObject) => resolve({ code: s.code, details: s.details }));
    });
  }

  /** A bidi stream that writes `messages` and resolves with its final status. */
  bidi(path: string, messages: Buffer[], deadlineMs = 30_000, metadata = new grpc.Metadata(), halfClose = false): Promise<{ code: number; details: string }> {
    return new Promise((resolve) => {
      const call = this.client.makeBidiStreamRequest(path, same, same, metadata, { deadline: Date.now() + deadlineMs });
      call.on('data', () => {});
      call.on('error', () => {});
      call.on('status', (s: grpc.StatusObject) => resolve({ code: s.code, details: s.details }));
      for (const m of messages) call.write(m);
      if (halfClose) call.end();
    });
  }

  close(): void {
    this.client.close();
  }
}

/** Resident memory of a process, in MB (Linux /proc). */
export function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}
