// The allocator service process: `node dist/services/allocator/main.js [--port N]`.
import { AllocatorService } from '../../gen/smartkv/v1/allocator_pb.js';
import { parseOptions, usage, UsageError, type OptionSpec } from '../common/args.js';
import { LISTEN, runService, SERVED, type ListenOptions } from '../common/service-app.js';
import { allocatorHandlers } from './allocator-server.js';

export const ALLOCATOR_OPTIONS: Record<string, OptionSpec> = {
  host: { kind: 'string', default: '127.0.0.1', help: 'address to listen on' },
  port: { kind: 'int', default: 0, help: 'port (0: any free port, printed on the READY line)' },
  'grace-ms': { kind: 'int', default: 5000, help: 'how long in-flight calls may finish on shutdown' },
  help: { kind: 'bool', help: 'print this help' },
};

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2), ALLOCATOR_OPTIONS);
  if (o.help) return void process.stdout.write(usage('smartkv allocator service', ALLOCATOR_OPTIONS));
  const listen: ListenOptions = { role: 'allocator', host: o.host as string, port: o.port as number, graceMs: o['grace-ms'] as number };
  await runService('allocator', [
    { provide: LISTEN, useValue: listen },
    { provide: SERVED, useValue: [{ service: AllocatorService, implementation: allocatorHandlers() }] },
  ]);
}

main().catch((e) => {
  process.stderr.write(`smartkv-allocator: ${e instanceof UsageError ? e.message + '\n\n' + usage('smartkv allocator service', ALLOCATOR_OPTIONS) : (e as Error).stack ?? e}\n`);
  process.exit(2);
});
