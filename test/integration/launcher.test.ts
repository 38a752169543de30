// The launcher (`npm start`) stops everything when its own parent goes away
// (issue 18: SIGTERM to the `npm start` process left the launcher and every
// service serving). A stand-in parent starts the launcher as npm does — a
// plain child, not detached — and is then SIGKILLed: the launcher and every
// service it started must exit and stop answering. By default the launcher
// runs the services under mutual TLS with a throwaway CA: a client without a
// certificate is refused, one with it is served, and the CA's directory is
// removed when the launcher stops.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { test } from 'node:test';

import { existsSync } from 'node:fs';

import { checkHealth } from '../../services/common/health-client.js';
import { PUBLIC_SERVICE, readTlsDir, useClientSecurity } from '../../services/common/credentials.js';

const LAUNCHER = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'services', 'launcher', 'main.js');

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

test('the launcher and its services stop when the launcher\'s parent dies', async (t) => {
  // The parent prints the launcher's pid; the launcher writes to our pipes directly, as to npm's terminal.
  const parentSrc = `const c = require('node:child_process').spawn(process.execPath, ${JSON.stringify([LAUNCHER, '--port', '0'])}, { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, NODE_TEST_CONTEXT: '' } });
    console.log('LAUNCHER ' + c.pid); setInterval(() => {}, 1e6);`;
  const parent = spawn(process.execPath, ['-e', parentSrc], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  createInterface({ input: parent.stderr! }).on('line', (l) => lines.push(l));
  let launcherPid = 0;
  let tlsDir = '';
  const addresses: string[] = [];
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the launcher did not start:\n' + lines.join('\n'))), 90_000);
      createInterface({ input: parent.stdout! }).on('line', (l) => {
        const pid = /^LAUNCHER (\d+)$/.exec(l);
        if (pid) launcherPid = Number(pid[1]);
        const serving = /serving on (\S+)/.exec(l);
        if (serving) addresses.push(serving[1]);
        const tls = /mutual TLS \(a throwaway CA in (\S+), removed on stop\)/.exec(l);
        if (tls) tlsDir = tls[1];
        const others = /cache services: (\S+); allocator: (\S+)/.exec(l);
        if (others) addresses.push(others[1], others[2]);
        if (/Ctrl-C stops everything/.test(l)) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    assert.ok(tlsDir && existsSync(tlsDir), 'the launcher reports its throwaway CA');
    const [orchestrator, ...internal] = addresses;
    assert.equal(await checkHealth(orchestrator, '', 2000, PUBLIC_SERVICE), 'SERVING', orchestrator);
    // Without a client certificate the cache and the allocator do not answer; with one they do.
    for (const a of internal) assert.match(await checkHealth(a, '', 2000), /^error: /, `${a} answered a client without a certificate`);
    useClientSecurity({ internal: readTlsDir(tlsDir) });
    for (const a of internal) assert.equal(await checkHealth(a), 'SERVING', a);
    const t0 = performance.now();
    parent.kill('SIGKILL');
    // Watched every 0.5 s; then the orchestrator drains (nothing running) and the others stop.
    while (alive(launcherPid) && performance.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 100));
    const ms = performance.now() - t0;
    t.diagnostic(`launcher exited ${ms.toFixed(0)} ms after its parent was killed`);
    assert.ok(!alive(launcherPid), 'the launcher is still running 20 s after its parent died');
    for (const a of addresses) assert.match(await checkHealth(a, '', 1000), /^error: /, `${a} still answers\n${lines.join('\n')}`);
    assert.ok(!existsSync(tlsDir), `the throwaway CA in ${tlsDir} was left behind`);
  } finally {
    parent.kill('SIGKILL');
    if (launcherPid && alive(launcherPid)) process.kill(launcherPid, 'SIGTERM');
  }
});
