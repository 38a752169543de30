// A loaded model: config, tokenizer and the native dense forward over
// memory-mapped weights. `step` runs one in-process model step for a batch of
// sequences with attention in a KvEngine; the split deployment drives the
// per-layer methods of `native` instead and attends in a cache service.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { loadAddon, type NativeModel, type NativeTensorRef } from '../../../native/binding.js';
import { invalid } from '../../../native/errors.js';
import type { KvEngine } from '../../../native/kv-engine.js';
import { parseModelConfig, type ModelConfig } from './config.js';
import { ModelLoadError } from './model-error.js';
import { loadTokenizer, type TextTokenizer } from './tokenizer.js';
import { planWeights, safetensorsFiles, type WeightRef } from './weights.js';

export interface StepInput {
  seq: number;
  /** The new tokens of this sequence (a prefill chunk, or one decode token). */
  tokens: number[];
}

const DTYPE_CODE = { F32: 0, F16: 1, BF16: 2 } as const;

export class Model {
  private constructor(
    readonly folder: string,
    readonly config: ModelConfig,
    readonly tokenizer: TextTokenizer,
    readonly native: NativeModel,
  ) {}

  static load(folder: string, opts: { threads?: number } = {}): Model {
    const configFile = join(folder, 'config.json');
    if (!existsSync(configFile)) throw new ModelLoadError(configFile, 'missing file');
    let raw: Record<string, unknown>;
    try {
      raw = JSON.parse(readFileSync(configFile, 'utf8'));
    } catch (e) {
      throw new ModelLoadError(configFile, `cannot read JSON: ${(e as Error).message}`);
    }
    const config = parseModelConfig(raw, configFile);
    const files = safetensorsFiles(folder);
    const plan = planWeights(config, files);
    const ref = (w: WeightRef | null): NativeTensorRef | null =>
      w && { file: files.indexOf(w.file), offset: w.offset, dtype: DTYPE_CODE[w.dtype], rows: w.rows, cols: w.cols };
    const native = new (loadAddon().NativeModel)({
      config: { ...config, ropeInvFreq: config.ropeInvFreq },
      files,
      weights: {
        embed: ref(plan.embed)!,
        finalNorm: ref(plan.finalNorm)!,
        lmHead: ref(plan.lmHead)!,
        layers: plan.layers.map((l) => Object.fromEntries(Object.entries(l).map(([k, w]) => [k, ref(w)]))),
      },
      threads: opts.threads ?? 0,
    });
    const tokenizer = loadTokenizer(folder, config.bosTokenId, config.eosTokenIds);
    return new Model(folder, config, tokenizer, native);
  }

  /**
   * One in-process step: each sequence's tokens are appended at its current
   * length and run through every layer. Returns logits [batch][vocab] (the
   * last token of each sequence), or [sum of tokens][vocab] with allRows.
   */
  async step(engine: KvEngine, batch: readonly StepInput[], opts: { allRows?: boolean } = {}): Promise<Float32Array> {
    const { vocab, maxPositions } = this.config;
    const total = batch.reduce((a, b) => a + b.tokens.length, 0);
    const tokens = new Uint32Array(total); // [sum rows]
    const positions = new Uint32Array(total); // [sum rows]
    let r = 0;
    for (const b of batch) {
      if (b.tokens.length === 0) throw invalid(`step: sequence ${b.seq} has no tokens`);
      const start = engine.length(b.seq, 0);
      if (start + b.tokens.length > maxPositions) {
        throw invalid(`step: sequence ${b.seq} would exceed the model's ${maxPositions} positions`);
      }
      for (let i = 0; i < b.tokens.length; i++, r++) {
        const t = b.tokens[i];
        if (!Number.isInteger(t) || t < 0 || t >= vocab) {
          throw invalid(`step: token id ${t} is outside the vocabulary [0, ${vocab})`);
        }
        tokens[r] = t;
        positions[r] = start + i;
      }
    }
    const logits = new Float32Array((opts.allRows ? total : batch.length) * vocab);
    const seqs = Uint32Array.from(batch.map((b) => b.seq));
    const rows = Uint32Array.from(batch.map((b) => b.tokens.length));
    await engine.runModelStep(
      batch.map((b) => ({ seq: b.seq, rows: b.tokens.length })),
      (native) => this.native.step(native, seqs, rows, tokens, positions, logits, opts.allRows === true),
    );
    return logits;
  }
}
