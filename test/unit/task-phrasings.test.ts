// The retrieval tasks' phrasing sets (training/tasks.mjs, training/phrasings-wide.mjs):
// evaluation phrasings and labels must never appear in training data, and the
// wide training set must be wide.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { describe, it } from 'node:test';

type Template = Record<string, string>;
type Set = Record<string, Template[]>;
interface TasksModule {
  phrasingSet(name: string): Set;
  makeTaskSample(o: Record<string, unknown>): { text: string; answerSpans: [number, number][]; turns: { answer: string }[] };
  EVAL_LABELS: string[];
  TRAIN_LABELS: string[];
}
interface WideModule { HELDOUT_MARKERS: string[]; WIDE_TRAIN_LABELS: string[] }

async function training<T>(file: string): Promise<T> {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const f = join(dir, 'training', file);
    if (existsSync(f)) return (await import(pathToFileURL(f).href)) as T;
    dir = resolve(dir, '..');
  }
  throw new Error(`training/${file} not found`);
}

const strings = (set: Set) => Object.values(set).flatMap((ts) => ts.flatMap((t) => Object.values(t)));

describe('task phrasings', () => {
  it('the wide training set has hundreds of phrasings per task and no held-out marker', async () => {
    const tasks = await training<TasksModule>('tasks.mjs');
    const wide = await training<WideModule>('phrasings-wide.mjs');
    const set = tasks.phrasingSet('train-wide');
    for (const name of ['passkey', 'labelled', 'multivalue', 'vartrack']) {
      const distinct = new globalThis.Set(set[name].map((t) => JSON.stringify(t)));
      assert.ok(distinct.size >= ({ vartrack: 60, multivalue: 250 }[name] ?? 300), `${name}: only ${distinct.size} distinct phrasings`);
    }
    for (const s of strings(set)) {
      for (const m of wide.HELDOUT_MARKERS) assert.ok(!s.includes(m), `training phrasing "${s}" contains held-out marker "${m}"`);
    }
  });

  it('every held-out template contains a marker and is absent from both training sets', async () => {
    const tasks = await training<TasksModule>('tasks.mjs');
    const wide = await training<WideModule>('phrasings-wide.mjs');
    const heldout = tasks.phrasingSet('heldout');
    const train = new globalThis.Set([...strings(tasks.phrasingSet('train')), ...strings(tasks.phrasingSet('train-wide'))]);
    for (const [task, ts] of Object.entries(heldout)) {
      for (const t of ts) {
        const facts = Object.entries(t).filter(([k]) => k !== 'ask').map(([, v]) => v);
        assert.ok(facts.some((f) => wide.HELDOUT_MARKERS.some((m) => f.includes(m))) || wide.HELDOUT_MARKERS.some((m) => t.ask.includes(m)),
          `${task} held-out template ${JSON.stringify(t)} has no marker`);
        for (const v of Object.values(t)) assert.ok(!train.has(v), `${task}: held-out "${v}" is a training phrasing`);
      }
    }
  });

  it('training labels and evaluation labels are disjoint', async () => {
    const tasks = await training<TasksModule>('tasks.mjs');
    const wide = await training<WideModule>('phrasings-wide.mjs');
    const evalLabels = new globalThis.Set(tasks.EVAL_LABELS);
    for (const l of [...tasks.TRAIN_LABELS, ...wide.WIDE_TRAIN_LABELS]) assert.ok(!evalLabels.has(l), `label ${l} is in both sets`);
    assert.equal(new globalThis.Set(wide.WIDE_TRAIN_LABELS).size, wide.WIDE_TRAIN_LABELS.length, 'duplicate wide label');
  });

  it('train-wide samples answer what they ask, and an unknown set is an error', async () => {
    const tasks = await training<TasksModule>('tasks.mjs');
    const documents = [{ name: 'd', text: 'plain filler words for the test '.repeat(200) }];
    for (const task of ['passkey', 'multikey', 'multivalue', 'multiquery', 'vartrack', 'multiturn']) {
      for (let seed = 1; seed <= 20; seed++) {
        const s = tasks.makeTaskSample({ task, seed, totalBytes: 1500, phrasing: 'train-wide', documents });
        const buf = Buffer.from(s.text, 'utf8');
        s.answerSpans.forEach(([a, e], i) => assert.equal(buf.subarray(a, e).toString('utf8'), s.turns[i].answer));
        // Every answer's key (5 digits) occurs in the context before the question.
        for (const key of s.turns.flatMap((t) => t.answer.match(/\d{5}/g) ?? [])) {
          assert.ok(buf.subarray(0, s.answerSpans[0][0]).toString('utf8').includes(key), `${task} seed ${seed}: key ${key} not in context`);
        }
      }
    }
    assert.throws(() => tasks.makeTaskSample({ task: 'passkey', seed: 1, totalBytes: 500, phrasing: 'nope', documents }), /unknown phrasing set nope/);
  });
});
