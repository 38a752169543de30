// Calls on one stream, answered by id (services/common/call-stream.ts, and the
// server side answer-calls.ts), over a real gRPC server on loopback whose
// AllocateStream handler obeys the message's traceparent field: "wait:N"
// answers after N ms, "fail" with NOT_FOUND, "end" ends the stream.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import { AllocateStreamRequestSchema, AllocateStreamResponseSchema, AllocatorService, type AllocateStreamRequest, type AllocateStreamResponse } from '../../gen/smartkv/v1/allocator_pb.js';
import { answerCalls } from '../../services/common/answer-calls.js';
import { CallStream } from '../../services/common/call-stream.js';
import { grpcDefinition, makeClient, RpcError } from '../../services/common/rpc.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ask = (command: string) => (id: bigint) => create(AllocateStreamRequestSchema, { id, traceparent: command });

describe('CallStream and answerCalls', () => {
  let server: grpc.Server;
  let client: grpc.Client;
  let streamsOpened = 0;

  before(async () => {
    server = new grpc.Server();
    const handle = answerCalls<AllocateStreamRequest, AllocateStreamResponse>(
      async (req) => {
        const [what, arg] = req.traceparent.split(':');
        if (what === 'wait') await sleep(Number(arg));
        if (what === 'fail') throw new RpcError(grpc.status.NOT_FOUND, 'no such thing');
        return create(AllocateStreamResponseSchema, { id: req.id, errorMessage: `done ${req.traceparent}` });
      },
      (id, code, message) => create(AllocateStreamResponseSchema, { id, errorCode: code, errorMessage: message }),
      () => undefined,
    );
    server.addService(grpcDefinition(AllocatorService), {
      allocateStream: (call: grpc.ServerDuplexStream<AllocateStreamRequest, AllocateStreamResponse>) => {
        streamsOpened++;
        // "end" ends this stream at once, answering nothing.
        call.on('data', (req: AllocateStreamRequest) => req.traceparent === 'end' && call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'ended on request' }));
        handle(call);
      },
    });
    const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
    client = makeClient(AllocatorService, `127.0.0.1:${port}`);
  });

  after(() => {
    client?.close();
    server?.forceShutdown();
  });

  const stream = () => new CallStream<AllocateStreamRequest, AllocateStreamResponse>(client, 'allocateStream', () => new grpc.Metadata(), 'test peer');

  test('answers find their calls by id, in whatever order they come', async () => {
    const s = stream();
    const order: string[] = [];
    const slow = s.call(ask('wait:80'), 5000, 'slow').then((r) => (order.push('slow'), r));
    const fast = s.call(ask('wait:1'), 5000, 'fast').then((r) => (order.push('fast'), r));
    const [a, b] = await Promise.all([slow, fast]);
    assert.deepEqual(order, ['fast', 'slow'], 'the second call was answered first');
    assert.equal(a.errorMessage, 'done wait:80');
    assert.equal(b.errorMessage, 'done wait:1');
    s.close();
  });

  test('an error answer rejects that call with its code, naming the peer; the stream serves on', async () => {
    const s = stream();
    await assert.rejects(s.call(ask('fail'), 5000, 'x'), (e: Error) => {
      assert.equal((e as RpcError).code, grpc.status.NOT_FOUND);
      assert.match(e.message, /^test peer: no such thing/);
      return true;
    });
    assert.equal((await s.call(ask('ok'), 5000, 'next')).errorMessage, 'done ok');
    s.close();
  });

  test('a call past its deadline fails with DEADLINE_EXCEEDED; its late answer is dropped, the next call is answered', async () => {
    const s = stream();
    await assert.rejects(s.call(ask('wait:300'), 50, 'the slow one'), (e: Error) => {
      assert.equal((e as RpcError).code, grpc.status.DEADLINE_EXCEEDED);
      assert.match(e.message, /no answer to the slow one within 50 ms/);
      return true;
    });
    await sleep(350); // the late answer arrives meanwhile and finds nobody
    assert.equal((await s.call(ask('ok'), 5000, 'next')).errorMessage, 'done ok');
    s.close();
  });

  test('a stream that fails fails its pending calls; the next call opens a new stream', async () => {
    const s = stream();
    await s.call(ask('ok'), 5000, 'first');
    const opened = streamsOpened;
    const pending = s.call(ask('wait:200'), 5000, 'pending');
    await assert.rejects(s.call(ask('end'), 5000, 'the ender'), (e: Error) => {
      assert.equal((e as RpcError).code, grpc.status.UNAVAILABLE, e.message);
      return true;
    });
    await assert.rejects(pending, (e: Error) => (e as RpcError).code === grpc.status.UNAVAILABLE);
    assert.equal((await s.call(ask('ok'), 5000, 'after')).errorMessage, 'done ok');
    assert.equal(streamsOpened, opened + 1, 'one new stream');
    s.close();
  });

  test('close fails what is pending with CANCELLED', async () => {
    const s = stream();
    const pending = s.call(ask('wait:200'), 5000, 'pending');
    s.close();
    await assert.rejects(pending, (e: Error) => (e as RpcError).code === grpc.status.CANCELLED);
  });
});
