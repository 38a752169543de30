// gRPC status codes and the error that carries one, without loading
// @grpc/grpc-js (so that option parsing and validation can run before
// telemetry has patched it). The numbers are gRPC's, fixed by the protocol.
export const Status = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

export type StatusCode = (typeof Status)[keyof typeof Status];

/** An error that carries a gRPC status code; what every handler rejects with. */
export class RpcError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
    this.name = 'RpcError';
  }
}

export function invalidArgument(message: string): RpcError {
  return new RpcError(Status.INVALID_ARGUMENT, message);
}

export function statusName(code: number): string {
  return Object.entries(Status).find(([, v]) => v === code)?.[0] ?? String(code);
}
