// `smartkv eval suite`: the smoke run (--quick) writes per-sample outcomes,
// rows, paired comparisons and SVG frontiers with the report's field names;
// bad options are refused before anything starts; and Score — the suite's
// scoring path — gives the same results for a request alone or in a batch
// (batch invariance: what a sample scores never depends on which requests
// shared its steps).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { create } from '@bufbuild/protobuf';

import { CacheSettingsSchema } from '../../gen/smartkv/v1/common_pb.js';
import { ScoreRequestSchema, type ScoreResponse } from '../../gen/smartkv/v1/generation_pb.js';
import { EvalClient } from '../../cli/eval-common.js';
import { buildSamples } from '../../cli/eval-tasks.js';
import { modeToPb, policyToPb } from '../../services/common/policy.js';
import { Cluster } from '../../services/launcher/cluster.js';
import { collectLogs } from '../helpers/services.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const cli = join(root, 'bin', 'smartkv.js');
const smartkv = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { cwd: root, encoding: 'utf8', timeout: 300_000 });
const lines = (f: string) => readFileSync(f, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);

describe('smartkv eval suite', () => {
  it('refuses unknown tasks, seeds, modes and sizes with exit code 2', () => {
    for (const args of [['eval', 'suite', '--task', 'sudoku'], ['eval', 'suite', '--seeds', 'train'], ['eval', 'multikey', '--mode', 'lossless'], ['eval', 'suite', '--samples', '0'], ['eval', 'passkey', '--concurrency', '0'], ['eval', 'suite', '--horizon', 'later']]) {
      const r = smartkv(...args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /options/);
    }
    assert.match(smartkv('eval', 'suite', '--seeds', 'train').stderr, /--seeds must be dev or test/);
    assert.match(smartkv('eval', 'suite', '--horizon', 'later').stderr, /--horizon must be now, prompt, end; got later/);
  });

  it('--quick writes samples, rows, comparisons and frontiers with the report fields', () => {
    const dir = mkdtempSync(join(tmpdir(), 'smartkv-suite-'));
    try {
      const r = smartkv('eval', 'suite', '--quick', '--json', '--out', dir);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /eval suite \[#+\] 6\/6 requests/);
      const samples = lines(join(dir, 'samples.jsonl'));
      assert.equal(samples.length, 6); // 2 tasks × 1 context × 1 sample × 3 rows
      for (const s of samples) {
        for (const k of ['task', 'context', 'seed', 'policy', 'mode', 'achieved_beta', 'hot_bytes', 'master_bytes', 'fp16_bytes', 'budget_met', 'correct', 'turns']) assert.ok(k in s, `samples.jsonl lacks ${k}`);
        assert.ok((s.hot_bytes as number) > 0 && (s.fp16_bytes as number) > 0);
        assert.ok((s.peak_hot_bytes as number) >= (s.hot_bytes as number), `peak ${s.peak_hot_bytes} below the end's ${s.hot_bytes}`);
        assert.equal(s.master_bytes, 0); // downgrade-only holds no master copy
        assert.ok((s.seed as number) >= 2_000_000_000 && (s.seed as number) < 3_000_000_000, 'dev seeds by default');
      }
      const fp16 = samples.find((s) => s.policy === 'fp16')!;
      assert.ok(Math.abs((fp16.hot_bytes as number) / (fp16.fp16_bytes as number) - (fp16.achieved_beta as number)) < 0.01);
      const out = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      const rows = out.filter((x) => !('compare' in x)), cmp = out.filter((x) => 'compare' in x);
      assert.deepEqual(rows.map((x) => [x.task, x.policy, x.target_beta]), [
        ['passkey', 'fp16', null], ['passkey', 'uniform-2', null], ['passkey', 'smartkv', 0.33],
        ['multikey', 'fp16', null], ['multikey', 'uniform-2', null], ['multikey', 'smartkv', 0.33],
      ]);
      for (const x of rows) for (const k of ['context', 'mode', 'achieved_beta', 'hot_bytes', 'peak_hot_bytes', 'master_bytes', 'n', 'accuracy']) assert.ok(k in x, `row lacks ${k}`);
      const pairs = [['smartkv-vs-uniform-2', 'passkey'], ['smartkv-vs-fp16', 'passkey'], ['smartkv-vs-uniform-2', 'multikey'], ['smartkv-vs-fp16', 'multikey']];
      // each pair twice: accuracy (McNemar) and answer bits (paired bootstrap)
      assert.deepEqual(cmp.map((c) => [c.compare, c.task, c.metric]), pairs.flatMap(([c, t]) => [[c, t, 'accuracy'], [c, t, 'answer_bits']]));
      for (const x of rows) assert.ok((x.answer_bits as number) > 0, `row answer_bits ${x.answer_bits}`);
      for (const s of samples) assert.ok((s.answerBits as number) > 0, `sample answerBits ${s.answerBits}`);
      for (const c of cmp) assert.ok(typeof c.p_value === 'number' && (c.p_value as number) <= 1 && typeof c.diff === 'number');
      for (const f of ['rows.jsonl', 'compare.jsonl', 'command.txt']) assert.ok(existsSync(join(dir, f)), f);
      for (const f of ['frontier-hot.svg', 'frontier-total.svg', 'frontier-peak.svg', 'frontier-answer-bits.svg']) assert.match(readFileSync(join(dir, f), 'utf8'), /^<svg[\s\S]*smartkv[\s\S]*<\/svg>$/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('Score is batch-invariant', () => {
  let cluster: Cluster;
  let client: EvalClient;
  const logs = collectLogs();
  before(async () => {
    cluster = await Cluster.start({ cacheShards: 1, log: logs.log });
    client = new EvalClient(cluster.address, undefined, 'downgrade-only');
  });
  after(async () => {
    client?.close();
    await cluster?.stop();
  });

  it('four planned requests score the same alone and together (logprobs, greedy tokens, bytes)', async () => {
    const samples = await buildSamples(['multikey', 'passkey'], [900], 2, 'dev');
    const req = (i: number) => create(ScoreRequestSchema, {
      text: samples[i].text,
      prefillTokens: samples[i].prefillTokens,
      cache: create(CacheSettingsSchema, { policy: policyToPb('smartkv'), budget: 0.33, mode: modeToPb('downgrade-only') }),
    });
    const alone: ScoreResponse[] = [];
    for (let i = 0; i < samples.length; i++) alone.push(await client.scoreRequest(req(i)));
    const together = await Promise.all(samples.map((_s, i) => client.scoreRequest(req(i))));
    assert.ok(together.some((r) => (r.summary?.peakBatch ?? 0) > 1), 'the concurrent requests shared steps');
    for (let i = 0; i < samples.length; i++) {
      assert.ok((alone[i].summary?.reallocations ?? 0) > 2, 'plans were made');
      assert.deepEqual(together[i].logprobs, alone[i].logprobs, `sample ${i}: logprobs differ alone vs in a batch`);
      assert.deepEqual(together[i].topTokenIds, alone[i].topTokenIds);
      assert.equal(together[i].summary?.budget?.hotBytes, alone[i].summary?.budget?.hotBytes);
    }
  });
});
