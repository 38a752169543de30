// SIGTERM's drain (issue 18): queued requests end UNAVAILABLE at once, and
// when the grace time is over the running ones end UNAVAILABLE then, not when
// the step in progress ends — which a stuck shard can put off for its
// deadline and more (the orchestrator exited 6.8 s after SIGTERM with a 3 s
// grace). The scheduler runs the real model over an in-process cache whose
// attends the test can hold; the drain must end while one is held.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { create } from '@bufbuild/protobuf';

import { GenerateRequestSchema } from '../../gen/smartkv/v1/generation_pb.js';
import { CacheCore } from '../../services/cache/cache-core.js';
import type { CacheShard } from '../../services/cache/cache-api.js';
import { RpcError } from '../../services/common/rpc.js';
import { LocalAllocator } from '../../services/orchestrator/allocator-client.js';
import { Model } from '../../services/orchestrator/model/model.js';
import { defaultModelDir } from '../../services/orchestrator/model/paths.js';
import { Scheduler } from '../../services/orchestrator/scheduler.js';
import { DEFAULTS, generateSpec } from '../../services/orchestrator/settings.js';
import { FixedShards } from '../../services/orchestrator/shard-directory.js';

const dir = mkdtempSync(join(tmpdir(), 'smartkv-drain-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('drain: queued requests end at once, running ones at the grace time while a step is stuck', async () => {
  const model = Model.load(defaultModelDir(), { threads: 1 });
  const c = model.config;
  const core = new CacheCore({ quant: 'symmetric', gamma: 0.9, mode: 'downgrade-only', masterDir: dir, rotateKv: true, threads: 1, layers: c.layers, qHeads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim }, 0);
  // Attends wait while `held` is pending (a shard that stopped answering).
  let held: Promise<void> = Promise.resolve();
  let release = () => undefined as void;
  let attendsHeld = 0;
  const shard = new Proxy(core, {
    get(target, key) {
      if (key === 'attend')
        return async (layer: number, items: Parameters<CacheShard['attend']>[1]) => {
          const h = held;
          attendsHeld++;
          await h;
          return target.attend(layer, items);
        };
      const v = Reflect.get(target, key);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  const defaults = { ...DEFAULTS, maxBatch: 1 }; // the second request waits in the queue
  const scheduler = new Scheduler({ model, shards: new FixedShards([{ shard, address: 'held', index: 0 }]), allocator: new LocalAllocator(), defaults, blockTokens: (await core.stats()).blockTokens, log: () => undefined });
  const spec = () => {
    const s = generateSpec(create(GenerateRequestSchema, { prompt: 'The old man said', maxTokens: 400, temperature: 0 }), c, model.tokenizer, defaults);
    s.stop = [];
    return s;
  };
  let firstToken!: () => void;
  const started = new Promise<void>((r) => (firstToken = r));
  const running = scheduler.submit(spec(), { token: () => firstToken() });
  const queued = scheduler.submit(spec(), {});
  const outcome = (p: Promise<unknown>) => p.then(() => null, (e: RpcError) => e);
  const runningEnd = outcome(running.done), queuedEnd = outcome(queued.done);
  try {
    await started;
    held = new Promise<void>((r) => (release = r));
    const before = attendsHeld;
    while (attendsHeld === before) await new Promise((r) => setTimeout(r, 10)); // a step is stuck now
    let queuedSettled = false;
    void queuedEnd.then(() => (queuedSettled = true));
    const drained = scheduler.drain(300);
    await new Promise((r) => setImmediate(r));
    assert.ok(queuedSettled, 'the queued request ended as the drain began');
    const q = await queuedEnd;
    assert.equal(q?.code, grpc.status.UNAVAILABLE);
    assert.match(q!.message, /shutting down/);
    // Still stuck: the old drain waited for this step to end, and for its frees.
    const r = await runningEnd;
    assert.equal(r?.code, grpc.status.UNAVAILABLE, 'the running request ended while its step was stuck');
    assert.match(r!.message, /grace 300 ms/);
    const stuck = Symbol('stuck');
    const first = await Promise.race([drained.then(() => 'drained'), new Promise((res) => setTimeout(() => res(stuck), 10_000))]);
    assert.equal(first, 'drained', 'the drain ended while an attend was still held');
  } finally {
    release();
  }
  // Let go: the step ends and the loop frees what the ended request held.
  const until = Date.now() + 20_000;
  while ((await core.stats()).sequences > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  assert.equal((await core.stats()).sequences, 0, 'the ended request\'s sequence was freed once the step ended');
  await core.close();
});
