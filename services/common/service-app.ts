// Every service process is a NestJS application context: its state lives in
// providers, and one GrpcHost provider serves them. Nest runs bootstrap and
// shutdown hooks in order, so SIGTERM/SIGINT drain the server (in-flight
// calls finish or are cancelled after the grace period) before providers
// such as the KV engine are closed.
import 'reflect-metadata';

import { Inject, Injectable, Module, type BeforeApplicationShutdown, type DynamicModule, type OnApplicationBootstrap, type Provider } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';

import type { MessageLimits } from './limits.js';
import { startServer, type RunningServer, type ServedService, type ServerSecurity } from './server.js';

export const SERVED = Symbol('served services');
export const LISTEN = Symbol('listen options');

export interface ListenOptions {
  role: string; // printed in the ready line: "READY smartkv-<role> host:port"
  host: string;
  port: number;
  graceMs: number;
  /** Message-size limits of this server (limits.ts). */
  limits: MessageLimits;
  /** Transport and token checks (credentials.ts); plaintext when absent. */
  security?: ServerSecurity;
  /** Runs before the server stops accepting calls: drain work that needs the server. */
  beforeStop?: () => Promise<void>;
  /** Runs after the server stopped (flush telemetry). */
  afterStop?: () => Promise<void>;
}

@Injectable()
export class GrpcHost implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private running: RunningServer | null = null;

  constructor(
    @Inject(SERVED) private readonly services: ServedService[],
    @Inject(LISTEN) private readonly listen: ListenOptions,
  ) {}

  get address(): string {
    return this.running?.address ?? '';
  }

  async onApplicationBootstrap(): Promise<void> {
    const { host, port } = this.listen;
    this.running = await startServer(host, port, this.services, this.listen.limits, this.listen.security);
  }

  /** The launcher and the tests wait for this line; runService prints it once
   * the shutdown hooks are in place, so a SIGTERM right after it is graceful. */
  announce(): void {
    process.stdout.write(`READY smartkv-${this.listen.role} ${this.address}\n`);
  }

  async beforeApplicationShutdown(signal?: string): Promise<void> {
    const t0 = Date.now();
    log(this.listen.role, `stopping${signal ? ` on ${signal}` : ''}`);
    // Probes see the drain at once (the orchestrator drains its requests in beforeStop).
    this.running?.markNotServing();
    await this.listen.beforeStop?.();
    await this.running?.shutdown(Math.max(0, this.listen.graceMs - (Date.now() - t0)));
    await this.listen.afterStop?.().catch((e) => log(this.listen.role, `telemetry shutdown: ${(e as Error).message}`));
    log(this.listen.role, `stopped after ${Date.now() - t0} ms`);
  }
}

export function log(role: string, line: string): void {
  process.stderr.write(`[smartkv-${role}] ${line}\n`);
}

/** Starts a service process: providers must include SERVED and LISTEN. */
export async function runService(role: string, providers: Provider[]): Promise<void> {
  @Module({})
  class ServiceModule {
    static with(): DynamicModule {
      return { module: ServiceModule, providers: [...providers, GrpcHost] };
    }
  }
  const app = await NestFactory.createApplicationContext(ServiceModule.with(), { logger: ['error', 'warn'] });
  app.enableShutdownHooks(['SIGTERM', 'SIGINT']);
  // Only now: a SIGTERM between READY and the hooks killed the process
  // without its shutdown (a master tier directory was left behind).
  app.get(GrpcHost).announce();
  watchParent(role, () => app.close());
  process.on('uncaughtException', (e) => {
    log(role, `uncaught: ${e.stack ?? e}`);
    process.exit(1);
  });
}

/** Started by a launcher (SMARTKV_PARENT_PID): stop when it is gone, so a
 * killed launcher leaves no services behind. */
function watchParent(role: string, stop: () => Promise<void>): void {
  const ppid = Number(process.env.SMARTKV_PARENT_PID);
  if (!ppid) return;
  const timer = setInterval(() => {
    try {
      process.kill(ppid, 0);
    } catch {
      clearInterval(timer);
      log(role, `launcher ${ppid} is gone; stopping`);
      stop().then(() => process.exit(0), () => process.exit(1));
    }
  }, 1000);
  timer.unref();
}
