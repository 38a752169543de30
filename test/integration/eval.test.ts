// Smoke test of `smartkv eval ppl|needle --quick --json`: each starts a local
// split system, measures every policy (budgeted ones at each β) through the
// gRPC API and prints one well-formed row per line. Structure only — the
// values are the evaluation's business, not the test's.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { POLICY_NAMES } from '../../services/common/policy.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const cli = join(root, 'bin', 'smartkv.js');
const smartkv = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { cwd: root, encoding: 'utf8', timeout: 180_000 });

const BUDGETED = ['random', 'tiered', 'smartkv'];
const BUDGETS = [0.25, 0.33, 0.5];
/** (policy, target_beta) of every row, in order. */
const EXPECTED: [string, number | null][] = POLICY_NAMES.flatMap((p): [string, number | null][] => (BUDGETED.includes(p) ? BUDGETS.map((b): [string, number | null] => [p, b]) : [[p, null]]));

const finite = (x: unknown) => typeof x === 'number' && Number.isFinite(x);

function jsonRows(stdout: string): Record<string, unknown>[] {
  return stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('smartkv eval', () => {
  it('rejects unknown evaluations, policies and options with exit code 2, before starting anything', () => {
    for (const args of [['eval'], ['eval', 'speed'], ['eval', 'ppl', '--policy', 'fp8'], ['eval', 'needle', '--budget', '1.5'], ['eval', 'ppl', '--fast'], ['eval', 'ppl', '--seeds', '2'], ['eval', 'needle', '--gamma', '1'], ['eval', 'ppl', '--quant', 'nf4'], ['eval', 'needle', '--window', '-1']]) {
      const r = smartkv(...args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /usage|options/);
    }
    assert.match(smartkv('eval', 'ppl', '--policy', 'fp8').stderr, /unknown policy fp8/);
    assert.match(smartkv('eval', 'needle', '--gamma', '1').stderr, /--gamma must be in \[0, 1\)/);
  });

  it('ppl --quick --json: one row per policy × budget with finite perplexity, β and histogram; --markdown writes a section', () => {
    const dir = mkdtempSync(join(tmpdir(), 'smartkv-eval-'));
    try {
      const md = join(dir, 'eval.md');
      const r = smartkv('eval', 'ppl', '--quick', '--json', '--markdown', md);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, new RegExp(`eval ppl \\[#+\\] ${EXPECTED.length}/${EXPECTED.length} requests`)); // the progress bar goes to stderr
      const rows = jsonRows(r.stdout);
      assert.deepEqual(rows.map((x) => [x.policy, x.target_beta]), EXPECTED);
      for (const row of rows) {
        assert.equal(row.eval, 'ppl');
        for (const k of ['achieved_beta', 'ppl', 'bits_per_byte', 'nll_per_token']) assert.ok(finite(row[k]) && (row[k] as number) > 0, `${k} = ${String(row[k])}`);
        assert.equal(row.windows, 1);
        assert.ok(finite(row.tokens) && (row.tokens as number) > 100);
        const h = row.histogram as Record<string, number>;
        assert.deepEqual(Object.keys(h).sort(), ['bits16', 'bits2', 'bits4', 'bits8', 'kivi']);
        const sum = Object.values(h).reduce((a, x) => a + x, 0);
        assert.ok(Math.abs(sum - 1) < 1e-3, `histogram sums to ${sum}`);
        assert.ok(row.policy === 'fp16' ? row.ppl_increase === 0 : finite(row.ppl_increase));
        // The bytes, under the report names: downgrade-only (the default) holds no master bytes.
        assert.equal(row.mode, 'downgrade-only');
        assert.ok(finite(row.hot_bytes) && finite(row.fp16_bytes) && (row.hot_bytes as number) > 0);
        assert.equal(row.master_bytes, 0);
        assert.equal(typeof row.budget_met, 'boolean');
        if (row.target_beta === null) assert.equal(row.budget_met, true);
        // One Allocate call per reallocation.
        assert.equal(row.allocate_calls, row.reallocations);
      }
      const text = readFileSync(md, 'utf8');
      assert.match(text, /<!-- smartkv eval ppl: begin/);
      assert.match(text, /\| smartkv \| 0\.25 \|/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('needle --quick --json --mode reversible: a row per policy × budget × context × depth, with per-context and per-policy summaries', () => {
    const r = smartkv('eval', 'needle', '--quick', '--json', '--mode', 'reversible');
    assert.equal(r.status, 0, r.stderr);
    const rows = jsonRows(r.stdout);
    const summaries = rows.filter((x) => x.kind === 'policy');
    assert.deepEqual(summaries.map((x) => [x.policy, x.target_beta]), EXPECTED);
    const cells = rows.filter((x) => x.kind === 'cell');
    assert.equal(cells.length, EXPECTED.length * 2 * 2);
    assert.equal(rows.filter((x) => x.kind === 'context').length, EXPECTED.length * 2);
    for (const row of rows) {
      assert.equal(row.eval, 'needle');
      assert.ok(finite(row.accuracy) && (row.accuracy as number) >= 0 && (row.accuracy as number) <= 1);
      assert.ok(finite(row.achieved_beta) && (row.achieved_beta as number) > 0);
      assert.equal(row.correct, Math.round((row.accuracy as number) * (row.samples as number)));
      assert.equal(row.mode, 'reversible');
      // Mixed-storage rows keep master copies in the master tier; KIVI sequences take no plans and keep none.
      const kivi = (row.policy as string).startsWith('kivi');
      assert.ok(kivi ? row.master_bytes === 0 : (row.master_bytes as number) >= (row.fp16_bytes as number), `${String(row.policy)}: master ${String(row.master_bytes)}`);
    }
    for (const c of cells) assert.ok(finite(c.context_bytes) && finite(c.depth) && c.samples === 1);
    for (const s of summaries) assert.equal(s.samples, 4);
  });
});
