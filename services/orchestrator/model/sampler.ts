// Sampling: a pure function of logits, parameters and a seeded RNG.
export interface SamplingParams {
  /** 0 = greedy (argmax). */
  temperature: number;
  /** 0 = no top-k cut. */
  topK: number;
  /** 1 = no nucleus cut. */
  topP: number;
}

/** splitmix32: small, fast, and the same sequence on every platform for a seed. */
export function seededRng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
  };
}

export function argmax(logits: Float32Array): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/** logits: [vocab]. Returns a token id. */
export function sample(logits: Float32Array, p: SamplingParams, rng: () => number): number {
  if (p.temperature <= 0) return argmax(logits);
  let ids = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
  if (p.topK > 0) ids = ids.slice(0, p.topK);
  const max = logits[ids[0]];
  let probs = ids.map((i) => Math.exp((logits[i] - max) / p.temperature));
  let total = probs.reduce((a, b) => a + b, 0);
  if (p.topP < 1) {
    let cum = 0, keep = 0;
    while (keep < ids.length && cum < p.topP * total) cum += probs[keep++];
    ids = ids.slice(0, Math.max(1, keep));
    probs = probs.slice(0, ids.length);
    total = probs.reduce((a, b) => a + b, 0);
  }
  let r = rng() * total;
  for (let i = 0; i < ids.length; i++) {
    r -= probs[i];
    if (r <= 0) return ids[i];
  }
  return ids[ids.length - 1];
}
