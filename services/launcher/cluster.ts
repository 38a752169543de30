// Starts SmartKV as separate processes on loopback — the allocator, one or
// more cache services, then the orchestrator pointed at them — waits until
// each reports SERVING on gRPC health, and stops them in reverse order.
// Used by `npm start` and by the integration tests.
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

import { waitHealthy } from '../common/health-client.js';
import { generateLocalTls, PUBLIC_SERVICE, removeLocalTls, useClientSecurity, type ApiTls, type TlsMaterial } from '../common/credentials.js';

const here = dirname(fileURLToPath(import.meta.url)); // dist/services/launcher
const MAIN = {
  allocator: join(here, '..', 'allocator', 'main.js'),
  cache: join(here, '..', 'cache', 'main.js'),
  orchestrator: join(here, '..', 'orchestrator', 'main.js'),
};

export type Role = keyof typeof MAIN;

export interface ClusterOptions {
  host?: string;
  port?: number; // the orchestrator's (0: any)
  cacheShards?: number; // local cache services (0: the orchestratorArgs find them, e.g. --cache-dns)
  model?: string;
  cacheArgs?: string[]; // extra options for every cache service
  allocatorArgs?: string[];
  orchestratorArgs?: string[];
  env?: NodeJS.ProcessEnv;
  /** Between the services: mutual TLS with these certificates, or with a
   * throwaway CA made now ('generate', removed on stop); plaintext (each
   * service gets --plaintext) when absent. This process's own calls (health
   * checks, clients it makes) use the same. */
  tls?: TlsMaterial | 'generate' | null;
  /** The public API over TLS or mutual TLS with the same certificate (default off). */
  apiTls?: ApiTls;
  /** Where the processes' stderr goes (default: this process's stderr). */
  log?: (role: string, line: string) => void;
  startTimeoutMs?: number;
}

export class ServiceProcess {
  address = '';
  exited: Promise<number | null>;
  private child: ChildProcess;

  constructor(
    readonly role: Role,
    readonly name: string,
    readonly args: string[],
    private readonly env: NodeJS.ProcessEnv | undefined,
    private readonly log: (role: string, line: string) => void,
  ) {
    this.child = null as unknown as ChildProcess;
    this.exited = Promise.resolve(null);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Spawns the process and resolves with its address once it prints READY. */
  start(timeoutMs: number): Promise<string> {
    // Its own process group: Ctrl-C reaches the launcher only, which stops
    // the services in order. SMARTKV_PARENT_PID makes an orphan exit.
    const child = spawn(process.execPath, [MAIN[this.role], ...this.args], {
      // NODE_TEST_CONTEXT (set when the launcher is a node:test file) would make
      // the child a test-runner child, which skips the SIGTERM shutdown hooks.
      env: { ...process.env, ...this.env, NODE_TEST_CONTEXT: undefined, SMARTKV_PARENT_PID: String(process.pid) },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    this.child = child;
    this.exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
    createInterface({ input: child.stderr! }).on('line', (l) => this.log(this.name, l));
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name} did not start within ${timeoutMs} ms`)), timeoutMs);
      createInterface({ input: child.stdout! }).on('line', (l) => {
        const m = /^READY smartkv-\S+ (\S+)$/.exec(l);
        if (m) {
          clearTimeout(timer);
          this.address = m[1];
          resolve(m[1]);
        } else this.log(this.name, l);
      });
      child.on('exit', (code, sig) => {
        clearTimeout(timer);
        reject(new Error(`${this.name} exited (${sig ?? code}) before it was ready`));
      });
    });
  }

  /** SIGTERM, then SIGKILL after killAfterMs. */
  async stop(killAfterMs = 15_000): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), killAfterMs);
    await this.exited;
    clearTimeout(timer);
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.child.kill(signal);
  }
}

export class Cluster {
  private constructor(
    readonly allocator: ServiceProcess,
    readonly caches: ServiceProcess[],
    readonly orchestrator: ServiceProcess,
    private readonly timeoutMs: number,
    readonly tls: TlsMaterial | null,
    private readonly ownTls: boolean, // made here: removed on stop
  ) {}

  get address(): string {
    return this.orchestrator.address;
  }

  static async start(o: ClusterOptions = {}): Promise<Cluster> {
    const host = o.host ?? '127.0.0.1';
    const log = o.log ?? ((name, line) => process.stderr.write(`${line.startsWith('[') ? '' : `[${name}] `}${line}\n`));
    const timeoutMs = o.startTimeoutMs ?? 60_000;
    const tls = o.tls === 'generate' ? generateLocalTls([host]) : (o.tls ?? null);
    const apiTls = o.apiTls ?? 'off';
    if (apiTls !== 'off' && !tls) throw new Error(`--api-tls ${apiTls} needs certificates`);
    useClientSecurity({ internal: tls, publicTls: apiTls === 'off' ? null : tls });
    const common = [...(o.model ? ['--model', o.model] : []), ...(tls ? ['--tls-dir', tls.dir] : ['--plaintext'])];
    const allocator = new ServiceProcess('allocator', 'allocator', ['--host', host, '--port', '0', ...common, ...(o.allocatorArgs ?? [])], o.env, log);
    const caches = Array.from(
      { length: o.cacheShards ?? 1 },
      (_, i) => new ServiceProcess('cache', `cache-${i}`, ['--host', host, '--port', '0', ...common, ...(o.cacheArgs ?? [])], o.env, log),
    );
    const started: ServiceProcess[] = [];
    try {
      for (const p of [allocator, ...caches]) {
        started.push(p);
        await p.start(timeoutMs);
      }
      await Promise.all([allocator, ...caches].map((p) => waitHealthy(p.address, timeoutMs)));
      // Restarted services keep their port, so the orchestrator's addresses stay valid.
      for (const p of [allocator, ...caches]) p.args.splice(p.args.indexOf('--port') + 1, 1, p.address.split(':').pop()!);
      const orchestrator = new ServiceProcess(
        'orchestrator',
        'orchestrator',
        [
          ...['--host', host, '--port', String(o.port ?? 0), '--allocator', allocator.address],
          // No local cache service: the orchestratorArgs name the shards (--cache-dns).
          ...(caches.length ? ['--cache', caches.map((c) => c.address).join(',')] : []),
          ...common,
          ...['--api-tls', apiTls],
          ...(o.orchestratorArgs ?? []),
        ],
        o.env,
        log,
      );
      started.push(orchestrator);
      await orchestrator.start(timeoutMs);
      await waitHealthy(orchestrator.address, timeoutMs, PUBLIC_SERVICE);
      return new Cluster(allocator, caches, orchestrator, timeoutMs, tls, o.tls === 'generate');
    } catch (e) {
      await Promise.all(started.map((p) => p.stop(2000)));
      if (o.tls === 'generate') removeLocalTls(tls);
      throw e;
    }
  }

  /** Starts a stopped cache shard again on its port. */
  async restartCache(i: number): Promise<void> {
    const c = this.caches[i];
    await c.start(this.timeoutMs);
    await waitHealthy(c.address, this.timeoutMs);
  }

  /** The orchestrator first (it drains its requests), then the others. */
  async stop(): Promise<void> {
    await this.orchestrator.stop();
    await Promise.all([this.allocator, ...this.caches].map((p) => p.stop()));
    if (this.ownTls) removeLocalTls(this.tls);
  }
}
