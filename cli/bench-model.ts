// `smartkv bench model`: the reference model in-process — prefill tokens/s
// (one 512-token chunk) and decode tokens/s at batch 1 and 8 — with an FP16
// (uncompressed) cache. Attention and the dense forward run natively on one
// worker thread per step; the numbers include the Node <-> addon hop.
import { KvEngine } from '../native/kv-engine.js';
import { Model } from '../services/orchestrator/model/model.js';
import { defaultModelDir } from '../services/orchestrator/model/paths.js';
import { median } from './bench-stats.js';

export interface BenchModelOptions {
  json: boolean;
  quick: boolean;
  model?: string;
}

interface Io {
  out: (line: string) => void;
  progress: (line: string) => void;
}

export async function benchModel(opts: BenchModelOptions, io: Io): Promise<void> {
  const model = Model.load(opts.model ?? defaultModelDir());
  const c = model.config;
  const engine = new KvEngine({ layers: c.layers, qHeads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, quant: 'symmetric' });
  const prompt = Math.min(opts.quick ? 64 : 512, c.maxPositions - 64);
  const steps = opts.quick ? 8 : 48;
  const rows: Record<string, unknown>[] = [];
  const tokensOf = (n: number, salt: number) => Array.from({ length: n }, (_, i) => 32 + ((i * 7 + salt * 13) % 90));

  // Prefill: one chunk of `prompt` tokens per sequence, median over 5 sequences.
  const prefillUs: number[] = [];
  for (let i = 0; i < (opts.quick ? 2 : 5); i++) {
    const seq = await engine.createSequence();
    const t0 = process.hrtime.bigint();
    await model.step(engine, [{ seq, tokens: tokensOf(prompt, i) }]);
    prefillUs.push(Number(process.hrtime.bigint() - t0) / 1e3);
    await engine.freeSequence(seq);
  }
  rows.push({ mode: 'in-process', phase: 'prefill', batch: 1, tokens: prompt, tokens_per_s: (prompt * 1e6) / median(prefillUs) });
  io.progress(`prefill ${prompt} tokens: ${(median(prefillUs) / 1e3).toFixed(1)} ms`);

  for (const batch of [1, 8]) {
    const seqs: number[] = [];
    for (let b = 0; b < batch; b++) {
      const seq = await engine.createSequence();
      await model.step(engine, [{ seq, tokens: tokensOf(prompt, b) }]);
      seqs.push(seq);
    }
    const stepUs: number[] = [];
    for (let s = 0; s < steps; s++) {
      const t0 = process.hrtime.bigint();
      await model.step(engine, seqs.map((seq) => ({ seq, tokens: [65 + (s % 26)] })));
      stepUs.push(Number(process.hrtime.bigint() - t0) / 1e3);
    }
    for (const seq of seqs) await engine.freeSequence(seq);
    const us = median(stepUs);
    rows.push({ mode: 'in-process', phase: 'decode', batch, context: prompt, step_us: us, tokens_per_s: (batch * 1e6) / us });
    io.progress(`decode batch ${batch}: ${(us / 1e3).toFixed(2)} ms/step`);
  }
  await engine.close();
  if (opts.json) for (const r of rows) io.out(JSON.stringify(r));
  else {
    io.out(`model ${model.folder}: ${c.layers} layers, d_model ${c.dModel}, ${c.heads}/${c.kvHeads} heads, head_dim ${c.headDim}; FP16 cache, in-process`);
    io.out('phase    batch  context/tokens   tokens/s');
    for (const r of rows)
      io.out(`${String(r.phase).padEnd(8)} ${String(r.batch).padStart(5)}  ${String(r.tokens ?? r.context).padStart(14)}   ${Number(r.tokens_per_s).toFixed(1).padStart(8)}`);
  }
}
