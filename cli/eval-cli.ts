// `smartkv eval ppl|needle|suite|ablation|<task> [options]`: argument checking and exit codes
// (0 done, 1 failed, 2 usage error, 130 interrupted).
import { usage, UsageError } from '../services/common/args.js';
import { evalOptionSpec, InterruptedError, parseEvalOptions, type EvalIo, type EvalKind } from './eval-common.js';
import { evalNeedle } from './eval-needle.js';
import { evalPpl } from './eval-ppl.js';
import { evalSuite, parseSuiteOptions, SUITE_OPTIONS } from './eval-suite.js';
import { ABLATION_NAMES, ABLATION_OPTIONS, evalAblation, parseAblationOptions } from './eval-ablation.js';
import { SUITE_TASKS, type SuiteTask } from './eval-tasks.js';
import { evalPair, PAIR_OPTIONS } from './eval-pair.js';

export const EVAL_USAGE_LINES = `  eval ppl [--json] [--quick] [--policy P]... [--budget β]... [--server ADDR] [--markdown FILE]
                                       held-out perplexity per cache policy and budget (Score API)
  eval needle [same options]           pass-key retrieval per policy, budget, context and depth
                                       (Complete API); \`smartkv eval ppl --help\` lists the options
  eval suite [--task T]... [--context N]... [--policy P]... [--budget β]... [--mode M]...
             [--seeds dev|test] [--samples N] [--out DIR] [--json] [--quick] [--markdown FILE]
                                       long-context tasks (${SUITE_TASKS.join(', ')}) per policy, β and
                                       mode, with paired tests and SVG frontiers; \`smartkv eval suite --help\`
  eval <task> [suite options]          one task of the suite, e.g. \`smartkv eval multikey\`
  eval ablation [--ablation A]... [--task T]... [--context N]... [--budget β] [--mode M]
                [--seeds dev|test] [--samples N] [--out DIR] [--json] [--quick] [--model DIR]
                                       one knob at a time (${ABLATION_NAMES.join(', ')}) against
                                       the default smartkv row, paired; \`smartkv eval ablation --help\`
  eval pair A B --row R [--row-b R] [--json]
                                       one row of a saved run (--out folder) against one of
                                       another, paired on their shared samples; nothing is rerun
`;

function evalUsage(kind: EvalKind | null): string {
  if (kind === null) return `usage:\n${EVAL_USAGE_LINES}`;
  return usage(`smartkv eval ${kind} [options]`, evalOptionSpec(kind));
}

const quoteCommand = (argv: string[]) => ['npx smartkv eval', ...argv].map((a) => (/^[\w@%+=:,./≥-]+$|^npx smartkv eval$/.test(a) ? a : `'${a}'`)).join(' ');

/** `smartkv eval ablation …`. */
async function ablationCommand(argv: string[], io: EvalIo): Promise<number> {
  const title = 'smartkv eval ablation [options]';
  let opts;
  try {
    opts = parseAblationOptions(argv.slice(1));
  } catch (e) {
    if (e instanceof UsageError) {
      io.err.write(`smartkv eval: ${e.message}\n\n${usage(title, ABLATION_OPTIONS)}`);
      return 2;
    }
    throw e;
  }
  if (argv.includes('--help')) {
    io.out(usage(title, ABLATION_OPTIONS));
    return 0;
  }
  return exitCodeOf(() => evalAblation(opts, io, quoteCommand(argv)), io);
}

/** `smartkv eval suite …` and `smartkv eval <task> …`. */
async function suiteCommand(argv: string[], io: EvalIo): Promise<number> {
  const only = argv[0] === 'suite' ? undefined : (argv[0] as SuiteTask);
  const title = `smartkv eval ${argv[0]} [options]`;
  let opts;
  try {
    opts = parseSuiteOptions(argv.slice(1), only);
  } catch (e) {
    if (e instanceof UsageError) {
      io.err.write(`smartkv eval: ${e.message}\n\n${usage(title, SUITE_OPTIONS)}`);
      return 2;
    }
    throw e;
  }
  if (argv.includes('--help')) {
    io.out(usage(title, SUITE_OPTIONS));
    return 0;
  }
  return exitCodeOf(() => evalSuite(opts, io, quoteCommand(argv)), io);
}

/** `smartkv eval pair …`: reads two saved runs, reruns nothing. */
function pairCommand(argv: string[], io: EvalIo): number {
  const title = 'smartkv eval pair A B --row R [options]';
  if (argv.includes('--help')) return (io.out(usage(title, PAIR_OPTIONS)), 0);
  try {
    return evalPair(argv.slice(1), io);
  } catch (e) {
    if (e instanceof UsageError) {
      io.err.write(`smartkv eval pair: ${e.message}\n\n${usage(title, PAIR_OPTIONS)}`);
      return 2;
    }
    throw e;
  }
}

/** 0 when run() finishes, 130 when it was interrupted (the services are stopped); other errors propagate. */
async function exitCodeOf(run: () => Promise<unknown>, io: EvalIo): Promise<number> {
  try {
    await run();
    return 0;
  } catch (e) {
    if (e instanceof InterruptedError) {
      io.err.write(`smartkv eval: ${e.message}; the services are stopped\n`);
      return 130;
    }
    throw e;
  }
}

/** Runs `smartkv eval …`; `argv` starts after "eval". */
export async function evalCommand(argv: string[], io: EvalIo): Promise<number> {
  if (argv[0] === 'ablation') return ablationCommand(argv, io);
  if (argv[0] === 'pair') return pairCommand(argv, io);
  if (argv[0] === 'suite' || (SUITE_TASKS as readonly string[]).includes(argv[0])) return suiteCommand(argv, io);
  const kind = argv[0] === 'ppl' || argv[0] === 'needle' ? argv[0] : null;
  const fail = (msg: string) => {
    io.err.write(`smartkv eval: ${msg}\n\n${evalUsage(kind)}`);
    return 2;
  };
  if (kind === null) return argv.includes('--help') ? (io.out(evalUsage(null)), 0) : fail(argv[0] ? `unknown evaluation ${argv[0]} (ppl, needle, suite, ablation, pair or a task: ${SUITE_TASKS.join(', ')})` : 'which evaluation? ppl, needle, suite, ablation, pair or a task');
  let opts;
  try {
    opts = parseEvalOptions(kind, argv.slice(1));
  } catch (e) {
    if (e instanceof UsageError) return fail(e.message);
    throw e;
  }
  if (argv.includes('--help')) {
    io.out(evalUsage(kind));
    return 0;
  }
  const command = quoteCommand(argv);
  return exitCodeOf(() => (kind === 'ppl' ? evalPpl(opts, io, command) : evalNeedle(opts, io, command)), io);
}
