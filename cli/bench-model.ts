// `smartkv bench model`: the reference model in-process — prefill tokens/s
// (one 512-token chunk) and decode tokens/s at batch 1 and 8 — with an FP16
// (uncompressed) cache. Attention and the dense forward run natively on one
// worker thread per step; the numbers include the Node <-> addon hop.
// Then the context sweep: one sequence at 1K, 4K and 8K tokens (those the
// model holds) through the in-process orchestrator (scheduler, local cache and
// allocator: what `--in-process` serves), fp16 and smartkv at β = 0.25 —
// prefill tokens/s (128-token chunks, plans between them) and decode tokens/s
// (reallocation every R steps) at that context.
import { KvEngine } from '../native/kv-engine.js';
import { Model } from '../services/orchestrator/model/model.js';
import { defaultModelDir } from '../services/orchestrator/model/paths.js';
import { Orchestrator } from '../services/orchestrator/orchestrator.js';
import { budgetReport } from '../services/orchestrator/job.js';
import { DEFAULTS, type GenerateJobSpec } from '../services/orchestrator/settings.js';
import type { PolicyName } from '../services/common/policy.js';
import { median } from './bench-stats.js';

export const SWEEP_CONTEXTS = [1024, 4096, 8192];
const SWEEP_ROWS: { policy: PolicyName; beta: number }[] = [{ policy: 'fp16', beta: 1 }, { policy: 'smartkv', beta: 0.25 }];

/** Prefill and decode tokens/s of one sequence that ends at `context` tokens. */
async function sweepOne(orch: Orchestrator, context: number, decode: number, row: (typeof SWEEP_ROWS)[number]) {
  const prefillUs: number[] = [], decodeUs: number[] = [];
  orch.scheduler.onStep = (s) => (s.rows > 1 ? prefillUs : decodeUs).push(s.stepUs);
  // Bytes of ordinary text (one token each for the byte-level model), BOS first.
  const text = Buffer.from('The committee met on Tuesday and said that the new bridge would open next spring. '.repeat(Math.ceil(context / 80)));
  const spec: GenerateJobSpec = {
    kind: 'generate',
    prompt: [256, ...text.subarray(0, context - decode - 1)],
    maxTokens: decode,
    sampling: { temperature: 0, topK: 0, topP: 1, seed: 1 },
    stop: [],
    cache: { ...DEFAULTS.cache, policy: row.policy, beta: row.beta },
  };
  const outcome = await orch.scheduler.submit(spec, {}).done;
  orch.scheduler.onStep = null;
  const b = budgetReport(outcome.cache, spec.cache);
  const prompt = spec.prompt.length;
  const sum = (xs: number[]) => xs.reduce((a, x) => a + x, 0);
  return [
    { system: 'in-process', phase: 'prefill', batch: 1, context, policy: row.policy, target_beta: row.policy === 'fp16' ? null : row.beta, tokens: prompt, tokens_per_s: (prompt * 1e6) / sum(prefillUs) },
    { system: 'in-process', phase: 'decode', batch: 1, context, policy: row.policy, target_beta: row.policy === 'fp16' ? null : row.beta, tokens: decodeUs.length, step_us: median(decodeUs), tokens_per_s: 1e6 / median(decodeUs), achieved_beta: b.achievedBeta, hot_bytes: b.hotBytes, fp16_bytes: b.fp16Bytes, budget_met: b.budgetMet, mode: b.mode, master_bytes: b.masterBytes },
  ];
}

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
  rows.push({ system: 'in-process', phase: 'prefill', batch: 1, tokens: prompt, tokens_per_s: (prompt * 1e6) / median(prefillUs) });
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
    rows.push({ system: 'in-process', phase: 'decode', batch, context: prompt, step_us: us, tokens_per_s: (batch * 1e6) / us });
    io.progress(`decode batch ${batch}: ${(us / 1e3).toFixed(2)} ms/step`);
  }
  await engine.close();

  const contexts = (opts.quick ? [256] : SWEEP_CONTEXTS).filter((n) => n <= c.maxPositions);
  if (contexts.length) {
    const orch = await Orchestrator.create({ modelDir: model.folder, defaults: DEFAULTS, local: { engine: { quant: 'symmetric', rotateKv: true, mode: DEFAULTS.cache.mode }, memoryLimitBytes: 0 }, log: () => undefined });
    try {
      for (const context of contexts) {
        for (const row of SWEEP_ROWS) {
          const [pre, dec] = await sweepOne(orch, context, opts.quick ? 8 : 64, row);
          rows.push(pre, dec);
          io.progress(`context ${context} ${row.policy}${row.policy === 'fp16' ? '' : ` β ${row.beta}`}: prefill ${pre.tokens_per_s.toFixed(0)} tokens/s, decode ${dec.tokens_per_s.toFixed(1)} tokens/s (β achieved ${(dec.achieved_beta ?? 1).toFixed(3)})`);
        }
      }
    } finally {
      await orch.close(1000);
    }
  }
  if (opts.json) for (const r of rows) io.out(JSON.stringify(r));
  else {
    io.out(`model ${model.folder}: ${c.layers} layers, d_model ${c.dModel}, ${c.heads}/${c.kvHeads} heads, head_dim ${c.headDim}; FP16 cache, in-process`);
    io.out('phase    batch  context/tokens  policy        β achieved   tokens/s');
    for (const r of rows)
      io.out(
        `${String(r.phase).padEnd(8)} ${String(r.batch).padStart(5)}  ${String(r.context ?? r.tokens).padStart(14)}  ${String(r.policy ?? 'fp16 (engine)').padEnd(13)} ` +
          `${r.achieved_beta === undefined ? '         —' : Number(r.achieved_beta).toFixed(3).padStart(10)}   ${Number(r.tokens_per_s).toFixed(1).padStart(8)}`,
      );
  }
}
