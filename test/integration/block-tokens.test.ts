// The cache service's --block-tokens, against real processes: a shard started
// with 64-token blocks reports them in Stats, the orchestrator plans and
// applies reallocations over them, and a size the engine cannot hold stops
// the cache service, an in-process orchestrator or `npm start` with a usage error.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { CachePolicy } from '../../gen/smartkv/v1/common_pb.js';
import { FinishReason } from '../../gen/smartkv/v1/generation_pb.js';
import { Cluster } from '../../services/launcher/cluster.js';
import { GrpcCacheShard } from '../../services/orchestrator/cache-client.js';
import { collectLogs, generateRequest, SmartKvClient } from '../helpers/services.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const PROMPT = 'The old man said that the sea was calm and the boat was ready. '.repeat(5);

describe('cache service --block-tokens', () => {
  const logs = collectLogs();
  let cluster: Cluster;
  let client: SmartKvClient;

  before(async () => {
    cluster = await Cluster.start({ cacheShards: 1, log: logs.log, orchestratorArgs: ['--threads', '1'], cacheArgs: ['--threads', '1', '--block-tokens', '64'] });
    client = new SmartKvClient(cluster.address);
  });

  after(async () => {
    client?.close();
    await cluster?.stop();
  });

  test('the shard reports its block size and a budgeted request keeps its budget', async () => {
    const shard = new GrpcCacheShard(cluster.caches[0].address, '');
    try {
      assert.equal((await shard.stats(undefined, 5000)).blockTokens, 64);
    } finally {
      shard.close();
    }
    const r = await client.generate(generateRequest({ prompt: PROMPT, maxTokens: 24, policy: CachePolicy.SMARTKV, budget: 0.4 }));
    const s = r.summary;
    assert.equal(s.generatedTokens, 24);
    assert.equal(s.finishReason, FinishReason.LENGTH);
    assert.ok(s.reallocations >= 1, `reallocations ${s.reallocations}`);
    // The plans (priced in 64-token blocks, the shard's) were applied: fewer bytes than FP16.
    assert.ok(s.achievedBeta > 0 && s.achievedBeta < 1, `achieved β ${s.achievedBeta}`);
    assert.ok((s.histogram?.bits2 ?? 0n) + (s.histogram?.bits4 ?? 0n) > 0n, 'some tokens below 8 bits');
  });

  test('a block size the engine cannot hold is a usage error at start (cache service, in-process orchestrator, npm start)', () => {
    const mains: [string, string[]][] = [
      ['cache', ['--port', '0']],
      ['orchestrator', ['--in-process', '--port', '0']],
      ['launcher', ['--port', '0']],
    ];
    for (const [service, args] of mains)
      for (const bad of ['40', '8', '2048']) {
        const r = spawnSync(process.execPath, [join(root, 'dist', 'services', service, 'main.js'), ...args, '--block-tokens', bad], { encoding: 'utf8', timeout: 60_000 });
        assert.equal(r.status, 2, `${service} ${bad}: ${r.stderr}`);
        assert.match(r.stderr, new RegExp(`--block-tokens must be a multiple of 16 from 16 to 1024, got ${bad}`), service);
      }
  });
});
