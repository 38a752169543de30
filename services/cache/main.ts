// The cache service process: `node dist/services/cache/main.js --model DIR [--port N] …`.
// It owns the KV of its sequences. Telemetry starts first; the application
// (and @grpc/grpc-js with it) loads after.
import { parseOptions, TLS_OPTIONS, usage, UsageError, type OptionSpec } from '../common/args.js';
import { startTelemetry } from '../telemetry/start.js';

export const CACHE_OPTIONS: Record<string, OptionSpec> = {
  host: { kind: 'string', default: '127.0.0.1', help: 'address to listen on' },
  port: { kind: 'int', default: 0, help: 'port (0: any free port, printed on the READY line)' },
  model: { kind: 'string', help: 'model folder whose shape the cache takes (default: models/smartkv-ref-8k, the bundled 8K model)' },
  'memory-limit': { kind: 'int', default: 0, help: 'hot KV bytes this service may hold (0: no limit); the master tier is on disk and not counted' },
  threads: { kind: 'int', default: 0, help: 'attention threads (0: all cores)' },
  'block-tokens': { kind: 'int', default: 32, help: 'token slots per storage block (multiple of 16, 16–1024): a partly filled block is held whole, so larger blocks hold more slack bytes per (sequence, layer, format) but read one kv-head\'s rows in longer runs (at 32K × 32 heads × 128 dims, 128-token blocks took 1.2–1.3× less attention time; docs/bench-attention.md); every shard of one orchestrator must use the same' },
  device: { kind: 'string', default: 'cpu', help: 'cpu, cuda or auto' },
  gamma: { kind: 'number', default: 0.9, help: 'importance EMA factor γ' },
  mode: { kind: 'string', default: 'downgrade-only', help: 'precision mode of sequences created without one: downgrade-only (no master copy) or reversible (an FP16 master copy in the master tier, so plans may raise precision)' },
  'master-dir': { kind: 'string', help: 'directory of the master tier (reversible sequences\' FP16 copies, memory-mapped files unlinked as soon as they are made; default: <tmpdir>/smartkv-master-<pid>, removed on stop)' },
  'rotate-kv': { kind: 'bool', default: true, help: 'store K and V rotated (randomised Hadamard of q, k and v; clipped 2-bit scales): same attention, much better 2-bit K and V; KIVI sequences untouched; --rotate-kv=false turns it off' },
  quant: { kind: 'string', default: 'symmetric', help: 'symmetric or asymmetric quantisation' },
  'max-attend-rows': { kind: 'int', default: 1024, help: 'query rows one Attend may carry over all its items; sizes the request limit (the orchestrator sends at most --prefill-chunk + --max-batch)' },
  'max-reserved-per-owner': { kind: 'int', default: 0, help: 'hot bytes one owner (smartkv-owner token) may hold reserved, so that one caller cannot take the whole --memory-limit; one more sequence is refused with RESOURCE_EXHAUSTED (0: no cap below the limit; with several orchestrators on a shard, e.g. the limit / their number)' },
  'max-sequences-per-owner': { kind: 'int', default: 1024, help: 'live sequences one owner (smartkv-owner token) may hold; one more is refused with RESOURCE_EXHAUSTED (an orchestrator holds at most --max-batch per shard)' },
  'lease-ms': { kind: 'int', default: 30000, help: 'an owner (smartkv-owner token) with no open attend stream that makes no call for this long loses its sequences (any call with its token renews the lease)' },
  'grace-ms': { kind: 'int', default: 5000, help: 'how long in-flight calls may finish on shutdown' },
  'metrics-port': { kind: 'int', default: 0, help: 'serve Prometheus metrics on this port (0: off)' },
  ...TLS_OPTIONS,
  help: { kind: 'bool', help: 'print this help' },
};

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2), CACHE_OPTIONS);
  if (o.help) return void process.stdout.write(usage('smartkv cache service', CACHE_OPTIONS));
  const telemetry = startTelemetry('smartkv-cache', { metricsPort: o['metrics-port'] as number, metricsHost: o.host as string });
  const { runCache } = await import('./cache-app.js');
  await runCache(o, telemetry);
}
main().catch((e) => {
  process.stderr.write(`smartkv-cache: ${e instanceof UsageError ? e.message + '\n\n' + usage('smartkv cache service', CACHE_OPTIONS) : (e as Error).stack ?? e}\n`);
  process.exit(2);
});
