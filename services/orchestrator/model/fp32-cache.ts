// An uncompressed float32 KV cache with plain causal attention, driven layer
// by layer through NativeModel's split-mode methods. It is the "FP32 cache"
// the golden-logit checks use: the dense forward is the same native code as
// always, only attention happens here, in float64 arithmetic.
import type { ModelConfig } from './config.js';
import type { Model } from './model.js';

export class Fp32Cache {
  private readonly k: Float32Array[][] = []; // [layer][token] -> [kvHeads*headDim]
  private readonly v: Float32Array[][] = [];

  constructor(private readonly model: Model) {
    for (let l = 0; l < model.config.layers; l++) {
      this.k.push([]);
      this.v.push([]);
    }
  }

  get length(): number {
    return this.k[0].length;
  }

  /** Runs `tokens` through the model; returns logits [tokens.length][vocab]. */
  async forward(tokens: number[]): Promise<Float32Array> {
    const c = this.model.config, n = tokens.length, m = this.model.native;
    const start = this.length;
    const x = new Float32Array(n * c.dModel); // [n][dModel]
    const q = new Float32Array(n * c.heads * c.headDim); // [n][heads][headDim]
    const k = new Float32Array(n * c.kvHeads * c.headDim); // [n][kvHeads][headDim]
    const v = new Float32Array(k.length);
    const o = new Float32Array(q.length); // [n][heads*headDim]
    const positions = Uint32Array.from(tokens, (_, i) => start + i);
    await m.embed(Uint32Array.from(tokens), x);
    for (let l = 0; l < c.layers; l++) {
      await m.preAttention(l, x, positions, q, k, v);
      const kv = c.kvHeads * c.headDim;
      for (let i = 0; i < n; i++) {
        this.k[l].push(k.slice(i * kv, (i + 1) * kv));
        this.v[l].push(v.slice(i * kv, (i + 1) * kv));
      }
      attend(c, q, this.k[l], this.v[l], start, n, o);
      await m.postAttention(l, o, n, x);
    }
    const logits = new Float32Array(n * c.vocab);
    await m.logits(x, n, logits);
    return logits;
  }
}

function attend(c: ModelConfig, q: Float32Array, keys: Float32Array[], values: Float32Array[], start: number, n: number, out: Float32Array) {
  const D = c.headDim, G = c.heads / c.kvHeads, scale = 1 / Math.sqrt(D);
  for (let i = 0; i < n; i++) {
    const upto = start + i; // causal: tokens 0..upto
    for (let h = 0; h < c.heads; h++) {
      const kh = h / G | 0, qo = (i * c.heads + h) * D;
      const s = new Float64Array(upto + 1);
      let mx = -Infinity;
      for (let t = 0; t <= upto; t++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[qo + d] * keys[t][kh * D + d];
        s[t] = dot * scale;
        if (s[t] > mx) mx = s[t];
      }
      let sum = 0;
      for (let t = 0; t <= upto; t++) sum += (s[t] = Math.exp(s[t] - mx));
      for (let d = 0; d < D; d++) {
        let acc = 0;
        for (let t = 0; t <= upto; t++) acc += s[t] * values[t][kh * D + d];
        out[qo + d] = acc / sum;
      }
    }
  }
}
