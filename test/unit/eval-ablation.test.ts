// The rows of `smartkv eval ablation` and the requests they send: every row
// is the default configuration with one knob changed, the grid is
// covered, and each row's CacheSettings, read by the orchestrator's own
// request parser, gives back exactly the knobs the row names. Also the
// latency sweep's rows and its long-position copy of a model folder.
import assert from 'node:assert/strict';
import { existsSync, lstatSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { ABLATION_NAMES, ablationRows, ablationSettings, bandsAt, DEFAULT_KNOBS, focusBand, parseAblationOptions, type Knobs } from '../../cli/eval-ablation.js';
import { latencyCells, longPositionCopy, parseLatencyOptions } from '../../cli/bench-latency.js';
import { contextSeedIndex } from '../../cli/eval-tasks.js';
import { UsageError } from '../../services/common/args.js';
import { DEFAULTS, resolveCache } from '../../services/orchestrator/settings.js';

const changed = (k: Knobs) => (Object.keys(k) as (keyof Knobs)[]).filter((f) => k[f] !== DEFAULT_KNOBS[f]);

describe('eval ablation rows', () => {
  const rows = ablationRows([...ABLATION_NAMES]);

  it('are fp16, default, then one changed knob per variant, covering the issue grid', () => {
    assert.deepEqual(rows.slice(0, 2).map((r) => r.variant), ['fp16', 'default']);
    assert.deepEqual(rows[1].knobs, DEFAULT_KNOBS);
    for (const r of rows.slice(2)) assert.equal(changed(r.knobs).length, 1, `${r.variant} changes ${changed(r.knobs).join(', ')}`);
    const values = (f: keyof Knobs) => [DEFAULT_KNOBS[f], ...rows.slice(2).filter((r) => changed(r.knobs)[0] === f).map((r) => r.knobs[f])].sort();
    assert.deepEqual(values('gamma'), [0.85, 0.9, 0.95]);
    assert.deepEqual(values('interval'), [16, 32, 4, 64, 8]); // {4, 8, 16, 32, 64}, sorted as strings
    assert.deepEqual(values('window'), [0, 16, 256, 64]);
    assert.deepEqual(values('sinks'), [0, 16, 4]);
    assert.deepEqual(values('importance'), ['accumulated', 'normalised']);
    assert.deepEqual(values('layers'), ['per-layer', 'shared']);
    assert.deepEqual(values('horizon'), ['end', 'now', 'prompt']);
    assert.deepEqual(values('policy'), ['random', 'smartkv']);
    assert.equal(new Set(rows.map((r) => r.variant)).size, rows.length, 'variant names are unique');
  });

  it('--horizon moves the default row and every variant but the horizon ablation\'s own', () => {
    const end = ablationRows(['gamma', 'horizon'], { ...DEFAULT_KNOBS, horizon: 'end' });
    assert.ok(end.filter((r) => r.ablation !== 'horizon').every((r) => r.knobs.horizon === 'end'));
    assert.deepEqual(end.filter((r) => r.ablation === 'horizon').map((r) => r.knobs.horizon).sort(), ['now', 'prompt']);
    assert.equal(parseAblationOptions(['--horizon', 'end']).horizon, 'end');
    assert.throws(() => parseAblationOptions(['--horizon', 'later']), /--horizon must be now, prompt, end; got later/);
  });

  it('send every knob, and the orchestrator reads back exactly the row\'s knobs', () => {
    for (const r of rows) {
      const c = resolveCache(ablationSettings(r.knobs, 0.33, 'reversible'), DEFAULTS);
      assert.deepEqual(
        { policy: c.policy, gamma: c.gamma, interval: c.reallocInterval, window: c.window, sinks: c.sinks, normalised: c.normalised, perLayer: c.perLayer, mode: c.mode, horizon: c.horizon },
        { policy: r.knobs.policy, gamma: r.knobs.gamma, interval: r.knobs.interval, window: r.knobs.window, sinks: r.knobs.sinks, normalised: r.knobs.importance === 'normalised', perLayer: r.knobs.layers === 'per-layer', mode: 'reversible', horizon: r.knobs.horizon },
        r.variant,
      );
      assert.equal(c.beta, r.knobs.policy === 'fp16' ? 1 : 0.33);
      // nothing is left to the server's defaults: a server started otherwise reads the same
      const other = resolveCache(ablationSettings(r.knobs, 0.33, 'reversible'), { ...DEFAULTS, cache: { ...DEFAULTS.cache, gamma: 0.5, reallocInterval: 3, window: 7, sinks: 9, normalised: !DEFAULTS.cache.normalised, perLayer: !DEFAULTS.cache.perLayer, horizon: DEFAULTS.cache.horizon === 'now' ? 'prompt' : 'now' } });
      assert.deepEqual(other, c, `${r.variant} depends on the server's defaults`);
    }
  });

  it('asks only for the named ablations', () => {
    assert.deepEqual(ablationRows(['random', 'gamma']).map((r) => r.variant), ['fp16', 'default', 'gamma=0.85', 'gamma=0.95', 'policy=random']);
  });

  it('position bands: those a context reaches, and the farthest as the focus', () => {
    assert.deepEqual(bandsAt(512), ['0-1K', 'all']);
    assert.deepEqual(bandsAt(2048), ['0-1K', '≥1K', 'all']);
    assert.deepEqual(bandsAt(8192), ['0-1K', '≥1K', '≥4K', 'all']);
    assert.deepEqual([focusBand(1024), focusBand(2048), focusBand(8192)], ['all', '≥1K', '≥4K']);
  });

  it('options: defaults, --quick, and clear usage errors', () => {
    const d = parseAblationOptions([]);
    assert.deepEqual([d.ablations.length, d.tasks, d.contexts, d.budget, d.mode, d.seeds, d.samples], [ABLATION_NAMES.length, ['longppl', 'multikey'], [4096], 0.25, 'downgrade-only', 'dev', 4]);
    const q = parseAblationOptions(['--quick']);
    assert.deepEqual([q.ablations, q.tasks, q.contexts, q.samples], [['importance', 'random'], ['passkey', 'longppl'], [512], 1]);
    for (const [args, msg] of [[['--ablation', 'temperature'], /unknown ablation temperature/], [['--budget', '0'], /--budget must be in \(0, 1\]/], [['--mode', 'lossless'], /--mode must be/], [['--seeds', 'train'], /--seeds must be dev or test/], [['--context', '10'], /--context must be/]] as const)
      assert.throws(() => parseAblationOptions(args), (e: unknown) => e instanceof UsageError && msg.test(e.message));
  });

  it('a (task, context) cell has stable seeds: the context index is log2(context / 256)', () => {
    assert.deepEqual([1024, 2048, 4096, 8192].map(contextSeedIndex), [2, 3, 4, 5]);
  });
});

describe('bench latency', () => {
  it('rows: fp16 and uniform-8 once, smartkv at each β in each mode', () => {
    const cells = latencyCells({ budgets: [0.25, 0.5], modes: ['downgrade-only', 'reversible'] });
    assert.deepEqual(cells.map((c) => `${c.policy}/${c.beta}/${c.mode}`), [
      'fp16/null/downgrade-only', 'uniform-8/null/downgrade-only',
      'smartkv/0.25/downgrade-only', 'smartkv/0.5/downgrade-only', 'smartkv/0.25/reversible', 'smartkv/0.5/reversible',
    ]);
    const d = parseLatencyOptions(['--model', '/nowhere']);
    assert.deepEqual([d.contexts, d.budgets, d.systems, d.modes, d.warmup, d.steps], [[4096, 8192, 16384, 32768, 49152], [0.25, 0.33, 0.4, 0.5], ['in-process', 'split'], ['downgrade-only'], 10, 80]);
    assert.throws(() => parseLatencyOptions(['--system', 'gpu']), /--system must be in-process or split/);
    assert.throws(() => parseLatencyOptions(['--budget', '2']), /--budget must be a number in \(0, 1\]/);
  });

  it('the long-position copy raises max_position_embeddings and links every other file', () => {
    const src = mkdtempSync(join(tmpdir(), 'smartkv-model-src-'));
    let copy = '';
    try {
      writeFileSync(join(src, 'config.json'), JSON.stringify({ max_position_embeddings: 8192, rope_theta: 10000 }));
      writeFileSync(join(src, 'model.safetensors'), 'weights');
      copy = longPositionCopy(src, 49_242);
      const cfg = JSON.parse(readFileSync(join(copy, 'config.json'), 'utf8')) as Record<string, number>;
      assert.deepEqual(cfg, { max_position_embeddings: 49_242, rope_theta: 10000 });
      assert.ok(lstatSync(join(copy, 'model.safetensors')).isSymbolicLink());
      assert.equal(readFileSync(join(copy, 'model.safetensors'), 'utf8'), 'weights');
      assert.equal(JSON.parse(readFileSync(join(src, 'config.json'), 'utf8')).max_position_embeddings, 8192, 'the source is untouched');
    } finally {
      rmSync(src, { recursive: true, force: true });
      if (copy) rmSync(copy, { recursive: true, force: true });
    }
    assert.ok(!existsSync(src));
  });
});
