// Server defaults and the checked form of a request. Every field is checked
// here, before anything is allocated, so a bad request fails with
// INVALID_ARGUMENT naming the field and leaves nothing behind.
import type { CacheSettings } from '../../gen/smartkv/v1/common_pb.js';
import type { GenerateRequest, ScoreRequest } from '../../gen/smartkv/v1/generation_pb.js';
import { invalidArgument } from '../common/rpc-error.js';
import { defaultPromptBytes } from '../common/limits.js';
import { modeFromPb, policyFromPb, type ModeName, type PolicyName } from '../common/policy.js';
import { BudgetHorizon, CachePolicy, ImportanceMode, LayerMode, PrecisionMode } from '../../gen/smartkv/v1/common_pb.js';
import type { ModelConfig } from './model/config.js';
import type { TextTokenizer } from './model/tokenizer.js';

export interface CacheChoice {
  policy: PolicyName;
  beta: number; // target bytes held / FP16 bytes
  gamma: number;
  reallocInterval: number; // decode steps between reallocations
  sinks: number;
  window: number;
  normalised: boolean; // importance read normalised (IMPORTANCE_MODE_NORMALISED)
  perLayer: boolean; // a bit-width per (token, layer) (LAYER_MODE_PER_LAYER)
  mode: ModeName; // downgrade-only (no master copy) or reversible (master copy in its own tier)
  horizon: HorizonName; // when β binds during the prefill (BudgetHorizon)
}

/** BudgetHorizon by name: `now` (every plan meets β over what it holds), `prompt` (plans
 * between prefill chunks may hold β × the whole prompt) or `end` (no plan until the prompt
 * is read; the prompt is held at 16 bits until then). */
export type HorizonName = 'now' | 'prompt' | 'end';
export const HORIZON_NAMES: readonly HorizonName[] = ['now', 'prompt', 'end'];
const HORIZON_PB: Record<HorizonName, BudgetHorizon> = { now: BudgetHorizon.NOW, prompt: BudgetHorizon.PROMPT, end: BudgetHorizon.END };
export const horizonToPb = (h: HorizonName) => HORIZON_PB[h];
export const horizonFromPb = (h: BudgetHorizon): HorizonName | undefined => HORIZON_NAMES.find((n) => HORIZON_PB[n] === h);

export interface ServerDefaults {
  cache: CacheChoice;
  prefillChunk: number; // prompt tokens per prefill chunk
  maxBatch: number; // sequences decoded together
  maxStopStrings: number;
  maxStopBytes: number;
  /** UTF-8 bytes of a prompt or Score text, checked before tokenising (0: limits.ts's default for the model). */
  maxPromptBytes: number;
  /** Requests waiting for a batch slot; one more is refused with RESOURCE_EXHAUSTED. */
  maxQueue: number;
  /** Requests one client may have in flight (queued or running); one more is refused with RESOURCE_EXHAUSTED. */
  maxStreamsPerClient: number;
}

export const DEFAULTS: ServerDefaults = {
  cache: { policy: 'smartkv', beta: 0.5, gamma: 0.9, reallocInterval: 16, sinks: 4, window: 64, normalised: false, perLayer: false, mode: 'downgrade-only', horizon: 'prompt' },
  prefillChunk: 128,
  maxBatch: 16,
  maxStopStrings: 8,
  maxStopBytes: 256,
  maxPromptBytes: 0,
  maxQueue: 256,
  maxStreamsPerClient: 64,
};

export interface SamplingChoice {
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
}

export interface GenerateJobSpec {
  kind: 'generate';
  prompt: number[];
  maxTokens: number;
  sampling: SamplingChoice;
  stop: string[];
  cache: CacheChoice;
}

export interface ScoreJobSpec {
  kind: 'score';
  tokens: number[];
  prefillTokens: number; // fed as prefill chunks; the rest one at a time
  cache: CacheChoice;
}

export type JobSpec = GenerateJobSpec | ScoreJobSpec;

export function resolveCache(c: CacheSettings | undefined, d: ServerDefaults): CacheChoice {
  const out = { ...d.cache };
  if (!c) return out;
  if (c.policy !== CachePolicy.UNSPECIFIED) {
    const p = policyFromPb(c.policy);
    if (!p) throw invalidArgument(`cache.policy: unknown policy ${c.policy}`);
    out.policy = p;
  }
  if (c.budget !== undefined) {
    if (!(c.budget > 0 && c.budget <= 1)) throw invalidArgument(`cache.budget must be in (0, 1], got ${c.budget}`);
    out.beta = c.budget;
  }
  if (c.gamma !== undefined) {
    if (!(c.gamma >= 0 && c.gamma < 1)) throw invalidArgument(`cache.gamma must be in [0, 1), got ${c.gamma}`);
    out.gamma = c.gamma; // the cache service runs this sequence's EMA with it
  }
  if (c.reallocInterval !== undefined) {
    if (c.reallocInterval < 1 || c.reallocInterval > 4096) throw invalidArgument(`cache.realloc_interval must be in [1, 4096], got ${c.reallocInterval}`);
    out.reallocInterval = c.reallocInterval;
  }
  if (c.sinks !== undefined) {
    if (c.sinks > 1024) throw invalidArgument(`cache.sinks must be ≤ 1024, got ${c.sinks}`);
    out.sinks = c.sinks;
  }
  if (c.importance !== ImportanceMode.UNSPECIFIED) {
    if (!ImportanceMode[c.importance]) throw invalidArgument(`cache.importance: unknown mode ${c.importance}`);
    out.normalised = c.importance === ImportanceMode.NORMALISED;
  }
  if (c.layers !== LayerMode.UNSPECIFIED) {
    if (!LayerMode[c.layers]) throw invalidArgument(`cache.layers: unknown mode ${c.layers}`);
    out.perLayer = c.layers === LayerMode.PER_LAYER;
  }
  if (c.mode !== PrecisionMode.UNSPECIFIED) {
    const m = modeFromPb(c.mode);
    if (!m) throw invalidArgument(`cache.mode: unknown precision mode ${c.mode}`);
    out.mode = m;
  }
  if (c.horizon !== BudgetHorizon.UNSPECIFIED) {
    const h = horizonFromPb(c.horizon);
    if (!h) throw invalidArgument(`cache.horizon: unknown budget horizon ${c.horizon}`);
    out.horizon = h;
  }
  if (c.window !== undefined) {
    if (c.window > 65536) throw invalidArgument(`cache.window must be ≤ 65536, got ${c.window}`);
    out.window = c.window;
  }
  return out;
}

function promptTokens(text: string, ids: number[], cfg: ModelConfig, tok: TextTokenizer, field: string, d: ServerDefaults): number[] {
  if (text.length > 0 && ids.length > 0) throw invalidArgument(`${field}: give either text or token_ids, not both`);
  if (text.length === 0 && ids.length === 0) throw invalidArgument(`${field}: empty (give text or token_ids)`);
  // Before tokenising: a 10 MB prompt took 2.5 s to tokenise before its length was checked.
  const maxBytes = d.maxPromptBytes || defaultPromptBytes(cfg);
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > maxBytes) throw invalidArgument(`${field}: ${bytes} bytes exceed the limit of ${maxBytes} bytes (max_prompt_bytes, --max-prompt-bytes; the context is ${cfg.maxPositions} tokens)`);
  const tokens = ids.length > 0 ? [...ids] : tok.encode(text);
  tokens.forEach((t, i) => {
    if (t >= cfg.vocab) throw invalidArgument(`token_ids[${i}] = ${t} is outside the vocabulary [0, ${cfg.vocab})`);
  });
  return tokens;
}

export function generateSpec(req: GenerateRequest, cfg: ModelConfig, tok: TextTokenizer, d: ServerDefaults): GenerateJobSpec {
  const prompt = promptTokens(req.prompt, req.tokenIds, cfg, tok, 'prompt', d);
  if (req.maxTokens < 1) throw invalidArgument(`max_tokens must be ≥ 1, got ${req.maxTokens}`);
  if (prompt.length + req.maxTokens > cfg.maxPositions)
    throw invalidArgument(`max_tokens: ${prompt.length} prompt tokens + ${req.maxTokens} exceed the model's context of ${cfg.maxPositions}`);
  if (!(req.temperature >= 0) || !Number.isFinite(req.temperature)) throw invalidArgument(`temperature must be ≥ 0, got ${req.temperature}`);
  const topP = req.topP ?? 1;
  if (!(topP > 0 && topP <= 1)) throw invalidArgument(`top_p must be in (0, 1], got ${topP}`);
  if (req.stop.length > d.maxStopStrings) throw invalidArgument(`stop: ${req.stop.length} stop strings, at most ${d.maxStopStrings}`);
  req.stop.forEach((s, i) => {
    if (s.length === 0) throw invalidArgument(`stop[${i}] is empty`);
    if (Buffer.byteLength(s) > d.maxStopBytes) throw invalidArgument(`stop[${i}] is longer than ${d.maxStopBytes} bytes`);
  });
  return {
    kind: 'generate',
    prompt,
    maxTokens: req.maxTokens,
    sampling: { temperature: req.temperature, topK: req.topK, topP, seed: Number(req.seed & 0xffffffffn) },
    stop: [...req.stop],
    cache: resolveCache(req.cache, d),
  };
}

export function scoreSpec(req: ScoreRequest, cfg: ModelConfig, tok: TextTokenizer, d: ServerDefaults): ScoreJobSpec {
  const tokens = promptTokens(req.text, req.tokenIds, cfg, tok, 'text', d);
  if (tokens.length < 2) throw invalidArgument(`text: ${tokens.length} token(s); scoring needs at least 2`);
  if (tokens.length > cfg.maxPositions) throw invalidArgument(`text: ${tokens.length} tokens exceed the model's context of ${cfg.maxPositions}`);
  const prefillTokens = req.prefillTokens === 0 ? Math.min(tokens.length - 1, d.prefillChunk) : req.prefillTokens;
  if (prefillTokens >= tokens.length) throw invalidArgument(`prefill_tokens must be below the ${tokens.length} tokens scored, got ${prefillTokens}`);
  return { kind: 'score', tokens, prefillTokens, cache: resolveCache(req.cache, d) };
}
