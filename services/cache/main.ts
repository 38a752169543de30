// The cache service process: `node dist/services/cache/main.js --model DIR [--port N] …`.
// It owns the KV of its sequences; its engine is shaped by the model's config.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { CacheService } from '../../gen/smartkv/v1/cache_pb.js';
import { parseOptions, usage, UsageError, type OptionSpec } from '../common/args.js';
import { LISTEN, log, runService, SERVED, type ListenOptions } from '../common/service-app.js';
import { parseModelConfig } from '../orchestrator/model/config.js';
import { defaultModelDir } from '../orchestrator/model/paths.js';
import { CacheCore } from './cache-core.js';
import { cacheHandlers } from './cache-server.js';
import { ATTEND_CODECS } from './cache-proto.js';

export const CACHE_OPTIONS: Record<string, OptionSpec> = {
  host: { kind: 'string', default: '127.0.0.1', help: 'address to listen on' },
  port: { kind: 'int', default: 0, help: 'port (0: any free port, printed on the READY line)' },
  model: { kind: 'string', help: 'model folder whose shape the cache takes (default: the bundled reference model)' },
  'memory-limit': { kind: 'int', default: 0, help: 'KV bytes this service may hold (0: no limit)' },
  threads: { kind: 'int', default: 0, help: 'attention threads (0: all cores)' },
  device: { kind: 'string', default: 'cpu', help: 'cpu, cuda or auto' },
  gamma: { kind: 'number', default: 0.9, help: 'importance EMA factor γ' },
  'master-copy': { kind: 'bool', default: false, help: 'keep FP16 originals so plans may raise precision' },
  quant: { kind: 'string', default: 'symmetric', help: 'symmetric or asymmetric quantisation' },
  'grace-ms': { kind: 'int', default: 5000, help: 'how long in-flight calls may finish on shutdown' },
  help: { kind: 'bool', help: 'print this help' },
};

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2), CACHE_OPTIONS);
  if (o.help) return void process.stdout.write(usage('smartkv cache service', CACHE_OPTIONS));
  const modelDir = (o.model as string | undefined) ?? defaultModelDir();
  const cfgFile = join(modelDir, 'config.json');
  const cfg = parseModelConfig(JSON.parse(readFileSync(cfgFile, 'utf8')), cfgFile);
  const quant = o.quant as string;
  if (quant !== 'symmetric' && quant !== 'asymmetric') throw new UsageError(`--quant must be symmetric or asymmetric, got ${quant}`);
  const core = new CacheCore(
    {
      layers: cfg.layers,
      qHeads: cfg.heads,
      kvHeads: cfg.kvHeads,
      headDim: cfg.headDim,
      quant,
      gamma: o.gamma as number,
      masterCopy: o['master-copy'] as boolean,
      threads: o.threads as number,
      device: o.device as 'cpu' | 'cuda' | 'auto',
    },
    o['memory-limit'] as number,
  );
  const listen: ListenOptions = { role: 'cache', host: o.host as string, port: o.port as number, graceMs: o['grace-ms'] as number };
  log('cache', `${core.engine.backendName} engine for ${modelDir}: ${cfg.layers} layers, ${cfg.kvHeads} kv-heads × ${cfg.headDim}; memory limit ${o['memory-limit'] || 'none'}`);
  await runService('cache', [
    { provide: LISTEN, useValue: listen },
    { provide: SERVED, useValue: [{ service: CacheService, implementation: cacheHandlers(core, (l) => log('cache', l)), codecs: ATTEND_CODECS }] },
    { provide: CacheCore, useValue: core },
  ]);
}

main().catch((e) => {
  process.stderr.write(`smartkv-cache: ${e instanceof UsageError ? e.message + '\n\n' + usage('smartkv cache service', CACHE_OPTIONS) : (e as Error).stack ?? e}\n`);
  process.exit(2);
});
