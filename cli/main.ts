// The `smartkv` command line. Subcommands register here; this issue has
// `bench attention` (later: generate, eval, …).
import { benchAllocator } from './bench-allocator.js';
import { benchAttention } from './bench-attention.js';
import { blockTokensProblem } from '../native/formats.js';
import { benchModel } from './bench-model.js';
import { benchE2e } from './bench-e2e.js';
import { benchLatency, LATENCY_CONTEXTS, LATENCY_OPTIONS, parseLatencyOptions } from './bench-latency.js';
import { generate, GENERATE_OPTIONS } from './generate.js';
import { evalCommand, EVAL_USAGE_LINES } from './eval-cli.js';
import { checkReliability } from './check-reliability.js';
import { usage as optionsUsage, UsageError } from '../services/common/args.js';

const USAGE = `usage: smartkv <command>

commands:
  generate "prompt" [--server ADDR] [--max-tokens N] [--policy P] [--budget β] …
                                       stream a generation from a running server (npm start);
                                       \`smartkv generate --help\` lists the options
  bench attention [--json] [--quick] [--block-tokens T]
                                       decode attention: dense fp32/fp16, uniform int8/int4/int2,
                                       KIVI-2/4 and SmartKV mixes (β = 0.25, 0.33, 0.5); engines
                                       store blocks of T tokens (default 32, as the cache service)
  bench e2e [--json] [--quick] [--policy P] [--budget β] [--tracing] [--rounds N]
                                       decode tokens/s split into processes vs in-process (batch 1, 8)
                                       and the per-layer attend round trip (p50, p99); then N paired
                                       rounds of split vs in-process back to back (default 5);
                                       --tracing: also the cost of OTLP tracing through the API
  bench model [--json] [--quick] [--model DIR]
                                       the reference model in-process: prefill and decode tokens/s,
                                       and fp16 vs smartkv β 0.25 at 1K/4K/8K context (those it holds)
  bench latency [--context N]... [--budget β]... [--system in-process|split]... [--mode M]...
                [--steps N] [--warmup N] [--model DIR] [--json] [--quick] [--out FILE]
                                       decode latency at long contexts (default ${LATENCY_CONTEXTS.join(', ')}),
                                       fp16, uniform-8 and smartkv per β, in-process and split: ms/token,
                                       bytes per tier and the bit-width histogram; \`smartkv bench latency --help\`
  bench allocator [--json] [--quick]   allocator plan time per policy at 4K, 32K, 128K tokens (p50, p99)
  check reliability [--json] [--quick] [--only a,b] [--seed N]
                                       start a local system and run the reliability scenarios (cancel
                                       storm, overload, fuzz, strangers, killed/hung shard, killed
                                       allocator, soak, SIGTERM drain); exit 1 when a goal is missed
${EVAL_USAGE_LINES}`;

async function main(argv: string[]): Promise<number> {
  if (argv[0] === 'eval') return evalCommand(argv.slice(1), { out: (l) => process.stdout.write(`${l}\n`), err: process.stderr });
  if (argv[0] === 'generate') {
    if (argv.includes('--help')) {
      process.stdout.write(optionsUsage('smartkv generate "prompt" [options]', GENERATE_OPTIONS));
      return 0;
    }
    try {
      return await generate(argv.slice(1), (s) => process.stdout.write(s), (s) => process.stderr.write(s));
    } catch (e) {
      if (e instanceof UsageError) return usageError(e.message);
      throw e;
    }
  }
  if (argv[0] === 'bench' && argv[1] === 'latency') {
    if (argv.includes('--help')) {
      process.stdout.write(optionsUsage('smartkv bench latency [options]', LATENCY_OPTIONS));
      return 0;
    }
    let opts;
    try {
      opts = parseLatencyOptions(argv.slice(2));
    } catch (e) {
      if (e instanceof UsageError) return usageError(e.message);
      throw e;
    }
    await benchLatency(opts, { out: (l) => process.stdout.write(`${l}\n`), progress: (l) => process.stderr.write(`${l}\n`) });
    return 0;
  }
  const flags = new Set(argv.filter((a) => a.startsWith('--')));
  // words: the command; a value after --model belongs to the option
  const words = argv.filter((a, i) => !a.startsWith('--') && !['--model', '--policy', '--budget', '--only', '--seed', '--block-tokens', '--rounds'].includes(argv[i - 1]));
  if (flags.has('--help') || words.length === 0) {
    process.stdout.write(USAGE);
    return words.length === 0 && !flags.has('--help') ? 2 : 0;
  }
  if (words[0] === 'bench' && words[1] === 'attention' && words.length === 2) {
    const unknown = [...flags].filter((f) => !['--json', '--quick', '--block-tokens'].includes(f));
    if (unknown.length) return usageError(`unknown option ${unknown[0]}`);
    const given = optionValue(argv, '--block-tokens');
    const blockTokens = flags.has('--block-tokens') ? Number(given) : undefined;
    const wrongBlock = blockTokens === undefined ? null : blockTokensProblem(blockTokens);
    if (wrongBlock) return usageError(`--block-tokens ${wrongBlock}`);
    await benchAttention(
      { json: flags.has('--json'), quick: flags.has('--quick'), blockTokens },
      { out: (l) => process.stdout.write(`${l}\n`), progress: (l) => process.stderr.write(`${l}\n`) },
    );
    return 0;
  }
  if (words[0] === 'bench' && words[1] === 'e2e') {
    const known = ['--json', '--quick', '--model', '--policy', '--budget', '--tracing', '--rounds'];
    const unknown = [...flags].filter((f) => !known.includes(f));
    if (unknown.length) return usageError(`unknown option ${unknown[0]}`);
    const budget = optionValue(argv, '--budget');
    const rounds = flags.has('--rounds') ? Number(optionValue(argv, '--rounds')) : undefined;
    if (rounds !== undefined && !(Number.isInteger(rounds) && rounds >= 0 && rounds <= 100)) return usageError(`--rounds must be an integer from 0 to 100, got ${optionValue(argv, '--rounds')}`);
    await benchE2e(
      { json: flags.has('--json'), quick: flags.has('--quick'), tracing: flags.has('--tracing'), model: optionValue(argv, '--model'), policy: optionValue(argv, '--policy'), budget: budget === undefined ? undefined : Number(budget), rounds },
      { out: (l) => process.stdout.write(`${l}\n`), progress: (l) => process.stderr.write(`${l}\n`) },
    );
    return 0;
  }
  if (words[0] === 'bench' && words[1] === 'model') {
    const model = optionValue(argv, '--model');
    const unknown = [...flags].filter((f) => !['--json', '--quick', '--model'].includes(f));
    if (unknown.length) return usageError(`unknown option ${unknown[0]}`);
    await benchModel(
      { json: flags.has('--json'), quick: flags.has('--quick'), model },
      { out: (l) => process.stdout.write(`${l}\n`), progress: (l) => process.stderr.write(`${l}\n`) },
    );
    return 0;
  }
  if (words[0] === 'bench' && words[1] === 'allocator' && words.length === 2) {
    const unknown = [...flags].filter((f) => f !== '--json' && f !== '--quick');
    if (unknown.length) return usageError(`unknown option ${unknown[0]}`);
    await benchAllocator(
      { json: flags.has('--json'), quick: flags.has('--quick') },
      { out: (l) => process.stdout.write(`${l}\n`), progress: (l) => process.stderr.write(`${l}\n`) },
    );
    return 0;
  }
  if (words[0] === 'check' && words[1] === 'reliability' && words.length === 2) {
    const unknown = [...flags].filter((f) => !['--json', '--quick', '--only', '--seed'].includes(f));
    if (unknown.length) return usageError(`unknown option ${unknown[0]}`);
    const seed = optionValue(argv, '--seed');
    const { misses } = await checkReliability(
      { json: flags.has('--json'), quick: flags.has('--quick'), only: optionValue(argv, '--only')?.split(','), seed: seed === undefined ? undefined : Number(seed) },
      { out: (l) => process.stdout.write(`${l}\n`), progress: (l) => process.stderr.write(`${l}\n`) },
    );
    return misses.length ? 1 : 0;
  }
  return usageError(`unknown command: ${words.join(' ')}`);
}

function optionValue(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
}

function usageError(msg: string): number {
  process.stderr.write(`smartkv: ${msg}\n\n${USAGE}`);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => (process.exitCode = code),
  (err: unknown) => {
    const e = err as { code?: string; message?: string; stack?: string };
    process.stderr.write(`smartkv: ${e.code ? `${e.code}: ` : ''}${e.stack ?? e.message ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
