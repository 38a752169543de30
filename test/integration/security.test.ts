// Who may call (issue 18), against real processes: the services under mutual
// TLS with a throwaway CA (as npm start runs them) serve the orchestrator and
// refuse a cache or allocator client without the CA's certificate; the public
// API behind a bearer token refuses calls without it (UNAUTHENTICATED) and
// serves those with it; one client may have at most --max-streams-per-client
// requests in flight, and Info reports the limit.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';

import { Cluster } from '../../services/launcher/cluster.js';
import { useClientSecurity } from '../../services/common/credentials.js';
import { checkHealth } from '../../services/common/health-client.js';
import { codeOf, collectLogs, generateRequest, SmartKvClient } from '../helpers/services.js';
import { RawClient } from '../helpers/raw-client.js';

const TOKEN = 'a-test-token-0123456789abcdef';

describe('mutual TLS between the services, a token on the public API, streams per client', () => {
  const logs = collectLogs();
  const dir = mkdtempSync(join(tmpdir(), 'smartkv-security-'));
  let cluster: Cluster;

  before(async () => {
    writeFileSync(join(dir, 'token'), TOKEN + '\n');
    cluster = await Cluster.start({
      cacheShards: 1,
      tls: 'generate',
      log: logs.log,
      cacheArgs: ['--threads', '1'],
      orchestratorArgs: ['--threads', '1', '--api-token-file', join(dir, 'token'), '--max-streams-per-client', '2'],
    });
  });

  after(async () => {
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('a caller without the CA\'s certificate cannot reach the cache or the allocator', async () => {
    for (const p of [cluster.caches[0], cluster.allocator]) {
      const raw = new RawClient(p.address); // plaintext, no certificate
      const r = await raw.unary('/smartkv.v1.CacheService/Stats', Buffer.alloc(0), new grpc.Metadata(), 3000);
      raw.close();
      assert.equal(r.code, grpc.status.UNAVAILABLE, `${p.name}: ${r.details}`);
    }
    assert.equal(await checkHealth(cluster.caches[0].address), 'SERVING', 'with the certificate (this process uses the cluster\'s)');
  });

  test('the public API needs the bearer token; with it the system serves over mTLS', async () => {
    const anonymous = new SmartKvClient(cluster.address);
    await assert.rejects(anonymous.info(), (e) => codeOf(e) === grpc.status.UNAUTHENTICATED);
    anonymous.close();
    useClientSecurity({ token: TOKEN });
    const client = new SmartKvClient(cluster.address);
    try {
      const info = await client.info();
      assert.equal(info.limits?.maxStreamsPerClient, 2);
      const out = await client.generate(generateRequest({ prompt: 'The old man said', maxTokens: 4 }));
      assert.equal(out.ids.length, 4);
    } finally {
      client.close();
      useClientSecurity({ token: undefined });
    }
  });

  test('one client may have --max-streams-per-client requests in flight; one more is refused at once', async () => {
    useClientSecurity({ token: TOKEN });
    const client = new SmartKvClient(cluster.address);
    try {
      const long = [1, 2].map((seed) => client.generate(generateRequest({ prompt: 'The old man said', maxTokens: 200, temperature: 0.8, seed })));
      await new Promise((r) => setTimeout(r, 300));
      await assert.rejects(client.generate(generateRequest({ prompt: 'x', maxTokens: 2 })), (e) => {
        assert.equal(codeOf(e), grpc.status.RESOURCE_EXHAUSTED);
        assert.match((e as grpc.ServiceError).details, /max_streams_per_client/);
        return true;
      });
      await Promise.all(long);
      // Ended: the client's places are free again.
      assert.equal((await client.generate(generateRequest({ prompt: 'x', maxTokens: 2 }))).ids.length, 2);
    } finally {
      client.close();
      useClientSecurity({ token: undefined });
    }
  });
});
