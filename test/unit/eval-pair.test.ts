// `smartkv eval pair`: two saved runs' samples paired by (task, context,
// seed) for the named rows; unpaired samples counted, not compared; clear
// usage errors for rows a run lacks, ambiguous β and runs with no common seed.
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { pairRuns, parseRow, readSamples, type SavedSample } from '../../cli/eval-pair.js';
import { evalCommand } from '../../cli/eval-cli.js';
import { UsageError } from '../../services/common/args.js';

const root = mkdtempSync(join(tmpdir(), 'smartkv-pair-'));
const sample = (seed: number, policy: string, beta: number | null, correct: boolean, bits: number): SavedSample => ({
  task: 'passkey', context: 4096, seed, policy, mode: 'downgrade-only', target_beta: beta, correct, answerBits: bits,
});
function run(name: string, samples: SavedSample[]): string {
  const dir = join(root, name);
  mkdirSync(dir);
  writeFileSync(join(dir, 'samples.jsonl'), samples.map((s) => JSON.stringify(s)).join('\n') + '\n');
  return dir;
}

describe('eval pair', () => {
  after(() => rmSync(root, { recursive: true, force: true }));
  // A: seeds 1–4 right with 0.5 bits; B: seeds 2–5, right only on 2, 1.0 bits; fp16 rows to be ignored.
  const a = run('a', [1, 2, 3, 4].flatMap((s) => [sample(s, 'smartkv', 0.25, true, 0.5), sample(s, 'fp16', null, true, 0.1)]));
  const b = run('b', [2, 3, 4, 5].flatMap((s) => [sample(s, 'smartkv', 0.25, s === 2, 1.0), sample(s, 'smartkv', 0.2, false, 2.0)]));

  it('pairs the shared seeds of the named rows and compares accuracy and answer bits', () => {
    const cmp = pairRuns(readSamples(a), readSamples(b), parseRow('smartkv@0.25'), parseRow('smartkv@0.25'), 'a vs b');
    assert.deepEqual(cmp.map((c) => [c.metric, c.n, c.only_a, c.only_b]), [['accuracy', 3, 1, 1], ['answer_bits', 3, 1, 1]]);
    const [acc, bits] = cmp;
    assert.deepEqual([acc.a, acc.b, acc.diff], [1, 0.3333, 0.6667]);
    assert.deepEqual([bits.a, bits.b, bits.diff], [0.5, 1, -0.5]);
    assert.ok(acc.p_value > 0.2, 'two discordant pairs cannot be significant');
  });

  it('refuses a row a run lacks, a β left ambiguous, and runs without common seeds', () => {
    const code = (e: Error) => e instanceof UsageError && /cannot be read/.test(e.message);
    assert.throws(() => pairRuns(readSamples(a), readSamples(b), parseRow('random@0.25'), parseRow('smartkv@0.25'), ''), /run A has no samples of row random@0.25/);
    assert.throws(() => pairRuns(readSamples(a), readSamples(b), parseRow('smartkv@0.25'), parseRow('smartkv'), ''), /several β \(0.25, 0.2\)/);
    const c = run('c', [7, 8].map((s) => sample(s, 'smartkv', 0.25, true, 0.5)));
    assert.throws(() => pairRuns(readSamples(a), readSamples(c), parseRow('smartkv@0.25'), parseRow('smartkv@0.25'), ''), /share no seed/);
    assert.throws(() => parseRow('smartkv@2'), /β must be a number in \(0, 1\]/);
    assert.throws(() => readSamples(join(root, 'missing')), code);
  });

  it('runs from the command line: a table, or JSON lines; exit 2 on bad usage', async () => {
    const out: string[] = [], err: string[] = [];
    const io = { out: (l: string) => out.push(l), err: { write: (s: string) => (err.push(s), true) } } as unknown as Parameters<typeof evalCommand>[1];
    assert.equal(await evalCommand(['pair', a, b, '--row', 'smartkv@0.25', '--json'], io), 0);
    assert.deepEqual(out.map((l) => JSON.parse(l).metric), ['accuracy', 'answer_bits']);
    out.length = 0;
    assert.equal(await evalCommand(['pair', '--row=smartkv@0.25', a, '--json', b], io), 0); // options anywhere, inline values too
    assert.equal(out.length, 2);
    assert.equal(await evalCommand(['pair', a, '--row', 'smartkv@0.25'], io), 2);
    assert.match(err.join(''), /two result folders, A and B, got 1/);
  });
});
