// Streaming with stop strings: nothing past a stop string is ever sent, text
// that might start one waits, and incomplete UTF-8 waits for its last byte.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { StopText } from '../../services/orchestrator/stop-text.js';

/** Feeds `full` one character at a time; returns what was emitted and whether it stopped. */
function stream(stops: string[], full: string): { sent: string; stopped: boolean; chunks: string[] } {
  const s = new StopText(stops);
  const chunks: string[] = [];
  for (let i = 1; i <= full.length; i++) {
    const r = s.next(full.slice(0, i));
    chunks.push(r.emit);
    if (r.stopped) return { sent: chunks.join(''), stopped: true, chunks };
  }
  chunks.push(s.flush(full));
  return { sent: chunks.join(''), stopped: false, chunks };
}

test('text before a stop string is sent, the stop string and after are not', () => {
  const r = stream(['END'], 'hello ENDING more');
  assert.deepEqual([r.sent, r.stopped], ['hello ', true]);
});

test('a possible start of a stop string is held back until decided', () => {
  const s = new StopText(['\n\n']);
  assert.equal(s.next('line\n').emit, 'line');
  assert.equal(s.next('line\nx').emit, '\nx');
  const t = new StopText(['abc']);
  assert.equal(t.next('xab').emit, 'x');
  assert.deepEqual(t.next('xabc'), { emit: '', stopped: true });
});

test('the earliest of several stop strings wins', () => {
  assert.equal(stream(['zz', 'b c'], 'a b c zz').sent, 'a ');
});

test('without stop strings everything is sent, except an unfinished UTF-8 character', () => {
  const s = new StopText([]);
  assert.equal(s.next('caf\uFFFD').emit, 'caf');
  assert.equal(s.next('café').emit, 'é');
  assert.equal(s.flush('café!'), '!');
});

test('held-back text that did not become a stop string is flushed at the end', () => {
  const r = stream(['STOP'], 'the end ST');
  assert.deepEqual([r.sent, r.stopped], ['the end ST', false]);
});
