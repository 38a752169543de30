// The `smartkv` command line. Subcommands register here; this issue has
// `bench attention` (later: generate, eval, …).
import { benchAttention } from './bench-attention.js';

const USAGE = `usage: smartkv <command>

commands:
  bench attention [--json] [--quick]   decode attention: dense fp32/fp16, uniform int8/int4/int2,
                                       KIVI-2/4 and SmartKV mixes (β = 0.25, 0.33, 0.5)
`;

async function main(argv: string[]): Promise<number> {
  const flags = new Set(argv.filter((a) => a.startsWith('--')));
  const words = argv.filter((a) => !a.startsWith('--'));
  if (flags.has('--help') || words.length === 0) {
    process.stdout.write(USAGE);
    return words.length === 0 && !flags.has('--help') ? 2 : 0;
  }
  if (words[0] === 'bench' && words[1] === 'attention' && words.length === 2) {
    const unknown = [...flags].filter((f) => f !== '--json' && f !== '--quick');
    if (unknown.length) return usageError(`unknown option ${unknown[0]}`);
    await benchAttention(
      { json: flags.has('--json'), quick: flags.has('--quick') },
      { out: (l) => process.stdout.write(`${l}\n`), progress: (l) => process.stderr.write(`${l}\n`) },
    );
    return 0;
  }
  return usageError(`unknown command: ${words.join(' ')}`);
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
