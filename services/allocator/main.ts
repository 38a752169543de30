// The allocator service process: `node dist/services/allocator/main.js [--port N]`.
// Telemetry starts first; the application (and @grpc/grpc-js) loads after.
import { parseOptions, TLS_OPTIONS, usage, UsageError, type OptionSpec } from '../common/args.js';
import { startTelemetry } from '../telemetry/start.js';

export const ALLOCATOR_OPTIONS: Record<string, OptionSpec> = {
  host: { kind: 'string', default: '127.0.0.1', help: 'address to listen on' },
  port: { kind: 'int', default: 0, help: 'port (0: any free port, printed on the READY line)' },
  model: { kind: 'string', help: 'model folder whose shape (layers, context) sizes the request limit (default: models/smartkv-ref-8k, the bundled 8K model)' },
  'max-request-bytes': { kind: 'int', default: 0, help: 'the most bytes one Allocate may carry (0: sized from --model: a plan for its whole context)' },
  'grace-ms': { kind: 'int', default: 5000, help: 'how long in-flight calls may finish on shutdown' },
  'metrics-port': { kind: 'int', default: 0, help: 'serve Prometheus metrics on this port (0: off)' },
  ...TLS_OPTIONS,
  help: { kind: 'bool', help: 'print this help' },
};

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2), ALLOCATOR_OPTIONS);
  if (o.help) return void process.stdout.write(usage('smartkv allocator service', ALLOCATOR_OPTIONS));
  const telemetry = startTelemetry('smartkv-allocator', { metricsPort: o['metrics-port'] as number, metricsHost: o.host as string });
  const { AllocatorService } = await import('../../gen/smartkv/v1/allocator_pb.js');
  const { LISTEN, runService, SERVED } = await import('../common/service-app.js');
  const { allocatorHandlers } = await import('./allocator-server.js');
  const { readFileSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { parseModelConfig } = await import('../orchestrator/model/config.js');
  const { defaultModelDir } = await import('../orchestrator/model/paths.js');
  const { allocatorLimits } = await import('../common/limits.js');
  const { internalServerCredentials, tlsFromOptions } = await import('../common/credentials.js');
  let tls;
  try {
    tls = tlsFromOptions(o, 'the allocator');
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  // The model's shape bounds an Allocate: [layers][context] per-token arrays.
  const cfgFile = join((o.model as string | undefined) ?? defaultModelDir(), 'config.json');
  const limits = allocatorLimits(parseModelConfig(JSON.parse(readFileSync(cfgFile, 'utf8')), cfgFile));
  if ((o['max-request-bytes'] as number) > 0) limits.receiveBytes = o['max-request-bytes'] as number;
  const listen = { role: 'allocator', host: o.host as string, port: o.port as number, graceMs: o['grace-ms'] as number, limits, security: { credentials: internalServerCredentials(tls) }, afterStop: () => telemetry.shutdown() };
  process.stderr.write(`[smartkv-allocator] model shape from ${cfgFile}: requests ≤ ${limits.receiveBytes} bytes; ${tls ? `mutual TLS (${tls.dir})` : 'plaintext (--plaintext)'}\n`);
  await runService('allocator', [
    { provide: LISTEN, useValue: listen },
    { provide: SERVED, useValue: [{ service: AllocatorService, implementation: allocatorHandlers() }] },
  ]);
}

main().catch((e) => {
  process.stderr.write(`smartkv-allocator: ${e instanceof UsageError ? e.message + '\n\n' + usage('smartkv allocator service', ALLOCATOR_OPTIONS) : (e as Error).stack ?? e}\n`);
  process.exit(2);
});
