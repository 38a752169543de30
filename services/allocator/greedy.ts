// SmartKV's greedy precision allocator (DESIGN.md §5): every unprotected token
// starts at 2 bits; the upgrade with the best importance × Δerror per extra
// byte is taken next, until no upgrade fits the byte budget. Pure
// computation: it sees importance, errors and byte costs, never KV.
//
// That loop is a threshold selection, done here in O(n) without a heap:
//
//   candidates   per token, its upgrades on the lower convex hull of its
//                (bytes, error) points: 2→4 then 4→8 when the gain per byte
//                falls (the usual case: error drops ~16x a step), else one
//                merged 2→8 at the combined gain
//   prefix       by key descending, the longest prefix whose bytes fit: a
//                weighted radix selection on the keys' float bits (12 bits a
//                level: a histogram of bytes per digit, the bin where the
//                budget runs out, recurse into it), then a sort of the few
//                keys left in that bin
//   tail         what the prefix leaves (less than the 2→8 bytes of the
//                candidate that stopped it) may still buy cheaper upgrades:
//                the best open one that fits, one linear scan each
//
// The plan is the loop's (up to the order of equal keys); the sort of the
// last bin is O(k log k), k the keys equal in their top 36 bits — a handful
// unless many keys are equal.
import { invalid } from '../../native/errors.js';
import { formatBlockTokens } from '../../native/formats.js';
import { checkArray, checkBudget, checkInt, checkNumber } from '../../native/validate.js';

// Format codes as the engine numbers them (native/formats.ts).
const FP16 = 0;
const INT8 = 1;
const INT4 = 2;
const INT2 = 3;

const F32_MAX = 3.4028234663852886e38;

export interface GreedyInput {
  importance: Float32Array; // [n] f32, attention EMA per token
  sqError: Float32Array; // [n][3] f32, modelled squared error at int8, int4, int2
  upperBounds?: Uint8Array | null; // [n] u8, highest precision allowed (a format code; a token gets a code >= it). null: none
  tokenBytes: readonly number[]; // [4] bytes per token by format code (fp16, int8, int4, int2)
  budgetBytes: number; // bytes the unprotected tokens may take in all
  sinks: number; // the first `sinks` tokens stay fp16 (or their bound)
  window: number; // the last `window` tokens stay fp16 (or their bound)
}

export interface GreedyPlan {
  formats: Uint8Array; // [n] format code per token (protected: fp16 or their bound)
  usedBytes: number; // bytes the unprotected tokens take under the plan
  fits: boolean; // false: even all-2-bit exceeds the budget (the plan is all 2-bit)
}

/** True for tokens the allocator must leave at fp16. */
export function isProtected(i: number, n: number, sinks: number, window: number): boolean {
  return i < sinks || i >= n - window;
}

/** The unprotected tokens are [lo, hi); empty when sinks and window cover all. */
export function unprotectedRange(n: number, sinks: number, window: number): { lo: number; hi: number } {
  const lo = Math.min(sinks, n);
  return { lo, hi: Math.max(lo, n - window) };
}

/** Checks everything but the per-token values, which the policies check where
 * they read them (importance and errors of protected tokens are never read). */
export function checkGreedyInput(input: GreedyInput): void {
  if (typeof input !== 'object' || input === null) throw invalid(`input must be an object, got ${String(input)}`);
  const n = checkArray('importance', input.importance, Float32Array).length;
  checkArray('sqError', input.sqError, Float32Array, 3 * n);
  if (input.upperBounds !== undefined && input.upperBounds !== null) checkArray('upperBounds', input.upperBounds, Uint8Array, n);
  const tb = input.tokenBytes;
  if (!Array.isArray(tb) || tb.length !== 4) throw invalid(`tokenBytes must be an array of 4 byte counts (fp16, int8, int4, int2), got ${String(tb)}`);
  for (let f = 0; f < 4; f++) {
    const next = f < 3 ? (tb[f + 1] as unknown) : 0;
    if (typeof tb[f] !== 'number' || !Number.isFinite(tb[f]) || typeof next !== 'number' || !(tb[f] > next))
      throw invalid(`tokenBytes must be finite and fall strictly from fp16 to int2 (> 0), got [${tb.join(', ')}]`);
  }
  checkNumber('budgetBytes', input.budgetBytes, (x) => x >= 0, 'a finite number ≥ 0');
  checkInt('sinks', input.sinks, 0);
  checkInt('window', input.window, 0);
}

export function badValue(name: 'importance' | 'sqError', index: number, v: number): Error {
  return invalid(`${name}[${index}] must be finite and ≥ 0, got ${v}`);
}

/** The protected tokens at fp16 (or their bound), the rest at int2 (or 0,
 * for a caller that writes them all). */
export function startPlan(input: GreedyInput, unprotected = INT2): Uint8Array {
  const n = input.importance.length, bounds = input.upperBounds ?? null;
  const { lo, hi } = unprotectedRange(n, input.sinks, input.window);
  const formats = new Uint8Array(n);
  if (unprotected !== 0) for (let i = lo; i < hi; i++) formats[i] = unprotected; // a loop: V8's ranged fill is ~10x slower
  if (bounds !== null)
    for (let i = 0; i < n; i++) {
      const b = bounds[i];
      if (b > INT2) throw invalid(`upperBounds[${i}] must be a format code in [0, 3], got ${b}`);
      if (b > formats[i]) formats[i] = b;
    }
  return formats;
}

/** Bytes of the unprotected tokens under `formats`. */
export function unprotectedBytes(formats: Uint8Array, lo: number, hi: number, tokenBytes: readonly number[]): number {
  const count = [0, 0, 0, 0];
  for (let i = lo; i < hi; i++) count[formats[i]]++;
  return count[0] * tokenBytes[0] + count[1] * tokenBytes[1] + count[2] * tokenBytes[2] + count[3] * tokenBytes[3];
}

export function greedyAllocate(input: GreedyInput): GreedyPlan {
  checkGreedyInput(input);
  return planGreedy(input);
}

/** The greedy on an input checked by checkGreedyInput. */
export function planGreedy(input: GreedyInput): GreedyPlan {
  const n = input.importance.length, tb = input.tokenBytes;
  const { lo, hi } = unprotectedRange(n, input.sinks, input.window);
  const allInt2 = (hi - lo) * tb[INT2];
  if (allInt2 > input.budgetBytes) {
    checkTokenValues(input, lo, hi);
    return { formats: startPlan(input), usedBytes: allInt2, fits: false };
  }
  const formats = startPlan(input, 0); // takeAll or splitTop writes the unprotected tokens
  const c24 = tb[INT4] - tb[INT2], c48 = tb[INT8] - tb[INT4];
  const cost = Float64Array.of(c24, c48, c24 + c48, 0, c24, 0, 0, 0); // [kind][slot] bytes of the upgrade
  const room = input.budgetBytes - allInt2; // exact: both are multiples of the budget's ulp
  const c = buildCandidates(input, lo, hi, cost);
  let spent = c.totalCost;
  if (spent <= room) takeAll(c, lo, hi, formats);
  else spent = fillTail(c, cost, lo, hi, room, selectPrefix(c, cost, lo, hi, room, formats), formats);
  let usedBytes = allInt2 + spent;
  // Never runs with integer (or short dyadic) byte costs, as the engine's
  // are: the sums are exact. Other fractions may round past the budget.
  while (usedBytes > input.budgetBytes) usedBytes -= undoWorst(c, cost, lo, hi, formats);
  return { formats, usedBytes, fits: true };
}

// Candidates, two slots per token, s = 2 × token + slot:
//
//   kind        slot 0          slot 1
//   KIND_AB     2→4             4→8 (its key ≤ slot 0's: open once slot 0 is taken)
//   KIND_M      2→8 (merged)    -
//   KIND_A      2→4 (int4 bound) -
//   KIND_NONE   -               -            (int2 bound)
//
// An empty slot has key -Infinity, cost 0 and step 0, so loops need no
// branch for it. Taking slot s moves its token up STEP[kind][slot] codes.
const KIND_AB = 0;
const KIND_M = 1;
const KIND_A = 2;
const KIND_NONE = 3;
const STEP = Uint8Array.of(1, 1, 2, 0, 1, 0, 0, 0); // [kind][slot]

/** Scratch typed arrays, reused between calls (grown, never shrunk). */
class Candidates {
  readonly key: Float64Array; // [n][2] f64, importance × Δerror per extra byte, by token and slot
  readonly bits: Int32Array; // [n][2][2] i32, the keys' words (a view of key)
  readonly kind: Uint8Array; // [n] KIND_* by token
  readonly setA: Int32Array; // [2n + 1] slots in the current boundary bin
  readonly setB: Int32Array; // [2n + 1] the same, ping-pong
  readonly hist = new Float64Array(4096); // [4096] bytes per radix bin
  totalCost = 0;

  constructor(readonly capacity: number) {
    this.key = new Float64Array(2 * capacity);
    this.bits = new Int32Array(this.key.buffer);
    this.kind = new Uint8Array(capacity);
    this.setA = new Int32Array(2 * capacity + 1);
    this.setB = new Int32Array(2 * capacity + 1);
  }
}

let scratch = new Candidates(1024);
const HI = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1 ? 1 : 0; // index of a float64's high word
const LO = 1 - HI;

/** Fills both slots of tokens [lo, hi) and checks their values. */
function buildCandidates(input: GreedyInput, lo: number, hi: number, cost: Float64Array): Candidates {
  if (scratch.capacity < hi) scratch = new Candidates(Math.max(hi, 2 * scratch.capacity));
  const c = scratch, key = c.key, kind = c.kind;
  const imp = input.importance, e = input.sqError, bounds = input.upperBounds ?? null;
  const c24 = cost[0], c48 = cost[1], c28 = cost[2];
  let nAB = 0, nM = 0, nA = 0;
  for (let i = lo; i < hi; i++) {
    const w = imp[i], e8 = e[3 * i], e4 = e[3 * i + 1], e2 = e[3 * i + 2];
    if (!(w >= 0 && w <= F32_MAX)) throw badValue('importance', i, w);
    if (!(e8 >= 0 && e8 <= F32_MAX && e4 >= 0 && e4 <= F32_MAX && e2 >= 0 && e2 <= F32_MAX)) checkTokenValues(input, i, i + 1);
    const bound = bounds === null ? FP16 : bounds[i]; // checked by startPlan
    const g24 = (w * (e2 - e4)) / c24, g48 = (w * (e4 - e8)) / c48;
    const k = bound === INT2 ? KIND_NONE : bound === INT4 ? KIND_A : g48 <= g24 ? KIND_AB : KIND_M;
    key[2 * i] = k === KIND_M ? (w * (e2 - e8)) / c28 : k === KIND_NONE ? -Infinity : g24;
    key[2 * i + 1] = k === KIND_AB ? g48 : -Infinity;
    kind[i] = k;
    nAB += k === KIND_AB ? 1 : 0;
    nM += k === KIND_M ? 1 : 0;
    nA += k === KIND_A ? 1 : 0;
  }
  c.totalCost = (nAB + nM) * c28 + nA * c24;
  return c;
}

// The radix digits, 12 bits a level, of a key's 64 bits mapped so that their
// order is the key's (a negative key's magnitude bits flipped):
//
//   level 0   sign, exponent          (high >> 20) + 2048
//   level 1   mantissa bits 51..40    (high >> 8) & 0xfff
//   level 2   mantissa bits 39..28    (high & 0xff) << 4 | low >>> 28
//
// All int32 arithmetic: V8 keeps it in registers (a uint32 past 2^31 it would
// make a double), and the selection loops below are branch-free.
function topDigit(bits: Int32Array, s: number): number {
  const h = bits[2 * s + HI];
  return ((h ^ ((h >> 31) & 0x7fffffff)) >> 20) + 2048;
}

function digit(bits: Int32Array, s: number, level: number): number {
  let h = bits[2 * s + HI];
  h ^= (h >> 31) & 0x7fffffff;
  if (level === 1) return (h >> 8) & 0xfff;
  return ((h & 0xff) << 4) | ((bits[2 * s + LO] ^ (h >> 31)) >>> 28);
}

/** 1 if a > b, else 0, for int32 a and b of a digit's range. */
const above = (a: number, b: number): number => (b - a) >>> 31;
/** 1 if a === b, else 0, for digits (non-negative int32). */
const equal = (a: number, b: number): number => ((a ^ b) - 1) >>> 31;

function take(c: Candidates, s: number, formats: Uint8Array): void {
  formats[s >> 1] -= STEP[2 * c.kind[s >> 1] + (s & 1)];
}

function takeAll(c: Candidates, lo: number, hi: number, formats: Uint8Array): void {
  for (let i = lo; i < hi; i++) formats[i] = INT2 - STEP[2 * c.kind[i]] - STEP[2 * c.kind[i] + 1];
}

/** The bin where the running bytes (from the top bin down) first pass `left`. */
function boundaryBin(hist: Float64Array, left: number): number {
  let acc = 0, b = 4095;
  while (b > 0 && acc + hist[b] <= left) acc += hist[b--];
  return b;
}

/** Bytes in the bins above b, summed in boundaryBin's order. */
function bytesAbove(hist: Float64Array, b: number): number {
  let acc = 0;
  for (let d = 4095; d > b; d--) acc += hist[d];
  return acc;
}

/** Takes the longest prefix (keys descending) of candidates that fits in
 * `room`; returns the bytes it takes. Precondition: all of them do not fit,
 * so the boundary bin is never empty. Each level: a histogram of bytes by
 * digit, the boundary bin, then one pass that takes the candidates above it
 * and keeps those in it for the next level. (One loop per function: V8
 * optimises a function while its first loop runs, before later code has
 * type feedback, and gives up on one that deoptimises too often.) */
function selectPrefix(c: Candidates, cost: Float64Array, lo: number, hi: number, room: number, formats: Uint8Array): number {
  histogramTop(c, cost, lo, hi);
  let b = boundaryBin(c.hist, room), spent = bytesAbove(c.hist, b);
  let set = c.setA, size = splitTop(c, lo, hi, b, formats);
  for (let level = 1; level < 3 && size > 16; level++) {
    histogram(c, cost, set, size, level);
    b = boundaryBin(c.hist, room - spent);
    spent += bytesAbove(c.hist, b);
    const out = set === c.setA ? c.setB : c.setA;
    size = split(c, set, size, level, b, out, formats);
    set = out;
  }
  const rest = Array.from(set.subarray(0, size)).sort(byKeyDescending(c));
  for (const s of rest) {
    const bytes = cost[2 * c.kind[s >> 1] + (s & 1)];
    if (bytes > room - spent) break;
    take(c, s, formats);
    spent += bytes;
  }
  return spent;
}

/** Level 0, all tokens: bytes by sign and exponent. */
function histogramTop(c: Candidates, cost: Float64Array, lo: number, hi: number): void {
  const { bits, kind, hist } = c;
  for (let d = 0; d < 4096; d++) hist[d] = 0;
  for (let i = lo; i < hi; i++) {
    hist[topDigit(bits, 2 * i)] += cost[2 * kind[i]];
    hist[topDigit(bits, 2 * i + 1)] += cost[2 * kind[i] + 1];
  }
}

/** Level 0: takes the slots above bin b, keeps those in it in setA; returns how many. */
function splitTop(c: Candidates, lo: number, hi: number, b: number, formats: Uint8Array): number {
  const { bits, kind } = c, set = c.setA;
  let size = 0;
  for (let i = lo; i < hi; i++) {
    const d0 = topDigit(bits, 2 * i), d1 = topDigit(bits, 2 * i + 1), k = 2 * kind[i];
    formats[i] = INT2 - STEP[k] * above(d0, b) - STEP[k + 1] * above(d1, b);
    set[size] = 2 * i;
    size += equal(d0, b);
    set[size] = 2 * i + 1;
    size += equal(d1, b);
  }
  return size;
}

function histogram(c: Candidates, cost: Float64Array, set: Int32Array, size: number, level: number): void {
  const { bits, kind, hist } = c;
  for (let d = 0; d < 4096; d++) hist[d] = 0;
  for (let k = 0; k < size; k++) {
    const s = set[k];
    hist[digit(bits, s, level)] += cost[2 * kind[s >> 1] + (s & 1)];
  }
}

function split(c: Candidates, set: Int32Array, size: number, level: number, b: number, out: Int32Array, formats: Uint8Array): number {
  const { bits, kind } = c;
  let kept = 0;
  for (let k = 0; k < size; k++) {
    const s = set[k], d = digit(bits, s, level);
    formats[s >> 1] -= STEP[2 * kind[s >> 1] + (s & 1)] * above(d, b);
    out[kept] = s;
    kept += equal(d, b);
  }
  return kept;
}

/** Descending key; at equal keys a token's slot 1 after its slot 0. */
function byKeyDescending(c: Candidates): (x: number, y: number) => number {
  return (x, y) => c.key[y] - c.key[x] || (x & 1) - (y & 1);
}

/** The token's open slot (untaken, and a 4→8 only after its 2→4), or -1. */
function openSlot(c: Candidates, i: number, formats: Uint8Array, cost: Float64Array): number {
  const f = formats[i];
  const s = f === INT2 ? 2 * i : f === INT4 ? 2 * i + 1 : -1;
  return s >= 0 && cost[2 * c.kind[i] + (s & 1)] > 0 ? s : -1;
}

const MAX_TAIL_SCANS = 8;

/** After the prefix, the best open candidate that still fits, one scan at a
 * time (a few: what is left is less than one 2→8); sorted when they would
 * be many. Returns the bytes spent in all. */
function fillTail(c: Candidates, cost: Float64Array, lo: number, hi: number, room: number, spent: number, formats: Uint8Array): number {
  const cheapest = Math.min(cost[0], cost[1]);
  for (let scans = 0; room - spent >= cheapest; scans++) {
    if (scans === MAX_TAIL_SCANS) return fillTailSorted(c, cost, lo, hi, room, spent, formats);
    const best = bestOpen(c, cost, lo, hi, room - spent, formats);
    if (best < 0) break;
    take(c, best, formats);
    spent += cost[2 * c.kind[best >> 1] + (best & 1)];
  }
  return spent;
}

/** The open slot of the largest key that costs at most `left`, or -1. */
function bestOpen(c: Candidates, cost: Float64Array, lo: number, hi: number, left: number, formats: Uint8Array): number {
  const { key, kind } = c;
  let best = -1, bestKey = -Infinity;
  for (let i = lo; i < hi; i++) {
    const slot = formats[i] === INT4 ? 1 : 0, s = 2 * i + slot, bytes = cost[2 * kind[i] + slot];
    if (key[s] > bestKey && formats[i] >= INT4 && bytes > 0 && bytes <= left) (best = s), (bestKey = key[s]);
  }
  return best;
}

/** The same, in one sort. Only slots open now can be taken: a 4→8 opened
 * by a 2→4 taken in the tail never fits, as what the prefix left is less
 * than the 2→8 (2→4 + 4→8) bytes of the candidate that stopped it. */
function fillTailSorted(c: Candidates, cost: Float64Array, lo: number, hi: number, room: number, spent: number, formats: Uint8Array): number {
  const open: number[] = [];
  for (let i = lo; i < hi; i++) {
    const s = openSlot(c, i, formats, cost);
    if (s >= 0) open.push(s);
  }
  open.sort(byKeyDescending(c));
  for (const s of open) {
    const bytes = cost[2 * c.kind[s >> 1] + (s & 1)];
    if (bytes > room - spent) continue;
    take(c, s, formats);
    spent += bytes;
  }
  return spent;
}

/** Undoes the taken upgrade with the smallest key; returns the bytes freed. */
function undoWorst(c: Candidates, cost: Float64Array, lo: number, hi: number, formats: Uint8Array): number {
  let worst = -1;
  for (let i = lo; i < hi; i++) {
    const f = formats[i];
    if (f === INT2) continue;
    const s = c.kind[i] === KIND_AB && f === INT8 ? 2 * i + 1 : 2 * i; // the last one taken
    if (worst < 0 || c.key[s] < c.key[worst]) worst = s;
  }
  if (worst < 0) throw new Error('allocator: over budget with no upgrade taken'); // unreachable: all-int2 fits
  formats[worst >> 1] += STEP[2 * c.kind[worst >> 1] + (worst & 1)];
  return cost[2 * c.kind[worst >> 1] + (worst & 1)];
}

/** Checks importance and sqError of tokens [lo, hi) (the greedy checks them as it reads them). */
export function checkTokenValues(input: GreedyInput, lo: number, hi: number): void {
  const imp = input.importance, e = input.sqError;
  for (let i = lo; i < hi; i++) {
    if (!(imp[i] >= 0 && imp[i] <= F32_MAX)) throw badValue('importance', i, imp[i]);
    for (let f = 0; f < 3; f++) {
      const v = e[3 * i + f];
      if (!(v >= 0 && v <= F32_MAX)) throw badValue('sqError', 3 * i + f, v);
    }
  }
}

export interface BudgetInput {
  beta: number; // target bytes held / FP16 bytes, in (0, 1]
  n: number; // tokens per layer
  fp16TokenBytes: number; // the FP16 K+V bytes of one token (what β divides by)
  tokenBytes: readonly number[]; // [4] bytes per token by format code, as the engine stores it
  metaBytesPerToken: number; // bookkeeping per token regardless of format
  blockTokens: number; // T: a partly filled block per format is held whole (formatBlockTokens slots)
  extraBytes: number; // fixed overhead: page rounding of the bookkeeping, block tables
  sinks: number;
  window: number;
}

/** Bytes the unprotected tokens may take so that the whole layer — protected
 * tokens, bookkeeping and partly filled blocks included — stays within β. */
export function budgetForBeta(b: BudgetInput): number {
  checkBudget('beta', b.beta);
  const protectedTokens = Math.min(b.n, b.sinks + b.window);
  const fixed =
    protectedTokens * b.tokenBytes[FP16] +
    b.n * b.metaBytesPerToken +
    b.extraBytes +
    // worst case: every bucket ends in a block with one token in it
    b.tokenBytes.reduce((a, x, code) => a + (formatBlockTokens(code, b.blockTokens) - 1) * x, 0);
  return b.beta * b.n * b.fp16TokenBytes - fixed;
}
