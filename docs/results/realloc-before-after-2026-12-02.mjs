// Before/after on the same workload (issue 12): the old reallocation (commit
// ac42310: Allocate in a retry loop, an ApplyPlan per plan) vs the new one (one
// exact Allocate, one ApplyPlan), on one real engine per run with the
// reference model's shape (4 layers, 2 KV heads × 64), random K/V, 128-token
// prefill then decode to 1023 tokens with a plan every 16 tokens. "met" is
// measured in the engine: β ≤ target at every token until the next plan.
//
// Setup (from the repository root, after npm run build):
//   mkdir -p /tmp/realloc-old && git show ac42310:services/orchestrator/reallocate.ts > /tmp/realloc-old/reallocate-old.ts
//   # point its four imports at dist/ (absolute paths), then
//   npx tsc --target es2022 --module nodenext --moduleResolution nodenext --skipLibCheck --noCheck --outDir /tmp/realloc-old/out /tmp/realloc-old/reallocate-old.ts
//   OLD=/tmp/realloc-old/out/reallocate-old.js node docs/results/realloc-before-after-2026-12-02.mjs > docs/results/realloc-before-after-2026-12-02.jsonl
const ROOT = new URL('../../dist/', import.meta.url).href;
const { CacheCore } = await import(ROOT + 'services/cache/cache-core.js');
const { allocate } = await import(ROOT + 'services/allocator/policies.js');
const { LocalAllocator } = await import(ROOT + 'services/orchestrator/allocator-client.js');
const { reallocate: newRealloc } = await import(ROOT + 'services/orchestrator/reallocate.js');
const { reallocate: oldRealloc } = await import(process.env.OLD ?? '/tmp/realloc-old/out/reallocate-old.js');
const { bindsFrom } = await import(ROOT + 'services/allocator/plan-cost.js');

const L = 4, QH = 4, KV = 2, D = 64, FP16 = 2 * KV * D * 2;
function rng(seed) { let s = seed >>> 0; return () => { s = (s + 0x6d2b79f5) >>> 0; let t = s; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; }; }
const g = (u, n) => Float32Array.from({ length: n }, () => (u() - 0.5) * 4);

async function run(which, beta, reversible, seed) {
  const core = new CacheCore({ layers: L, qHeads: QH, kvHeads: KV, headDim: D, quant: 'symmetric', threads: 1, rotateKv: true });
  const { seq, tokenBytes } = await core.createSequence('mixed', 0, undefined, '', reversible ? 'reversible' : 'downgrade-only');
  const u = rng(seed);
  const lay = { layers: L, fp16TokenBytes: FP16, tokenBytes, blockTokens: 32 };
  let calls = 0, applies = 0, plans = 0, met = 0, flagMet = 0, us = 0;
  const oldAlloc = { allocate: async (p, input) => { calls++; const t0 = performance.now(); const allocation = allocate(p, input); return { allocation, allocateUs: Math.round((performance.now() - t0) * 1000) }; } };
  const newAlloc = new LocalAllocator();
  const shardOld = { exportImportance: (s) => core.exportImportance(s), applyPlan: (s, layer, positions, formats) => { applies++; return core.applyPlan(s, [{ layer, positions, formats }]); } };
  const shardNew = { exportImportance: (s) => core.exportImportance(s), applyPlan: (s, p) => { applies++; return core.applyPlan(s, p); } };
  const opt = { policy: 'smartkv', beta, sinks: 4, window: 64, ahead: 16, seed: 7919, gamma: 0.9, normalised: false, perLayer: false };
  const from = bindsFrom({ targetBeta: beta, blockTokens: 32, blockBytes: tokenBytes.map((t) => t * 32), tokenMetaBytes: 8, metaPageTokens: 128, tableEntryBytes: 8, fp16TokenBytes: FP16, layers: L, aheadTokens: 16, protectedTokens: 68 });
  let bindPlans = 0, bindMet = 0, cur = 0;
  let pending = null; // the plan whose budget runs until the next one: did β hold at every step?
  const plan = async () => {
    if (pending) { plans++; met += pending.ok ? 1 : 0; flagMet += pending.fits ? 1 : 0; if (pending.n >= from) { bindPlans++; bindMet += pending.ok ? 1 : 0; } }
    const t0 = performance.now();
    let r;
    if (which === 'old') r = await oldRealloc(shardOld, seq, oldAlloc, lay, opt, (await core.stats(seq)).bytes.metadataBytes, reversible);
    else { r = await newRealloc(shardNew, seq, newAlloc, lay, opt, reversible); calls = newAlloc.calls; }
    us += (performance.now() - t0) * 1000;
    const b = (await core.stats(seq)).bytes;
    pending = { ok: b.heldBytes <= beta * b.fp16Bytes, fits: r.fits, n: b.tokens / L };
  };
  // Prefill 128 tokens, plan, then decode to 1023 with a plan every 16 tokens.
  for (let l = 0; l < L; l++) await core.attend(l, [{ seq, rows: 128, q: g(u, 128 * QH * D), kNew: g(u, 128 * KV * D), vNew: g(u, 128 * KV * D) }]);
  await plan();
  for (let n = 129, k = 0; n <= 1023; n++) {
    for (let l = 0; l < L; l++) await core.attend(l, [{ seq, rows: 1, q: g(u, QH * D), kNew: g(u, KV * D), vNew: g(u, KV * D) }]);
    const b = (await core.stats(seq)).bytes;
    if (b.heldBytes > beta * b.fp16Bytes) pending.ok = false;
    if (++k === 16) { k = 0; await plan(); }
  }
  const b = (await core.stats(seq)).bytes;
  await core.close();
  const reallocs = plans + 1;
  return { which, beta, mode: reversible ? 'reversible' : 'downgrade-only', reallocations: reallocs, allocate_calls_per_realloc: +(calls / reallocs).toFixed(2), apply_calls_per_realloc: +(applies / reallocs).toFixed(2),
    met_share_engine: +(met / plans).toFixed(3), met_share_flag: +(flagMet / plans).toFixed(3), binds_from: from, plans_where_binding: bindPlans, met_share_where_binding: bindPlans ? +(bindMet / bindPlans).toFixed(3) : null, realloc_us_mean: Math.round(us / reallocs), final_beta: +(b.heldBytes / b.fp16Bytes).toFixed(4) };
}

for (const reversible of [true, false])
  for (const beta of [0.25, 0.33, 0.5])
    for (const which of ['old', 'new']) console.log(JSON.stringify(await run(which, beta, reversible, 11)));
