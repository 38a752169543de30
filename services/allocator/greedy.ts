// SmartKV's greedy precision allocator (DESIGN.md §5): every unprotected token
// starts at 2 bits; the upgrade with the best importance × Δerror per extra
// byte is taken next, until the byte budget is spent. Pure computation: it
// sees importance, errors and byte costs, never KV.
//
// The greedy is a threshold selection, done in O(n) without a heap:
//
//   candidates   a token's upgrades on the lower convex hull of its
//                (bytes, error) points: 2→4 (A) then 4→8 (B) when the gain per
//                byte falls (B's key ≤ A's key), else one merged 2→8 (M)
//   prefix       sorted by key (descending), the longest prefix whose bytes
//                fit; found by weighted radix selection on the key's float
//                bits (12 bits a level, histogram of bytes per bin), then a
//                sort of the few keys left in the boundary bin
//   tail         what the prefix left over may still fit a cheaper class
//                (a 2→4 after a 2→8 failed): the best candidate that fits,
//                one linear scan each, at most c(2→8)/c(cheapest) + 1 scans
//
// The result is the one of the classic loop "take the best upgrade that
// fits, until none does" (up to the order of equal keys).
import { invalid } from '../../native/errors.js';
import { checkArray, checkBudget, checkInt, checkNumber } from '../../native/validate.js';

// Format codes as the engine numbers them (native/formats.ts).
const FP16 = 0;
const INT8 = 1;
const INT4 = 2;
const INT2 = 3;

// Candidate classes: the upgrade a candidate stands for.
const UP_2_4 = 0; // A: int2 → int4
const UP_4_8 = 1; // B: int4 → int8, only after the token's A
const UP_2_8 = 2; // M: int2 → int8 in one step (a token whose 4→8 gains more per byte than its 2→4)
const TARGET = Uint8Array.of(INT4, INT8, INT8); // by class

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

/** The protected tokens at fp16 (or their bound), the rest at int2. */
export function startPlan(input: GreedyInput): Uint8Array {
  const n = input.importance.length, bounds = input.upperBounds ?? null;
  const { lo, hi } = unprotectedRange(n, input.sinks, input.window);
  const formats = new Uint8Array(n);
  for (let i = lo; i < hi; i++) formats[i] = INT2; // a loop: V8's ranged fill is ~10x slower
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
  const formats = startPlan(input);
  const allInt2 = (hi - lo) * tb[INT2];
  if (allInt2 > input.budgetBytes) {
    checkTokenValues(input, lo, hi);
    return { formats, usedBytes: allInt2, fits: false };
  }
  const cost = Float64Array.of(tb[INT4] - tb[INT2], tb[INT8] - tb[INT4], tb[INT8] - tb[INT2]); // [3] bytes by class
  const room = input.budgetBytes - allInt2; // exact: both are multiples of the budget's ulp
  const c = buildCandidates(input, lo, hi, cost);
  let spent = c.totalCost;
  if (spent <= room) for (let j = 0; j < c.size; j++) take(c, j, formats);
  else spent = fillTail(c, cost, room, selectPrefix(c, cost, room, formats), formats);
  let usedBytes = allInt2 + spent;
  // Never runs with integer (or short dyadic) byte costs, as the engine's
  // are: the sums are exact. Other fractions may round past the budget.
  while (usedBytes > input.budgetBytes) usedBytes -= undoWorst(c, cost, formats);
  return { formats, usedBytes, fits: true };
}

/** Candidate upgrades on scratch typed arrays, reused between calls. */
class Candidates {
  readonly key: Float64Array; // [m] f64, importance × Δerror per extra byte
  readonly bits: Int32Array; // [m][2] i32, the key's words (a view of key)
  readonly tok: Int32Array; // [m] token index
  readonly cls: Uint8Array; // [m] UP_2_4, UP_4_8 or UP_2_8
  readonly setA: Int32Array; // [m + 1] candidate ids of the current boundary bin
  readonly setB: Int32Array; // [m + 1] the same, ping-pong
  readonly hist = new Float64Array(4096); // [4096] bytes per radix bin
  size = 0;
  totalCost = 0;

  constructor(readonly capacity: number) {
    this.key = new Float64Array(capacity);
    this.bits = new Int32Array(this.key.buffer);
    this.tok = new Int32Array(capacity);
    this.cls = new Uint8Array(capacity);
    this.setA = new Int32Array(capacity + 1);
    this.setB = new Int32Array(capacity + 1);
  }
}

let scratch = new Candidates(1024);
const HI = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1 ? 1 : 0; // index of a float64's high word
const LO = 1 - HI;
const STEP = Uint8Array.of(1, 1, 2); // [3] format codes an upgrade moves up, by class

/** Collects the candidate upgrades of tokens [lo, hi) and checks their values. */
function buildCandidates(input: GreedyInput, lo: number, hi: number, cost: Float64Array): Candidates {
  if (scratch.capacity < 2 * (hi - lo)) scratch = new Candidates(Math.max(2 * (hi - lo), 2 * scratch.capacity));
  const c = scratch, key = c.key, tok = c.tok, cls = c.cls;
  const imp = input.importance, e = input.sqError, bounds = input.upperBounds ?? null;
  const c24 = cost[UP_2_4], c48 = cost[UP_4_8], c28 = cost[UP_2_8];
  let m = 0, n24 = 0, n48 = 0, n28 = 0;
  for (let i = lo; i < hi; i++) {
    const w = imp[i], e8 = e[3 * i], e4 = e[3 * i + 1], e2 = e[3 * i + 2];
    if (!(w >= 0 && w <= F32_MAX)) throw badValue('importance', i, w);
    if (!(e8 >= 0 && e8 <= F32_MAX && e4 >= 0 && e4 <= F32_MAX && e2 >= 0 && e2 <= F32_MAX))
      throw badValue('sqError', 3 * i + (!(e8 >= 0 && e8 <= F32_MAX) ? 0 : !(e4 >= 0 && e4 <= F32_MAX) ? 1 : 2), !(e8 >= 0 && e8 <= F32_MAX) ? e8 : !(e4 >= 0 && e4 <= F32_MAX) ? e4 : e2);
    const bound = bounds === null ? FP16 : bounds[i]; // checked by startPlan
    if (bound === INT2) continue;
    const g24 = (w * (e2 - e4)) / c24;
    const g48 = bound === INT4 ? -Infinity : (w * (e4 - e8)) / c48;
    if (g48 <= g24) {
      // the 2→4 first: a 4→8 is open only after it
      (key[m] = g24), (tok[m] = i), (cls[m++] = UP_2_4), n24++;
      if (bound !== INT4) (key[m] = g48), (tok[m] = i), (cls[m++] = UP_4_8), n48++;
    } else (key[m] = (w * (e2 - e8)) / c28), (tok[m] = i), (cls[m++] = UP_2_8), n28++;
  }
  c.size = m;
  c.totalCost = n24 * c24 + n48 * c48 + n28 * c28;
  return c;
}

// The radix digits, 12 bits a level, of the key's 64 bits mapped so that
// their order is the key's (a negative key's magnitude bits flipped):
//
//   level 0   sign, exponent          (high >> 20) + 2048
//   level 1   mantissa bits 51..40    (high >> 8) & 0xfff
//   level 2   mantissa bits 39..28    (high & 0xff) << 4 | low >>> 28
//
// All int32 arithmetic: V8 keeps it in registers (a uint32 past 2^31 it would
// make a double), and the selection loops below are branch-free.
function mappedHigh(bits: Int32Array, j: number): number {
  const h = bits[2 * j + HI];
  return h ^ ((h >> 31) & 0x7fffffff);
}

function digit(bits: Int32Array, j: number, level: number): number {
  const h = mappedHigh(bits, j);
  if (level === 1) return (h >> 8) & 0xfff;
  return ((h & 0xff) << 4) | ((bits[2 * j + LO] ^ (h >> 31)) >>> 28);
}

/** Candidates only ever add to their token's format, in any order: a 4→8 is
 * taken only with its 2→4 (its key is no larger; ties sort it after). */
function take(c: Candidates, j: number, formats: Uint8Array): void {
  formats[c.tok[j]] -= STEP[c.cls[j]];
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
function selectPrefix(c: Candidates, cost: Float64Array, room: number, formats: Uint8Array): number {
  histogramTop(c, cost);
  let b = boundaryBin(c.hist, room), spent = bytesAbove(c.hist, b);
  let set = c.setA, size = splitTop(c, b, formats);
  for (let level = 1; level < 3 && size > 16; level++) {
    histogram(c, cost, set, size, level);
    b = boundaryBin(c.hist, room - spent);
    spent += bytesAbove(c.hist, b);
    const out = set === c.setA ? c.setB : c.setA;
    size = split(c, set, size, level, b, out, formats);
    set = out;
  }
  const rest = Array.from(set.subarray(0, size)).sort(byKeyDescending(c));
  for (const j of rest) {
    if (cost[c.cls[j]] > room - spent) break;
    take(c, j, formats);
    spent += cost[c.cls[j]];
  }
  return spent;
}

/** Level 0, all candidates: bytes by sign and exponent. */
function histogramTop(c: Candidates, cost: Float64Array): void {
  const { bits, cls, hist } = c, m = c.size;
  for (let d = 0; d < 4096; d++) hist[d] = 0;
  for (let j = 0; j < m; j++) hist[(mappedHigh(bits, j) >> 20) + 2048] += cost[cls[j]];
}

/** Level 0: takes the candidates above bin b, keeps those in it in setA; returns how many. */
function splitTop(c: Candidates, b: number, formats: Uint8Array): number {
  const { bits, tok, cls } = c, set = c.setA, m = c.size;
  let size = 0;
  for (let j = 0; j < m; j++) {
    const d = (mappedHigh(bits, j) >> 20) + 2048;
    formats[tok[j]] -= STEP[cls[j]] * ((b - d) >>> 31); // d > b: taken
    set[size] = j;
    size += ((d ^ b) - 1) >>> 31; // d === b: kept
  }
  return size;
}

function histogram(c: Candidates, cost: Float64Array, set: Int32Array, size: number, level: number): void {
  const { bits, cls, hist } = c;
  for (let d = 0; d < 4096; d++) hist[d] = 0;
  for (let k = 0; k < size; k++) hist[digit(bits, set[k], level)] += cost[cls[set[k]]];
}

function split(c: Candidates, set: Int32Array, size: number, level: number, b: number, out: Int32Array, formats: Uint8Array): number {
  const { bits, tok, cls } = c;
  let kept = 0;
  for (let k = 0; k < size; k++) {
    const j = set[k], d = digit(bits, j, level);
    formats[tok[j]] -= STEP[cls[j]] * ((b - d) >>> 31);
    out[kept] = j;
    kept += ((d ^ b) - 1) >>> 31;
  }
  return kept;
}

/** Descending key; at equal keys a 4→8 after the 2→4 it depends on. */
function byKeyDescending(c: Candidates): (x: number, y: number) => number {
  return (x, y) => c.key[y] - c.key[x] || Number(c.cls[x] === UP_4_8) - Number(c.cls[y] === UP_4_8);
}

/** Whether candidate j is not taken and may be (a 4→8 only after its 2→4). */
function isOpen(c: Candidates, j: number, formats: Uint8Array): boolean {
  return formats[c.tok[j]] === (c.cls[j] === UP_4_8 ? INT4 : INT2);
}

const MAX_TAIL_SCANS = 8;

/** After the prefix, the best open candidate that still fits, one scan at a
 * time (a few: what is left is less than one 2→8); sorted when they would
 * be many. Returns the bytes spent in all. */
function fillTail(c: Candidates, cost: Float64Array, room: number, spent: number, formats: Uint8Array): number {
  const { key, cls } = c, cheapest = Math.min(cost[UP_2_4], cost[UP_4_8]);
  for (let scans = 0; room - spent >= cheapest; scans++) {
    if (scans === MAX_TAIL_SCANS) return fillTailSorted(c, cost, room, spent, formats);
    const left = room - spent;
    let best = -1, bestKey = -Infinity;
    for (let j = 0; j < c.size; j++)
      if (cost[cls[j]] <= left && key[j] > bestKey && isOpen(c, j, formats)) (best = j), (bestKey = key[j]);
    if (best < 0) break;
    take(c, best, formats);
    spent += cost[cls[best]];
  }
  return spent;
}

function fillTailSorted(c: Candidates, cost: Float64Array, room: number, spent: number, formats: Uint8Array): number {
  const open: number[] = [];
  for (let j = 0; j < c.size; j++) if (cost[c.cls[j]] <= room - spent && formats[c.tok[j]] > TARGET[c.cls[j]]) open.push(j);
  open.sort(byKeyDescending(c));
  for (const j of open)
    if (cost[c.cls[j]] <= room - spent && isOpen(c, j, formats)) {
      take(c, j, formats);
      spent += cost[c.cls[j]];
    }
  return spent;
}

/** Undoes the taken upgrade with the smallest key; returns the bytes freed. */
function undoWorst(c: Candidates, cost: Float64Array, formats: Uint8Array): number {
  let worst = -1;
  for (let j = 0; j < c.size; j++) {
    const f = formats[c.tok[j]], k = c.cls[j];
    const undoable = k === UP_2_4 ? f === INT4 : f === INT8; // a 2→4 under its 4→8 waits for it
    if (undoable && (worst < 0 || c.key[j] < c.key[worst])) worst = j;
  }
  if (worst < 0) throw new Error('allocator: over budget with no upgrade taken'); // unreachable: all-int2 fits
  formats[c.tok[worst]] += STEP[c.cls[worst]];
  return cost[c.cls[worst]];
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
  blockTokens: number; // a partly filled block per format is held whole
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
    (b.blockTokens - 1) * b.tokenBytes.reduce((a, x) => a + x, 0);
  return b.beta * b.n * b.fp16TokenBytes - fixed;
}
