// The two ways a benchmark runs the orchestrator's model loop: in-process
// (one local cache and allocator, what `--in-process` serves) and split (an
// allocator and a cache service in their own processes, reached over gRPC).
// The scheduler runs in this process in both, so a benchmark can watch its
// steps (scheduler.onStep) and submit jobs directly.
import { ServiceProcess } from '../services/launcher/cluster.js';
import { waitHealthy } from '../services/common/health-client.js';
import { Orchestrator } from '../services/orchestrator/orchestrator.js';
import type { ServerDefaults } from '../services/orchestrator/settings.js';

export interface BenchSystem {
  orch: Orchestrator;
  stop(): Promise<void>;
}

export async function startInProcess(modelDir: string, defaults: ServerDefaults, log: (l: string) => void): Promise<BenchSystem> {
  const orch = await Orchestrator.create({ modelDir, defaults, local: { engine: { quant: 'symmetric', rotateKv: true, mode: defaults.cache.mode }, memoryLimitBytes: 0 }, log });
  return { orch, stop: () => orch.close(1000) };
}

/** An allocator and one cache service (with `cacheArgs`) as child processes, and an orchestrator on them. */
export async function startSplit(modelDir: string, defaults: ServerDefaults, cacheArgs: string[], log: (l: string) => void): Promise<BenchSystem> {
  const tail: string[] = []; // the services' last lines, shown if the start fails
  const quiet = (role: string, line: string) => {
    tail.push(`${role}: ${line}`);
    if (tail.length > 20) tail.shift();
  };
  const model = ['--model', modelDir];
  const allocator = new ServiceProcess('allocator', 'allocator', ['--port', '0', '--plaintext'], undefined, quiet);
  const cache = new ServiceProcess('cache', 'cache', ['--port', '0', '--plaintext', ...model, ...cacheArgs], undefined, quiet);
  const started: ServiceProcess[] = []; // stopped in reverse order; one that never started is not stopped
  const stopServices = async () => {
    for (const p of started.reverse()) await p.stop();
  };
  try {
    // Generous: on the loaded 2-core build machine a service took over a minute to start.
    for (const p of [allocator, cache]) {
      started.push(p);
      await p.start(180_000);
    }
    await Promise.all([waitHealthy(allocator.address, 60_000), waitHealthy(cache.address, 60_000)]);
    // A benchmark waits for slow calls rather than giving up on the shard: the first prefill chunk has no
    // history for the deadline to follow, and the loaded build machine took over 2 s for one.
    const orch = await Orchestrator.create({ modelDir, defaults, cacheAddresses: [cache.address], allocatorAddress: allocator.address, shardDeadlineMs: 300_000, log });
    return {
      orch,
      stop: async () => {
        try {
          await orch.close(1000);
        } finally {
          await stopServices();
        }
      },
    };
  } catch (e) {
    await stopServices();
    if (e instanceof Error && tail.length) e.message += `\nservice logs:\n${tail.join('\n')}`;
    throw e;
  }
}
