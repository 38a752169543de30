// Errors of the KV engine, typed by code. The codes are the engine's own
// (smartkv::error_code_name) and map one-to-one onto gRPC status codes at the
// service boundary.

export type KvErrorCode = 'INVALID_ARGUMENT' | 'NOT_FOUND' | 'RESOURCE_EXHAUSTED' | 'FAILED_PRECONDITION' | 'INTERNAL';

const CODES: ReadonlySet<string> = new Set([
  'INVALID_ARGUMENT',
  'NOT_FOUND',
  'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION',
  'INTERNAL',
]);

export class KvEngineError extends Error {
  readonly code: KvErrorCode;

  constructor(code: KvErrorCode, message: string) {
    super(message);
    this.name = 'KvEngineError';
    this.code = code;
  }

  /** Wraps what the addon threw or rejected with. Created here, after the
   * await, so the stack is the caller's async stack, not an empty native one. */
  static fromNative(err: unknown, op: string): KvEngineError {
    if (err instanceof KvEngineError) return err;
    const e = err as { code?: unknown; message?: unknown };
    const code = typeof e?.code === 'string' && CODES.has(e.code) ? (e.code as KvErrorCode) : 'INTERNAL';
    const message = typeof e?.message === 'string' ? e.message : String(err);
    return new KvEngineError(code, `${op}: ${message}`);
  }
}

export function invalid(message: string): KvEngineError {
  return new KvEngineError('INVALID_ARGUMENT', message);
}
