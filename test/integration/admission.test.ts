// Admission that cannot fail midway: under a small --memory-limit, concurrent
// long requests in both precision modes are either refused with
// RESOURCE_EXHAUSTED before their first token or complete; none fails after
// streaming started. The reversible ones keep master copies in a master tier
// whose directory is left empty (files unlinked at once) and is removed when
// the cache service stops.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';

import { CachePolicy, PrecisionMode } from '../../gen/smartkv/v1/common_pb.js';
import type { GenerateResponse, GenerationSummary } from '../../gen/smartkv/v1/generation_pb.js';
import { Cluster, ServiceProcess } from '../../services/launcher/cluster.js';
import { cacheStats, codeOf, collectLogs, eventually, generateRequest, SmartKvClient } from '../helpers/services.js';

// One smartkv β 0.4 request of 17 + 480 tokens reserves ~1.03 MB (plan-cost.ts:
// reservationBytes); 2.4 MB admits two of them at a time, not six.
const LIMIT = 2_400_000;

interface Outcome {
  tokens: number; // streamed before the end
  code: number; // 0: completed
  summary?: GenerationSummary;
}

function run(client: SmartKvClient, mode: PrecisionMode, seed: number): Promise<Outcome> {
  const req = generateRequest({ prompt: 'The old man said', maxTokens: 480, policy: CachePolicy.SMARTKV, budget: 0.4, mode, seed, temperature: 0.7 });
  return new Promise((resolve) => {
    const out: Outcome = { tokens: 0, code: -1 };
    const call = client.stream(req);
    call.on('data', (m: GenerateResponse) => {
      if (m.kind.case === 'token') out.tokens++;
      else if (m.kind.case === 'summary') out.summary = m.kind.value;
    });
    call.on('error', (e) => resolve({ ...out, code: codeOf(e) ?? -2 }));
    call.on('end', () => resolve({ ...out, code: 0 }));
  });
}

describe('admission under a memory limit', () => {
  const logs = collectLogs();
  const masterDir = mkdtempSync(join(tmpdir(), 'smartkv-admission-'));
  let cluster: Cluster;
  let client: SmartKvClient;

  before(async () => {
    cluster = await Cluster.start({ cacheShards: 1, log: logs.log, cacheArgs: ['--memory-limit', String(LIMIT), '--master-dir', join(masterDir, 'tier'), '--threads', '1'], orchestratorArgs: ['--threads', '1'] });
    client = new SmartKvClient(cluster.address);
  });

  after(async () => {
    client?.close();
    await cluster?.stop();
    rmSync(masterDir, { recursive: true, force: true });
  });

  test('concurrent long requests are refused up front or complete; none fails after its first token', async () => {
    const modes = [PrecisionMode.DOWNGRADE_ONLY, PrecisionMode.REVERSIBLE];
    const running = Promise.all(Array.from({ length: 6 }, (_, i) => run(client, modes[i % 2], i)));
    // While a reversible sequence lives, the cache service holds its tier files open (one per layer).
    const tier = join(masterDir, 'tier'), pid = cluster.caches[0].pid!;
    await eventually(async () => openFilesUnder(pid, tier), (n) => n >= 4, 60_000);
    const outcomes = await running;
    const done = outcomes.filter((o) => o.code === 0), refused = outcomes.filter((o) => o.code !== 0);
    for (const o of refused) {
      assert.equal(o.code, grpc.status.RESOURCE_EXHAUSTED, `a request failed with ${o.code} after ${o.tokens} tokens`);
      assert.equal(o.tokens, 0, 'refused before its first token');
    }
    assert.ok(done.length >= 2, `${done.length} completed`);
    assert.ok(refused.length >= 1, 'the limit binds: not all six fit at once');
    for (const o of done) {
      assert.equal(o.tokens, 480);
      const b = o.summary!.budget!;
      assert.ok(b.budgetMet, `β ${b.achievedBeta} ≤ 0.4 at ${17 + 480} tokens (binds from ${b.bindsFromTokens})`);
      assert.ok(b.achievedBeta <= 0.4, `β ${b.achievedBeta}`);
      assert.equal(b.mode === PrecisionMode.REVERSIBLE, b.masterBytes > 0n, 'master bytes exactly for reversible sequences');
    }
    assert.ok(done.some((o) => o.summary!.budget!.mode === PrecisionMode.REVERSIBLE), 'a reversible request completed');
    assert.deepEqual(readdirSync(tier), [], 'the master tier leaves no files in its directory');
    await eventually(() => cacheStats(cluster.caches[0].address), (s) => s.sequences === 0 && s.reservedBytes === 0 && s.heldBytes === 0, 5000);
    assert.equal(openFilesUnder(pid, tier), 0, 'freed sequences have closed their tier files');
  });

  test('the master tier directory the service made itself is removed when it stops', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'smartkv-tmp-'));
    const cache = new ServiceProcess('cache', 'own-tier', ['--port', '0', '--mode', 'reversible', '--threads', '1', '--plaintext'], { TMPDIR: tmp }, logs.log);
    try {
      await cache.start(60_000);
      const dir = join(tmp, `smartkv-master-${cache.pid}`);
      assert.ok(existsSync(dir), `${dir} while the service runs`);
      await cache.stop();
      assert.ok(!existsSync(dir), `${dir} removed on stop`);
    } finally {
      await cache.stop();
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});

/** Open files of process `pid` under `dir` (the master tier's, "… (deleted)" once unlinked). */
function openFilesUnder(pid: number, dir: string): number {
  let n = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith(dir + '/')) n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}
