// The spans and metrics SmartKV records, in one place. Everything goes
// through @opentelemetry/api, so it costs next to nothing when telemetry is
// not started (no-op tracer and meter).
import { context, metrics, propagation, trace, type Attributes, type Context, type Link, type Span } from '@opentelemetry/api';

export const tracer = () => trace.getTracer('smartkv');

let meterCache: ReturnType<typeof makeInstruments> | null = null;

/** Instruments on the global meter; created on first use (after startTelemetry). */
export function instruments(): ReturnType<typeof makeInstruments> {
  meterCache ??= makeInstruments();
  return meterCache;
}

const US = [50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000];
const MS = [1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500];

function makeInstruments() {
  const m = metrics.getMeter('smartkv');
  const buckets = (b: number[]) => ({ advice: { explicitBucketBoundaries: b } });
  return {
    requests: m.createCounter('smartkv_requests', { description: 'public API requests by method and gRPC status' }),
    tokensGenerated: m.createCounter('smartkv_tokens_generated', { description: 'tokens generated (Generate, Complete)' }),
    tokensScored: m.createCounter('smartkv_tokens_scored', { description: 'tokens scored (Score)' }),
    stepDuration: m.createHistogram('smartkv_step_duration', { unit: 'ms', description: 'one model step (all layers, the batch)', ...buckets(MS) }),
    attendDuration: m.createHistogram('smartkv_attend_duration', { unit: 'us', description: 'one layer of attention for a batch: round trip (orchestrator) or engine time (cache)', ...buckets(US) }),
    reallocationDuration: m.createHistogram('smartkv_reallocation_duration', { unit: 'ms', description: 'one reallocation: export, allocate, apply', ...buckets(MS) }),
    allocateDuration: m.createHistogram('smartkv_allocate_duration', { unit: 'us', description: 'time in the allocation policy', ...buckets(US) }),
    achievedBeta: m.createHistogram('smartkv_achieved_beta', { description: 'bytes held / FP16 bytes right after each reallocation', ...buckets([0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.75, 1, 1.25]) }),
    batchSize: m.createHistogram('smartkv_batch_size', { description: 'sequences per model step', ...buckets([1, 2, 4, 8, 16, 32, 64]) }),
    meter: m,
  };
}

/** Runs fn with span as the active span (so gRPC client calls become its children). */
export function withSpan<T>(span: Span, fn: () => T): T {
  return context.with(trace.setSpan(context.active(), span), fn);
}

export function childOf(parent: Context, name: string, attributes: Attributes = {}, links: Link[] = []): Span {
  return tracer().startSpan(name, { attributes, links }, parent);
}

/** The W3C traceparent of a span's context ('' when not recording). */
export function traceparentOf(span: Span | undefined): string {
  if (!span || !span.isRecording()) return '';
  const carrier: Record<string, string> = {};
  propagation.inject(trace.setSpan(context.active(), span), carrier);
  return carrier.traceparent ?? '';
}

/** A context from a traceparent header value (the root context when empty). */
export function contextFrom(traceparent: string): Context {
  if (!traceparent) return context.active();
  return propagation.extract(context.active(), { traceparent });
}

/** A child of the active span, when one is recording (the client side of a
 * call on a stream, which gRPC's instrumentation does not trace); else undefined. */
export function activeChild(name: string, attributes: Attributes = {}): Span | undefined {
  const parent = trace.getActiveSpan();
  if (!parent || !parent.isRecording()) return undefined;
  return tracer().startSpan(name, { attributes }, context.active());
}
