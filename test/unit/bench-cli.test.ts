// Smoke test of `smartkv bench attention --quick --json`: it runs end to end
// and every row has the documented structure.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const cli = join(root, 'bin', 'smartkv.js');
const smartkv = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { cwd: root, encoding: 'utf8', timeout: 300_000 });

const VARIANTS = ['fp16-dense', 'fp32-dense', 'int8', 'int4', 'int2', 'kivi-2', 'kivi-4', 'smartkv-0.25', 'smartkv-0.33', 'smartkv-0.5'];

describe('smartkv CLI', () => {
  it('bench attention --quick --json prints one well-formed row per line', () => {
    const r = smartkv('bench', 'attention', '--quick', '--json');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /\[1\/\d+\] mha/); // progress goes to stderr
    const rows = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const dense = rows.some((x) => x.variant === 'fp16-dense'); // absent without AVX-512
    assert.equal(rows.length, 2 * 2 * (dense ? 10 : 8));
    for (const row of rows) {
      assert.ok(row.shape === 'mha' || row.shape === 'gqa');
      assert.ok(VARIANTS.includes(row.variant as string), String(row.variant));
      for (const k of ['n', 'batch', 'achieved_beta', 'us', 'bytes', 'gbps', 'bandwidth_gbps', 'pct_bandwidth'])
        assert.ok(typeof row[k] === 'number' && (row[k] as number) > 0, `${k} = ${String(row[k])}`);
      const smart = (row.variant as string).startsWith('smartkv');
      assert.equal(row.target_beta === null, !smart);
      if (smart) assert.equal(row.target_beta, Number((row.variant as string).slice(8)));
      if (dense) assert.ok(typeof row.speedup_vs_fp16 === 'number' && row.speedup_vs_fp16 > 0);
      if (row.variant === 'fp16-dense') assert.equal(row.speedup_vs_fp16, 1);
      // engine rows are timed alternately with fp16-dense where it runs
      assert.equal(row.speedup_paired, dense && !(row.variant as string).endsWith('-dense'), String(row.variant));
    }
    const beta = (shape: string, n: number, v: string) => rows.find((x) => x.shape === shape && x.n === n && x.variant === v)!.achieved_beta as number;
    for (const shape of ['mha', 'gqa']) {
      assert.ok(beta(shape, 384, 'int2') < beta(shape, 384, 'int4') && beta(shape, 384, 'int4') < beta(shape, 384, 'int8'));
      assert.ok(beta(shape, 384, 'int8') < 1);
    }
  });

  it('bench attention --block-tokens sizes the engines\' storage blocks, and refuses sizes the engine cannot hold', () => {
    const rowsOf = (...extra: string[]) => {
      const r = smartkv('bench', 'attention', '--quick', '--json', ...extra);
      assert.equal(r.status, 0, r.stderr);
      return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    };
    const base = rowsOf(), big = rowsOf('--block-tokens', '64');
    assert.equal(base.length, big.length);
    for (const [a, b] of base.map((x, i) => [x, big[i]])) {
      const dense = (a.variant as string).endsWith('-dense');
      assert.equal(a.block_tokens, dense ? null : 32);
      assert.equal(b.block_tokens, dense ? null : 64);
      // A partly filled block is held whole: uniform caches hold more in 64-token blocks.
      if (['int8', 'int4', 'int2'].includes(a.variant as string)) assert.ok((b.hot_bytes as number) > (a.hot_bytes as number), `${String(a.variant)} n=${String(a.n)}`);
    }
    for (const bad of ['40', '0', '2048', 'x']) {
      const r = smartkv('bench', 'attention', '--quick', '--block-tokens', bad);
      assert.equal(r.status, 2);
      assert.match(r.stderr, /--block-tokens must be a multiple of 16 from 16 to 1024/);
    }
  });

  it('bench e2e --quick --json --rounds 2: paired rounds of split vs in-process per batch size', () => {
    const r = smartkv('bench', 'e2e', '--quick', '--json', '--rounds', '2');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /batch 8 round 2\/2: in-process [\d.]+, split [\d.]+ tokens\/s/);
    const rows = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const paired = rows.filter((x) => x.system === 'paired');
    assert.deepEqual(paired.map((x) => x.batch), [1, 8]);
    for (const p of paired) {
      const ratios = p.ratios as number[];
      assert.equal(ratios.length, 2);
      assert.ok(ratios.every((x) => x > 0 && Number.isFinite(x)));
      assert.equal(p.ratio_min, Math.min(...ratios));
      assert.equal(p.ratio_max, Math.max(...ratios));
      assert.ok(Math.abs((p.ratio_p50 as number) - (ratios[0] + ratios[1]) / 2) < 1e-9);
      assert.ok((p.in_process_tokens_per_s_p50 as number) > 0 && (p.split_tokens_per_s_p50 as number) > 0);
    }
    const bad = smartkv('bench', 'e2e', '--quick', '--rounds', '-1');
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--rounds must be an integer from 0 to 100/);
  });

  it('bench model --quick --json reports prefill and decode throughput of the reference model', () => {
    const r = smartkv('bench', 'model', '--quick', '--json');
    assert.equal(r.status, 0, r.stderr);
    const rows = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    // the engine alone (fp16, batch 1 and 8), then the context sweep: fp16 and smartkv β 0.25 through the in-process orchestrator
    assert.deepEqual(rows.map((x) => [x.phase, x.batch, x.policy ?? null]), [
      ['prefill', 1, null], ['decode', 1, null], ['decode', 8, null],
      ['prefill', 1, 'fp16'], ['decode', 1, 'fp16'], ['prefill', 1, 'smartkv'], ['decode', 1, 'smartkv'],
    ]);
    for (const row of rows) {
      assert.equal(row.system, 'in-process');
      assert.ok(typeof row.tokens_per_s === 'number' && row.tokens_per_s > 0);
    }
    for (const row of rows.filter((x) => x.policy && x.phase === 'decode')) {
      assert.equal(row.mode, 'downgrade-only');
      assert.ok((row.hot_bytes as number) > 0 && (row.fp16_bytes as number) > 0 && typeof row.budget_met === 'boolean');
    }
  });

  it('bench latency --quick --json: one row per system and cell, with bytes per tier and the bit-width histogram', () => {
    const r = smartkv('bench', 'latency', '--quick', '--json');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /\[6\/6\] split 256 smartkv β 0.25/); // progress goes to stderr
    const rows = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(rows.map((x) => [x.system, x.context, x.policy, x.target_beta]), [
      ['in-process', 256, 'fp16', null], ['in-process', 256, 'uniform-8', null], ['in-process', 256, 'smartkv', 0.25],
      ['split', 256, 'fp16', null], ['split', 256, 'uniform-8', null], ['split', 256, 'smartkv', 0.25],
    ]);
    for (const x of rows) {
      assert.equal(x.steps, 8);
      assert.equal(x.mode, 'downgrade-only');
      assert.equal(x.master_bytes, 0);
      for (const k of ['decode_ms_mean', 'decode_ms_p50', 'step_ms_mean', 'tokens_per_s', 'hot_bytes', 'fp16_bytes', 'achieved_beta']) assert.ok(typeof x[k] === 'number' && (x[k] as number) > 0, `${k} = ${String(x[k])}`);
      const bits = x.bits as Record<string, number>;
      // (token, layer) entries: the prompt and every decoded token but the last, in each of the 8K model's 4 layers
      assert.equal(bits['16'] + bits['8'] + bits['4'] + bits['2'] + bits.kivi, (256 + 2 + 8) * 4);
      if (x.policy === 'fp16') assert.equal(bits['16'], (256 + 2 + 8) * 4);
      if (x.policy === 'uniform-8') assert.ok(bits['8'] > 0 && bits['4'] === 0 && bits['2'] === 0);
      if (x.policy === 'smartkv') assert.ok(bits['2'] > 0 && (x.hot_bytes as number) < (rows[0].hot_bytes as number));
    }
  });

  it('prints usage for no command and rejects unknown ones', () => {
    assert.equal(smartkv().status, 2);
    const r = smartkv('bench', 'nothing');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown command/);
    assert.equal(smartkv('bench', 'attention', '--fast').status, 2);
  });
});
