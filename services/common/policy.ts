// Policy names as users write them (CLI, JSON) and as the protos number them.
import { CachePolicy, PrecisionMode } from '../../gen/smartkv/v1/common_pb.js';

export const POLICY_NAMES = ['fp16', 'uniform-8', 'uniform-4', 'uniform-2', 'kivi-2', 'kivi-4', 'kivi-2-rot', 'kivi-4-rot', 'random', 'tiered', 'smartkv'] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];

const BY_PB: ReadonlyArray<[CachePolicy, PolicyName]> = [
  [CachePolicy.FP16, 'fp16'],
  [CachePolicy.UNIFORM_8, 'uniform-8'],
  [CachePolicy.UNIFORM_4, 'uniform-4'],
  [CachePolicy.UNIFORM_2, 'uniform-2'],
  [CachePolicy.KIVI_2, 'kivi-2'],
  [CachePolicy.KIVI_4, 'kivi-4'],
  [CachePolicy.KIVI_2_ROTATED, 'kivi-2-rot'],
  [CachePolicy.KIVI_4_ROTATED, 'kivi-4-rot'],
  [CachePolicy.RANDOM, 'random'],
  [CachePolicy.TIERED, 'tiered'],
  [CachePolicy.SMARTKV, 'smartkv'],
];

/** KIVI storage (published or over rotated K and V): never planned, the storage kind has the policy's name. */
export function isKiviPolicy(p: PolicyName): p is 'kivi-2' | 'kivi-4' | 'kivi-2-rot' | 'kivi-4-rot' {
  return p === 'kivi-2' || p === 'kivi-4' || p === 'kivi-2-rot' || p === 'kivi-4-rot';
}

/** undefined for UNSPECIFIED and unknown numbers. */
export function policyFromPb(p: CachePolicy): PolicyName | undefined {
  return BY_PB.find(([pb]) => pb === p)?.[1];
}

export function policyToPb(name: PolicyName): CachePolicy {
  return BY_PB.find(([, n]) => n === name)![0];
}

export function isPolicyName(s: string): s is PolicyName {
  return (POLICY_NAMES as readonly string[]).includes(s);
}

// Precision modes: 'downgrade-only' | 'reversible' (native/kv-engine.ts) and their proto numbers.
export const MODE_NAMES = ['downgrade-only', 'reversible'] as const;
export type ModeName = (typeof MODE_NAMES)[number];

/** undefined for UNSPECIFIED and unknown numbers. */
export function modeFromPb(m: PrecisionMode): ModeName | undefined {
  return m === PrecisionMode.DOWNGRADE_ONLY ? 'downgrade-only' : m === PrecisionMode.REVERSIBLE ? 'reversible' : undefined;
}

export function modeToPb(m: ModeName): PrecisionMode {
  return m === 'reversible' ? PrecisionMode.REVERSIBLE : PrecisionMode.DOWNGRADE_ONLY;
}

export function isModeName(s: string): s is ModeName {
  return (MODE_NAMES as readonly string[]).includes(s);
}
