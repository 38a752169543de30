// Reservations that match what a sequence will hold (issue 18: reserved
// bytes were ~4× held, so a shard refused 55 of 64 requests it could serve).
// For several request shapes and policies, one in-process orchestrator with
// no limit reads the request's reservation from the cache; a second one runs
// the same request under a memory limit of exactly that reservation. The
// engine refuses any append past its limit, so the request completes only if
// the reservation covers everything the sequence held at any moment; and
// the reservation must stay close to what it held at the end.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { create } from '@bufbuild/protobuf';

import { CacheSettingsSchema, CachePolicy } from '../../gen/smartkv/v1/common_pb.js';
import { GenerateRequestSchema } from '../../gen/smartkv/v1/generation_pb.js';
import { defaultModelDir } from '../../services/orchestrator/model/paths.js';
import { Orchestrator } from '../../services/orchestrator/orchestrator.js';
import { DEFAULTS, generateSpec } from '../../services/orchestrator/settings.js';
import type { JobOutcome } from '../../services/orchestrator/job.js';

const dir = mkdtempSync(join(tmpdir(), 'smartkv-reserve-'));

async function orchestrator(memoryLimitBytes: number): Promise<Orchestrator> {
  return Orchestrator.create({
    modelDir: defaultModelDir(),
    defaults: DEFAULTS,
    modelThreads: 1,
    local: { engine: { quant: 'symmetric', gamma: 0.9, mode: 'downgrade-only', masterDir: dir, rotateKv: true, threads: 1 }, memoryLimitBytes },
    log: () => {},
  });
}

interface Shape {
  name: string;
  prompt: string;
  maxTokens: number;
  policy: CachePolicy;
  budget?: number;
  maxRatio: number; // reserved / held at the end, at most
}

const SENTENCE = 'The old man said that the river had been high all spring, and the boats stayed in. ';
// Short enough for a loaded 2-core machine; the long-context bound is the same formula (plan-cost.ts).
const SHAPES: Shape[] = [
  // At 57 tokens the reservation is dominated by one partly filled block per
  // format and layer (plan-cost.ts reservationBytes: (layers + 1) × one block of
  // each format), which a plan may fill before the end; the ratio shrinks with
  // length. Since int4 and int2 blocks hold 2× and 4× the slots (the same code
  // bytes as an int8 block), those blocks are 2-4× larger than they were, and
  // the ratio here rose to 2.50. 3 still fails the ~4× over-reservation this
  // test was written for.
  { name: 'short, smartkv β 0.5', prompt: 'The old man said', maxTokens: 40, policy: CachePolicy.SMARTKV, budget: 0.5, maxRatio: 3 },
  { name: 'fp16', prompt: SENTENCE, maxTokens: 60, policy: CachePolicy.FP16, maxRatio: 2 },
];

async function run(orch: Orchestrator, s: Shape, onReserved?: (bytes: number) => void): Promise<JobOutcome> {
  const c = orch.context;
  const req = create(GenerateRequestSchema, { prompt: s.prompt, maxTokens: s.maxTokens, temperature: 0, cache: create(CacheSettingsSchema, { policy: s.policy, budget: s.budget }) });
  const spec = generateSpec(req, c.model.config, c.model.tokenizer, c.defaults);
  spec.stop = [];
  let seen = false;
  const job = orch.scheduler.submit(spec, {
    token: () => {
      if (seen || !onReserved) return;
      seen = true;
      void job.shard!.reservations().then((r) => onReserved(r.reservedBytes));
    },
  });
  return job.done;
}

describe('reservations match what a sequence holds', () => {
  after(() => rmSync(dir, { recursive: true, force: true }));

  for (const s of SHAPES)
    test(s.name, async (t) => {
      const free = await orchestrator(0);
      let reserved = 0;
      let unlimited: JobOutcome;
      try {
        unlimited = await run(free, s, (b) => (reserved = b));
      } finally {
        await free.close(1000);
      }
      assert.ok(reserved > 0, 'the reservation was read while the request ran');
      const held = unlimited.cache.bytes!.heldBytes;
      const limited = await orchestrator(reserved);
      try {
        const o = await run(limited, s); // rejects if the engine refused an append: the reservation was short
        assert.equal(o.generated.length, unlimited.generated.length);
      } finally {
        await limited.close(1000);
      }
      t.diagnostic(`${s.name}: reserved ${reserved} bytes, held ${held} at the end (${(reserved / held).toFixed(2)}×), ${unlimited.promptTokens} + ${unlimited.generated.length} tokens`);
      assert.ok(reserved <= s.maxRatio * held, `reserved ${reserved} is ${(reserved / held).toFixed(2)}× the ${held} bytes held`);
    });
});
