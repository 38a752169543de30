// Writes a small Hugging Face-layout Llama checkpoint with random weights and
// a byte-level BPE tokenizer.json, for tests of the loader and runtime.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { gaussian } from './random.js';

export interface TinySpec {
  layers: number; dModel: number; heads: number; kvHeads: number; headDim: number; dFf: number; vocab: number;
  dtype: 'F32' | 'BF16' | 'F16';
  tied: boolean;
}

export const TINY: TinySpec = { layers: 2, dModel: 64, heads: 4, kvHeads: 2, headDim: 32, dFf: 96, vocab: 300, dtype: 'BF16', tied: false };

type Tensor = { shape: number[]; data: Float32Array };

function encodeTensor(t: Tensor, dtype: TinySpec['dtype']): Buffer {
  if (dtype === 'F32') return Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const out = Buffer.alloc(t.data.length * 2);
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  for (let i = 0; i < t.data.length; i++) {
    f[0] = t.data[i];
    if (dtype === 'BF16') out.writeUInt16LE((u[0] + 0x7fff + ((u[0] >>> 16) & 1)) >>> 16, i * 2);
    else out.writeUInt16LE(toHalf(t.data[i]), i * 2);
  }
  return out;
}

function toHalf(x: number): number {
  // Adequate for test weights (normal range, no subnormals).
  const f = new Float32Array([x]), u = new Uint32Array(f.buffer)[0];
  const sign = (u >>> 16) & 0x8000, exp = ((u >>> 23) & 0xff) - 112, man = (u >>> 13) & 0x3ff;
  if (exp <= 0) return sign;
  return sign | (exp << 10) | man;
}

/** safetensors bytes: [u64 header length][JSON header][data]. */
export function safetensorsBytes(tensors: Record<string, Tensor>, dtype: TinySpec['dtype'], headerPatch?: (h: Record<string, unknown>) => void): Buffer {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const bytes = encodeTensor(t, dtype);
    header[name] = { dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  headerPatch?.(header);
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, json, ...chunks]);
}

export function tinyTensors(s: TinySpec, seed = 1): Record<string, Tensor> {
  let counter = 0;
  const t = (shape: number[], sigma: number, mean = 0): Tensor => {
    const data = gaussian(shape.reduce((a, b) => a * b, 1), seed * 1000 + counter++, sigma);
    for (let i = 0; i < data.length; i++) data[i] += mean;
    return { shape, data };
  };
  const out: Record<string, Tensor> = { 'model.embed_tokens.weight': t([s.vocab, s.dModel], 1) };
  for (let l = 0; l < s.layers; l++) {
    const p = `model.layers.${l}.`;
    out[`${p}input_layernorm.weight`] = t([s.dModel], 0.1, 1);
    out[`${p}self_attn.q_proj.weight`] = t([s.heads * s.headDim, s.dModel], 0.15);
    out[`${p}self_attn.k_proj.weight`] = t([s.kvHeads * s.headDim, s.dModel], 0.15);
    out[`${p}self_attn.v_proj.weight`] = t([s.kvHeads * s.headDim, s.dModel], 0.15);
    out[`${p}self_attn.o_proj.weight`] = t([s.dModel, s.heads * s.headDim], 0.1);
    out[`${p}post_attention_layernorm.weight`] = t([s.dModel], 0.1, 1);
    out[`${p}mlp.gate_proj.weight`] = t([s.dFf, s.dModel], 0.1);
    out[`${p}mlp.up_proj.weight`] = t([s.dFf, s.dModel], 0.1);
    out[`${p}mlp.down_proj.weight`] = t([s.dModel, s.dFf], 0.1);
  }
  out['model.norm.weight'] = t([s.dModel], 0.1, 1);
  if (!s.tied) out['lm_head.weight'] = t([s.vocab, s.dModel], 0.5);
  return out;
}

export function tinyConfig(s: TinySpec): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: s.dModel, intermediate_size: s.dFf,
    num_hidden_layers: s.layers, num_attention_heads: s.heads, num_key_value_heads: s.kvHeads, head_dim: s.headDim,
    max_position_embeddings: 256, rms_norm_eps: 1e-5, rope_theta: 10000, vocab_size: s.vocab,
    bos_token_id: 0, eos_token_id: 1, tie_word_embeddings: s.tied,
  };
}

/** GPT-2's byte -> printable character map, which ByteLevel BPE vocabularies use. */
function bytesToUnicode(): string[] {
  const keep: number[] = [];
  for (let b = 33; b <= 126; b++) keep.push(b);
  for (let b = 161; b <= 172; b++) keep.push(b);
  for (let b = 174; b <= 255; b++) keep.push(b);
  const map: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) map[b] = keep.includes(b) ? String.fromCharCode(b) : String.fromCharCode(256 + extra++);
  return map;
}

/** A byte-level BPE tokenizer.json: <s>, </s>, the 256 bytes, and a few merges. */
export function tinyTokenizerJson(vocabSize: number): Record<string, unknown> {
  const chars = bytesToUnicode();
  const vocab: Record<string, number> = { '<s>': 0, '</s>': 1 };
  chars.forEach((c, i) => (vocab[c] = i + 2));
  const merges: string[] = [];
  const space = chars[32];
  for (const [a, b] of [['t', 'h'], ['th', 'e'], [space, 'the'], ['i', 'n'], [space, 'a']]) {
    if (Object.keys(vocab).length >= vocabSize) break;
    merges.push(`${a} ${b}`);
    vocab[a + b] = Object.keys(vocab).length;
  }
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [
      { id: 0, content: '<s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
      { id: 1, content: '</s>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    ],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [0], tokens: ['<s>'] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges },
  };
}

/** Writes the whole checkpoint into a fresh temp folder and returns its path. */
export function writeTinyCheckpoint(s: TinySpec = TINY, patch?: { config?: (c: Record<string, unknown>) => void; header?: (h: Record<string, unknown>) => void; tensors?: (t: Record<string, Tensor>) => void; truncateTo?: number }): string {
  const dir = mkdtempSync(join(tmpdir(), 'smartkv-tiny-'));
  const config = tinyConfig(s);
  patch?.config?.(config);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  const tensors = tinyTensors(s);
  patch?.tensors?.(tensors);
  let bytes = safetensorsBytes(tensors, s.dtype, patch?.header);
  if (patch?.truncateTo !== undefined) bytes = bytes.subarray(0, patch.truncateTo);
  writeFileSync(join(dir, 'model.safetensors'), bytes);
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tinyTokenizerJson(s.vocab)));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>' }));
  return dir;
}
