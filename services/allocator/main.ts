// The allocator service process: `node dist/services/allocator/main.js [--port N]`.
// Telemetry starts first; the application (and @grpc/grpc-js) loads after.
import { parseOptions, usage, UsageError, type OptionSpec } from '../common/args.js';
import { startTelemetry } from '../telemetry/start.js';

export const ALLOCATOR_OPTIONS: Record<string, OptionSpec> = {
  host: { kind: 'string', default: '127.0.0.1', help: 'address to listen on' },
  port: { kind: 'int', default: 0, help: 'port (0: any free port, printed on the READY line)' },
  'grace-ms': { kind: 'int', default: 5000, help: 'how long in-flight calls may finish on shutdown' },
  'metrics-port': { kind: 'int', default: 0, help: 'serve Prometheus metrics on this port (0: off)' },
  help: { kind: 'bool', help: 'print this help' },
};

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2), ALLOCATOR_OPTIONS);
  if (o.help) return void process.stdout.write(usage('smartkv allocator service', ALLOCATOR_OPTIONS));
  const telemetry = startTelemetry('smartkv-allocator', { metricsPort: o['metrics-port'] as number, metricsHost: o.host as string });
  const { AllocatorService } = await import('../../gen/smartkv/v1/allocator_pb.js');
  const { LISTEN, runService, SERVED } = await import('../common/service-app.js');
  const { allocatorHandlers } = await import('./allocator-server.js');
  const listen = { role: 'allocator', host: o.host as string, port: o.port as number, graceMs: o['grace-ms'] as number, afterStop: () => telemetry.shutdown() };
  await runService('allocator', [
    { provide: LISTEN, useValue: listen },
    { provide: SERVED, useValue: [{ service: AllocatorService, implementation: allocatorHandlers() }] },
  ]);
}

main().catch((e) => {
  process.stderr.write(`smartkv-allocator: ${e instanceof UsageError ? e.message + '\n\n' + usage('smartkv allocator service', ALLOCATOR_OPTIONS) : (e as Error).stack ?? e}\n`);
  process.exit(2);
});
