// OpenTelemetry for one service process. Call startTelemetry() before any
// other module loads (each main.ts imports only this and the option parser
// statically, then the rest with `await import`), so that the gRPC
// instrumentation patches @grpc/grpc-js before anyone uses it and context
// crosses every call between the services.
//
// Configured by the standard variables: OTEL_EXPORTER_OTLP_ENDPOINT (or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), OTEL_EXPORTER_OTLP_PROTOCOL,
// OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_BSP_* … With no endpoint and no
// OTEL_TRACES_EXPORTER set, no tracer provider is registered: the API stays a
// no-op and nothing is exported or slowed. Metrics are served for Prometheus
// on --metrics-port (0 = off).
import { createRequire } from 'node:module';

import { NodeSDK } from '@opentelemetry/sdk-node';
import { GrpcInstrumentation } from '@opentelemetry/instrumentation-grpc';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import type { IMetricReader } from '@opentelemetry/sdk-metrics';

export interface Telemetry {
  tracing: boolean;
  metricsPort: number; // 0: off
  shutdown(): Promise<void>;
}

function tracingConfigured(env: NodeJS.ProcessEnv): boolean {
  if (env.OTEL_SDK_DISABLED === 'true') return false;
  const exporters = (env.OTEL_TRACES_EXPORTER ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  if (exporters.length) return !exporters.includes('none');
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
}

export function startTelemetry(serviceName: string, opts: { metricsPort: number; metricsHost?: string }): Telemetry {
  const tracing = tracingConfigured(process.env);
  const readers: IMetricReader[] = [];
  if (opts.metricsPort > 0) readers.push(new PrometheusExporter({ port: opts.metricsPort, host: opts.metricsHost ?? '127.0.0.1' }));
  if (!tracing && readers.length === 0) return { tracing, metricsPort: 0, shutdown: async () => undefined };

  const sdk = new NodeSDK({
    serviceName: process.env.OTEL_SERVICE_NAME ?? serviceName,
    instrumentations: tracing ? [new GrpcInstrumentation()] : [],
    metricReaders: readers,
    // Without tracing configured, no span processors: the SDK would otherwise
    // default to an OTLP exporter at localhost:4318.
    ...(tracing ? {} : { spanProcessors: [] }),
    autoDetectResources: false,
  });
  sdk.start();
  // Load grpc-js through require now, patched, so that the ESM imports that
  // follow get this instance from the module cache.
  if (tracing) createRequire(import.meta.url)('@grpc/grpc-js');
  return { tracing, metricsPort: opts.metricsPort, shutdown: () => sdk.shutdown() };
}
