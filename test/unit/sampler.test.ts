import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { argmax, sample, seededRng } from '../../services/orchestrator/model/sampler.js';

const logits = Float32Array.from([0.1, 2.5, -1, 2.4, 0.3, 1.9]);

describe('sampler', () => {
  it('greedy is argmax, whatever the RNG', () => {
    assert.equal(argmax(logits), 1);
    assert.equal(sample(logits, { temperature: 0, topK: 0, topP: 1 }, () => 0.99), 1);
  });

  it('is a pure function of logits, parameters and seed', () => {
    const draw = (seed: number) => {
      const r = seededRng(seed);
      return Array.from({ length: 50 }, () => sample(logits, { temperature: 1, topK: 0, topP: 1 }, r));
    };
    assert.deepEqual(draw(7), draw(7));
    assert.notDeepEqual(draw(7), draw(8));
    assert.ok(new Set(draw(7)).size > 2, 'temperature 1 spreads over several tokens');
  });

  it('top-k = 1 and a tiny top-p both collapse to the argmax', () => {
    const r = seededRng(3);
    for (let i = 0; i < 20; i++) {
      assert.equal(sample(logits, { temperature: 1, topK: 1, topP: 1 }, r), 1);
      assert.equal(sample(logits, { temperature: 1, topK: 0, topP: 1e-6 }, r), 1);
    }
  });

  it('top-k = 2 only returns the two best tokens', () => {
    const r = seededRng(5);
    for (let i = 0; i < 100; i++) assert.ok([1, 3].includes(sample(logits, { temperature: 2, topK: 2, topP: 1 }, r)));
  });
});
