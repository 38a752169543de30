// `npm start`: SmartKV on this machine as separate processes (allocator,
// cache service(s), orchestrator) with the bundled reference model. Ctrl-C or
// SIGTERM stops all of them cleanly, and so does the end of the launcher's
// own parent (npm, a shell). A cache service or the allocator that dies is
// started again on its port; if the orchestrator dies, all stop.
import { parseOptions, TLS_OPTIONS, usage, UsageError, type OptionSpec } from '../common/args.js';
import { readTlsDir } from '../common/credentials.js';
import { Cluster, type ServiceProcess } from './cluster.js';
import { HORIZON_NAMES } from '../orchestrator/settings.js';
import { blockTokensProblem } from '../../native/formats.js';

const OPTIONS: Record<string, OptionSpec> = {
  host: { kind: 'string', default: '127.0.0.1', help: 'address the services listen on' },
  port: { kind: 'int', default: 50051, help: "the orchestrator's port" },
  'cache-shards': { kind: 'int', help: 'cache services to start (default 1, or 0 with --cache-dns)' },
  'cache-dns': { kind: 'string', help: 'HOST:PORT: also use every cache service HOST resolves to (re-resolved at run time)' },
  'cache-dns-server': { kind: 'list', help: 'DNS servers for --cache-dns, IP[:PORT] comma-separated (default: the system resolver)' },
  model: { kind: 'string', help: 'model folder (default: models/smartkv-ref-8k, the bundled 8K model)' },
  'memory-limit': { kind: 'int', default: 0, help: 'hot KV bytes each cache service may hold (0: no limit); the master tier (reversible mode) is on disk and not counted' },
  mode: { kind: 'string', default: 'downgrade-only', help: 'default precision mode: downgrade-only (no master copy; what the headline tables in docs/evaluation.md measure) or reversible (an FP16 master copy in each cache service\'s file-backed master tier)' },
  'block-tokens': { kind: 'int', default: 32, help: 'token slots per storage block in each cache service (multiple of 16, 16–1024): larger blocks hold more slack bytes but read faster at large layer shapes (docs/engine.md, "Block size")' },
  'master-dir': { kind: 'string', help: 'directory for the cache services\' master tier files (default: one per service under the OS temp dir, removed on stop)' },
  policy: { kind: 'string', help: 'default cache policy (fp16, uniform-8/4/2, kivi-2/4, kivi-2-rot/kivi-4-rot, random, tiered, smartkv)' },
  budget: { kind: 'number', help: 'default budget β' },
  horizon: { kind: 'string', help: 'default budget horizon: now (every plan meets β over what it holds), prompt (plans between prefill chunks may hold β × the whole prompt; the default) or end (no plan until the prompt is read; it is held at 16 bits until then)' },
  ...TLS_OPTIONS,
  'tls-dir': { kind: 'string', help: 'mutual TLS between the services with these certificates (ca.pem, cert.pem, key.pem); default: a throwaway CA and certificate made with openssl for this run' },
  'api-tls': { kind: 'string', default: 'off', help: 'the public API: off (plaintext), tls or mtls, with the services\' certificate' },
  'api-token-file': { kind: 'string', help: 'the public API requires `authorization: Bearer <token>` with the token in this file' },
  help: { kind: 'bool', help: 'print this help' },
};

async function main(): Promise<number> {
  const o = parseOptions(process.argv.slice(2), OPTIONS);
  if (o.help) {
    process.stdout.write(usage('npm start -- [options]', OPTIONS));
    return 0;
  }
  const dns = o['cache-dns'] as string | undefined;
  const shards = (o['cache-shards'] as number | undefined) ?? (dns ? 0 : 1);
  if (shards < (dns ? 0 : 1) || shards > 64) throw new UsageError(`--cache-shards must be in [${dns ? 0 : 1}, 64], got ${shards}`);
  const orchestratorArgs: string[] = [];
  if (dns) orchestratorArgs.push('--cache-dns', dns);
  if (o['cache-dns-server']) orchestratorArgs.push('--cache-dns-server', (o['cache-dns-server'] as string[]).join(','));
  if (o.policy) orchestratorArgs.push('--policy', o.policy as string);
  if (o.budget !== undefined) orchestratorArgs.push('--budget', String(o.budget));
  const apiTls = o['api-tls'] as string;
  if (apiTls !== 'off' && apiTls !== 'tls' && apiTls !== 'mtls') throw new UsageError(`--api-tls must be off, tls or mtls, got ${apiTls}`);
  if (o['api-token-file']) orchestratorArgs.push('--api-token-file', o['api-token-file'] as string);
  if (o.plaintext && o['tls-dir']) throw new UsageError('give --tls-dir or --plaintext, not both');
  if (o.plaintext && o['api-tls'] !== 'off') throw new UsageError(`--api-tls ${o['api-tls']} needs certificates: leave out --plaintext`);
  const tls = o.plaintext ? null : o['tls-dir'] ? readTlsDir(o['tls-dir'] as string) : 'generate';
  const mode = o.mode as string;
  if (mode !== 'downgrade-only' && mode !== 'reversible') throw new UsageError(`--mode must be downgrade-only or reversible, got ${mode}`);
  orchestratorArgs.push('--mode', mode);
  const horizon = o.horizon as string | undefined;
  if (horizon !== undefined && !(HORIZON_NAMES as readonly string[]).includes(horizon)) throw new UsageError(`--horizon must be ${HORIZON_NAMES.join(', ')}; got ${horizon}`);
  if (horizon) orchestratorArgs.push('--horizon', horizon);
  const blockTokens = o['block-tokens'] as number;
  const wrongBlock = blockTokensProblem(blockTokens);
  if (wrongBlock) throw new UsageError(`--block-tokens ${wrongBlock}`);
  const cacheArgs = ['--memory-limit', String(o['memory-limit']), '--mode', mode, '--block-tokens', String(blockTokens)];
  if (o['master-dir']) cacheArgs.push('--master-dir', o['master-dir'] as string);
  process.stderr.write(`starting the allocator, ${shards} cache service(s)${dns ? ` (and those ${dns} resolves to)` : ''} and the orchestrator (mode ${mode}) …\n`);
  const t0 = Date.now();
  const cluster = await Cluster.start({
    host: o.host as string,
    port: o.port as number,
    cacheShards: shards,
    model: o.model as string | undefined,
    cacheArgs,
    orchestratorArgs,
    tls,
    apiTls,
  });
  process.stdout.write(
    `\nSmartKV is serving on ${cluster.address} (ready in ${((Date.now() - t0) / 1000).toFixed(1)} s)\n` +
      `  cache services: ${[...cluster.caches.map((c) => c.address), ...(dns ? [`DNS ${dns}`] : [])].join(', ')}; allocator: ${cluster.allocator.address}\n` +
      `  between the services: ${cluster.tls ? `mutual TLS (${o['tls-dir'] ? cluster.tls.dir : `a throwaway CA in ${cluster.tls.dir}, removed on stop`})` : 'plaintext (--plaintext)'}; public API: ${o['api-tls'] === 'off' ? 'plaintext' : o['api-tls']}${o['api-token-file'] ? ', bearer token' : ''}\n` +
      `  try: npx smartkv generate "The old man said" --server ${cluster.address}\n` +
      `  Ctrl-C stops everything.\n\n`,
  );
  let stopping = false;
  const stop = async (why: string, code: number) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`\n${why}: stopping …\n`);
    await cluster.stop();
    process.stderr.write('all services stopped\n');
    process.exit(code);
  };
  process.on('SIGINT', () => void stop('SIGINT', 0));
  process.on('SIGTERM', () => void stop('SIGTERM', 0));
  watchParent(() => void stop('the launcher\'s parent went away', 1));
  cluster.orchestrator.exited.then((c) => void stop(`the orchestrator exited (${c})`, 1));
  const supervise = (p: ServiceProcess, restart: () => Promise<void>) => {
    p.exited.then(async (c) => {
      if (stopping) return;
      process.stderr.write(`${p.name} exited (${c}); starting it again on ${p.address}\n`);
      await new Promise((r) => setTimeout(r, 1000));
      try {
        await restart();
        supervise(p, restart);
      } catch (e) {
        await stop(`${p.name} could not be restarted: ${(e as Error).message}`, 1);
      }
    });
  };
  cluster.caches.forEach((c, i) => supervise(c, () => cluster.restartCache(i)));
  supervise(cluster.allocator, async () => {
    await cluster.allocator.start(60_000);
  });
  return -1; // keep running
}

/** Stops everything when whoever started the launcher is gone: SIGTERM to
 * the `npm start` process ends npm without passing it on, and used to leave
 * the launcher and every service serving. An orphan's parent changes (to
 * init or a subreaper), so a changed ppid is the signal. */
function watchParent(stop: () => void): void {
  const parent = process.ppid;
  // The parent may have held our stdout/stderr (a pipe): writing the stop
  // messages must not crash the launcher (EPIPE) before it stops the services.
  for (const out of [process.stdout, process.stderr]) out.on('error', () => {});
  if (parent <= 1) return; // started by init itself (a container's PID 1): nothing to watch
  const timer = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(timer);
    stop();
  }, 500);
  timer.unref();
}

main().then(
  (code) => code >= 0 && process.exit(code),
  (e) => {
    process.stderr.write(`smartkv start: ${e instanceof UsageError ? `${e.message}\n\n${usage('npm start -- [options]', OPTIONS)}` : (e as Error).message}\n`);
    process.exit(2);
  },
);
