// Shards found by DNS, as in Kubernetes (a headless Service): the orchestrator
// is pointed at a name that a DNS server run by this test resolves to cache
// services on distinct loopback addresses (127.0.0.2, .3, .4, one port). The
// test changes the records while the system runs: a shard added receives new
// sequences, a shard removed receives none while the others keep serving
// (and what it already held finishes), and a shard that dies while still
// listed fails only its own request and leaves placement by health check.
// Last, the orchestrator's drain as Kubernetes sees it.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';

import type { GenerateResponse, GenerationSummary } from '../../gen/smartkv/v1/generation_pb.js';
import { generate as cliGenerate } from '../../cli/generate.js';
import { Cluster, ServiceProcess } from '../../services/launcher/cluster.js';
import { checkHealth, waitHealthy } from '../../services/common/health-client.js';
import { TestDnsServer } from '../helpers/dns-server.js';
import { cacheStats, codeOf, collectLogs, eventually, generateRequest, SmartKvClient } from '../helpers/services.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const NAME = 'shards.smartkv.test';
const PROMPT = 'The old man said';
const IPS = ['127.0.0.2', '127.0.0.3', '127.0.0.4'];

/** A port that is free on every address we use (the shards share one, as pods behind a headless Service do). */
async function freePort(): Promise<number> {
  for (let tries = 0; tries < 20; tries++) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = createServer();
      s.once('error', reject);
      s.listen(0, IPS[0], () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    const free = await Promise.all(
      IPS.map(
        (host) =>
          new Promise<boolean>((resolve) => {
            const s = createServer();
            s.once('error', () => resolve(false));
            s.listen(port, host, () => s.close(() => resolve(true)));
          }),
      ),
    );
    if (free.every(Boolean)) return port;
  }
  throw new Error('no port free on all of ' + IPS.join(', '));
}

describe('cache shards found by DNS, joining and leaving at run time', () => {
  const logs = collectLogs();
  let dns: TestDnsServer;
  let port: number;
  let cluster: Cluster; // the allocator and the orchestrator, as `npm start -- --cache-dns …` starts them
  let caches: ServiceProcess[] = [];
  let client: SmartKvClient;
  const addr = (i: number) => `${IPS[i]}:${port}`;

  const listed = async () => (await client.info()).cacheShards.slice().sort();
  /** n concurrent short generations; their summaries. */
  const burst = async (n: number, maxTokens = 12): Promise<GenerationSummary[]> =>
    (await Promise.all(Array.from({ length: n }, (_, i) => client.generate(generateRequest({ prompt: `${PROMPT} ${i}`, maxTokens, temperature: 0.8, seed: i }))))).map(
      (r) => r.summary,
    );
  const where = (s: GenerationSummary[]) => [...new Set(s.map((x) => x.shardAddress))].sort();

  before(async () => {
    dns = await TestDnsServer.start();
    port = await freePort();
    caches = IPS.map((ip, i) => new ServiceProcess('cache', `cache-${i}`, ['--host', ip, '--port', String(port), '--threads', '1', '--plaintext'], undefined, logs.log));
    await Promise.all(caches.map((p) => p.start(60_000)));
    await Promise.all(caches.map((c) => waitHealthy(c.address, 60_000)));
    dns.set(NAME, [IPS[0], IPS[1]]); // the third shard runs but is not listed yet
    cluster = await Cluster.start({
      cacheShards: 0,
      log: logs.log,
      orchestratorArgs: ['--cache-dns', `${NAME}:${port}`, '--cache-dns-server', dns.address, '--cache-resolve-ms', '200', '--cache-health-ms', '200', '--threads', '1'],
    });
    client = new SmartKvClient(cluster.address);
  });

  after(async () => {
    client?.close();
    await cluster?.stop();
    await Promise.all(caches.map((p) => p.stop()));
    await dns?.close();
  });

  test('the orchestrator spreads sequences over the shards the name resolves to', async () => {
    assert.deepEqual(await listed(), [addr(0), addr(1)]);
    const s = await burst(4);
    assert.deepEqual(where(s), [addr(0), addr(1)]);
    for (const a of [addr(0), addr(1)]) assert.equal(s.filter((x) => x.shardAddress === a).length, 2, 'two each: placement by bytes reserved');
    assert.ok(dns.queries > 0);
    // `smartkv generate --json` names the cache service that held the sequence.
    let json = '';
    const code = await cliGenerate([PROMPT, '--server', cluster.address, '--max-tokens', '4', '--json'], () => {}, (t) => (json += t));
    assert.equal(code, 0, json);
    const summary = JSON.parse(json.trim());
    assert.ok([addr(0), addr(1)].includes(summary.shard), `shard ${summary.shard}`);
    assert.ok([0, 1].includes(summary.shardIndex), `shardIndex ${summary.shardIndex}`);
    assert.equal(summary.generatedTokens, 4);
  });

  test('a shard added to the name at run time receives new sequences', async () => {
    dns.set(NAME, IPS);
    await eventually(listed, (l) => l.length === 3, 10_000);
    const s = await burst(3);
    assert.deepEqual(where(s), [addr(0), addr(1), addr(2)]);
    const joined = s.find((x) => x.shardAddress === addr(2))!;
    assert.equal(joined.shard, 2, 'numbered in the order the shards were first seen');
    assert.equal(joined.generatedTokens, 12);
  });

  test('a shard removed from the name takes no new sequences; what it holds finishes, the others keep serving', async () => {
    // Three long generations, one per shard (each reserves the same bytes).
    const started = [0, 0, 0];
    const long = [0, 1, 2].map(
      (i) =>
        new Promise<{ summary?: GenerationSummary; code?: number; at: number }>((resolve) => {
          const call = client.stream(generateRequest({ prompt: `${PROMPT}, ${i}`, maxTokens: 400, temperature: 0.8, seed: 10 + i }));
          call.on('data', (m: GenerateResponse) => {
            if (m.kind.case === 'token') started[i]++;
            else if (m.kind.case === 'summary') resolve({ summary: m.kind.value, at: Date.now() });
          });
          call.on('error', (e) => resolve({ code: codeOf(e), at: Date.now() }));
        }),
    );
    await eventually(async () => started, (s) => s.every((n) => n >= 2), 30_000);
    const held = await Promise.all(IPS.map((_, i) => cacheStats(addr(i))));
    assert.deepEqual(held.map((h) => h.sequences), [1, 1, 1]);

    dns.set(NAME, [IPS[0], IPS[2]]);
    await eventually(listed, (l) => l.length === 2, 10_000);
    const removedAt = Date.now();
    assert.deepEqual(await listed(), [addr(0), addr(2)]);
    const s = await burst(4);
    assert.deepEqual(where(s), [addr(0), addr(2)]);

    const done = await Promise.all(long);
    for (const d of done) assert.equal(d.code, undefined, `a long generation failed with code ${d.code}`);
    assert.deepEqual(where(done.map((d) => d.summary!)), [addr(0), addr(1), addr(2)]);
    const onRemoved = done.find((d) => d.summary!.shardAddress === addr(1))!;
    assert.ok(onRemoved.at > removedAt, 'the sequence on the removed shard was still running when the shard left, and finished');
    assert.ok(caches[1].running, 'the removed shard was not stopped, only unlisted');
    assert.equal((await cacheStats(addr(1))).sequences, 0);
  });

  test('npm start -- --cache-dns NAME:PORT: the launcher starts no cache of its own and serves from the shards the name lists', async () => {
    const launcher = spawn(process.execPath, [join(ROOT, 'dist', 'services', 'launcher', 'main.js'), '--port', '0', '--cache-dns', `${NAME}:${port}`, '--cache-dns-server', dns.address, '--plaintext'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => launcher.on('exit', (code) => resolve(code)));
    let out = '';
    launcher.stderr.on('data', (b) => logs.lines.push(`launcher: ${b}`));
    try {
      const address = await new Promise<string>((resolve, reject) => {
        launcher.stdout.on('data', (b) => {
          out += b;
          const m = /SmartKV is serving on (\S+)/.exec(out);
          if (m) resolve(m[1]);
        });
        exited.then((c) => reject(new Error(`the launcher exited (${c}): ${out}`)));
      });
      assert.match(out, new RegExp(`cache services: DNS ${NAME}:${port};`), 'no local cache service');
      const other = new SmartKvClient(address);
      try {
        const r = await other.generate(generateRequest({ prompt: PROMPT, maxTokens: 6 }));
        assert.ok([addr(0), addr(2)].includes(r.summary.shardAddress), r.summary.shardAddress);
      } finally {
        other.close();
      }
    } finally {
      launcher.kill('SIGTERM');
    }
    assert.equal(await exited, 0, 'the launcher stops everything it started and exits 0');
  });

  test('a shard that dies while listed fails only its request and leaves placement by health check', async () => {
    // Listed: .2 and .4. One long generation on each, then .4 is killed.
    const seen = [0, 0];
    const res = [0, 1].map(
      (i) =>
        new Promise<{ address?: string; code?: number }>((resolve) => {
          const call = client.stream(generateRequest({ prompt: `${PROMPT}; ${i}`, maxTokens: 400, temperature: 0.8, seed: 20 + i }));
          call.on('data', (m: GenerateResponse) => {
            if (m.kind.case === 'token') seen[i]++;
            else if (m.kind.case === 'summary') resolve({ address: m.kind.value.shardAddress });
          });
          call.on('error', (e) => resolve({ code: codeOf(e) }));
        }),
    );
    await eventually(async () => seen, (s) => s.every((n) => n >= 2), 30_000);
    caches[2].kill('SIGKILL');
    const out = await Promise.all(res);
    assert.deepEqual(out.map((o) => o.code ?? o.address).sort(), [addr(0), grpc.status.UNAVAILABLE].sort());
    // Still in DNS (the records are .2 and .4), but failing its health check: out of placement.
    await eventually(listed, (l) => l.length === 1, 10_000);
    const s = await burst(2);
    assert.deepEqual(where(s), [addr(0)]);
  });

  test('on SIGTERM the orchestrator reports NOT_SERVING at once (probes see the drain) and finishes its running request', async () => {
    let seen = 0;
    const res = new Promise<{ summary?: GenerationSummary; code?: number }>((resolve) => {
      const call = client.stream(generateRequest({ prompt: PROMPT, maxTokens: 400, temperature: 0.8, seed: 30 }));
      call.on('data', (m: GenerateResponse) => {
        if (m.kind.case === 'token') seen++;
        else if (m.kind.case === 'summary') resolve({ summary: m.kind.value });
      });
      call.on('error', (e) => resolve({ code: codeOf(e) }));
    });
    await eventually(async () => seen, (n) => n >= 2, 30_000);
    cluster.orchestrator.kill('SIGTERM');
    const atTerm = seen;
    await eventually(() => checkHealth(cluster.address), (h) => h === 'NOT_SERVING', 5_000);
    const r = await res;
    assert.equal(r.code, undefined, `the running request failed with ${r.code}`);
    assert.ok(r.summary!.generatedTokens > atTerm, `it went on generating while the orchestrator drained (${atTerm} → ${r.summary!.generatedTokens})`);
    await cluster.orchestrator.exited; // (by the re-raised SIGTERM: NestJS's shutdown hooks end that way)
  });
});
