// The paired statistics of `smartkv eval suite` against values computed by hand
// (binomial tails) and against properties any correct bootstrap must have.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { mcnemarExact, pairedAccuracy, pairedBootstrap } from '../../cli/eval-stats.js';
import { comparedBands } from '../../cli/eval-suite.js';

describe('McNemar exact test', () => {
  it('matches binomial tails computed by hand', () => {
    // b=0, c=5: 2 · 0.5^5 = 0.0625
    assert.ok(Math.abs(mcnemarExact(0, 5) - 0.0625) < 1e-12);
    // b=1, c=9: 2 · (1 + 10) / 1024 = 0.021484375
    assert.ok(Math.abs(mcnemarExact(1, 9) - 22 / 1024) < 1e-12);
    // b=2, c=10: 2 · (1 + 12 + 66) / 4096
    assert.ok(Math.abs(mcnemarExact(10, 2) - 158 / 4096) < 1e-12);
  });

  it('is 1 for no or balanced discordant pairs and symmetric in b and c', () => {
    assert.equal(mcnemarExact(0, 0), 1);
    assert.equal(mcnemarExact(7, 7), 1);
    assert.equal(mcnemarExact(3, 17), mcnemarExact(17, 3));
  });

  it('stays finite and tiny for large one-sided counts', () => {
    const p = mcnemarExact(0, 2000);
    assert.ok(p >= 0 && p < 1e-300, `p = ${p}`); // 2^-2000 underflows to 0, never NaN
    assert.ok(mcnemarExact(900, 1100) < 1e-4);
  });
});

describe('paired comparisons', () => {
  it('accuracy: counts discordant pairs, difference and a p-value from them', () => {
    const a = [true, true, true, true, true, true, true, true, false, true];
    const b = [false, false, false, false, false, false, true, true, false, true];
    const r = pairedAccuracy(a, b);
    assert.equal(r.onlyA, 6);
    assert.equal(r.onlyB, 0);
    assert.ok(Math.abs(r.diff - 0.6) < 1e-12);
    assert.ok(Math.abs(r.pValue - 2 / 64) < 1e-12);
    assert.ok(r.ci95[0] > 0 && r.ci95[1] <= 1, `ci ${r.ci95}`);
  });

  it('bootstrap: a constant shift gives that shift with a zero-width interval; noise around 0 is not significant', () => {
    const x = Array.from({ length: 50 }, (_, i) => Math.sin(i));
    const shifted = pairedBootstrap(x.map((v) => v + 0.25), x);
    assert.ok(Math.abs(shifted.diff - 0.25) < 1e-12);
    assert.ok(Math.abs(shifted.ci95[0] - 0.25) < 1e-12 && Math.abs(shifted.ci95[1] - 0.25) < 1e-12);
    assert.ok(shifted.pValue < 0.001);
    const noise = pairedBootstrap(x, x.map((v, i) => v + (i % 2 ? 0.01 : -0.01)));
    assert.ok(noise.pValue > 0.3, `p = ${noise.pValue}`);
    assert.ok(noise.ci95[0] < 0 && noise.ci95[1] > 0);
  });

  it('is deterministic for a seed and refuses unpaired input', () => {
    const a = [1, 2, 3, 4, 5.5], b = [1, 1, 2, 5, 3];
    assert.deepEqual(pairedBootstrap(a, b), pairedBootstrap(a, b));
    assert.throws(() => pairedBootstrap([1, 2], [1]), /paired/);
  });
});

describe('perplexity bands the suite compares', () => {
  it('compares ≥1K from 2K contexts and adds ≥4K only where the context has positions past 4K', () => {
    assert.deepEqual(comparedBands(1024), ['all']);
    assert.deepEqual(comparedBands(2048), ['≥1K']);
    assert.deepEqual(comparedBands(4096), ['≥1K']);
    assert.deepEqual(comparedBands(8192), ['≥1K', '≥4K']);
  });
});
