// Hugging Face config.json -> the runtime's model configuration, validated.
// Supports the Llama family: llama, mistral, qwen2 (RMSNorm, RoPE, GQA, SwiGLU).
import { ModelLoadError } from './model-error.js';

export type ModelType = 'llama' | 'mistral' | 'qwen2';

export interface ModelConfig {
  modelType: ModelType;
  layers: number;
  dModel: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  dFf: number;
  vocab: number;
  rmsEps: number;
  maxPositions: number;
  tiedEmbeddings: boolean;
  qkvBias: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
  /** [headDim/2] RoPE inverse frequencies after any rope_scaling. */
  ropeInvFreq: Float32Array;
}

type Json = Record<string, unknown>;

function int(cfg: Json, key: string, file: string, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) {
    throw new ModelLoadError(file, `${key} must be a positive integer, got ${JSON.stringify(cfg[key])}`);
  }
  return v;
}

function num(cfg: Json, key: string, file: string, fallback: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new ModelLoadError(file, `${key} must be a positive number, got ${JSON.stringify(cfg[key])}`);
  }
  return v;
}

/** theta^(-2i/D) for i < D/2, then the scaling rule of rope_scaling, if any. */
export function ropeInverseFrequencies(headDim: number, theta: number, scaling: unknown, file: string): Float32Array {
  const half = headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(theta, (2 * i) / headDim);
  if (scaling !== null && scaling !== undefined) {
    if (typeof scaling !== 'object') throw new ModelLoadError(file, 'rope_scaling must be an object or null');
    const s = scaling as Json;
    const kind = (s.rope_type ?? s.type) as string;
    const factor = Number(s.factor);
    if (!(factor > 0)) throw new ModelLoadError(file, 'rope_scaling.factor must be positive');
    if (kind === 'linear') {
      for (let i = 0; i < half; i++) inv[i] /= factor;
    } else if (kind === 'llama3') {
      const low = Number(s.low_freq_factor), high = Number(s.high_freq_factor);
      const original = Number(s.original_max_position_embeddings);
      if (!(low > 0 && high > low && original > 0)) throw new ModelLoadError(file, 'rope_scaling (llama3) is incomplete');
      const lowWavelen = original / low, highWavelen = original / high;
      for (let i = 0; i < half; i++) {
        const wavelen = (2 * Math.PI) / inv[i];
        if (wavelen > lowWavelen) inv[i] /= factor;
        else if (wavelen >= highWavelen) {
          const smooth = (original / wavelen - low) / (high - low);
          inv[i] = (1 - smooth) * (inv[i] / factor) + smooth * inv[i];
        }
      }
    } else if (kind !== 'default') {
      throw new ModelLoadError(file, `unsupported rope_scaling type ${JSON.stringify(kind)} (linear, llama3 or none)`);
    }
  }
  return Float32Array.from(inv);
}

export function parseModelConfig(cfg: Json, file: string): ModelConfig {
  const modelType = cfg.model_type;
  if (modelType !== 'llama' && modelType !== 'mistral' && modelType !== 'qwen2') {
    throw new ModelLoadError(file, `unsupported model_type ${JSON.stringify(modelType)} (llama, mistral or qwen2)`);
  }
  const dModel = int(cfg, 'hidden_size', file);
  const heads = int(cfg, 'num_attention_heads', file);
  const kvHeads = int(cfg, 'num_key_value_heads', file, heads);
  if (heads % kvHeads !== 0) {
    throw new ModelLoadError(file, `num_attention_heads (${heads}) must be a multiple of num_key_value_heads (${kvHeads})`);
  }
  const headDim = int(cfg, 'head_dim', file, Math.floor(dModel / heads));
  if (headDim % 32 !== 0) throw new ModelLoadError(file, `head_dim ${headDim} must be a multiple of 32 for the KV engine`);
  const eos = cfg.eos_token_id;
  const eosTokenIds = Array.isArray(eos) ? eos.map(Number) : typeof eos === 'number' ? [eos] : [];
  return {
    modelType,
    layers: int(cfg, 'num_hidden_layers', file),
    dModel,
    heads,
    kvHeads,
    headDim,
    dFf: int(cfg, 'intermediate_size', file),
    vocab: int(cfg, 'vocab_size', file),
    rmsEps: num(cfg, 'rms_norm_eps', file, 1e-6),
    maxPositions: int(cfg, 'max_position_embeddings', file, 2048),
    tiedEmbeddings: cfg.tie_word_embeddings === true,
    qkvBias: modelType === 'qwen2' ? cfg.attention_bias !== false : cfg.attention_bias === true,
    bosTokenId: typeof cfg.bos_token_id === 'number' ? cfg.bos_token_id : null,
    eosTokenIds,
    ropeInvFreq: ropeInverseFrequencies(headDim, num(cfg, 'rope_theta', file, 10000), cfg.rope_scaling, file),
  };
}
