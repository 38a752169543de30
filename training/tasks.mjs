// Long-context retrieval tasks for the SmartKV reference model (plain Node ESM).
//
// One generator per task, shared by training (training/prepare-data.mjs writes
// samples with training phrasings and seeds) and evaluation (`smartkv eval`
// uses the held-out phrasings and the dev/test seeds, never the training ones).
//
// A sample is a context followed by one or more turns:
//
//   text = context + turns[0].question + turns[0].answer
//                  + turns[1].gap + turns[1].question + turns[1].answer + …
//
// `gap` is filler text between turns (multi-turn: the question arrives long
// after the context and after other questions). Answers are what the model
// must produce; `answerSpans` are their UTF-8 byte ranges in `text` (training
// weights them; evaluation scores them turn by turn, each given the earlier
// turns with their correct answers).
//
// Tasks (RULER-style, scaled to a 3M-parameter byte-level model):
//   passkey     one key in the filler; asked once
//   multikey    K labelled keys of the same shape, one asked (niah_multikey)
//   multivalue  several values of one label among distractor labels; all asked
//   multiquery  several labelled keys; asked one after another
//   vartrack    a chain of assignments X = 12345 … Y = X … Z = Y; the last asked
//   multiturn   labelled keys; filler after the context and between questions
//
// Phrasings: every task has TRAIN phrasings (used by training) and HELD-OUT
// phrasings (used only by evaluation). Seeds: training samples use seeds from
// TASK_TRAIN_SEED_BASE; evaluation declares DEV seeds (for tuning) and TEST
// seeds (published tables, used once), disjoint from each other and training.

import { mulberry32 } from './corpus.mjs';
import { WIDE_PHRASINGS, WIDE_TRAIN_LABELS } from './phrasings-wide.mjs';

export const TASK_NAMES = ['passkey', 'multikey', 'multivalue', 'multiquery', 'vartrack', 'multiturn'];
export const TASK_TRAIN_SEED_BASE = 100_000_000;
export const TASK_DEV_SEED_BASE = 2_000_000_000;
export const TASK_TEST_SEED_BASE = 3_000_000_000;

const byteLen = (s) => Buffer.byteLength(s, 'utf8');

// ---------------------------------------------------------------------------
// Phrasings. {K} is a key (5 digits), {L} a label. `ask` ends with the prefix
// the answer completes, so one greedy continuation scores it.

export const PHRASINGS = {
  passkey: {
    train: [
      { fact: 'The pass key is {K}. Remember it. {K} is the pass key.', ask: 'What is the pass key? The pass key is ' },
      { fact: 'The secret code is {K}. Keep it in mind.', ask: 'What is the secret code? The secret code is ' },
      { fact: 'Important: the access number is {K}.', ask: 'Recall the access number. The access number is ' },
      { fact: 'Note that the hidden key is {K}. Do not forget it.', ask: 'Which hidden key was given? The hidden key is ' },
    ],
    heldout: [
      { fact: 'Here is a number to memorise: the magic key is {K}.', ask: 'Now tell me the magic key. The magic key is ' },
      { fact: 'The password for today is {K}.', ask: 'What was the password for today? The password for today is ' },
    ],
  },
  // multikey, multiquery and multiturn share the labelled-fact phrasings.
  labelled: {
    train: [
      { fact: 'The special number for {L} is {K}.', ask: 'What is the special number for {L}? The special number for {L} is ' },
      { fact: '{L} has the code {K}.', ask: 'Which code does {L} have? {L} has the code ' },
      { fact: 'Key of {L}: {K}.', ask: 'Give the key of {L}. Key of {L}: ' },
    ],
    heldout: [
      { fact: 'The magic value assigned to {L} is {K}.', ask: 'Tell me the magic value assigned to {L}. The magic value assigned to {L} is ' },
      { fact: 'Remember that {L} goes with {K}.', ask: 'What goes with {L}? {L} goes with ' },
    ],
  },
  multivalue: {
    train: [
      { fact: 'One of the numbers for {L} is {K}.', ask: 'List every number for {L}. The numbers for {L} are ' },
      { fact: '{L} also has the value {K}.', ask: 'What values does {L} have? {L} has the values ' },
    ],
    heldout: [
      { fact: 'A code that belongs to {L} is {K}.', ask: 'Name all codes that belong to {L}. The codes that belong to {L} are ' },
    ],
  },
  vartrack: {
    // `set` assigns a number, `copy` assigns another variable ({V} = the source).
    train: [
      { set: 'VAR {L} = {K}.', copy: 'VAR {L} = VAR {V}.', ask: 'What is the value of VAR {L}? VAR {L} = ' },
      { set: 'Let {L} be {K}.', copy: 'Let {L} be {V}.', ask: 'What is {L}? {L} is ' },
    ],
    heldout: [
      { set: 'Set {L} to {K}.', copy: 'Set {L} to the value of {V}.', ask: 'What value does {L} hold? {L} holds ' },
    ],
  },
};

// Labels: short lower-case words, so a label is a few bytes; distinct words
// for training and evaluation so no evaluated label was seen with a key.
const TRAIN_LABELS = ('apple river stone cloud maple tiger silver garden window candle harbor forest ' +
  'violet copper meadow falcon pepper island marble lantern pebble orchid canyon thunder ' +
  'walnut saddle beacon comet crystal dragon ember fossil glacier hollow ivory jasmine').split(' ');
const EVAL_LABELS = ('anchor badger cactus dolphin engine feather goblet hammer igloo jungle kettle ' +
  'lemon mirror needle olive parrot quartz rocket spider tulip umbrella velvet wagon yarn').split(' ');
const VAR_LETTERS = 'ABCDEFGHJKLMNPQRSTUVWXYZ';

function pick(rng, arr) {
  return arr[Math.floor(rng() * arr.length)];
}

function pickDistinct(rng, arr, n) {
  const pool = [...arr];
  const out = [];
  for (let i = 0; i < n && pool.length; i++) out.push(pool.splice(Math.floor(rng() * pool.length), 1)[0]);
  return out;
}

const fill = (tpl, vars) => tpl.replace(/\{(K|L|V)\}/g, (_, k) => String(vars[k]));
const newKey = (rng, used) => {
  for (;;) {
    const k = String(10000 + Math.floor(rng() * 90000));
    if (!used.has(k)) { used.add(k); return k; }
  }
};

// ---------------------------------------------------------------------------
// Filler: a contiguous window of one long document where one is long enough.

/**
 * documents: [{name, text}] (train or held-out). Picks a document long enough
 * for `nBytes` (weighted by length) and returns a window of exactly nBytes
 * UTF-8 bytes of its text with whitespace collapsed, starting at a word
 * boundary; when no document is long enough, consecutive documents are joined.
 */
export function fillerWindow(documents, nBytes, rng) {
  if (nBytes <= 0) return '';
  const flat = documentsFlat(documents);
  const long = flat.filter((d) => d.bytes >= nBytes + 64);
  let src;
  if (long.length) {
    let total = 0;
    for (const d of long) total += d.bytes;
    let r = rng() * total;
    src = long[long.length - 1];
    for (const d of long) { r -= d.bytes; if (r < 0) { src = d; break; } }
    src = src.text;
  } else {
    const i = Math.floor(rng() * flat.length);
    src = flat.slice(i).concat(flat.slice(0, i)).map((d) => d.text).join(' ');
  }
  return cutWindow(src, nBytes, rng);
}

const flatCache = new WeakMap();
function documentsFlat(documents) {
  let f = flatCache.get(documents);
  if (!f) {
    f = documents.map((d) => {
      const text = d.text.replace(/\s+/g, ' ').trim();
      return { text, bytes: byteLen(text) };
    });
    flatCache.set(documents, f);
  }
  return f;
}

function cutWindow(src, nBytes, rng) {
  // Work in bytes: the corpus is almost all ASCII; a window boundary inside a
  // multi-byte character is moved to the next character.
  const buf = Buffer.from(src, 'utf8');
  const maxStart = Math.max(0, buf.length - nBytes);
  let start = Math.floor(rng() * (maxStart + 1));
  const sp = buf.indexOf(0x20, start);
  if (sp >= 0 && sp + 1 <= maxStart) start = sp + 1;
  while (start < buf.length && (buf[start] & 0xc0) === 0x80) start++;
  let out = buf.subarray(start, start + nBytes);
  let end = out.length;
  while (end > 0 && (out[end - 1] & 0xc0) === 0x80) end--;
  if (end > 0 && out[end - 1] >= 0xc0) end--;
  out = out.subarray(0, end);
  let s = out.toString('utf8');
  while (byteLen(s) < nBytes) s += ' ';
  return s;
}

// ---------------------------------------------------------------------------
// Context assembly: facts scattered through filler at given depths.

/** Insert each fact at its depth (0 = start, 1 = end) into filler of exactly `fillerBytes`. */
function scatter(filler, facts) {
  const order = facts.map((f, i) => ({ ...f, i })).sort((a, b) => a.depth - b.depth || a.i - b.i);
  let out = '';
  let at = 0;
  for (const f of order) {
    let pos = Math.round(f.depth * filler.length);
    if (pos > at && pos < filler.length) {
      const spc = filler.lastIndexOf(' ', pos);
      pos = spc < at ? at : spc + 1;
    }
    pos = Math.max(at, Math.min(pos, filler.length));
    out += filler.slice(at, pos);
    if (out.length && !out.endsWith(' ')) out += ' ';
    out += f.text + ' ';
    at = pos;
  }
  out += filler.slice(at);
  if (!out.endsWith(' ')) out += ' ';
  return out;
}

// ---------------------------------------------------------------------------
// The generators. Each returns {facts: [{text, depth}], turns: [{question, answer, gapFrac}]}
// for a given phrasing set; makeTaskSample sizes the filler.

function passkeySpec(rng, ph, o) {
  const p = pick(rng, ph.passkey);
  const K = newKey(rng, new Set());
  return {
    facts: [{ text: fill(p.fact, { K }), depth: o.depth ?? rng() }],
    turns: [{ question: p.ask, answer: `${K}.` }],
    meta: { keys: [K] },
  };
}

function labelledFacts(rng, ph, labels, n, depth) {
  const used = new Set();
  const names = pickDistinct(rng, labels, n);
  const p = pick(rng, ph.labelled);
  return names.map((L, i) => ({ L, K: newKey(rng, used), p, depth: i === 0 && depth != null ? depth : rng() }));
}

function multikeySpec(rng, ph, o) {
  const facts = labelledFacts(rng, ph, o.labels, o.keys ?? 4, o.depth);
  const asked = facts[0]; // facts[0] carries the requested depth; the rest are distractors
  return {
    facts: facts.map((f) => ({ text: fill(f.p.fact, f), depth: f.depth })),
    turns: [{ question: fill(asked.p.ask, asked), answer: `${asked.K}.` }],
    meta: { keys: facts.map((f) => f.K), asked: asked.L },
  };
}

function multivalueSpec(rng, ph, o) {
  const nValues = o.values ?? 3;
  const [L, ...others] = pickDistinct(rng, o.labels, 1 + (o.distractors ?? 2));
  const p = pick(rng, ph.multivalue);
  const used = new Set();
  const values = Array.from({ length: nValues }, () => ({ K: newKey(rng, used), depth: rng() }));
  values.sort((a, b) => a.depth - b.depth); // asked in order of appearance
  const distract = others.flatMap((D) => [0, 1].map(() => ({ text: fill(p.fact, { L: D, K: newKey(rng, used) }), depth: rng() })));
  return {
    facts: [...values.map((v) => ({ text: fill(p.fact, { L, K: v.K }), depth: v.depth })), ...distract],
    turns: [{ question: fill(p.ask, { L }), answer: values.map((v) => v.K).join(', ') + '.' }],
    meta: { keys: values.map((v) => v.K), asked: L },
  };
}

function multiqueryLike(rng, ph, o, gapFrac) {
  const facts = labelledFacts(rng, ph, o.labels, o.keys ?? 4, o.depth);
  const nAsk = Math.min(o.queries ?? 2, facts.length);
  const asked = pickDistinct(rng, facts, nAsk);
  return {
    facts: facts.map((f) => ({ text: fill(f.p.fact, f), depth: f.depth })),
    turns: asked.map((f, i) => ({ question: fill(f.p.ask, f), answer: `${f.K}.`, gapFrac: i === 0 ? gapFrac : gapFrac / 2 })),
    meta: { keys: facts.map((f) => f.K), asked: asked.map((f) => f.L) },
  };
}

function vartrackSpec(rng, ph, o) {
  const hops = o.hops ?? 3;
  const p = pick(rng, ph.vartrack);
  const letters = pickDistinct(rng, [...VAR_LETTERS], 2 * (hops + 1));
  const used = new Set();
  // Two chains of the same shape: the asked one and a distractor.
  const chain = (names) => {
    const K = newKey(rng, used);
    const depths = Array.from({ length: names.length }, () => rng()).sort((a, b) => a - b);
    return names.map((L, i) => ({
      text: i === 0 ? fill(p.set, { L, K }) : fill(p.copy, { L, V: names[i - 1] }),
      depth: depths[i],
      K,
    }));
  };
  const a = chain(letters.slice(0, hops + 1));
  const b = chain(letters.slice(hops + 1));
  const last = letters[hops];
  return {
    facts: [...a, ...b].map(({ text, depth }) => ({ text, depth })),
    turns: [{ question: fill(p.ask, { L: last }), answer: `${a[0].K}.` }],
    meta: { keys: [a[0].K], asked: last, hops },
  };
}

const SPECS = {
  passkey: passkeySpec,
  multikey: multikeySpec,
  multivalue: multivalueSpec,
  multiquery: (rng, ph, o) => multiqueryLike(rng, ph, o, 0),
  vartrack: vartrackSpec,
  // The questions come after a stretch of unrelated text (15 % of the sample)
  // and after each other, with more text in between.
  multiturn: (rng, ph, o) => multiqueryLike(rng, ph, { queries: 3, ...o }, 0.15),
};

/** The phrasing set by name: 'train' (stages 5–8), 'train-wide' (stage 9 on) or 'heldout' (evaluation only). */
export function phrasingSet(name) {
  if (name === 'train-wide') return WIDE_PHRASINGS;
  if (name !== 'train' && name !== 'heldout') throw new Error(`unknown phrasing set ${name}; sets: train, train-wide, heldout`);
  return Object.fromEntries(Object.entries(PHRASINGS).map(([k, v]) => [k, v[name]]));
}

export { EVAL_LABELS, TRAIN_LABELS };

/**
 * One sample of `task` with exactly `totalBytes` UTF-8 bytes of text (BOS not
 * included), or a little more when the facts alone exceed it.
 *
 * @param {object} o
 * @param {string} o.task            one of TASK_NAMES
 * @param {number} o.seed            mulberry32 seed (declare which range: train/dev/test)
 * @param {number} o.totalBytes
 * @param {'train'|'train-wide'|'heldout'} o.phrasing  which phrasing set to draw from
 *                                  ('train-wide': phrasings-wide.mjs, hundreds per task)
 * @param {Array<{name,text}>} o.documents filler documents (train or held-out)
 * @param {number} [o.depth]         depth of the asked fact (random if omitted)
 * @param {number} [o.keys] [o.queries] [o.values] [o.hops]  task sizes
 * @returns {{task, seed, text, context, turns: [{gap, question, answer}], answerSpans: [[start,end]], meta}}
 */
export function makeTaskSample(o) {
  const spec = SPECS[o.task];
  if (!spec) throw new Error(`unknown task ${o.task}; tasks: ${TASK_NAMES.join(', ')}`);
  const rng = mulberry32(o.seed);
  const ph = phrasingSet(o.phrasing);
  const labels = o.labels ?? (o.phrasing === 'heldout' ? EVAL_LABELS : o.phrasing === 'train-wide' ? WIDE_TRAIN_LABELS : TRAIN_LABELS);
  const s = spec(rng, ph, { ...o, labels });

  const factBytes = s.facts.reduce((n, f) => n + byteLen(f.text) + 2, 0);
  const turnBytes = s.turns.reduce((n, t) => n + byteLen(t.question) + byteLen(t.answer) + 1, 0);
  const free = Math.max(0, o.totalBytes - factBytes - turnBytes - 1);
  const gapBytes = s.turns.map((t) => Math.floor(free * (t.gapFrac ?? 0)));
  const contextFiller = free - gapBytes.reduce((a, b) => a + b, 0);
  const filler = fillerWindow(o.documents, contextFiller, rng);
  const context = scatter(filler, s.facts);

  let text = context;
  const turns = [];
  const answerSpans = [];
  s.turns.forEach((t, i) => {
    const gap = gapBytes[i] > 0 ? fillerWindow(o.documents, gapBytes[i], rng).trimEnd() + ' ' : '';
    const sep = i === 0 ? '' : ' ';
    text += sep + gap + t.question;
    const start = byteLen(text);
    text += t.answer;
    answerSpans.push([start, byteLen(text)]);
    turns.push({ gap: sep + gap, question: t.question, answer: t.answer });
  });
  return { task: o.task, seed: o.seed, text, context, turns, answerSpans, meta: s.meta };
}
