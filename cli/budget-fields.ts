// The bytes behind a result in the names every JSON output uses
// (target_beta, achieved_beta, hot_bytes, master_bytes, fp16_bytes, mode,
// budget_met, peak_hot_bytes), and the human phrase that says whether β was met and why not.
import type { BudgetReport } from '../gen/smartkv/v1/common_pb.js';
import { modeFromPb } from '../services/common/policy.js';

export interface BudgetFields {
  target_beta: number | null; // null: the policy takes no budget
  achieved_beta: number;
  hot_bytes: number;
  master_bytes: number;
  fp16_bytes: number;
  mode: string;
  budget_met: boolean;
  binds_from_tokens: number | null;
  peak_hot_bytes: number; // the most hot bytes held at any time while it ran
}

export function budgetFields(b: BudgetReport | undefined): BudgetFields {
  return {
    target_beta: b && b.targetBeta > 0 ? b.targetBeta : null,
    achieved_beta: b?.achievedBeta ?? 0,
    hot_bytes: Number(b?.hotBytes ?? 0),
    master_bytes: Number(b?.masterBytes ?? 0),
    fp16_bytes: Number(b?.fp16Bytes ?? 0),
    mode: (b && modeFromPb(b.mode)) ?? 'unknown',
    budget_met: b?.budgetMet ?? false,
    binds_from_tokens: b && b.targetBeta > 0 ? b.bindsFromTokens : null,
    peak_hot_bytes: Number(b?.peakHotBytes ?? 0),
  };
}

const mb = (n: number) => (n >= 1e6 ? `${(n / 1e6).toFixed(2)} MB` : `${(n / 1e3).toFixed(1)} kB`);

/** "β 0.249 ≤ 0.25 (met); hot 1.23 MB, master 0 B, FP16 4.95 MB; downgrade-only" or why not. */
export function budgetPhrase(f: BudgetFields, tokens: number): string {
  const bytes = `hot ${mb(f.hot_bytes)}, master ${f.master_bytes ? mb(f.master_bytes) : '0 B'}, FP16 ${mb(f.fp16_bytes)}; ${f.mode}`;
  if (f.target_beta === null) return `β ${f.achieved_beta.toFixed(3)} (no budget); ${bytes}`;
  if (f.budget_met) return `β ${f.achieved_beta.toFixed(3)} ≤ ${f.target_beta} (met); ${bytes}`;
  const why =
    f.binds_from_tokens === null || f.binds_from_tokens === 0
      ? 'no sequence length can meet it'
      : tokens < f.binds_from_tokens
        ? `budget binds from ${f.binds_from_tokens} tokens, this sequence holds ${tokens}`
        : 'tokens that can no longer be lowered (downgrade-only) or a plan that missed it';
  return `β ${f.achieved_beta.toFixed(3)}, target ${f.target_beta} NOT MET (${why}); ${bytes}`;
}
