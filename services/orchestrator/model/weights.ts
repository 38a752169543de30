// Finds every tensor the runtime needs in a model folder's safetensors files
// and checks its shape against the config. The result is a plan of
// (file, offset, dtype, rows, cols) that the native runtime memory-maps.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

import type { ModelConfig } from './config.js';
import { ModelLoadError } from './model-error.js';
import { readSafetensorsHeader, type TensorEntry } from './safetensors.js';

export interface WeightRef {
  name: string;
  file: string;
  offset: number;
  dtype: 'F32' | 'F16' | 'BF16';
  rows: number;
  cols: number;
}

export interface LayerWeightRefs {
  attnNorm: WeightRef; wq: WeightRef; wk: WeightRef; wv: WeightRef; wo: WeightRef;
  bq: WeightRef | null; bk: WeightRef | null; bv: WeightRef | null;
  mlpNorm: WeightRef; wGate: WeightRef; wUp: WeightRef; wDown: WeightRef;
}

export interface WeightPlan {
  files: string[];
  embed: WeightRef;
  finalNorm: WeightRef;
  lmHead: WeightRef;
  layers: LayerWeightRefs[];
}

export function safetensorsFiles(folder: string): string[] {
  if (!existsSync(folder)) throw new ModelLoadError(folder, 'model folder does not exist');
  const files = readdirSync(folder).filter((f) => f.endsWith('.safetensors')).sort();
  if (files.length === 0) throw new ModelLoadError(folder, 'no *.safetensors file in the model folder');
  return files.map((f) => join(folder, f));
}

export function planWeights(cfg: ModelConfig, files: string[]): WeightPlan {
  const all = new Map<string, TensorEntry>();
  for (const f of files) for (const [name, t] of readSafetensorsHeader(f)) all.set(name, t);
  const where = files.length === 1 ? files[0] : `${files.length} safetensors files`;

  const get = (name: string, shape: number[]): WeightRef => {
    const t = all.get(name);
    if (!t) throw new ModelLoadError(where, 'missing tensor', name);
    const flat = t.shape.length === 1 ? [t.shape[0]] : t.shape;
    if (flat.length !== shape.length || flat.some((d, i) => d !== shape[i])) {
      throw new ModelLoadError(t.file, `shape ${JSON.stringify(t.shape)} disagrees with config.json, which implies ${JSON.stringify(shape)}`, name);
    }
    return { name, file: t.file, offset: t.offset, dtype: t.dtype, rows: shape.length === 2 ? shape[0] : 1, cols: shape[shape.length - 1] };
  };
  const { dModel: d, heads, kvHeads, headDim: hd, dFf, vocab } = cfg;
  const layers: LayerWeightRefs[] = [];
  for (let l = 0; l < cfg.layers; l++) {
    const p = `model.layers.${l}.`;
    layers.push({
      attnNorm: get(`${p}input_layernorm.weight`, [d]),
      wq: get(`${p}self_attn.q_proj.weight`, [heads * hd, d]),
      wk: get(`${p}self_attn.k_proj.weight`, [kvHeads * hd, d]),
      wv: get(`${p}self_attn.v_proj.weight`, [kvHeads * hd, d]),
      wo: get(`${p}self_attn.o_proj.weight`, [d, heads * hd]),
      bq: cfg.qkvBias ? get(`${p}self_attn.q_proj.bias`, [heads * hd]) : null,
      bk: cfg.qkvBias ? get(`${p}self_attn.k_proj.bias`, [kvHeads * hd]) : null,
      bv: cfg.qkvBias ? get(`${p}self_attn.v_proj.bias`, [kvHeads * hd]) : null,
      mlpNorm: get(`${p}post_attention_layernorm.weight`, [d]),
      wGate: get(`${p}mlp.gate_proj.weight`, [dFf, d]),
      wUp: get(`${p}mlp.up_proj.weight`, [dFf, d]),
      wDown: get(`${p}mlp.down_proj.weight`, [d, dFf]),
    });
  }
  const embed = get('model.embed_tokens.weight', [vocab, d]);
  return {
    files,
    embed,
    finalNorm: get('model.norm.weight', [d]),
    lmHead: cfg.tiedEmbeddings ? embed : get('lm_head.weight', [vocab, d]),
    layers,
  };
}
