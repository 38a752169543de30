// callUnary's waitForReady (services/common/rpc.ts). The orchestrator places a
// sequence only on a shard whose reservations it can read; after a shard
// restarted, the orchestrator's connection to it could still be backing off
// while the health checks (their own connection) already called it serving,
// and a call then failed at once with the old ECONNREFUSED: the shard was left
// out of placement and requests were refused RESOURCE_EXHAUSTED
// (`check reliability`, hung_shard after killed_shard). Here a real gRPC
// server comes up on a port the client has just failed to reach.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import { AllocateRequestSchema, AllocateResponseSchema, AllocatorService } from '../../gen/smartkv/v1/allocator_pb.js';
import { callUnary, grpcDefinition, makeClient } from '../../services/common/rpc.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function serve(port: number): Promise<grpc.Server> {
  const server = new grpc.Server();
  server.addService(grpcDefinition(AllocatorService), {
    allocate: (_call: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, create(AllocateResponseSchema, { usedBytes: 42 })),
  });
  return new Promise((res, rej) => server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? rej(e) : res(server))));
}

test('waitForReady rides out a connection that is backing off; without it the call fails at once with the old error', async () => {
  // A free port: bound, then released.
  const probe = new grpc.Server();
  const port = await new Promise<number>((res, rej) => probe.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  probe.forceShutdown();
  // The backoff the orchestrator's shard clients use (cache-client.ts).
  const client = makeClient(AllocatorService, `127.0.0.1:${port}`, { 'grpc.initial_reconnect_backoff_ms': 200, 'grpc.max_reconnect_backoff_ms': 1000 });
  let server: grpc.Server | undefined;
  try {
    const req = create(AllocateRequestSchema, {});
    const t0 = performance.now();
    await assert.rejects(callUnary(client, 'allocate', req, { deadlineMs: 5000 }), (e: grpc.ServiceError) => e.code === grpc.status.UNAVAILABLE);
    assert.ok(performance.now() - t0 < 4000, 'without waitForReady the refused connection fails the call, not its deadline');

    // The server comes up 300 ms after the call starts: the channel is in
    // its backoff then, and the call must wait for the reconnection.
    const waiting = callUnary<{ usedBytes: number }>(client, 'allocate', req, { deadlineMs: 8000, waitForReady: true });
    waiting.catch(() => undefined); // awaited below; a failure is reported there
    await sleep(300);
    server = await serve(port);
    assert.equal((await waiting).usedBytes, 42);

    // waitForReady is still bounded by the deadline.
    server.forceShutdown();
    server = undefined;
    await sleep(100);
    const t1 = performance.now();
    await assert.rejects(callUnary(client, 'allocate', req, { deadlineMs: 600, waitForReady: true }), (e: grpc.ServiceError) => e.code === grpc.status.DEADLINE_EXCEEDED);
    assert.ok(performance.now() - t1 >= 500, 'it waited for the deadline');
  } finally {
    client.close();
    server?.forceShutdown();
  }
});
