// Argument checks for the KV engine. Each throws KvEngineError
// (INVALID_ARGUMENT) naming the argument and what is wrong with it.
import { invalid } from './errors.js';

export function checkInt(name: string, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `an integer ≥ ${min}` : `an integer in [${min}, ${max}]`;
    throw invalid(`${name} must be ${range}, got ${String(v)}`);
  }
  return v;
}

export function checkNumber(name: string, v: unknown, ok: (x: number) => boolean, range: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) throw invalid(`${name} must be ${range}, got ${String(v)}`);
  return v;
}

export function checkBool(name: string, v: unknown): boolean | undefined {
  if (v !== undefined && typeof v !== 'boolean') throw invalid(`${name} must be a boolean, got ${String(v)}`);
  return v;
}

export function checkOneOf<T extends string>(name: string, v: unknown, allowed: readonly T[]): T {
  if (typeof v !== 'string' || !allowed.includes(v as T))
    throw invalid(`${name} must be one of ${allowed.map((a) => `'${a}'`).join(', ')}, got ${String(v)}`);
  return v as T;
}

type TypedCtor = Float32ArrayConstructor | Uint8ArrayConstructor | Uint16ArrayConstructor | Uint32ArrayConstructor;

/** A typed array of exactly this type; `length` when given must match. */
export function checkArray<C extends TypedCtor>(name: string, v: unknown, ctor: C, length?: number): InstanceType<C> {
  if (!(v instanceof ctor)) {
    const got = v === null || v === undefined ? String(v) : (v as object).constructor?.name ?? typeof v;
    throw invalid(`${name} must be a ${ctor.name}, got ${got}`);
  }
  const a = v as InstanceType<C>;
  if (length !== undefined && a.length !== length)
    throw invalid(`${name} has ${a.length} elements, expected ${length}`);
  return a;
}

/** Rows implied by a buffer of `perRow` elements a row; explicit `rows` must agree. */
export function rowsOf(name: string, a: { length: number }, perRow: number, rows?: unknown): number {
  if (rows !== undefined) {
    const r = checkNumber(`${name}: rows`, rows, (x) => Number.isInteger(x) && x > 0, 'a positive integer');
    if (a.length !== r * perRow) throw invalid(`${name} has ${a.length} elements, expected ${r} rows × ${perRow}`);
    return r;
  }
  if (a.length === 0 || a.length % perRow !== 0)
    throw invalid(`${name} has ${a.length} elements: rows must be ≥ 1 and the length a multiple of ${perRow}`);
  return a.length / perRow;
}

/** A KV budget β: bytes held over FP16 bytes, in (0, 1]. */
export function checkBudget(name: string, beta: unknown): number {
  return checkNumber(name, beta, (x) => x > 0 && x <= 1, 'a budget in (0, 1]');
}
