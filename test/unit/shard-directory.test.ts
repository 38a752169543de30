// The shard directory without processes: a fake DNS answer, fake health
// probes and fake shards decide what is eligible; then node:dns's Resolver
// against the test DNS server (the lookup the orchestrator uses).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import type { ShardStats } from '../../services/cache/cache-api.js';
import { EMPTY_BYTES } from '../../services/cache/cache-api.js';
import { dnsLookup, ShardDirectory, type ConnectedShard } from '../../services/orchestrator/shard-directory.js';
import { TestDnsServer } from '../helpers/dns-server.js';

function stats(blockTokens: number): ShardStats {
  return { bytes: EMPTY_BYTES, sequences: 0, reservedBytes: 0, memoryLimitBytes: 0, backend: 'cpu', gamma: 0.9, mode: 'downgrade-only', masterDir: '', rotateKv: true, blockTokens };
}

/** A world the test controls: what DNS answers, which shards are healthy, each shard's block size. */
function world() {
  const w = {
    dns: [] as string[] | null, // null: the lookup fails (timeout)
    health: new Map<string, string>(),
    block: new Map<string, number>(),
    closed: [] as string[],
    logs: [] as string[],
  };
  const connect = (address: string): ConnectedShard =>
    ({
      stats: async () => {
        if (w.health.get(address) !== 'SERVING') throw new Error('unavailable');
        return stats(w.block.get(address) ?? 32);
      },
      close: () => w.closed.push(address),
    }) as unknown as ConnectedShard;
  const make = (o: { addresses?: string[]; dns?: boolean }) =>
    new ShardDirectory({
      addresses: o.addresses,
      dns: o.dns ? { host: 'cache.test', port: 7000 } : undefined,
      resolveEveryMs: 3_600_000, // the test calls refresh() itself
      healthEveryMs: 3_600_000,
      connect,
      probe: (a) => ({ check: async () => w.health.get(a) ?? 'error: connection refused', close: () => {} }),
      lookup: async () => {
        if (w.dns === null) throw new Error('ETIMEOUT queryA');
        return w.dns;
      },
      log: (l) => w.logs.push(l),
    });
  return { w, make };
}

const addrs = (d: ShardDirectory) => d.eligible().map((h) => `${h.index}:${h.address}`);

describe('ShardDirectory', () => {
  test('shards join and leave with the DNS answer and keep their numbers', async () => {
    const { w, make } = world();
    for (const a of ['10.0.0.1:7000', '10.0.0.2:7000', '10.0.0.3:7000', '10.9.9.9:7000']) w.health.set(a, 'SERVING');
    w.dns = ['10.0.0.1', '10.0.0.2'];
    const d = make({ addresses: ['10.9.9.9:7000'], dns: true });
    await d.start();
    await d.firstStats(1000);
    assert.deepEqual(addrs(d), ['0:10.9.9.9:7000', '1:10.0.0.1:7000', '2:10.0.0.2:7000']);

    w.dns = ['10.0.0.2', '10.0.0.3']; // .1 leaves, .3 joins
    await d.refresh();
    assert.deepEqual(addrs(d), ['0:10.9.9.9:7000', '2:10.0.0.2:7000', '3:10.0.0.3:7000']);

    w.dns = null; // a failed lookup is no answer: keep what we have (and say so once)
    await d.refresh();
    await d.refresh();
    assert.deepEqual(addrs(d), ['0:10.9.9.9:7000', '2:10.0.0.2:7000', '3:10.0.0.3:7000']);
    assert.equal(w.logs.filter((l) => /resolving cache\.test failed \(ETIMEOUT/.test(l)).length, 1, w.logs.join('\n'));

    w.dns = []; // an answer with no addresses: only the fixed shard stays
    await d.refresh();
    assert.ok(w.logs.some((l) => /resolving cache\.test works again/.test(l)));
    assert.deepEqual(addrs(d), ['0:10.9.9.9:7000']);

    w.dns = ['10.0.0.1']; // back, with its old number
    await d.refresh();
    assert.deepEqual(addrs(d), ['0:10.9.9.9:7000', '1:10.0.0.1:7000']);
    assert.ok(w.logs.some((l) => /10\.0\.0\.1:7000 left/.test(l)), w.logs.join('\n'));
    d.close();
    assert.equal(w.closed.length, 4, 'close() closes every client');
  });

  test('a shard that fails its health check takes no new sequences until it serves again', async () => {
    const { w, make } = world();
    w.health.set('a:1', 'SERVING');
    w.health.set('b:1', 'SERVING');
    const d = make({ addresses: ['a:1', 'b:1'] });
    await d.start();
    await d.firstStats(1000);
    assert.deepEqual(addrs(d), ['0:a:1', '1:b:1']);
    w.health.set('b:1', 'NOT_SERVING');
    await d.refresh();
    assert.deepEqual(addrs(d), ['0:a:1']);
    w.health.delete('b:1'); // dead: the probe's call fails
    await d.refresh();
    assert.deepEqual(addrs(d), ['0:a:1']);
    w.health.set('b:1', 'SERVING');
    await d.refresh();
    assert.deepEqual(addrs(d), ['0:a:1', '1:b:1']);
    d.close();
  });

  test('a shard whose engine settings differ from the first never becomes eligible', async () => {
    const { w, make } = world();
    w.health.set('10.0.0.1:7000', 'SERVING');
    w.dns = ['10.0.0.1'];
    const d = make({ dns: true });
    await d.start();
    assert.equal((await d.firstStats(1000)).blockTokens, 32);
    w.health.set('10.0.0.2:7000', 'SERVING');
    w.block.set('10.0.0.2:7000', 64);
    w.dns = ['10.0.0.1', '10.0.0.2'];
    await d.refresh();
    await d.refresh();
    assert.deepEqual(addrs(d), ['0:10.0.0.1:7000']);
    assert.ok(w.logs.some((l) => /10\.0\.0\.2:7000 runs block 64/.test(l)), w.logs.join('\n'));
    d.close();
  });

  test('nothing answers: firstStats fails after its timeout naming what it waited for', async () => {
    const { make } = world();
    const d = make({ addresses: ['x:1'], dns: true });
    await d.start();
    await assert.rejects(d.firstStats(300), /no cache shard answered within 300 ms: x:1, DNS cache\.test:7000/);
    assert.deepEqual(d.eligible(), []);
    d.close();
  });
});

describe('dnsLookup through node:dns against a DNS server the test runs', () => {
  let dns: TestDnsServer;
  before(async () => {
    dns = await TestDnsServer.start();
  });
  after(() => dns.close());

  test('A records as they change; NXDOMAIN is an empty answer; an unreachable server is no answer', async () => {
    const lookup = dnsLookup([dns.address]);
    dns.set('shards.smartkv.test', ['127.0.0.2', '127.0.0.3']);
    assert.deepEqual((await lookup('shards.smartkv.test'))?.sort(), ['127.0.0.2', '127.0.0.3']);
    dns.set('shards.smartkv.test', ['127.0.0.3', '127.0.0.4', '127.0.0.5']);
    assert.deepEqual((await lookup('SHARDS.smartkv.test.'))?.sort(), ['127.0.0.3', '127.0.0.4', '127.0.0.5']);
    dns.set('shards.smartkv.test', []);
    assert.deepEqual(await lookup('shards.smartkv.test'), []);
    assert.deepEqual(await lookup('unknown.smartkv.test'), []);
    assert.deepEqual(await lookup('127.0.0.9'), ['127.0.0.9'], 'an IP is its own answer');

    const silent = await TestDnsServer.start();
    const port = silent.address.split(':')[1];
    await silent.close(); // nothing listens there now
    await assert.rejects(dnsLookup([`127.0.0.1:${port}`])('shards.smartkv.test'), /ECONNREFUSED|ETIMEOUT|timeout/i);
  });
});
