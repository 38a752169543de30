// SmartKV's greedy precision allocator (DESIGN.md §5): every unprotected token
// starts at 2 bits; the upgrade (2→4 or 4→8) with the best
// importance × Δerror per extra byte is taken next, until the byte budget is
// spent. Optimal for the convex relaxation; O(n log n) with a heap.
// Pure computation: it sees importance, errors and byte costs, never KV.
import { checkBudget } from '../../native/validate.js';

// Format codes as the engine numbers them (native/formats.ts).
const FP16 = 0;
const INT8 = 1;
const INT4 = 2;
const INT2 = 3;

export interface GreedyInput {
  importance: Float32Array; // [n] f32, attention EMA per token
  sqError: Float32Array; // [n][3] f32, modelled squared error at int8, int4, int2
  tokenBytes: readonly number[]; // [4] bytes per token by format code (fp16, int8, int4, int2)
  budgetBytes: number; // bytes the unprotected tokens may take in all
  sinks: number; // the first `sinks` tokens stay fp16
  window: number; // the last `window` tokens stay fp16
}

export interface GreedyPlan {
  formats: Uint8Array; // [n] format code per token (protected: fp16)
  usedBytes: number; // bytes the unprotected tokens take under the plan
  fits: boolean; // false: even all-2-bit exceeds the budget (the plan is all 2-bit)
}

/** True for tokens the allocator must leave at fp16. */
export function isProtected(i: number, n: number, sinks: number, window: number): boolean {
  return i < sinks || i >= n - window;
}

export function greedyAllocate(input: GreedyInput): GreedyPlan {
  const { importance, sqError, tokenBytes, sinks, window } = input;
  const n = importance.length;
  if (sqError.length !== 3 * n) throw new RangeError(`sqError has ${sqError.length} elements, expected ${3 * n}`);
  const formats = new Uint8Array(n);
  const heap = new UpgradeHeap(n);
  let used = 0;
  for (let i = 0; i < n; i++) {
    if (isProtected(i, n, sinks, window)) continue;
    formats[i] = INT2;
    used += tokenBytes[INT2];
    heap.add(i, gain(input, i, INT2));
  }
  heap.heapify();
  const fits = used <= input.budgetBytes;
  let left = input.budgetBytes - used;
  const cheapest = tokenBytes[INT4] - tokenBytes[INT2];
  while (heap.size > 0 && left >= cheapest) {
    const i = heap.pop();
    const from = formats[i];
    const cost = tokenBytes[from - 1] - tokenBytes[from];
    if (cost > left) continue; // a 4→8 that no longer fits; cheaper 2→4 upgrades may
    formats[i] = from - 1;
    left -= cost;
    if (from - 1 === INT4) heap.push(i, gain(input, i, INT4));
  }
  return { formats, usedBytes: input.budgetBytes - left, fits };
}

/** importance × error removed per extra byte, for moving token i up from `from`. */
function gain(input: GreedyInput, i: number, from: number): number {
  const e = input.sqError, at = 3 * i - INT8; // e[at + code]: error at that format
  const bytes = input.tokenBytes[from - 1] - input.tokenBytes[from];
  return (input.importance[i] * (e[at + from] - e[at + from - 1])) / bytes;
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

/** A binary max-heap of token ids keyed by gain, on typed arrays. */
class UpgradeHeap {
  private readonly ids: Int32Array;
  private readonly keys: Float64Array;
  size = 0;

  constructor(capacity: number) {
    this.ids = new Int32Array(Math.max(1, capacity));
    this.keys = new Float64Array(Math.max(1, capacity));
  }

  /** Appends without ordering; call heapify() before the first pop. */
  add(id: number, key: number): void {
    this.ids[this.size] = id;
    this.keys[this.size++] = key;
  }

  heapify(): void {
    for (let i = (this.size >> 1) - 1; i >= 0; i--) this.siftDown(i, this.ids[i], this.keys[i]);
  }

  push(id: number, key: number): void {
    let i = this.size++;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (this.keys[parent] >= key) break;
      this.ids[i] = this.ids[parent];
      this.keys[i] = this.keys[parent];
      i = parent;
    }
    this.ids[i] = id;
    this.keys[i] = key;
  }

  pop(): number {
    const top = this.ids[0];
    this.size--;
    if (this.size > 0) this.siftDown(0, this.ids[this.size], this.keys[this.size]);
    return top;
  }

  /** Places (id, key) at slot i or below, moving larger children up. */
  private siftDown(i: number, id: number, key: number): void {
    for (;;) {
      let child = 2 * i + 1;
      if (child >= this.size) break;
      if (child + 1 < this.size && this.keys[child + 1] > this.keys[child]) child++;
      if (this.keys[child] <= key) break;
      this.ids[i] = this.ids[child];
      this.keys[i] = this.keys[child];
      i = child;
    }
    this.ids[i] = id;
    this.keys[i] = key;
  }
}
