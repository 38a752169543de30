// What a plan costs in the engine's bytes: the one place that knows it
// (DESIGN.md §5). The cache reports its hot bytes and layout; from them this
// prices any plan exactly — whole storage blocks per format, the block and
// page tables (charged at their bound: they double and never shrink), and
// the bookkeeping pages of the tokens that arrive before the next plan.
//
//   hot(plan, k) = fixed + Σ_layers Σ_formats ceil(count_f / T_f) × blockBytes_f    (fp16 count + k)
//                + table growth bound + pages for tokens n+1 … n+k
//   fixed        = held now − Σ blocks of the current formats
//
// β holds for a plan when hot(plan, k) ≤ β × (n + k) × fp16 bytes for every
// k in 0 … ahead: right after it and for every token before the next plan.
// T_f is format f's block slots: T for fp16 and int8, 2T for int4, 4T for
// int2 (formatBlockTokens).
import { formatBlockTokens } from '../../native/formats.js';

export interface PlanLayout {
  targetBeta: number; // β in (0, 1]
  blockTokens: number; // T, token slots per 16- and 8-bit storage block (formatBlockTokens gives each format's)
  blockBytes: readonly number[]; // [4] bytes of one block by format code (fp16, int8, int4, int2)
  tokenMetaBytes: number; // bookkeeping per token and layer (token map + importance, 4 bytes each)
  metaPageTokens: number; // tokens per bookkeeping page
  tableEntryBytes: number; // a block or page pointer
  fp16TokenBytes: number; // FP16 K+V of one token in one layer
  layers: number;
  groups: number; // 1: slots = tokens, one plan for every layer; = layers: slots = [layer][unprotected token]
  tokens: number; // n, tokens per layer now
  outsideFp16Tokens: number; // per group: protected fp16 tokens that are not slots
  aheadTokens: number; // tokens arriving at 16 bits before the next plan
  heldBytes: number; // the engine's hot bytes now, all layers
  protectedTokens: number; // sinks + window, for bindsFrom
}

export interface Price {
  hotBytes: number; // right after the plan, all layers
  worstBeta: number; // the largest hot / FP16 from right after the plan until the next one
  fits: boolean; // worstBeta ≤ β at every k (in bytes, exactly)
}

const FP16 = 0;
const META_ARRAYS_BYTES = 4; // the bookkeeping is arrays of 4-byte entries, one page table each

/** Growth of a doubling table from `cur` used entries (capacity ≥ cur) to `next`, at most. */
function tableBound(next: number, cur: number, entry: number): number {
  return next > cur ? (2 * next - 1 - cur) * entry : 0;
}

export class PlanPricer {
  readonly perGroup: number; // layers each group's counts stand for
  private readonly cur: Int32Array; // [groups][4] current counts
  private readonly fixed: number;

  constructor(
    readonly lay: PlanLayout,
    current: Uint8Array, // [slots] current format codes
  ) {
    this.perGroup = lay.layers / lay.groups;
    this.cur = this.counts(current);
    this.fixed = lay.heldBytes - this.blockBytes(this.cur);
  }

  /** [groups][4] tokens per format of each group, protected outside tokens included. */
  counts(formats: Uint8Array): Int32Array {
    const G = this.lay.groups, per = formats.length / G;
    const c = new Int32Array(G * 4);
    for (let g = 0; g < G; g++) {
      c[g * 4 + FP16] = this.lay.outsideFp16Tokens;
      for (let i = g * per; i < (g + 1) * per; i++) c[g * 4 + formats[i]]++;
    }
    return c;
  }

  private blocks(count: number, code: number): number {
    return Math.ceil(count / formatBlockTokens(code, this.lay.blockTokens));
  }

  private blockBytes(c: Int32Array): number {
    let b = 0;
    for (let k = 0; k < c.length; k++) b += this.blocks(c[k], k & 3) * this.lay.blockBytes[k & 3];
    return b * this.perGroup;
  }

  /** Bytes of the blocks, plus table growth, with `extra` fp16 tokens per group. */
  private storage(c: Int32Array, extra: number): number {
    const lay = this.lay, e = lay.tableEntryBytes;
    let b = 0;
    for (let k = 0; k < c.length; k++) {
      const n = c[k] + ((k & 3) === FP16 ? extra : 0);
      const blocks = this.blocks(n, k & 3);
      b += blocks * lay.blockBytes[k & 3] + tableBound(blocks, this.blocks(this.cur[k], k & 3), e);
    }
    return b * this.perGroup;
  }

  /** Bookkeeping pages (and their tables' bound) that k more tokens add, all layers. */
  private metaGrowth(k: number): number {
    const lay = this.lay, P = lay.metaPageTokens;
    const now = Math.ceil(lay.tokens / P), next = Math.ceil((lay.tokens + k) / P);
    if (next === now) return 0;
    const arrays = lay.tokenMetaBytes / META_ARRAYS_BYTES;
    return lay.layers * ((next - now) * P * lay.tokenMetaBytes + arrays * tableBound(next, now, lay.tableEntryBytes));
  }

  price(formats: Uint8Array): Price {
    return this.priceCounts(this.counts(formats));
  }

  priceCounts(c: Int32Array): Price {
    const lay = this.lay, fp16Layer = lay.fp16TokenBytes * lay.layers;
    const hotBytes = this.fixed + this.storage(c, 0);
    let worstBeta = 0, fits = true;
    for (let k = 0; k <= lay.aheadTokens; k++) {
      const hot = k === 0 ? hotBytes : this.fixed + this.storage(c, k) + this.metaGrowth(k);
      const fp16 = (lay.tokens + k) * fp16Layer;
      if (fp16 === 0) continue;
      worstBeta = Math.max(worstBeta, hot / fp16);
      if (hot > lay.targetBeta * fp16) fits = false;
    }
    return { hotBytes, worstBeta, fits };
  }
}

/** The smallest β any sequence can reach: every token at 2 bits with its
 * scales and bookkeeping (long sequences approach it). */
export function minimumBeta(lay: Pick<PlanLayout, 'blockBytes' | 'blockTokens' | 'tokenMetaBytes' | 'fp16TokenBytes'>): number {
  return (lay.blockBytes[3] / formatBlockTokens(3, lay.blockTokens) + lay.tokenMetaBytes) / lay.fp16TokenBytes;
}

/** Hot bytes of the cheapest storage of n tokens per layer: protected tokens
 * at 16 bits, the rest at 2 bits, whole blocks and pages (tables left out). */
export function cheapestBytes(lay: Omit<PlanLayout, 'heldBytes' | 'tokens' | 'groups' | 'outsideFp16Tokens' | 'aheadTokens' | 'targetBeta'>, n: number): number {
  const T = lay.blockTokens, T2 = formatBlockTokens(3, T), P = lay.metaPageTokens;
  const p = Math.min(n, lay.protectedTokens);
  const perLayer = Math.ceil(p / T) * lay.blockBytes[0] + Math.ceil((n - p) / T2) * lay.blockBytes[3] + Math.ceil(n / P) * P * lay.tokenMetaBytes;
  return perLayer * lay.layers;
}

const bindsCache = new Map<string, number>();

type BindsLayout = Omit<PlanLayout, 'heldBytes' | 'tokens' | 'groups' | 'outsideFp16Tokens'>;

/** The shortest length from which β can bind: from there on the cheapest
 * storage fits β right after a plan and with the ahead tokens arrived at 16
 * bits. 0 when it never does below 2^16 tokens. Cached per layout. */
export function bindsFrom(lay: BindsLayout): number {
  const key = JSON.stringify(lay);
  const hit = bindsCache.get(key);
  if (hit !== undefined) return hit;
  const LIMIT = 1 << 16, L = lay.layers, T = lay.blockTokens, T2 = formatBlockTokens(3, T), P = lay.metaPageTokens, e = lay.tableEntryBytes;
  // The cheapest storage at n, then with k = 1 … ahead tokens arrived at 16
  // bits, each with the tables at their bound: what any plan at n pays at least.
  const fits = (n: number) => {
    const p = Math.min(n, lay.protectedTokens);
    for (let k = 0; k <= lay.aheadTokens; k++) {
      const pages = Math.ceil((n + k) / P), b16 = Math.ceil((p + k) / T), b2 = Math.ceil((n - p) / T2);
      const tables = 2 * (b16 + b2) + 2 * (lay.tokenMetaBytes / 4) * pages;
      const hot = L * (b16 * lay.blockBytes[0] + b2 * lay.blockBytes[3] + pages * P * lay.tokenMetaBytes + tables * e);
      if (hot > lay.targetBeta * (n + k) * lay.fp16TokenBytes * L) return false;
    }
    return true;
  };
  // Up from 1 to the first length that fits and keeps fitting for a stretch
  // of several blocks and pages (past it the budget grows faster than the
  // cheapest storage: only block and page edges can break it, close by).
  const STRETCH = 4 * Math.max(T2, P);
  let from = 0;
  for (let n = 1; n <= LIMIT && from === 0; n++) {
    if (!fits(n)) continue;
    let m = n + 1;
    while (m <= Math.min(LIMIT, n + STRETCH) && fits(m)) m++;
    if (m > Math.min(LIMIT, n + STRETCH)) from = n;
    else n = m; // broke at m: look again after it
  }
  if (bindsCache.size > 256) bindsCache.clear();
  bindsCache.set(key, from);
  return from;
}

export interface ReserveInput {
  layers: number;
  fp16TokenBytes: number;
  blockTokens: number;
  blockBytes: readonly number[]; // [4]
  tokenMetaBytes: number;
  metaPageTokens: number;
  tableEntryBytes: number;
  beta: number; // the budget a planned policy keeps; 1 for policies that take none
  tokens: number; // the most tokens the sequence will hold (prompt + max tokens)
  ahead: number; // the most tokens that arrive at 16 bits between plans (a prefill chunk, R)
  protectedTokens?: number; // sinks + window (planned policies): from when β can bind
}

/** Hot bytes a sequence may hold at most, at any moment up to its maximum
 * length N — what a reservation against the memory limit must cover. The
 * least of two bounds:
 *
 *   uncompressed  every token in FP16 blocks (no plan makes the cache larger
 *                 than leaving it alone): N × FP16 block bytes per token,
 *                 + a part-filled last block per format per layer (after
 *                 plans, tokens sit in up to four formats) and one more per
 *                 format for a plan's transient + bookkeeping pages + tables;
 *   budgeted      only when β binds by N (bindsFrom): β × N × FP16, since plans
 *                 keep every length up to N within β and, before β binds, the
 *                 cheapest storage of the shorter sequence is below β at the
 *                 length β binds from; + the ahead tokens' FP16 blocks (they
 *                 arrive before the next plan) + the same last, transient
 *                 blocks, pages and tables.
 *
 * The budgeted bound used to take N + ahead tokens and a 128-token ahead
 * for every request, and there was no uncompressed bound: short requests
 * reserved ~4× what they held (19.4 MB reserved for 5.1 MB held). */
export function reservationBytes(r: ReserveInput): number {
  const L = r.layers, T = r.blockTokens, P = r.metaPageTokens, n = r.tokens;
  const blocksAll = r.blockBytes.reduce((a, b) => a + b, 0);
  const pages = Math.ceil(n / P);
  const tables = L * (4 * 2 * Math.ceil(n / T) + 2 * 2 * pages) * r.tableEntryBytes;
  const meta = L * pages * P * r.tokenMetaBytes;
  const partBlocks = (L + 1) * blocksAll;
  const uncompressed = L * n * (r.blockBytes[0] / T) + partBlocks + meta + tables;
  if (r.beta >= 1) return Math.ceil(uncompressed);
  const binds = bindsFrom({
    targetBeta: r.beta,
    blockTokens: T,
    blockBytes: r.blockBytes,
    tokenMetaBytes: r.tokenMetaBytes,
    metaPageTokens: P,
    tableEntryBytes: r.tableEntryBytes,
    fp16TokenBytes: r.fp16TokenBytes,
    layers: L,
    aheadTokens: r.ahead,
    protectedTokens: r.protectedTokens ?? 0,
  });
  if (binds === 0 || n < binds) return Math.ceil(uncompressed);
  const budgeted = r.beta * n * r.fp16TokenBytes * L + L * (Math.ceil(r.ahead / T) + 1) * r.blockBytes[0] + partBlocks + meta + tables;
  return Math.ceil(Math.min(uncompressed, budgeted));
}
