// The orchestrator's queue is bounded, and a shutdown does not keep queued
// requests waiting (issue 18), against a real orchestrator process
// (--in-process: the queue is the scheduler's either way) with one batch slot
// and two queue places: a request beyond them gets RESOURCE_EXHAUSTED at
// once; on SIGTERM the queued requests get UNAVAILABLE at once (they used to
// wait out the whole grace time), the running one ends within the grace
// time (finished, or UNAVAILABLE: retryable, not CANCELLED), and the process
// exits soon after.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';

import type { GenerateResponse } from '../../gen/smartkv/v1/generation_pb.js';
import { ServiceProcess } from '../../services/launcher/cluster.js';
import { collectLogs, generateRequest, SmartKvClient } from '../helpers/services.js';

const GRACE_MS = 1500;

interface Outcome {
  code: number;
  details: string;
  tokens: number;
  endedAt: number;
}

/** Runs a Generate stream; `started` resolves at its first token. */
function run(client: SmartKvClient, maxTokens: number): { started: Promise<void>; done: Promise<Outcome> } {
  const call = client.stream(generateRequest({ prompt: 'The old man said', maxTokens }));
  let tokens = 0;
  let first: () => void;
  const started = new Promise<void>((r) => (first = r));
  call.on('data', (m: GenerateResponse) => {
    if (m.kind.case === 'token' && tokens++ === 0) first();
  });
  call.on('error', () => {});
  const done = new Promise<Outcome>((resolve) => call.on('status', (s: grpc.StatusObject) => resolve({ code: s.code, details: s.details, tokens, endedAt: performance.now() })));
  return { started, done };
}

describe('a bounded queue, emptied at once on SIGTERM', () => {
  const logs = collectLogs();
  let orch: ServiceProcess;
  let client: SmartKvClient;

  before(async () => {
    orch = new ServiceProcess('orchestrator', 'orchestrator', ['--in-process', '--port', '0', '--threads', '1', '--max-batch', '1', '--max-queue', '2', '--grace-ms', String(GRACE_MS)], undefined, logs.log);
    await orch.start(60_000);
    client = new SmartKvClient(orch.address);
  });

  after(async () => {
    client?.close();
    await orch?.stop();
  });

  test('full queue: RESOURCE_EXHAUSTED; SIGTERM: queued UNAVAILABLE at once, the running one within the grace time', async (t) => {
    const info = await client.info();
    assert.equal(info.limits?.maxQueued, 2);
    const running = run(client, 1000); // long enough to outlive the test's steps
    await running.started;
    const queued = [run(client, 4), run(client, 4)];
    await new Promise((r) => setTimeout(r, 300)); // both have reached the queue
    const t0 = performance.now();
    const refused = await run(client, 4).done;
    assert.equal(refused.code, grpc.status.RESOURCE_EXHAUSTED, refused.details);
    assert.match(refused.details, /the queue is full: 2 requests wait for the 1 batch slots \(max_queued, --max-queue\)/);
    assert.ok(performance.now() - t0 < 1000, 'refused at once');

    const sigterm = performance.now();
    orch.kill('SIGTERM');
    const q = await Promise.all(queued.map((x) => x.done));
    for (const o of q) {
      assert.equal(o.code, grpc.status.UNAVAILABLE, o.details);
      assert.equal(o.tokens, 0);
      assert.ok(o.endedAt - sigterm < 1000, `a queued request ended ${(o.endedAt - sigterm).toFixed(0)} ms after SIGTERM`);
    }
    const r = await running.done;
    assert.ok(r.code === grpc.status.OK || r.code === grpc.status.UNAVAILABLE, `running request: ${grpc.status[r.code]} ${r.details}`);
    assert.ok(r.endedAt - sigterm < GRACE_MS + 1000, `the running request ended ${(r.endedAt - sigterm).toFixed(0)} ms after SIGTERM`);
    await orch.exited;
    const exitMs = performance.now() - sigterm;
    t.diagnostic(`queued ended ${Math.max(...q.map((o) => o.endedAt - sigterm)).toFixed(0)} ms after SIGTERM; running: ${grpc.status[r.code]} after ${r.tokens} tokens, ${(r.endedAt - sigterm).toFixed(0)} ms; exit ${exitMs.toFixed(0)} ms (grace ${GRACE_MS})`);
    assert.ok(exitMs < GRACE_MS + 2500, `the orchestrator exited ${exitMs.toFixed(0)} ms after SIGTERM`);
  });
});
