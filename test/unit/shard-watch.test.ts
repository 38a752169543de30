// A hung shard (no answer to a health check while a call waits) fails its
// calls in flight within suspect + ping and new ones at once, until it
// answers again; a busy one (answers the check) keeps its calls waiting.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';

import { RpcError } from '../../services/common/rpc.js';
import { ShardWatch, type Ping } from '../../services/orchestrator/shard-watch.js';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Keeps the process alive while a test waits on the watch (its timer is unref'd, as a real call's socket would hold it). */
const keepAlive = () => setInterval(() => undefined, 1000);

/** A call that answers `value` after `ms`. */
const slowCall = <T>(ms: number, value: T) => () => sleep(ms).then(() => value);

test('shard watch: a busy shard that answers its health check keeps its slow call', async () => {
  let pings = 0;
  const ping: Ping = async () => {
    pings++;
    return null;
  };
  const w = new ShardWatch('busy:1', ping, 30, 70);
  try {
    assert.equal(await w.run(slowCall(250, 'done')), 'done', 'the call outlived suspect + ping and still answered');
    assert.ok(pings >= 1, 'the shard was asked while the call waited');
    assert.equal(w.hung, null);
  } finally {
    w.close();
  }
});

test('shard watch: a shard that does not answer fails calls in flight, then new ones at once, until it answers again', async () => {
  let alive = false;
  const ping: Ping = async (deadlineMs) => {
    if (alive) return null;
    await sleep(deadlineMs);
    return { code: grpc.status.DEADLINE_EXCEEDED, details: 'Deadline exceeded' };
  };
  const w = new ShardWatch('hung:1', ping, 30, 70);
  let dropped: RpcError | null = null;
  w.onHung = (e) => (dropped = e);
  const hold = keepAlive();
  try {
    const t0 = performance.now();
    // Never answers on its own (a stopped shard with a long deadline).
    const err = await w.run(() => new Promise<never>(() => undefined)).catch((e: RpcError) => e);
    const ms = performance.now() - t0;
    assert.ok(err instanceof RpcError);
    assert.equal(err.code, grpc.status.DEADLINE_EXCEEDED);
    assert.match(err.message, /hung:1.*did not answer a health check within 70 ms/);
    assert.ok(ms >= 95 && ms < 1000, `given up after suspect + ping, took ${ms.toFixed(0)} ms`);
    assert.equal(dropped, err, 'the owner was told, to drop what the shard may still write');
    let called = false;
    const next = await w.run(async () => (called = true)).catch((e: RpcError) => e);
    assert.equal(next, err, 'a new call fails at once with the same error');
    assert.equal(called, false, 'and is not sent');
    alive = true;
    const until = Date.now() + 2000;
    while (w.hung && Date.now() < until) await sleep(20);
    assert.equal(w.hung, null, 'the shard answers again: calls go through');
    assert.equal(await w.run(slowCall(5, 7)), 7);
  } finally {
    clearInterval(hold);
    w.close();
  }
});

test('shard watch: a refused connection fails calls with UNAVAILABLE', async () => {
  const ping: Ping = async () => ({ code: grpc.status.UNAVAILABLE, details: 'connection refused' });
  const w = new ShardWatch('gone:1', ping, 20, 50);
  const hold = keepAlive();
  try {
    const err = await w.run(() => new Promise<never>(() => undefined)).catch((e: RpcError) => e);
    assert.equal((err as RpcError).code, grpc.status.UNAVAILABLE);
  } finally {
    clearInterval(hold);
    w.close();
  }
});
