// Float64 reference attention over plain (dequantised) K/V, the yardstick
// for the engine: causal rows at the end of the context, online nothing.

export interface RefProblem {
  rows: number;
  qHeads: number;
  kvHeads: number;
  headDim: number;
  nCtx: number; // tokens after the append; rows sit at nCtx-rows .. nCtx-1
  q: Float32Array; // [rows][qHeads][headDim] f32
  k: Float32Array; // [nCtx][kvHeads][headDim] f32, dequantised
  v: Float32Array; // [nCtx][kvHeads][headDim] f32
  // The engine's int8 query (already times 1/sqrt(D)) and which keys it is
  // used for (quantised keys when queryInt8 is on); both absent otherwise.
  q8?: Float32Array; // [rows][qHeads][headDim] f32
  keyUsesInt8?: Uint8Array; // [nCtx]
}

export interface RefResult {
  out: Float64Array; // [rows][qHeads][headDim]
  probs: Float64Array; // [rows][nCtx], averaged over q-heads
}

export function referenceAttention(p: RefProblem): RefResult {
  const { rows, qHeads, kvHeads, headDim: D, nCtx } = p;
  const G = qHeads / kvHeads, scale = 1 / Math.sqrt(D);
  const out = new Float64Array(rows * qHeads * D), probs = new Float64Array(rows * nCtx);
  const s = new Float64Array(nCtx);
  for (let r = 0; r < rows; r++) {
    const qpos = nCtx - rows + r;
    for (let qh = 0; qh < qHeads; qh++) {
      const kh = Math.floor(qh / G), qo = (r * qHeads + qh) * D;
      let mx = -Infinity;
      for (let t = 0; t <= qpos; t++) {
        const int8 = p.q8 !== undefined && p.keyUsesInt8?.[t] === 1;
        const q = int8 ? p.q8! : p.q, ko = (t * kvHeads + kh) * D;
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[qo + d] * p.k[ko + d];
        s[t] = int8 ? dot : dot * scale;
        mx = Math.max(mx, s[t]);
      }
      let sum = 0;
      for (let t = 0; t <= qpos; t++) sum += s[t] = Math.exp(s[t] - mx);
      for (let t = 0; t <= qpos; t++) {
        const w = s[t] / sum, vo = (t * kvHeads + kh) * D;
        probs[r * nCtx + t] += w / qHeads;
        for (let d = 0; d < D; d++) out[qo + d] += w * p.v[vo + d];
      }
    }
  }
  return { out, probs };
}

/** The engine's int8 query, dequantised: q·(1/√D) rounded to 127 levels of
 * its absmax, in float32 as the C++ does it (lrintf: ties to even). */
export function int8Query(q: Float32Array, D: number): Float32Array {
  const f = Math.fround, inv = f(1 / f(Math.sqrt(D)));
  const out = new Float32Array(q.length);
  for (let v = 0; v < q.length / D; v++) {
    let absmax = 0;
    for (let d = 0; d < D; d++) absmax = Math.max(absmax, Math.abs(f(q[v * D + d] * inv)));
    const s = absmax > 0 ? f(absmax / 127) : 1;
    for (let d = 0; d < D; d++) out[v * D + d] = f(s * roundEven(f(f(q[v * D + d] * inv) / s)));
  }
  return out;
}

function roundEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
