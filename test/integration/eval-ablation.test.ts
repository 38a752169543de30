// `smartkv eval ablation`: the smoke run (--quick) scores every row on the
// same samples through a local split system and writes per-sample outcomes,
// rows with the knobs they sent, paired comparisons against the default row
// (per position band for longppl) and the forest plot; bad options are
// refused before anything starts.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const cli = join(root, 'bin', 'smartkv.js');
const smartkv = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { cwd: root, encoding: 'utf8', timeout: 600_000 });
const lines = (f: string) => readFileSync(f, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);

describe('smartkv eval ablation', () => {
  it('refuses unknown ablations, modes and budgets with exit code 2', () => {
    for (const args of [['--ablation', 'temperature'], ['--mode', 'lossless'], ['--budget', '1.5'], ['--samples', '0']]) {
      const r = smartkv('eval', 'ablation', ...args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /options:/);
    }
    assert.match(smartkv('eval', 'ablation', '--ablation', 'temperature').stderr, /unknown ablation temperature; one of gamma, interval, window, sinks, importance, layers, horizon, random/);
  });

  it('--quick: every row on the same samples, comparisons against default, per band for longppl', () => {
    const dir = mkdtempSync(join(tmpdir(), 'smartkv-ablation-'));
    try {
      const r = smartkv('eval', 'ablation', '--quick', '--json', '--out', dir);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /eval ablation \[#+\] 8\/8 requests/);
      const samples = lines(join(dir, 'samples.jsonl'));
      assert.equal(samples.length, 8); // 2 tasks × 1 sample × 4 rows
      const variants = ['fp16', 'default', 'importance=normalised', 'policy=random'];
      for (const task of ['passkey', 'longppl']) {
        const mine = samples.filter((s) => s.task === task);
        assert.deepEqual(mine.map((s) => s.variant).sort(), [...variants].sort());
        assert.equal(new Set(mine.map((s) => s.seed)).size, 1, 'the same sample for every row');
      }
      for (const s of samples) for (const k of ['ablation', 'variant', 'policy', 'mode', 'achieved_beta', 'hot_bytes', 'master_bytes', 'fp16_bytes', 'budget_met', 'correct', 'bitsPerByte']) assert.ok(k in s, `samples.jsonl lacks ${k}`);
      const out = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      const rows = out.filter((x) => !('compare' in x)), cmp = out.filter((x) => 'compare' in x);
      assert.deepEqual(rows.map((x) => [x.task, x.variant, x.policy, x.target_beta]), [
        ['passkey', 'fp16', 'fp16', null], ['passkey', 'default', 'smartkv', 0.25], ['passkey', 'importance=normalised', 'smartkv', 0.25], ['passkey', 'policy=random', 'random', 0.25],
        ['longppl', 'fp16', 'fp16', null], ['longppl', 'default', 'smartkv', 0.25], ['longppl', 'importance=normalised', 'smartkv', 0.25], ['longppl', 'policy=random', 'random', 0.25],
      ]);
      for (const x of rows) for (const k of ['context', 'mode', 'achieved_beta', 'hot_bytes', 'master_bytes', 'n', 'settings']) assert.ok(k in x, `row lacks ${k}`);
      assert.equal((rows[2].settings as Record<string, unknown>).importance, 'normalised');
      assert.equal((rows[1].settings as Record<string, unknown>).importance, 'accumulated');
      const ppl = rows.find((x) => x.task === 'longppl' && x.variant === 'default')!;
      assert.deepEqual(Object.keys(ppl.bits_per_byte as object).sort(), ['0-1K', 'all']);
      assert.ok((ppl.bits_per_byte as Record<string, number>).all > 0);
      // passkey: accuracy and answer bits per row; longppl: one per band (0-1K, all)
      assert.deepEqual(cmp.map((c) => [c.compare, c.task, c.metric]), [
        ...['default-vs-fp16', 'importance=normalised-vs-default', 'policy=random-vs-default'].flatMap((v) => [[v, 'passkey', 'accuracy'], [v, 'passkey', 'answer_bits']]),
        ['default-vs-fp16', 'longppl', 'bits_per_byte 0-1K'], ['default-vs-fp16', 'longppl', 'bits_per_byte all'],
        ['importance=normalised-vs-default', 'longppl', 'bits_per_byte 0-1K'], ['importance=normalised-vs-default', 'longppl', 'bits_per_byte all'],
        ['policy=random-vs-default', 'longppl', 'bits_per_byte 0-1K'], ['policy=random-vs-default', 'longppl', 'bits_per_byte all'],
      ]);
      for (const c of cmp) assert.ok(typeof c.p_value === 'number' && (c.p_value as number) <= 1 && typeof c.diff === 'number' && Array.isArray(c.ci95));
      // the differences are those of the per-sample outcomes
      const bpb = (v: string) => (samples.find((s) => s.task === 'longppl' && s.variant === v)!.bitsPerByte as Record<string, number>).all;
      const d = cmp.find((c) => c.compare === 'default-vs-fp16' && c.metric === 'bits_per_byte all')!;
      assert.ok(Math.abs((d.diff as number) - (bpb('default') - bpb('fp16'))) < 1e-4);
      assert.equal(lines(join(dir, 'rows.jsonl')).length, 8);
      assert.equal(lines(join(dir, 'compare.jsonl')).length, cmp.length);
      assert.match(readFileSync(join(dir, 'ablation.svg'), 'utf8'), /^<svg[\s\S]*policy=random[\s\S]*<\/svg>$/);
      assert.match(readFileSync(join(dir, 'command.txt'), 'utf8'), /eval ablation --quick/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
